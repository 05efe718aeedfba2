//! The XDP fast path on the uplink (`attach --xdp`): packets of assured
//! flows bound for a container are translated in the driver and redirected
//! to the container's veth, before an skb exists. Everything else passes to
//! the TC programs unchanged: first packets, TCP SYN/FIN/RST (state
//! transitions stay with TC), fragments, IP options, ICMP, expiring TTLs,
//! packets too big for the container's link.
//!
//! Checksums are updated incrementally as full checksums, which is what
//! every frame from a physical NIC carries. A frame from a veth whose peer
//! offloads transmit checksums holds only a partial one, and XDP cannot
//! tell; `attach --xdp` on a veth uplink warns about it.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::{bpf_check_mtu, bpf_redirect},
    programs::XdpContext,
    EbpfContext as _,
};
use netbr_common::{
    counters::Reason,
    maps::{Config, EP_PACED_INGRESS, FAST_XDP},
    IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    conntrack,
    counters::count,
    csum,
    maps::{CONFIG, ENDPOINTS},
    modes::fast_path_carries,
    parse::{Ipv4Fixed, ETH_LEN, ETH_P_IP, TCP_CSUM, TCP_FLAGS, TCP_MIN, UDP_CSUM, UDP_MIN},
    redirect::count_fast,
    uplink_ports,
};

const IP_LEN: usize = core::mem::size_of::<Ipv4Fixed>();
const TCP_SYN_FIN_RST: u8 = 0x07;

pub fn run(ctx: &XdpContext) -> u32 {
    try_run(ctx).unwrap_or(XDP_PASS)
}

/// A pointer to `len` bytes at `off` of the frame, if the frame has them.
#[inline(always)]
fn at(ctx: &XdpContext, off: usize, len: usize) -> Option<*mut u8> {
    crate::skb::span(ctx.data(), ctx.data_end(), off, len)
}

