//! Prerequisites, each installed only when missing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, Context as _, Result};

use crate::run;

/// Debian packages and a binary each provides, to tell whether it is there.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("util-linux", "nsenter"),
    ("iptables", "iptables-save"),
    ("nftables", "nft"),
    ("iputils-ping", "ping"),
    ("iperf3", "iperf3"),
    // trafgen, for `netbr bench --fwd`.
    ("netsniff-ng", "trafgen"),
    ("tcpdump", "tcpdump"),
    ("bpftool", "bpftool"),
    ("conntrack", "conntrack"),
    ("ethtool", "ethtool"),
    ("containerd", "containerd"),
    ("docker.io", "dockerd"),
    // protoc, for the k8s-cri crate the CRI suite's client is built on.
    ("protobuf-compiler", "protoc"),
    // systemd-analyze checks the units `cargo xtask install` installs.
    ("systemd", "systemd-analyze"),
];

/// Container runtimes the tests drive, with their recommended packages
/// (podman needs conmon, catatonit and the rest of its usual set).
const RUNTIME_PACKAGES: &[(&str, &str)] = &[
    ("podman", "podman"),
    ("containernetworking-plugins", "/usr/lib/cni/host-local"),
    ("busybox-static", "busybox"),
    ("runc", "runc"),
    ("docker-compose", "docker-compose"),
];

pub fn all() -> Result<()> {
    debian_packages()?;
    promtool()?;
    nightly_rust_src()?;
    bpf_linker()
}

/// Where the tests find `promtool`, relative to the workspace.
pub const PROMTOOL: &str = "target/tools/prometheus/usr/bin/promtool";

/// `promtool`, which checks what `netbr metrics` serves, taken out of
/// Debian's prometheus package rather than installed with it: installing
/// the package enables a Prometheus server on the machine.
fn promtool() -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if workspace.join(PROMTOOL).exists() {
        return Ok(());
    }
    let dir = workspace.join("target/tools");
    std::fs::create_dir_all(&dir).context("creating target/tools")?;
    eprintln!("xtask: extracting promtool from Debian's prometheus package");
    if !Command::new("apt-get")
        .args(["download", "-qq", "prometheus"])
        .current_dir(&dir)
        .status()
        .is_ok_and(|s| s.success())
    {
        // The package lists may not be there yet on a fresh machine.
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["download", "-qq", "prometheus"])
            .current_dir(&dir))?;
    }
    let deb = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("prometheus_"))
        })
        .context("apt-get download left no prometheus package")?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("prometheus")))?;
    std::fs::remove_file(&deb)?;
    Ok(())
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(bin).exists())
}

fn missing(packages: &[(&'static str, &str)]) -> Vec<&'static str> {
    packages
        .iter()
        .filter(|(_, bin)| !have(bin))
        .map(|(p, _)| *p)
        .collect()
}

fn debian_packages() -> Result<()> {
    let (plain, runtimes) = (missing(PACKAGES), missing(RUNTIME_PACKAGES));
    if plain.is_empty() && runtimes.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Debian packages: {}",
        [plain.as_slice(), runtimes.as_slice()].concat().join(" ")
    );
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    // Debian's policy-rc.d keeps containerd from starting on install; the
    // tests start their own daemons inside their namespaces.
    for (list, recommends) in [(plain, false), (runtimes, true)] {
        if list.is_empty() {
            continue;
        }
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"]);
        if !recommends {
            cmd.arg("--no-install-recommends");
        }
        run(cmd.args(&list))?;
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly")?;
    if !out.status.success() {
        return Err(anyhow!(
            "no nightly toolchain: install it with `rustup toolchain install nightly`"
        ));
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn nightly_rust_src() -> Result<()> {
    let src = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// bpf-linker built against the nightly toolchain's own LLVM, so the bitcode
/// rustc emits and the LLVM that links it always agree. Its build wants an
/// LLVM prefix whose lib/ holds `libLLVM.so`; the sysroot ships the library
/// under a versioned name, found here rather than hard-coded.
fn bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let lib_dir = nightly_sysroot()?.join("lib");
    let llvm = std::fs::read_dir(&lib_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .ok_or_else(|| anyhow!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&llvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("xtask: building bpf-linker against {llvm} (LLVM {major}); this takes a few minutes");
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}
