//! IPv6: masquerade (NAT66) of the containers' TCP, UDP and ICMPv6 echo
//! leaving through the uplink, to the uplink's global address, tracked in
//! IPv6's own conntrack tables by the same code as IPv4's
//! (`conntrack::Family`); and the direct-routing refusal: a packet from the
//! uplink into the bridge's IPv6 subnet is dropped unless direct routing is
//! allowed, as IPv4's is, and always on an internal bridge.
//!
//! ICMPv6 errors from beyond the uplink about translated packets are
//! translated back to their container. Everything else IPv6 passes
//! untouched, counted as `pass_ipv6`: neighbour discovery, MLD and
//! multicast, the host's own traffic (but for the flows it must track so
//! as never to share a tuple with a container's), and packets with more extension
//! headers than the walk takes. Fragments follow their first fragment, as
//! IPv4's do. The TC fast path carries tracked flows' packets into
//! containers and out of the uplink, as IPv4's; new flows' first packets,
//! ICMPv6 errors and what it cannot carry take the host stack. XDP leaves
//! IPv6 to TC.

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
        TC_ACT_UNSPEC,
    },
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use netbr_common::{
    conntrack::{
        initial_state, CtEntry6, FlowKey6, NAT_DNAT, NAT_HAIRPIN, NAT_HOST, NAT_NONE, NAT_SNAT,
    },
    counters::Reason,
    maps::{
        Config, CFG_ALLOW_DIRECT_ROUTING, CFG_FAST_PATH, CFG_INTERNAL, CFG_ROUTED,
        HOOK_BRIDGE_INGRESS, HOOK_UPLINK_EGRESS, HOOK_UPLINK_INGRESS,
    },
    net6::{FragKey6, Net6},
    profile::{SEG_ACCOUNT, SEG_CLOCK, SEG_INSERT, SEG_LOOKUP, SEG_PARSE, SEG_REWRITE},
    snat::{may_keep_port, snat_candidate},
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    conntrack::{self, now},
    frag::{recall_in, remember_in},
    hooks::Outcome,
    maps::{ENDPOINTS6, FRAGMENTS6, NET6, PACKET6},
    modes::{fast_path_carries, mode},
    parse::{ETH_LEN, FRAG_FIRST, FRAG_LATER, FRAG_NONE},
    profile, redirect,
    rewrite::{rewrite, AddrField},
    skb, uplink_ports,
};

/// Fixed-header field offsets from the start of the frame (RFC 8200).
const IP6_PAYLOAD_LEN: usize = ETH_LEN + 4;
const IP6_NEXT_HEADER: usize = ETH_LEN + 6;
const IP6_SADDR: usize = ETH_LEN + 8;
const IP6_DADDR: usize = ETH_LEN + 24;
const IP6_HEADER: u32 = 40;
/// The transport header, when no extension header comes first.
const L4: usize = ETH_LEN + 40;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Source ports a new masquerade flow tries from the SNAT range after its
/// own; beyond them it is refused as `drop_snat_exhausted`.
const SNAT6_ATTEMPTS: u32 = 16;

/// What the translators need to know about one IPv6 packet.
pub struct Packet6 {
    pub key: FlowKey6,
    /// Offsets of the ports (for ICMPv6 echo both the identifier's) and of
    /// the L4 checksum, which covers the addresses for all three protocols.
    pub sport_off: usize,
    pub dport_off: usize,
    pub csum_off: usize,
    pub csum_flags: u64,
    pub tcp_flags: u8,
    /// The packet's length from its IPv6 header on, for byte counters.
    pub len: u32,
    /// `parse::FRAG_*`, and the fragment header's identification.
    pub frag: u8,
    pub frag_id: u32,
    /// 1 once `parse` filled this in for the packet at hand.
    pub parsed: u8,
    /// 1 once `parse` succeeded for the packet at hand: a second call
    /// returns at once.
    pub parse_done: u8,
    /// A new flow's translation and the reply tuple it claims, built here
    /// rather than on the stack: two 40-byte tuples and the claim's own
    /// would not fit in 512 bytes beside the hooks' frames.
    pub xlat: FlowKey6,
    pub reply_key: FlowKey6,
    /// The kind of flow (`NAT_*`) `xlat` translates for, once it does.
    pub nat: u8,
    /// A host socket lookup's tuple (`nat::host_socket_takes`): here, not
    /// on the port search's stack.
    pub sock_tuple: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    /// The fast path's verdict for the packet, `TC_ACT_UNSPEC` while the
    /// host stack is to carry it.
    pub action: i32,
}

// A later fragment carries no transport header (its first fragment's
// checksum covers the whole datagram); otherwise TCP's, UDP's and ICMPv6's
// checksums all cover the pseudo-header.
crate::rewrite::impl_l4_fields!(
    Packet6,
    [u32; 4],
    |p| has_l4: p.frag != FRAG_LATER,
    csum_pseudo: p.frag != FRAG_LATER
);

