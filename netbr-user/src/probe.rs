//! Traffic inside namespaces, for the demo and the tests: servers that record
//! the peer addresses they see, clients that send a payload and read the
//! answer, and an ICMP echo. Each runs on a thread that entered its namespace.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::netns;

/// How a server answers a request: given the payload and the peer it saw.
pub type Responder = Arc<dyn Fn(&[u8], SocketAddr) -> Vec<u8> + Send + Sync>;

pub fn echo() -> Responder {
    Arc::new(|data, _| data.to_vec())
}

const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// A TCP or UDP server running in a namespace until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Server {
    /// A TCP server that reads one request per connection, up to the
    /// client's half-close, and answers it. Reading to the end matters: a
    /// request split over several segments would otherwise be answered in
    /// part, and closing with unread data makes the kernel reset.
    pub fn tcp(ns: &Path, port: u16, respond: Responder) -> Result<Self> {
        Self::tcp_on(ns, (Ipv4Addr::UNSPECIFIED, port).into(), respond)
    }

    /// Like [`Self::tcp`], listening on `bind` (an IPv6 address, say).
    pub fn tcp_on(ns: &Path, bind: SocketAddr, respond: Responder) -> Result<Self> {
        Self::tcp_with(ns, bind, move |mut s, peer| {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            let mut request = Vec::new();
            let _ = s.read_to_end(&mut request);
            let _ = s.write_all(&respond(&request, peer));
            Ok(())
        })
    }

    /// A TCP echo server for long-lived connections: each connection gets a
    /// thread that echoes until the peer closes.
    pub fn tcp_stream(ns: &Path, port: u16) -> Result<Self> {
        Self::tcp_stream_on(ns, (Ipv4Addr::UNSPECIFIED, port).into())
    }

    /// Like [`Self::tcp_stream`], listening on `bind`.
    pub fn tcp_stream_on(ns: &Path, bind: SocketAddr) -> Result<Self> {
        Self::tcp_with(ns, bind, |mut s, _| {
            std::thread::spawn(move || {
                let mut buf = vec![0; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            Ok(())
        })
    }

    /// Accepts connections on `bind` in `ns`, recording each peer and
    /// handing the connection (blocking) to `handle`.
    fn tcp_with(
        ns: &Path,
        bind: SocketAddr,
        handle: impl Fn(TcpStream, SocketAddr) -> std::io::Result<()> + Send + 'static,
    ) -> Result<Self> {
        Self::start(ns, move |stop, peers, ready| {
            let l = match bind_when_free(|| TcpListener::bind(bind)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return Ok(());
                }
            };
            // std listens with a backlog of 128; thousands of clients
            // connecting at once would overflow it and wait out SYN
            // retransmits. listen() again raises it.
            // SAFETY: listen on a socket this closure owns.
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
            l.set_nonblocking(true)?;
            let _ = ready.send(Ok(()));
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        peers.lock().map_err(|_| anyhow!("poisoned"))?.push(peer);
                        s.set_nonblocking(false)?;
                        handle(s, peer)?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
    }

    pub fn udp(ns: &Path, port: u16, respond: Responder) -> Result<Self> {
        Self::udp_on(ns, (Ipv4Addr::UNSPECIFIED, port).into(), respond)
    }

    /// Like [`Self::udp`], listening on `bind` (an IPv6 address, say).
    pub fn udp_on(ns: &Path, bind: SocketAddr, respond: Responder) -> Result<Self> {
        Self::start(ns, move |stop, peers, ready| {
            let s = match bind_when_free(|| UdpSocket::bind(bind)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return Ok(());
                }
            };
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            let _ = ready.send(Ok(()));
            let mut buf = vec![0; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = s.recv_from(&mut buf) {
                    peers.lock().map_err(|_| anyhow!("poisoned"))?.push(peer);
                    let _ = s.send_to(&respond(&buf[..n], peer), peer);
                }
            }
            Ok(())
        })
    }

    fn start(
        ns: &Path,
        body: impl FnOnce(
                Arc<AtomicBool>,
                Arc<Mutex<Vec<SocketAddr>>>,
                mpsc::Sender<Result<(), String>>,
            ) -> Result<()>
            + Send
            + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let (s, p) = (stop.clone(), peers.clone());
        let thread = netns::spawn_in(ns, move || body(s, p, tx).map_err(|e| e.to_string()))?;
        match rx.recv_timeout(IO_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("server could not start: {e}"),
            Err(_) => bail!("server did not start in {}", ns.display()),
        }
        Ok(Self {
            stop,
            peers,
            thread: Some(std::thread::spawn(move || {
                thread
                    .join()
                    .map_err(|_| anyhow!("server panicked"))??
                    .map_err(|e| anyhow!(e))
            })),
        })
    }

    /// Every peer address the server has seen, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `to`, sends `payload`, half-closes, returns the answer.
pub fn tcp_request(ns: &Path, to: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    tcp_request_peer(ns, to, payload).map(|(data, _)| data)
}

/// Like [`tcp_request`], also returning what `getpeername` reported.
pub fn tcp_request_peer(
    ns: &Path,
    to: SocketAddr,
    payload: &[u8],
) -> Result<(Vec<u8>, SocketAddr)> {
    let payload = payload.to_vec();
    netns::run_in(ns, move || -> Result<(Vec<u8>, SocketAddr)> {
        let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)
            .with_context(|| format!("connecting to {to}"))?;
        let peer = s.peer_addr()?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.write_all(&payload)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .with_context(|| format!("reading from {to}"))?;
        Ok((out, peer))
    })?
}

/// The unspecified address of `addr`'s family (`0.0.0.0` or `::`): where
/// a socket binds to talk to `addr`, or listens for it.
pub fn unspecified_like(addr: SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// A TCP connection from `ns` to `to`, from source port `from_port` (0 for
/// any), left open for the caller to use from any thread. Either family.
pub fn tcp_connect(ns: &Path, from_port: u16, to: SocketAddr) -> Result<TcpStream> {
    netns::run_in(ns, move || -> Result<TcpStream> {
        let (from, from_len) = sockaddr((unspecified_like(to), from_port).into());
        let (dst, dst_len) = sockaddr(to);
        let family = i32::from(from.ss_family);
        // SAFETY: plain socket syscalls on an fd this closure owns until it
        // hands it to the returned stream, with addresses of their lengths.
        unsafe {
            let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("TCP socket");
            }
            let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
            bind_when_free(|| {
                if libc::bind(fd, &from as *const _ as *const _, from_len) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
            .with_context(|| format!("binding port {from_port}"))?;
            if libc::connect(fd, &dst as *const _ as *const _, dst_len) < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("connecting to {to}"));
            }
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            Ok(stream)
        }
    })?
}

/// Runs `bind` until it does not fail with `EADDRINUSE`, for up to two
/// seconds. A socket this process just closed can stay bound for a moment:
/// a child another thread is spawning holds a copy of every descriptor
/// from its `clone` until its `exec` closes them (`O_CLOEXEC`), and the
/// socket is released only with the last copy. Tests reuse fixed ports
/// while other tests spawn commands, so a bind may meet that window.
fn bind_when_free<T>(mut bind: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match bind() {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            result => return result,
        }
    }
}

/// `addr` as the socket calls take it, with its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage has room and alignment for any sockaddr.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as u32)
}

