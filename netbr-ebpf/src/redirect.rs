//! Delivering a translated packet straight to a container's veth.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_check_mtu, bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
    EbpfContext as _,
};
use netbr_common::{
    conntrack::{FlowKey, FlowKey6},
    counters::Reason,
    maps::{Config, Endpoint, EP_PACED_INGRESS, FAST_INTO_CONTAINER, FAST_OUT_UPLINK},
};

use crate::{
    csum,
    maps::{ENDPOINTS, ENDPOINTS6_BY_ADDR, FAST_PATH, FIB},
    parse::{ETH_LEN, IP_CSUM, IP_TTL},
    skb,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// The IPv6 header's hop limit (RFC 8200), from the start of the frame.
const IP6_HOP_LIMIT: usize = ETH_LEN + 7;

/// Redirects the frame to the endpoint that owns `daddr`, addressed from the
/// bridge to the container's MAC. Used for hairpin flows: sending them back
/// through routing would put a host address as source on a routed packet,
/// which the kernel drops as martian.
#[inline(always)]
pub fn to_endpoint(ctx: &TcContext, daddr: u32, cfg: &Config) -> Result<i32, Reason> {
    // SAFETY: read-only copy out of the map value.
    let ep = unsafe { ENDPOINTS.get(&daddr) }.ok_or(Reason::DropNoEndpoint)?;
    let (mac, ifindex) = (ep.mac, ep.host_ifindex);
    set_macs(ctx, &mac, &cfg.bridge_mac).ok_or(Reason::DropRewrite)?;
    // SAFETY: the helper has no preconditions; it returns TC_ACT_REDIRECT.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// Fast path in: delivers a packet translated towards a container straight
/// into its namespace (`bpf_redirect_peer`), skipping routing, netfilter and
/// the bridge; to a paced endpoint, onto its host-side veth instead
/// (`bpf_redirect`), whose qdisc must hold the packet. `None` leaves it to the host stack: no such endpoint, a TTL
/// that would expire here (the stack sends the time-exceeded), or a packet
/// too big for the container's link (the stack sends frag-needed).
#[inline(always)]
pub fn into_container(ctx: &TcContext, daddr: u32, cfg: &Config) -> Option<i32> {
    // SAFETY: read-only lookup.
    let ep = unsafe { ENDPOINTS.get(&daddr) }?;
    into_endpoint(ctx, ep, cfg, decrement_ttl)
}

/// [`into_container`] for an IPv6 packet to container address `daddr`,
/// its hop limit decremented.
#[inline(always)]
pub fn into_container6(ctx: &TcContext, daddr: &[u32; 4], cfg: &Config) -> Option<i32> {
    // SAFETY: read-only lookup.
    let ep = unsafe { ENDPOINTS6_BY_ADDR.get(daddr) }?;
    into_endpoint(ctx, ep, cfg, decrement_hop_limit)
}

/// Delivers into endpoint `ep`, the router's count decremented by
/// `decrement` (the family's TTL or hop limit).
#[inline(always)]
fn into_endpoint(
    ctx: &TcContext,
    ep: &Endpoint,
    cfg: &Config,
    decrement: fn(&TcContext) -> Option<()>,
) -> Option<i32> {
    let (mac, ifindex, flags) = (ep.mac, ep.host_ifindex, ep.flags);
    let mut mtu_len: u32 = 0;
    // SAFETY: the helper reads the skb and writes `mtu_len`.
    if unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &mut mtu_len, 0, 0) } != 0 {
        return None;
    }
    decrement(ctx)?;
    set_macs(ctx, &mac, &cfg.bridge_mac)?;
    count_fast(FAST_INTO_CONTAINER);
    // SAFETY: the helpers have no preconditions; they return TC_ACT_REDIRECT.
    Some(unsafe {
        if flags & EP_PACED_INGRESS != 0 {
            bpf_redirect(ifindex, 0)
        } else {
            bpf_redirect_peer(ifindex, 0)
        }
    } as i32)
}

/// How a packet leaves through the uplink on the fast path.
// Fieldless: a payload left undefined in the other variant becomes a read
// of an uninitialised register, which the verifier refuses ("!read_ok").
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// The next hop's address is resolved: the lookup left its MACs in
    /// `NB_FIB` for `out_uplink`.
    Known,
    /// The route is the uplink's but the neighbour is not resolved yet: the
    /// kernel resolves it (`bpf_redirect_neigh`) rather than the packet
    /// taking the host's forward path, where a drop policy would end it.
    Unresolved,
}

