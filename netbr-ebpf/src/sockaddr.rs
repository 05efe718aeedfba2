//! Host-local access to published ports without a proxy process: cgroup
//! sock_addr hooks rewrite a host socket's destination before a packet
//! exists, the way Docker's docker-proxy would have accepted and relayed.
//!
//! The hooks are attached to the root cgroup and so see every process on the
//! machine; each acts only for sockets of the attached network namespace
//! (netns cookie), and reverse rewrites only for sockets it rewrote (socket
//! cookie).

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_ANY},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
    EbpfContext as _,
};
use netbr_common::{
    counters::Reason,
    maps::{MappingKey, MappingTarget, SockKey, MAPPING_HOLD, MAPPING_IPV6_ONLY},
    net6::{Net6, SockAddr6, SockKey6, LOOPBACK6},
    IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    counters::count,
    maps::{CONFIG, ENDPOINTS6, LOCAL_ADDRS, MAPPINGS, NET6, SOCKETS, SOCKETS6},
    nat::{is_loopback, published_target},
};

/// Whether the socket belongs to the namespace netbr is attached in.
#[inline(always)]
fn in_attached_netns(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    // SAFETY: the helper only reads the context.
    cfg.configured != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == cfg.netns_cookie
}

/// What the sock_addr hooks need of an address family: the context's
/// address, where a host destination is published to, and the map of
/// rewritten sockets. `rewrite_destination` and `restore_peer` are written
/// once over it.
pub trait SockFamily {
    type Addr: Copy;
    fn addr(sa: &bpf_sock_addr) -> Self::Addr;
    fn set_addr(sa: &mut bpf_sock_addr, addr: Self::Addr);
    /// The container address and port `addr:port` is published to.
    fn published(proto: u8, addr: Self::Addr, port: u16) -> Option<(Self::Addr, u16)>;
    /// Records that socket `cookie`, now talking to `to`, dialled `orig`.
    fn remember(cookie: u64, to: (Self::Addr, u16), orig: (Self::Addr, u16)) -> bool;
    /// What socket `cookie`, talking to `at`, dialled, if it was rewritten.
    fn recall(cookie: u64, at: (Self::Addr, u16)) -> Option<(Self::Addr, u16)>;
}

pub struct V4;
pub struct V6;

impl SockFamily for V4 {
    type Addr = u32;
    #[inline(always)]
    fn addr(sa: &bpf_sock_addr) -> u32 {
        sa.user_ip4
    }
    #[inline(always)]
    fn set_addr(sa: &mut bpf_sock_addr, addr: u32) {
        sa.user_ip4 = addr;
    }
    /// Every host address, loopback included: `-p 8080:80` answers on
    /// 127.0.0.1 too, as docker-proxy did.
    #[inline(always)]
    fn published(proto: u8, addr: u32, port: u16) -> Option<(u32, u16)> {
        published_target(proto, addr, port)
    }
    #[inline(always)]
    fn remember(cookie: u64, to: (u32, u16), orig: (u32, u16)) -> bool {
        let key = SockKey {
            cookie,
            addr: to.0,
            port: to.1,
            _pad: 0,
        };
        let orig = MappingTarget {
            addr: orig.0,
            port: orig.1,
            flags: 0,
        };
        SOCKETS.insert(&key, &orig, BPF_ANY as u64).is_ok()
    }
    #[inline(always)]
    fn recall(cookie: u64, at: (u32, u16)) -> Option<(u32, u16)> {
        let key = SockKey {
            cookie,
            addr: at.0,
            port: at.1,
            _pad: 0,
        };
        // SAFETY: read-only copy out of the map value.
        unsafe { SOCKETS.get(&key) }.map(|o| (o.addr, o.port))
    }
}

