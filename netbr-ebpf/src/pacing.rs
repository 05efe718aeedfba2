//! Bandwidth limits: stamps a limited endpoint's packets with their
//! earliest departure time; the `fq` qdisc of the device they leave by
//! releases them then (`netbr_common::pacing` has the arithmetic and why).
//! On a kernel without `fq` the same clock polices: packets within the
//! horizon leave at once, the rest are dropped.
//!
//! Runs on TC egress, in front of that qdisc: of the container's interface
//! for what it sends (there the packet still belongs to the container's
//! socket, so TCP small queues hold the sender back before anything has to
//! be dropped), of the host-side veth for what it receives. When policing,
//! what a container sends is judged at the host-side veth's TC ingress
//! instead (`store::limits` in netbr-user says why).

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, bpf_skb_set_tstamp},
    programs::TcContext,
};
use netbr_common::{
    conntrack::FlowKey,
    counters::Reason,
    monitor::{MON_HOOK_PACE_EGRESS, MON_HOOK_PACE_INGRESS},
    pacing::{charged_bytes, schedule, PaceKey, PACE_EGRESS, PACE_STAMP},
    IPPROTO_TCP,
};

use crate::{
    counters,
    maps::PACING,
    parse::{ETH_LEN, ETH_P_IP, IP_DADDR, IP_SADDR},
};

/// `BPF_SKB_CLOCK_MONOTONIC` (formerly `BPF_SKB_TSTAMP_DELIVERY_MONO`): the
/// only kind of timestamp `fq` takes as a departure time and the forward
/// and redirect paths keep.
const CLOCK_MONOTONIC: u64 = 1;

/// Headers of a segment a GSO packet will be cut into, when it is neither
/// TCP nor carries a readable header: IPv4 and UDP.
const IP_UDP_HDR: u64 = 28;

/// Paces one packet leaving in direction `dir` (`PACE_*`). Packets of
/// endpoints without a limit, and all but IPv4, pass untouched.
#[inline(always)]
pub fn run(ctx: &TcContext, dir: u8) -> i32 {
    // The stack's own record of the ethertype: no packet read needed.
    // SAFETY: reading a context field.
    let proto = unsafe { (*ctx.skb.skb).protocol };
    if u16::from_be(proto as u16) != ETH_P_IP {
        return TC_ACT_UNSPEC;
    }
    let at = if dir == PACE_EGRESS {
        IP_SADDR
    } else {
        IP_DADDR
    };
    let Ok(addr) = crate::skb::read::<u32>(ctx, at) else {
        return TC_ACT_UNSPEC;
    };
    let key = crate::zeroing::padded!(PaceKey {
        addr: addr,
        dir: dir,
    });
    let Some(pace) = PACING.get_ptr_mut(&key) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: a map value pointer; a racing CPU is tolerated (see `Pace`).
    let pace = unsafe { &mut *pace };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let bytes = packet_bytes(ctx);
    let Some(departure) = schedule(pace, now, bytes) else {
        pace.dropped += 1;
        counters::count(Reason::DropPaceHorizon);
        report_drop(ctx, addr, dir);
        return TC_ACT_SHOT;
    };
    if pace.mode != PACE_STAMP {
        // Policing: within the horizon the packet leaves now.
        return TC_ACT_UNSPEC;
    }
    // A sender's own later departure time (TCP pacing) stands.
    // SAFETY: reading context fields.
    let (own, own_type) = unsafe { ((*ctx.skb.skb).tstamp, (*ctx.skb.skb).tstamp_type) };
    let at = if own_type as u64 == CLOCK_MONOTONIC && own > departure {
        own
    } else {
        departure
    };
    // SAFETY: the skb is IPv4, the helper's one requirement besides a
    // non-zero monotonic time.
    unsafe { bpf_skb_set_tstamp(ctx.skb.skb, at, CLOCK_MONOTONIC as u32) };
    TC_ACT_UNSPEC
}

/// Tells a listening monitor of a packet over the limit: the container's
/// address is all this program reads of it.
#[inline(never)]
fn report_drop(ctx: &TcContext, addr: u32, dir: u8) {
    let mut key = FlowKey::default();
    let hook = if dir == PACE_EGRESS {
        key.saddr = addr;
        MON_HOOK_PACE_EGRESS
    } else {
        key.daddr = addr;
        MON_HOOK_PACE_INGRESS
    };
    // SAFETY: reading a context field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    crate::monitor::paced_drop(hook, &key, ifindex);
}

/// What the packet counts for against the limit: its IP bytes, and for a
/// GSO packet the headers each of its segments will carry.
#[inline(always)]
fn packet_bytes(ctx: &TcContext) -> u64 {
    // SAFETY: reading context fields.
    let (len, segs) = unsafe { ((*ctx.skb.skb).len, (*ctx.skb.skb).gso_segs) };
    let ip_len = (len as u64).saturating_sub(ETH_LEN as u64);
    if segs <= 1 {
        return ip_len;
    }
    charged_bytes(ip_len, segs as u64, segment_headers(ctx))
}

/// IP and transport header bytes of a GSO packet's segments.
#[inline(always)]
fn segment_headers(ctx: &TcContext) -> u64 {
    // Only GSO packets get here, for which a helper call is no cost worth
    // saving (with direct access, LLVM left a register unwritten on one
    // path, which the verifier refuses: "!read_ok").
    let (Ok(vihl), Ok(proto)) = (ctx.load::<u8>(ETH_LEN), ctx.load::<u8>(ETH_LEN + 9)) else {
        return IP_UDP_HDR;
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if proto != IPPROTO_TCP {
        return ihl as u64 + 8;
    }
    match ctx.load::<u8>(ETH_LEN + (ihl & 0x3c) + 12) {
        Ok(doff) => (ihl + ((doff >> 4) as usize) * 4) as u64,
        Err(_) => IP_UDP_HDR,
    }
}
