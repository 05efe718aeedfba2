//! netbr as the pod network of a multi-node Kubernetes cluster, proven
//! with the real runtime: every node of a [`Cluster`] runs containerd's
//! CRI plugin with `netbr-cni` as its network, and pods are made through
//! the CRI API as kubelet makes them (`support::cri`). Checked from the
//! user's side: the bytes that arrive and the addresses servers see.
//!
//! Nodes 192.0.2.11 and .12 have pod subnets 172.30.1.0/24 and
//! 172.30.2.0/24 with host-gw routes between them; 192.0.2.2 is a client
//! outside the cluster. Every node uses the CNI configuration a cluster
//! would: `nonMasqueradeCIDRs` the cluster's pod CIDR, `allowDirectRouting`.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::Arc,
};

use k8s_cri::v1::Protocol;
use netbr::{
    cluster::{Cluster, Node, OUTSIDE_IP},
    probe::{self, Responder, Server},
};
use support::{
    cri::{pause_image, CriNode, Pod},
    kube::{self, Endpoints, REMOTE, WEB},
    RemoveOnDrop,
};

/// A cluster whose every node runs containerd's CRI. Fields drop in order:
/// containerd and its shims first, then netbr and the namespaces.
struct Fixture {
    cri: Vec<CriNode>,
    cluster: Cluster,
    _images: RemoveOnDrop,
}

impl Fixture {
    fn new(nodes: u8) -> Self {
        let cluster = Cluster::create(env!("CARGO_BIN_EXE_netbr"), nodes).expect("cluster");
        let images =
            RemoveOnDrop(std::env::temp_dir().join(format!("netbr-cri-image-{}", cluster.suffix)));
        std::fs::create_dir_all(&images.0).expect("image dir");
        let image = pause_image(&images.0);
        let cri = cluster
            .nodes
            .iter()
            .map(|node| {
                CriNode::start(
                    node,
                    env!("CARGO_BIN_EXE_netbr-cni"),
                    cluster.netbr_cni_conf(node),
                    &image,
                )
            })
            .collect();
        Self {
            cri,
            cluster,
            _images: images,
        }
    }

    fn node(&self, i: usize) -> &Node {
        &self.cluster.nodes[i]
    }

