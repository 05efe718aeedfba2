//! End-to-end tests on the sandbox topology (see the README), driving the real
//! `netbr` binary. Each test builds its own uniquely named namespaces; the
//! `Sandbox` guard detaches and deletes them even when the test panics.

mod support;

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Output,
};

use netbr::{
    probe::{self, Server},
    sandbox::{in_netns, Sandbox, LAN_IP, UPLINK_IP},
};

fn sandbox() -> Sandbox {
    support::sandbox()
}

fn attached() -> Sandbox {
    let sb = sandbox();
    sb.attach().expect("attach");
    sb
}

/// An attached sandbox whose container 1 publishes `specs`.
fn with_published(specs: &[&str]) -> Sandbox {
    let sb = attached();
    sb.add_container(1).expect("c1");
    sb.publish(1, specs).expect("publish");
    sb
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a netbr command fails with `needle` in its message.
fn fails_with(sb: &Sandbox, args: &[&str], needle: &str) {
    let o = sb.netbr(args).expect("run netbr");
    assert!(!o.status.success(), "netbr {args:?} should fail");
    assert!(
        stderr(&o).contains(needle),
        "netbr {args:?}: expected {needle:?} in {:?}",
        stderr(&o)
    );
}

/// Runs `ip ARGS` in the namespace at `ns` and asserts it succeeded.
fn ip_ok(ns: &std::path::Path, args: &[&str]) {
    let o = in_netns(ns, "ip", args).expect("ip");
    assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
}

fn published(port: u16) -> SocketAddr {
    SocketAddr::from((UPLINK_IP, port))
}

fn ls_json(sb: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&sb.netbr_ok(&["ls", "--json"]).expect("ls")).expect("ls json")
}

#[test]
fn published_tcp_and_udp_reach_the_container_and_echo_back() {
    let sb = attached();
    support::assert_no_netfilter_rules(&sb.host_path());
    let c1 = sb.add_container(1).expect("endpoint");
    sb.publish(1, &["8080:80", "5353:53/udp"]).expect("publish");
    let tcp = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("tcp server");
    let udp = Server::udp(&sb.container_path(1), 53, probe::echo()).expect("udp server");

    let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let back =
        probe::tcp_request(&sb.lan_path(), published(8080), &payload).expect("tcp through DNAT");
    assert_eq!(back, payload, "TCP payload must come back byte for byte");
    let back = probe::udp_request(&sb.lan_path(), published(5353), 0, b"udp payload")
        .expect("udp through DNAT");
    assert_eq!(back, b"udp payload");
    // Like Docker, the container sees the real client.
    assert!(
        tcp.peers().iter().all(|p| p.ip() == LAN_IP),
        "{:?}",
        tcp.peers()
    );
    assert!(
        udp.peers().iter().all(|p| p.ip() == LAN_IP),
        "{:?}",
        udp.peers()
    );

    let flows: serde_json::Value =
        serde_json::from_str(&sb.netbr_ok(&["conntrack", "list", "--json"]).expect("ct"))
            .expect("json");
    let dnat: Vec<_> = flows
        .as_array()
        .expect("array")
        .iter()
        .filter(|f| f["nat"] == "dnat")
        .collect();
    assert_eq!(dnat.len(), 2, "{flows:#}");
    assert!(dnat
        .iter()
        .all(|f| f["translated"]["dst"] == c1.to_string()));
    support::assert_no_netfilter_rules(&sb.host_path());
}

#[test]
fn container_traffic_leaves_with_the_uplink_address() {
    let sb = attached();
    sb.add_container(1).expect("endpoint");
    let tcp = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan tcp");
    let udp = Server::udp(&sb.lan_path(), 9001, probe::echo()).expect("lan udp");
    let back = probe::tcp_request(
        &sb.container_path(1),
        SocketAddr::from((LAN_IP, 9000)),
        b"out",
    )
    .expect("tcp out");
    assert_eq!(back, b"out");
    let back = probe::udp_request(
        &sb.container_path(1),
        SocketAddr::from((LAN_IP, 9001)),
        0,
        b"dgram",
    )
    .expect("udp out");
    assert_eq!(back, b"dgram");
    assert_eq!(
        tcp.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        [UPLINK_IP]
    );
    assert_eq!(
        udp.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        [UPLINK_IP]
    );
    assert!(
        probe::ping(&sb.container_path(1), LAN_IP).expect("ping"),
        "no echo reply through masquerade"
    );
    let stats: serde_json::Value = sb.stats().expect("stats");
    assert_eq!(stats["snat_new"], 3, "{stats:#}");
    support::assert_no_netfilter_rules(&sb.host_path());
}

#[test]
fn lan_has_no_route_to_containers_without_a_published_port() {
    let sb = attached();
    sb.add_container(1).expect("endpoint");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    // 8080 is not published: the host itself refuses it.
    assert!(probe::tcp_request(&sb.lan_path(), published(8080), b"x").is_err());
}

#[test]
fn two_containers_publish_different_ports() {
    let sb = attached();
    sb.add_container(1).expect("c1");
    sb.add_container(2).expect("c2");
    sb.publish(1, &["8081:80"]).expect("publish c1");
    sb.publish(2, &["8082:80"]).expect("publish c2");
    let name = |n: u32| -> probe::Responder {
        let tag = format!("c{n}");
        std::sync::Arc::new(move |_: &[u8], _| tag.clone().into_bytes())
    };
    let _s1 = Server::tcp(&sb.container_path(1), 80, name(1)).expect("s1");
    let _s2 = Server::tcp(&sb.container_path(2), 80, name(2)).expect("s2");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(8081), b"?").expect("8081"),
        b"c1"
    );
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(8082), b"?").expect("8082"),
        b"c2"
    );
    let ls = ls_json(&sb);
    assert_eq!(
        ls["mappings"].as_array().expect("mappings").len(),
        2,
        "{ls:#}"
    );
}

#[test]
fn unpublish_stops_new_connections_and_ends_its_flows() {
    let sb = attached();
    sb.add_container(1).expect("endpoint");
    sb.publish(1, &["8080:80", "5353:53/udp"]).expect("publish");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    let _udp = Server::udp(&sb.container_path(1), 53, probe::echo()).expect("udp server");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(8080), b"a").expect("before"),
        b"a"
    );
    // A UDP flow from a fixed client port, so the same tuple is reused below.
    assert_eq!(
        probe::udp_request(&sb.lan_path(), published(5353), 7000, b"u").expect("udp before"),
        b"u"
    );
    sb.netbr_ok(&["unpublish", &sb.container(1), "-p", "5353:53/udp"])
        .expect("unpublish udp");
    assert!(
        probe::udp_request(&sb.lan_path(), published(5353), 7000, b"u").is_err(),
        "stale UDP flow still delivers"
    );
    sb.netbr_ok(&["unpublish", &sb.container(1), "--all"])
        .expect("unpublish");
    assert!(
        probe::tcp_request(&sb.lan_path(), published(8080), b"b").is_err(),
        "connection after unpublish"
    );
    assert!(ls_json(&sb)["mappings"]
        .as_array()
        .expect("mappings")
        .is_empty());
}

#[test]
fn reattach_is_idempotent_and_keeps_flows_and_mappings() {
    let sb = attached();
    sb.add_container(1).expect("endpoint");
    sb.publish(1, &["8080:80"]).expect("publish");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    probe::tcp_request(&sb.lan_path(), published(8080), b"1").expect("before");
    let flows_before = sb.netbr_ok(&["conntrack", "list", "--json"]).expect("ct");
    let out = sb.attach().expect("second attach");
    assert!(out.contains("re-attached"), "{out}");
    assert_eq!(
        sb.netbr_ok(&["conntrack", "list", "--json"])
            .expect("ct")
            .matches("dnat")
            .count(),
        flows_before.matches("dnat").count()
    );
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(8080), b"2").expect("after"),
        b"2"
    );
    assert_eq!(
        ls_json(&sb)["mappings"].as_array().expect("mappings").len(),
        1
    );
}

