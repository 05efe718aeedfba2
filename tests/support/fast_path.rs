//! What the fast path's tests observe: frames the host's bridge device
//! receives (a frame the fast path sends on from a container's veth never
//! reaches it) while traffic flows.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
};

use netbr::{probe, sandbox::Sandbox};

/// Frames the sandbox's bridge has passed up to the host so far.
pub fn bridge_rx_packets(sb: &Sandbox) -> u64 {
    rx_packets(&sb.host_path(), netbr::sandbox::BRIDGE)
}

fn rx_packets(ns: &std::path::Path, dev: &'static str) -> u64 {
    netbr::netns::run_in(ns, move || {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev");
        text.lines()
            .find_map(|l| {
                let (name, rest) = l.split_once(':')?;
                (name.trim() == dev).then(|| rest.split_whitespace().nth(1)?.parse().ok())?
            })
            .expect("counters of the device")
    })
    .expect("run in namespace")
}

/// Asserts a stream from container 1 to an echo server on lan at `to`
/// (started here, on `to`'s port) leaves from the container's veth: of
/// its 64 writes of 64 KiB (see [`echo_blocks`]), fewer than 20 frames
/// cross the bridge (a new flow's first packets, ARP or neighbour
/// discovery may).
pub fn assert_large_writes_leave_from_the_veth(sb: &Sandbox, to: SocketAddr) {
    let any = SocketAddr::new(probe::unspecified_like(to), to.port());
    let _lan = probe::Server::tcp_stream_on(&sb.lan_path(), any).expect("lan stream server");
    let mut s = probe::tcp_connect(&sb.container_path(1), 0, to).expect("connect");
    let before = bridge_rx_packets(sb);
    echo_blocks(&mut s, 64);
    let crossed = bridge_rx_packets(sb) - before;
    assert!(
        crossed < 20,
        "{crossed} frames of 64 writes crossed the bridge"
    );
}

/// Writes `writes` blocks of 64 KiB to an echo server on `s`, each read
/// back whole and compared. A write that size leaves the container's
/// socket as one GSO packet (a few, while the window opens), which the
/// fast path must route by its segments' size, not its own.
pub fn echo_blocks(s: &mut TcpStream, writes: usize) {
    let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let mut echoed = vec![0; block.len()];
    for n in 0..writes {
        s.write_all(&block).expect("write");
        s.read_exact(&mut echoed)
            .unwrap_or_else(|e| panic!("echo of write {n}: {e}"));
        assert!(echoed == block, "write {n} came back changed");
    }
}
