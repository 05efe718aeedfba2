//! Load generators for `netbr bench`, each running from a thread inside
//! lan's namespace against a server inside the container's.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::arms::Family;
use crate::netns;

/// Fresh connections through DNAT, each connect, one byte each way, close:
/// the cost of creating and tearing down a tracked, translated flow.
/// Returns connections per second.
pub fn connect_close(lan: &Path, to: SocketAddr, dur: Duration) -> Result<f64> {
    netns::run_in(lan, move || -> Result<f64> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur {
            let mut s =
                TcpStream::connect_timeout(&to, Duration::from_secs(2)).context("connect")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).context("read")?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })?
}

/// Request/response over `conns` long-lived connections at once, one
/// client thread each: 64 bytes each way. Returns (transactions per second
/// over all connections, p50 µs, p99 µs).
pub fn request_response(
    lan: &Path,
    to: SocketAddr,
    dur: Duration,
    conns: usize,
) -> Result<(f64, f64, f64)> {
    let start = Instant::now();
    let clients: Vec<_> = (0..conns)
        .map(|_| netns::spawn_in(lan, move || rr_client(to, dur)))
        .collect::<Result<_>>()?;
    let mut lat = Vec::new();
    for c in clients {
        lat.extend(
            c.join()
                .map_err(|_| anyhow::anyhow!("client panicked"))???,
        );
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok((rate, q(0.50), q(0.99)))
}

/// One request/response connection; returns each transaction's latency (µs).
fn rr_client(to: SocketAddr, dur: Duration) -> Result<Vec<f64>> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).context("connect")?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let req = [7u8; 64];
    let mut resp = [0u8; 64];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut resp).context("read")?;
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    Ok(lat)
}

/// CPU time the whole machine spent in the kernel (system and softirq, from
/// /proc/stat), in nanoseconds: where routing, netfilter and BPF run.
pub fn kernel_cpu_ns() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq ...
    let ticks = fields.get(2).copied().unwrap_or(0) + fields.get(6).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// An iperf3 server in a namespace, stopped when dropped.
pub struct Iperf3Server(std::process::Child);

impl Iperf3Server {
    pub fn start(ns: &Path, port: u16) -> Result<Self> {
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["iperf3", "-s", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting iperf3 (run cargo xtask setup to install it)")?;
        // iperf3 has no readiness signal; it listens within milliseconds.
        std::thread::sleep(Duration::from_millis(200));
        Ok(Self(child))
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One TCP stream from `ns` to `to` with iperf3 for `secs` (at least 1);
/// returns the receiver's Gbit/s.
pub fn tcp_stream(ns: &Path, to: SocketAddr, secs: f64) -> Result<f64> {
    let run = Iperf3Run {
        secs: secs.ceil().max(1.0) as u64,
        ..Iperf3Run::default()
    };
    Ok(iperf3(ns, to, &run)? / 1e9)
}

/// One iperf3 client run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Iperf3Run {
    pub secs: u64,
    /// Seconds at the start left out of the result (TCP's slow start).
    pub omit: u64,
    /// `-R`: the server sends.
    pub reverse: bool,
    /// UDP at this many bits per second instead of TCP.
    pub udp_bits: Option<u64>,
}

/// Runs an iperf3 client in `ns` against the server at `to`; returns the
/// bits per second the receiving side got. A server still finishing the
/// previous run (it lingers after UDP) is waited for.
pub fn iperf3(ns: &Path, to: SocketAddr, run: &Iperf3Run) -> Result<f64> {
    let mut tries = 0;
    loop {
        match iperf3_once(ns, to, run) {
            Err(e) if tries < 10 && format!("{e:#}").contains("busy") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            r => return r,
        }
    }
}

fn iperf3_once(ns: &Path, to: SocketAddr, run: &Iperf3Run) -> Result<f64> {
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["--kill-after=5", &(run.secs + run.omit + 30).to_string()])
        .arg("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["iperf3", "-J", "-c", &to.ip().to_string(), "-p"])
        .arg(to.port().to_string())
        .args(["-t", &run.secs.max(1).to_string()])
        .args(["-O", &run.omit.to_string()]);
    if run.reverse {
        cmd.arg("-R");
    }
    if let Some(bits) = run.udp_bits {
        // Datagrams that fit a 1500-byte MTU unfragmented.
        cmd.args(["-u", "-l", "1400", "-b", &bits.to_string()]);
    }
    let out = cmd.output().context("running iperf3")?;
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading iperf3's JSON")?;
    doc["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 to {to} failed: {}", doc["error"]))
}

/// A UDP receiver in the container that counts datagrams until dropped.
pub struct UdpSink {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl UdpSink {
    /// A sink on `at` (a port of every address of one family) in `container`.
    pub fn start(container: &Path, at: SocketAddr) -> Result<Self> {
        let (count, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, st) = (count.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = netns::spawn_in(container, move || -> Result<()> {
            let s = UdpSocket::bind(at)?;
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            let _ = tx.send(());
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if s.recv(&mut buf).is_ok() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })?;
        rx.recv_timeout(Duration::from_secs(3))
            .context("UDP sink did not start")?;
        Ok(Self {
            count,
            stop,
            thread: Some(std::thread::spawn(move || {
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("sink panicked"))??
            })),
        })
    }

