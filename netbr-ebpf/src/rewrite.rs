//! Rewriting addresses and ports with checksum fix-ups.
//!
//! `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR` is what keeps
//! CHECKSUM_PARTIAL skbs (every packet between namespaces on one host) right:
//! for those the kernel adjusts only the pseudo-header seed, not a full sum.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use netbr_common::{conntrack::FlowKey, counters::Reason};

use crate::parse::{Packet, IP_CSUM, IP_DADDR, IP_SADDR};

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
