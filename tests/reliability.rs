//! Reliability of the datapath across control-plane events: re-attaching
//! (same or newer binary) swaps programs atomically and keeps the pinned
//! tables, so established flows never notice.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use netbr::{
    netns,
    probe::{self, Server},
    sandbox::{Sandbox, LAN_IP, SUBNET6, UPLINK_IP, UPLINK_IP6},
};

/// What a traffic loop saw: completed round trips, failures, and the longest
/// wait between two successes.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failures: Vec<String>,
    max_gap: Duration,
}

/// Runs `round` repeatedly in `ns` until `stop`, timing the gaps.
fn traffic(
    ns: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    mut round: impl FnMut() -> anyhow::Result<()> + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<Tally>> {
    netns::spawn_in(&ns, move || {
        let mut t = Tally::default();
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match round() {
                Ok(()) => {
                    t.ok += 1;
                    t.max_gap = t.max_gap.max(last.elapsed());
                    last = Instant::now();
                }
                Err(e) => t.failures.push(format!("{e:#}")),
            }
        }
        t
    })
    .expect("spawn traffic")
}

/// A long-lived connection that echoes a numbered 1 KiB block per round.
fn stream_rounds(to: SocketAddr) -> impl FnMut() -> anyhow::Result<()> + Send + 'static {
    let mut conn: Option<TcpStream> = None;
    let mut n: u32 = 0;
    move || {
        if conn.is_none() {
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            conn = Some(s);
        }
        let s = conn
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no connection"))?;
        n += 1;
        let block: Vec<u8> = (0..1024u32)
            .map(|i| (i.wrapping_mul(n) % 251) as u8)
            .collect();
        s.write_all(&block)?;
        let mut back = vec![0; block.len()];
        s.read_exact(&mut back)?;
        anyhow::ensure!(back == block, "stream to {to} returned different bytes");
        std::thread::sleep(Duration::from_millis(2));
        Ok(())
    }
}

