//! `netbr bench`: netbr against the kernel's routed path and the netfilter
//! setups it replaces, measured side by side in one run. Arms are
//! interleaved in rounds, so drift on a noisy machine hits all alike; each
//! figure is the median of the rounds, with the range beside it.

pub mod arms;
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
    /// A reduced run: 3 rounds of 0.5 s, 1 published port.
    #[arg(long)]
    pub quick: bool,
    /// Also write every sample and the summary as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Metric name, and whether higher is better. `masq_*` run from the
/// container to lan through masquerade; the rest from lan through DNAT.
const METRICS: [(&str, bool); 7] = [
    ("connect_close_per_s", true),
    ("rr_per_s", true),
    ("rr_p50_us", false),
    ("rr_p99_us", false),
    ("udp64_pps", true),
    ("masq_connect_close_per_s", true),
    ("masq_udp64_pps", true),
];

/// lan's servers for the masquerade direction.
const LAN_TCP: u16 = 9000;
const LAN_UDP: u16 = 9001;

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
            (3, 0.5, vec![1])
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
            let mut sinks = Vec::new();
            let mut lan_sinks = Vec::new();
            for s in &setups {
                let c = s.sb.container_path(1);
                servers.push(load::EchoServer::start(&c, arms::TCP_PORT)?);
                sinks.push(load::UdpSink::start(&c, arms::UDP_PORT)?);
                servers.push(load::EchoServer::start(&s.sb.lan_path(), LAN_TCP)?);
                lan_sinks.push(load::UdpSink::start(&s.sb.lan_path(), LAN_UDP)?);
            }
            let lan_tcp = std::net::SocketAddr::from((crate::sandbox::LAN_IP, LAN_TCP));
            let lan_udp = std::net::SocketAddr::from((crate::sandbox::LAN_IP, LAN_UDP));
            for round in 0..rounds {
                // Rotate the order each round so no arm always goes first.
                for k in 0..setups.len() {
                    let i = (k + round) % setups.len();
                    let s = &setups[i];
                    let lan = s.sb.lan_path();
                    let cc = load::connect_close(&lan, s.tcp, dur)
                        .with_context(|| format!("{} connect/close", s.arm.name()))?;
                    let (rr, p50, p99) = load::request_response(&lan, s.tcp, dur)
                        .with_context(|| format!("{} request/response", s.arm.name()))?;
                    let udp = load::udp_rate(&lan, s.udp, &sinks[i], dur)
                        .with_context(|| format!("{} UDP", s.arm.name()))?;
                    let c = s.sb.container_path(1);
                    let mcc = load::connect_close(&c, lan_tcp, dur)
                        .with_context(|| format!("{} masquerade connect/close", s.arm.name()))?;
                    let mudp = load::udp_rate(&c, lan_udp, &lan_sinks[i], dur)
                        .with_context(|| format!("{} masquerade UDP", s.arm.name()))?;
                    let values = [cc, rr, p50, p99, udp, mcc, mudp];
                    for (m, v) in METRICS.iter().map(|m| m.0).zip(values) {
                        samples.entry((n, s.arm, m)).or_default().push(v);
                    }
                }
                eprintln!("round {}/{rounds} done", round + 1);
            }
            drop(servers);
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