#[test]
fn detach_leaves_nothing_behind() {
    let sb = attached();
    sb.add_container(1).expect("endpoint");
    let pins = ls_json(&sb)["pins"].as_str().expect("pins").to_string();
    assert!(std::path::Path::new(&pins).exists());
    sb.netbr_ok(&["detach"]).expect("detach");
    assert!(!std::path::Path::new(&pins).exists(), "{pins} still exists");
    assert!(
        !netbr::netns::exists(&sb.container(1)),
        "endpoint namespace left behind"
    );
    let links = in_netns(&sb.host_path(), "ip", &["-j", "link"]).expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("netbr0") && !links.contains("\"nb"),
        "{links}"
    );
    let tc = in_netns(&sb.host_path(), "bpftool", &["net", "show"]).expect("bpftool");
    assert!(
        !String::from_utf8_lossy(&tc.stdout).contains("nb_up"),
        "programs still attached"
    );
    fails_with(&sb, &["ls"], "is not attached");
}

#[test]
fn endpoint_names_may_be_long() {
    let sb = attached();
    let name = format!("{}-{}", "x".repeat(60 - sb.suffix.len()), sb.suffix);
    let name = &name[name.len() - 64.min(name.len())..];
    sb.netbr_ok(&["endpoint", "add", name])
        .expect("long endpoint");
    let ls = ls_json(&sb);
    assert_eq!(ls["endpoints"][0]["name"], name);
    sb.netbr_ok(&["endpoint", "rm", name]).expect("rm");
    assert!(!netbr::netns::exists(name));
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let sb = sandbox();
    // Before attach.
    fails_with(
        &sb,
        &["publish", "web", "-p", "8080:80"],
        "is not attached: run netbr attach",
    );
    fails_with(
        &sb,
        &["attach", "--subnet", "172.30.0.0/16", "--uplink", "eth9"],
        "uplink eth9 not found",
    );
    fails_with(
        &sb,
        &["attach", "--subnet", "192.0.2.0/25", "--uplink", "up0"],
        "overlaps uplink up0",
    );
    let links = in_netns(&sb.host_path(), "ip", &["-j", "link"]).expect("ip link");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("netbr0"),
        "a failed attach created the bridge"
    );

    sb.attach().expect("attach");
    sb.add_container(1).expect("endpoint");
    let c1 = sb.container(1);
    fails_with(
        &sb,
        &["publish", "nosuch", "-p", "8080:80"],
        "no endpoint named nosuch",
    );
    fails_with(&sb, &["publish", &c1, "-p", "8080"], "invalid -p");
    fails_with(&sb, &["publish", &c1, "-p", "8080:80/sctp"], "tcp or udp");
    fails_with(&sb, &["publish", &c1, "-p", "70000:80"], "invalid -p");
    fails_with(
        &sb,
        &["publish", &c1, "-p", "203.0.113.9:8080:80"],
        "not an address of this host",
    );
    sb.netbr_ok(&["publish", &c1, "-p", "8080:80"])
        .expect("publish");
    // Already published: the whole request is refused, the good part too.
    fails_with(
        &sb,
        &["publish", &c1, "-p", "9090:90", "-p", "192.0.2.1:8080:81"],
        "already published",
    );
    // Busy because a host process listens there.
    let _host_srv = Server::tcp(&sb.host_path(), 7070, probe::echo()).expect("host listener");
    fails_with(
        &sb,
        &["publish", &c1, "-p", "7070:70"],
        "in use by a process on the host",
    );
    let maps = ls_json(&sb)["mappings"].clone();
    assert_eq!(maps.as_array().expect("mappings").len(), 1, "{maps:#}");
    fails_with(&sb, &["endpoint", "add", &c1], "already exists");
    fails_with(&sb, &["endpoint", "add", "bad/name"], "endpoint name");
    fails_with(
        &sb,
        &["endpoint", "add", "ipclash", "--ip", "172.30.0.2"],
        "already used",
    );
    fails_with(
        &sb,
        &["endpoint", "add", "outside", "--ip", "10.1.1.1"],
        "not a free host address",
    );
    assert!(!netbr::netns::exists("ipclash") && !netbr::netns::exists("outside"));
    fails_with(
        &sb,
        &["endpoint", "rm", "nosuch"],
        "no endpoint named nosuch",
    );
    fails_with(
        &sb,
        &["unpublish", &c1, "-p", "9999:80"],
        "is not published",
    );
    assert_eq!(
        ls_json(&sb)["endpoints"]
            .as_array()
            .expect("endpoints")
            .len(),
        1
    );
    let _ = Ipv4Addr::LOCALHOST;
}

fn tagged(tag: &str) -> probe::Responder {
    let tag = tag.to_string();
    std::sync::Arc::new(move |data: &[u8], _| [tag.as_bytes(), b":", data].concat())
}

#[test]
fn hairpin_reaches_another_container_and_itself_through_the_host_address() {
    let sb = attached();
    sb.add_container(1).expect("c1");
    sb.add_container(2).expect("c2");
    sb.publish(2, &["8080:80", "5353:53/udp"]).expect("publish");
    let tcp = Server::tcp(&sb.container_path(2), 80, tagged("c2")).expect("tcp");
    let udp = Server::udp(&sb.container_path(2), 53, tagged("c2")).expect("udp");
    for n in [1, 2] {
        let back =
            probe::tcp_request(&sb.container_path(n), published(8080), b"hi").expect("tcp hairpin");
        assert_eq!(back, b"c2:hi", "TCP hairpin from c{n}");
        let back = probe::udp_request(&sb.container_path(n), published(5353), 0, b"yo")
            .expect("udp hairpin");
        assert_eq!(back, b"c2:yo", "UDP hairpin from c{n}");
    }
    // As with Docker's hairpin MASQUERADE, the target sees the gateway.
    let gw = Ipv4Addr::new(172, 30, 0, 1);
    assert!(
        tcp.peers()
            .iter()
            .chain(udp.peers().iter())
            .all(|p| p.ip() == gw),
        "{:?}",
        tcp.peers()
    );
    let stats: serde_json::Value = sb.stats().expect("stats");
    assert_eq!(stats["hairpin_new"], 4, "{stats:#}");
    support::assert_no_netfilter_rules(&sb.host_path());
}

#[test]
fn host_ip_binding_answers_only_on_that_address() {
    let sb = sandbox();
    let extra = "192.0.2.3";
    ip_ok(
        &sb.host_path(),
        &["addr", "add", &format!("{extra}/24"), "dev", "up0"],
    );
    sb.attach().expect("attach");
    sb.add_container(1).expect("c1");
    let c1 = sb.container(1);
    sb.netbr_ok(&[
        "publish",
        &c1,
        "-p",
        "8080:80",
        "-p",
        "192.0.2.1:8081:80",
        "-p",
        "127.0.0.1:8082:80",
    ])
    .expect("publish");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    let other: Ipv4Addr = extra.parse().expect("ip");
    let lan = sb.lan_path();
    let at = |ip: Ipv4Addr, port: u16| probe::tcp_request(&lan, SocketAddr::from((ip, port)), b"x");
    assert_eq!(at(UPLINK_IP, 8080).expect("wildcard on .1"), b"x");
    assert_eq!(at(other, 8080).expect("wildcard on .3"), b"x");
    assert_eq!(at(UPLINK_IP, 8081).expect("bound to .1"), b"x");
    assert!(
        at(other, 8081).is_err(),
        "a port bound to 192.0.2.1 answered on 192.0.2.3"
    );
    // 127.0.0.1-bound ports are for host-local clients: nothing from lan.
    assert!(
        at(UPLINK_IP, 8082).is_err(),
        "a 127.0.0.1-bound port answered from lan"
    );
    assert!(at(other, 8082).is_err());
    // An address added after attach can be published on at once.
    ip_ok(
        &sb.host_path(),
        &["addr", "add", "192.0.2.4/24", "dev", "up0"],
    );
    sb.publish(1, &["192.0.2.4:8084:80"])
        .expect("publish on a new address");
    assert_eq!(
        at(Ipv4Addr::new(192, 0, 2, 4), 8084).expect("new address"),
        b"x"
    );
}