/// This CPU's room for the packet at hand, which every step of the IPv6
/// path fills in or reads (its tuples would not fit on the stack).
#[inline(always)]
fn packet6() -> Option<&'static mut Packet6> {
    // SAFETY: a per-CPU map value: one program run on this CPU uses it at
    // a time, and no reference outlives the run.
    PACKET6.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// [`packet6`], emptied of what the last packet on this CPU left: its
/// redirect and its parse marks. Every entry point starts with it, so a
/// frame left early never finds the last packet's redirect.
#[inline(always)]
fn fresh_packet6() -> Option<&'static mut Packet6> {
    let pkt = packet6()?;
    pkt.action = TC_ACT_UNSPEC;
    pkt.parsed = 0;
    pkt.parse_done = 0;
    Some(pkt)
}

/// What an IPv6 frame gets on `hook`: an `Outcome` when the fast path
/// redirects it, else the reason it goes on (or is dropped) with,
/// translated or not.
#[inline(always)]
pub fn run(ctx: &TcContext, cfg: &Config, hook: u8) -> Result<Outcome, Reason> {
    if fresh_packet6().is_none() {
        return Err(Reason::PassIpv6);
    }
    let reason = on_hook(ctx, cfg, hook);
    // Asked again: `on_hook` wrote the room through its own reference.
    let Some(pkt) = packet6() else {
        return Err(reason);
    };
    let action = pkt.action;
    if action != TC_ACT_UNSPEC {
        return Ok(Outcome { reason, action });
    }
    if reason == Reason::Translated && hook == HOOK_UPLINK_INGRESS && mode(cfg, CFG_FAST_PATH) {
        let action = deliver_in(ctx, cfg);
        if action != TC_ACT_UNSPEC {
            return Ok(Outcome { reason, action });
        }
    }
    Err(reason)
}

/// IPv6's part of `hooks::endpoint_ingress`: on a container's host-side
/// veth, a packet of a tracked flow leaving through the uplink goes out
/// from there, as [`out_uplink`] sends it from the bridge. `None` for
/// everything else, which goes on untouched to the bridge's hook: packets
/// to the host or the subnet, extension headers and fragments (whose
/// first fragment the bridge's hook remembers).
#[inline(always)]
pub fn endpoint_ingress(ctx: &TcContext, cfg: &Config) -> Option<Result<Outcome, Reason>> {
    let net = NET6.get(0)?;
    if !net.configured() || !net.masquerades() {
        return None;
    }
    let next: u8 = load(ctx, IP6_NEXT_HEADER).ok()?;
    if !matches!(next, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6) {
        return None;
    }
    let daddr = load(ctx, IP6_DADDR).ok()?;
    if daddr == net.gateway || net.contains(&daddr) {
        return None;
    }
    let pkt = fresh_packet6()?;
    pkt.key.daddr = daddr;
    if to_host(ctx, net, HOOK_BRIDGE_INGRESS, &daddr) {
        return None;
    }
    let reason = out_uplink(ctx, cfg, HOOK_BRIDGE_INGRESS);
    // Asked again: `out_uplink` wrote the room through its own reference.
    let action = packet6()?.action;
    if action != TC_ACT_UNSPEC {
        return Some(Ok(Outcome { reason, action }));
    }
    reason.is_drop().then_some(Err(reason))
}

/// Fast path in: a tracked packet translated towards a container goes
/// straight into it, as IPv4's does (`redirect::into_container6`). New
/// flows' first packets take the stack, as do ICMPv6 errors and what the
/// fast path does not carry.
#[inline(always)]
fn deliver_in(ctx: &TcContext, cfg: &Config) -> i32 {
    let Some(pkt) = PACKET6.get(0) else {
        return TC_ACT_UNSPEC;
    };
    if !fast_path_carries(cfg, pkt.nat) {
        return TC_ACT_UNSPEC;
    }
    redirect::into_container6(ctx, &pkt.xlat.daddr, cfg).unwrap_or(TC_ACT_UNSPEC)
}

/// The reason an IPv6 frame (`parse::parse` read its ethertype) gets on
/// `hook`, translated or not; a redirect the fast path chose is left in
/// `Packet6::action`.
#[inline(always)]
fn on_hook(ctx: &TcContext, cfg: &Config, hook: u8) -> Reason {
    let Some(net) = NET6.get(0) else {
        return Reason::PassIpv6;
    };
    if !net.configured() {
        return Reason::PassIpv6;
    }
    let Some(pkt) = packet6() else {
        return Reason::PassIpv6;
    };
    // Each address is read once (an unaligned 16-byte read is some forty
    // instructions): the destination here, which every hook picks its path
    // by; the source by uplink egress, which needs it for that, or else by
    // `parse`. Both stay in `pkt.key`.
    let Ok(daddr) = load(ctx, IP6_DADDR) else {
        return Reason::DropTruncated;
    };
    pkt.key.daddr = daddr;
    let reason = match hook {
        HOOK_UPLINK_INGRESS => uplink_ingress(ctx, cfg, net, hook, &daddr),
        HOOK_UPLINK_EGRESS => uplink_egress(ctx, cfg, net, hook, &daddr),
        _ => bridge_ingress(ctx, cfg, net, hook, &daddr),
    };
    if pkt.parsed != 0 && pkt.frag == FRAG_FIRST {
        let translated = matches!(
            reason,
            Reason::Translated
                | Reason::SnatNew
                | Reason::DnatNew
                | Reason::HairpinNew
                | Reason::DirectNew
        );
        remember_in(&FRAGMENTS6, &frag_key(pkt, hook), &pkt.key, translated);
    }
    reason
}

