//! Services' rules as kube-proxy writes them, in its iptables mode and in
//! its nftables mode, trimmed to two Services, for the suites that run
//! netbr beside kube-proxy (`kube_proxy`, `cri`).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use netbr::sandbox::run_with_input;

pub const WEB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);

/// Where the two Services send their traffic.
pub struct Endpoints {
    /// `web`'s endpoint, a pod on this node (TCP 80 and UDP 53).
    pub web_pod: Ipv4Addr,
    /// `remote`'s endpoint, on another node.
    pub remote: SocketAddrV4,
}

impl Endpoints {
    /// One of the templates below with these endpoints filled in.
    pub fn fill(&self, template: &str) -> String {
        template
            .replace("{web_pod}", &self.web_pod.to_string())
            .replace("{remote}", &self.remote.to_string())
            .replace("{remote_ip}", &self.remote.ip().to_string())
    }
}

/// Feeds `rules` to `tool` (`iptables-nft-restore`, `nft -f -`) in the
/// namespace at `ns`, as kube-proxy loads them.
pub fn install(ns: &Path, tool: &[&str], rules: &str) {
    let out = run_with_input(
        std::process::Command::new("timeout")
            .args(["60", "nsenter", &format!("--net={}", ns.display())])
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

/// `web`: ClusterIP 198.51.100.10, TCP 80 and UDP 53, endpoint `web_pod`
/// on this node; NodePorts 30080/tcp and 30053/udp with
/// externalTrafficPolicy Local (not masqueraded: the pod answers the client
/// itself). `remote`: ClusterIP 198.51.100.11 TCP 80, endpoint `remote` on
/// another node. The pod CIDR is 172.30.0.0/16. Rules as kube-proxy's iptables mode writes them (its chain names,
/// comments and masquerade marks), trimmed to these Services.
pub const IPTABLES_RULES: &str = r#"*nat
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
-A KUBE-SVC-WEBTCP -m comment --comment "default/web:http -> {web_pod}:80" -j KUBE-SEP-WEBTCP
-A KUBE-SVC-WEBUDP ! -s 172.30.0.0/16 -d 198.51.100.10/32 -p udp -m comment --comment "default/web:dns cluster IP" -m udp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEBUDP -m comment --comment "default/web:dns -> {web_pod}:53" -j KUBE-SEP-WEBUDP
-A KUBE-SVC-REMOTE ! -s 172.30.0.0/16 -d 198.51.100.11/32 -p tcp -m comment --comment "default/remote:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-REMOTE -m comment --comment "default/remote:http -> {remote}" -j KUBE-SEP-REMOTE
-A KUBE-SEP-WEBTCP -s {web_pod}/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-WEBTCP -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination {web_pod}:80
-A KUBE-SEP-WEBUDP -s {web_pod}/32 -m comment --comment "default/web:dns" -j KUBE-MARK-MASQ
-A KUBE-SEP-WEBUDP -p udp -m comment --comment "default/web:dns" -m udp -j DNAT --to-destination {web_pod}:53
-A KUBE-SEP-REMOTE -s {remote_ip}/32 -m comment --comment "default/remote:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-REMOTE -p tcp -m comment --comment "default/remote:http" -m tcp -j DNAT --to-destination {remote}
COMMIT
"#;

/// The same Services as kube-proxy's nftables mode writes them: its own
/// table, verdict maps keyed by address, protocol and port, and the
/// masquerade mark.
pub const NFTABLES_RULES: &str = r#"table ip kube-proxy {
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
        ip saddr {web_pod} jump mark-for-masquerade
        meta l4proto tcp dnat to {web_pod}:80
    }
    chain endpoint-web-udp {
        ip saddr {web_pod} jump mark-for-masquerade
        meta l4proto udp dnat to {web_pod}:53
    }
    chain endpoint-remote-tcp {
        ip saddr {remote_ip} jump mark-for-masquerade
        meta l4proto tcp dnat to {remote}
    }
}
"#;