/// How to send `xlat` out of the uplink, if the routing table sends it
/// there. Asked with the translated addresses before anything is
/// rewritten, so a `None` leaves the packet as it was for the host stack
/// (another route, or a packet too big for the uplink: the stack sends the
/// ICMP error).
#[inline(always)]
pub fn uplink_next_hop(
    ctx: &TcContext,
    xlat: &FlowKey,
    len: u32,
    l4_off: usize,
    cfg: &Config,
) -> Option<NextHop> {
    if !forwardable(xlat.daddr) {
        return None;
    }
    let p = fib_query(ctx, AF_INET, xlat.proto, len, l4_off, cfg)?;
    p.__bindgen_anon_3.ipv4_src = xlat.saddr;
    p.__bindgen_anon_4.ipv4_dst = xlat.daddr;
    ask_fib(ctx, p, cfg)
}

/// [`uplink_next_hop`] for an IPv6 packet translated to `xlat`.
#[inline(always)]
pub fn uplink_next_hop6(
    ctx: &TcContext,
    xlat: &FlowKey6,
    len: u32,
    l4_off: usize,
    cfg: &Config,
) -> Option<NextHop> {
    if !forwardable6(&xlat.daddr) {
        return None;
    }
    let p = fib_query(ctx, AF_INET6, xlat.proto, len, l4_off, cfg)?;
    p.__bindgen_anon_3.ipv6_src = xlat.saddr;
    p.__bindgen_anon_4.ipv6_dst = xlat.daddr;
    ask_fib(ctx, p, cfg)
}

/// `bpf_fib_lookup`'s parameters for a packet of `len` bytes (IP length)
/// from the bridge, its transport header at `l4_off`, in per-CPU room (64
/// bytes, too many for the stack beside the hooks' frames); the caller
/// fills in the addresses.
#[inline(always)]
fn fib_query(
    ctx: &TcContext,
    family: u8,
    proto: u8,
    len: u32,
    l4_off: usize,
    cfg: &Config,
) -> Option<&'static mut bpf_fib_lookup> {
    let p = FIB.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value, used by this packet only.
    let p = unsafe { &mut *p };
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    unsafe { crate::zeroing::zero_all(p) };
    p.family = family;
    p.l4_protocol = proto;
    // With the length given, a packet too big for the route's MTU gets
    // BPF_FIB_LKUP_RET_FRAG_NEEDED: the stack then sends the error. A GSO
    // packet is measured by its segments.
    p.__bindgen_anon_1.tot_len = skb::segment_len(ctx, len, l4_off, proto) as u16;
    p.ifindex = cfg.bridge_ifindex;
    Some(p)
}

/// Asks the routing table how `p`'s packet leaves: through the uplink,
/// with its next hop resolved or not, or `None`.
#[inline(always)]
fn ask_fib(ctx: &TcContext, p: &mut bpf_fib_lookup, cfg: &Config) -> Option<NextHop> {
    // SAFETY: `p` is a map value of the helper's parameter type.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            p as *mut bpf_fib_lookup,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    // On success and on NO_NEIGH the helper has set `ifindex` to the route's
    // device; on other results it is still the bridge's.
    if p.ifindex != cfg.uplink_ifindex {
        return None;
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Some(NextHop::Known),
        BPF_FIB_LKUP_RET_NO_NEIGH => Some(NextHop::Unresolved),
        _ => None,
    }
}

/// Routes a packet that is to leave by the fast path as a router would:
/// how it leaves the uplink, with its TTL decremented. `Err(PassNoMatch)`
/// leaves it, untouched, to the host stack: another route, a packet too big
/// for the uplink, or a TTL about to expire (the stack sends the ICMP).
#[inline(always)]
pub fn route_out(
    ctx: &TcContext,
    xlat: &FlowKey,
    len: u32,
    l4_off: usize,
    cfg: &Config,
) -> Result<NextHop, Reason> {
    let hop = uplink_next_hop(ctx, xlat, len, l4_off, cfg).ok_or(Reason::PassNoMatch)?;
    decrement_ttl(ctx).ok_or(Reason::PassNoMatch)?;
    Ok(hop)
}

