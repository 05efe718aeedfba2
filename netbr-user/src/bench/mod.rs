//! `netbr bench`: netbr against the kernel's routed path and the netfilter
//! setups it replaces, measured side by side in one run. Arms are
//! interleaved in rounds, so drift on a noisy machine hits all alike; each
//! figure is the median of the rounds, with the range beside it.

pub mod arms;
pub mod bpf_cost;
pub mod chart;
pub mod cni;
pub mod fwd;
pub mod limits;
pub mod load;
pub mod pods;
pub mod prefill;
pub mod rules;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::json;

use arms::{Arm, Family, Setup};

#[derive(Args, Debug)]
pub struct Bench {
    /// Arms to run, comma-separated (routed, iptables-nft, iptables-legacy,
    /// nftables, netbr, netbr-fast, netbr-xdp); all by default.
    #[arg(long, value_delimiter = ',')]
    pub arms: Vec<String>,
    /// Published ports per sandbox; the measured one comes last. Repeatable
    /// as a list, e.g. 1,1000,10000.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub ports: Vec<u16>,
    /// Conntrack prefills to measure connect/close under (flows already
    /// tracked), e.g. 0,100000,1000000; at the first --ports count.
    #[arg(long, value_delimiter = ',')]
    pub prefill: Vec<u32>,
    /// Firewall rule counts to measure connect/close under (netbr's
    /// firewall, DOCKER-USER, an nftables set), e.g. 0,100,10000; at the
    /// first --ports count.
    #[arg(long, value_delimiter = ',')]
    pub rules: Vec<u32>,
    /// Also measure the forwarding rate: 64-byte UDP frames over 64 flows
    /// from trafgen, through DNAT and through masquerade, every arm beside
    /// the generator's own ceiling (at the first --ports count).
    #[arg(long)]
    pub fwd: bool,
    /// Measure over IPv6: every arm's sandbox dual-stack, the clients and
    /// servers on IPv6, Docker's rules in ip6tables, the nftables arm an
    /// `inet` table (with --prefill and --rules: not yet).
    #[arg(long)]
    pub ipv6: bool,
    /// Rounds of every arm and metric.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per metric per round.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// A reduced run: 3 rounds of 0.25 s (1 s for iperf3), 1 published port,
    /// no prefill.
    #[arg(long)]
    pub quick: bool,
    /// Also write every sample and the summary as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Also write a chart as SVG here: bars per metric and arm, and
    /// connect/close rate against published ports and prefill as lines.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
    /// Instead of the datapath: time CNI ADD and DEL of netbr-cni against
    /// the reference bridge + portmap + host-local chain, for --cni-ports
    /// published ports per container and --cni-containers in a row.
    #[arg(long)]
    pub cni: bool,
    #[arg(long, value_delimiter = ',', default_value = "1,20")]
    pub cni_ports: Vec<u16>,
    #[arg(long, default_value_t = 50)]
    pub cni_containers: u16,
    /// Instead of the datapath: bandwidth limits. Rate accuracy at 10, 100
    /// and 1000 Mbit/s each way (TCP, and UDP at twice the limit), ping
    /// latency while the container's TCP flow fills a 10 Mbit/s limit
    /// against the seeds' `tc tbf` and no limit, and the cost of a limit.
    /// Each measurement runs --secs seconds (at least 3).
    #[arg(long)]
    pub limits: bool,
    /// Instead of the datapath: pod to pod across two nodes (TCP stream,
    /// request/response), netbr-cni against the reference bridge plugin
    /// with host-local (ipMasq off) and against plain routing.
    #[arg(long)]
    pub pods: bool,
}

/// Metric name, and whether higher is better. `masq_*` run from the
/// container to lan through masquerade; the rest from lan through DNAT.
/// `*_cpu_*` is the machine's kernel CPU time (system + softirq) per
/// operation while the metric before it ran. The last two, netbr's arms
/// only, are its programs' own run time per program run (`bpf_cost`).
pub const METRICS: [(&str, bool); 28] = [
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
    ("masq_connect_close_cpu_us", false),
    ("masq_rr_per_s", true),
    ("masq_rr_p50_us", false),
    ("masq_rr_p99_us", false),
    ("masq_rr16_per_s", true),
    ("masq_rr16_p50_us", false),
    ("masq_rr16_p99_us", false),
    ("masq_udp64_pps", true),
    ("masq_udp64_cpu_ns", false),
    ("connect_close_bpf_ns", false),
    ("udp64_bpf_ns", false),
    ("fwd_pps", true),
    ("fwd_cpu_ns", false),
    ("masq_fwd_pps", true),
    ("masq_fwd_cpu_ns", false),
];