/// Sends one datagram from `ns` (from `from_port`, 0 for any) and waits for
/// the answer.
pub fn udp_request(ns: &Path, to: SocketAddr, from_port: u16, payload: &[u8]) -> Result<Vec<u8>> {
    udp_exchange(ns, to, from_port, payload, false).map(|(data, _)| data)
}

/// Sends one datagram, on a connected socket if `connected`, and returns the
/// answer with the source address `recvfrom` (or `peer_addr`) reported.
pub fn udp_exchange(
    ns: &Path,
    to: SocketAddr,
    from_port: u16,
    payload: &[u8],
    connected: bool,
) -> Result<(Vec<u8>, SocketAddr)> {
    let payload = payload.to_vec();
    netns::run_in(ns, move || -> Result<(Vec<u8>, SocketAddr)> {
        let any = unspecified_like(to);
        let s = bind_when_free(|| UdpSocket::bind((any, from_port)))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut buf = vec![0; 65536];
        let (n, from) = if connected {
            s.connect(to)?;
            s.send(&payload)?;
            let n = s
                .recv(&mut buf)
                .with_context(|| format!("no answer from {to}"))?;
            (n, s.peer_addr()?)
        } else {
            s.send_to(&payload, to)?;
            s.recv_from(&mut buf)
                .with_context(|| format!("no answer from {to}"))?
        };
        buf.truncate(n);
        Ok((buf, from))
    })?
}