#[test]
fn every_loopback_address_is_the_hosts_one_port_on_two_of_them() {
    // As moby's tests do: one host port on two loopback addresses, for two
    // containers. The kernel takes all of 127.0.0.0/8 as local.
    let sb = attached();
    sb.add_container(1).expect("c1");
    sb.add_container(2).expect("c2");
    sb.publish(1, &["127.0.0.2:5000:80"])
        .expect("publish on 127.0.0.2");
    sb.publish(2, &["127.0.0.3:5000:80"])
        .expect("the same port on 127.0.0.3");
    let _one = Server::tcp(
        &sb.container_path(1),
        80,
        std::sync::Arc::new(|_, _| b"one".to_vec()),
    )
    .expect("server 1");
    let _two = Server::tcp(
        &sb.container_path(2),
        80,
        std::sync::Arc::new(|_, _| b"two".to_vec()),
    )
    .expect("server 2");
    let from_host =
        |ip: [u8; 4]| probe::tcp_request(&sb.host_path(), SocketAddr::from((ip, 5000)), b"x");
    assert_eq!(from_host([127, 0, 0, 2]).expect("127.0.0.2:5000"), b"one");
    assert_eq!(from_host([127, 0, 0, 3]).expect("127.0.0.3:5000"), b"two");
    assert!(
        from_host([127, 0, 0, 1]).is_err(),
        "127.0.0.1:5000 answered"
    );
    assert!(
        probe::tcp_request(&sb.lan_path(), published(5000), b"x").is_err(),
        "a loopback-bound port answered from lan"
    );
    // The same address twice is still a clash.
    fails_with(
        &sb,
        &["publish", &sb.container(2), "-p", "127.0.0.2:5000:81"],
        "already published",
    );
}

#[test]
fn named_namespaces_live_beside_ip_netns_whichever_comes_first() {
    // A fresh boot's /run/netns is a plain directory: made here in a
    // private mount namespace. netbr names a namespace first, then `ip
    // netns add` makes the directory a mount point of its own; each must
    // still see, enter and remove the other's.
    let sb = attached();
    let (mine, theirs) = (format!("nsm-{}", sb.suffix), format!("nsi-{}", sb.suffix));
    let script = format!(
        "set -e
         exec 3<{host}
         umount -l /run/netns 2>/dev/null || true
         ! mountpoint -q /run/netns
         {netbr} --netns /proc/self/fd/3 endpoint add {mine}
         mountpoint -q /run/netns
         ip netns add {theirs}
         ip netns exec {mine} ip link show eth0 >/dev/null
         nsenter --net=/run/netns/{theirs} true
         ip netns list | grep -q '^{mine}'
         {netbr} --netns /proc/self/fd/3 endpoint rm {mine}
         ip netns del {theirs}
         test ! -e /run/netns/{mine}
         test ! -e /run/netns/{theirs}",
        host = sb.host_path().display(),
        netbr = env!("CARGO_BIN_EXE_netbr"),
    );
    let out = std::process::Command::new("timeout")
        .args([
            "60",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(&script)
        .output()
        .expect("unshare");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn up_attaches_the_bridges_a_file_lists_and_refuses_a_bad_file_whole() {
    let sb = sandbox();
    let dir = std::env::temp_dir().join(format!("netbr-up-{}", sb.suffix));
    std::fs::create_dir_all(&dir).expect("dir");
    let _cleanup = support::RemoveOnDrop(dir.clone());
    let file = dir.join("bridges.conf");
    // One bad line: nothing is attached, and the message names the line.
    let attach = sb.attach_args(&[]).join(" ");
    let attach = attach.strip_prefix("attach ").expect("attach args");
    std::fs::write(
        &file,
        format!("# test\n{attach}\n--bridge nb2 --uplink up0\n"),
    )
    .expect("write");
    let conf = file.display().to_string();
    fails_with(&sb, &["up", "--config", &conf], "bridges.conf:3:");
    fails_with(&sb, &["ls"], "is not attached");
    // The good line alone: attached, as `netbr attach` would.
    std::fs::write(
        &file,
        format!("# test\n{attach}   # the sandbox's bridge\n"),
    )
    .expect("write");
    sb.netbr_ok(&["up", "--config", &conf]).expect("up");
    sb.add_container(1).expect("c1");
    sb.publish(1, &["8080:80"]).expect("publish");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(8080), b"up").expect("served"),
        b"up"
    );
    // Again, as at a second boot of the unit: idempotent, flows kept.
    sb.netbr_ok(&["up", "--config", &conf]).expect("up again");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(8080), b"again").expect("served"),
        b"again"
    );
}

#[test]
fn direct_routing_from_lan_reaches_no_container_unless_allowed() {
    let sb = attached();
    let c1 = sb.add_container(1).expect("c1");
    let c2 = sb.add_container(2).expect("c2");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    sb.route_lan_to_subnet().expect("route");
    let direct = SocketAddr::from((c1, 80));
    assert!(
        probe::tcp_request(&sb.lan_path(), direct, b"x").is_err(),
        "lan reached a container directly"
    );
    // Containers on the bridge still reach each other.
    assert_eq!(
        probe::tcp_request(&sb.container_path(2), direct, b"peer").expect("c2 -> c1"),
        b"peer"
    );
    let stats: serde_json::Value = sb.stats().expect("stats");
    assert!(
        stats["drop_direct_routing"].as_u64().unwrap_or(0) >= 1,
        "{stats:#}"
    );

    sb.attach_with(&["--allow-direct-routing"])
        .expect("re-attach");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), direct, b"ok").expect("opted in"),
        b"ok"
    );
    let _ = c2;
}

/// The MTU of `dev` in the namespace at `ns`, as `ip link` shows it.
fn mtu_of(ns: &std::path::Path, dev: &str) -> String {
    let o = in_netns(ns, "ip", &["-o", "link", "show", dev]).expect("ip link");
    let line = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mtu");
    words.next().unwrap_or_default().to_string()
}

/// Who a server on lan saw connecting when container 1 reached it.
fn source_seen_on_lan(sb: &Sandbox) -> Vec<Ipv4Addr> {
    let lan = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan server");
    let to = SocketAddr::from((LAN_IP, 9000));
    assert_eq!(
        probe::tcp_request(&sb.container_path(1), to, b"out").expect("c1 -> lan"),
        b"out"
    );
    lan.peers()
        .iter()
        .map(|p| match p.ip() {
            std::net::IpAddr::V4(v4) => v4,
            other => panic!("lan saw {other}"),
        })
        .collect()
}

#[test]
fn destinations_without_masquerade_see_the_container_and_answer_it() {
    let sb = sandbox();
    sb.attach_with(&["--no-masquerade", "198.51.100.0/24"])
        .expect("attach");
    let c1 = sb.add_container(1).expect("c1");
    sb.route_lan_to_subnet().expect("route");
    // lan is not on the list: masqueraded as before.
    assert_eq!(source_seen_on_lan(&sb), [UPLINK_IP]);
    assert_eq!(
        ls_json(&sb)["no_masquerade"],
        serde_json::json!(["198.51.100.0/24"])
    );

    sb.attach_with(&["--no-masquerade", "192.0.2.0/24"])
        .expect("re-attach");
    assert_eq!(source_seen_on_lan(&sb), [c1], "lan saw a translated source");
    assert!(sb.stats().expect("stats")["untranslated_new"].as_u64() >= Some(1));
    // Replies pass, but lan still cannot open a connection to a container.
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    assert!(
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((c1, 80)), b"x").is_err(),
        "lan reached a container directly"
    );
}

#[test]
fn an_internal_bridge_reaches_the_host_only_and_publishes_nothing() {
    let sb = sandbox();
    sb.attach_with(&["--internal"]).expect("attach");
    let c1 = sb.add_container(1).expect("c1");
    let _host = Server::tcp(&sb.host_path(), 9001, probe::echo()).expect("host server");
    let to_host = SocketAddr::from((Ipv4Addr::new(172, 30, 0, 1), 9001));
    assert_eq!(
        probe::tcp_request(&sb.container_path(1), to_host, b"in").expect("c1 -> host"),
        b"in"
    );
    let _lan = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan server");
    assert!(
        probe::tcp_request(
            &sb.container_path(1),
            SocketAddr::from((LAN_IP, 9000)),
            b"x"
        )
        .is_err(),
        "a container of an internal bridge reached lan"
    );
    sb.route_lan_to_subnet().expect("route");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    assert!(
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((c1, 80)), b"x").is_err(),
        "lan reached a container of an internal bridge"
    );
    assert!(sb.stats().expect("stats")["drop_internal"].as_u64() >= Some(2));
    fails_with(
        &sb,
        &["publish", &sb.container(1), "-p", "8080:80"],
        "is internal: it publishes no ports",
    );
    assert_eq!(ls_json(&sb)["internal"], true);
}