/// The datagram a fragment belongs to, as `hook` saw it.
#[inline(always)]
fn frag_key(pkt: &Packet6, hook: u8) -> FragKey6 {
    FragKey6 {
        saddr: pkt.key.saddr,
        daddr: pkt.key.daddr,
        id: pkt.frag_id,
        proto: pkt.key.proto,
        hook,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn uplink_ingress(ctx: &TcContext, cfg: &Config, net: &Net6, hook: u8, daddr: &[u32; 4]) -> Reason {
    // The reply of a masquerade flow goes back to its container, a new
    // connection to a published port to its target; anything else to the
    // uplink's address is the host's.
    if net.masquerades() && *daddr == net.uplink {
        if is_icmp_error(ctx) {
            return translate_error(ctx, cfg, false);
        }
        return match translate_tracked(ctx, cfg, hook) {
            NOT_TRACKED => publish(ctx, cfg, net, NAT_DNAT),
            r => r,
        };
    }
    if !net.contains(daddr) {
        // Another address of the host's: a port published on it alone.
        if net.masquerades() && net.one_address_mappings != 0 {
            return match translate_tracked(ctx, cfg, hook) {
                NOT_TRACKED => publish(ctx, cfg, net, NAT_DNAT),
                r => r,
            };
        }
        return Reason::PassIpv6;
    }
    if mode(cfg, CFG_INTERNAL) {
        Reason::DropInternal
    } else if mode(cfg, CFG_ALLOW_DIRECT_ROUTING) {
        // Tracked untranslated, so that the container's replies are not
        // taken for new masquerade flows.
        match translate_tracked(ctx, cfg, hook) {
            NOT_TRACKED => open_flow(ctx, cfg, net, NAT_NONE, |_| {}),
            r => r,
        }
    } else {
        Reason::DropDirectRouting
    }
}

/// A container's packet leaving through the uplink: translated if its
/// flow is tracked, else the first of a new masquerade flow. The host's
/// own traffic goes to `host_egress`; a container's to another of the
/// host's links leaves untranslated.
#[inline(always)]
fn uplink_egress(ctx: &TcContext, cfg: &Config, net: &Net6, hook: u8, daddr: &[u32; 4]) -> Reason {
    if !net.masquerades() || mode(cfg, CFG_ROUTED) || mode(cfg, CFG_INTERNAL) {
        return Reason::PassIpv6;
    }
    let Ok(saddr) = load(ctx, IP6_SADDR) else {
        return Reason::DropTruncated;
    };
    let from_host = saddr == net.uplink;
    if !from_host && (!net.contains(&saddr) || net.contains(daddr)) {
        return Reason::PassIpv6;
    }
    let Some(pkt) = packet6() else {
        return Reason::DropRewrite;
    };
    pkt.key.saddr = saddr;
    if from_host {
        // Without a socket, the fast path translated it on the bridge and
        // redirected it here (the stack never forwards a packet with a
        // source of its own): nothing to do, and not the host's flow, as
        // for IPv4 (`hooks::uplink_egress`). To the host's own address, no
        // flow leaves (only a test's frame carries one out of a link).
        if !skb::sent_by_this_host(ctx) || *daddr == net.uplink {
            return Reason::PassIpv6;
        }
        return host_egress(ctx, cfg, net, hook);
    }
    if is_icmp_error(ctx) {
        return translate_error(ctx, cfg, true);
    }
    let tracked = translate_tracked(ctx, cfg, hook);
    if tracked != NOT_TRACKED {
        return tracked;
    }
    let opened = open_flow(ctx, cfg, net, NAT_SNAT, |_| {});
    profile::mark(SEG_INSERT);
    if opened != Reason::SnatNew {
        return opened;
    }
    translate_opened(ctx, opened)
}

/// The host's own packet from the uplink's IPv6 address, as IPv4's
/// (`hooks::uplink_egress`): translated if its flow was tracked and moved
/// off a tuple a container's flow held (`NAT_HOST`); tracked when it opens
/// a flow that must be (`nat::host_flow_wanted`); otherwise, and for the
/// host's own errors, left as it is. Its source port is the first test, so
/// the host's other traffic makes no lookup.
#[inline(always)]
fn host_egress(ctx: &TcContext, cfg: &Config, net: &Net6, hook: u8) -> Reason {
    if is_icmp_error(ctx) {
        return Reason::PassIpv6;
    }
    let Ok(pkt) = parse(ctx, hook) else {
        return Reason::PassIpv6;
    };
    if !uplink_ports::may_be_ours(pkt.key.proto, pkt.key.sport) {
        return Reason::PassIpv6;
    }
    let tracked = translate_tracked(ctx, cfg, hook);
    if tracked != NOT_TRACKED {
        return tracked;
    }
    if pkt.frag == FRAG_LATER || !crate::nat::host_flow_wanted(&pkt.key, pkt.tcp_flags, cfg, now())
    {
        return Reason::PassIpv6;
    }
    let opened = open_flow(ctx, cfg, net, NAT_HOST, |_| {});
    if opened != Reason::HostFlowNew || pkt.xlat == pkt.key {
        return opened;
    }
    translate_opened(ctx, opened)
}

/// A new connection to a published port on the uplink's IPv6 address:
/// `-p HOSTPORT:PORT` without a host IP publishes on both families, as
/// Docker does (`-p [::]:...` on IPv6 alone, `-p 0.0.0.0:...` on IPv4
/// alone); `-p [ADDR6]:...` on that address alone, the uplink's or another
/// of the host's. The mapping's container is reached at its IPv6 address.
/// From beyond the uplink (`NAT_DNAT`) not while `netbr firewall` has
/// rules: they are IPv4 blocks, and a port they restrict
/// must not open to every IPv6 client. From a container on the bridge
/// (`NAT_HAIRPIN`) the source becomes the gateway as well, so the target's
/// replies come back through the bridge to be translated.
#[inline(always)]
fn publish(ctx: &TcContext, cfg: &Config, net: &Net6, nat: u8) -> Reason {
    if nat == NAT_DNAT && cfg.firewall_entries != 0 {
        return Reason::PassIpv6;
    }
    let Some(pkt) = packet6() else {
        return Reason::DropRewrite;
    };
    if pkt.key.proto != IPPROTO_TCP && pkt.key.proto != IPPROTO_UDP {
        return Reason::PassIpv6;
    }
    // A link-local source is never translated (as Docker 28 excludes
    // fe80::/10): its replies could not be routed off its link.
    if is_link_local(&pkt.key.saddr) {
        return Reason::PassIpv6;
    }
    let on_uplink = pkt.key.daddr == net.uplink;
    let Some(mapping) =
        crate::nat::mapped6(net, pkt.key.proto, &pkt.key.daddr, pkt.key.dport, on_uplink)
    else {
        return Reason::PassIpv6;
    };
    let port = mapping.port;
    // SAFETY: read-only copy out of the map value.
    let Some(target) = (unsafe { ENDPOINTS6.get(&mapping.addr) }).copied() else {
        return Reason::PassIpv6;
    };
    let gateway = net.gateway;
    let opened = open_flow(ctx, cfg, net, nat, |xlat| {
        xlat.daddr = target;
        xlat.dport = port;
        if nat == NAT_HAIRPIN {
            xlat.saddr = gateway;
        }
    });
    if opened != Reason::DnatNew && opened != Reason::HairpinNew {
        return opened;
    }
    translate_opened(ctx, opened)
}

/// Bridge-device ingress: a container's packet to a published port on the
/// uplink's IPv6 address (hairpin), and the replies of such flows, which
/// the target sends to the gateway. Both are translated here and go on
/// through the host stack to the other container; anything else is left
/// to the stack as it is.
#[inline(always)]
fn bridge_ingress(ctx: &TcContext, cfg: &Config, net: &Net6, hook: u8, daddr: &[u32; 4]) -> Reason {
    if !net.masquerades() {
        return Reason::PassIpv6;
    }
    let to_host = to_host(ctx, net, hook, daddr);
    if !to_host && *daddr != net.gateway {
        // Leaving beyond the host: with the fast path, a tracked flow's
        // packet goes out of the uplink from here.
        if mode(cfg, CFG_FAST_PATH) && !net.contains(daddr) {
            return out_uplink(ctx, cfg, hook);
        }
        return Reason::PassIpv6;
    }
    match translate_tracked(ctx, cfg, hook) {
        NOT_TRACKED if to_host => publish(ctx, cfg, net, NAT_HAIRPIN),
        NOT_TRACKED => Reason::PassIpv6,
        r => r,
    }
}

/// Whether a container's packet to `daddr` is for the host: its uplink
/// address, or a port published on one address alone.
#[inline(always)]
fn to_host(ctx: &TcContext, net: &Net6, hook: u8, daddr: &[u32; 4]) -> bool {
    *daddr == net.uplink
        || (net.one_address_mappings != 0
            && !net.contains(daddr)
            && one_address_published(ctx, net, hook))
}

/// Fast path out: a container's packet of a tracked flow (masquerade, a
/// published port's reply) is translated on bridge ingress and sent out of
/// the uplink when the routing table sends it there, its hop limit
/// decremented, as IPv4's is (`hooks::bridge_tracked`); the verdict goes
/// to `Packet6::action`. Otherwise it is left untouched to the stack
/// (`PassIpv6`), which forwards it to uplink egress: a new flow (opened
/// there), another route, a hop limit about to expire, or a packet too big
/// for the uplink (the stack sends Packet Too Big; IPv6 is never
/// fragmented on the way).
#[inline(never)]
fn out_uplink(ctx: &TcContext, cfg: &Config, hook: u8) -> Reason {
    let pkt = match parse(ctx, hook) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let now = now();
    let Some(flow) = conntrack::lookup(&pkt.key, cfg, now) else {
        return Reason::PassIpv6;
    };
    // SAFETY: map value pointer from `lookup`.
    let (xlat, nat) = unsafe { ((*flow.entry).xlat, (*flow.entry).nat) };
    if nat == NAT_HAIRPIN || !fast_path_carries(cfg, nat) {
        return Reason::PassIpv6;
    }
    let Some(hop) = redirect::route_out6(ctx, &xlat, pkt.len, pkt.sport_off, cfg) else {
        return Reason::PassIpv6;
    };
    if let Err(r) = rewrite(ctx, pkt, &xlat) {
        return r;
    }
    if let Err(r) = conntrack::account(&flow, &pkt.key, pkt.tcp_flags, pkt.len, cfg, now) {
        return r;
    }
    match redirect::out_uplink(ctx, hop, cfg) {
        Ok(action) => {
            pkt.action = action;
            Reason::Translated
        }
        Err(r) => r,
    }
}

/// Whether a container's packet goes to a port published on one IPv6
/// address alone (hairpin through it). Asked before any conntrack lookup:
/// on bridge ingress a masquerade flow's packets must not be looked up,
/// they are translated on the uplink. A BPF function of its own, so that
/// the parse it makes is not inlined twice.
#[inline(never)]
fn one_address_published(ctx: &TcContext, net: &Net6, hook: u8) -> bool {
    let Ok(pkt) = parse(ctx, hook) else {
        return false;
    };
    crate::nat::mapped6(net, pkt.key.proto, &pkt.key.daddr, pkt.key.dport, false).is_some()
}

/// Opens a flow of kind `nat` (`NAT_SNAT`; `NAT_DNAT` or `NAT_HAIRPIN`,
/// whose translation `to` sets; `NAT_NONE` for a directly routed one;
/// `NAT_HOST` for the host's own) for
/// the packet `translate_tracked` parsed and found no flow for: the kind's
/// `*New` reason, or why not.
#[inline(always)]
fn open_flow(
    ctx: &TcContext,
    cfg: &Config,
    net: &Net6,
    nat: u8,
    to: impl FnOnce(&mut FlowKey6),
) -> Reason {
    let Some(pkt) = packet6() else {
        return Reason::DropRewrite;
    };
    // An echo reply answers someone else's request: not a flow to open.
    if pkt.key.proto == IPPROTO_ICMPV6 && pkt.key.sport == 0 {
        return Reason::PassIpv6;
    }
    pkt.xlat = pkt.key;
    if nat == NAT_SNAT {
        pkt.xlat.saddr = net.uplink;
    }
    to(&mut pkt.xlat);
    new_flow(ctx, pkt, cfg, nat, crate::collector::new_flow_clock())
}

/// Rewrites the packet into the translation of the flow `open_flow` just
/// opened for it, which said `opened`: `opened`, or why the rewrite failed.
#[inline(always)]
fn translate_opened(ctx: &TcContext, opened: Reason) -> Reason {
    let Some(pkt) = packet6() else {
        return Reason::DropRewrite;
    };
    let xlat = pkt.xlat;
    let reason = match rewrite(ctx, pkt, &xlat) {
        Ok(()) => opened,
        Err(r) => r,
    };
    profile::mark(SEG_REWRITE);
    reason
}

/// `translate_tracked`'s answer for a packet of no flow: the packet is
/// parsed (into `PACKET6`) and untouched.
const NOT_TRACKED: Reason = Reason::PassNoMatch;

/// Parses the packet and translates it if a flow tracks it (the same
/// conntrack code as IPv4's): `Translated`, `NOT_TRACKED`, or why not. A
/// BPF function of its own, returning a bare reason, as the IPv4
/// translators do (`hooks::translate_tracked_packed`), so that its frame
/// and a new flow's are siblings under the hook's.
#[inline(never)]
fn translate_tracked(ctx: &TcContext, cfg: &Config, hook: u8) -> Reason {
    let pkt = match parse(ctx, hook) {
        Ok(p) => p,
        Err(r) => return r,
    };
    profile::mark(SEG_PARSE);
    let now = now();
    profile::mark(SEG_CLOCK);
    let found = conntrack::lookup(&pkt.key, cfg, now);
    profile::mark(SEG_LOOKUP);
    let Some(flow) = found else {
        return NOT_TRACKED;
    };
    // SAFETY: map value pointer from `lookup`.
    let (xlat, nat) = unsafe { ((*flow.entry).xlat, (*flow.entry).nat) };
    if let Err(r) = rewrite(ctx, pkt, &xlat) {
        return r;
    }
    profile::mark(SEG_REWRITE);
    // For the fast path in (`deliver_in`).
    pkt.xlat = xlat;
    pkt.nat = nat;
    let reason = match conntrack::account(&flow, &pkt.key, pkt.tcp_flags, pkt.len, cfg, now) {
        Ok(()) => Reason::Translated,
        Err(r) => r,
    };
    profile::mark(SEG_ACCOUNT);
    reason
}

/// Whether the packet is an ICMPv6 error (destination unreachable, packet
/// too big, time exceeded, parameter problem: types 1 to 4, RFC 4443).
#[inline(always)]
fn is_icmp_error(ctx: &TcContext) -> bool {
    let (Ok(next), Ok(kind)) = (load::<u8>(ctx, IP6_NEXT_HEADER), load::<u8>(ctx, L4)) else {
        return false;
    };
    next == IPPROTO_ICMPV6 && (1..=4).contains(&kind)
}

/// The quoted packet's IPv6 header, behind the error's 8-byte header.
const QUOTED: usize = L4 + 8;
const QUOTED_SADDR: usize = QUOTED + 8;
const QUOTED_DADDR: usize = QUOTED + 24;
const QUOTED_L4: usize = QUOTED + 40;

/// Translates an ICMPv6 error about a packet netbr translated, both ways.
/// From beyond the uplink (`outbound` false), about a packet that left
/// translated (a masqueraded one, a published port's reply): the outer
/// destination, the quoted source and its port (or echo identifier)
/// become the container's, so a router's Packet Too Big lowers the
/// container's path MTU and its Time Exceeded reaches traceroute. From a
/// container (`outbound`), about a packet that reached it translated (a
/// published port's, a masquerade flow's reply): the outer source, the
/// quoted destination and its port become the host's, as the peer sent
/// them, so its port unreachable or Packet Too Big makes sense there. The
/// flow is the one a packet travelling like the error belongs to (the
/// quoted tuple reversed). ICMPv6's checksum covers the outer
/// pseudo-header and the quoted bytes alike, so each change is folded into
/// it; the quoted packet's own L4 checksum covers data the error does not
/// carry and is left alone, as for IPv4. Errors do not advance the flow's
/// state.
#[inline(never)]
fn translate_error(ctx: &TcContext, cfg: &Config, outbound: bool) -> Reason {
    let Some(pkt) = packet6() else {
        return Reason::DropRewrite;
    };
    let (Ok(proto), Ok(saddr), Ok(daddr)) = (
        load::<u8>(ctx, QUOTED + 6),
        load::<[u32; 4]>(ctx, QUOTED_SADDR),
        load::<[u32; 4]>(ctx, QUOTED_DADDR),
    ) else {
        return Reason::DropTruncated;
    };
    pkt.key.saddr = daddr;
    pkt.key.daddr = saddr;
    pkt.key.proto = proto;
    crate::zeroing::clear_pad(&mut pkt.key);
    // Where the quoted packet's source port (or echo identifier) sits.
    let sport_off = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let Ok(ports) = load::<[u16; 2]>(ctx, QUOTED_L4) else {
                return Reason::DropTruncated;
            };
            pkt.key.sport = ports[1];
            pkt.key.dport = ports[0];
            QUOTED_L4
        }
        // A container's error about an echo (its reply would be the
        // answer) has no flow to follow.
        IPPROTO_ICMPV6 if !outbound => {
            let (Ok(kind), Ok(id)) = (load::<u8>(ctx, QUOTED_L4), load::<u16>(ctx, QUOTED_L4 + 4))
            else {
                return Reason::DropTruncated;
            };
            if kind != ICMPV6_ECHO_REQUEST {
                return Reason::PassIpv6;
            }
            pkt.key.sport = 0;
            pkt.key.dport = id;
            QUOTED_L4 + 4
        }
        _ => return Reason::PassIpv6,
    };
    let Some(flow) = conntrack::lookup(&pkt.key, cfg, now()) else {
        return Reason::PassIpv6;
    };
    // SAFETY: map value pointer from `lookup`.
    let xlat = unsafe { (*flow.entry).xlat };
    // Inbound, the destination side changes: the outer destination and
    // the quoted source; outbound, the source side: the outer source and
    // the quoted destination, whose port follows the source port's.
    let (outer, quoted, port_at, old, new, old_port, new_port) = if outbound {
        let at = sport_off + 2;
        (
            IP6_SADDR,
            QUOTED_DADDR,
            at,
            pkt.key.saddr,
            xlat.saddr,
            pkt.key.sport,
            xlat.sport,
        )
    } else {
        let at = sport_off;
        (
            IP6_DADDR,
            QUOTED_SADDR,
            at,
            pkt.key.daddr,
            xlat.daddr,
            pkt.key.dport,
            xlat.dport,
        )
    };
    let addr = <[u32; 4] as AddrField>::diff(old, new);
    let port = crate::csum::diff16(old_port, new_port);
    const ICMP_CSUM: usize = L4 + 2;
    let fixed = ctx
        .l4_csum_replace(ICMP_CSUM, 0, addr as u64, BPF_F_PSEUDO_HDR as u64)
        .and_then(|_| ctx.l4_csum_replace(ICMP_CSUM, 0, (addr + port) as u64, 0));
    if fixed.is_err()
        || skb::write(ctx, outer, &new).is_err()
        || skb::write(ctx, quoted, &new).is_err()
        || skb::write(ctx, port_at, &new_port).is_err()
    {
        return Reason::DropRewrite;
    }
    Reason::IcmpErrorTranslated
}

