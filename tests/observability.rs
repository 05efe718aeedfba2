//! What an operator watches: `netbr metrics` scraped after known traffic
//! (checked by Prometheus' own `promtool`, and against `netbr stats` and
//! the bytes sent), and `netbr monitor` reporting drops and flows as they
//! happen, also under a flood. (The exporter's systemd unit is verified
//! with the others by `cargo xtask install`'s test.)

mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use netbr::{
    cmd::metrics::sample,
    probe::{self, Server},
    sandbox::{Sandbox, BRIDGE, LAN_IP, UPLINK_IP},
};

/// A long-running `netbr --netns HOST ...` (exporter or monitor), under a
/// timeout, stopped with SIGTERM when dropped, and killed if it lingers.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lets the reader of its output start (see `start_unread`).
    resume: Option<mpsc::Sender<()>>,
}

impl Running {
    /// Starts it and waits for the first line it writes to stderr, which
    /// both commands write once they serve.
    fn start(sb: &Sandbox, args: &[&str]) -> Self {
        let mut running = Self::start_unread(sb, args);
        running.resume();
        running
    }

    /// Like `start`, with nothing reading its output until `resume`: once
    /// its pipe is full, it blocks writing.
    fn start_unread(sb: &Sandbox, args: &[&str]) -> Self {
        let mut child = Command::new("timeout")
            .args([
                "--kill-after=5",
                "300",
                env!("CARGO_BIN_EXE_netbr"),
                "--netns",
                &sb.host,
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start netbr");
        let mut ready = String::new();
        BufReader::new(child.stderr.take().expect("stderr"))
            .read_line(&mut ready)
            .expect("read stderr");
        assert!(
            ready.contains("netbr"),
            "netbr {args:?} did not start: {ready:?}"
        );
        let (resume, go) = mpsc::channel();
        let lines = read_lines(child.stdout.take().expect("stdout"), go);
        Self {
            child,
            lines,
            resume: Some(resume),
        }
    }

    fn resume(&mut self) {
        if let Some(go) = self.resume.take() {
            let _ = go.send(());
        }
    }

    /// Lines written so far or within `wait`, until `done`, shown each new
    /// line in turn, says enough.
    fn collect(&self, wait: Duration, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                return got;
            };
            let enough = done(&line);
            got.push(line);
            if enough {
                return got;
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM to `timeout` reaches netbr, which clears what it set.
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of `out`, read from when `go` says so.
fn read_lines(out: ChildStdout, go: mpsc::Receiver<()>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = go.recv();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn attached_with_web() -> (Sandbox, String) {
    let sb = support::sandbox();
    sb.attach().expect("attach");
    sb.add_container(1).expect("c1");
    sb.publish(1, &["8080:80"]).expect("publish");
    let name = sb.container(1);
    (sb, name)
}

const METRICS_PORT: u16 = 9477;

/// `GET /metrics` from inside the host namespace.
fn scrape(sb: &Sandbox) -> String {
    netbr::netns::run_in(&sb.host_path(), || {
        let mut s = TcpStream::connect(("127.0.0.1", METRICS_PORT)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: netbr\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        body.to_string()
    })
    .expect("enter host")
}

/// `promtool check metrics` finds no problem in `text`.
fn promtool_accepts(text: &str) {
    // Taken out of Debian's prometheus package by `cargo xtask setup`.
    let promtool =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/prometheus/usr/bin/promtool");
    let out = netbr::sandbox::run_with_input(
        Command::new("timeout")
            .arg("60")
            .arg(&promtool)
            .args(["check", "metrics"]),
        text.as_bytes(),
    )
    .expect("promtool (cargo xtask setup extracts it)");
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric families a scrape names, in order.
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn metrics_pass_promtool_and_agree_with_stats_and_the_bytes_sent() {
    let (sb, web) = attached_with_web();
    let sink =
        Server::tcp(&sb.container_path(1), 80, Arc::new(|_, _| b"ok".to_vec())).expect("server");
    const SENT: usize = 2_000_000;
    let answer = probe::tcp_request(
        &sb.lan_path(),
        SocketAddr::from((UPLINK_IP, 8080)),
        &vec![7u8; SENT],
    )
    .expect("transfer to the published port");
    assert_eq!(answer, b"ok");
    drop(sink);
    // A rule and a limited endpoint, so that every family has samples.
    sb.netbr_ok(&[
        "firewall",
        "add",
        "--deny",
        "--from",
        "203.0.113.0/24",
        "--port",
        "8080",
    ])
    .expect("rule");
    let limited = sb.container(2);
    sb.netbr_ok(&["endpoint", "add", &limited, "--egress-rate", "100mbit"])
        .expect("limited endpoint");
    let _exporter = Running::start(
        &sb,
        &["metrics", "--listen", &format!("127.0.0.1:{METRICS_PORT}")],
    );

    let before = sb.stats().expect("stats");
    let text = scrape(&sb);
    let after = sb.stats().expect("stats");
    promtool_accepts(&text);

    let b = ("bridge", BRIDGE);
    // Every counter of `netbr stats`, as a metric: between the two readings.
    for (name, was) in before.as_object().expect("stats object") {
        let Some(was) = was.as_u64() else { continue };
        let now = after[name].as_u64().expect("same counters");
        let metric = if name.starts_with("fast_path_") {
            let path = match name.as_str() {
                "fast_path_in" => "into_container",
                "fast_path_out" => "out_uplink",
                _ => "xdp",
            };
            sample(&text, "netbr_fast_path_packets_total", &[b, ("path", path)])
        } else if name.starts_with("drop_") {
            sample(&text, "netbr_drops_total", &[b, ("reason", name)])
        } else {
            sample(&text, "netbr_datapath_events_total", &[b, ("reason", name)])
        };
        let got = metric.unwrap_or_else(|| panic!("no metric for {name}:\n{text}"));
        assert!(
            (was..=now).contains(&got),
            "{name}: {got} not in {was}..={now}"
        );
    }
    assert!(
        sample(
            &text,
            "netbr_datapath_events_total",
            &[b, ("reason", "dnat_new")]
        ) >= Some(1)
    );
    let ep = [b, ("endpoint", web.as_str()), ("container_id", "")];
    let received = sample(&text, "netbr_endpoint_received_bytes_total", &ep).expect("received");
    // The payload, plus headers: at least 40 bytes per segment of at most
    // 64 KiB, at most a few percent with the handshake and acks; plus what
    // the client sent again. Packets of one flow queued on two CPUs' backlogs
    // (the sender moved between CPUs) arrive reordered now and then, and the
    // client retransmits (spuriously: the container answers with DSACKs),
    // each segment at most a full frame.
    let resent = support::snmp(&sb.lan_path(), &[("Tcp:", "RetransSegs")]);
    let most = SENT as u64 * 106 / 100 + resent * 1514;
    assert!(
        (SENT as u64..most).contains(&received),
        "the container received {received} bytes of a {SENT}-byte transfer \
         that the client resent {resent} segments of"
    );
    let sent = sample(&text, "netbr_endpoint_sent_bytes_total", &ep).expect("sent");
    assert!((1..SENT as u64 / 10).contains(&sent), "sent {sent}");
    assert!(sample(&text, "netbr_endpoint_received_packets_total", &ep) >= Some(2));
    assert_eq!(sample(&text, "netbr_published_ports", &[b]), Some(1));
    assert_eq!(sample(&text, "netbr_endpoints", &[b]), Some(2));
    assert_eq!(
        sample(&text, "netbr_firewall_rule_hits_total", &[b, ("rule", "1")]),
        Some(0)
    );
    assert_eq!(
        sample(
            &text,
            "netbr_pacing_drops_total",
            &[
                b,
                ("endpoint", &limited),
                ("container_id", ""),
                ("direction", "egress")
            ]
        ),
        Some(0)
    );
    assert_eq!(sample(&text, "netbr_bridge_attached", &[b]), Some(1));
    let entries = sample(&text, "netbr_conntrack_entries", &[b, ("table", "assured")]).unwrap_or(0)
        + sample(&text, "netbr_conntrack_entries", &[b, ("table", "new")]).unwrap_or(0);
    assert!(
        entries >= 2,
        "the transfer's flow is tracked: {entries} entries"
    );
    assert_eq!(
        sample(
            &text,
            "netbr_conntrack_max_entries",
            &[b, ("table", "assured")]
        ),
        Some(131_072)
    );
    assert!(text.contains("netbr_snat_port_candidates_bucket{bridge=\"netbr0\",le=\"+Inf\"}"));

    // `netbr ls --json` shows the same traffic.
    let ls: serde_json::Value =
        serde_json::from_str(&sb.netbr_ok(&["ls", "--json"]).expect("ls")).expect("json");
    let shown = ls["endpoints"][0]["traffic"]["received_bytes"]
        .as_u64()
        .expect("traffic");
    assert!(shown >= received, "ls {shown} < scrape {received}");

    // The docs list exactly the families a scrape has.
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/observability.md"),
    )
    .expect("docs/observability.md");
    for family in families(&text) {
        assert!(
            doc.contains(&format!("`{family}`")),
            "docs/observability.md lacks {family}"
        );
    }
    for documented in doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `netbr_"))
        .filter_map(|l| l.split('`').next())
    {
        let family = format!("netbr_{documented}");
        assert!(
            families(&text).contains(&family),
            "{family} is documented but not exported"
        );
    }
}

/// Parsed JSON lines of a monitor that match `pred`.
fn events(lines: &[String], pred: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| pred(v))
        .collect()
}

#[test]
fn monitor_shows_a_direct_routing_drop_and_a_published_flow_with_both_tuples() {
    let (sb, web) = attached_with_web();
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    let monitor = Running::start(&sb, &["monitor", "--json"]);
    sb.route_lan_to_subnet().expect("route");
    netbr::netns::run_in(&sb.lan_path(), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("udp");
        s.send_to(b"direct", "172.30.0.2:9999").expect("send");
    })
    .expect("lan");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080)), b"hi")
            .expect("published port"),
        b"hi"
    );
    let is_drop = |v: &serde_json::Value| {
        v["event"] == "drop" && v["reason"] == "drop_direct_routing" && v["tuple"]["dport"] == 9999
    };
    let is_dnat = |v: &serde_json::Value| {
        v["event"] == "new" && v["nat"] == "dnat" && v["original"]["dport"] == 8080
    };
    let (mut saw_drop, mut saw_dnat) = (false, false);
    let lines = monitor.collect(Duration::from_secs(10), |line| {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            saw_drop |= is_drop(&v);
            saw_dnat |= is_dnat(&v);
        }
        saw_drop && saw_dnat
    });
    let drop = events(&lines, is_drop)
        .pop()
        .unwrap_or_else(|| panic!("no drop in {lines:#?}"));
    assert_eq!(drop["proto"], "udp");
    assert_eq!(drop["hook"], "uplink_ingress");
    assert_eq!(drop["tuple"]["src"], LAN_IP.to_string());
    assert_eq!(drop["tuple"]["dst"], "172.30.0.2");
    assert_eq!(drop["endpoint"], web.as_str());
    let flow = events(&lines, is_dnat)
        .pop()
        .unwrap_or_else(|| panic!("no flow in {lines:#?}"));
    assert_eq!(flow["proto"], "tcp");
    assert_eq!(flow["original"]["src"], LAN_IP.to_string());
    assert_eq!(flow["original"]["dst"], UPLINK_IP.to_string());
    assert_eq!(flow["translated"]["dst"], "172.30.0.2");
    assert_eq!(flow["translated"]["dport"], 80);
    assert_eq!(flow["translated"]["sport"], flow["original"]["sport"]);
    assert_eq!(flow["endpoint"], web.as_str());
}