impl SockFamily for V6 {
    type Addr = [u32; 4];
    /// A word at a time: the verifier refuses a context pointer moved by
    /// arithmetic ("dereference of modified ctx ptr"), which a 16-byte copy
    /// compiles to; each volatile 4-byte access stays a load at a constant
    /// offset from the context.
    #[inline(always)]
    fn addr(sa: &bpf_sock_addr) -> [u32; 4] {
        // SAFETY: reads of fields of a valid context.
        unsafe {
            [
                read_volatile(&sa.user_ip6[0]),
                read_volatile(&sa.user_ip6[1]),
                read_volatile(&sa.user_ip6[2]),
                read_volatile(&sa.user_ip6[3]),
            ]
        }
    }
    #[inline(always)]
    fn set_addr(sa: &mut bpf_sock_addr, addr: [u32; 4]) {
        // SAFETY: writes of fields of a valid context, as `addr` reads.
        unsafe {
            write_volatile(&mut sa.user_ip6[0], addr[0]);
            write_volatile(&mut sa.user_ip6[1], addr[1]);
            write_volatile(&mut sa.user_ip6[2], addr[2]);
            write_volatile(&mut sa.user_ip6[3], addr[3]);
        }
    }
    /// A port published on `addr` alone (`-p [ADDR6]:...`), or a wildcard
    /// one (without a host IP, or `[::]`) for `[::1]` or the uplink's IPv6
    /// address, reached at the container's IPv6 address. Docker needs
    /// docker-proxy for `[::1]`.
    #[inline(always)]
    fn published(proto: u8, addr: [u32; 4], port: u16) -> Option<([u32; 4], u16)> {
        let net = NET6.get(0)?;
        let t = crate::nat::mapped6(net, proto, &addr, port, any_address(net, &addr))?;
        // SAFETY: read-only copy out of the map value.
        let to_addr = unsafe { ENDPOINTS6.get(&t.addr) }.copied()?;
        Some((to_addr, t.port))
    }
    #[inline(always)]
    fn remember(cookie: u64, to: ([u32; 4], u16), orig: ([u32; 4], u16)) -> bool {
        let key = SockKey6 {
            cookie,
            addr: to.0,
            port: to.1,
            _pad: [0; 3],
        };
        let orig = SockAddr6 {
            addr: orig.0,
            port: orig.1,
            _pad: 0,
        };
        SOCKETS6.insert(&key, &orig, BPF_ANY as u64).is_ok()
    }
    #[inline(always)]
    fn recall(cookie: u64, at: ([u32; 4], u16)) -> Option<([u32; 4], u16)> {
        let key = SockKey6 {
            cookie,
            addr: at.0,
            port: at.1,
            _pad: [0; 3],
        };
        // SAFETY: read-only copy out of the map value.
        unsafe { SOCKETS6.get(&key) }.map(|o| (o.addr, o.port))
    }
}

/// connect and sendmsg: a destination that is a published port of a host
/// address becomes the container's address and port.
#[inline(always)]
pub fn rewrite_destination<F: SockFamily>(ctx: &SockAddrContext) {
    if !in_attached_netns(ctx) {
        return;
    }
    // SAFETY: the kernel passes a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    let (addr, port) = (F::addr(sa), sa.user_port as u16);
    let Some((to_addr, to_port)) = F::published(proto, addr, port) else {
        return;
    };
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if F::remember(cookie, (to_addr, to_port), (addr, port)) {
        F::set_addr(sa, to_addr);
        sa.user_port = to_port as u32;
        count(Reason::SockRewrite);
    }
}

/// recvmsg and getpeername: report the address the application dialled,
/// not the container behind it.
#[inline(always)]
pub fn restore_peer<F: SockFamily>(ctx: &SockAddrContext) {
    // SAFETY: the kernel passes a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some((addr, port)) = F::recall(cookie, (F::addr(sa), sa.user_port as u16)) {
        F::set_addr(sa, addr);
        sa.user_port = port as u32;
    }
}

/// `EADDRINUSE`, what `bind` reports for a port someone else holds.
const EADDRINUSE: i32 = 98;

