//! Dual-stack bridges: IPv6 addresses for the bridge and its endpoints,
//! containers talking over IPv6 and reaching the LAN masqueraded (NAT66),
//! direct routing refused for IPv6 as for IPv4 and allowed on request, in
//! every datapath mode.

mod support;

use std::{
    net::{Ipv6Addr, SocketAddr},
    path::Path,
};

use netbr::{
    probe::{self, Server},
    sandbox::{in_netns, Sandbox, UPLINK},
};

const SUBNET6: &str = "fd00:30::/64";
const GATEWAY6: &str = "fd00:30::1";
/// The uplink link's IPv6 addresses: the host's and lan's.
const UPLINK6: &str = "2001:db8:1::1";
const LAN6: &str = "2001:db8:1::2";

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 address")
}

fn ip(ns: &Path, args: &[&str]) {
    let o = in_netns(ns, "ip", args).expect("ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The sandbox with IPv6 on the uplink link, attached dual-stack with
/// `extra`, with containers 1 and 2.
fn dual_stack(extra: &[&str]) -> Sandbox {
    let sb = support::sandbox();
    sb.ipv6_on_the_link().expect("IPv6 on the link");
    let mut args = vec!["--subnet", SUBNET6];
    args.extend_from_slice(extra);
    let out = sb.attach_with(&args).expect("attach dual-stack");
    assert!(
        out.contains(&format!("IPv6 gateway {GATEWAY6}/64")),
        "{out}"
    );
    for n in [1, 2] {
        sb.add_container(n).expect("container");
    }
    sb
}

/// Container `n`'s IPv6 address: endpoints get the subnet's addresses in
/// order after the gateway's.
fn container6(n: u32) -> Ipv6Addr {
    v6(&format!("fd00:30::{}", n + 1))
}

fn ls(sb: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&sb.netbr_ok(&["ls", "--json"]).expect("ls")).expect("ls json")
}

fn counter(sb: &Sandbox, reason: &str) -> u64 {
    sb.stats().expect("stats")[reason].as_u64().unwrap_or(0)
}

/// A TCP echo server on port `port` of every IPv6 address of `ns`.
fn server6(ns: &Path, port: u16) -> Server {
    Server::tcp_on(ns, (Ipv6Addr::UNSPECIFIED, port).into(), probe::echo()).expect("server")
}

/// A UDP echo server on port `port` of every IPv6 address of `ns`.
fn udp_server6(ns: &Path, port: u16) -> Server {
    Server::udp_on(ns, (Ipv6Addr::UNSPECIFIED, port).into(), probe::echo()).expect("udp server")
}

fn to6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    (ip, port).into()
}

