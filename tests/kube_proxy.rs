//! netbr beside kube-proxy: Services' rules written into the sandbox's host
//! namespace as kube-proxy writes them, in its iptables mode and in its
//! nftables mode, and ClusterIP and NodePort Services working through them
//! with netbr's datapath in the run's mode (the fast path included).
//!
//! The cluster, shrunk to the sandbox: the bridge subnet is this node's
//! pod subnet (172.30.0.0/16 is also the cluster's pod CIDR), c1 is a pod
//! serving TCP 80 and UDP 53, c2 a client pod, and lan plays both another
//! node (whose pod at 192.0.2.2:9000 is a Service's endpoint) and an
//! outside client of the NodePorts. Services are in 198.51.100.0/24.

mod support;

use std::net::{Ipv4Addr, SocketAddr};

use netbr::{
    probe::{self, Server},
    sandbox::{in_netns, run_with_input, Sandbox, LAN_IP, UPLINK_IP},
};

/// `web`: ClusterIP 198.51.100.10, TCP 80 and UDP 53, endpoint c1 on this
/// node; NodePorts 30080/tcp and 30053/udp with externalTrafficPolicy
/// Local (not masqueraded: c1 answers the client itself). `remote`:
/// ClusterIP 198.51.100.11 TCP 80, endpoint 192.0.2.2:9000 on the other
/// node. Rules as kube-proxy's iptables mode writes them (its chain names,
/// comments and masquerade marks), trimmed to these Services.
const IPTABLES_RULES: &str = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-WEBTCP - [0:0]
:KUBE-SVC-WEBUDP - [0:0]
:KUBE-SVC-REMOTE - [0:0]
:KUBE-SEP-WEBTCP - [0:0]
:KUBE-SEP-WEBUDP - [0:0]
:KUBE-SEP-REMOTE - [0:0]
:KUBE-EXT-WEBTCP - [0:0]
:KUBE-EXT-WEBUDP - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 198.51.100.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-WEBTCP
-A KUBE-SERVICES -d 198.51.100.10/32 -p udp -m comment --comment "default/web:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-WEBUDP
-A KUBE-SERVICES -d 198.51.100.11/32 -p tcp -m comment --comment "default/remote:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-REMOTE
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j KUBE-EXT-WEBTCP
-A KUBE-NODEPORTS -p udp -m comment --comment "default/web:dns" -m udp --dport 30053 -j KUBE-EXT-WEBUDP
-A KUBE-EXT-WEBTCP -j KUBE-SVC-WEBTCP
-A KUBE-EXT-WEBUDP -j KUBE-SVC-WEBUDP
-A KUBE-SVC-WEBTCP ! -s 172.30.0.0/16 -d 198.51.100.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEBTCP -m comment --comment "default/web:http -> 172.30.0.2:80" -j KUBE-SEP-WEBTCP
-A KUBE-SVC-WEBUDP ! -s 172.30.0.0/16 -d 198.51.100.10/32 -p udp -m comment --comment "default/web:dns cluster IP" -m udp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEBUDP -m comment --comment "default/web:dns -> 172.30.0.2:53" -j KUBE-SEP-WEBUDP
-A KUBE-SVC-REMOTE ! -s 172.30.0.0/16 -d 198.51.100.11/32 -p tcp -m comment --comment "default/remote:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-REMOTE -m comment --comment "default/remote:http -> 192.0.2.2:9000" -j KUBE-SEP-REMOTE
-A KUBE-SEP-WEBTCP -s 172.30.0.2/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-WEBTCP -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 172.30.0.2:80
-A KUBE-SEP-WEBUDP -s 172.30.0.2/32 -m comment --comment "default/web:dns" -j KUBE-MARK-MASQ
-A KUBE-SEP-WEBUDP -p udp -m comment --comment "default/web:dns" -m udp -j DNAT --to-destination 172.30.0.2:53
-A KUBE-SEP-REMOTE -s 192.0.2.2/32 -m comment --comment "default/remote:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-REMOTE -p tcp -m comment --comment "default/remote:http" -m tcp -j DNAT --to-destination 192.0.2.2:9000
COMMIT
"#;

/// The same Services as kube-proxy's nftables mode writes them: its own
/// table, verdict maps keyed by address, protocol and port, and the
/// masquerade mark.
const NFTABLES_RULES: &str = r#"table ip kube-proxy {
    comment "rules for kube-proxy"
    map service-ips {
        type ipv4_addr . inet_proto . inet_service : verdict
        elements = { 198.51.100.10 . tcp . 80 : goto service-web-tcp,
                     198.51.100.10 . udp . 53 : goto service-web-udp,
                     198.51.100.11 . tcp . 80 : goto service-remote-tcp }
    }
    map service-nodeports {
        type inet_proto . inet_service : verdict
        elements = { tcp . 30080 : goto external-web-tcp,
                     udp . 30053 : goto external-web-udp }
    }
    chain mark-for-masquerade {
        meta mark set meta mark | 0x4000
    }
    chain masquerading {
        type nat hook postrouting priority srcnat; policy accept;
        meta mark & 0x4000 == 0 return
        meta mark set meta mark ^ 0x4000
        masquerade fully-random
    }
    chain nat-prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump services
    }
    chain nat-output {
        type nat hook output priority -100; policy accept;
        jump services
    }
    chain services {
        ip daddr . meta l4proto . th dport vmap @service-ips
        fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
    }
    chain external-web-tcp {
        goto service-web-tcp
    }
    chain external-web-udp {
        goto service-web-udp
    }
    chain service-web-tcp {
        ip daddr 198.51.100.10 tcp dport 80 ip saddr != 172.30.0.0/16 jump mark-for-masquerade
        goto endpoint-web-tcp
    }
    chain service-web-udp {
        ip daddr 198.51.100.10 udp dport 53 ip saddr != 172.30.0.0/16 jump mark-for-masquerade
        goto endpoint-web-udp
    }
    chain service-remote-tcp {
        ip daddr 198.51.100.11 tcp dport 80 ip saddr != 172.30.0.0/16 jump mark-for-masquerade
        goto endpoint-remote-tcp
    }
    chain endpoint-web-tcp {
        ip saddr 172.30.0.2 jump mark-for-masquerade
        meta l4proto tcp dnat to 172.30.0.2:80
    }
    chain endpoint-web-udp {
        ip saddr 172.30.0.2 jump mark-for-masquerade
        meta l4proto udp dnat to 172.30.0.2:53
    }
    chain endpoint-remote-tcp {
        ip saddr 192.0.2.2 jump mark-for-masquerade
        meta l4proto tcp dnat to 192.0.2.2:9000
    }
}
"#;

