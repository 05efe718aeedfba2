//! `netbr bench --fwd`: forwarding rate. trafgen (netsniff-ng) sends
//! 64-byte UDP frames over 64 flows, from lan to the published UDP port
//! (through DNAT) and from the container to lan (through masquerade); the
//! receiving interface's packet counter is the meter. Connection-rate
//! figures on two cores are bound by the clients' and servers' syscalls;
//! this isolates the datapath. The generator's own ceiling is measured in
//! a netbr arm's sandbox with every frame dropped at the uplink's TC
//! ingress (`ceiling`).

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::arms::Setup;
use crate::{
    netns,
    sandbox::{in_netns, UPLINK},
};

/// Source ports of the generated flows.
const FLOWS: u16 = 64;

/// The trafgen configuration for frames from `src` to `to`, addressed at
/// the link layer from `smac` to `dmac`: an 18-byte datagram, 60 bytes on
/// the wire before the FCS over IPv4, 80 over IPv6 (its header is 20 more).
fn config(smac: &str, dmac: &str, src: IpAddr, to: SocketAddr) -> String {
    let ip = match src {
        IpAddr::V4(_) => format!("ipv4(saddr={src}, daddr={}, ttl=64)", to.ip()),
        IpAddr::V6(_) => format!("ipv6(saddr={src}, daddr={}, hoplimit=64)", to.ip()),
    };
    format!(
        "{{ eth(da={dmac}, sa={smac}), {ip}, \
         udp(sp=dinc(1024, {}), dp={}), fill(0x41, 18) }}\n",
        1024 + FLOWS - 1,
        to.port()
    )
}

/// The MAC address of `dev` in namespace `ns`.
fn mac(ns: &Path, dev: &str) -> Result<String> {
    let out = in_netns(ns, "ip", &["-j", "link", "show", dev])?;
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("reading {dev}'s address"))?;
    doc[0]["address"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{dev} has no MAC address"))
}

/// Packets `dev` of namespace `ns` received, from the namespace's own
/// `/proc/net/dev` (the thread's, hence `thread-self`).
fn rx_packets(ns: &Path, dev: &'static str) -> Result<u64> {
    netns::run_in(ns, move || -> Result<u64> {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
        text.lines()
            .find_map(|l| {
                let (name, rest) = l.split_once(':')?;
                (name.trim() == dev).then(|| rest.split_whitespace().nth(1)?.parse().ok())?
            })
            .with_context(|| format!("no counters for {dev}"))
    })?
}

/// Runs trafgen in `from` (out of its `eth0`) with `conf` for `dur`, and
/// returns the packets per second `dev` of `meter_ns` received meanwhile.
fn run(from: &Path, conf: &str, meter_ns: &Path, dev: &'static str, dur: Duration) -> Result<f64> {
    let before = rx_packets(meter_ns, dev)?;
    let start = std::time::Instant::now();
    send(from, conf, dur)?;
    let elapsed = start.elapsed();
    std::thread::sleep(Duration::from_millis(50));
    let got = rx_packets(meter_ns, dev)? - before;
    Ok(got as f64 / elapsed.as_secs_f64())
}

/// Runs trafgen in `from`, out of its `eth0`, with `conf` for `dur`.
fn send(from: &Path, conf: &str, dur: Duration) -> Result<()> {
    let file = tempfile_path("trafgen.cfg");
    std::fs::write(&file, conf).context("writing the trafgen configuration")?;
    let secs = format!("{:.1}", dur.as_secs_f64());
    // trafgen runs until stopped: `timeout` ends it with SIGINT after the
    // measured time (its exit status is then timeout's 124).
    let out = in_netns(
        from,
        "timeout",
        &[
            "-s",
            "INT",
            &secs,
            "trafgen",
            "--dev",
            "eth0",
            "--conf",
            &file.to_string_lossy(),
            "--cpus",
            "1",
            "--no-cpu-stats",
            "--notouch-irq",
            "--no-sock-mem",
        ],
    );
    let _ = std::fs::remove_file(&file);
    let out = out?;
    if !matches!(out.status.code(), Some(0 | 124)) {
        bail!(
            "trafgen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("netbr-bench-{}-{name}", std::process::id()))
}

/// Frames per second through DNAT (lan to the published UDP port, counted
/// at the container's `eth0`).
pub fn dnat(s: &Setup, dur: Duration) -> Result<f64> {
    let (lan, host) = (s.sb.lan_path(), s.sb.host_path());
    let conf = config(
        &mac(&lan, "eth0")?,
        &mac(&host, UPLINK)?,
        s.family.lan(),
        s.udp,
    );
    run(&lan, &conf, &s.sb.container_path(1), "eth0", dur)
}

/// Frames per second through masquerade (the container to lan, counted at
/// lan's `eth0`).
pub fn masquerade(s: &Setup, dur: Duration) -> Result<f64> {
    let c = s.sb.container_path(1);
    let gateway_mac = mac(&s.sb.host_path(), crate::sandbox::BRIDGE)?;
    let conf = config(
        &mac(&c, "eth0")?,
        &gateway_mac,
        s.family.container(),
        SocketAddr::new(s.family.lan(), super::LAN_UDP),
    );
    run(&c, &conf, &s.sb.lan_path(), "eth0", dur)
}

/// The generator's ceiling: lan's frames dropped at the uplink's TC
/// ingress, the cheapest consumer this kernel offers (it has no `tc`
/// classifiers for a plain drop filter): frames addressed straight to the
/// container's address, which netbr's `nb_up_in` drops at once as direct
/// routing, counted by its `drop_direct_routing`. `s` must be a netbr arm.
pub fn ceiling(s: &Setup, dur: Duration) -> Result<f64> {
    let (lan, host) = (s.sb.lan_path(), s.sb.host_path());
    let to = SocketAddr::new(s.family.container(), super::arms::UDP_PORT);
    let conf = config(
        &mac(&lan, "eth0")?,
        &mac(&host, UPLINK)?,
        s.family.lan(),
        to,
    );
    let dropped =
        || -> Result<u64> { Ok(s.sb.stats()?["drop_direct_routing"].as_u64().unwrap_or(0)) };
    let before = dropped()?;
    let start = std::time::Instant::now();
    send(&lan, &conf, dur)?;
    let elapsed = start.elapsed();
    Ok((dropped()? - before) as f64 / elapsed.as_secs_f64())
}

/// The forwarding figures beside the generator's ceiling, for the report.
pub fn ceiling_lines(ceiling: f64, rows: &[(&str, f64, f64)]) -> String {
    let mut out =
        format!("\nforwarding rate against the generator's ceiling ({ceiling:.0} frames/s)\n");
    for (arm, dnat, masq) in rows {
        let _ = writeln!(
            out,
            "  {arm:<16} DNAT {:>5.2}x  masquerade {:>5.2}x",
            dnat / ceiling.max(1.0),
            masq / ceiling.max(1.0)
        );
    }
    out
}
