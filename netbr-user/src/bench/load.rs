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

/// Request/response over one long-lived connection: 64 bytes each way.
/// Returns (transactions per second, p50 µs, p99 µs).
pub fn request_response(lan: &Path, to: SocketAddr, dur: Duration) -> Result<(f64, f64, f64)> {
    netns::run_in(lan, move || -> Result<(f64, f64, f64)> {
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
        let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let q = |p: f64| {
            lat.get(((lat.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0.0)
        };
        Ok((rate, q(0.50), q(0.99)))
    })?
}

/// A UDP receiver in the container that counts datagrams until dropped.
pub struct UdpSink {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl UdpSink {
    pub fn start(container: &Path, port: u16) -> Result<Self> {
        let (count, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, st) = (count.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = netns::spawn_in(container, move || -> Result<()> {
            let s = UdpSocket::bind(("0.0.0.0", port))?;
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
        let s = UdpSocket::bind("0.0.0.0:0")?;
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

/// The TCP server of the bench: blocking accept (a polling one caps the
/// accept rate), each connection echoed inline until the peer closes. That
/// serves connect/close (one byte each way) and request/response (one
/// long-lived connection), which never run at once.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    wake: SocketAddr,
    container: std::path::PathBuf,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl EchoServer {
    pub fn start(container: &Path, port: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = netns::spawn_in(container, move || -> Result<()> {
            let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
            // SAFETY: listen on a socket this closure owns; deepens the backlog.
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
            let _ = tx.send(());
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
        })?;
        rx.recv_timeout(Duration::from_secs(3))
            .context("echo server did not start")?;
        Ok(Self {
            stop,
            wake: SocketAddr::from(([127, 0, 0, 1], port)),
            container: container.to_path_buf(),
            thread: Some(std::thread::spawn(move || {
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("server panicked"))??
            })),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocked accept from inside the container.
        let wake = self.wake;
        let _ = netns::run_in(&self.container, move || {
            TcpStream::connect_timeout(&wake, Duration::from_secs(1))
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
