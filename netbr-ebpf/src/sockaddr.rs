//! Host-local access to published ports without a proxy process: cgroup
//! sock_addr hooks rewrite a host socket's destination before a packet
//! exists, the way Docker's docker-proxy would have accepted and relayed.
//!
//! The hooks are attached to the root cgroup and so see every process on the
//! machine; each acts only for sockets of the attached network namespace
//! (netns cookie), and reverse rewrites only for sockets it rewrote (socket
//! cookie).

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
    EbpfContext as _,
};
use netbr_common::{
    counters::Reason,
    maps::{MappingKey, MappingTarget, SockKey, MAPPING_HOLD},
    IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    counters::count,
    maps::{CONFIG, LOCAL_ADDRS, MAPPINGS, SOCKETS},
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