/// Opens a flow translated to `pkt.xlat`. A masquerade flow's source
/// port is kept when free and outside the host's ephemeral range, else
/// drawn from the SNAT range; the other kinds keep theirs. The claim of
/// the reply tuple is IPv4's (`conntrack::claim_reply`), with its reuse of
/// finished flows' tuples. A BPF function of its own, returning a bare
/// reason (`SnatNew`, `DnatNew` or `DirectNew` when opened).
#[inline(never)]
fn new_flow(ctx: &TcContext, pkt: &mut Packet6, cfg: &Config, nat: u8, now: u64) -> Reason {
    if let Err(r) = conntrack::admit::<[u32; 4]>(now) {
        return r;
    }
    let state = initial_state(pkt.key.proto, pkt.tcp_flags);
    let reply = match conntrack::reply_entry(&pkt.key, nat, state, now) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let own = u16::from_be(pkt.key.sport);
    let may_keep = may_keep_port(own, cfg.host_port_min, cfg.host_port_max);
    // The flows whose source changes may have to move to another port; the
    // host's own keeps its port unless a container's flow holds the tuple.
    let searches = nat == NAT_SNAT || nat == NAT_HAIRPIN || nat == NAT_HOST;
    let (opened, keep) = match nat {
        NAT_SNAT => (Reason::SnatNew, may_keep),
        NAT_HAIRPIN => (Reason::HairpinNew, may_keep),
        NAT_HOST => (Reason::HostFlowNew, true),
        NAT_DNAT => (Reason::DnatNew, true),
        _ => (Reason::DirectNew, true),
    };
    // SAFETY: the helper has no preconditions.
    let seed = unsafe { bpf_get_prandom_u32() };
    for attempt in 0..=SNAT6_ATTEMPTS {
        let port = match attempt {
            0 if keep => own,
            0 => continue,
            // Only masquerade picks another port; the rest keep theirs.
            _ if !searches => break,
            n => snat_candidate(seed, n - 1, cfg.snat_port_min, cfg.snat_port_max),
        };
        pkt.xlat.sport = port.to_be();
        pkt.reply_key = pkt.xlat.reversed();
        // A port a host socket takes the peer's replies on is the host's.
        if nat == NAT_SNAT && host_holds(ctx, pkt) {
            continue;
        }
        if claim(pkt, reply, cfg, now) {
            // The ports the flow's packets meet the uplink on, marked
            // before the flow is complete (`uplink_ports`), as IPv4's.
            if nat != NAT_HAIRPIN {
                uplink_ports::mark_flow(pkt.xlat.proto, pkt.xlat.sport);
            }
            if nat == NAT_HOST {
                uplink_ports::mark_flow(pkt.key.proto, pkt.key.sport);
            }
            return match conntrack::insert_orig(&pkt.key, &pkt.xlat, reply, pkt.len) {
                Ok(()) => opened,
                Err(r) => r,
            };
        }
    }
    if !searches {
        return Reason::DropCtInsert;
    }
    crate::events::log(Reason::DropSnatExhausted, 0, now);
    Reason::DropSnatExhausted
}

