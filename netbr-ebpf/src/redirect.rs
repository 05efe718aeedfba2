//! Delivering a translated packet straight to a container's veth.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_check_mtu, bpf_fib_lookup, bpf_redirect, bpf_redirect_peer},
    programs::TcContext,
    EbpfContext as _,
};
use netbr_common::{
    conntrack::FlowKey,
    counters::Reason,
    maps::{Config, FAST_INTO_CONTAINER, FAST_OUT_UPLINK},
};

use crate::{
    maps::{ENDPOINTS, FAST_PATH, FIB},
    parse::{IP_CSUM, IP_TTL},
};

const AF_INET: u8 = 2;

/// Redirects the frame to the endpoint that owns `daddr`, addressed from the
/// bridge to the container's MAC. Used for hairpin flows: sending them back
/// through routing would put a host address as source on a routed packet,
/// which the kernel drops as martian.
#[inline(always)]
pub fn to_endpoint(ctx: &TcContext, daddr: u32, cfg: &Config) -> Result<i32, Reason> {
    // SAFETY: read-only copy out of the map value.
    let ep = unsafe { ENDPOINTS.get(&daddr) }.ok_or(Reason::DropNoEndpoint)?;
    let (mac, ifindex) = (ep.mac, ep.host_ifindex);
    ctx.store(0, &mac, 0).map_err(|_| Reason::DropRewrite)?;
    ctx.store(6, &cfg.bridge_mac, 0)
        .map_err(|_| Reason::DropRewrite)?;
    // SAFETY: the helper has no preconditions; it returns TC_ACT_REDIRECT.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// Fast path in: delivers a packet translated towards a container straight
/// into its namespace (`bpf_redirect_peer`), skipping routing, netfilter and
/// the bridge. `None` leaves it to the host stack: no such endpoint, a TTL
/// that would expire here (the stack sends the time-exceeded), or a packet
/// too big for the container's link (the stack sends frag-needed).
#[inline(always)]
pub fn into_container(ctx: &TcContext, daddr: u32, cfg: &Config) -> Option<i32> {
    // SAFETY: read-only copy out of the map value.
    let ep = unsafe { ENDPOINTS.get(&daddr) }?;
    let (mac, ifindex) = (ep.mac, ep.host_ifindex);
    let mut mtu_len: u32 = 0;
    // SAFETY: the helper reads the skb and writes `mtu_len`.
    if unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &mut mtu_len, 0, 0) } != 0 {
        return None;
    }
    decrement_ttl(ctx)?;
    ctx.store(0, &mac, 0).ok()?;
    ctx.store(6, &cfg.bridge_mac, 0).ok()?;
    count_fast(FAST_INTO_CONTAINER);
    // SAFETY: the helper has no preconditions; it returns TC_ACT_REDIRECT.
    Some(unsafe { bpf_redirect_peer(ifindex, 0) } as i32)
}

/// The MACs for sending `xlat` out of the uplink, if the routing table
/// sends it there and the next hop's address is known. Asked with the
/// translated addresses before anything is rewritten, so a `None` leaves the
/// packet as it was for the host stack (which resolves neighbours and sends
/// ICMP errors).
#[inline(always)]
pub fn uplink_next_hop(
    ctx: &TcContext,
    xlat: &FlowKey,
    len: u32,
    cfg: &Config,
) -> Option<([u8; 6], [u8; 6])> {
    let p = FIB.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value, used by this packet only.
    let p = unsafe { &mut *p };
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    *p = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = xlat.proto;
    p.__bindgen_anon_1.tot_len = len as u16;
    p.ifindex = cfg.bridge_ifindex;
    p.__bindgen_anon_3.ipv4_src = xlat.saddr;
    p.__bindgen_anon_4.ipv4_dst = xlat.daddr;
    // SAFETY: `p` is a map value of the helper's parameter type.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            p as *mut bpf_fib_lookup,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64 && p.ifindex == cfg.uplink_ifindex)
        .then_some((p.smac, p.dmac))
}

/// Fast path out: sends an already translated packet out of the uplink with
/// the next hop's MACs (`bpf_redirect`), skipping the host stack.
#[inline(always)]
pub fn out_uplink(ctx: &TcContext, macs: ([u8; 6], [u8; 6]), cfg: &Config) -> Result<i32, Reason> {
    let (smac, dmac) = macs;
    ctx.store(0, &dmac, 0).map_err(|_| Reason::DropRewrite)?;
    ctx.store(6, &smac, 0).map_err(|_| Reason::DropRewrite)?;
    count_fast(FAST_OUT_UPLINK);
    // SAFETY: the helper has no preconditions; it returns TC_ACT_REDIRECT.
    Ok(unsafe { bpf_redirect(cfg.uplink_ifindex, 0) } as i32)
}

/// Decrements the IPv4 TTL as a router must; `None` if it would reach 0.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext) -> Option<()> {
    // TTL and protocol share a 16-bit word of the header checksum.
    let word: u16 = ctx.load(IP_TTL).ok()?;
    let ttl = word.to_ne_bytes()[0];
    if ttl <= 1 {
        return None;
    }
    let new = u16::from_ne_bytes([ttl - 1, word.to_ne_bytes()[1]]);
    ctx.l3_csum_replace(IP_CSUM, word as u64, new as u64, 2)
        .ok()?;
    ctx.store(IP_TTL, &new, 0).ok()
}

#[inline(always)]
pub fn count_fast(index: u32) {
    if let Some(slot) = FAST_PATH.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}