#[test]
fn a_flood_of_drops_stalls_neither_the_datapath_nor_the_monitor() {
    let (sb, _) = attached_with_web();
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    sb.route_lan_to_subnet().expect("route");
    let dropped = |sb: &Sandbox| {
        sb.stats().expect("stats")["drop_direct_routing"]
            .as_u64()
            .unwrap_or(0)
    };
    let start = dropped(&sb);
    // Text lines this time, read by nobody until the flood is over: the
    // monitor blocks on its full pipe and falls behind.
    let mut monitor = Running::start_unread(&sb, &["monitor", "--drops"]);
    const FLOOD: usize = 100_000;
    netbr::netns::run_in(&sb.lan_path(), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("udp");
        for i in 0..FLOOD {
            let _ = s.send_to(&(i as u32).to_be_bytes(), "172.30.0.2:9999");
        }
    })
    .expect("lan");
    let total = dropped(&sb) - start;
    monitor.resume();
    assert!(
        total >= FLOOD as u64 / 2,
        "only {total} of {FLOOD} packets reached the hook"
    );
    // Every drop is either shown or counted as missed.
    let (mut shown, mut missed) = (0u64, 0u64);
    monitor.collect(Duration::from_secs(30), |line| {
        if line.contains(" drop drop_direct_routing ") {
            shown += 1;
        }
        if let Some(n) = line
            .strip_prefix("missed ")
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        {
            missed += n;
        }
        shown + missed >= total
    });
    assert_eq!(
        shown + missed,
        total,
        "{shown} shown + {missed} missed of {total} drops"
    );
    assert!(
        missed > 0,
        "a monitor that read nothing for a while missed nothing"
    );
    assert!(shown > 0, "the monitor showed no drop");
    // The datapath kept serving (its new flow's report, if the ring is
    // still full, is one more miss, which the count above must not see).
    assert_eq!(
        probe::tcp_request(
            &sb.lan_path(),
            SocketAddr::from((UPLINK_IP, 8080)),
            b"still"
        )
        .expect("published port after the flood"),
        b"still"
    );
    // And it is still live: a new drop shows.
    netbr::netns::run_in(&sb.lan_path(), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("udp");
        s.send_to(b"after", "172.30.0.2:9998").expect("send");
    })
    .expect("lan");
    let later = monitor.collect(Duration::from_secs(10), |line| line.contains("dport=9998"));
    assert!(later.iter().any(|l| l.contains("dport=9998")), "{later:?}");
}
