//! `cargo xtask fwd-profile`: where a forwarded frame's kernel time goes.
//! This machine has no PMU, but perf's software clock (`cpu-clock`) samples
//! kernel stacks. Each arm's `netbr bench --fwd` run is recorded; a
//! trafgen process runs per measurement (DNAT, then masquerade, then the
//! generator's ceiling), so the samples of both CPUs taken while each ran
//! are that measurement's. Each sample goes to one group by the kernel
//! functions on its stack; idle samples are left out.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

/// Whether a group claims a sample, by its stack (leaf first).
type Claims = fn(&[&str]) -> bool;

/// The groups, in the order printed. The first group that claims a sample
/// wins.
const GROUPS: &[(&str, Claims)] = &[
    ("netbr's programs", |s| s[0].starts_with("bpf_prog_")),
    ("BPF helpers", |s| {
        s[0].starts_with("bpf_")
            || s.iter()
                .any(|f| matches!(*f, "bpf_ipv4_fib_lookup" | "bpf_ipv6_fib_lookup"))
    }),
    ("waking the receiving socket's reader", |s| {
        s.iter()
            .any(|f| matches!(*f, "sock_def_readable" | "try_to_wake_up"))
    }),
    ("the receiver: recvfrom, scheduling", |s| {
        s.iter().any(|f| {
            [
                "udp_recvmsg",
                "__skb_recv_udp",
                "__sys_recvfrom",
                "schedule",
                "__schedule",
            ]
            .contains(f)
                || f.starts_with("finish_task_switch")
        })
    }),
    ("trafgen's own sending", |s| {
        s.contains(&"packet_sendmsg") && !s.contains(&"__dev_direct_xmit")
    }),
    ("the bridge's receive path and br_netfilter", in_bridge),
    ("IP and UDP receive in the receiving namespace", |s| {
        near_leaf(
            s,
            10,
            &[
                "ip_rcv",
                "ip_local_deliver",
                "udp_",
                "__udp",
                "ip_protocol_deliver",
            ],
        )
    }),
    ("veth transmit and backlog enqueue", |s| {
        near_leaf(
            s,
            6,
            &[
                "veth_xmit",
                "__dev_forward_skb",
                "enqueue_to_backlog",
                "netif_rx",
                "__netif_rx",
            ],
        )
    }),
    ("skb allocation, copies and frees", |s| {
        near_leaf(
            s,
            2,
            &[
                "skb_",
                "kfree_skb",
                "__kfree_skb",
                "kmem_cache",
                "__alloc_skb",
                "napi_",
            ],
        )
    }),
];

fn top<'a>(s: &'a [&'a str], n: usize) -> impl Iterator<Item = &'a &'a str> {
    s.iter().take(n)
}

/// Whether one of the `n` frames nearest the leaf starts with a prefix.
fn near_leaf(s: &[&str], n: usize, prefixes: &[&str]) -> bool {
    top(s, n).any(|f| starts_with_any(f, prefixes))
}

fn starts_with_any(f: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| f.starts_with(p))
}

/// A sample in bridge code (or netfilter's hooks the bridge calls), not in
/// something the bridge's path called further on (a TC program, local
/// delivery).
fn in_bridge(s: &[&str]) -> bool {
    let Some(i) = top(s, 12).position(|f| f.starts_with("br_") || *f == "nf_hook_slow") else {
        return false;
    };
    !s[..i].iter().any(|f| {
        starts_with_any(
            f,
            &[
                "ip_local_deliver",
                "udp_",
                "tcx_run",
                "sch_handle_ingress",
                "tcf_classify",
            ],
        )
    })
}

fn idle(s: &[&str]) -> bool {
    s[0] == "pv_native_safe_halt" || s.iter().take(8).any(|f| *f == "do_idle")
}

/// One sample: its process, pid, time (s) and stack, leaf first.
struct Sample {
    comm: String,
    pid: u32,
    time: f64,
    stack: Vec<String>,
}