    pub fn received(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 64-byte datagrams as fast as one sender can, through DNAT; returns the
/// datagrams per second the container received.
pub fn udp_rate(lan: &Path, to: SocketAddr, sink: &UdpSink, dur: Duration) -> Result<f64> {
    let before = sink.received();
    let elapsed = netns::run_in(lan, move || -> Result<Duration> {
        let s = UdpSocket::bind((Family::of(to).unspecified(), 0))?;
        s.connect(to)?;
        let payload = [1u8; 64];
        let start = Instant::now();
        while start.elapsed() < dur {
            for _ in 0..64 {
                let _ = s.send(&payload);
            }
        }
        Ok(start.elapsed())
    })??;
    // Let the last datagrams land.
    std::thread::sleep(Duration::from_millis(50));
    Ok((sink.received() - before) as f64 / elapsed.as_secs_f64())
}

/// Workers of the bench's TCP server: enough for 16 request/response
/// connections at once with room to spare.
const ECHO_WORKERS: usize = 20;

/// The TCP server of the bench: a pool of workers blocked in accept on one
/// listener (a polling accept caps the rate), each echoing its connection
/// inline until the peer closes. That serves connect/close (one byte each
/// way) and request/response over one or 16 long-lived connections.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    wake: SocketAddr,
    container: std::path::PathBuf,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl EchoServer {
    /// A server on `at` (a port of every address of one family) in `container`.
    pub fn start(container: &Path, at: SocketAddr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = netns::run_in(container, move || -> Result<std::net::TcpListener> {
            let l = std::net::TcpListener::bind(at)?;
            // SAFETY: listen on a socket this closure owns; deepens the backlog.
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
            Ok(l)
        })??;
        let mut threads = Vec::new();
        for _ in 0..ECHO_WORKERS {
            let (l, st) = (listener.try_clone()?, stop.clone());
            threads.push(std::thread::spawn(move || -> Result<()> {
                let mut buf = [0u8; 4096];
                for conn in l.incoming() {
                    if st.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut s) = conn else { continue };
                    let _ = s.set_nodelay(true);
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
                Ok(())
            }));
        }
        Ok(Self {
            stop,
            wake: SocketAddr::new(Family::of(at).loopback(), at.port()),
            container: container.to_path_buf(),
            threads,
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake every worker's blocked accept from inside the container.
        let (wake, n) = (self.wake, self.threads.len());
        let _ = netns::run_in(&self.container, move || {
            for _ in 0..n {
                let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
            }
        });
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