/// One ICMP (or ICMPv6) echo from `ns` to `dst`, with an identifier fixed
/// for this process; returns whether a matching reply came.
pub fn ping(ns: &Path, dst: impl Into<IpAddr>) -> Result<bool> {
    let dst: IpAddr = dst.into();
    netns::run_in(ns, move || -> Result<bool> {
        // Echo request and reply types, and the raw socket's family.
        let (request, reply, family, proto) = match dst {
            IpAddr::V4(_) => (8u8, 0u8, libc::AF_INET, libc::IPPROTO_ICMP),
            IpAddr::V6(_) => (128, 129, libc::AF_INET6, libc::IPPROTO_ICMPV6),
        };
        let v4 = dst.is_ipv4();
        // SAFETY: plain socket syscalls on an fd this closure owns.
        unsafe {
            let fd = libc::socket(family, libc::SOCK_RAW, proto);
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("raw ICMP socket");
            }
            let id: u16 = (std::process::id() as u16) ^ 0x5a5a;
            let mut req = [
                request,
                0,
                0,
                0,
                (id >> 8) as u8,
                id as u8,
                0,
                1,
                b'n',
                b'b',
            ];
            // ICMPv6's checksum covers a pseudo-header: the kernel fills it
            // in on raw ICMPv6 sockets (RFC 3542 3.1).
            if v4 {
                let sum = inet_checksum(&req);
                req[2..4].copy_from_slice(&sum.to_be_bytes());
            }
            let (addr, addr_len) = sockaddr(SocketAddr::new(dst, 0));
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const _,
                size_of::<libc::timeval>() as u32,
            );
            let sent = libc::sendto(
                fd,
                req.as_ptr().cast(),
                req.len(),
                0,
                &addr as *const _ as *const _,
                addr_len,
            );
            let mut ok = false;
            if sent >= 0 {
                let mut buf = [0u8; 1500];
                for _ in 0..10 {
                    let mut from: libc::sockaddr_storage = std::mem::zeroed();
                    let mut from_len = size_of::<libc::sockaddr_storage>() as u32;
                    let n = libc::recvfrom(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        &mut from as *mut _ as *mut _,
                        &mut from_len,
                    );
                    if n < 8 {
                        break;
                    }
                    // A raw IPv4 socket's read starts with the IP header;
                    // IPv6's with the ICMPv6 message.
                    let ihl = if v4 {
                        ((buf[0] & 0x0f) as usize) * 4
                    } else {
                        0
                    };
                    let icmp = &buf[ihl.min(n as usize)..n as usize];
                    if icmp.len() >= 8
                        && icmp[0] == reply
                        && icmp[4..6] == req[4..6]
                        && sockaddr_ip(&from) == Some(dst)
                    {
                        ok = true;
                        break;
                    }
                }
            }
            libc::close(fd);
            Ok(ok)
        }
    })?
}

/// The address a `recvfrom` filled in.
fn sockaddr_ip(from: &libc::sockaddr_storage) -> Option<IpAddr> {
    // SAFETY: the family field says which sockaddr the storage holds, and
    // sockaddr_storage has room and alignment for any of them.
    unsafe {
        match i32::from(from.ss_family) {
            libc::AF_INET => {
                let sin = &*(from as *const _ as *const libc::sockaddr_in);
                Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into())
            }
            libc::AF_INET6 => {
                let sin6 = &*(from as *const _ as *const libc::sockaddr_in6);
                Some(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
            }
            _ => None,
        }
    }
}

/// RFC 1071 Internet checksum.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
