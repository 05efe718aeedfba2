//! Rewriting addresses and ports with checksum fix-ups.
//!
//! Fields are written with direct packet access and the IP header checksum
//! is computed here: that header always carries a full checksum. The L4
//! checksum goes through `bpf_l4_csum_replace`, because only the kernel
//! knows the skb's `ip_summed`: a CHECKSUM_PARTIAL skb (every packet between
//! namespaces on one host) holds just the pseudo-header's sum there, which
//! an address change must update and a port change must not, and a
//! CHECKSUM_COMPLETE skb's `skb->csum` must follow an address change. So at
//! most two helper calls per packet, one per kind of change, each with the
//! whole difference (size 0 takes a precomputed diff).

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use netbr_common::{
    conntrack::{FlowKey, FlowKeyOf},
    counters::Reason,
};

use crate::{
    csum,
    parse::{Packet, ETH_LEN, FRAG_LATER, IP_CSUM, IP_DADDR, IP_SADDR},
    skb,
};

/// What a rewrite needs of an address family's header.
pub trait AddrField: Copy + PartialEq {
    /// The source and destination addresses' offsets in the frame.
    const SADDR: usize;
    const DADDR: usize;
    /// Where the IP header keeps a checksum of its own: IPv4's does, IPv6's
    /// has none (RFC 8200 leaves it to the transport's pseudo-header).
    const IP_CSUM: Option<usize>;
    /// The difference replacing `old` by `new` makes to a checksum.
    fn diff(old: Self, new: Self) -> u32;
}

impl AddrField for u32 {
    const SADDR: usize = IP_SADDR;
    const DADDR: usize = IP_DADDR;
    const IP_CSUM: Option<usize> = Some(IP_CSUM);
    #[inline(always)]
    fn diff(old: u32, new: u32) -> u32 {
        csum::diff32(old, new)
    }
}

impl AddrField for [u32; 4] {
    const SADDR: usize = ETH_LEN + 8;
    const DADDR: usize = ETH_LEN + 24;
    const IP_CSUM: Option<usize> = None;
    #[inline(always)]
    fn diff(old: [u32; 4], new: [u32; 4]) -> u32 {
        if old == new {
            0
        } else {
            csum::diff_words(&old, &new)
        }
    }
}

/// What a rewrite needs of a parsed packet of either family.
pub trait L4Fields<A> {
    fn key(&self) -> &FlowKeyOf<A>;
    /// False for a later fragment, which carries no L4 header.
    fn has_l4(&self) -> bool;
    /// Whether the L4 checksum covers the addresses (a pseudo-header).
    fn csum_pseudo(&self) -> bool;
    fn csum_off(&self) -> usize;
    /// Extra `bpf_l4_csum_replace` flags (`BPF_F_MARK_MANGLED_0` for UDP).
    fn csum_flags(&self) -> u64;
    fn sport_off(&self) -> usize;
    fn dport_off(&self) -> usize;
}

/// Implements [`L4Fields`] for a packet type whose fields bear the trait's
/// names; `has_l4` and `csum_pseudo` are expressions of the packet `$p`.
macro_rules! impl_l4_fields {
    ($packet:ty, $addr:ty, |$p:ident| has_l4: $has_l4:expr, csum_pseudo: $pseudo:expr) => {
        impl $crate::rewrite::L4Fields<$addr> for $packet {
            #[inline(always)]
            fn key(&self) -> &netbr_common::conntrack::FlowKeyOf<$addr> {
                &self.key
            }
            #[inline(always)]
            #[allow(unused_variables, reason = "a constant answer needs no packet")]
            fn has_l4(&self) -> bool {
                let $p = self;
                $has_l4
            }
            #[inline(always)]
            #[allow(unused_variables, reason = "a constant answer needs no packet")]
            fn csum_pseudo(&self) -> bool {
                let $p = self;
                $pseudo
            }
            #[inline(always)]
            fn csum_off(&self) -> usize {
                self.csum_off
            }
            #[inline(always)]
            fn csum_flags(&self) -> u64 {
                self.csum_flags
            }
            #[inline(always)]
            fn sport_off(&self) -> usize {
                self.sport_off
            }
            #[inline(always)]
            fn dport_off(&self) -> usize {
                self.dport_off
            }
        }
    };
}
pub(crate) use impl_l4_fields;

impl_l4_fields!(Packet, u32, |p| has_l4: p.frag != FRAG_LATER, csum_pseudo: p.csum_pseudo);

