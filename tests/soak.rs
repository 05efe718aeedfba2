//! Soak: thousands of concurrent long-lived TCP flows through DNAT and
//! masquerade over several containers, plus a steady rate of new
//! connections, with transmit checksum offload on and off. Payloads are
//! verified byte for byte; netbr drops nothing unexpected; no receiver counts
//! a checksum error. With offload off, senders compute full checksums and
//! receivers verify them, so a wrong incremental update would show.
//! `NETBR_SOAK_SECS` and `NETBR_SOAK_FLOWS` make it longer and larger.

mod support;

use support::snmp;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use netbr::{
    netns,
    probe::{self, Server},
    sandbox::{in_netns, LAN_IP, UPLINK_IP},
};

const CONTAINERS: u32 = 3;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `InCsumErrors` of TCP and UDP in the namespace at `ns`.
fn csum_errors(ns: &Path) -> u64 {
    snmp(ns, &[("Tcp:", "InCsumErrors"), ("Udp:", "InCsumErrors")])
}

fn set_tx_offload(ns: &Path, dev: &str, on: bool) {
    let o = in_netns(
        ns,
        "ethtool",
        &["-K", dev, "tx", if on { "on" } else { "off" }],
    )
    .expect("ethtool");
    assert!(
        o.status.success(),
        "ethtool on {dev}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[derive(Default, Debug)]
struct Tally {
    rounds: u64,
    failures: Vec<String>,
}

/// Opens `conns` connections to `targets` from `ns` (counting itself in
/// `connected` once done), then echoes a block per connection per round
/// until `stop`, checking every byte.
fn long_lived(
    ns: PathBuf,
    targets: Vec<SocketAddr>,
    conns: usize,
    connected: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        netns::run_in(&ns, move || {
            let mut t = Tally::default();
            let mut streams = Vec::new();
            for i in 0..conns {
                let to = targets[i % targets.len()];
                match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(3)))
                            .expect("timeout");
                        streams.push(s);
                    }
                    Err(e) => t.failures.push(format!("connect {to}: {e}")),
                }
                if t.failures.len() >= 5 {
                    break;
                }
            }
            connected.fetch_add(1, Ordering::SeqCst);
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                for (i, s) in streams.iter_mut().enumerate() {
                    let block: Vec<u8> =
                        (0..512u32).map(|j| (j ^ i as u32 ^ round) as u8).collect();
                    let mut back = vec![0; block.len()];
                    let r = s.write_all(&block).and_then(|_| s.read_exact(&mut back));
                    match r {
                        Ok(()) if back == block => t.rounds += 1,
                        Ok(()) => t
                            .failures
                            .push(format!("connection {i}: bytes differ in round {round}")),
                        Err(e) => t.failures.push(format!("connection {i}: {e}")),
                    }
                }
            }
            t
        })
        .expect("namespace")
    })
}

/// New connections one after another until `stop`.
fn new_connections(
    ns: PathBuf,
    targets: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        netns::run_in(&ns, move || {
            let mut t = Tally::default();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let to = targets[n % targets.len()];
                n += 1;
                let payload = format!("request {n}").into_bytes();
                let r = (|| -> std::io::Result<Vec<u8>> {
                    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    s.write_all(&payload)?;
                    s.shutdown(std::net::Shutdown::Write)?;
                    let mut back = Vec::new();
                    s.read_to_end(&mut back)?;
                    Ok(back)
                })();
                match r {
                    Ok(back) if back == payload => t.rounds += 1,
                    Ok(_) => t
                        .failures
                        .push(format!("request {n} to {to}: wrong answer")),
                    Err(e) => t.failures.push(format!("request {n} to {to}: {e}")),
                }
            }
            t
        })
        .expect("namespace")
    })
}