#[test]
fn routed_mode_opens_published_ports_at_the_container_with_no_translation() {
    let sb = sandbox();
    sb.attach_with(&["--routed", "--mtu", "1400"])
        .expect("attach");
    let c1 = sb.add_container(1).expect("c1");
    assert_eq!(mtu_of(&sb.container_path(1), "eth0"), "1400");
    assert_eq!(mtu_of(&sb.host_path(), netbr::sandbox::BRIDGE), "1400");
    sb.publish(1, &["8080:80"]).expect("publish");
    sb.route_lan_to_subnet().expect("route");
    let web = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    let _other = Server::tcp(&sb.container_path(1), 81, probe::echo()).expect("server");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((c1, 80)), b"direct")
            .expect("lan -> published container port"),
        b"direct"
    );
    assert_eq!(web.peers()[0].ip(), std::net::IpAddr::V4(LAN_IP));
    assert!(
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((c1, 81)), b"x").is_err(),
        "lan reached an unpublished port in routed mode"
    );
    // The host port means nothing in routed mode.
    assert!(probe::tcp_request(&sb.lan_path(), published(8080), b"x").is_err());
    assert_eq!(source_seen_on_lan(&sb), [c1]);
    let doc = ls_json(&sb);
    assert_eq!(
        (doc["routed"].clone(), doc["mtu"].clone()),
        (true.into(), 1400.into())
    );
}

#[test]
fn icc_false_isolates_containers_but_keeps_published_ports_and_masquerade() {
    let sb = sandbox();
    sb.attach_with(&["--icc=false"]).expect("attach");
    let c1 = sb.add_container(1).expect("c1");
    sb.add_container(2).expect("c2");
    sb.publish(1, &["8080:80"]).expect("publish");
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    assert!(
        probe::tcp_request(&sb.container_path(2), SocketAddr::from((c1, 80)), b"x").is_err(),
        "c2 reached c1 with icc=false"
    );
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(8080), b"pub").expect("published"),
        b"pub"
    );
    // Hairpin is routed through the host, not switched: it still works.
    assert_eq!(
        probe::tcp_request(&sb.container_path(2), published(8080), b"hp").expect("hairpin"),
        b"hp"
    );
    let lan_srv = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan server");
    assert_eq!(
        probe::tcp_request(
            &sb.container_path(2),
            SocketAddr::from((LAN_IP, 9000)),
            b"out"
        )
        .expect("masquerade"),
        b"out"
    );
    assert_eq!(lan_srv.peers()[0].ip(), UPLINK_IP);
    assert_eq!(ls_json(&sb)["icc"], false);
    // Turning it back on reaches existing endpoints too.
    sb.attach_with(&["--icc=true"]).expect("re-attach");
    assert_eq!(
        probe::tcp_request(&sb.container_path(2), SocketAddr::from((c1, 80)), b"y")
            .expect("icc on"),
        b"y"
    );
}

#[test]
fn port_ranges_publish_as_docker_does() {
    let sb = attached();
    sb.add_container(1).expect("c1");
    sb.add_container(2).expect("c2");
    sb.publish(1, &["8000-8002:7000-7002/udp"])
        .expect("udp range");
    let servers: Vec<_> = (0..3)
        .map(|i| {
            Server::udp(
                &sb.container_path(1),
                7000 + i,
                tagged(&format!("p{}", 7000 + i)),
            )
            .expect("server")
        })
        .collect();
    for i in 0..3u16 {
        let back =
            probe::udp_request(&sb.lan_path(), published(8000 + i), 0, b"q").expect("udp range");
        assert_eq!(back, format!("p{}:q", 7000 + i).into_bytes());
    }
    drop(servers);
    // A host range for one container port publishes one free host port of it.
    let out = sb
        .netbr_ok(&["publish", &sb.container(1), "-p", "9000-9001:80"])
        .expect("pick");
    assert!(out.contains(":9000/tcp"), "{out}");
    let out = sb
        .netbr_ok(&["publish", &sb.container(2), "-p", "9000-9001:80"])
        .expect("pick");
    assert!(out.contains(":9001/tcp"), "{out}");
    fails_with(
        &sb,
        &["publish", &sb.container(2), "-p", "9000-9001:80"],
        "no free host port",
    );
    fails_with(
        &sb,
        &["publish", &sb.container(2), "-p", "9100-9101:80-82"],
        "same length",
    );
    let _s1 = Server::tcp(&sb.container_path(1), 80, tagged("c1")).expect("s1");
    let _s2 = Server::tcp(&sb.container_path(2), 80, tagged("c2")).expect("s2");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(9000), b"a").expect("9000"),
        b"c1:a"
    );
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(9001), b"b").expect("9001"),
        b"c2:b"
    );
}

#[test]
fn unpublish_leaves_other_mappings_flows_alone() {
    let sb = attached();
    sb.add_container(1).expect("c1");
    sb.publish(1, &["5353:53/udp", "5454:54/udp"])
        .expect("publish");
    let _a = Server::udp(&sb.container_path(1), 53, tagged("a")).expect("a");
    let _b = Server::udp(&sb.container_path(1), 54, tagged("b")).expect("b");
    assert_eq!(
        probe::udp_request(&sb.lan_path(), published(5454), 7100, b"1").expect("b before"),
        b"b:1"
    );
    assert_eq!(
        probe::udp_request(&sb.lan_path(), published(5353), 7101, b"1").expect("a before"),
        b"a:1"
    );
    sb.netbr_ok(&["unpublish", &sb.container(1), "-p", "5353:53/udp"])
        .expect("unpublish");
    assert!(probe::udp_request(&sb.lan_path(), published(5353), 7101, b"2").is_err());
    let flows: serde_json::Value = serde_json::from_str(
        &sb.netbr_ok(&["conntrack", "list", "--json", "--port", "5454"])
            .expect("ct"),
    )
    .expect("json");
    assert_eq!(
        flows.as_array().expect("flows").len(),
        1,
        "the other mapping's flow must survive"
    );
    assert_eq!(
        probe::udp_request(&sb.lan_path(), published(5454), 7100, b"2").expect("b after"),
        b"b:2"
    );
}

#[test]
fn timeouts_are_settable_and_shown_and_conntrack_filters() {
    let sb = sandbox();
    fails_with(
        &sb,
        &[
            "attach",
            "--subnet",
            "172.30.0.0/16",
            "--uplink",
            "up0",
            "--timeout",
            "tcp_bogus=5",
        ],
        "unknown timeout",
    );
    sb.attach_with(&[
        "--timeout",
        "udp_stream=7",
        "--timeout",
        "tcp_established=3600",
    ])
    .expect("attach");
    let ls = ls_json(&sb);
    assert_eq!(ls["timeouts_s"]["udp_stream"], 7);
    assert_eq!(ls["timeouts_s"]["tcp_established"], 3600);
    assert_eq!(
        ls["timeouts_s"]["icmp"], 30,
        "untouched timeouts keep netfilter's defaults"
    );
    // The conntrack size is fixed while attached: a different one is refused
    // and changes nothing; the same one, or none, is fine.
    assert_eq!(ls["ct_max"], 131_072);
    fails_with(
        &sb,
        &[
            "attach",
            "--subnet",
            "172.30.0.0/16",
            "--uplink",
            "up0",
            "--ct-max",
            "1024",
        ],
        "run netbr detach",
    );
    sb.attach_with(&["--ct-max", "131072"]).expect("same size");
    assert_eq!(ls_json(&sb)["ct_max"], 131_072);
    sb.add_container(1).expect("c1");
    sb.add_container(2).expect("c2");
    let _u = Server::udp(&sb.lan_path(), 9001, probe::echo()).expect("udp");
    let _t = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("tcp");
    probe::udp_request(
        &sb.container_path(1),
        SocketAddr::from((LAN_IP, 9001)),
        0,
        b"u",
    )
    .expect("udp");
    probe::tcp_request(
        &sb.container_path(2),
        SocketAddr::from((LAN_IP, 9000)),
        b"t",
    )
    .expect("tcp");
    let list = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = vec!["conntrack", "list", "--json"];
        a.extend_from_slice(args);
        serde_json::from_str::<serde_json::Value>(&sb.netbr_ok(&a).expect("list"))
            .expect("json")
            .as_array()
            .expect("array")
            .clone()
    };
    assert_eq!(list(&[]).len(), 2);
    let udp = list(&["--proto", "udp"]);
    assert_eq!(udp.len(), 1);
    assert_eq!(
        (udp[0]["proto"].as_str(), udp[0]["state"].as_str()),
        (Some("udp"), Some("REPLIED"))
    );
    assert!(udp[0]["expires_s"].as_u64().expect("expires") <= 7);
    let c2 = list(&["--endpoint", &sb.container(2)]);
    assert_eq!((c2.len(), c2[0]["proto"].as_str()), (1, Some("tcp")));
    assert_eq!(list(&["--port", "9000"]).len(), 1);
}