/// Whether a host socket would take what the peer sends back to
/// `pkt.xlat`'s source (`nat::host_socket_takes`), as IPv4's port search
/// asks: a BPF function of its own, so its tuple stays off the search's
/// frame.
#[inline(never)]
fn host_holds(ctx: &TcContext, pkt: &mut Packet6) -> bool {
    let x = pkt.xlat;
    pkt.sock_tuple = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
        saddr: x.daddr,
        daddr: x.saddr,
        sport: x.dport,
        dport: x.sport,
    };
    // SAFETY: the program's context.
    unsafe { crate::nat::host_socket_takes(ctx.skb.skb, x.proto, &mut pkt.sock_tuple) }
}

/// `conntrack::claim_reply` of `pkt.reply_key` in a BPF function of its
/// own: inlined into the search's loop, its lookups' tuples would sit in
/// the loop's frame on top of the hook's.
#[inline(never)]
fn claim(pkt: &Packet6, reply: &CtEntry6, cfg: &Config, now: u64) -> bool {
    conntrack::claim_reply(&pkt.reply_key, reply, cfg, now)
}

/// Whether `addr` (as a tuple holds it) is in fe80::/10.
#[inline(always)]
fn is_link_local(addr: &[u32; 4]) -> bool {
    u32::from_be(addr[0]) & 0xffc0_0000 == 0xfe80_0000
}

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, Reason> {
    skb::read::<T>(ctx, off).map_err(|_| Reason::DropTruncated)
}

