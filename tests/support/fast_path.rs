//! What the fast path's tests observe: frames the host's bridge device
//! receives (a frame the fast path sends on from a container's veth never
//! reaches it) while traffic flows.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
};

use netbr::{probe, sandbox::Sandbox};

/// Frames the sandbox's bridge has passed up to the host so far.
pub fn bridge_rx_packets(sb: &Sandbox) -> u64 {
    rx_packets(&sb.host_path(), netbr::sandbox::BRIDGE)
}

fn rx_packets(ns: &Path, dev: &'static str) -> u64 {
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

/// Writes `writes` blocks of 64 KiB from `from` to the echo server at `to`
/// over one connection (see [`echo_blocks`]); returns how many frames
/// crossed the bridge meanwhile.
pub fn stream_crossings(sb: &Sandbox, from: &Path, to: SocketAddr, writes: usize) -> u64 {
    let mut s = probe::tcp_connect(from, 0, to).expect("connect");
    let before = bridge_rx_packets(sb);
    echo_blocks(&mut s, writes);
    bridge_rx_packets(sb) - before
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