#[test]
fn dual_stack_containers_talk_over_ipv6_reach_the_lan_masqueraded_and_outsiders_cannot_reach_them()
{
    let sb = dual_stack(&[]);
    let doc = ls(&sb);
    assert_eq!(doc["subnet6"], SUBNET6);
    assert_eq!(doc["gateway6"], GATEWAY6);
    assert_eq!(doc["masquerade6"], UPLINK6);
    let eps = doc["endpoints"].as_array().expect("endpoints");
    for (n, ep) in [1, 2].into_iter().zip(eps) {
        assert_eq!(ep["ip6"], container6(n).to_string(), "{ep}");
    }
    // Usable at once: no duplicate address detection left the address
    // tentative, and the first connection goes through.
    let addrs = in_netns(
        &sb.container_path(1),
        "ip",
        &["-6", "addr", "show", "dev", "eth0"],
    )
    .expect("ip addr");
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    let global = addrs
        .lines()
        .find(|l| l.contains(&format!("{}/64", container6(1))))
        .unwrap_or_else(|| panic!("no {} in {addrs}", container6(1)));
    assert!(!global.contains("tentative"), "{addrs}");
    let srv = server6(&sb.container_path(2), 8080);
    let got = probe::tcp_request(&sb.container_path(1), to6(container6(2), 8080), b"over v6")
        .expect("container to container over IPv6");
    assert_eq!(got, b"over v6");
    assert_eq!(srv.peers()[0].ip(), container6(1));
    let ping = in_netns(
        &sb.container_path(1),
        "ping",
        &["-6", "-c1", "-W2", GATEWAY6],
    )
    .expect("ping");
    assert!(ping.status.success(), "the IPv6 gateway answers ping");

    // Beyond the host, IPv6 leaves masqueraded to the uplink's address:
    // TCP, UDP (its own port kept) and ping from both containers.
    let lan_tcp = server6(&sb.lan_path(), 9090);
    let lan_udp = udp_server6(&sb.lan_path(), 5353);
    for n in [1, 2] {
        let got = probe::tcp_request(&sb.container_path(n), to6(v6(LAN6), 9090), b"out")
            .expect("a container to the LAN over IPv6");
        assert_eq!(got, b"out");
        let got = probe::udp_request(
            &sb.container_path(n),
            to6(v6(LAN6), 5353),
            5000 + n as u16,
            b"dns",
        )
        .expect("a datagram to the LAN over IPv6");
        assert_eq!(got, b"dns");
    }
    assert!(
        lan_tcp.peers().iter().all(|p| p.ip() == v6(UPLINK6)),
        "{:?}",
        lan_tcp.peers()
    );
    let udp_peers = lan_udp.peers();
    assert_eq!(udp_peers.len(), 2);

    assert!(
        udp_peers.iter().all(|p| p.ip() == v6(UPLINK6)),
        "{udp_peers:?}"
    );
    let ports: Vec<u16> = udp_peers.iter().map(|p| p.port()).collect();
    assert_eq!(
        ports,
        [5001, 5002],
        "source ports outside the host's range are kept"
    );
    // A datagram too big for one packet leaves in fragments, and its echo
    // comes back in fragments: every one is translated.
    let big = vec![b'f'; 3000];
    let got = probe::udp_request(&sb.container_path(1), to6(v6(LAN6), 5353), 5010, &big)
        .expect("a fragmented datagram both ways over IPv6");
    assert_eq!(got, big);
    assert_eq!(
        lan_udp.peers().last().map(|p| p.ip()),
        Some(v6(UPLINK6).into())
    );
    let pings: Vec<_> = [1, 2]
        .map(|n| {
            let ns = sb.container_path(n);
            std::thread::spawn(move || in_netns(&ns, "ping", &["-6", "-c2", "-i0.2", "-W2", LAN6]))
        })
        .into_iter()
        .map(|t| t.join().expect("ping thread").expect("ping"))
        .collect();
    assert!(
        pings.iter().all(|p| p.status.success()),
        "both containers ping one peer"
    );
    let flows = || -> serde_json::Value {
        serde_json::from_str(
            &sb.netbr_ok(&["conntrack", "list", "--json"])
                .expect("conntrack"),
        )
        .expect("json")
    };
    let masqueraded_from = |flows: &serde_json::Value, n: u32| {
        flows
            .as_array()
            .expect("flows")
            .iter()
            .filter(|f| f["original"]["src"] == container6(n).to_string())
            .filter(|f| f["translated"]["src"] == UPLINK6 && f["nat"] == "snat")
            .count()
    };
    let before = flows();
    assert!(
        masqueraded_from(&before, 1) >= 3,
        "TCP, UDP and ping of c1 tracked: {before:#}"
    );
    // `conntrack flush --from` takes an IPv6 block: c1's flows go, c2's stay.
    sb.netbr_ok(&[
        "conntrack",
        "flush",
        "--from",
        &format!("{}/128", container6(1)),
    ])
    .expect("flush by IPv6 source");
    let after = flows();
    assert_eq!(masqueraded_from(&after, 1), 0, "{after:#}");
    assert_eq!(
        masqueraded_from(&after, 2),
        masqueraded_from(&before, 2),
        "{after:#}"
    );
    assert!(masqueraded_from(&after, 2) >= 3);
    assert!(counter(&sb, "snat_new") >= 6);

    // A port published without a host IP answers on the uplink's IPv6
    // address too, as Docker publishes on both families.
    sb.publish(1, &["8080:80", "5353:53/udp"]).expect("publish");
    let web = server6(&sb.container_path(1), 80);
    let dns = udp_server6(&sb.container_path(1), 53);
    let got = probe::tcp_request(&sb.lan_path(), to6(v6(UPLINK6), 8080), b"published")
        .expect("a published port over IPv6");
    assert_eq!(got, b"published");
    assert_eq!(web.peers()[0].ip(), v6(LAN6), "the client's own address");
    let got = probe::udp_request(&sb.lan_path(), to6(v6(UPLINK6), 5353), 40053, b"query")
        .expect("a published UDP port over IPv6");
    assert_eq!(got, b"query");
    assert_eq!(dns.peers()[0], to6(v6(LAN6), 40053));
    assert!(counter(&sb, "dnat_new") >= 1);
    // Another container reaches it through the uplink's IPv6 address
    // (hairpin), seen inside as coming from the gateway.
    let got = probe::tcp_request(&sb.container_path(2), to6(v6(UPLINK6), 8080), b"hairpin")
        .expect("hairpin over IPv6");
    assert_eq!(got, b"hairpin");
    assert_eq!(web.peers()[1].ip(), v6(GATEWAY6));
    let got = probe::udp_request(&sb.container_path(2), to6(v6(UPLINK6), 5353), 5300, b"q2")
        .expect("hairpin UDP over IPv6");
    assert_eq!(got, b"q2");
    assert!(counter(&sb, "hairpin_new") >= 2);

    // A LAN host that routes the subnet via this host is refused, as for
    // IPv4.
    ip(
        &sb.lan_path(),
        &["-6", "route", "add", SUBNET6, "via", UPLINK6],
    );
    let outside = server6(&sb.container_path(1), 8081);
    let before = counter(&sb, "drop_direct_routing");
    assert!(probe::tcp_request(&sb.lan_path(), to6(container6(1), 8081), b"in").is_err());
    assert!(
        outside.peers().is_empty(),
        "a directly routed IPv6 connection arrived"
    );
    assert!(counter(&sb, "drop_direct_routing") > before);
    support::assert_no_netfilter_rules(&sb.host_path());
}

