//! Bandwidth limits end to end: iperf3 through a limited container on the
//! sandbox, in whichever datapath mode the environment picks (plain, fast
//! path, XDP), both directions.
//!
//! Rates are checked with UDP offered at twice the limit, which measures
//! the limiter alone, and with TCP, whether netbr paces (`fq`) or polices
//! (a kernel without `fq`, as here).

mod support;

use netbr::sandbox::Sandbox;

/// The tolerance on rate accuracy.
const TOLERANCE: f64 = 0.05;
/// Limits count IP bytes; iperf3 counts payload. What each protocol can
/// carry at most: a full TCP segment (timestamps on) carries 1448 bytes
/// per 1500, a 1400-byte datagram 1400 per 1428.
const TCP_GOODPUT: f64 = 1448.0 / 1500.0;
const UDP_GOODPUT: f64 = 1400.0 / 1428.0;

/// Goodput of one direction between container `n` and lan, in Mbit/s: TCP,
/// or UDP offered at `udp_mbit`.
fn measure(sb: &Sandbox, n: u32, reverse: bool, udp_mbit: Option<u64>) -> f64 {
    support::lan_iperf3(sb, &sb.container_path(n), reverse, udp_mbit)
}

/// Checks a direction of container `n` against its limit: UDP and TCP
/// goodput within the tolerance of what the limit lets each carry.
fn assert_limited(step: &str, sb: &Sandbox, n: u32, reverse: bool, limit: f64) {
    let what = if reverse { "ingress" } else { "egress" };
    let ideal = limit * UDP_GOODPUT;
    let near = |got: f64| (got - ideal).abs() <= ideal * TOLERANCE;
    let first = measure(sb, n, reverse, Some(2 * limit as u64));
    // Once in a while (three times in some hundred runs, never alone) a run
    // reads 6% low: on two busy cores iperf3's receiver, descheduled,
    // overflows its socket buffer. A broken limit fails twice.
    let udp = if near(first) {
        first
    } else {
        measure(sb, n, reverse, Some(2 * limit as u64))
    };
    let ep = ls_endpoint(sb, n);
    assert!(
        near(udp),
        "{step}: {what} UDP: {udp:.2} Mbit/s (first {first:.2}), limit {limit} Mbit/s (within {}%); {ep}; {}",
        TOLERANCE * 100.0,
        sb.netbr_ok(&["stats"]).unwrap_or_default()
    );
    let tcp = measure(sb, n, reverse, None);
    let mode = ep[format!("{what}_limit")]["mode"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(mode == "edt" || mode == "police", "{ep}");
    // Paced, TCP holds the tolerance. Policed (no `fq`), TCP loses a burst's
    // tail now and then and waits on its retransmission timer: over 5 s
    // runs the bench measures 95-98% of the limit, but one 200 ms stall in
    // this 3 s run costs 7%, and the quarter-second bucket refilled during
    // a stall lets up to 8% of the run through on top. So policed TCP must
    // stay within 80% and 113% of what the limit carries.
    let ideal = limit * TCP_GOODPUT;
    let (low, high) = if mode == "edt" {
        (1.0 - TOLERANCE, 1.0 + TOLERANCE)
    } else {
        (0.8, 1.0 + TOLERANCE + 0.25 / 3.0)
    };
    assert!(
        tcp >= ideal * low && tcp <= ideal * high,
        "{step}: {what} TCP ({mode}): {tcp:.2} Mbit/s, limit {limit} Mbit/s"
    );
}

fn ls_endpoint(sb: &Sandbox, n: u32) -> serde_json::Value {
    let ls: serde_json::Value =
        serde_json::from_str(&sb.netbr_ok(&["ls", "--json"]).expect("ls")).expect("json");
    let name = sb.container(n);
    ls["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["name"] == name.as_str())
        .cloned()
        .expect("endpoint listed")
}

#[test]
fn limits_hold_in_both_directions_change_live_and_survive_reattach() {
    let sb = support::sandbox();
    sb.attach().expect("attach");
    sb.add_container(2).expect("unlimited c2");
    let unlimited_before = measure(&sb, 2, false, None);
    sb.netbr_ok(&[
        "endpoint",
        "add",
        &sb.container(1),
        "--ip",
        "172.30.0.2",
        "--egress-rate",
        "20mbit",
        "--ingress-rate",
        "40mbit",
    ])
    .expect("limited c1");
    let ep = ls_endpoint(&sb, 1);
    assert_eq!(ep["egress_limit"]["rate"], "20mbit", "{ep}");
    assert_eq!(ep["ingress_limit"]["rate"], "40mbit", "{ep}");

    assert_limited("new", &sb, 1, false, 20.0);
    assert_limited("new", &sb, 1, true, 40.0);
    // The other endpoint is not held back: far above either limit, and
    // not much below what it had alone.
    let unlimited = measure(&sb, 2, false, None);
    assert!(
        unlimited > 200.0 && unlimited > unlimited_before * 0.5,
        "unlimited endpoint: {unlimited:.0} Mbit/s, {unlimited_before:.0} before"
    );

    // Traffic to another container on the bridge is limited too.
    let c2 = std::net::Ipv4Addr::new(172, 30, 0, 3);
    let c2c = support::iperf3_mbit(
        &sb.container_path(1),
        &sb.container_path(2),
        c2,
        false,
        Some(40),
    );
    assert!(
        (c2c - 20.0 * UDP_GOODPUT).abs() <= 20.0 * TOLERANCE,
        "container to container: {c2c:.2} Mbit/s, egress limit 20"
    );

    // A live change, then lifting one direction.
    sb.netbr_ok(&[
        "endpoint",
        "limit",
        &sb.container(1),
        "--egress-rate",
        "10mbit",
    ])
    .expect("limit");
    assert_limited("changed", &sb, 1, false, 10.0);
    assert_limited("changed", &sb, 1, true, 40.0);
    sb.netbr_ok(&[
        "endpoint",
        "limit",
        &sb.container(1),
        "--ingress-rate",
        "none",
    ])
    .expect("lift");
    let lifted = measure(&sb, 1, true, None);
    assert!(lifted > 200.0, "ingress after none: {lifted:.0} Mbit/s");
    assert!(ls_endpoint(&sb, 1)["ingress_limit"].is_null());

    // Kept across a re-attach, and across detach --keep-bridge.
    sb.attach().expect("re-attach");
    assert_limited("re-attached", &sb, 1, false, 10.0);
    sb.netbr_ok(&["detach", "--keep-bridge"]).expect("detach");
    sb.attach().expect("attach again");
    assert_limited("after detach --keep-bridge", &sb, 1, false, 10.0);
}

#[test]
fn bad_rates_are_refused_and_change_nothing() {
    let sb = support::sandbox();
    sb.attach().expect("attach");
    sb.add_container(1).expect("c1");
    let before = support::settings(ls_endpoint(&sb, 1));
    for (rate, needle) in [
        ("20 mbps", "tc's units"),
        ("fast", "tc's units"),
        ("1bit", "out of range"),
        ("-3mbit", "tc's units"),
    ] {
        let flag = format!("--egress-rate={rate}");
        let o = sb
            .netbr(&["endpoint", "limit", &sb.container(1), &flag])
            .expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{rate}: {err}");
    }
    let o = sb
        .netbr(&["endpoint", "limit", "nobody", "--egress-rate", "1mbit"])
        .expect("run");
    assert!(!o.status.success());
    // An operator's own qdisc (the seeds' tbf) is never replaced.
    let host_veth = netbr::store::veth_names(netbr::sandbox::BRIDGE, &sb.container(1)).0;
    let tbf = [
        "qdisc", "add", "dev", &host_veth, "root", "tbf", "rate", "10mbit", "latency", "50ms",
        "burst", "10000",
    ];
    assert!(sb.in_host("tc", &tbf).expect("tc").status.success());
    let o = sb
        .netbr(&[
            "endpoint",
            "limit",
            &sb.container(1),
            "--ingress-rate",
            "5mbit",
        ])
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("tbf root qdisc"),
        "{err}"
    );
    let qdisc = sb
        .in_host("tc", &["qdisc", "show", "dev", &host_veth, "root"])
        .expect("tc");
    assert!(String::from_utf8_lossy(&qdisc.stdout).contains("tbf"));
    // A refused add leaves no endpoint behind.
    let o = sb
        .netbr(&[
            "endpoint",
            "add",
            &sb.container(3),
            "--ingress-rate",
            "lots",
        ])
        .expect("run");
    assert!(!o.status.success());
    assert!(!netbr::netns::exists(&sb.container(3)));
    assert_eq!(support::settings(ls_endpoint(&sb, 1)), before);
}