#[test]
fn ten_reattaches_under_load_lose_no_packet_of_established_flows() {
    let sb = support::sandbox();
    sb.attach().expect("attach");
    sb.add_container(1).expect("c1");
    sb.publish(1, &["8080:80", "8081:81"]).expect("publish");
    let _stream_srv =
        Server::tcp_stream(&sb.container_path(1), 80).expect("container stream server");
    let _rr_srv =
        Server::tcp(&sb.container_path(1), 81, probe::echo()).expect("container rr server");
    let _lan_srv = Server::tcp_stream(&sb.lan_path(), 9000).expect("lan stream server");

    let stop = Arc::new(AtomicBool::new(false));
    let dnat_stream = traffic(
        sb.lan_path(),
        stop.clone(),
        stream_rounds(SocketAddr::from((UPLINK_IP, 8080))),
    );
    let snat_stream = traffic(
        sb.container_path(1),
        stop.clone(),
        stream_rounds(SocketAddr::from((LAN_IP, 9000))),
    );
    let rr_to = SocketAddr::from((UPLINK_IP, 8081));
    let requests = traffic(sb.lan_path(), stop.clone(), move || {
        let mut s = TcpStream::connect_timeout(&rr_to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"ping")?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        s.read_to_end(&mut back)?;
        anyhow::ensure!(back == b"ping", "request answered {back:?}");
        Ok(())
    });

    std::thread::sleep(Duration::from_millis(300));
    for i in 0..10 {
        let out = sb
            .attach()
            .unwrap_or_else(|e| panic!("re-attach {i}: {e:#}"));
        assert!(out.contains("re-attached"), "{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    for (name, handle) in [
        ("DNAT stream", dnat_stream),
        ("masquerade stream", snat_stream),
        ("requests", requests),
    ] {
        let t = handle.join().expect("traffic thread").expect("traffic");
        println!("{name}: {} rounds, longest gap {:?}", t.ok, t.max_gap);
        assert!(
            t.failures.is_empty(),
            "{name} failed across re-attaches: {:?}",
            t.failures
        );
        assert!(
            t.ok > 50,
            "{name} made too little progress to prove anything: {t:?}"
        );
        // Not a speed target (those live in benchmarks): a second-long gap
        // would mean traffic stopped while programs were swapped.
        assert!(
            t.max_gap < Duration::from_secs(1),
            "{name} stalled for {:?}",
            t.max_gap
        );
    }
}

#[test]
fn detach_then_attach_restores_service() {
    let sb = support::sandbox();
    sb.attach().expect("attach");
    sb.netbr_ok(&["detach"]).expect("detach");
    sb.attach().expect("attach again");
    sb.add_container(1).expect("c1");
    sb.publish(1, &["8080:80"]).expect("publish");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    let back = probe::tcp_request(
        &sb.lan_path(),
        SocketAddr::from((UPLINK_IP, 8080)),
        b"again",
    )
    .expect("request");
    assert_eq!(back, b"again");
}

#[test]
fn a_full_conntrack_table_refuses_new_flows_logs_it_and_serves_again_once_flows_expire() {
    full_table_refuses_and_recovers(false);
}

/// IPv6's tables fill, refuse and recover as IPv4's, on their own: while
/// IPv6's assured table is full, IPv4 flows are still admitted.
#[test]
fn a_full_ipv6_conntrack_table_refuses_ipv6_flows_alone_and_serves_again_once_they_expire() {
    full_table_refuses_and_recovers(true);
}

/// Fills the assured table of one family (IPv6's on a dual-stack bridge if
/// `ipv6`) with answered UDP flows to a published port, and checks that
/// new flows are refused and logged, and admitted again once the timer
/// collected the expired ones.
fn full_table_refuses_and_recovers(ipv6: bool) {
    let sb = support::sandbox();
    // 64 entries per table: 32 answered UDP flows fill the assured one.
    let mut args = vec!["--ct-max", "64", "--timeout", "udp_stream=5"];
    if ipv6 {
        sb.ipv6_on_the_link().expect("IPv6 on the link");
        args.extend(["--subnet", SUBNET6]);
    }
    sb.attach_with(&args).expect("attach");
    sb.add_container(1).expect("c1");
    sb.publish(1, &["5353:53/udp"]).expect("publish");
    // On every address of both families.
    let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 53));
    let _srv = Server::udp_on(&sb.container_path(1), any, probe::echo()).expect("server");
    let v4 = SocketAddr::from((UPLINK_IP, 5353));
    let to = if ipv6 {
        SocketAddr::from((UPLINK_IP6, 5353))
    } else {
        v4
    };
    let ask = |port: u16| probe::udp_request(&sb.lan_path(), to, port, b"q");
    for port in 40000..40032 {
        assert_eq!(ask(port).expect("a flow while there is room"), b"q");
    }
    // The 33rd flow's answer cannot be admitted; the 34th is refused at
    // its first packet.
    assert!(ask(40032).is_err(), "no room for a 33rd flow");
    assert!(ask(40033).is_err(), "no room for a 34th flow");
    if ipv6 {
        let got = probe::udp_request(&sb.lan_path(), v4, 40040, b"v4").expect("IPv4 has room");
        assert_eq!(got, b"v4");
    }
    let stats = sb.stats().expect("stats");
    assert!(stats["drop_ct_full"].as_u64() >= Some(2), "{stats}");
    let events = sb.netbr_ok(&["events", "--json"]).expect("events");
    let lines: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert!(
        lines.iter().any(|e| e["reason"] == "drop_ct_full"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("--ct-max"))),
        "events: {events}"
    );
    // Every flow stays idle past its 5 s timeout. The collector's timer,
    // in the pinned maps, makes room with no netbr process running and no
    // packet: flows are gone before the next one arrives (it collects
    // while the table is marked full, each family's once a second;
    // lookups drop the rest as they meet them), and service returns
    // without anyone acting.
    std::thread::sleep(Duration::from_secs(7));
    let flows: serde_json::Value = serde_json::from_str(
        &sb.netbr_ok(&["conntrack", "list", "--json"])
            .expect("conntrack list"),
    )
    .expect("json");
    let left = flows.as_array().map(Vec::len).unwrap_or(0);
    assert!(left < 32, "nothing collected: {left} flows left");
    assert_eq!(ask(40034).expect("service returns"), b"q");
}