/// Extension headers the walk steps over (RFC 8200 4.1), and the fragment
/// header it reads.
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_DEST_OPTS: u8 = 60;
/// At most this many extension headers are walked; a packet with more is
/// left to the stack untouched, as is one whose transport header would
/// start past `L4_LAST` (the verifier's bound on packet offsets).
const EXT_HEADERS_MAX: usize = 4;
const L4_LAST: usize = 0x1ff - 20;

/// Parses a TCP, UDP or ICMPv6 echo packet, walking the extension headers
/// before its transport header, into per-CPU room. A later fragment's
/// ports come from its first fragment, as this hook saw it
/// (`frag::recall_in`). `Err(PassIpv6)` for anything else. The destination
/// is the one `run` read, and on uplink egress the source too. Parsed
/// once: a path that asked a table before translating (the host's own
/// packets, a port on one address) finds the packet parsed.
#[inline(always)]
fn parse(ctx: &TcContext, hook: u8) -> Result<&'static mut Packet6, Reason> {
    let pkt = packet6().ok_or(Reason::DropRewrite)?;
    if pkt.parse_done != 0 {
        return Ok(pkt);
    }
    if hook != HOOK_UPLINK_EGRESS {
        pkt.key.saddr = load(ctx, IP6_SADDR)?;
    }
    let payload_len: u16 = load(ctx, IP6_PAYLOAD_LEN)?;
    let mut next: u8 = load(ctx, IP6_NEXT_HEADER)?;
    crate::zeroing::clear_pad(&mut pkt.key);
    pkt.len = IP6_HEADER + u16::from_be(payload_len) as u32;
    pkt.tcp_flags = 0;
    pkt.csum_flags = 0;
    pkt.frag = FRAG_NONE;
    pkt.frag_id = 0;
    let mut off = L4;
    for _ in 0..EXT_HEADERS_MAX {
        match next {
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                let h: [u8; 2] = load(ctx, off)?;
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            EXT_FRAGMENT => {
                let f: [u8; 8] = load(ctx, off)?;
                next = f[0];
                let offset_and_more = u16::from_be_bytes([f[2], f[3]]);
                pkt.frag_id = u32::from_ne_bytes([f[4], f[5], f[6], f[7]]);
                pkt.frag = if offset_and_more & 0xfff8 != 0 {
                    FRAG_LATER
                } else if offset_and_more & 1 != 0 {
                    FRAG_FIRST
                } else {
                    // An atomic fragment: the whole datagram.
                    FRAG_NONE
                };
                off += 8;
            }
            _ => break,
        }
        if off > L4_LAST {
            return Err(Reason::PassIpv6);
        }
    }
    pkt.key.proto = next;
    pkt.parsed = 1;
    if pkt.frag == FRAG_LATER {
        if next != IPPROTO_TCP && next != IPPROTO_UDP && next != IPPROTO_ICMPV6 {
            return Err(Reason::PassIpv6);
        }
        let key = frag_key(pkt, hook);
        recall_in(&FRAGMENTS6, &key, &mut pkt.key)?;
        pkt.parse_done = 1;
        return Ok(pkt);
    }
    match next {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: [u16; 2] = load(ctx, off)?;
            pkt.key.sport = ports[0];
            pkt.key.dport = ports[1];
            pkt.sport_off = off;
            pkt.dport_off = off + 2;
            if next == IPPROTO_TCP {
                pkt.tcp_flags = load(ctx, off + 13)?;
                pkt.csum_off = off + 16;
            } else {
                pkt.csum_off = off + 6;
                pkt.csum_flags = BPF_F_MARK_MANGLED_0 as u64;
            }
        }
        IPPROTO_ICMPV6 => {
            let kind: u8 = load(ctx, off)?;
            let id: u16 = load(ctx, off + 4)?;
            (pkt.key.sport, pkt.key.dport) = match kind {
                ICMPV6_ECHO_REQUEST => (id, 0),
                ICMPV6_ECHO_REPLY => (0, id),
                _ => return Err(Reason::PassIpv6),
            };
            pkt.sport_off = off + 4;
            pkt.dport_off = off + 4;
            pkt.csum_off = off + 2;
        }
        _ => return Err(Reason::PassIpv6),
    }
    pkt.parse_done = 1;
    Ok(pkt)
}
