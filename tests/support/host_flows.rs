//! The host's own sockets beside containers' masqueraded flows, for both
//! address families (`e2e` over IPv4, `ipv6` over IPv6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netbr::{
    probe::{self, Server},
    sandbox::Sandbox,
};

/// Whether `msg` comes back over `s`.
pub fn echoes(s: &mut std::net::TcpStream, msg: &[u8]) -> bool {
    use std::io::{Read as _, Write as _};
    let mut back = vec![0; msg.len()];
    s.write_all(msg).is_ok() && s.read_exact(&mut back).is_ok() && back == msg
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// A UDP socket of namespace `ns` bound to `port` of every address of
/// `like`'s family, for use from this thread.
fn udp_socket_in(ns: &std::path::Path, like: IpAddr, port: u16) -> std::net::UdpSocket {
    let s = netbr::netns::run_in(ns, move || {
        std::net::UdpSocket::bind((unspecified(like), port))
    })
    .expect("enter namespace")
    .expect("bind");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    s
}

fn udp_echoes(s: &std::net::UdpSocket, to: SocketAddr, msg: &[u8]) -> bool {
    let mut buf = [0; 1500];
    s.send_to(msg, to).is_ok() && matches!(s.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == msg)
}

/// The host's own sockets and containers' masqueraded flows share the uplink
/// address. Whichever comes first, both get their own replies: a host flow
/// whose tuple a container's flow holds is moved to another source port (as
/// netfilter does), and a container is never given a port a host socket
/// holds towards the peer.
///
/// Checked on `sb` (attached, with container 1) over the family of `lan`
/// (lan's address) and `uplink` (the host's, which masquerade uses).
pub fn never_share_a_tuple(sb: &Sandbox, lan: IpAddr, uplink: IpAddr) {
    let (c, host) = (sb.container_path(1), sb.host_path());
    let any = |port| SocketAddr::new(unspecified(lan), port);
    let lan_tcp = Server::tcp_stream_on(&sb.lan_path(), any(9000)).expect("lan tcp");
    let lan_udp = Server::udp_on(&sb.lan_path(), any(9001), probe::echo()).expect("lan udp");
    let (tcp_to, udp_to) = (SocketAddr::new(lan, 9000), SocketAddr::new(lan, 9001));

    // TCP, the container first: the host binds the port its flow was given.
    let mut container = probe::tcp_connect(&c, 0, tcp_to).expect("container connects");
    assert!(echoes(&mut container, b"container 1"));
    let taken = lan_tcp.peers()[0].port();
    let mut host_flow = probe::tcp_connect(&host, taken, tcp_to).expect("host connects");
    assert!(
        echoes(&mut host_flow, b"host 1"),
        "the host's flow gets no replies"
    );
    assert!(
        echoes(&mut container, b"container 2"),
        "the container's flow broke"
    );
    assert!(echoes(&mut host_flow, b"host 2"));
    let peers = lan_tcp.peers();
    assert_eq!(peers.len(), 2);
    assert!(peers.iter().all(|p| p.ip() == uplink), "{peers:?}");
    assert_ne!(peers[1].port(), taken, "two flows on one tuple");

    // TCP, the host first: a container asking for the same source port
    // gets another one.
    let mut host_first = probe::tcp_connect(&host, 5000, tcp_to).expect("host connects");
    assert!(echoes(&mut host_first, b"host 3"));
    let mut c2 = probe::tcp_connect(&c, 5000, tcp_to).expect("container connects");
    assert!(echoes(&mut c2, b"container 3"));
    assert!(echoes(&mut host_first, b"host 4"));
    let peers = lan_tcp.peers();
    assert_eq!(peers[2].port(), 5000, "the host's own flow is never moved");
    assert_ne!(
        peers[3].port(),
        5000,
        "the container was given the host's tuple"
    );

    // UDP, the container first (its own port kept), then the host on it.
    let c_udp = udp_socket_in(&c, lan, 5353);
    assert!(udp_echoes(&c_udp, udp_to, b"container udp 1"));
    let host_udp = udp_socket_in(&host, lan, 5353);
    assert!(
        udp_echoes(&host_udp, udp_to, b"host udp 1"),
        "the host's datagram got no reply"
    );
    assert!(udp_echoes(&c_udp, udp_to, b"container udp 2"));
    assert!(udp_echoes(&host_udp, udp_to, b"host udp 2"));
    // UDP, the host first: a bound host socket keeps its port to itself.
    let host_udp2 = udp_socket_in(&host, lan, 6000);
    assert!(udp_echoes(&host_udp2, udp_to, b"host udp 3"));
    let c_udp2 = udp_socket_in(&c, lan, 6000);
    assert!(udp_echoes(&c_udp2, udp_to, b"container udp 3"));
    assert!(udp_echoes(&host_udp2, udp_to, b"host udp 4"));
    let ports: Vec<u16> = lan_udp.peers().iter().map(|p| p.port()).collect();
    assert_eq!(ports.len(), 7, "{ports:?}");
    assert_eq!(ports[0], 5353);
    assert_ne!(ports[1], 5353, "two flows on one tuple: {ports:?}");
    assert_eq!((ports[2], ports[3]), (5353, ports[1]), "{ports:?}");
    assert_eq!(ports[4], 6000);
    assert_ne!(
        ports[5], 6000,
        "the container was given the host's port: {ports:?}"
    );

    // ICMP echo: the host's pings are tracked under their own identifier,
    // and the container's (of the same identifier here) still get replies.
    assert!(probe::ping(&host, lan).expect("ping"));
    assert!(
        probe::ping(&c, lan).expect("ping"),
        "the container's ping got no reply"
    );
    assert!(probe::ping(&host, lan).expect("ping"));

    let stats = sb.stats().expect("stats");
    // The two moved host flows (TCP and UDP) and the host's ping flow, which
    // its second ping (same identifier) finds tracked.
    assert_eq!(stats["host_flow_new"], 3, "{stats:#}");
    let flows = sb
        .netbr_ok(&["conntrack", "list", "--json"])
        .expect("conntrack");
    assert!(flows.contains("\"host\""), "{flows}");
    super::assert_no_netfilter_rules(&sb.host_path());
}