/// A re-attach over pins of another layout fails and names the fix, and so
/// does every other command that would read or write the maps.
fn assert_attach_refused_for_layout(sb: &Sandbox) {
    let c2 = sb.container(2);
    let c1 = sb.container(1);
    for args in [
        &["attach", "--subnet", "172.30.0.0/16", "--uplink", "up0"][..],
        &["ls"],
        &["stats"],
        &["conntrack", "list"],
        &["endpoint", "add", &c2],
        &["publish", &c1, "-p", "9090:90"],
    ] {
        let out = sb.netbr(args).expect("netbr");
        assert!(!out.status.success(), "{args:?} went ahead");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("map layout") && err.contains("netbr detach"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !netbr::netns::exists(&c2),
        "a refused endpoint add made a namespace"
    );
}

#[test]
fn pins_of_another_layout_are_refused_and_left_intact() {
    let sb = support::sandbox();
    sb.attach().expect("attach");
    sb.add_container(1).expect("c1");
    sb.publish(1, &["8080:80"]).expect("publish");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    // Pretend an older netbr wrote the pins: change the layout version.
    let pins = {
        let ls: serde_json::Value =
            serde_json::from_str(&sb.netbr_ok(&["ls", "--json"]).expect("ls")).expect("json");
        ls["pins"].as_str().expect("pins").to_string()
    };
    let mut dp =
        netbr::bpf::datapath::Datapath::from_pins(std::path::Path::new(&pins)).expect("open pins");
    let mut cfg = dp.config().expect("config");
    cfg.layout_version = netbr_common::maps::LAYOUT_VERSION + 1;
    dp.set_config(&cfg).expect("write config");
    drop(dp);

    assert_attach_refused_for_layout(&sb);
    // Nothing changed: the datapath still serves the mapping.
    let back = probe::tcp_request(
        &sb.lan_path(),
        SocketAddr::from((UPLINK_IP, 8080)),
        b"still",
    )
    .expect("request");
    assert_eq!(back, b"still");
    let leftovers: Vec<_> = std::fs::read_dir(&pins)
        .expect("pins")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().contains("tmp")),
        "{leftovers:?}"
    );
}

#[test]
fn a_pinned_map_of_another_value_size_is_refused_with_a_clear_message() {
    let sb = support::sandbox();
    sb.attach().expect("attach");
    sb.add_container(1).expect("c1");
    sb.publish(1, &["8080:80"]).expect("publish");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    let ls: serde_json::Value =
        serde_json::from_str(&sb.netbr_ok(&["ls", "--json"]).expect("ls")).expect("json");
    let cfg_pin = format!("{}/NB_CFG", ls["pins"].as_str().expect("pins"));
    // An "older netbr" whose config value was 8 bytes. The running programs
    // keep their own map; only the pin changes.
    std::fs::remove_file(&cfg_pin).expect("unpin");
    let made = std::process::Command::new("bpftool")
        .args([
            "map", "create", &cfg_pin, "type", "array", "key", "4", "value", "8", "entries", "1",
            "name", "NB_CFG",
        ])
        .output()
        .expect("bpftool");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert_attach_refused_for_layout(&sb);
    let back = probe::tcp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080)), b"ok")
        .expect("request");
    assert_eq!(back, b"ok", "a refused attach must change nothing");
    // Teardown still works with the odd pin in place, and leaves nothing.
    sb.netbr_ok(&["detach"]).expect("detach");
    assert!(
        !netbr::netns::exists(&sb.container(1)),
        "endpoint namespace left behind"
    );
    assert!(!std::path::Path::new(&cfg_pin).exists(), "pin left behind");
}