#[test]
fn host_local_clients_reach_published_ports_without_a_proxy() {
    let sb = attached();
    sb.add_container(1).expect("c1");
    sb.publish(1, &["8080:80", "127.0.0.1:8081:80", "5353:53/udp"])
        .expect("publish");
    let tcp = Server::tcp(&sb.container_path(1), 80, tagged("c1")).expect("tcp");
    let _udp = Server::udp(&sb.container_path(1), 53, tagged("c1")).expect("udp");
    let host = sb.host_path();
    let lo = Ipv4Addr::LOCALHOST;
    for to in [
        SocketAddr::from((lo, 8080)),
        SocketAddr::from((lo, 8081)),
        published(8080),
    ] {
        let (data, peer) = probe::tcp_request_peer(&host, to, b"h").expect("host-local TCP");
        assert_eq!(data, b"c1:h", "to {to}");
        assert_eq!(peer, to, "getpeername must report the dialled address");
    }
    for connected in [false, true] {
        let to = SocketAddr::from((lo, 5353));
        let (data, from) =
            probe::udp_exchange(&host, to, 0, b"u", connected).expect("host-local UDP");
        assert_eq!(data, b"c1:u");
        assert_eq!(
            from, to,
            "recvfrom/peer_addr must report the dialled address (connected: {connected})"
        );
    }
    // No userland proxy: nothing listens on the host ports.
    let listeners = in_netns(&host, "ss", &["-Hltn"]).expect("ss");
    assert!(!String::from_utf8_lossy(&listeners.stdout).contains(":8080"));
    assert!(
        tcp.peers()
            .iter()
            .all(|p| p.ip() == Ipv4Addr::new(172, 30, 0, 1)),
        "{:?}",
        tcp.peers()
    );

    // Another namespace is untouched: lan's own 127.0.0.1:8080 stays its own.
    let _lan_local = Server::tcp(&sb.lan_path(), 8080, tagged("lan")).expect("lan server");
    let data =
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((lo, 8080)), b"l").expect("lan local");
    assert_eq!(
        data, b"lan:l",
        "a socket of another namespace was rewritten"
    );

    // Detach removes the cgroup programs: the one behind our pinned link is
    // attached before and gone after (other tests may attach their own).
    let pins = ls_json(&sb)["pins"].as_str().expect("pins").to_string();
    let link = std::process::Command::new("bpftool")
        .args([
            "-j",
            "link",
            "show",
            "pinned",
            &format!("{pins}/link_connect4"),
        ])
        .output()
        .expect("bpftool link");
    let link: serde_json::Value = serde_json::from_slice(&link.stdout).expect("link json");
    let prog_id = link["prog_id"].as_u64().expect("prog_id");
    let attached_ids = || -> Vec<u64> {
        let tree = std::process::Command::new("bpftool")
            .args(["-j", "cgroup", "tree"])
            .output()
            .expect("bpftool");
        let text = String::from_utf8_lossy(&tree.stdout);
        text.match_indices("\"id\":")
            .filter_map(|(i, m)| {
                text[i + m.len()..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    };
    assert!(
        attached_ids().contains(&prog_id),
        "nb_connect4 (id {prog_id}) is not attached"
    );
    sb.netbr_ok(&["detach"]).expect("detach");
    assert!(
        !attached_ids().contains(&prog_id),
        "nb_connect4 (id {prog_id}) still attached after detach"
    );
    assert!(probe::tcp_request(&host, SocketAddr::from((lo, 8080)), b"x").is_err());
}

/// Sends a datagram on a connected UDP socket from `ns` to `to` and returns
/// the error kind the next receive gets (ConnectionRefused when an ICMP port
/// unreachable came back and was matched to the socket).
fn udp_error_kind(ns: &std::path::Path, to: SocketAddr) -> std::io::ErrorKind {
    netbr::netns::run_in(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        s.connect(to).expect("connect");
        s.send(b"anyone?").expect("send");
        let mut buf = [0u8; 64];
        match s.recv(&mut buf) {
            Ok(_) => panic!("unexpected answer from {to}"),
            Err(e) => e.kind(),
        }
    })
    .expect("run in namespace")
}

#[test]
fn icmp_port_unreachable_is_translated_both_ways() {
    let sb = with_published(&["5353:53/udp"]);
    // Nothing listens in the container: its port unreachable must reach lan
    // as if from 192.0.2.1:5353, or lan's socket would never hear of it.
    assert_eq!(
        udp_error_kind(&sb.lan_path(), published(5353)),
        std::io::ErrorKind::ConnectionRefused
    );
    // Nothing listens in lan: lan's port unreachable must reach the container
    // translated back through the masquerade.
    assert_eq!(
        udp_error_kind(&sb.container_path(1), SocketAddr::from((LAN_IP, 9999))),
        std::io::ErrorKind::ConnectionRefused
    );
    let stats: serde_json::Value = sb.stats().expect("stats");
    assert_eq!(stats["icmp_error_translated"], 2, "{stats:#}");
}

#[test]
fn path_mtu_discovery_works_through_a_published_port() {
    let sb = with_published(&["5353:53/udp"]);
    let _srv = Server::udp(&sb.container_path(1), 53, probe::echo()).expect("server");
    // The container side is narrower than the uplink: the host must answer
    // a too-big DF datagram with "fragmentation needed", quoting the packet
    // after DNAT. Only if netbr translates the quote does lan learn the MTU.
    // The container's link is the narrow one: its veth pair at 1400 (the
    // bridge follows its ports). The stack and the fast path's MTU check
    // must both answer frag-needed.
    let (host_veth, _) = netbr::store::veth_names("netbr0", &sb.container(1));
    for (ns, dev) in [
        (sb.host_path(), host_veth.as_str()),
        (sb.container_path(1), "eth0"),
    ] {
        ip_ok(&ns, &["link", "set", dev, "mtu", "1400"]);
    }
    let mtu = netbr::netns::run_in(&sb.lan_path(), || {
        use std::os::fd::AsRawFd as _;
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect(published(5353)).expect("connect");
        let fd = s.as_raw_fd();
        let on: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: setsockopt/getsockopt on a socket this closure owns.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&on as *const libc::c_int).cast(),
                4,
            );
        }
        let _ = s.send(&[0u8; 1450]);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut mtu: libc::c_int = 0;
        let mut len: libc::socklen_t = 4;
        // SAFETY: as above.
        unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU,
                (&mut mtu as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        mtu
    })
    .expect("lan");
    assert_eq!(mtu, 1400, "lan did not learn the path MTU through the NAT");
}

#[test]
fn ttl_exceeded_reaches_the_sender_through_a_published_port() {
    let sb = with_published(&["5353:53/udp"]);
    let _srv = Server::udp(&sb.container_path(1), 53, probe::echo()).expect("server");
    // traceroute's first hop: TTL 1 dies at the host, which quotes the packet
    // after DNAT. lan hears of it only if the quote is translated back.
    let kind = netbr::netns::run_in(&sb.lan_path(), || {
        use std::os::fd::AsRawFd as _;
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect(published(5353)).expect("connect");
        s.set_ttl(1).expect("ttl");
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket this closure owns.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&on as *const libc::c_int).cast(),
                4,
            );
        }
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        s.send(b"hop").expect("send");
        let mut buf = [0u8; 16];
        s.recv(&mut buf).map(|_| ()).map_err(|e| e.raw_os_error())
    })
    .expect("lan");
    assert_eq!(
        kind,
        Err(Some(libc::EHOSTUNREACH)),
        "no time-exceeded reached lan's socket"
    );
}