#[inline(always)]
fn try_run(ctx: &XdpContext) -> Option<u32> {
    let cfg: &Config = CONFIG.get(0).filter(|c| c.configured != 0)?;
    let eth = at(ctx, 0, ETH_LEN)?;
    // SAFETY: `at` checked the bounds; packet bytes may be unaligned.
    let ethertype = unsafe { (eth.add(12) as *const u16).read_unaligned() };
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let ip = at(ctx, ETH_LEN, IP_LEN)? as *mut Ipv4Fixed;
    // SAFETY: as above.
    let ipv: Ipv4Fixed = unsafe { crate::skb::load_unaligned(ip as *const u8) };
    // No options, no fragment of any kind, a TTL that survives this hop.
    if ipv.vihl != 0x45 || u16::from_be(ipv.frag) & 0x3fff != 0 || ipv.ttl <= 1 {
        return None;
    }
    let l4_off = ETH_LEN + IP_LEN;
    let (csum_off, min) = match ipv.proto {
        IPPROTO_TCP => (TCP_CSUM, TCP_MIN),
        IPPROTO_UDP => (UDP_CSUM, UDP_MIN),
        _ => return None,
    };
    let l4 = at(ctx, l4_off, min)?;
    if (u16::from_be(ipv.tot_len) as usize) < IP_LEN + min {
        return None;
    }
    // SAFETY: `at` checked `min` bytes, which cover ports and checksum.
    let (sport, dport) = unsafe {
        (
            (l4 as *const u16).read_unaligned(),
            (l4.add(2) as *const u16).read_unaligned(),
        )
    };
    // TCP's flags get a bounds check of their own: the verifier need not
    // tie `min` to the protocol it was chosen by.
    let flags = if ipv.proto == IPPROTO_TCP {
        // SAFETY: `at` checked the byte.
        unsafe { *at(ctx, l4_off + TCP_FLAGS, 1)? }
    } else {
        0
    };
    if flags & TCP_SYN_FIN_RST != 0 {
        return None;
    }
    // The TC program's first test, so a packet no flow can claim costs no
    // lookup here either.
    if !cfg.in_subnet(ipv.daddr) && !uplink_ports::may_be_ours(ipv.proto, dport) {
        return None;
    }
    let key = crate::zeroing::tuple(ipv.saddr, ipv.daddr, sport, dport, ipv.proto);
    let now = conntrack::now();
    let flow = conntrack::lookup_assured(&key, cfg, now)?;
    // SAFETY: map value pointer from the lookup, valid for this run.
    let (xlat, nat) = unsafe { ((*flow.entry).xlat, (*flow.entry).nat) };
    // Only flows the fast path carries whose packets from here change
    // destination only, towards a container: published ports and
    // masquerade replies.
    if !fast_path_carries(cfg, nat)
        || xlat.daddr == key.daddr
        || xlat.saddr != key.saddr
        || xlat.sport != key.sport
        || !cfg.in_subnet(xlat.daddr)
    {
        return None;
    }
    // SAFETY: read-only copy out of the map value.
    let ep = unsafe { ENDPOINTS.get(&xlat.daddr) }?;
    let (mac, ifindex) = (ep.mac, ep.host_ifindex);
    // A frame redirected in XDP reaches the veth's peer without passing a
    // qdisc, so a paced endpoint's goes up the stack to its host-side veth.
    if ep.flags & EP_PACED_INGRESS != 0 {
        return None;
    }
    let mut mtu_len: u32 = 0;
    // SAFETY: the helper reads the frame's length and writes `mtu_len`.
    if unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &mut mtu_len, 0, 0) } != 0 {
        return None;
    }
    // Everything checked: from here the frame is changed and sent.
    let len = u16::from_be(ipv.tot_len) as u32;
    conntrack::account(&flow, &key, flags, len, cfg, now).ok()?;
    // SAFETY: every write stays inside the bounds `at` checked above.
    unsafe {
        let mut ip_sum = (*ip).csum;
        // TTL and protocol share a 16-bit word of the header checksum.
        let ttl_word = u16::from_ne_bytes([ipv.ttl, ipv.proto]);
        (*ip).ttl = ipv.ttl - 1;
        ip_sum = csum::replace(
            ip_sum,
            &[ttl_word],
            &[u16::from_ne_bytes([ipv.ttl - 1, ipv.proto])],
        );
        let l4_sum_ptr = l4.add(csum_off) as *mut u16;
        let mut l4_sum = l4_sum_ptr.read_unaligned();
        // A UDP checksum of 0 means none: it stays none.
        let udp_none = ipv.proto == IPPROTO_UDP && l4_sum == 0;
        if xlat.daddr != key.daddr {
            (*ip).daddr = xlat.daddr;
            let (old, new) = (csum::halves(key.daddr), csum::halves(xlat.daddr));
            ip_sum = csum::replace(ip_sum, &old, &new);
            l4_sum = csum::replace(l4_sum, &old, &new);
        }
        if xlat.dport != key.dport {
            (l4.add(2) as *mut u16).write_unaligned(xlat.dport);
            l4_sum = csum::replace(l4_sum, &[key.dport], &[xlat.dport]);
        }
        (*ip).csum = ip_sum;
        if !udp_none {
            // 0 is reserved for "no checksum" in UDP; its other zero is all ones.
            l4_sum_ptr.write_unaligned(if l4_sum == 0 && ipv.proto == IPPROTO_UDP {
                0xffff
            } else {
                l4_sum
            });
        }
        crate::skb::store_unaligned(eth, &mac);
        crate::skb::store_unaligned(eth.add(6), &cfg.bridge_mac);
    }
    count(Reason::Translated);
    count_fast(FAST_XDP);
    // SAFETY: the helper has no preconditions. It returns XDP_REDIRECT, or
    // XDP_ABORTED for flags it does not know, never the case here.
    Some(unsafe { bpf_redirect(ifindex, 0) } as u32)
}
