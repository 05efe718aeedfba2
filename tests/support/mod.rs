//! Helpers shared by the test binaries.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod fast_path;
pub mod fuzzing;
pub mod host_flows;
pub mod model;
pub mod model6;
pub mod packet;

pub mod config;
pub mod cri;
pub mod kube;
pub mod runtimes;

/// Asserts a `netbr ls --json` document lists no endpoint and no mapping.
pub fn assert_no_endpoints_or_mappings(ls: &serde_json::Value) {
    for list in ["endpoints", "mappings"] {
        assert!(
            ls[list].as_array().is_some_and(Vec::is_empty),
            "{list} left: {ls:#}"
        );
    }
}

/// An endpoint of `netbr ls --json` (or a list of them) without its
/// traffic counters, which any packet moves (an IPv6 router solicitation
/// in the container will): what a refused change must leave as it was.
pub fn settings(mut endpoints: serde_json::Value) -> serde_json::Value {
    let strip = |ep: &mut serde_json::Value| {
        if let Some(o) = ep.as_object_mut() {
            o.remove("traffic");
        }
    };
    match endpoints.as_array_mut() {
        Some(list) => list.iter_mut().for_each(strip),
        None => strip(&mut endpoints),
    }
    endpoints
}

/// Sum of `/proc/net/snmp` counters (`(section, field)`, e.g. `("Tcp:",
/// "InSegs")`) of the network namespace at `ns`, read from a thread inside it.
pub fn snmp(ns: &std::path::Path, fields: &'static [(&'static str, &'static str)]) -> u64 {
    netbr::netns::run_in(ns, move || {
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("snmp");
        fields
            .iter()
            .map(|(section, name)| {
                let mut lines = text.lines().filter(|l| l.starts_with(section));
                let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
                let i = names
                    .split_whitespace()
                    .position(|n| n == *name)
                    .expect("field");
                values
                    .split_whitespace()
                    .nth(i)
                    .expect("value")
                    .parse::<u64>()
                    .expect("number")
            })
            .sum()
    })
    .expect("read snmp")
}

/// The datapath mode a test run asks for: `NETBR_E2E_FAST_PATH=1` and
/// `NETBR_E2E_XDP=1` (set by `cargo xtask test` for its second and third
/// passes). Only tests read these variables.
pub fn mode() -> netbr::sandbox::Mode {
    let on = |k: &str| std::env::var(k).is_ok_and(|v| v == "1");
    netbr::sandbox::Mode {
        fast_path: on("NETBR_E2E_FAST_PATH"),
        xdp: on("NETBR_E2E_XDP"),
    }
}

/// A sandbox attached in the run's mode, driving the real `netbr`.
pub fn sandbox() -> netbr::sandbox::Sandbox {
    netbr::sandbox::Sandbox::create_with(env!("CARGO_BIN_EXE_netbr"), mode()).expect("sandbox")
}

/// Interface names in the namespace at `ns`.
pub fn links(ns: &std::path::Path) -> Vec<String> {
    netbr::netns::run_in(ns, || {
        netbr::netlink::block_on(async {
            let nl = netbr::netlink::Netlink::connect()?;
            Ok(nl.links().await?.into_iter().map(|l| l.name).collect())
        })
    })
    .expect("enter namespace")
    .expect("list links")
}

/// A directory removed, with everything in it, however the test ends.
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The namespace at `ns` has no iptables or ip6tables rule and an empty nftables ruleset:
/// netbr installs none.
pub fn assert_no_netfilter_rules(ns: &std::path::Path) {
    use netbr::sandbox::in_netns;
    for save in ["iptables-save", "ip6tables-save"] {
        let ipt = in_netns(ns, save, &[]).expect(save);
        let rules: Vec<String> = String::from_utf8_lossy(&ipt.stdout)
            .lines()
            .filter(|l| l.starts_with('-'))
            .map(str::to_string)
            .collect();
        assert!(rules.is_empty(), "{save}: rules found: {rules:?}");
    }
    let nft = in_netns(ns, "nft", &["list", "ruleset"]).expect("nft");
    assert!(
        nft.status.success(),
        "nft failed: {}",
        String::from_utf8_lossy(&nft.stderr)
    );
    assert!(
        String::from_utf8_lossy(&nft.stdout).trim().is_empty(),
        "nft ruleset is not empty"
    );
}

/// Goodput in Mbit/s of a 3 s iperf3 run (after a 1 s warm-up) between
/// namespace `from` and an iperf3 server the call starts in `server_ns` at
/// `server_ip`: TCP, or UDP offered at `udp_mbit`; `reverse`, the server
/// sends. What a container's limits let through.
pub fn iperf3_mbit(
    from: &std::path::Path,
    server_ns: &std::path::Path,
    server_ip: std::net::Ipv4Addr,
    reverse: bool,
    udp_mbit: Option<u64>,
) -> f64 {
    use netbr::bench::load::{iperf3, Iperf3Run, Iperf3Server};
    const PORT: u16 = 5211;
    let _server = Iperf3Server::start(server_ns, PORT).expect("iperf3 server");
    let run = Iperf3Run {
        secs: 3,
        omit: 1,
        reverse,
        udp_bits: udp_mbit.map(|m| m * 1_000_000),
    };
    iperf3(from, std::net::SocketAddr::from((server_ip, PORT)), &run).expect("iperf3") / 1e6
}

/// [`iperf3_mbit`] against lan.
pub fn lan_iperf3(
    sb: &netbr::sandbox::Sandbox,
    from: &std::path::Path,
    reverse: bool,
    udp_mbit: Option<u64>,
) -> f64 {
    iperf3_mbit(
        from,
        &sb.lan_path(),
        netbr::sandbox::LAN_IP,
        reverse,
        udp_mbit,
    )
}

/// Asserts UDP offered at 40 Mbit/s came through a 20 Mbit/s limit: near
/// it, far below the offer. Accuracy is `tests/limits.rs`'s to check; these
/// runs share two cores with parallel tests, where iperf3's receiver,
/// descheduled, overflows its socket buffer and reads a few percent low.
pub fn assert_limited_to_20(got_mbit: f64) {
    assert!(
        (16.0..=21.0).contains(&got_mbit),
        "{got_mbit:.2} Mbit/s through a 20 Mbit/s limit, 40 offered"
    );
}
