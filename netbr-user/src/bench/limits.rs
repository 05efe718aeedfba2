//! `netbr bench --limits`: bandwidth limits measured in one sandbox (netbr
//! attached as by default): how close iperf3 gets to a limit of 10, 100 and
//! 1000 Mbit/s each way, over TCP and over UDP offered at twice the limit;
//! ping latency from a container to lan while its own TCP flow fills the
//! limit, with netbr's limit, with the seeds' `tc tbf` and with no limit;
//! and what a limit costs: kernel CPU per gigabit, and an unlimited
//! neighbour's rate with and without limits on another endpoint.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::json;

use super::load::{iperf3, kernel_cpu_ns, Iperf3Run, Iperf3Server};
use crate::{
    sandbox::{in_netns, Mode, Sandbox, LAN_IP},
    store::veth_names,
};

const PORT: u16 = 5201;
/// Limits measured for accuracy, in Mbit/s.
const RATES: [u64; 3] = [10, 100, 1000];
/// The limit the latency rows use: the seeds' `tbf rate 10mbit`.
const LATENCY_MBIT: u64 = 10;
const PINGS: u32 = 200;

/// One row of the accuracy table.
#[derive(Serialize)]
struct Accuracy {
    limit_mbit: u64,
    dir: &'static str,
    tcp_mbit: f64,
    udp_mbit: f64,
}

/// Ping RTTs under load, for one way of limiting.
#[derive(Serialize)]
struct Latency {
    arm: &'static str,
    load: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    lost: u32,
}

/// What a limit costs: TCP uploads with kernel CPU per gigabit.
#[derive(Serialize)]
struct Cost {
    /// Through a 1 Gbit/s limit.
    limited_mbit: f64,
    limited_cpu_ms_per_gbit: f64,
    /// An unlimited endpoint beside the limited one.
    unlimited_mbit: f64,
    unlimited_cpu_ms_per_gbit: f64,
    /// The same endpoint with no limits anywhere on the bridge.
    unlimited_mbit_no_limits_anywhere: f64,
}