/// What a set of samples was measured under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// This many published ports.
    Ports(u16),
    /// This many flows already in the conntrack table (at the first port count).
    Prefill(u32),
    /// This many firewall rules, none matching (at the first port count).
    Rules(u32),
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scenario::Ports(n) => write!(f, "{n} published port(s)"),
            Scenario::Prefill(n) => write!(f, "{n} flows already tracked"),
            Scenario::Rules(n) => write!(f, "{n} firewall rules"),
        }
    }
}

/// samples[(scenario, arm, metric)] = one value per round.
pub type Samples = BTreeMap<(Scenario, Arm, &'static str), Vec<f64>>;

/// lan's servers for the masquerade direction.
const LAN_TCP: u16 = 9000;
const LAN_UDP: u16 = 9001;

/// Set by SIGINT/SIGTERM: the bench stops between measurements and its
/// sandboxes are removed on the way out instead of left behind.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, on_interrupt as *const () as libc::sighandler_t) };
    }
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: the bench's sandboxes are being removed");
    }
    Ok(())
}

/// Runs `measure` (which returns a rate per second over `dur`) and also
/// returns the kernel CPU time per operation, in `unit` nanoseconds.
fn with_cpu(dur: Duration, unit: f64, measure: impl FnOnce() -> Result<f64>) -> Result<(f64, f64)> {
    let before = load::kernel_cpu_ns()?;
    let rate = measure()?;
    let spent = load::kernel_cpu_ns()?.saturating_sub(before) as f64;
    let ops = rate * dur.as_secs_f64();
    Ok((rate, if ops > 0.0 { spent / ops / unit } else { 0.0 }))
}

pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stat(samples: &[f64]) -> Stat {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Stat {
        median: v.get(v.len() / 2).copied().unwrap_or(0.0),
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

/// The servers every arm's sandbox runs while it is measured.
struct Servers {
    _echo: Vec<load::EchoServer>,
    _iperf: Vec<load::Iperf3Server>,
    sink: load::UdpSink,
    lan_sink: load::UdpSink,
}

impl Servers {
    fn start(s: &Setup) -> Result<Self> {
        let (c, lan) = (s.sb.container_path(1), s.sb.lan_path());
        let any = |port| SocketAddr::new(s.family.unspecified(), port);
        Ok(Self {
            _echo: vec![
                load::EchoServer::start(&c, any(arms::TCP_PORT))?,
                load::EchoServer::start(&lan, any(LAN_TCP))?,
            ],
            _iperf: vec![
                load::Iperf3Server::start(&c, arms::STREAM_PORT)?,
                load::Iperf3Server::start(&lan, arms::STREAM_PORT)?,
            ],
            sink: load::UdpSink::start(&c, any(arms::UDP_PORT))?,
            lan_sink: load::UdpSink::start(&lan, any(LAN_UDP))?,
        })
    }
}

fn lan_addr(family: Family, port: u16) -> SocketAddr {
    SocketAddr::new(family.lan(), port)
}

/// One round of every metric on one arm, in `METRICS` order (the BPF ones
/// excepted): through DNAT from lan, then through masquerade from the
/// container.
fn measure_round(s: &Setup, srv: &Servers, secs: f64) -> Result<Vec<f64>> {
    let (lan, c) = (s.sb.lan_path(), s.sb.container_path(1));
    let arm = s.arm.name();
    let mut values = measure_direction(&lan, s.stream, s.tcp, s.udp, &srv.sink, secs)
        .with_context(|| format!("{arm} through DNAT"))?;
    values.extend(
        measure_direction(
            &c,
            lan_addr(s.family, arms::STREAM_PORT),
            lan_addr(s.family, LAN_TCP),
            lan_addr(s.family, LAN_UDP),
            &srv.lan_sink,
            secs,
        )
        .with_context(|| format!("{arm} through masquerade"))?,
    );
    Ok(values)
}

/// The eleven figures of one direction, from a client in `from`: stream,
/// connect/close with its CPU, request/response over 1 and 16 connections,
/// UDP rate with its CPU.
fn measure_direction(
    from: &std::path::Path,
    stream: SocketAddr,
    tcp: SocketAddr,
    udp: SocketAddr,
    sink: &load::UdpSink,
    secs: f64,
) -> Result<Vec<f64>> {
    let dur = Duration::from_secs_f64(secs);
    let gbps = load::tcp_stream(from, stream, secs).context("TCP stream")?;
    check_interrupt()?;
    let (cc, cc_cpu) =
        with_cpu(dur, 1e3, || load::connect_close(from, tcp, dur)).context("connect/close")?;
    let (rr, p50, p99) = load::request_response(from, tcp, dur, 1).context("request/response")?;
    check_interrupt()?;
    let (rr16, p50_16, p99_16) =
        load::request_response(from, tcp, dur, 16).context("request/response x16")?;
    let (pps, pps_cpu) =
        with_cpu(dur, 1.0, || load::udp_rate(from, udp, sink, dur)).context("UDP")?;
    check_interrupt()?;
    Ok(vec![
        gbps, cc, cc_cpu, rr, p50, p99, rr16, p50_16, p99_16, pps, pps_cpu,
    ])
}

/// netbr's programs' own run time per program run, with bpf_stats on for
/// this pass only.
fn measure_bpf_cost(
    scenario: Scenario,
    setups: &[Setup],
    servers: &[Servers],
    dur: Duration,
    samples: &mut Samples,
) -> Result<()> {
    let netbr: Vec<_> = setups
        .iter()
        .zip(servers)
        .filter(|(s, _)| s.arm.is_netbr())
        .collect();
    if netbr.is_empty() {
        return Ok(());
    }
    let _stats = bpf_cost::StatsOn::enable()?;
    for (s, srv) in netbr {
        let links = bpf_cost::packet_links(&s.sb)?;
        let lan = s.sb.lan_path();
        let per_run = |measure: &mut dyn FnMut() -> Result<f64>| -> Result<f64> {
            let (t0, n0) = bpf_cost::totals(&links)?;
            measure()?;
            let (t1, n1) = bpf_cost::totals(&links)?;
            Ok((t1 - t0) as f64 / (n1 - n0).max(1) as f64)
        };
        let cc = per_run(&mut || load::connect_close(&lan, s.tcp, dur))?;
        let udp = per_run(&mut || load::udp_rate(&lan, s.udp, &srv.sink, dur))?;
        for (m, v) in [("connect_close_bpf_ns", cc), ("udp64_bpf_ns", udp)] {
            samples.entry((scenario, s.arm, m)).or_default().push(v);
        }
    }
    Ok(())
}

/// Something put in every arm's sandbox at several levels, under which
/// connect/close is measured: flows already tracked, firewall rules.
struct Load<'a> {
    /// For the progress line: "{level} {what} in every arm".
    what: &'static str,
    scenario: fn(u32) -> Scenario,
    put: &'a dyn Fn(&Setup, u32) -> Result<()>,
    remove: &'a dyn Fn(&Setup, u32) -> Result<()>,
}

/// Forwarding rate of every arm through DNAT and masquerade (`fwd`), rounds
/// interleaved, with kernel CPU per frame; returns the generator's ceiling
/// of each round.
fn measure_fwd(
    scenario: Scenario,
    setups: &[Setup],
    rounds: usize,
    dur: Duration,
    samples: &mut Samples,
) -> Result<Vec<f64>> {
    let mut ceilings = Vec::new();
    for round in 0..rounds {
        for k in 0..setups.len() {
            check_interrupt()?;
            let s = &setups[(k + round) % setups.len()];
            let arm = s.arm.name();
            let (pps, cpu) = with_cpu(dur, 1.0, || fwd::dnat(s, dur))
                .with_context(|| format!("{arm} forwarding through DNAT"))?;
            let (mpps, mcpu) = with_cpu(dur, 1.0, || fwd::masquerade(s, dur))
                .with_context(|| format!("{arm} forwarding through masquerade"))?;
            for (m, v) in [
                ("fwd_pps", pps),
                ("fwd_cpu_ns", cpu),
                ("masq_fwd_pps", mpps),
                ("masq_fwd_cpu_ns", mcpu),
            ] {
                samples.entry((scenario, s.arm, m)).or_default().push(v);
            }
        }
        if let Some(s) = setups.iter().find(|s| s.arm.is_netbr()) {
            ceilings.push(fwd::ceiling(s, dur).context("the generator's ceiling")?);
        }
        eprintln!("forwarding round {}/{rounds} done", round + 1);
    }
    Ok(ceilings)
}

/// Connect/close rate of every arm at each level of `load`, rounds
/// interleaved.
fn measure_under(
    load: &Load,
    levels: &[u32],
    setups: &[Setup],
    rounds: usize,
    dur: Duration,
    samples: &mut Samples,
) -> Result<()> {
    for &n in levels {
        eprintln!("{n} {} in every arm", load.what);
        for s in setups {
            (load.put)(s, n).with_context(|| format!("{}: {n} {}", s.arm.name(), load.what))?;
        }
        for round in 0..rounds {
            for k in 0..setups.len() {
                check_interrupt()?;
                let s = &setups[(k + round) % setups.len()];
                let cc = load::connect_close(&s.sb.lan_path(), s.tcp, dur)
                    .with_context(|| format!("{} connect/close", s.arm.name()))?;
                samples
                    .entry(((load.scenario)(n), s.arm, "connect_close_per_s"))
                    .or_default()
                    .push(cc);
            }
        }
        for s in setups {
            (load.remove)(s, n)?;
        }
    }
    Ok(())
}

impl Bench {
    pub async fn exec(self) -> Result<()> {
        catch_interrupts();
        if self.limits {
            let exe = std::env::current_exe().context("finding the netbr binary")?;
            let secs = if self.quick {
                2
            } else {
                self.secs.ceil().max(3.0) as u64
            };
            return limits::run(&exe, secs, self.json.as_deref());
        }
        if self.pods {
            let exe = std::env::current_exe().context("finding the netbr binary")?;
            let (rounds, secs) = if self.quick {
                (3, 1.0)
            } else {
                (self.rounds, self.secs.max(1.0))
            };
            let doc = pods::run(&exe, rounds, secs)?;
            if let Some(path) = &self.json {
                std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            return Ok(());
        }
        if self.cni {
            let exe = std::env::current_exe().context("finding the netbr binary")?;
            let containers = if self.quick { 10 } else { self.cni_containers };
            let rows = cni::run(&exe, &self.cni_ports, containers)?;
            if let Some(path) = &self.json {
                std::fs::write(path, serde_json::to_vec_pretty(&rows)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            return Ok(());
        }
        let arms: Vec<Arm> = if self.arms.is_empty() {
            Arm::ALL.to_vec()
        } else {
            self.arms
                .iter()
                .map(|a| Arm::parse(a))
                .collect::<Result<_>>()?
        };
        let (rounds, secs, ports, prefills, rule_counts) = if self.quick {
            (3, 0.25, vec![1], vec![], vec![])
        } else {
            (
                self.rounds,
                self.secs,
                self.ports.clone(),
                self.prefill.clone(),
                self.rules.clone(),
            )
        };
        let family = if self.ipv6 { Family::V6 } else { Family::V4 };
        if family == Family::V6 && !(prefills.is_empty() && rule_counts.is_empty()) {
            bail!("--prefill and --rules measure IPv4 only so far: run them without --ipv6");
        }
        if let Some(n) = rule_counts
            .iter()
            .find(|n| **n > netbr_common::firewall::FIREWALL_MAX_ENTRIES)
        {
            bail!(
                "--rules {n} is too many: netbr holds at most {} firewall entries",
                netbr_common::firewall::FIREWALL_MAX_ENTRIES
            );
        }
        let most = prefills.iter().copied().max().unwrap_or(0);
        if most > prefill::MAX_FLOWS {
            bail!(
                "--prefill {most} is too large: at most {}",
                prefill::MAX_FLOWS
            );
        }
        // Room for the prefill's two entries per flow beside the bench's own.
        let ct_max = netbr_common::maps::CT_MAX_ENTRIES_DEFAULT.max(2 * most + 131_072);
        let dur = Duration::from_secs_f64(secs);
        let exe = std::env::current_exe().context("finding the netbr binary")?;
        let mut samples = Samples::new();
        let mut ceilings = Vec::new();
        for (p, &n) in ports.iter().enumerate() {
            eprintln!("setting up {} arms with {n} published port(s)", arms.len());
            let setups: Vec<_> = arms
                .iter()
                .map(|&a| arms::setup(a, family, &exe, n, ct_max))
                .collect::<Result<_>>()?;
            let servers: Vec<_> = setups.iter().map(Servers::start).collect::<Result<_>>()?;
            let scenario = Scenario::Ports(n);
            for round in 0..rounds {
                // Rotate the order each round so no arm always goes first.
                for k in 0..setups.len() {
                    let i = (k + round) % setups.len();
                    let values = measure_round(&setups[i], &servers[i], secs)?;
                    for (m, v) in METRICS.iter().map(|m| m.0).zip(values) {
                        samples
                            .entry((scenario, setups[i].arm, m))
                            .or_default()
                            .push(v);
                    }
                }
                eprintln!("round {}/{rounds} done", round + 1);
            }
            measure_bpf_cost(scenario, &setups, &servers, dur, &mut samples)?;
            if p == 0 && self.fwd {
                let fwd_dur = dur.max(Duration::from_secs(1));
                ceilings = measure_fwd(scenario, &setups, rounds, fwd_dur, &mut samples)?;
            }
            if p == 0 && !prefills.is_empty() {
                let _limit = prefill::NfLimit::at_least(most)?;
                let load = Load {
                    what: "flows tracked",
                    scenario: Scenario::Prefill,
                    put: &prefill::fill,
                    remove: &|s, _| prefill::clear(s),
                };
                measure_under(&load, &prefills, &setups, rounds, dur, &mut samples)?;
            }
            if p == 0 && !rule_counts.is_empty() {
                let load = Load {
                    what: "firewall rules",
                    scenario: Scenario::Rules,
                    put: &rules::install,
                    remove: &rules::clear,
                };
                measure_under(&load, &rule_counts, &setups, rounds, dur, &mut samples)?;
            }
        }
        let mut scenarios: Vec<Scenario> = ports.iter().map(|&n| Scenario::Ports(n)).collect();
        scenarios.extend(prefills.iter().map(|&n| Scenario::Prefill(n)));
        scenarios.extend(rule_counts.iter().map(|&n| Scenario::Rules(n)));
        print!(
            "{}",
            report(&samples, &arms, &scenarios, family, rounds, secs)
        );
        if !ceilings.is_empty() {
            let sc = Scenario::Ports(ports[0]);
            let median = |a: Arm, m: &str| samples.get(&(sc, a, m)).map_or(0.0, |v| stat(v).median);
            let rows: Vec<_> = arms
                .iter()
                .map(|&a| (a.name(), median(a, "fwd_pps"), median(a, "masq_fwd_pps")))
                .collect();
            print!("{}", fwd::ceiling_lines(stat(&ceilings).median, &rows));
        }
        if let Some(path) = &self.json {
            let rows: Vec<_> = samples
                .iter()
                .map(|((sc, arm, m), v)| {
                    let st = stat(v);
                    let (ports, prefill, rules) = match sc {
                        Scenario::Ports(n) => (*n, 0, 0),
                        Scenario::Prefill(f) => (ports[0], *f, 0),
                        Scenario::Rules(r) => (ports[0], 0, *r),
                    };
                    json!({ "ports": ports, "prefill_flows": prefill, "firewall_rules": rules, "arm": arm.name(), "metric": m, "median": st.median, "min": st.min, "max": st.max, "samples": v })
                })
                .collect();
            let doc = json!({ "family": if self.ipv6 { "ipv6" } else { "ipv4" }, "rounds": rounds, "secs_per_metric": secs, "results": rows, "fwd_ceiling_pps": ceilings });
            std::fs::write(path, serde_json::to_string_pretty(&doc)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &self.svg {
            let median =
                |sc: Scenario, a: Arm, m: &str| samples.get(&(sc, a, m)).map(|v| stat(v).median);
            std::fs::write(path, chart::svg(&median, &arms, &ports, &prefills))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// The table: per scenario and metric, each arm's median (min-max) and its
/// ratio to `routed` and to the best netfilter arm.
fn report(
    samples: &Samples,
    arms: &[Arm],
    scenarios: &[Scenario],
    family: Family,
    rounds: usize,
    secs: f64,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let over = if family == Family::V6 {
        " over IPv6"
    } else {
        ""
    };
    let _ = writeln!(out, "netbr bench{over}: {rounds} rounds x {secs} s per metric; medians (min-max); ratios to routed and to the best netfilter arm");
    for &sc in scenarios {
        for (metric, higher_better) in METRICS {
            let median = |a: Arm| samples.get(&(sc, a, metric)).map(|v| stat(v).median);
            if arms.iter().all(|a| median(*a).is_none()) {
                continue;
            }
            let _ = writeln!(out, "\n{metric} with {sc}");
            let routed = median(Arm::Routed);
            let best_nf = arms
                .iter()
                .filter(|a| a.is_netfilter())
                .filter_map(|a| median(*a))
                .reduce(|x, y| if higher_better == (x > y) { x } else { y });
            for &a in arms {
                let Some(v) = samples.get(&(sc, a, metric)) else {
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
