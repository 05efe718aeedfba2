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
    maps::{MappingKey, MappingTarget, SockKey, MAPPING_HOLD},
    net6::{SockAddr6, SockKey6, LOOPBACK6},
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

/// connect4 and sendmsg4: a destination that is a published port of a host
/// address (loopback included: `-p 8080:80` answers on 127.0.0.1 too, as
/// docker-proxy did) becomes the container's address and port.
#[inline(always)]
pub fn rewrite_destination(ctx: &SockAddrContext) {
    if !in_attached_netns(ctx) {
        return;
    }
    // SAFETY: the kernel passes a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    let (addr, port) = (sa.user_ip4, sa.user_port as u16);
    let Some((to_addr, to_port)) = published_target(proto, addr, port) else {
        return;
    };
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey {
        cookie,
        addr: to_addr,
        port: to_port,
        _pad: 0,
    };
    let orig = MappingTarget {
        addr,
        port,
        flags: 0,
    };
    if SOCKETS.insert(&key, &orig, BPF_ANY as u64).is_ok() {
        sa.user_ip4 = to_addr;
        sa.user_port = to_port as u32;
        count(Reason::SockRewrite);
    }
}

/// recvmsg4 and getpeername4: report the address the application dialled,
/// not the container behind it.
#[inline(always)]
pub fn restore_peer(ctx: &SockAddrContext) {
    // SAFETY: the kernel passes a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        _pad: 0,
    };
    // SAFETY: read-only copy out of the map value.
    if let Some(orig) = unsafe { SOCKETS.get(&key) } {
        sa.user_ip4 = orig.addr;
        sa.user_port = orig.port as u32;
    }
}

/// `EADDRINUSE`, what `bind` reports for a port someone else holds.
const EADDRINUSE: i32 = 98;

/// 127.0.0.1 in network byte order.
const LOOPBACK: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// Whether `addr:port` is published with netbr holding the port.
#[inline(always)]
fn held(proto: u8, addr: u32, port: u16) -> bool {
    let key = MappingKey {
        proto,
        _pad: 0,
        port,
        addr,
    };
    // SAFETY: read-only copy out of the map value.
    unsafe { MAPPINGS.get(&key) }.is_some_and(|t| t.flags & MAPPING_HOLD != 0)
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
        held(proto, 0, port) || held(proto, uplink, port) || held(proto, LOOPBACK, port)
    } else {
        held(proto, addr, port)
            // SAFETY: read-only lookup.
            || ((is_loopback(addr) || unsafe { LOCAL_ADDRS.get(&addr) }.is_some())
                && held(proto, 0, port))
    };
    if taken {
        count(Reason::BindRefused);
        // SAFETY: the helper only sets this hook's return value.
        unsafe { bpf_set_retval(-EADDRINUSE) };
    }
    !taken
}

/// The socket's IPv6 address, a word at a time: the verifier refuses a
/// context pointer moved by arithmetic ("dereference of modified ctx
/// ptr"), which a 16-byte copy compiles to; each volatile 4-byte access
/// stays a load at a constant offset from the context.
#[inline(always)]
fn user_ip6(sa: &bpf_sock_addr) -> [u32; 4] {
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
fn set_user_ip6(sa: &mut bpf_sock_addr, addr: [u32; 4]) {
    // SAFETY: writes of fields of a valid context, as `user_ip6` reads.
    unsafe {
        write_volatile(&mut sa.user_ip6[0], addr[0]);
        write_volatile(&mut sa.user_ip6[1], addr[1]);
        write_volatile(&mut sa.user_ip6[2], addr[2]);
        write_volatile(&mut sa.user_ip6[3], addr[3]);
    }
}

/// The container address and port an IPv6 destination of the host is
/// published to: a wildcard mapping (`-p PORT:...` without a host IP) for
/// `[::1]` or the uplink's IPv6 address, reached at the container's IPv6
/// address. Docker needs docker-proxy for `[::1]`; here the socket itself
/// is pointed at the container.
#[inline(always)]
fn published6(proto: u8, addr: &[u32; 4], port: u16) -> Option<([u32; 4], u16)> {
    let net = NET6.get(0)?;
    if *addr != LOOPBACK6 && !(net.masquerades() && *addr == net.uplink) {
        return None;
    }
    let (to_addr4, to_port) = crate::nat::mapped(proto, 0, port)?;
    // SAFETY: read-only copy out of the map value.
    let to_addr = unsafe { ENDPOINTS6.get(&to_addr4) }.copied()?;
    Some((to_addr, to_port))
}

/// connect6 and sendmsg6: as `rewrite_destination`, for IPv6 sockets.
#[inline(always)]
pub fn rewrite_destination6(ctx: &SockAddrContext) {
    if !in_attached_netns(ctx) {
        return;
    }
    // SAFETY: the kernel passes a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    let (addr, port) = (user_ip6(sa), sa.user_port as u16);
    let Some((to_addr, to_port)) = published6(proto, &addr, port) else {
        return;
    };
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey6 {
        cookie,
        addr: to_addr,
        port: to_port,
        _pad: [0; 3],
    };
    let orig = SockAddr6 {
        addr,
        port,
        _pad: 0,
    };
    if SOCKETS6.insert(&key, &orig, BPF_ANY as u64).is_ok() {
        set_user_ip6(sa, to_addr);
        sa.user_port = to_port as u32;
        count(Reason::SockRewrite);
    }
}

/// recvmsg6 and getpeername6: as `restore_peer`, for IPv6 sockets.
#[inline(always)]
pub fn restore_peer6(ctx: &SockAddrContext) {
    // SAFETY: the kernel passes a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey6 {
        cookie,
        addr: user_ip6(sa),
        port: sa.user_port as u16,
        _pad: [0; 3],
    };
    // SAFETY: read-only copy out of the map value.
    if let Some(orig) = unsafe { SOCKETS6.get(&key) } {
        set_user_ip6(sa, orig.addr);
        sa.user_port = orig.port as u32;
    }
}

/// bind6: as `bind_allowed`, for IPv6 sockets: `[::]`, `[::1]` and the
/// uplink's IPv6 address are refused a port netbr holds on every address
/// (an IPv6 `[::]` socket takes IPv4 too, unless `IPV6_V6ONLY`).
#[inline(always)]
pub fn bind_allowed6(ctx: &SockAddrContext) -> bool {
    if !in_attached_netns(ctx) {
        return true;
    }
    // SAFETY: the kernel passes a valid bpf_sock_addr.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol as u8;
    let (addr, port) = (user_ip6(sa), sa.user_port as u16);
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || port == 0 {
        return true;
    }
    let uplink = NET6.get(0).map(|n| n.uplink).unwrap_or([0; 4]);
    let ours = addr == [0; 4] || addr == LOOPBACK6 || (addr == uplink && uplink != [0; 4]);
    let taken = ours && held(proto, 0, port);
    if taken {
        count(Reason::BindRefused);
        // SAFETY: the helper only sets this hook's return value.
        unsafe { bpf_set_retval(-EADDRINUSE) };
    }
    !taken
}
