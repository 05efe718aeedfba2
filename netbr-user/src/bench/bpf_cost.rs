//! What netbr's programs themselves cost per packet, from the kernel's BPF
//! run-time statistics (`kernel.bpf_stats_enabled`). Measured in a pass of
//! its own after the rounds: the statistics add two clock reads to every
//! program run, which must not weigh on the timed figures.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::{
    bpf::pins::{LINK_BRIDGE_INGRESS, LINK_UPLINK_EGRESS, LINK_UPLINK_INGRESS, LINK_XDP},
    sandbox::Sandbox,
};

const STATS_SYSCTL: &str = "kernel.bpf_stats_enabled";

/// Turns run-time statistics on until dropped, then restores the setting.
pub struct StatsOn(String);

impl StatsOn {
    pub fn enable() -> Result<Self> {
        let before = crate::sysctl::read(STATS_SYSCTL)?;
        crate::sysctl::write(STATS_SYSCTL, "1")?;
        Ok(Self(before))
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = crate::sysctl::write(STATS_SYSCTL, self.0.trim());
    }
}

/// The packet programs' links of a sandbox's datapath: TC, and XDP when
/// attached.
pub fn packet_links(sb: &Sandbox) -> Result<Vec<PathBuf>> {
    let dir = sb.pin_dir()?;
    let names = [
        LINK_UPLINK_INGRESS,
        LINK_UPLINK_EGRESS,
        LINK_BRIDGE_INGRESS,
        LINK_XDP,
    ];
    Ok(names
        .iter()
        .map(|l| dir.join(l))
        .filter(|p| p.exists())
        .collect())
}

/// Total (run time ns, runs) of the programs behind `links`.
pub fn totals(links: &[PathBuf]) -> Result<(u64, u64)> {
    let mut sum = (0, 0);
    for link in links {
        let id = bpftool(&["link", "show", "pinned"], link)?["prog_id"]
            .as_u64()
            .with_context(|| format!("no program behind {}", link.display()))?;
        let prog = bpftool(&["prog", "show", "id", &id.to_string()], Path::new(""))?;
        sum.0 += prog["run_time_ns"].as_u64().unwrap_or(0);
        sum.1 += prog["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(sum)
}

fn bpftool(args: &[&str], path: &Path) -> Result<serde_json::Value> {
    let mut cmd = std::process::Command::new("bpftool");
    cmd.arg("-j").args(args);
    if !path.as_os_str().is_empty() {
        cmd.arg(path);
    }
    let out = cmd
        .output()
        .context("running bpftool (run cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "bpftool {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("reading bpftool's JSON")
}