/// Trials for the parallel-insert race; `NETBR_RACE_TRIALS` runs more.
fn race_trials() -> u32 {
    std::env::var("NETBR_RACE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn parallel_first_datagrams_of_one_socket_all_get_replies() {
    use std::sync::Barrier;
    let sb = support::sandbox();
    sb.attach().expect("attach");
    sb.add_container(1).expect("c1");
    sb.publish(1, &["5353:53/udp"]).expect("publish");
    let _srv = Server::udp(&sb.container_path(1), 53, probe::echo()).expect("server");
    let to = SocketAddr::from((UPLINK_IP, 5353));
    let trials = race_trials();
    // kubernetes#56903: two datagrams of one new flow (a DNS client's A and
    // AAAA queries from one socket) processed at once on two CPUs. Each
    // trial uses a fresh socket, so each is a new flow.
    let lost = netns::run_in(&sb.lan_path(), move || {
        let barrier = Arc::new(Barrier::new(3));
        let slot: Arc<std::sync::Mutex<Option<Arc<std::net::UdpSocket>>>> = Arc::default();
        let senders: Vec<_> = (0..2u8)
            .map(|i| {
                let (barrier, slot) = (barrier.clone(), slot.clone());
                std::thread::spawn(move || loop {
                    barrier.wait();
                    let sock = slot.lock().expect("slot").clone();
                    let Some(sock) = sock else { return };
                    let _ = sock.send_to(&[i], to);
                    barrier.wait();
                })
            })
            .collect();
        let mut lost = 0u32;
        for _ in 0..trials {
            let sock = Arc::new(std::net::UdpSocket::bind("0.0.0.0:0").expect("bind"));
            sock.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            *slot.lock().expect("slot") = Some(sock.clone());
            barrier.wait(); // both send now
            barrier.wait(); // both sent
            let mut seen = [false; 2];
            let mut buf = [0u8; 8];
            for _ in 0..2 {
                match sock.recv(&mut buf) {
                    Ok(1) if buf[0] < 2 => seen[buf[0] as usize] = true,
                    _ => break,
                }
            }
            lost += seen.iter().filter(|s| !**s).count() as u32;
        }
        *slot.lock().expect("slot") = None;
        barrier.wait();
        for s in senders {
            s.join().expect("sender");
        }
        lost
    })
    .expect("lan");
    let stats: serde_json::Value = sb.stats().expect("stats");
    println!(
        "{trials} trials, {lost} replies lost, dnat_new {}",
        stats["dnat_new"]
    );
    assert_eq!(lost, 0, "replies lost in {trials} trials: {stats:#}");
    assert_eq!(stats["drop_ct_insert"], 0);
}

#[test]
fn cgroup_hooks_never_rewrite_a_socket_of_another_namespace_with_the_same_addresses() {
    let a = support::sandbox();
    let b = support::sandbox();
    for (sb, tag) in [(&a, "A"), (&b, "B")] {
        sb.attach().expect("attach");
        sb.add_container(1).expect("c1");
        sb.publish(1, &["8080:80"]).expect("publish");
        let _ = tag;
    }
    let tag = |t: &'static str| -> probe::Responder {
        Arc::new(move |_: &[u8], _| t.as_bytes().to_vec())
    };
    let _sa = Server::tcp(&a.container_path(1), 80, tag("A")).expect("a server");
    let _sb = Server::tcp(&b.container_path(1), 80, tag("B")).expect("b server");
    let lo = SocketAddr::from(([127, 0, 0, 1], 8080));
    // Both namespaces have the same addresses and the same published port;
    // each one's hooks must only ever act for its own sockets.
    for _ in 0..20 {
        assert_eq!(
            probe::tcp_request(&a.host_path(), lo, b"?").expect("a"),
            b"A"
        );
        assert_eq!(
            probe::tcp_request(&b.host_path(), lo, b"?").expect("b"),
            b"B"
        );
    }
}