fn soak(tx_offload: bool) {
    let secs = env_or("NETBR_SOAK_SECS", 4);
    let flows = env_or("NETBR_SOAK_FLOWS", 2000) as usize;
    let sb = support::sandbox();
    sb.attach().expect("attach");
    let mut published = Vec::new();
    let mut servers = Vec::new();
    for n in 1..=CONTAINERS {
        sb.add_container(n).expect("container");
        let (stream_port, rr_port) = (8000 + n as u16, 8100 + n as u16);
        sb.publish(n, &[&format!("{stream_port}:80"), &format!("{rr_port}:81")])
            .expect("publish");
        servers.push(Server::tcp_stream(&sb.container_path(n), 80).expect("stream server"));
        servers.push(Server::tcp(&sb.container_path(n), 81, probe::echo()).expect("rr server"));
        published.push((
            SocketAddr::from((UPLINK_IP, stream_port)),
            SocketAddr::from((UPLINK_IP, rr_port)),
        ));
    }
    servers.push(Server::tcp_stream(&sb.lan_path(), 9000).expect("lan stream server"));
    servers.push(Server::tcp(&sb.lan_path(), 9001, probe::echo()).expect("lan rr server"));

    // Every device on the path: lan's eth0, the uplink, the containers' eth0
    // and their host-side veths.
    // With XDP the lan plays a physical wire, which carries complete
    // checksums only (see `support::mode`).
    let lan_offload = tx_offload && !support::mode().xdp;
    set_tx_offload(&sb.lan_path(), "eth0", lan_offload);
    set_tx_offload(&sb.host_path(), "up0", tx_offload);
    for n in 1..=CONTAINERS {
        set_tx_offload(&sb.container_path(n), "eth0", tx_offload);
        let (host_veth, _) = netbr::store::veth_names("netbr0", &sb.container(n));
        set_tx_offload(&sb.host_path(), &host_veth, tx_offload);
    }
    let receivers: Vec<PathBuf> = std::iter::once(sb.lan_path())
        .chain((1..=CONTAINERS).map(|n| sb.container_path(n)))
        .collect();
    let csum_before: u64 = receivers.iter().map(|p| csum_errors(p)).sum();

    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let per_side = flows / 2;
    let mut drivers = vec![long_lived(
        sb.lan_path(),
        published.iter().map(|p| p.0).collect(),
        per_side,
        connected.clone(),
        stop.clone(),
    )];
    for n in 1..=CONTAINERS {
        let conns = per_side / CONTAINERS as usize;
        drivers.push(long_lived(
            sb.container_path(n),
            vec![SocketAddr::from((LAN_IP, 9000))],
            conns,
            connected.clone(),
            stop.clone(),
        ));
    }
    // The clock starts once every long-lived flow is open.
    let opening = Instant::now();
    while connected.load(Ordering::SeqCst) < 1 + CONTAINERS as usize {
        assert!(
            opening.elapsed() < Duration::from_secs(60),
            "opening the flows took over a minute"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drivers.push(new_connections(
        sb.lan_path(),
        published.iter().map(|p| p.1).collect(),
        stop.clone(),
    ));
    drivers.push(new_connections(
        sb.container_path(1),
        vec![SocketAddr::from((LAN_IP, 9001))],
        stop.clone(),
    ));
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);

    let mut rounds = 0;
    for d in drivers {
        let t = d.join().expect("driver");
        assert!(
            t.failures.is_empty(),
            "{} failures, first: {:?}",
            t.failures.len(),
            &t.failures[..t.failures.len().min(5)]
        );
        assert!(t.rounds > 0, "a driver made no progress");
        rounds += t.rounds;
    }
    let csum_after: u64 = receivers.iter().map(|p| csum_errors(p)).sum();
    let stats: serde_json::Value = sb.stats().expect("stats");
    println!(
        "tx offload {}: {flows} long-lived flows + new connections for {:?}: {rounds} verified round trips; dnat_new {} snat_new {} translated {}",
        if tx_offload { "on" } else { "off" },
        started.elapsed(),
        stats["dnat_new"],
        stats["snat_new"],
        stats["translated"]
    );
    assert_eq!(csum_after, csum_before, "receivers counted checksum errors");
    for (name, value) in stats.as_object().expect("stats object") {
        if name.starts_with("drop_") {
            assert_eq!(value, 0, "netbr dropped packets ({name}): {stats:#}");
        }
    }
    drop(servers);
}

#[test]
fn soak_with_transmit_checksum_offload() {
    soak(true);
}

#[test]
fn soak_without_transmit_checksum_offload() {
    soak(false);
}