/// Feeds `rules` to `tool` (`iptables-nft-restore`, `nft -f -`) in the
/// sandbox's host namespace.
fn install_rules(sb: &Sandbox, tool: &[&str], rules: &str) {
    let out = run_with_input(
        std::process::Command::new("timeout")
            .args([
                "60",
                "nsenter",
                &format!("--net={}", sb.host_path().display()),
            ])
            .args(tool),
        rules.as_bytes(),
    )
    .expect("run the rule loader");
    assert!(
        out.status.success(),
        "{tool:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const WEB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);

/// Every Service path of the issue, checked from the user's side.
fn services_work(sb: &Sandbox) {
    // A node has a default route: without one, the node's own connect to
    // a ClusterIP fails before OUTPUT's DNAT could give it an endpoint.
    let route = in_netns(
        &sb.host_path(),
        "ip",
        &["route", "add", "default", "via", "192.0.2.2"],
    )
    .expect("ip route");
    assert!(route.status.success());
    let c1 = sb.add_container(1).expect("c1");
    sb.add_container(2).expect("c2");
    let web = Server::tcp(&sb.container_path(1), 80, probe::echo()).expect("web");
    let _dns = Server::udp(&sb.container_path(1), 53, probe::echo()).expect("dns");
    let _remote = Server::tcp(&sb.lan_path(), 9000, probe::echo()).expect("remote pod");
    let c2 = sb.container_path(2);
    let doc: serde_json::Value =
        serde_json::from_str(&sb.netbr_ok(&["ls", "--json"]).expect("ls")).expect("json");
    assert_eq!(doc["host_nat"], true, "{doc:#}");
    assert!(
        !doc["kube_proxy_rules"].as_array().expect("list").is_empty(),
        "{doc:#}"
    );

    // A pod to a ClusterIP, its endpoint on this node, TCP and UDP.
    let to_web = SocketAddr::from((WEB, 80));
    assert_eq!(
        probe::tcp_request(&c2, to_web, b"svc").expect("pod -> ClusterIP"),
        b"svc"
    );
    assert_eq!(
        probe::udp_request(&c2, SocketAddr::from((WEB, 53)), 0, b"q")
            .expect("pod -> ClusterIP udp"),
        b"q"
    );
    // A pod to a ClusterIP whose endpoint is on the other node; the reply
    // comes back from the ClusterIP.
    let (reply, peer) = probe::tcp_request_peer(&c2, SocketAddr::from((REMOTE, 80)), b"far")
        .expect("pod -> remote ClusterIP");
    assert_eq!(
        (reply.as_slice(), peer),
        (&b"far"[..], SocketAddr::from((REMOTE, 80)))
    );
    // The node to a ClusterIP.
    assert_eq!(
        probe::tcp_request(&sb.host_path(), to_web, b"node").expect("node -> ClusterIP"),
        b"node"
    );
    // An outside client to the NodePorts; with externalTrafficPolicy Local
    // the pod sees the client and answers it itself.
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 30080)), b"np")
            .expect("lan -> NodePort"),
        b"np"
    );
    assert!(web
        .peers()
        .iter()
        .any(|p| p.ip() == std::net::IpAddr::V4(LAN_IP)));
    assert_eq!(
        probe::udp_request(
            &sb.lan_path(),
            SocketAddr::from((UPLINK_IP, 30053)),
            0,
            b"u"
        )
        .expect("lan -> NodePort udp"),
        b"u"
    );
    // netbr's own published ports and masquerade still work beside them.
    sb.publish(1, &["8080:80"]).expect("publish");
    assert_eq!(
        probe::tcp_request(&sb.lan_path(), SocketAddr::from((UPLINK_IP, 8080)), b"pub")
            .expect("lan -> published port"),
        b"pub"
    );
    let _ = c1;
}

#[test]
fn services_work_beside_kube_proxy_in_iptables_mode() {
    let sb = support::sandbox();
    install_rules(&sb, &["iptables-nft-restore"], IPTABLES_RULES);
    let out = sb.netbr(&sb.attach_args(&[])).expect("attach");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("KUBE-SERVICES (kube-proxy, iptables mode)"),
        "attach did not say what it found: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    services_work(&sb);
}

#[test]
fn services_work_beside_kube_proxy_in_nftables_mode() {
    let sb = support::sandbox();
    // kube-proxy after netbr: the first endpoint's attach finds nothing,
    // and attaching again is what turns netbr's care on.
    sb.attach().expect("attach");
    install_rules(&sb, &["nft", "-f", "-"], NFTABLES_RULES);
    let ls = sb.netbr_ok(&["ls"]).expect("ls");
    assert!(ls.contains("attach it again"), "{ls}");
    let out = sb.netbr(&sb.attach_args(&[])).expect("attach");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("table ip kube-proxy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    services_work(&sb);
}