/// Packets of the kinds the unsolicited traffic consists of that reached the
/// namespace at `ns`: TCP segments, UDP datagrams (delivered, to no port, or
/// in error), ICMP messages and fragments to reassemble. Not all of `Ip:
/// InReceives`: the host's IGMP reports to all-hosts arrive at random times.
fn unsolicited_kinds_received(ns: &std::path::Path) -> u64 {
    support::snmp(
        ns,
        &[
            ("Tcp:", "InSegs"),
            ("Udp:", "InDatagrams"),
            ("Udp:", "NoPorts"),
            ("Udp:", "InErrors"),
            ("Icmp:", "InMsgs"),
            ("Ip:", "ReasmReqds"),
        ],
    )
}

/// Sends raw IPv4 packets (built by the test packet builder) from `ns`.
fn send_raw(ns: &std::path::Path, frames: Vec<Vec<u8>>) {
    netns::run_in(ns, move || {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
        // SAFETY: plain socket calls; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket");
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for f in frames {
            let ip = &f[14..];
            let dst = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: valid buffer and address.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    ip.as_ptr().cast(),
                    ip.len(),
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            assert!(n >= 0, "sendto: {}", std::io::Error::last_os_error());
        }
    })
    .expect("send");
}

#[test]
fn unsolicited_traffic_from_lan_never_reaches_a_container() {
    use support::packet::{fragment, Spec, SYN};
    let sb = support::sandbox();
    sb.attach().expect("attach");
    let c1 = sb.add_container(1).expect("c1");
    sb.publish(1, &["8080:80"]).expect("publish");
    let lan = std::net::Ipv4Addr::new(192, 0, 2, 2);
    let host = UPLINK_IP;
    let mut frames = Vec::new();
    // Random ports that are not published, TCP and UDP.
    for port in (1..60000u16).step_by(997) {
        frames.push(Spec::tcp((lan, 40000), (host, port + 1), SYN).build());
        frames.push(Spec::udp((lan, 40000), (host, port + 2)).build());
    }
    // Spoofed ICMP errors naming a container flow that does not exist, and
    // one naming the SNAT range.
    let fake = Spec::udp((c1, 5000), (lan, 53)).build();
    frames.push(Spec::icmp_error(lan, host, 3, 3, &fake).build());
    let fake = Spec::udp((host, 61500), (lan, 53)).build();
    frames.push(Spec::icmp_error(lan, host, 3, 3, &fake).build());
    // Stray later fragments aimed at the published port's datagram shape.
    let mut big = Spec::udp((lan, 7000), (host, 8080));
    big.payload = vec![7; 1200];
    for id in 0..20u16 {
        let (_, later) = fragment(&big.build(), 800, 0x5000 + id);
        frames.push(later);
    }
    let before = unsolicited_kinds_received(&sb.container_path(1));
    send_raw(&sb.lan_path(), frames);
    std::thread::sleep(Duration::from_millis(200));
    let after = unsolicited_kinds_received(&sb.container_path(1));
    assert_eq!(
        after,
        before,
        "{} packet(s) reached the container",
        after - before
    );
    // Control: the counter does move for traffic that may pass.
    send_raw(
        &sb.lan_path(),
        vec![Spec::tcp((lan, 40001), (host, 8080), SYN).build()],
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        unsolicited_kinds_received(&sb.container_path(1)) > after,
        "a SYN to the published port did not arrive"
    );
    let stats: serde_json::Value = sb.stats().expect("stats");
    assert_eq!(stats["drop_frag_no_first"], 20, "{stats:#}");
    assert_eq!(stats["drop_icmp_no_flow"], 2, "{stats:#}");
    assert_eq!(
        stats["dnat_new"], 1,
        "only the control SYN is translated: {stats:#}"
    );
}