pub fn run(arms: &str) -> Result<()> {
    if Command::new("perf").arg("--version").output().is_err() {
        bail!("perf is not installed: apt-get install linux-perf");
    }
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "build",
            "--release",
            "--bin",
            "netbr",
        ]),
    )?;
    let dir = std::env::temp_dir().join(format!("netbr-fwd-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut columns = Vec::new();
    for arm in arms.split(',') {
        let samples = record(&dir.join(format!("{arm}.data")), arm)?;
        let windows = trafgen_windows(&samples);
        let [dnat, masquerade, ..] = windows[..] else {
            bail!("{arm}: expected trafgen's DNAT and masquerade runs, found {windows:?}");
        };
        for (what, window) in [("DNAT", dnat), ("masquerade", masquerade)] {
            columns.push((format!("{arm} {what}"), shares(&samples, window)));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    print_table(&columns);
    Ok(())
}

/// Records `netbr bench --arms ARM --fwd` with perf and reads the samples.
fn record(data: &Path, arm: &str) -> Result<Vec<Sample>> {
    eprintln!("xtask: recording {arm}'s forwarding run");
    crate::run(
        Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "2000",
                "-a",
                "-g",
                "-q",
                "-o",
            ])
            .arg(data)
            .args([
                "--",
                "target/release/netbr",
                "bench",
                "--arms",
                arm,
                "--fwd",
                "--rounds",
                "1",
                "--secs",
                "4",
            ]),
    )?;
    let out = Command::new("perf")
        .args(["script", "-F", "comm,pid,time,ip,sym", "-i"])
        .arg(data)
        .output()
        .context("running perf script")?;
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// `perf script` output: a header line per sample (`comm pid time:`), then
/// one indented line per frame (`ip symbol+offset`).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples: Vec<Sample> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [.., pid, time] = fields[..] else {
                continue;
            };
            let (Ok(pid), Ok(time)) = (pid.parse(), time.trim_end_matches(':').parse()) else {
                continue;
            };
            let comm = fields[..fields.len() - 2].join(" ");
            samples.push(Sample {
                comm,
                pid,
                time,
                stack: Vec::new(),
            });
        } else if let (Some(s), Some(sym)) = (samples.last_mut(), line.split_whitespace().nth(1)) {
            s.stack
                .push(sym.split('+').next().unwrap_or(sym).to_string());
        }
    }
    samples
}

/// Each trafgen process's first and last sample, in the order they ran
/// (processes with a handful of samples, `timeout` around trafgen's start,
/// are left out).
fn trafgen_windows(samples: &[Sample]) -> Vec<(f64, f64)> {
    let mut by_pid: BTreeMap<u32, (f64, f64, usize)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.comm == "trafgen") {
        let w = by_pid.entry(s.pid).or_insert((s.time, s.time, 0));
        w.0 = w.0.min(s.time);
        w.1 = w.1.max(s.time);
        w.2 += 1;
    }
    let mut windows: Vec<(f64, f64)> = by_pid
        .values()
        .filter(|w| w.2 > 100)
        .map(|w| (w.0, w.1))
        .collect();
    windows.sort_by(|a, b| a.0.total_cmp(&b.0));
    windows
}

/// Each group's share of the busy samples within `window`.
fn shares(samples: &[Sample], window: (f64, f64)) -> BTreeMap<&'static str, f64> {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut busy = 0;
    for s in samples
        .iter()
        .filter(|s| s.time >= window.0 && s.time <= window.1)
    {
        let stack: Vec<&str> = s.stack.iter().map(String::as_str).collect();
        if stack.is_empty() || idle(&stack) {
            continue;
        }
        busy += 1;
        let group = GROUPS
            .iter()
            .find(|(_, claims)| claims(&stack))
            .map_or("everything else", |(name, _)| *name);
        *counts.entry(group).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(g, n)| (g, 100.0 * n as f64 / busy.max(1) as f64))
        .collect()
}

fn print_table(columns: &[(String, BTreeMap<&'static str, f64>)]) {
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    println!("| where (share of busy samples) | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(columns.len()));
    let groups = GROUPS.iter().map(|(g, _)| *g).chain(["everything else"]);
    for g in groups {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, shares)| format!("{:.1}%", shares.get(g).copied().unwrap_or(0.0)))
            .collect();
        println!("| {g} | {} |", cells.join(" | "));
    }
}
