//! IPv6. netbr neither translates nor tracks IPv6 yet, so the only IPv6
//! packets it judges are those from the uplink to the bridge's IPv6
//! subnet: refused unless direct routing is allowed, as a packet to a
//! container's IPv4 address is, and always on an internal bridge.
//! Everything else (neighbour discovery, multicast, the host's own
//! traffic, containers' traffic) passes untouched, counted as IPv6.

use aya_ebpf::programs::TcContext;
use netbr_common::{
    counters::Reason,
    maps::{Config, CFG_ALLOW_DIRECT_ROUTING, CFG_INTERNAL, HOOK_UPLINK_INGRESS},
    net6::halves,
};

use crate::{maps::NET6, modes::mode, parse::ETH_LEN, skb};

const ETH_P_IPV6: u16 = 0x86dd;
/// The destination address's offset from the start of the frame (RFC 8200).
const IP6_DADDR: usize = ETH_LEN + 24;

/// The reason a packet that is not IPv4 gets on `hook`: a drop for an
/// IPv6 packet from the uplink addressed into the subnet that may not
/// enter, a pass otherwise.
#[inline(always)]
pub fn judge(ctx: &TcContext, cfg: &Config, hook: u8) -> Reason {
    let Ok(ethertype) = skb::read::<u16>(ctx, 12) else {
        return Reason::PassNotIpv4;
    };
    if u16::from_be(ethertype) != ETH_P_IPV6 {
        return Reason::PassNotIpv4;
    }
    if hook != HOOK_UPLINK_INGRESS {
        return Reason::PassIpv6;
    }
    let Some(net) = NET6.get(0) else {
        return Reason::PassIpv6;
    };
    if !net.configured() {
        return Reason::PassIpv6;
    }
    let Ok(daddr) = skb::read::<[u8; 16]>(ctx, IP6_DADDR) else {
        return Reason::DropTruncated;
    };
    if !net.contains(halves(&daddr)) {
        return Reason::PassIpv6;
    }
    if mode(cfg, CFG_INTERNAL) {
        Reason::DropInternal
    } else if mode(cfg, CFG_ALLOW_DIRECT_ROUTING) {
        Reason::PassIpv6
    } else {
        Reason::DropDirectRouting
    }
}
