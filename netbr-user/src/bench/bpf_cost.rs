//! What netbr's programs themselves cost per packet, from the kernel's BPF
//! run-time statistics. Measured in a pass of
//! its own after the rounds: the statistics add two clock reads to every
//! program run, which must not weigh on the timed figures.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::{
    bpf::pins::{LINK_BRIDGE_INGRESS, LINK_UPLINK_EGRESS, LINK_UPLINK_INGRESS, LINK_XDP},
    sandbox::Sandbox,
};

/// `BPF_ENABLE_STATS` and its `BPF_STATS_RUN_TIME` (linux/bpf.h, 5.8).
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Run-time statistics on while held: a `BPF_ENABLE_STATS` descriptor,
/// which the kernel counts, so two benches at once (the test suite runs
/// two) each keep them on until both are done and leave them as they found
/// them; saving and restoring the sysctl raced, and could leave every
/// program on the machine paying for statistics.
pub struct StatsOn {
    _held: std::os::fd::OwnedFd,
}

impl StatsOn {
    pub fn enable() -> Result<Self> {
        // `union bpf_attr`'s `enable_stats`: one u32, the rest zero.
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        // SAFETY: the bpf syscall with a zeroed attr of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_mut_ptr(),
                attr.len() as u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("turning on BPF run-time statistics (BPF_ENABLE_STATS)");
        }
        // SAFETY: a descriptor the kernel just returned, owned from here.
        Ok(Self {
            _held: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) },
        })
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