#[test]
fn with_direct_routing_the_lan_reaches_containers_over_ipv6_and_they_still_masquerade() {
    let sb = dual_stack(&["--allow-direct-routing"]);
    ip(
        &sb.lan_path(),
        &["-6", "route", "add", SUBNET6, "via", UPLINK6],
    );
    let inside = server6(&sb.container_path(2), 8080);
    let got = probe::tcp_request(&sb.lan_path(), to6(container6(2), 8080), b"in")
        .expect("LAN to container over IPv6");
    assert_eq!(got, b"in");
    assert_eq!(inside.peers()[0].ip(), v6(LAN6));
    let lan = server6(&sb.lan_path(), 9090);
    probe::tcp_request(&sb.container_path(1), to6(v6(LAN6), 9090), b"out").expect("out");
    assert_eq!(lan.peers()[0].ip(), v6(UPLINK6), "masqueraded as IPv4 is");
    support::assert_no_netfilter_rules(&sb.host_path());
}

#[test]
fn without_a_global_uplink_address_containers_ipv6_stays_on_the_host() {
    let sb = support::sandbox();
    let out = sb
        .attach_with(&["--subnet", SUBNET6])
        .expect("attach dual-stack");
    assert!(
        out.contains("has no global IPv6 address to masquerade to"),
        "{out}"
    );
    sb.add_container(1).expect("container");
    // No route out: told at once, rather than left waiting for an answer
    // that could not come.
    let err = probe::tcp_request(&sb.container_path(1), to6(v6(LAN6), 9), b"x")
        .expect_err("no IPv6 route out");
    assert!(format!("{err:#}").contains("unreachable"), "{err:#}");
    let ping = in_netns(
        &sb.container_path(1),
        "ping",
        &["-6", "-c1", "-W2", GATEWAY6],
    )
    .expect("ping");
    assert!(ping.status.success(), "the gateway still answers");
}