    fn netbr_json(&self, i: usize, args: &[&str]) -> serde_json::Value {
        let o = self.cluster.netbr(self.node(i), args).expect("netbr");
        assert!(
            o.status.success(),
            "netbr {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).expect("netbr JSON")
    }

    /// Asserts node `i` holds nothing of pods that are gone: no endpoint
    /// or hostPort in netbr's state or in the datapath's maps, no flow of
    /// `ips`, no sandbox in containerd, no namespace at `netns`.
    fn assert_nothing_left(&self, i: usize, ips: &[Ipv4Addr], netns: &[&Path]) {
        let ls = self.netbr_json(i, &["ls", "--json"]);
        support::assert_no_endpoints_or_mappings(&ls);
        let gone: Vec<u32> = ips.iter().map(|ip| netbr::addr::to_be32(*ip)).collect();
        let (endpoints, mappings, flows) = netbr::netns::run_in(&self.node(i).path(), move || {
            let dir = netbr::bpf::pins::pin_dir("netbr0")?;
            let dp = netbr::bpf::datapath::Datapath::from_pins(&dir)?;
            let flows = dp.flows()?.into_iter().filter(|(k, e)| {
                [k.saddr, k.daddr, e.xlat.saddr, e.xlat.daddr]
                    .iter()
                    .any(|a| gone.contains(a))
            });
            anyhow::Ok((
                dp.endpoint_list()?.len(),
                dp.mapping_list()?.len(),
                flows.count(),
            ))
        })
        .expect("enter the node")
        .expect("read the datapath's maps");
        assert_eq!(
            (endpoints, mappings, flows),
            (0, 0, 0),
            "node {i}: endpoints, mappings and flows of removed pods left in the maps"
        );
        assert_eq!(self.cri[i].pod_count(), 0, "sandboxes left");
        for ns in netns {
            assert!(!ns.exists(), "{} left", ns.display());
        }
    }
}

/// A server's answer naming it, so a client sees which pod served it.
fn says(name: &'static str) -> Responder {
    Arc::new(move |_, _| name.as_bytes().to_vec())
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn peer_ips(server: &Server) -> Vec<IpAddr> {
    server.peers().iter().map(SocketAddr::ip).collect()
}

#[test]
fn pods_on_two_nodes_follow_the_kubernetes_network_model_and_leave_nothing() {
    let fx = Fixture::new(2);
    let (n1, n2) = (fx.node(0), fx.node(1));
    // The same hostPort on both nodes, TCP and UDP on one port, and a
    // hostPort bound to the node's loopback only.
    let web = |name| {
        Pod::named(name)
            .host_port(Protocol::Tcp, 80, 8080, "")
            .host_port(Protocol::Udp, 53, 8080, "")
    };
    let a = fx.cri[0].run(&web("web-a").host_port(Protocol::Tcp, 80, 8443, "127.0.0.1"));
    let b = fx.cri[1].run(&web("web-b"));
    assert!(
        a.ip.to_string().starts_with("172.30.1.") && b.ip.to_string().starts_with("172.30.2."),
        "pod IPs {} and {} outside their nodes' subnets",
        a.ip,
        b.ip
    );
    let web_a = Server::tcp(&a.netns, 80, says("a")).expect("web a");
    let web_b = Server::tcp(&b.netns, 80, says("b")).expect("web b");
    let _dns_a = Server::udp(&a.netns, 53, says("udp a")).expect("udp a");
    let _dns_b = Server::udp(&b.netns, 53, says("udp b")).expect("udp b");

    // hostPorts: the outside client reaches each node's own pod.
    let outside = fx.cluster.outside_path();
    for (node, tag) in [(n1, "a"), (n2, "b")] {
        let got = probe::tcp_request(&outside, addr(node.ip, 8080), b"x").expect("hostPort");
        assert_eq!(got, tag.as_bytes(), "TCP hostPort 8080 on {}", node.ip);
        let got = probe::udp_request(&outside, addr(node.ip, 8080), 0, b"x").expect("udp");
        assert_eq!(
            got,
            format!("udp {tag}").as_bytes(),
            "UDP 8080 on {}",
            node.ip
        );
    }
    assert!(peer_ips(&web_a).contains(&IpAddr::V4(OUTSIDE_IP)));
    // hostIP 127.0.0.1: the node reaches it, nobody else does.
    assert_eq!(
        probe::tcp_request(&n1.path(), addr(Ipv4Addr::LOCALHOST, 8443), b"x").expect("8443"),
        b"a"
    );
    assert!(probe::tcp_request(&outside, addr(n1.ip, 8443), b"x").is_err());

    // Pod to pod across nodes, both ways, each seen with its own address.
    assert_eq!(
        probe::tcp_request(&a.netns, addr(b.ip, 80), b"x").expect("a -> b"),
        b"b"
    );
    assert_eq!(peer_ips(&web_b), [IpAddr::V4(OUTSIDE_IP), IpAddr::V4(a.ip)]);
    assert_eq!(
        probe::tcp_request(&b.netns, addr(a.ip, 80), b"x").expect("b -> a"),
        b"a"
    );
    assert_eq!(peer_ips(&web_a).last(), Some(&IpAddr::V4(b.ip)));
    // Nodes reach the pods of every node.
    for node in [n1, n2] {
        for (pod, tag) in [(&a, "a"), (&b, "b")] {
            let got = probe::tcp_request(&node.path(), addr(pod.ip, 80), b"x");
            assert_eq!(got.expect("node -> pod"), tag.as_bytes());
        }
    }
    // The outside is reached masqueraded to the node's address.
    let out = Server::tcp(&outside, 9000, probe::echo()).expect("outside server");
    for pod in [&a, &b] {
        let got = probe::tcp_request(&pod.netns, addr(OUTSIDE_IP, 9000), b"o").expect("out");
        assert_eq!(got, b"o");
    }
    assert_eq!(peer_ips(&out), [IpAddr::V4(n1.ip), IpAddr::V4(n2.ip)]);

    // Kubelet's teardown: StopPodSandbox twice, RemovePodSandbox.
    fx.cri[0].remove(&a.id);
    fx.cri[1].remove(&b.id);
    assert!(probe::tcp_request(&outside, addr(n1.ip, 8080), b"x").is_err());
    fx.assert_nothing_left(0, &[a.ip], &[&a.netns]);
    fx.assert_nothing_left(1, &[b.ip], &[&b.netns]);
}

#[test]
fn kube_proxy_services_work_across_nodes_with_cri_pods() {
    let fx = Fixture::new(2);
    // One web pod per node serves TCP 80 and UDP 53.
    let pods: Vec<_> = fx
        .cri
        .iter()
        .map(|cri| cri.run(&Pod::named("web")))
        .collect();
    let servers: Vec<_> = pods
        .iter()
        .zip(["web on 1", "web on 2"])
        .map(|(pod, tag)| {
            (
                Server::tcp(&pod.netns, 80, says(tag)).expect("web"),
                Server::udp(&pod.netns, 53, says(tag)).expect("dns"),
            )
        })
        .collect();
    // kube-proxy's rules on each node, the iptables mode on node 1 and the
    // nftables mode on node 2: `web`'s endpoint is the node's own pod,
    // `remote`'s the other node's.
    for (i, tool) in [(0, &["iptables-nft-restore"][..]), (1, &["nft", "-f", "-"])] {
        let endpoints = Endpoints {
            web_pod: pods[i].ip,
            remote: SocketAddrV4::new(pods[1 - i].ip, 80),
        };
        let template = if i == 0 {
            kube::IPTABLES_RULES
        } else {
            kube::NFTABLES_RULES
        };
        kube::install(&fx.node(i).path(), tool, &endpoints.fill(template));
    }
    // The next pod's ADD finds the rules and attaches again to make room
    // for them; kube-proxy starting after the pod network is the usual order.
    let clients: Vec<_> = fx
        .cri
        .iter()
        .map(|cri| cri.run(&Pod::named("client")))
        .collect();
    for i in 0..2 {
        let ls = fx.netbr_json(i, &["ls", "--json"]);
        assert_eq!(ls["host_nat"], true, "node {i}: {ls:#}");
    }
    for (i, client) in clients.iter().enumerate() {
        let (own, other) = (format!("web on {}", i + 1), format!("web on {}", 2 - i));
        // A pod to a ClusterIP whose endpoint is on its node, TCP and UDP.
        let got = probe::tcp_request(&client.netns, addr(WEB, 80), b"x").expect("ClusterIP");
        assert_eq!(got, own.as_bytes());
        let got = probe::udp_request(&client.netns, addr(WEB, 53), 0, b"x").expect("udp");
        assert_eq!(got, own.as_bytes());
        // ... and one whose endpoint is on the other node: the endpoint
        // sees the client pod's own address, the client the ClusterIP.
        let (got, peer) =
            probe::tcp_request_peer(&client.netns, addr(REMOTE, 80), b"x").expect("remote");
        assert_eq!((got.as_slice(), peer), (other.as_bytes(), addr(REMOTE, 80)));
        assert_eq!(
            peer_ips(&servers[1 - i].0).last(),
            Some(&IpAddr::V4(client.ip))
        );
        // The node to a ClusterIP.
        let node = fx.node(i);
        let got = probe::tcp_request(&node.path(), addr(WEB, 80), b"x").expect("node");
        assert_eq!(got, own.as_bytes());
        // The outside to a NodePort of either node (externalTrafficPolicy
        // Local: the node's own pod answers, seeing the client).
        let outside = fx.cluster.outside_path();
        let got = probe::tcp_request(&outside, addr(node.ip, 30080), b"x").expect("NodePort");
        assert_eq!(got, own.as_bytes());
        assert_eq!(
            peer_ips(&servers[i].0).last(),
            Some(&IpAddr::V4(OUTSIDE_IP))
        );
        let got = probe::udp_request(&outside, addr(node.ip, 30053), 0, b"x").expect("udp");
        assert_eq!(got, own.as_bytes());
    }
    for i in 0..2 {
        fx.cri[i].remove(&pods[i].id);
        fx.cri[i].remove(&clients[i].id);
        fx.assert_nothing_left(i, &[pods[i].ip, clients[i].ip], &[]);
    }
}

#[test]
fn five_pods_start_at_once_with_their_limits_and_all_go_cleanly() {
    let fx = Fixture::new(1);
    let node = fx.node(0);
    let pods: Vec<Pod> = (0..5u16)
        .map(|i| {
            let pod = Pod::named(&format!("burst-{i}")).host_port(Protocol::Tcp, 80, 8080 + i, "");
            // kubelet passes the bandwidth annotations on to the plugin.
            if i == 0 {
                pod.annotation("kubernetes.io/egress-bandwidth", "20M")
                    .annotation("kubernetes.io/ingress-bandwidth", "20M")
            } else {
                pod
            }
        })
        .collect();
    let sandboxes = fx.cri[0].run_together(&pods);
    let mut ips: Vec<Ipv4Addr> = sandboxes.iter().map(|s| s.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 5, "pods share addresses: {ips:?}");
    let outside = fx.cluster.outside_path();
    let servers: Vec<_> = sandboxes
        .iter()
        .map(|s| Server::tcp(&s.netns, 80, probe::echo()).expect("server"))
        .collect();
    for i in 0..5u16 {
        let got = probe::tcp_request(&outside, addr(node.ip, 8080 + i), format!("{i}").as_bytes());
        assert_eq!(got.expect("hostPort"), format!("{i}").as_bytes());
        assert_eq!(peer_ips(&servers[usize::from(i)]), [IpAddr::V4(OUTSIDE_IP)]);
    }
    // The limited pod, measured with iperf3 both ways against the outside;
    // UDP offered at twice the limit.
    let limited = &sandboxes[0].netns;
    support::assert_limited_to_20(support::iperf3_mbit(
        limited,
        &outside,
        OUTSIDE_IP,
        false,
        Some(40),
    ));
    support::assert_limited_to_20(support::iperf3_mbit(
        limited,
        &outside,
        OUTSIDE_IP,
        true,
        Some(40),
    ));
    // An unlimited pod is not held to it.
    let free = support::iperf3_mbit(&sandboxes[1].netns, &outside, OUTSIDE_IP, false, None);
    assert!(free > 100.0, "an unlimited pod ran at {free:.1} Mbit/s");
    drop(servers);
    for s in &sandboxes {
        fx.cri[0].remove(&s.id);
    }
    let netns: Vec<&Path> = sandboxes.iter().map(|s| s.netns.as_path()).collect();
    fx.assert_nothing_left(0, &ips, &netns);
}

#[test]
fn the_pod_to_pod_bench_measures_every_metric_for_every_arm() {
    // Not a speed check (the bench's job): a short `bench --pods` builds
    // its own two-node clusters and gives each figure for each arm.
    let out_file = std::env::temp_dir().join(format!(
        "netbr-bench-pods-{}.json",
        netbr::sandbox::unique_suffix()
    ));
    let out = support::runtimes::timed(
        300,
        std::process::Command::new(env!("CARGO_BIN_EXE_netbr"))
            .args(["bench", "--pods", "--rounds", "1", "--secs", "1", "--json"])
            .arg(&out_file),
    );
    assert!(out.status.success(), "{}", support::runtimes::text(&out));
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_file).expect("json")).expect("parse");
    let _ = std::fs::remove_file(&out_file);
    let rows = doc["results"].as_array().expect("results");
    let arms = netbr::bench::pods::PodArm::ALL.len();
    assert_eq!(
        rows.len(),
        arms * netbr::bench::pods::METRICS.len(),
        "{doc:#}"
    );
    for r in rows {
        assert!(r["median"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }
}
