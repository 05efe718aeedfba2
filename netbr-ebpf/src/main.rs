//! netbr's datapath. Entry points stay thin: each runs its hook and turns
//! the outcome into a counter and a verdict.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys go to the helpers by reference, so no copy lands on the 512-byte BPF stack"
)]

mod collector;
mod conntrack;
mod counters;
mod csum;
mod events;
mod firewall;
mod frag;
mod hooks;
mod ipv6;
mod maps;
mod modes;
mod monitor;
mod nat;
mod pacing;
mod parse;
mod port_search;
mod profile;
mod redirect;
mod rewrite;
mod skb;
mod sockaddr;
mod uplink_ports;
mod xdp;
mod zeroing;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use netbr_common::{
    counters::Reason,
    maps::{HOOK_BRIDGE_INGRESS, HOOK_UPLINK_EGRESS, HOOK_UPLINK_INGRESS},
    pacing::{PACE_EGRESS, PACE_INGRESS},
    profile::{SEG_EMPTY, SEG_REST, SEG_START},
};
use sockaddr::{V4, V6};

/// Counts the outcome and returns its verdict; drops and new flows are
/// reported to a listening monitor. Errors that are drops become
/// `TC_ACT_SHOT`; the rest pass with
/// `TC_ACT_UNSPEC` (TCX_NEXT), so programs attached after ours still run.
#[inline(always)]
fn verdict(ctx: &TcContext, hook: u8) -> i32 {
    profile::mark(SEG_START);
    let verdict = settle(ctx, hook, hooks::run(ctx, hook));
    profile::mark(SEG_REST);
    profile::mark(SEG_EMPTY);
    verdict
}

/// Counts a hook's outcome and turns it into its verdict.
#[inline(always)]
fn settle(ctx: &TcContext, hook: u8, outcome: Result<hooks::Outcome, Reason>) -> i32 {
    match outcome {
        Ok(o) => {
            counters::count(o.reason);
            monitor::outcome(ctx, hook, o.reason);
            o.action
        }
        Err(r) => {
            counters::count(r);
            if r.is_drop() {
                monitor::outcome(ctx, hook, r);
                TC_ACT_SHOT
            } else {
                TC_ACT_UNSPEC
            }
        }
    }
}

#[classifier]
pub fn nb_up_in(ctx: TcContext) -> i32 {
    verdict(&ctx, HOOK_UPLINK_INGRESS)
}

#[classifier]
pub fn nb_up_out(ctx: TcContext) -> i32 {
    verdict(&ctx, HOOK_UPLINK_EGRESS)
}

#[classifier]
pub fn nb_br_in(ctx: TcContext) -> i32 {
    verdict(&ctx, HOOK_BRIDGE_INGRESS)
}

/// A container's host-side veth, ingress: its packets of flows the fast
/// path carries, before the bridge; the rest go on, uncounted, to
/// `nb_br_in`, whose work this is and under whose name it is reported.
#[classifier]
pub fn nb_ep_in(ctx: TcContext) -> i32 {
    match hooks::endpoint_ingress(&ctx) {
        Some(outcome) => settle(&ctx, HOOK_BRIDGE_INGRESS, outcome),
        None => TC_ACT_UNSPEC,
    }
}

/// Bandwidth limits on what a container sends: TC egress of its interface
/// (pacing), or TC ingress of its host-side veth (policing).
#[classifier]
pub fn nb_pace_out(ctx: TcContext) -> i32 {
    pacing::run(&ctx, PACE_EGRESS)
}

/// Bandwidth limits on what a container receives: TC egress of its
/// host-side veth.
#[classifier]
pub fn nb_pace_in(ctx: TcContext) -> i32 {
    pacing::run(&ctx, PACE_INGRESS)
}

/// `attach --xdp`: established flows bound for containers, on the uplink.
#[xdp]
pub fn nb_xdp(ctx: XdpContext) -> u32 {
    xdp::run(&ctx)
}

/// cgroup sock_addr verdict: 1 lets the syscall proceed (rewritten or not).
const SOCK_ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn nb_connect4(ctx: SockAddrContext) -> i32 {
    sockaddr::rewrite_destination::<V4>(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn nb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sockaddr::rewrite_destination::<V4>(&ctx);
    SOCK_ALLOW
}

/// cgroup sock_addr verdict: 0 refuses the syscall (with the error the
/// program set).
const SOCK_REFUSE: i32 = 0;

#[cgroup_sock_addr(bind4)]
pub fn nb_bind4(ctx: SockAddrContext) -> i32 {
    if sockaddr::bind_allowed(&ctx) {
        SOCK_ALLOW
    } else {
        SOCK_REFUSE
    }
}

#[cgroup_sock_addr(recvmsg4)]
pub fn nb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sockaddr::restore_peer::<V4>(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn nb_getpeer4(ctx: SockAddrContext) -> i32 {
    sockaddr::restore_peer::<V4>(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn nb_connect6(ctx: SockAddrContext) -> i32 {
    sockaddr::rewrite_destination::<V6>(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn nb_sendmsg6(ctx: SockAddrContext) -> i32 {
    sockaddr::rewrite_destination::<V6>(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn nb_bind6(ctx: SockAddrContext) -> i32 {
    if sockaddr::bind_allowed6(&ctx) {
        SOCK_ALLOW
    } else {
        SOCK_REFUSE
    }
}

#[cgroup_sock_addr(recvmsg6)]
pub fn nb_recvmsg6(ctx: SockAddrContext) -> i32 {
    sockaddr::restore_peer::<V6>(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn nb_getpeer6(ctx: SockAddrContext) -> i32 {
    sockaddr::restore_peer::<V6>(&ctx);
    SOCK_ALLOW
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