#[test]
fn ipv6_addresses_are_chosen_checked_and_kept_with_their_flows_across_reattach() {
    let sb = dual_stack(&["--icc", "false"]);
    // ICC off isolates the bridge ports, so IPv6 too.
    let _srv = server6(&sb.container_path(2), 8080);
    assert!(
        probe::tcp_request(&sb.container_path(1), to6(container6(2), 8080), b"x").is_err(),
        "containers reached each other over IPv6 with ICC off"
    );
    let c3 = sb.container(3);
    sb.netbr_ok(&[
        "endpoint",
        "add",
        &c3,
        "--ip",
        "172.30.0.9",
        "--ip",
        "fd00:30::99",
    ])
    .expect("endpoint with an address of each family");
    let doc = ls(&sb);
    let ep = doc["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == c3.as_str()))
        .expect("endpoint 3");
    assert_eq!(
        (ep["ip"].as_str(), ep["ip6"].as_str()),
        (Some("172.30.0.9"), Some("fd00:30::99"))
    );
    for (args, needle) in [
        (vec!["--ip", "fd00:30::2"], "already used by endpoint"),
        (
            vec!["--ip", "fd00:31::2"],
            "not a free host address of fd00:30::/64",
        ),
        (
            vec!["--ip", "fd00:30::5", "--ip", "fd00:30::6"],
            "given twice for IPv6",
        ),
    ] {
        let mut cmd = vec!["endpoint", "add", "c9-refused"];
        cmd.extend(args);
        let o = sb.netbr(&cmd).expect("netbr");
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{cmd:?}: {o:?}"
        );
    }
    let c1 = sb.container(1);
    for (cmd, needle) in [
        (
            vec!["publish", c1.as_str(), "-p", "[2001:db8:9::9]:8083:80"],
            "is not an address of this host",
        ),
        (
            vec!["publish", c1.as_str(), "-p", "[fe80::1]:8083:80"],
            "link-local",
        ),
        (
            vec!["conntrack", "flush", "--from", "fd00:30::/129"],
            "no prefix length from 0 to 128",
        ),
    ] {
        let o = sb.netbr(&cmd).expect("netbr");
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{cmd:?}: {o:?}"
        );
    }
    let doc = ls(&sb);
    assert_eq!(
        doc["endpoints"].as_array().map(Vec::len),
        Some(3),
        "refusals changed nothing"
    );
    assert_eq!(doc["mappings"].as_array().map(Vec::len), Some(0));

    // A re-attach that names no IPv6 subnet keeps it, and the IPv6 flows
    // with it: a connection open across it carries on. One naming another
    // subnet is refused.
    let lan = Server::tcp_stream_on(&sb.lan_path(), (Ipv6Addr::UNSPECIFIED, 9091).into())
        .expect("stream server");
    let to = to6(v6(LAN6), 9091);
    let mut stream = netbr::netns::run_in(&sb.container_path(1), move || {
        std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(3))
    })
    .expect("netns")
    .expect("a long-lived IPv6 connection");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .expect("timeout");
    let mut echo = |what: &[u8]| {
        use std::io::{Read, Write};
        stream.write_all(what).expect("write");
        let mut got = vec![0; what.len()];
        stream.read_exact(&mut got).expect("echo");
        assert_eq!(got, what);
    };
    echo(b"before");
    sb.netbr_ok(&sb.attach_args(&["--icc", "false"]))
        .expect("re-attach");
    assert_eq!(ls(&sb)["subnet6"], SUBNET6);
    echo(b"after the re-attach");
    assert_eq!(lan.peers().len(), 1, "one connection throughout");
    let o = sb
        .netbr(&sb.attach_args(&["--subnet", "fd00:99::/64"]))
        .expect("netbr");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("already attached with IPv6 subnet fd00:30::/64"));
    assert_eq!(ls(&sb)["subnet6"], SUBNET6);
}

#[test]
fn malformed_subnets_are_refused() {
    let sb = support::sandbox();
    for (args, needle) in [
        (
            vec![
                "attach",
                "--subnet",
                "172.30.0.0/16",
                "--subnet",
                "fd00:30::/64",
                "--subnet",
                "fd00:31::/64",
                "--uplink",
                UPLINK,
            ],
            "given twice for IPv6",
        ),
        (
            vec![
                "attach",
                "--subnet",
                "172.30.0.0/16",
                "--subnet",
                "fe80::/64",
                "--uplink",
                UPLINK,
            ],
            "not a unicast block",
        ),
        (
            vec![
                "attach",
                "--subnet",
                "172.30.0.0/16",
                "--subnet",
                SUBNET6,
                "--gateway",
                "fd00:31::1",
                "--uplink",
                UPLINK,
            ],
            "not a host address of fd00:30::/64",
        ),
    ] {
        let o = sb.netbr(&args).expect("netbr");
        assert!(!o.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{args:?}: {o:?}"
        );
    }
    let o = sb.netbr(&["ls"]).expect("netbr");
    assert!(!o.status.success(), "a refused attach left a bridge behind");
}

/// A namespace of the test's own beyond `lan`, deleted on drop.
struct Far(String);

impl Drop for Far {
    fn drop(&mut self) {
        let _ = netbr::netns::delete_named(&self.0);
    }
}

