//! `netbr bench`: netbr against the kernel's routed path and the netfilter
//! setups it replaces, measured side by side in one run. Arms are
//! interleaved in rounds, so drift on a noisy machine hits all alike; each
//! figure is the median of the rounds, with the range beside it.

pub mod arms;
pub mod bpf_cost;
pub mod chart;
pub mod load;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::json;

use arms::Arm;

#[derive(Args, Debug)]
pub struct Bench {
    /// Arms to run, comma-separated (routed, iptables-nft, iptables-legacy,
    /// nftables, netbr, netbr-fast); all by default.
    #[arg(long, value_delimiter = ',')]
    pub arms: Vec<String>,
    /// Published ports per sandbox; the measured one comes last. Repeatable
    /// as a list, e.g. 1,1000,10000.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub ports: Vec<u16>,
    /// Rounds of every arm and metric.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per metric per round.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// A reduced run: 3 rounds of 0.3 s (1 s for iperf3), 1 published port.
    #[arg(long)]
    pub quick: bool,
    /// Also write every sample and the summary as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Also write a chart as SVG here: bars per metric and arm, and
    /// connect/close rate against published ports as lines.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
}

/// Metric name, and whether higher is better. `masq_*` run from the
/// container to lan through masquerade; the rest from lan through DNAT.
/// `*_cpu_*` is the machine's kernel CPU time (system + softirq) per
/// operation while the metric before it ran. The last two, netbr's arms
/// only, are its programs' own run time per program run (`bpf_cost`).
pub const METRICS: [(&str, bool); 16] = [
    ("tcp_stream_gbps", true),
    ("connect_close_per_s", true),
    ("connect_close_cpu_us", false),
    ("rr_per_s", true),
    ("rr_p50_us", false),
    ("rr_p99_us", false),
    ("rr16_per_s", true),
    ("rr16_p50_us", false),
    ("rr16_p99_us", false),
    ("udp64_pps", true),
    ("udp64_cpu_ns", false),
    ("masq_tcp_stream_gbps", true),
    ("masq_connect_close_per_s", true),
    ("masq_udp64_pps", true),
    ("connect_close_bpf_ns", false),
    ("udp64_bpf_ns", false),
];

/// lan's servers for the masquerade direction.
const LAN_TCP: u16 = 9000;
const LAN_UDP: u16 = 9001;

/// Runs `measure` (which returns a rate per second over `dur`) and also
/// returns the kernel CPU time per operation, in `unit` nanoseconds.
fn with_cpu(dur: Duration, unit: f64, measure: impl FnOnce() -> Result<f64>) -> Result<(f64, f64)> {
    let before = load::kernel_cpu_ns()?;
    let rate = measure()?;
    let spent = load::kernel_cpu_ns()?.saturating_sub(before) as f64;
    let ops = rate * dur.as_secs_f64();
    Ok((rate, if ops > 0.0 { spent / ops / unit } else { 0.0 }))
}

struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(samples: &[f64]) -> Stat {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Stat {
        median: v.get(v.len() / 2).copied().unwrap_or(0.0),
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

impl Bench {
    pub async fn exec(self) -> Result<()> {
        let arms: Vec<Arm> = if self.arms.is_empty() {
            Arm::ALL.to_vec()
        } else {
            self.arms
                .iter()
                .map(|a| Arm::parse(a))
                .collect::<Result<_>>()?
        };
        let (rounds, secs, ports) = if self.quick {
            (3, 0.3, vec![1])
        } else {
            (self.rounds, self.secs, self.ports.clone())
        };
        let dur = Duration::from_secs_f64(secs);
        let exe = std::env::current_exe().context("finding the netbr binary")?;
        // samples[(ports, arm, metric)] = values per round
        let mut samples: BTreeMap<(u16, Arm, &str), Vec<f64>> = BTreeMap::new();
        for &n in &ports {
            eprintln!("setting up {} arms with {n} published port(s)", arms.len());
            let setups: Vec<_> = arms
                .iter()
                .map(|&a| arms::setup(a, &exe, n))
                .collect::<Result<_>>()?;
            let mut servers = Vec::new();
            let mut iperfs = Vec::new();
            let mut sinks = Vec::new();
            let mut lan_sinks = Vec::new();
            for s in &setups {
                let (c, lan) = (s.sb.container_path(1), s.sb.lan_path());
                servers.push(load::EchoServer::start(&c, arms::TCP_PORT)?);
                servers.push(load::EchoServer::start(&lan, LAN_TCP)?);
                iperfs.push(load::Iperf3Server::start(&c, arms::STREAM_PORT)?);
                iperfs.push(load::Iperf3Server::start(&lan, arms::STREAM_PORT)?);
                sinks.push(load::UdpSink::start(&c, arms::UDP_PORT)?);
                lan_sinks.push(load::UdpSink::start(&lan, LAN_UDP)?);
            }
            let lan_ip = crate::sandbox::LAN_IP;
            let lan_tcp = std::net::SocketAddr::from((lan_ip, LAN_TCP));
            let lan_udp = std::net::SocketAddr::from((lan_ip, LAN_UDP));
            let lan_stream = std::net::SocketAddr::from((lan_ip, arms::STREAM_PORT));
            for round in 0..rounds {
                // Rotate the order each round so no arm always goes first.
                for k in 0..setups.len() {
                    let i = (k + round) % setups.len();
                    let s = &setups[i];
                    let (lan, c) = (s.sb.lan_path(), s.sb.container_path(1));
                    let arm = s.arm.name();
                    let stream = load::tcp_stream(&lan, s.stream, secs)
                        .with_context(|| format!("{arm} TCP stream"))?;
                    let (cc, cc_cpu) = with_cpu(dur, 1e3, || load::connect_close(&lan, s.tcp, dur))
                        .with_context(|| format!("{arm} connect/close"))?;
                    let (rr, p50, p99) = load::request_response(&lan, s.tcp, dur, 1)
                        .with_context(|| format!("{arm} request/response"))?;
                    let (rr16, p50_16, p99_16) = load::request_response(&lan, s.tcp, dur, 16)
                        .with_context(|| format!("{arm} request/response x16"))?;
                    let (udp, udp_cpu) =
                        with_cpu(dur, 1.0, || load::udp_rate(&lan, s.udp, &sinks[i], dur))
                            .with_context(|| format!("{arm} UDP"))?;
                    let mstream = load::tcp_stream(&c, lan_stream, secs)
                        .with_context(|| format!("{arm} masquerade TCP stream"))?;
                    let mcc = load::connect_close(&c, lan_tcp, dur)
                        .with_context(|| format!("{arm} masquerade connect/close"))?;
                    let mudp = load::udp_rate(&c, lan_udp, &lan_sinks[i], dur)
                        .with_context(|| format!("{arm} masquerade UDP"))?;
                    let values = [
                        stream, cc, cc_cpu, rr, p50, p99, rr16, p50_16, p99_16, udp, udp_cpu,
                        mstream, mcc, mudp,
                    ];
                    for (m, v) in METRICS.iter().map(|m| m.0).zip(values) {
                        samples.entry((n, s.arm, m)).or_default().push(v);
                    }
                }
                eprintln!("round {}/{rounds} done", round + 1);
            }
            let netbr_arms: Vec<_> = setups
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.arm, Arm::Netbr | Arm::NetbrFast))
                .collect();
            if !netbr_arms.is_empty() {
                let _stats = bpf_cost::StatsOn::enable()?;
                for (i, s) in netbr_arms {
                    let links = bpf_cost::tc_links(&s.sb)?;
                    let lan = s.sb.lan_path();
                    let per_run = |measure: &mut dyn FnMut() -> Result<f64>| -> Result<f64> {
                        let (t0, n0) = bpf_cost::totals(&links)?;
                        measure()?;
                        let (t1, n1) = bpf_cost::totals(&links)?;
                        Ok((t1 - t0) as f64 / (n1 - n0).max(1) as f64)
                    };
                    let cc = per_run(&mut || load::connect_close(&lan, s.tcp, dur))?;
                    let udp = per_run(&mut || load::udp_rate(&lan, s.udp, &sinks[i], dur))?;
                    for (m, v) in [("connect_close_bpf_ns", cc), ("udp64_bpf_ns", udp)] {
                        samples.entry((n, s.arm, m)).or_default().push(v);
                    }
                }
            }
            drop(servers);
            drop(iperfs);
            drop(sinks);
            drop(lan_sinks);
            drop(setups);
        }
        let table = report(&samples, &arms, &ports, rounds, secs);
        print!("{table}");
        if let Some(path) = &self.json {
            let rows: Vec<_> = samples
                .iter()
                .map(|((n, arm, m), v)| {
                    let st = stat(v);
                    json!({ "ports": n, "arm": arm.name(), "metric": m, "median": st.median, "min": st.min, "max": st.max, "samples": v })
                })
                .collect();
            let doc = json!({ "rounds": rounds, "secs_per_metric": secs, "results": rows });
            std::fs::write(path, serde_json::to_string_pretty(&doc)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &self.svg {
            let medians = |n: u16, a: Arm, m: &str| samples.get(&(n, a, m)).map(|v| stat(v).median);
            std::fs::write(path, chart::svg(&medians, &arms, &ports))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// The table: per port count and metric, each arm's median (min-max) and its
/// ratio to `routed` and to the best netfilter arm.
fn report(
    samples: &BTreeMap<(u16, Arm, &str), Vec<f64>>,
    arms: &[Arm],
    ports: &[u16],
    rounds: usize,
    secs: f64,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "netbr bench: {rounds} rounds x {secs} s per metric; medians (min-max); ratios to routed and to the best netfilter arm");
    for &n in ports {
        for (metric, higher_better) in METRICS {
            let _ = writeln!(out, "\n{metric} with {n} published port(s)");
            let median = |a: Arm| samples.get(&(n, a, metric)).map(|v| stat(v).median);
            let routed = median(Arm::Routed);
            let best_nf = arms
                .iter()
                .filter(|a| a.is_netfilter())
                .filter_map(|a| median(*a))
                .reduce(|x, y| if higher_better == (x > y) { x } else { y });
            for &a in arms {
                let Some(v) = samples.get(&(n, a, metric)) else {
                    continue;
                };
                let st = stat(v);
                let ratio = |base: Option<f64>| match base {
                    Some(b) if b > 0.0 => format!("{:.2}x", st.median / b),
                    _ => "-".into(),
                };
                let _ = writeln!(
                    out,
                    "  {:<16} {:>12.1} ({:.1}-{:.1})  vs routed {:>6}  vs best netfilter {:>6}",
                    a.name(),
                    st.median,
                    st.min,
                    st.max,
                    ratio(routed),
                    ratio(best_nf)
                );
            }
        }
    }
    out
}