pub fn run(netbr: &Path, secs: u64, json_out: Option<&Path>) -> Result<()> {
    let sb = Sandbox::create_with(
        netbr,
        Mode {
            fast_path: true,
            xdp: false,
        },
    )?;
    sb.attach()?;
    let _server = Iperf3Server::start(&sb.lan_path(), PORT)?;
    let limited = sb.add_container(1)?;
    sb.add_container(2)?;
    eprintln!("bench --limits: container {limited} limited, another unlimited");
    let name = sb.container(1);
    let set = |egress: &str, ingress: &str| {
        sb.netbr_ok(&[
            "endpoint",
            "limit",
            &name,
            "--egress-rate",
            egress,
            "--ingress-rate",
            ingress,
        ])
    };
    let stream = |n: u32, reverse: bool, udp_bits: Option<u64>| {
        let run = Iperf3Run {
            secs,
            omit: 1,
            reverse,
            udp_bits,
        };
        iperf3(
            &sb.container_path(n),
            SocketAddr::from((LAN_IP, PORT)),
            &run,
        )
        .map(|b| b / 1e6)
    };

    let mut accuracy = Vec::new();
    for mbit in RATES {
        let rate = format!("{mbit}mbit");
        set(&rate, &rate)?;
        for (dir, reverse) in [("egress", false), ("ingress", true)] {
            let tcp = stream(1, reverse, None)?;
            let udp = stream(1, reverse, Some(2 * mbit * 1_000_000))?;
            eprintln!("  {rate} {dir}: tcp {tcp:.1} udp {udp:.1} Mbit/s");
            accuracy.push(Accuracy {
                limit_mbit: mbit,
                dir,
                tcp_mbit: tcp,
                udp_mbit: udp,
            });
        }
    }
    let mode = endpoint_mode(&sb, &name)?;

    // Latency: unloaded, then under an upload and a download that fill the
    // limit, per way of limiting.
    set("none", "none")?;
    let unloaded = ping(&sb.container_path(1))?;
    let mut latency = vec![Latency {
        arm: "no limit",
        load: "idle",
        p50_ms: unloaded.0,
        p99_ms: unloaded.1,
        lost: unloaded.2,
    }];
    let tbf = Tbf::new(&sb, &name);
    for arm in ["no limit", "netbr", "tc tbf"] {
        match arm {
            "netbr" => {
                let r = format!("{LATENCY_MBIT}mbit");
                set(&r, &r)?;
            }
            "tc tbf" => {
                set("none", "none")?;
                // The fast path delivers into the container past the
                // host-side veth's qdisc (bpf_redirect_peer): a tbf there
                // needs the plain path.
                sb.attach_with(&["--no-fast-path"])?;
                tbf.add()?;
            }
            _ => {}
        }
        for (load, reverse) in [("upload", false), ("download", true)] {
            let (p50, p99, lost) = ping_under_load(&sb, reverse, secs)?;
            eprintln!("  {arm} under {load}: ping p50 {p50:.2} p99 {p99:.2} ms, {lost} lost");
            latency.push(Latency {
                arm,
                load,
                p50_ms: p50,
                p99_ms: p99,
                lost,
            });
        }
    }
    tbf.remove()?;

    // Cost: kernel CPU per gigabit through a limited (1 Gbit/s) and an
    // unlimited endpoint; the unlimited one's rate with another limited.
    set("1gbit", "1gbit")?;
    let cpu_per_gbit = |n: u32| -> Result<(f64, f64)> {
        let before = kernel_cpu_ns()?;
        let mbit = stream(n, false, None)?;
        let spent = kernel_cpu_ns()?.saturating_sub(before) as f64;
        // iperf3 runs its `omit` second besides the ones it reports.
        let gbits = mbit / 1e3 * (secs + 1) as f64;
        Ok((mbit, spent / 1e6 / gbits.max(1e-9)))
    };
    let (limited_mbit, limited_cpu_ms_per_gbit) = cpu_per_gbit(1)?;
    let (unlimited_mbit, unlimited_cpu_ms_per_gbit) = cpu_per_gbit(2)?;
    set("none", "none")?;
    let cost = Cost {
        limited_mbit,
        limited_cpu_ms_per_gbit,
        unlimited_mbit,
        unlimited_cpu_ms_per_gbit,
        unlimited_mbit_no_limits_anywhere: stream(2, false, None)?,
    };

    print_report(&accuracy, &mode, &latency, &cost);
    if let Some(path) = json_out {
        let doc = json!({
            "mode": mode,
            "accuracy": accuracy,
            "latency": latency,
            "cost": cost,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_report(acc: &[Accuracy], mode: &str, lat: &[Latency], cost: &Cost) {
    println!("\nRate accuracy (netbr {mode}; iperf3 goodput, UDP offered at twice the limit)");
    println!("| limit | direction | TCP Mbit/s | TCP / limit | UDP Mbit/s | UDP / limit |");
    println!("|---|---|---|---|---|---|");
    for a in acc {
        let l = a.limit_mbit as f64;
        println!(
            "| {} Mbit/s | {} | {:.1} | {:.3} | {:.1} | {:.3} |",
            a.limit_mbit,
            a.dir,
            a.tcp_mbit,
            a.tcp_mbit / l,
            a.udp_mbit,
            a.udp_mbit / l
        );
    }
    println!(
        "\nPing from the container to lan, {PINGS} pings 10 ms apart, while its TCP flow fills {LATENCY_MBIT} Mbit/s"
    );
    println!("| limited by | load | p50 ms | p99 ms | lost |");
    println!("|---|---|---|---|---|");
    for l in lat {
        println!(
            "| {} | {} | {:.2} | {:.2} | {} |",
            l.arm, l.load, l.p50_ms, l.p99_ms, l.lost
        );
    }
    println!("\nCost (TCP upload, kernel CPU of the whole machine)");
    println!("| endpoint | Mbit/s | CPU ms per Gbit |");
    println!("|---|---|---|");
    println!(
        "| limited to 1 Gbit/s | {:.0} | {:.1} |",
        cost.limited_mbit, cost.limited_cpu_ms_per_gbit
    );
    println!(
        "| unlimited, beside the limited one | {:.0} | {:.1} |",
        cost.unlimited_mbit, cost.unlimited_cpu_ms_per_gbit
    );
    println!(
        "| unlimited, no limits anywhere | {:.0} | |",
        cost.unlimited_mbit_no_limits_anywhere
    );
}

/// "edt" or "police", as `ls` reports the endpoint's egress limit.
fn endpoint_mode(sb: &Sandbox, name: &str) -> Result<String> {
    let ls: serde_json::Value = serde_json::from_str(&sb.netbr_ok(&["ls", "--json"])?)?;
    Ok(ls["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["name"] == name))
        .and_then(|e| e["egress_limit"]["mode"].as_str())
        .unwrap_or("unknown")
        .to_string())
}

/// p50 and p99 RTT (ms) and losses of `PINGS` pings from `ns` to lan.
fn ping(ns: &Path) -> Result<(f64, f64, u32)> {
    let count = PINGS.to_string();
    let out = in_netns(
        ns,
        "ping",
        &[
            "-n",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            &count,
            &LAN_IP.to_string(),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    rtts.sort_by(f64::total_cmp);
    let at =
        |q: f64| rtts.get(((rtts.len() as f64 * q) as usize).min(rtts.len().saturating_sub(1)));
    let lost = PINGS.saturating_sub(rtts.len() as u32);
    Ok((
        at(0.5).copied().unwrap_or(f64::NAN),
        at(0.99).copied().unwrap_or(f64::NAN),
        lost,
    ))
}

/// Pings while container 1 uploads (or downloads) with TCP as fast as its
/// limit lets it.
fn ping_under_load(sb: &Sandbox, download: bool, secs: u64) -> Result<(f64, f64, u32)> {
    let ns = sb.container_path(1);
    let to = SocketAddr::from((LAN_IP, PORT));
    let run = Iperf3Run {
        secs: secs.max(4),
        omit: 0,
        reverse: download,
        udp_bits: None,
    };
    let load = std::thread::spawn(move || iperf3(&ns, to, &run));
    std::thread::sleep(Duration::from_secs(1));
    let pinged = ping(&sb.container_path(1));
    load.join()
        .map_err(|_| anyhow::anyhow!("the iperf3 load thread panicked"))??;
    pinged
}

/// The seeds' recipe: `tbf rate 10mbit latency 50ms burst 10000` on the
/// container's `eth0` (upload) and on its host-side veth (download).
struct Tbf<'a> {
    sb: &'a Sandbox,
    host_veth: String,
}

impl<'a> Tbf<'a> {
    fn new(sb: &'a Sandbox, endpoint: &str) -> Self {
        Self {
            sb,
            host_veth: veth_names(crate::sandbox::BRIDGE, endpoint).0,
        }
    }

    fn places(&self) -> [(std::path::PathBuf, &str); 2] {
        [
            (self.sb.container_path(1), "eth0"),
            (self.sb.host_path(), self.host_veth.as_str()),
        ]
    }

    fn add(&self) -> Result<()> {
        let rate = format!("{LATENCY_MBIT}mbit");
        for (ns, dev) in self.places() {
            let args = [
                "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "latency", "50ms",
                "burst", "10000",
            ];
            let out = in_netns(&ns, "tc", &args)?;
            if !out.status.success() {
                anyhow::bail!(
                    "tc {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    fn remove(&self) -> Result<()> {
        for (ns, dev) in self.places() {
            in_netns(&ns, "tc", &["qdisc", "del", "dev", dev, "root"])?;
        }
        Ok(())
    }
}