/// 127.0.0.1 in network byte order.
const LOOPBACK: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// Whether `addr:port` is published with netbr holding the port, for a
/// socket of the family whose `MAPPING_*_ONLY` bit is not `other_family`.
#[inline(always)]
fn held(proto: u8, addr: u32, port: u16, other_family: u16) -> bool {
    let key = MappingKey {
        proto,
        _pad: 0,
        port,
        addr,
    };
    // SAFETY: read-only copy out of the map value.
    unsafe { MAPPINGS.get(&key) }
        .is_some_and(|t| t.flags & MAPPING_HOLD != 0 && t.flags & other_family == 0)
}

/// bind4: a host socket may not bind a published host port netbr holds. Without a
/// proxy, nothing else holds the port (Docker's docker-proxy, or its dummy
/// listener with the userland proxy off, does), and a process that got it
/// would wait for connections the datapath delivers to the container.
/// Refused binds fail with EADDRINUSE, as they would under Docker.
/// Returns whether the bind may proceed.
#[inline(always)]
pub fn bind_allowed(ctx: &SockAddrContext) -> bool {
    if !in_attached_netns(ctx) {
        return true;
    }
    // SAFETY: the kernel passes a valid bpf_sock_addr.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol as u8;
    let (addr, port) = (sa.user_ip4, sa.user_port as u16);
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || port == 0 {
        return true;
    }
    let taken = if addr == 0 {
        // Every address: taken if the port is held on any of the usual
        // ones (all addresses, the uplink's, loopback).
        let uplink = CONFIG.get(0).map(|c| c.uplink_addr).unwrap_or(0);
        held(proto, 0, port, MAPPING_IPV6_ONLY)
            || held(proto, uplink, port, 0)
            || held(proto, LOOPBACK, port, 0)
    } else {
        held(proto, addr, port, 0)
            // SAFETY: read-only lookup.
            || ((is_loopback(addr) || unsafe { LOCAL_ADDRS.get(&addr) }.is_some())
                && held(proto, 0, port, MAPPING_IPV6_ONLY))
    };
    if taken {
        count(Reason::BindRefused);
        // SAFETY: the helper only sets this hook's return value.
        unsafe { bpf_set_retval(-EADDRINUSE) };
    }
    !taken
}

/// The IPv6 addresses a port published on every address answers on:
/// `::1` and the uplink's.
#[inline(always)]
fn any_address(net: &Net6, addr: &[u32; 4]) -> bool {
    *addr == LOOPBACK6 || (net.masquerades() && *addr == net.uplink)
}

/// bind6: as `bind_allowed`, for IPv6 sockets: `[::]`, `[::1]` and the
/// uplink's IPv6 address are refused a port netbr holds on every address
/// (an IPv6 `[::]` socket takes IPv4 too, unless `IPV6_V6ONLY`), and any
/// address a port netbr holds on it alone.
#[inline(always)]
pub fn bind_allowed6(ctx: &SockAddrContext) -> bool {
    if !in_attached_netns(ctx) {
        return true;
    }
    // SAFETY: the kernel passes a valid bpf_sock_addr.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol as u8;
    let (addr, port) = (V6::addr(sa), sa.user_port as u16);
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || port == 0 {
        return true;
    }
    let Some(net) = NET6.get(0) else {
        return true;
    };
    let holds = |at: &[u32; 4], any_too: bool| {
        crate::nat::mapped6(net, proto, at, port, any_too)
            .is_some_and(|t| t.flags & MAPPING_HOLD != 0)
    };
    let every = addr == [0; 4];
    let taken = holds(&addr, every || any_address(net, &addr))
        // `[::]` takes the port on the addresses a port may be published
        // on alone too.
        || (every && (holds(&net.uplink, false) || holds(&LOOPBACK6, false)));
    if taken {
        count(Reason::BindRefused);
        // SAFETY: the helper only sets this hook's return value.
        unsafe { bpf_set_retval(-EADDRINUSE) };
    }
    !taken
}