#[test]
fn fragmented_datagrams_cross_the_nat_both_ways() {
    let sb = with_published(&["5353:53/udp"]);
    let _c = Server::udp(&sb.container_path(1), 53, probe::echo()).expect("container udp");
    let _l = Server::udp(&sb.lan_path(), 9001, probe::echo()).expect("lan udp");
    // 4000 bytes: three fragments on a 1500-byte link, each way.
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 253) as u8).collect();
    let back = probe::udp_request(&sb.lan_path(), published(5353), 0, &big).expect("through DNAT");
    assert_eq!(back, big, "fragmented datagram through the published port");
    let back = probe::udp_request(
        &sb.container_path(1),
        SocketAddr::from((LAN_IP, 9001)),
        0,
        &big,
    )
    .expect("through masquerade");
    assert_eq!(back, big, "fragmented datagram through masquerade");
    let stats: serde_json::Value = sb.stats().expect("stats");
    assert_eq!(stats["drop_frag_no_first"], 0, "{stats:#}");
}

#[test]
fn the_fast_path_carries_traffic_exactly_when_asked() {
    let sb = with_published(&["8080:80"]);
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    let _lan = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan server");
    for _ in 0..3 {
        assert_eq!(
            probe::tcp_request(&sb.lan_path(), published(8080), b"in").expect("in"),
            b"in"
        );
        let out = probe::tcp_request(
            &sb.container_path(1),
            SocketAddr::from((LAN_IP, 9000)),
            b"out",
        );
        assert_eq!(out.expect("out"), b"out");
    }
    let stats = sb.stats().expect("stats");
    let (fast_in, fast_out, fast_xdp) = (
        stats["fast_path_in"].as_u64().unwrap_or(0),
        stats["fast_path_out"].as_u64().unwrap_or(0),
        stats["fast_path_xdp"].as_u64().unwrap_or(0),
    );
    if support::mode().fast_path {
        assert!(fast_in > 0 && fast_out > 0, "fast path unused: {stats:#}");
        assert_eq!(ls_json(&sb)["fast_path"], true);
    } else {
        assert_eq!(
            (fast_in, fast_out),
            (0, 0),
            "fast path used while off: {stats:#}"
        );
    }
    // XDP carries the data of established inbound flows; their handshakes
    // and teardowns stay with TC.
    if support::mode().xdp {
        assert!(fast_xdp > 0, "XDP unused: {stats:#}");
        assert_eq!(ls_json(&sb)["xdp"], true);
    } else {
        assert_eq!(fast_xdp, 0, "XDP used while off: {stats:#}");
    }
}

#[test]
fn detach_keep_bridge_then_attach_serves_the_same_endpoints_again() {
    let sb = with_published(&["8080:80"]);
    let _srv = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("server");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(8080), b"1").expect("before"),
        b"1"
    );
    sb.netbr_ok(&["detach", "--keep-bridge"]).expect("detach");
    // The datapath is gone: nothing translates, nothing is listed...
    assert!(probe::tcp_request(&sb.lan_path(), published(8080), b"2").is_err());
    fails_with(&sb, &["ls"], "is not attached");
    // ...but the bridge and the container are still there.
    assert!(netbr::netns::exists(&sb.container(1)));
    fails_with(
        &sb,
        &["attach", "--subnet", "172.31.0.0/16", "--uplink", "up0"],
        "outside 172.31.0.0/16",
    );
    sb.attach().expect("attach again");
    let ls = ls_json(&sb);
    assert_eq!(
        ls["endpoints"][0]["name"],
        sb.container(1).as_str(),
        "{ls:#}"
    );
    assert_eq!(
        ls["mappings"].as_array().expect("mappings").len(),
        1,
        "{ls:#}"
    );
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), published(8080), b"3").expect("after"),
        b"3"
    );
}

#[test]
fn bench_measures_every_metric_for_every_arm() {
    bench_run_has_every_figure(&["--arms", "routed,nftables,netbr"]);
}

#[test]
fn bench_measures_every_metric_over_ipv6_with_ip6tables_and_an_inet_table() {
    // A figure above zero on the netfilter arms means their IPv6 rules
    // carried the traffic: ip6tables' FORWARD policy is drop and lan has
    // no route to the containers.
    bench_run_has_every_figure(&["--ipv6", "--arms", "iptables-nft,nftables,netbr-fast"]);
}

/// Not a speed check (those are the bench's job): a short run with `args`
/// (which name its `--arms`) must produce each figure for each arm, each
/// above zero.
fn bench_run_has_every_figure(args: &[&str]) {
    let arms: Vec<&str> = args
        .iter()
        .skip_while(|a| **a != "--arms")
        .nth(1)
        .expect("--arms")
        .split(',')
        .collect();
    let out_file = std::env::temp_dir().join(format!(
        "netbr-bench-{}.json",
        netbr::sandbox::unique_suffix()
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netbr"))
        .arg("bench")
        .args(args)
        .args(["--rounds", "1", "--secs", "0.2", "--fwd", "--json"])
        .arg(&out_file)
        .output()
        .expect("run bench");
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("connect_close_per_s") && table.contains("udp64_pps"),
        "{table}"
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_file).expect("json")).expect("parse");
    let _ = std::fs::remove_file(&out_file);
    let ipv6 = args.contains(&"--ipv6");
    assert_eq!(doc["family"], if ipv6 { "ipv6" } else { "ipv4" });
    let rows = doc["results"].as_array().expect("results");
    let metrics = netbr::bench::METRICS.len();
    // Every metric for every arm; the BPF run-time pair for netbr's only.
    let netbr_arms = arms.iter().filter(|a| a.starts_with("netbr")).count();
    assert_eq!(
        rows.len(),
        arms.len() * (metrics - 2) + 2 * netbr_arms,
        "{doc:#}"
    );
    for r in rows {
        let m = r["metric"].as_str().unwrap_or("");
        let v = r["median"].as_f64().unwrap_or(-1.0);
        // /proc/stat counts in 10 ms ticks: a 0.2 s window may see none.
        if m.contains("_cpu_") {
            assert!(v >= 0.0, "{r}");
        } else {
            assert!(v > 0.0, "{r}");
        }
    }
}

/// What `bind` of `addr` says inside namespace `ns`: Ok, or the errno.
fn bind_in(ns: &std::path::Path, addr: SocketAddr, tcp: bool) -> Result<(), i32> {
    netbr::netns::run_in(ns, move || {
        let r = if tcp {
            std::net::TcpListener::bind(addr).map(drop)
        } else {
            std::net::UdpSocket::bind(addr).map(drop)
        };
        r.map_err(|e| e.raw_os_error().unwrap_or(-1))
    })
    .expect("enter namespace")
}

#[test]
fn a_published_host_port_is_held_against_host_processes_until_unpublished() {
    let sb = with_published(&["8080:80", "127.0.0.1:8443:443", "5353:53/udp"]);
    let host = sb.host_path();
    let any = |p: u16| SocketAddr::from(([0, 0, 0, 0], p));
    let lo = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    // The ports are the containers': a host process cannot take them, on
    // any address, as when docker-proxy holds them.
    assert_eq!(bind_in(&host, any(8080), true), Err(libc::EADDRINUSE));
    assert_eq!(bind_in(&host, lo(8080), true), Err(libc::EADDRINUSE));
    assert_eq!(bind_in(&host, published(8080), true), Err(libc::EADDRINUSE));
    assert_eq!(bind_in(&host, lo(8443), true), Err(libc::EADDRINUSE));
    assert_eq!(bind_in(&host, any(8443), true), Err(libc::EADDRINUSE));
    assert_eq!(bind_in(&host, any(5353), false), Err(libc::EADDRINUSE));
    // Other ports, the other protocol, and other namespaces are untouched.
    assert_eq!(bind_in(&host, any(8081), true), Ok(()));
    assert_eq!(bind_in(&host, any(8080), false), Ok(()));
    assert_eq!(bind_in(&host, published(8443), true), Ok(()));
    assert_eq!(bind_in(&sb.lan_path(), any(8080), true), Ok(()));
    assert!(sb.stats().expect("stats")["bind_refused"].as_u64() >= Some(6));
    // Unpublished, the port is the host's again.
    sb.netbr_ok(&["unpublish", &sb.container(1), "-p", "8080:80"])
        .expect("unpublish");
    assert_eq!(bind_in(&host, any(8080), true), Ok(()));
}

/// Writes `msg` on a long-lived echo connection and reads it back.
use support::host_flows::echoes;