#[test]
fn icmpv6_errors_from_a_router_beyond_the_lan_reach_the_container() {
    let sb = dual_stack(&[]);
    // lan routes to `far` over a link whose lan end takes 1280 bytes while
    // `far` announces an MSS for 1500 (a narrower hop TCP's handshake does
    // not see): full-size segments from the container draw a Packet Too
    // Big addressed to the uplink, which must reach the container for its
    // TCP to shrink them.
    let far = Far(format!("nbf-{}", sb.suffix));
    netbr::netns::create_named(&far.0).expect("far namespace");
    let far_ns = netbr::netns::resolve(&far.0);
    let lan = sb.lan_path();
    ip(
        &lan,
        &[
            "link", "add", "nbfar0", "mtu", "1280", "type", "veth", "peer", "name", "eth0", "mtu",
            "1500", "netns", &far.0,
        ],
    );
    ip(
        &lan,
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:2::1/64",
            "dev",
            "nbfar0",
            "nodad",
        ],
    );
    ip(&lan, &["link", "set", "nbfar0", "up"]);
    let fwd = in_netns(&lan, "sysctl", &["-w", "net.ipv6.conf.all.forwarding=1"]).expect("sysctl");
    assert!(fwd.status.success());
    ip(
        &far_ns,
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:2::2/64",
            "dev",
            "eth0",
            "nodad",
        ],
    );
    ip(&far_ns, &["link", "set", "eth0", "up"]);
    ip(&far_ns, &["link", "set", "lo", "up"]);
    ip(
        &far_ns,
        &["-6", "route", "add", "default", "via", "2001:db8:2::1"],
    );
    ip(
        &sb.host_path(),
        &["-6", "route", "add", "2001:db8:2::/64", "via", LAN6],
    );
    let counted: probe::Responder =
        std::sync::Arc::new(|data, _| data.len().to_string().into_bytes());
    let _server =
        Server::tcp_on(&far_ns, (Ipv6Addr::UNSPECIFIED, 9000).into(), counted).expect("far server");
    let payload = vec![b'x'; 60_000];
    let got = probe::tcp_request(
        &sb.container_path(1),
        to6(v6("2001:db8:2::2"), 9000),
        &payload,
    )
    .expect("a transfer through the 1280-byte link");
    assert_eq!(got, b"60000");
    let translated = counter(&sb, "icmp_error_translated");
    assert!(translated >= 1, "the Packet Too Big was translated");
    // A hop limit that expires at the router beyond the host: its Time
    // Exceeded, about a masqueraded ping, reaches the container's ping.
    let ping = in_netns(
        &sb.container_path(1),
        "ping",
        &["-6", "-c1", "-t", "2", "-W2", "2001:db8:2::2"],
    )
    .expect("ping");
    let said = String::from_utf8_lossy(&ping.stdout);
    assert!(
        said.contains(LAN6) && said.to_lowercase().contains("time exceeded"),
        "{said}"
    );
    assert!(counter(&sb, "icmp_error_translated") > translated);
}

#[test]
fn host_processes_reach_published_ports_on_ipv6_loopback_and_cannot_bind_them() {
    let sb = dual_stack(&[]);
    sb.publish(1, &["8080:80", "5353:53/udp"]).expect("publish");
    let web = server6(&sb.container_path(1), 80);
    let dns = udp_server6(&sb.container_path(1), 53);
    // No proxy: the host's socket itself is pointed at the container, and
    // it still sees the address it dialled.
    for host in [Ipv6Addr::LOCALHOST, v6(UPLINK6)] {
        let (got, peer) = probe::tcp_request_peer(&sb.host_path(), to6(host, 8080), b"local")
            .expect("a host process to a published port over IPv6");
        assert_eq!(got, b"local");
        assert_eq!(peer, to6(host, 8080), "getpeername shows what was dialled");
    }
    assert!(web.peers().iter().all(|p| p.ip() != Ipv6Addr::UNSPECIFIED));
    let (got, from) = probe::udp_exchange(
        &sb.host_path(),
        to6(Ipv6Addr::LOCALHOST, 5353),
        0,
        b"query",
        false,
    )
    .expect("a datagram to a published UDP port on [::1]");
    assert_eq!(got, b"query");
    assert_eq!(
        from,
        to6(Ipv6Addr::LOCALHOST, 5353),
        "recvfrom shows what was dialled"
    );
    assert_eq!(dns.peers().len(), 1);
    // The published port is netbr's: a host socket may not bind it.
    let bound = netbr::netns::run_in(&sb.host_path(), || {
        std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, 8080)).map(|_| ())
    })
    .expect("netns");
    let err = bound.expect_err("bind [::]:8080 must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(counter(&sb, "sock_rewrite") >= 3);
}

