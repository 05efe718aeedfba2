use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Set to 1, the BPF programs are built with their timing marks.
const PROFILE_ENV: &str = "NETBR_EBPF_PROFILE";

/// Builds the BPF programs (`netbr-ebpf`, nightly + bpf-linker) into OUT_DIR,
/// where `src/bpf/object.rs` embeds them.
fn main() -> anyhow::Result<()> {
    let here = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&here)
        .parent()
        .ok_or_else(|| anyhow!("netbr-user has no parent directory"))?
        .join("netbr-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {root:?}"))?;
    // `cargo xtask cost --profile` asks for the programs with their
    // timing marks (`netbr-ebpf`'s `profile` feature).
    println!("cargo:rerun-if-env-changed={PROFILE_ENV}");
    let features: &[&str] = if std::env::var_os(PROFILE_ENV).is_some_and(|v| v == "1") {
        &["profile"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [Package {
            name: "netbr-ebpf",
            root_dir: root,
            features,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
