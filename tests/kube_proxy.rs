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

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use netbr::{
    probe::{self, Server},
    sandbox::{in_netns, Sandbox, LAN_IP, UPLINK_IP},
};
use support::kube::{self, Endpoints, REMOTE, WEB};

/// c1 serves `web`; lan's 192.0.2.2:9000 is `remote`'s endpoint.
fn endpoints() -> Endpoints {
    Endpoints {
        web_pod: Ipv4Addr::new(172, 30, 0, 2),
        remote: SocketAddrV4::new(LAN_IP, 9000),
    }
}

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
    kube::install(
        &sb.host_path(),
        &["iptables-nft-restore"],
        &endpoints().fill(kube::IPTABLES_RULES),
    );
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
    kube::install(
        &sb.host_path(),
        &["nft", "-f", "-"],
        &endpoints().fill(kube::NFTABLES_RULES),
    );
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