#[test]
fn published_ports_take_the_families_dockers_grammar_gives_them() {
    let sb = dual_stack(&[]);
    let out = sb
        .publish(1, &["[::]:8081:80", "0.0.0.0:8082:80", "8083:80"])
        .expect("publish");
    assert!(out.contains("published [::]:8081/tcp"), "{out}");
    let _web = Server::tcp_on(
        &sb.container_path(1),
        (Ipv6Addr::UNSPECIFIED, 80).into(),
        probe::echo(),
    )
    .expect("server on both families");
    let lan = sb.lan_path();
    let v4 = |port| SocketAddr::from((netbr::sandbox::UPLINK_IP, port));
    let reach = |to: SocketAddr| probe::tcp_request(&lan, to, b"hi").is_ok_and(|got| got == b"hi");
    assert!(reach(to6(v6(UPLINK6), 8081)), "[::]:8081 on IPv6");
    assert!(!reach(v4(8081)), "[::]:8081 not on IPv4");
    assert!(reach(v4(8082)), "0.0.0.0:8082 on IPv4");
    assert!(!reach(to6(v6(UPLINK6), 8082)), "0.0.0.0:8082 not on IPv6");
    assert!(
        reach(v4(8083)) && reach(to6(v6(UPLINK6), 8083)),
        "8083 on both"
    );
    let families: Vec<(u64, String)> = ls(&sb)["mappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .map(|m| {
            (
                m["host_port"].as_u64().unwrap_or(0),
                m["families"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        families,
        [
            (8081, "ipv6".into()),
            (8082, "ipv4".into()),
            (8083, "both".into())
        ]
    );
    // The host may bind what another family holds, not what its own does.
    let bind = |addr: std::net::IpAddr, port| {
        netbr::netns::run_in(&sb.host_path(), move || {
            std::net::TcpListener::bind((addr, port)).map(|_| ())
        })
        .expect("netns")
    };
    assert_eq!(
        bind(Ipv6Addr::UNSPECIFIED.into(), 8081).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::AddrInUse)
    );
    assert!(
        bind(std::net::Ipv4Addr::UNSPECIFIED.into(), 8081).is_ok(),
        "8081 is IPv6's only"
    );

    // One IPv6 address alone: a second address of the uplink's, and the
    // masquerade address itself, each only where it was published.
    const SECOND6: &str = "2001:db8:1::9";
    ip(
        &sb.host_path(),
        &[
            "-6",
            "addr",
            "add",
            &format!("{SECOND6}/64"),
            "dev",
            UPLINK,
            "nodad",
        ],
    );
    let out = sb
        .publish(
            1,
            &[
                &format!("[{SECOND6}]:8084:80"),
                &format!("[{UPLINK6}]:8085:80"),
            ],
        )
        .expect("publish on one IPv6 address");
    assert!(
        out.contains(&format!("published [{SECOND6}]:8084/tcp")),
        "{out}"
    );
    assert!(reach(to6(v6(SECOND6), 8084)), "[{SECOND6}]:8084");
    assert!(
        !reach(to6(v6(UPLINK6), 8084)),
        "8084 not on the other address"
    );
    assert!(!reach(v4(8084)), "8084 not on IPv4");
    assert!(reach(to6(v6(UPLINK6), 8085)), "[{UPLINK6}]:8085");
    assert!(
        !reach(to6(v6(SECOND6), 8085)),
        "8085 not on the second address"
    );
    // Another container through that address (hairpin), and a host process
    // with no proxy; the host may not bind the port there.
    let got = probe::tcp_request(&sb.container_path(2), to6(v6(SECOND6), 8084), b"hairpin")
        .expect("hairpin through one IPv6 address");
    assert_eq!(got, b"hairpin");
    let got = probe::tcp_request(&sb.host_path(), to6(v6(SECOND6), 8084), b"host")
        .expect("a host process to one IPv6 address");
    assert_eq!(got, b"host");
    assert_eq!(
        bind(v6(SECOND6).into(), 8084).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::AddrInUse)
    );
    let m = ls(&sb)["mappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .find(|m| m["host_port"] == 8084)
        .cloned()
        .expect("the mapping listed");
    assert_eq!(
        (m["host_ip"].as_str(), m["families"].as_str()),
        (Some(SECOND6), Some("ipv6"))
    );
    // It clashes with a port on every IPv6 address, not with IPv4's.
    for (spec, ok) in [
        ("[::]:8084:80", false),
        ("8084:80", false),
        ("0.0.0.0:8084:80", true),
    ] {
        assert_eq!(sb.publish(2, &[spec]).is_ok(), ok, "{spec}");
    }
    // Withdrawn, it answers no more, and its flows are gone.
    sb.netbr_ok(&[
        "unpublish",
        &sb.container(1),
        "-p",
        &format!("[{SECOND6}]:8084:80"),
    ])
    .expect("unpublish");
    assert!(!reach(to6(v6(SECOND6), 8084)), "withdrawn");
    assert!(
        bind(v6(SECOND6).into(), 8084).is_ok(),
        "the host may bind it once withdrawn"
    );
}

/// An IPv6 `--subnet` alone: neither the bridge nor its containers have
/// any IPv4, and IPv6 works as on a dual-stack bridge.
#[test]
fn an_ipv6_only_bridge_gives_containers_no_ipv4_and_masquerades_and_publishes_over_ipv6() {
    let sb = support::sandbox();
    sb.ipv6_on_the_link().expect("IPv6 on the link");
    let out = sb
        .netbr_ok(&sb.attach_args_ipv6_only(&["--subnet", SUBNET6]))
        .expect("attach IPv6-only");
    assert!(out.contains("(IPv6 only)"), "{out}");
    let ipv4_of = |ns: &Path, dev: &str| {
        let o = in_netns(ns, "ip", &["-4", "-o", "addr", "show", "dev", dev]).expect("ip");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(
        ipv4_of(&sb.host_path(), netbr::sandbox::BRIDGE),
        "",
        "the bridge has no IPv4"
    );
    for n in [1, 2] {
        let out = sb
            .netbr_ok(&["endpoint", "add", &sb.container(n)])
            .expect("endpoint");
        assert!(
            out.contains(&container6(n).to_string()) && !out.contains("240."),
            "{out}"
        );
        assert_eq!(ipv4_of(&sb.container_path(n), "eth0"), "", "no IPv4 inside");
        let routes = in_netns(&sb.container_path(n), "ip", &["-4", "route"]).expect("ip route");
        assert!(routes.stdout.is_empty(), "no IPv4 route inside");
    }
    let doc = ls(&sb);
    assert_eq!(doc["ipv6_only"], true);
    assert_eq!(
        (doc["subnet"].is_null(), doc["subnet6"].as_str()),
        (true, Some(SUBNET6))
    );
    let eps = doc["endpoints"].as_array().expect("endpoints");
    assert!(
        eps.iter()
            .all(|e| e["ip"].is_null() && e["ip6"].is_string()),
        "{eps:?}"
    );

    // Masqueraded to the uplink's address, TCP and ping.
    let lan = server6(&sb.lan_path(), 9090);
    let got = probe::tcp_request(&sb.container_path(1), to6(v6(LAN6), 9090), b"out")
        .expect("a container to the LAN");
    assert_eq!(got, b"out");
    assert_eq!(lan.peers()[0].ip(), v6(UPLINK6));
    let ping = in_netns(&sb.container_path(2), "ping", &["-6", "-c1", "-W2", LAN6]).expect("ping");
    assert!(ping.status.success(), "ping beyond the uplink");

    // A port without a host IP is published on IPv6 alone; IPv4 host IPs,
    // IPv4 addresses, firewall rules and limits are refused.
    sb.publish(1, &["8080:80"]).expect("publish");
    let _web = server6(&sb.container_path(1), 80);
    let reach =
        |to: SocketAddr| probe::tcp_request(&sb.lan_path(), to, b"hi").is_ok_and(|g| g == b"hi");
    assert!(reach(to6(v6(UPLINK6), 8080)), "published over IPv6");
    assert!(
        !reach((netbr::sandbox::UPLINK_IP, 8080).into()),
        "not over IPv4"
    );
    assert_eq!(ls(&sb)["mappings"][0]["families"], "ipv6");
    let c1 = sb.container(1);
    for (cmd, needle) in [
        (
            vec!["publish", c1.as_str(), "-p", "0.0.0.0:8081:80"],
            "is IPv6-only",
        ),
        (
            vec!["endpoint", "add", "c9-v4", "--ip", "172.30.0.9"],
            "is IPv6-only",
        ),
        (
            vec!["firewall", "add", "--deny", "--in", "--port", "8080"],
            "is IPv6-only",
        ),
        (
            vec!["endpoint", "limit", c1.as_str(), "--egress-rate", "10mbit"],
            "is IPv6-only",
        ),
    ] {
        let o = sb.netbr(&cmd).expect("netbr");
        assert!(!o.status.success(), "{cmd:?} succeeded");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{cmd:?}: {o:?}"
        );
    }
    assert_eq!(
        ls(&sb)["endpoints"].as_array().map(Vec::len),
        Some(2),
        "refusals changed nothing"
    );
    sb.netbr_ok(&["unpublish", c1.as_str(), "-p", "8080:80"])
        .expect("unpublish");
    assert!(!reach(to6(v6(UPLINK6), 8080)), "withdrawn");
}

/// The TC fast path carries IPv6 as it does IPv4: a published port's
/// packets redirected into the container, a masquerade flow's out of the
/// uplink; not one while it is off.
#[test]
fn the_fast_path_carries_ipv6_exactly_when_asked() {
    let sb = dual_stack(&[]);
    sb.publish(1, &["8080:80"]).expect("publish");
    let _web = Server::tcp_on(
        &sb.container_path(1),
        (Ipv6Addr::UNSPECIFIED, 80).into(),
        probe::echo(),
    )
    .expect("server in the container");
    let _lan = Server::tcp_on(
        &sb.lan_path(),
        (Ipv6Addr::UNSPECIFIED, 9000).into(),
        probe::echo(),
    )
    .expect("server on the LAN");
    for _ in 0..3 {
        let got = probe::tcp_request(&sb.lan_path(), to6(v6(UPLINK6), 8080), b"in").expect("in");
        assert_eq!(got, b"in");
        let got =
            probe::tcp_request(&sb.container_path(1), to6(v6(LAN6), 9000), b"out").expect("out");
        assert_eq!(got, b"out");
    }
    let stats = sb.stats().expect("stats");
    let carried = |k: &str| stats[k].as_u64().unwrap_or(0);
    let (fast_in, fast_out) = (carried("fast_path_in"), carried("fast_path_out"));
    if support::mode().fast_path {
        assert!(fast_in > 0 && fast_out > 0, "fast path unused: {stats:#}");
    } else {
        assert_eq!(
            (fast_in, fast_out),
            (0, 0),
            "fast path used while off: {stats:#}"
        );
    }
}

/// As over IPv4 (e2e), a masqueraded stream's 64 KiB writes leave from
/// the container's veth, routed by their segments' size.
#[test]
fn with_the_fast_path_a_streams_large_writes_leave_from_the_veth_over_ipv6_too() {
    let sb = dual_stack(&["--fast-path"]);
    support::fast_path::assert_large_writes_leave_from_the_veth(&sb, to6(v6(LAN6), 9000));
}

/// A container's IPv6 masquerade flow is never given a source port a host
/// socket takes the peer's replies on, as IPv4's: a TCP listener's, a
/// bound UDP socket's. Both the host and the container get their replies.
#[test]
fn masquerade_over_ipv6_never_takes_a_port_a_host_socket_holds() {
    let sb = dual_stack(&[]);
    let lan_tcp = Server::tcp_on(
        &sb.lan_path(),
        (Ipv6Addr::UNSPECIFIED, 9000).into(),
        probe::echo(),
    )
    .expect("lan tcp");
    let lan_udp = udp_server6(&sb.lan_path(), 9001);
    // TCP: the host listens on 7000; the container connects from 7000
    // (outside the host's ephemeral range, so kept were it free).
    let host_listener = netbr::netns::run_in(&sb.host_path(), || {
        std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, 7000))
    })
    .expect("netns")
    .expect("host listener");
    let got = probe::tcp_connect(&sb.container_path(1), 7000, to6(v6(LAN6), 9000))
        .and_then(|mut s| {
            use std::io::{Read as _, Write as _};
            s.write_all(b"tcp")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut back = Vec::new();
            s.read_to_end(&mut back)?;
            Ok(back)
        })
        .expect("the container's connection");
    assert_eq!(got, b"tcp");
    let peer = lan_tcp.peers()[0];
    assert_eq!(peer.ip(), v6(UPLINK6));
    assert_ne!(
        peer.port(),
        7000,
        "the container was given the host's listening port"
    );
    drop(host_listener);
    // UDP: a bound host socket keeps its port; the container's datagram from
    // the same port leaves from another, and both get their answers.
    let host_udp = netbr::netns::run_in(&sb.host_path(), || {
        std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 6000))
    })
    .expect("netns")
    .expect("host socket");
    host_udp
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0; 64];
    host_udp
        .send_to(b"host", to6(v6(LAN6), 9001))
        .expect("send");
    let (n, _) = host_udp.recv_from(&mut buf).expect("the host's answer");
    assert_eq!(&buf[..n], b"host");
    let got = probe::udp_request(
        &sb.container_path(1),
        to6(v6(LAN6), 9001),
        6000,
        b"container",
    )
    .expect("the container's answer");
    assert_eq!(got, b"container");
    host_udp
        .send_to(b"host again", to6(v6(LAN6), 9001))
        .expect("send");
    let (n, _) = host_udp
        .recv_from(&mut buf)
        .expect("the host's second answer");
    assert_eq!(&buf[..n], b"host again");
    let ports: Vec<u16> = lan_udp.peers().iter().map(|p| p.port()).collect();
    assert_eq!(ports[0], 6000, "the host's own port: {ports:?}");
    assert_ne!(
        ports[1], 6000,
        "the container was given the host's port: {ports:?}"
    );
}

/// The host's own IPv6 sockets and containers' masqueraded flows never
/// share a tuple, whichever comes first, as over IPv4: a host flow whose
/// tuple a container's holds is tracked (`host`) and moved to another
/// source port.
#[test]
fn host_sockets_and_masqueraded_flows_never_share_an_ipv6_tuple() {
    let sb = dual_stack(&[]);
    support::host_flows::never_share_a_tuple(&sb, v6(LAN6).into(), v6(UPLINK6).into());
}