/// Whether the host stack would route a packet for `daddr` (network byte
/// order) out at all. The FIB's default route matches multicast, the
/// limited broadcast, 0.0.0.0/8 and loopback too, but the kernel never
/// forwards to them (`ip_route_input_slow` delivers or drops them), so
/// neither does the fast path: the fuzzer caught a masqueraded multicast
/// datagram sent out of the uplink.
#[inline(always)]
fn forwardable(daddr: u32) -> bool {
    let first = daddr.to_ne_bytes()[0];
    !(224..=239).contains(&first) && daddr != u32::MAX && first != 0 && first != 127
}

/// [`forwardable`] for IPv6: the kernel never forwards to multicast
/// (ff00::/8), link-local (fe80::/10), loopback or the unspecified address.
#[inline(always)]
fn forwardable6(daddr: &[u32; 4]) -> bool {
    let first = u32::from_be(daddr[0]);
    let loopback_or_unspecified = first == 0 && daddr[1] == 0 && daddr[2] == 0 && {
        let last = u32::from_be(daddr[3]);
        last <= 1
    };
    first >> 24 != 0xff && first & 0xffc0_0000 != 0xfe80_0000 && !loopback_or_unspecified
}

/// [`route_out`] for an IPv6 packet: its hop limit decremented.
#[inline(always)]
pub fn route_out6(
    ctx: &TcContext,
    xlat: &FlowKey6,
    len: u32,
    l4_off: usize,
    cfg: &Config,
) -> Option<NextHop> {
    let hop = uplink_next_hop6(ctx, xlat, len, l4_off, cfg)?;
    decrement_hop_limit(ctx)?;
    Some(hop)
}

/// Fast path out: sends an already translated packet out of the uplink,
/// skipping the host stack.
#[inline(always)]
pub fn out_uplink(ctx: &TcContext, hop: NextHop, cfg: &Config) -> Result<i32, Reason> {
    count_fast(FAST_OUT_UPLINK);
    match hop {
        NextHop::Known => {
            let p = FIB.get_ptr(0).ok_or(Reason::DropRewrite)?;
            // SAFETY: per-CPU map value `uplink_next_hop` filled for this packet.
            let (smac, dmac) = unsafe { ((*p).smac, (*p).dmac) };
            set_macs(ctx, &dmac, &smac).ok_or(Reason::DropRewrite)?;
            // SAFETY: the helper has no preconditions; it returns TC_ACT_REDIRECT.
            Ok(unsafe { bpf_redirect(cfg.uplink_ifindex, 0) } as i32)
        }
        // SAFETY: without parameters the kernel routes the packet's own
        // destination itself; it returns TC_ACT_REDIRECT.
        NextHop::Unresolved => {
            Ok(
                unsafe { bpf_redirect_neigh(cfg.uplink_ifindex, core::ptr::null_mut(), 0, 0) }
                    as i32,
            )
        }
    }
}

/// Decrements the IPv4 TTL as a router must; `None` if it would reach 0.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext) -> Option<()> {
    // TTL and protocol share a 16-bit word of the header checksum.
    let word: u16 = skb::read(ctx, IP_TTL).ok()?;
    let ttl = word.to_ne_bytes()[0];
    if ttl <= 1 {
        return None;
    }
    let new = u16::from_ne_bytes([ttl - 1, word.to_ne_bytes()[1]]);
    skb::csum_add(ctx, IP_CSUM, csum::diff16(word, new)).ok()?;
    skb::write(ctx, IP_TTL, &new).ok()
}

/// Decrements the IPv6 hop limit as a router must (there is no header
/// checksum); `None` if it would reach 0.
#[inline(always)]
pub fn decrement_hop_limit(ctx: &TcContext) -> Option<()> {
    let hops: u8 = skb::read(ctx, IP6_HOP_LIMIT).ok()?;
    if hops <= 1 {
        return None;
    }
    skb::write(ctx, IP6_HOP_LIMIT, &(hops - 1)).ok()
}

/// Addresses the frame from `src` to `dst`.
#[inline(always)]
fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Option<()> {
    skb::write(ctx, 0, dst).ok()?;
    skb::write(ctx, 6, src).ok()
}

#[inline(always)]
pub fn count_fast(index: u32) {
    if let Some(slot) = FAST_PATH.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}