/// The host's own sockets and containers' masqueraded flows never share a
/// tuple, whichever comes first (`support::host_flows`).
#[test]
fn host_sockets_and_masqueraded_flows_never_share_a_tuple() {
    let sb = attached();
    sb.add_container(1).expect("endpoint");
    support::host_flows::never_share_a_tuple(&sb, LAN_IP.into(), UPLINK_IP.into());
}

/// A host firewall that drops forwarded traffic, as many hosts run.
#[derive(Clone, Copy, Debug)]
enum ForwardPolicy {
    Empty,
    /// Docker's own install: `iptables -P FORWARD DROP` (iptables-nft here).
    IptablesDrop,
    /// A native nftables `inet` table whose forward chain drops.
    NftInetDrop,
}

impl ForwardPolicy {
    fn install(self, ns: &std::path::Path) {
        let commands: &[&[&str]] = match self {
            Self::Empty => &[],
            Self::IptablesDrop => &[&["iptables", "-P", "FORWARD", "DROP"]],
            Self::NftInetDrop => &[
                &["nft", "add", "table", "inet", "hostfw"],
                &[
                    "nft",
                    "add chain inet hostfw forward { type filter hook forward priority 0 ; policy drop ; }",
                ],
            ],
        };
        for cmd in commands {
            let o = in_netns(ns, cmd[0], &cmd[1..]).expect("firewall tool");
            assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
        }
    }
}

/// Published ports, masquerade and hairpin work whatever the host's forward
/// policy (the fast path, on by default, never hands them to the forward
/// path); `attach` and `ls` say what a dropping policy means; traffic netbr
/// does not translate stays subject to it.
#[test]
fn translated_flows_work_whatever_the_forward_policy() {
    for policy in [
        ForwardPolicy::Empty,
        ForwardPolicy::IptablesDrop,
        ForwardPolicy::NftInetDrop,
    ] {
        let sb = sandbox();
        policy.install(&sb.host_path());
        let o = sb.netbr(&sb.attach_args(&["--fast-path"])).expect("attach");
        assert!(o.status.success(), "{policy:?}: {}", stderr(&o));
        let dropping = !matches!(policy, ForwardPolicy::Empty);
        assert_eq!(
            stderr(&o).contains("the host firewall drops forwarded traffic"),
            dropping,
            "{policy:?}: {}",
            stderr(&o)
        );
        let c1 = sb.add_container(1).expect("endpoint");
        sb.publish(1, &["8080:80", "5353:53/udp"]).expect("publish");
        let _tcp = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("tcp server");
        let _udp = Server::udp(&sb.container_path(1), 53, probe::echo()).expect("udp server");
        let lan_tcp = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan tcp");

        // Published ports from lan, TCP and UDP.
        let back =
            probe::tcp_request(&sb.lan_path(), published(8080), b"in").expect("published tcp");
        assert_eq!(back, b"in", "{policy:?}");
        let back = probe::udp_request(&sb.lan_path(), published(5353), 0, b"in udp")
            .expect("published udp");
        assert_eq!(back, b"in udp", "{policy:?}");
        // Masquerade, first packet included, and ping.
        let c = sb.container_path(1);
        let back =
            probe::tcp_request(&c, SocketAddr::from((LAN_IP, 9000)), b"out").expect("masquerade");
        assert_eq!(back, b"out", "{policy:?}");
        assert_eq!(lan_tcp.peers()[0].ip(), UPLINK_IP);
        assert!(
            probe::ping(&c, LAN_IP).expect("ping"),
            "{policy:?}: no echo reply"
        );
        // Hairpin: the container through the host's address to itself.
        let back = probe::tcp_request(&c, published(8080), b"hairpin").expect("hairpin");
        assert_eq!(back, b"hairpin", "{policy:?}");

        let ls = ls_json(&sb);
        assert_eq!(
            ls["host_forward_drop"].as_array().map_or(0, Vec::len),
            usize::from(dropping),
            "{policy:?}: {ls:#}"
        );
        if !dropping {
            continue;
        }
        assert!(sb.netbr_ok(&["ls"]).expect("ls").contains("bypass it"));

        // Untranslated traffic stays the firewall's: lan routing the subnet
        // via the host reaches no container, even where netbr allows it.
        sb.attach_with(&["--fast-path", "--allow-direct-routing"])
            .expect("re-attach");
        sb.route_lan_to_subnet().expect("route");
        assert!(
            probe::tcp_request(&sb.lan_path(), SocketAddr::from((c1, 80)), b"x").is_err(),
            "{policy:?}: direct routing got through a dropping forward policy"
        );

        // Without the fast path, attach says what the policy will do.
        let o = sb
            .netbr(&sb.attach_args(&["--no-fast-path"]))
            .expect("attach");
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("warning: the host firewall drops forwarded traffic")
                && stderr(&o).contains("without --no-fast-path"),
            "{policy:?}: {}",
            stderr(&o)
        );
    }
}

fn firewall_ls(sb: &Sandbox) -> Vec<serde_json::Value> {
    let out = sb
        .netbr_ok(&["firewall", "ls", "--json"])
        .expect("firewall ls");
    serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("firewall json")
}

fn add_rule(sb: &Sandbox, args: &[&str]) -> u64 {
    let out = sb
        .netbr_ok(&[&["firewall", "add"], args].concat())
        .expect("firewall add");
    out.trim()
        .strip_prefix("rule ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("firewall add printed {out:?}"))
}

fn hits(sb: &Sandbox, id: u64) -> u64 {
    firewall_ls(sb)
        .iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["hits"].as_u64())
        .unwrap_or_else(|| panic!("no rule {id}"))
}