/// Rewrites the packet's tuple into `to`, for either family.
#[inline(always)]
pub fn rewrite<A: AddrField, P: L4Fields<A>>(
    ctx: &TcContext,
    pkt: &P,
    to: &FlowKeyOf<A>,
) -> Result<(), Reason> {
    let from = pkt.key();
    let addr_diff = A::diff(from.saddr, to.saddr) + A::diff(from.daddr, to.daddr);
    // A later fragment has no L4 header: its first fragment carried the
    // port and checksum changes for the whole datagram.
    let has_l4 = pkt.has_l4();
    let port_diff = if has_l4 {
        csum::diff16(from.sport, to.sport) + csum::diff16(from.dport, to.dport)
    } else {
        0
    };
    // The helpers first: they may move the packet's data.
    if addr_diff != 0 && pkt.csum_pseudo() {
        l4_csum_add(ctx, pkt, addr_diff, BPF_F_PSEUDO_HDR as u64)?;
    }
    if port_diff != 0 {
        l4_csum_add(ctx, pkt, port_diff, 0)?;
    }
    if addr_diff != 0 {
        if let Some(ip_csum) = A::IP_CSUM {
            skb::csum_add(ctx, ip_csum, addr_diff).map_err(|_| Reason::DropRewrite)?;
        }
        if from.saddr != to.saddr {
            put(ctx, A::SADDR, &to.saddr)?;
        }
        if from.daddr != to.daddr {
            put(ctx, A::DADDR, &to.daddr)?;
        }
    }
    if has_l4 {
        if from.sport != to.sport {
            put(ctx, pkt.sport_off(), &to.sport)?;
        }
        if from.dport != to.dport {
            put(ctx, pkt.dport_off(), &to.dport)?;
        }
    }
    Ok(())
}

/// Adds `diff` to the L4 checksum as the kernel's state of it requires.
#[inline(always)]
fn l4_csum_add<A, P: L4Fields<A>>(
    ctx: &TcContext,
    pkt: &P,
    diff: u32,
    flags: u64,
) -> Result<(), Reason> {
    ctx.l4_csum_replace(pkt.csum_off(), 0, diff as u64, pkt.csum_flags() | flags)
        .map_err(|_| Reason::DropRewrite)
}

#[inline(always)]
fn put<T: Copy>(ctx: &TcContext, off: usize, v: &T) -> Result<(), Reason> {
    skb::write(ctx, off, v).map_err(|_| Reason::DropRewrite)
}

#[inline(always)]
fn set_port(ctx: &TcContext, pkt: &Packet, off: usize, old: u16, new: u16) -> Result<(), Reason> {
    l4_csum_add(ctx, pkt, csum::diff16(old, new), 0)?;
    put(ctx, off, &new)
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
    // Quoted ports first: the checksum helper may move the packet's data.
    if key.dport != xlat.dport {
        set_port(ctx, pkt, pkt.sport_off, key.dport, xlat.dport)?;
    }
    if key.sport != xlat.sport {
        set_port(ctx, pkt, pkt.dport_off, key.sport, xlat.sport)?;
    }
    if pkt.outer_daddr == key.daddr && xlat.daddr != key.daddr {
        set_addr(ctx, IP_CSUM, IP_DADDR, pkt.outer_daddr, xlat.daddr)?;
    }
    if pkt.outer_saddr == key.saddr && xlat.saddr != key.saddr {
        set_addr(ctx, IP_CSUM, IP_SADDR, pkt.outer_saddr, xlat.saddr)?;
    }
    // Quoted packet: its source is the key's destination, and so on.
    let inner_csum = pkt.inner_ip + 10;
    if key.daddr != xlat.daddr {
        set_addr(ctx, inner_csum, pkt.inner_ip + 12, key.daddr, xlat.daddr)?;
    }
    if key.saddr != xlat.saddr {
        set_addr(ctx, inner_csum, pkt.inner_ip + 16, key.saddr, xlat.saddr)?;
    }
    Ok(())
}

/// Replaces an IPv4 header's address at `off`, fixing the header's own
/// checksum at `csum_off`.
#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    csum_off: usize,
    off: usize,
    old: u32,
    new: u32,
) -> Result<(), Reason> {
    skb::csum_add(ctx, csum_off, csum::diff32(old, new)).map_err(|_| Reason::DropRewrite)?;
    put(ctx, off, &new)
}
