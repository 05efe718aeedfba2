//! Rewriting addresses and ports with checksum fix-ups.
//!
//! `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR` is what keeps
//! CHECKSUM_PARTIAL skbs (every packet between namespaces on one host) right:
//! for those the kernel adjusts only the pseudo-header seed, not a full sum.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use netbr_common::{conntrack::FlowKey, counters::Reason};

use crate::parse::{Packet, FRAG_LATER, IP_CSUM, IP_DADDR, IP_SADDR};

/// Rewrites the packet's tuple into `to`, field by field where they differ.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, pkt: &Packet, to: &FlowKey) -> Result<(), Reason> {
    let from = &pkt.key;
    if from.saddr != to.saddr {
        set_addr(ctx, pkt, IP_SADDR, from.saddr, to.saddr)?;
    }
    if from.daddr != to.daddr {
        set_addr(ctx, pkt, IP_DADDR, from.daddr, to.daddr)?;
    }
    // A later fragment has no L4 header: its first fragment carried the
    // port and checksum changes for the whole datagram.
    if pkt.frag == FRAG_LATER {
        return Ok(());
    }
    if from.sport != to.sport {
        set_port(ctx, pkt, pkt.sport_off, from.sport, to.sport)?;
    }
    if from.dport != to.dport {
        set_port(ctx, pkt, pkt.dport_off, from.dport, to.dport)?;
    }
    Ok(())
}

#[inline(always)]
fn set_addr(ctx: &TcContext, pkt: &Packet, off: usize, old: u32, new: u32) -> Result<(), Reason> {
    ctx.l3_csum_replace(IP_CSUM, old as u64, new as u64, 4)
        .map_err(|_| Reason::DropRewrite)?;
    if pkt.csum_pseudo {
        let flags = BPF_F_PSEUDO_HDR as u64 | pkt.csum_flags | 4;
        ctx.l4_csum_replace(pkt.csum_off, old as u64, new as u64, flags)
            .map_err(|_| Reason::DropRewrite)?;
    }
    ctx.store(off, &new, 0).map_err(|_| Reason::DropRewrite)
}

#[inline(always)]
fn set_port(ctx: &TcContext, pkt: &Packet, off: usize, old: u16, new: u16) -> Result<(), Reason> {
    ctx.l4_csum_replace(pkt.csum_off, old as u64, new as u64, pkt.csum_flags | 2)
        .map_err(|_| Reason::DropRewrite)?;
    ctx.store(off, &new, 0).map_err(|_| Reason::DropRewrite)
}

/// Translates an ICMP error of a tracked flow. `xlat` is what a packet
/// travelling like the error is rewritten to; the quoted packet travelled
/// the other way, so it becomes `xlat` reversed. The outer addresses follow
/// where they are the flow's own (a router in between keeps its address).
///
/// Checksums: the outer IP one as usual; ICMP's has no pseudo-header. The
/// quoted IP header's checksum is fixed with each address, which keeps that
/// header's one's-complement sum, and so the ICMP checksum, unchanged. Quoted
/// ports change the ICMP checksum. The quoted L4 checksum is left alone: it
/// covers data the error does not carry, so no receiver can verify it.
#[inline(always)]
pub fn icmp_error(ctx: &TcContext, pkt: &Packet, xlat: &FlowKey) -> Result<(), Reason> {
    let key = &pkt.key;
    if pkt.outer_daddr == key.daddr && xlat.daddr != key.daddr {
        set_outer(ctx, IP_DADDR, pkt.outer_daddr, xlat.daddr)?;
    }
    if pkt.outer_saddr == key.saddr && xlat.saddr != key.saddr {
        set_outer(ctx, IP_SADDR, pkt.outer_saddr, xlat.saddr)?;
    }
    // Quoted packet: its source is the key's destination, and so on.
    let inner_csum = pkt.inner_ip + 10;
    if key.daddr != xlat.daddr {
        set_inner_addr(ctx, inner_csum, pkt.inner_ip + 12, key.daddr, xlat.daddr)?;
    }
    if key.saddr != xlat.saddr {
        set_inner_addr(ctx, inner_csum, pkt.inner_ip + 16, key.saddr, xlat.saddr)?;
    }
    if key.dport != xlat.dport {
        set_port(ctx, pkt, pkt.sport_off, key.dport, xlat.dport)?;
    }
    if key.sport != xlat.sport {
        set_port(ctx, pkt, pkt.dport_off, key.sport, xlat.sport)?;
    }
    Ok(())
}

#[inline(always)]
fn set_outer(ctx: &TcContext, off: usize, old: u32, new: u32) -> Result<(), Reason> {
    ctx.l3_csum_replace(IP_CSUM, old as u64, new as u64, 4)
        .map_err(|_| Reason::DropRewrite)?;
    ctx.store(off, &new, 0).map_err(|_| Reason::DropRewrite)
}

#[inline(always)]
fn set_inner_addr(
    ctx: &TcContext,
    csum_off: usize,
    off: usize,
    old: u32,
    new: u32,
) -> Result<(), Reason> {
    ctx.l3_csum_replace(csum_off, old as u64, new as u64, 4)
        .map_err(|_| Reason::DropRewrite)?;
    ctx.store(off, &new, 0).map_err(|_| Reason::DropRewrite)
}