/// netbr's firewall for what it exposes: denies by client and port, allow
/// lists, --out denies per endpoint, hit counters, removal, re-attach,
/// flush filters, and bad input refused with nothing changed.
#[test]
fn the_firewall_decides_new_flows_to_published_ports_and_from_containers() {
    let sb = attached();
    sb.add_container(1).expect("c1");
    sb.add_container(2).expect("c2");
    sb.publish(1, &["8080:80", "5353:53/udp"]).expect("publish");
    sb.publish(2, &["9090:80"]).expect("publish");
    let _c1 = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("c1 tcp");
    let _c1u = Server::udp(&sb.container_path(1), 53, probe::echo()).expect("c1 udp");
    let _c2 = Server::tcp_stream(&sb.container_path(2), 80).expect("c2 tcp");
    let _lan = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan tcp");
    let lan = sb.lan_path();
    let serves = |port: u16| probe::tcp_request(&lan, published(port), b"x").is_ok();
    let out_ok = |n: u32| {
        probe::tcp_request(
            &sb.container_path(n),
            SocketAddr::from((LAN_IP, 9000)),
            b"o",
        )
        .is_ok()
    };
    assert!(serves(8080) && serves(9090));

    // A deny by client block and port: that port only, both protocols.
    let deny = add_rule(&sb, &["--deny", "--from", "192.0.2.0/24", "--port", "8080"]);
    assert!(!serves(8080), "the denied client reached 8080");
    assert!(serves(9090));
    assert_eq!(
        probe::udp_request(&lan, published(5353), 0, b"u").expect("udp 5353"),
        b"u"
    );
    assert!(hits(&sb, deny) >= 1);
    assert!(
        sb.stats().expect("stats")["drop_fw_deny"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );

    // An established flow carries on under a new deny, until flushed.
    let mut held = probe::tcp_connect(&lan, 0, published(9090)).expect("connect 9090");
    assert!(echoes(&mut held, b"before"));
    let deny_9090 = add_rule(&sb, &["--deny", "--port", "9090/tcp"]);
    assert!(
        echoes(&mut held, b"after the rule"),
        "an established flow was cut"
    );
    let flushed = sb
        .netbr_ok(&[
            "conntrack",
            "flush",
            "--from",
            "192.0.2.0/24",
            "--port",
            "9090",
        ])
        .expect("flush");
    assert!(!flushed.contains("flushed 0 "), "{flushed}");
    // Only the flows the filters select: lan's UDP flow to 5353 stays.
    let udp_flows = sb
        .netbr_ok(&["conntrack", "list", "--port", "5353"])
        .expect("list");
    assert!(udp_flows.contains("1 flow(s)"), "{udp_flows}");
    held.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("timeout");
    assert!(
        !echoes(&mut held, b"after the flush"),
        "a flushed flow came back"
    );
    sb.netbr_ok(&["firewall", "rm", &deny_9090.to_string()])
        .expect("rm");

    // Removing the rule restores service.
    sb.netbr_ok(&["firewall", "rm", &deny.to_string()])
        .expect("rm");
    assert!(serves(8080), "8080 stayed closed after its rule went");

    // An allow list on 8080 admits only its block; other ports stay open.
    let allow = add_rule(
        &sb,
        &["--allow", "--from", "198.51.100.0/24", "--port", "8080/tcp"],
    );
    assert!(
        !serves(8080),
        "a client outside the allow list reached 8080"
    );
    assert!(serves(9090));
    assert!(
        sb.stats().expect("stats")["drop_fw_not_allowed"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    let lan_ip = LAN_IP.to_string();
    let lan_allow = add_rule(&sb, &["--allow", "--from", &lan_ip, "--port", "8080/tcp"]);
    assert!(serves(8080), "lan is on the allow list now");
    assert!(hits(&sb, lan_allow) >= 1);
    assert_eq!(hits(&sb, allow), 0);

    // --out: c1 may not reach lan's port 9000; c2 still does.
    assert!(out_ok(1));
    let out = add_rule(
        &sb,
        &[
            "--deny",
            "--out",
            "--to",
            "192.0.2.0/24",
            "--port",
            "9000",
            "--endpoint",
            &sb.container(1),
        ],
    );
    assert!(!out_ok(1), "c1 reached a denied destination");
    assert!(out_ok(2), "c2 was refused by c1's rule");
    assert!(hits(&sb, out) >= 1);

    // Rules survive re-attach, and ls counts them.
    let before = firewall_ls(&sb);
    assert_eq!(ls_json(&sb)["firewall_rules"], before.len());
    sb.attach().expect("re-attach");
    assert_eq!(firewall_ls(&sb).len(), before.len());
    assert!(!out_ok(1), "the rule was lost on re-attach");

    // Bad input is refused with a clear error, and nothing changes.
    let rules = sb.netbr_ok(&["firewall", "ls", "--json"]).expect("ls");
    let duplicate = format!("rule {lan_allow}");
    for (args, needle) in [
        (
            &["add", "--deny", "--from", "192.0.2.0/40"][..],
            "prefix length",
        ),
        (&["add", "--deny", "--from", "lan"], "not an IPv4 address"),
        (&["rm", "99"], "no firewall rule 99"),
        (
            &["add", "--deny", "--endpoint", "nosuch"],
            "no endpoint named nosuch",
        ),
        (
            &["add", "--deny", "--to", "10.0.0.0/8"],
            "--to applies to --out rules",
        ),
        (
            &["add", "--allow", "--from", &lan_ip, "--port", "8080/tcp"],
            &duplicate,
        ),
    ] {
        let args: Vec<&str> = ["firewall"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        fails_with(&sb, &args, needle);
    }
    assert_eq!(
        sb.netbr_ok(&["firewall", "ls", "--json"]).expect("ls"),
        rules
    );

    // An endpoint's rules go with it.
    sb.netbr_ok(&["endpoint", "rm", &sb.container(1)])
        .expect("endpoint rm");
    assert!(firewall_ls(&sb).iter().all(|r| r["id"] != out));
    support::assert_no_netfilter_rules(&sb.host_path());
}

/// Packets `dev` of namespace `ns` has received.
/// Closes a connection with a reset, as a client with `SO_LINGER` 0 does:
/// no TIME_WAIT holds its tuple, which the next connection may reuse.
fn reset(s: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a value of its length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

#[test]
fn with_the_fast_path_established_flows_leave_from_the_veth_and_never_cross_the_bridge() {
    let sb = sandbox();
    sb.attach_with(&["--fast-path"]).expect("attach");
    let c1 = sb.container_path(1);
    sb.add_container(1).expect("c1");
    let udp = Server::udp(&sb.lan_path(), 9001, probe::echo()).expect("lan UDP server");
    let to = SocketAddr::from((LAN_IP, 9001));
    // The flow's first datagram opens it on the bridge's hook; the rest
    // are `nb_ep_in`'s, on the container's veth. A port below the host's
    // ephemeral range, which masquerade keeps.
    probe::udp_request(&c1, to, 21000, b"open").expect("open the flow");
    let before = support::fast_path::bridge_rx_packets(&sb);
    for _ in 0..200 {
        assert_eq!(
            probe::udp_request(&c1, to, 21000, b"data").expect("datagram"),
            b"data"
        );
    }
    let crossed = support::fast_path::bridge_rx_packets(&sb) - before;
    assert_eq!(udp.peers().len(), 201);
    assert!(
        udp.peers()
            .iter()
            .all(|p| *p == SocketAddr::from((UPLINK_IP, 21000))),
        "{:?}",
        udp.peers()
    );
    // A few frames the bridge must see (ARP, neighbour discovery) may come.
    assert!(
        crossed < 20,
        "{crossed} of 200 datagrams crossed the bridge"
    );

    // A connection reusing a reset connection's tuple: its SYN meets the
    // closed flow on the veth and goes out from there, keeping its port
    // (uplink egress once took it, carrying the container's socket, for
    // the host's own and moved it off the port: the reply never came back).
    let tcp = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("lan TCP server");
    let to = SocketAddr::from((LAN_IP, 9000));
    for round in 0..3 {
        let s = probe::tcp_connect(&c1, 21001, to)
            .unwrap_or_else(|e| panic!("connection {round} from port 21001: {e:#}"));
        reset(s);
        // The reset reaches lan and the flow is closed before the next SYN.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(tcp.peers(), vec![SocketAddr::from((UPLINK_IP, 21001)); 3]);
}

/// A stream's large writes cross the container's veth as GSO packets of
/// up to 64 KiB; the fast path routes them by their segments' size, so
/// they leave from the veth like any other tracked packet (the route's
/// MTU check once refused them all, and a masqueraded stream took the
/// bridge and the host's forward path).
#[test]
fn with_the_fast_path_a_streams_large_writes_leave_from_the_veth_too() {
    let sb = sandbox();
    sb.attach_with(&["--fast-path"]).expect("attach");
    sb.add_container(1).expect("c1");
    support::fast_path::assert_large_writes_leave_from_the_veth(&sb, (LAN_IP, 9000).into());
}

/// The fast path's MTU check counts a GSO packet's segments, as the
/// stack's forward path does: with the uplink's link narrower than what
/// lan announces, a stream's large writes are the stack's, which answers
/// "fragmentation needed", and the container's socket learns the path's
/// MTU. (Sent on whole, their 1500-byte segments would leave a 1400-byte
/// link.)
#[test]
fn with_the_fast_path_a_stream_learns_a_narrower_uplinks_mtu() {
    let sb = sandbox();
    sb.attach_with(&["--fast-path"]).expect("attach");
    sb.add_container(1).expect("c1");
    ip_ok(
        &sb.host_path(),
        &["link", "set", netbr::sandbox::UPLINK, "mtu", "1400"],
    );
    ip_ok(&sb.lan_path(), &["link", "set", "eth0", "mtu", "1400"]);
    // lan announces the MSS of a 1500-byte link, as a server behind a
    // wider link would.
    let route = [
        "192.0.2.0/24",
        "dev",
        "eth0",
        "src",
        "192.0.2.2",
        "advmss",
        "1460",
    ];
    ip_ok(
        &sb.lan_path(),
        &[&["route", "replace"][..], &route].concat(),
    );
    let _lan = Server::tcp_stream(&sb.lan_path(), 9000).expect("lan stream server");
    let mut s = probe::tcp_connect(&sb.container_path(1), 0, SocketAddr::from((LAN_IP, 9000)))
        .expect("connect");
    support::fast_path::echo_blocks(&mut s, 16);
    let mut mtu: libc::c_int = 0;
    let mut len: libc::socklen_t = 4;
    // SAFETY: getsockopt on a socket this test owns, into an int.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "IP_MTU");
    assert_eq!(mtu, 1400, "the container did not learn the uplink's MTU");
}

#[test]
fn writers_on_a_bridge_never_attached_are_refused_and_leave_nothing_behind() {
    let sb = sandbox();
    fails_with(&sb, &["endpoint", "add", "c1"], "is not attached");
    fails_with(&sb, &["publish", "c1", "-p", "8080:80"], "is not attached");
    let dir = netbr::netns::run_in(&sb.host_path(), || {
        netbr::store::state_dir(netbr::sandbox::BRIDGE)
    })
    .expect("run in namespace")
    .expect("state directory");
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
