//! `cargo xtask install [--destdir DIR]`: the release binaries, the systemd
//! units and an example configuration where an operator expects them.
//! Nothing is enabled or started, and an operator's own configuration is
//! never overwritten: the example goes beside it.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::run;

/// What goes where: a source (a release binary, or a file of
/// `netbr-user/dist/`), its place under the root, and its mode.
fn files(release: &Path, dist: &Path) -> Vec<(PathBuf, &'static str, u32)> {
    vec![
        (release.join("netbr"), "usr/local/bin/netbr", 0o755),
        // Where containerd, CRI-O and Kubernetes look for CNI plugins.
        (release.join("netbr-cni"), "opt/cni/bin/netbr-cni", 0o755),
        (
            dist.join("netbr.service"),
            "etc/systemd/system/netbr.service",
            0o644,
        ),
        (
            dist.join("netbr-docker.service"),
            "etc/systemd/system/netbr-docker.service",
            0o644,
        ),
        (
            dist.join("netbr-metrics.service"),
            "etc/systemd/system/netbr-metrics.service",
            0o644,
        ),
        (
            dist.join("bridges.conf"),
            "etc/netbr/bridges.conf.example",
            0o644,
        ),
    ]
}

/// Copies every file under `root`; returns where each went.
fn install(release: &Path, dist: &Path, root: &Path) -> Result<Vec<PathBuf>> {
    let mut placed = Vec::new();
    for (from, to, mode) in files(release, dist) {
        let dest = root.join(to);
        let dir = dest.parent().expect("every destination has a directory");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Into place by rename, so a running binary is replaced, not
        // rewritten under its feet.
        let tmp = dir.join(format!(
            ".{}.new",
            dest.file_name().expect("a file").to_string_lossy()
        ));
        std::fs::copy(&from, &tmp)
            .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
        placed.push(dest);
    }
    Ok(placed)
}

pub fn run_install(destdir: Option<PathBuf>) -> Result<()> {
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "build",
            "--release",
            "-p",
            "netbr-user",
            "--bins",
        ]),
    )?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = destdir.unwrap_or_else(|| PathBuf::from("/"));
    let placed = install(
        &workspace.join("target/release"),
        &workspace.join("netbr-user/dist"),
        &root,
    )?;
    for p in &placed {
        println!("installed {}", p.display());
    }
    println!(
        "nothing is enabled: list bridges in /etc/netbr/bridges.conf (see the example), then \
         systemctl enable netbr netbr-docker netbr-metrics as you need them"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_into_a_temporary_root_holds_every_file_and_its_units_verify() {
        let tmp = std::env::temp_dir().join(format!("netbr-install-{}", std::process::id()));
        let (release, root) = (tmp.join("release"), tmp.join("root"));
        std::fs::create_dir_all(&release).unwrap();
        for bin in ["netbr", "netbr-cni"] {
            std::fs::write(release.join(bin), "#!/bin/sh\n").unwrap();
        }
        let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../netbr-user/dist");
        let placed = install(&release, &dist, &root).unwrap();
        let result = (|| -> Result<()> {
            for (_, to, mode) in files(&release, &dist) {
                let meta = std::fs::metadata(root.join(to)).with_context(|| to.to_string())?;
                anyhow::ensure!(meta.permissions().mode() & 0o777 == mode, "{to} mode");
            }
            anyhow::ensure!(placed.len() == files(&release, &dist).len());
            // Each unit verifies against the binary it was installed with
            // (verify insists the command exists).
            for unit in placed
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "service"))
            {
                let text = std::fs::read_to_string(unit)?;
                anyhow::ensure!(text.contains("/usr/local/bin/netbr "), "{}", unit.display());
                let netbr = root.join("usr/local/bin/netbr");
                let check = tmp.join(unit.file_name().unwrap());
                std::fs::write(
                    &check,
                    text.replace("/usr/local/bin/netbr", &netbr.display().to_string()),
                )?;
                let out = Command::new("timeout")
                    .args(["60", "systemd-analyze", "verify"])
                    .arg(&check)
                    .output()
                    .context("systemd-analyze (cargo xtask setup installs systemd)")?;
                anyhow::ensure!(
                    out.status.success() && out.stderr.is_empty(),
                    "{}: {}",
                    unit.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        result.unwrap();
    }
}
