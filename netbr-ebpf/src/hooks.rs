//! What each attach point does. A hook returns an [`Outcome`] (the counter
//! reason and the verdict) or an `Err` reason: drops become `TC_ACT_SHOT`,
//! the rest pass untouched.
//!
//! Destination rewrites happen at ingress (before routing) and source
//! rewrites at egress (after it), as netfilter does them in PREROUTING and
//! POSTROUTING: the host stack must never route a packet whose source is one
//! of its own addresses (a martian) or whose destination is not yet final.
//! Hairpin flows change both at once on the bridge device, so they bypass
//! routing with a redirect.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use netbr_common::{
    conntrack::{FlowKey, NAT_HAIRPIN, NAT_SNAT},
    counters::Reason,
    maps::{
        Config, CFG_ALLOW_DIRECT_ROUTING, CFG_FAST_PATH, CFG_INTERNAL, CFG_NO_MASQUERADE,
        CFG_ROUTED, HOOK_UPLINK_EGRESS, HOOK_UPLINK_INGRESS,
    },
    profile::{SEG_ACCOUNT, SEG_ADMIT, SEG_CLOCK, SEG_INSERT, SEG_LOOKUP, SEG_PARSE, SEG_REWRITE},
};

use crate::{
    collector,
    conntrack::{self, now},
    firewall, frag,
    maps::{CONFIG, LOCAL_ADDRS, PACKET},
    modes::{fast_path_carries, mode},
    nat,
    parse::{parse, Packet, FRAG_LATER, FRAG_NONE},
    profile,
    redirect::{self, NextHop},
    rewrite::{icmp_error, rewrite},
    uplink_ports,
};

pub struct Outcome {
    pub reason: Reason,
    pub action: i32,
}

impl Outcome {
    /// Translated or not, the packet continues through the stack.
    fn pass(reason: Reason) -> Self {
        Self {
            reason,
            action: TC_ACT_UNSPEC,
        }
    }
}

#[inline(always)]
fn config() -> Result<&'static Config, Reason> {
    match CONFIG.get(0) {
        Some(cfg) if cfg.configured != 0 => Ok(cfg),
        _ => Err(Reason::PassNotConfigured),
    }
}

/// Translates a packet of a tracked flow on an uplink hook (every kind but
/// hairpin flows, which are the bridge's: `bridge_tracked`); returns the
/// container the fast path may deliver it to (`fast_target`), or
/// `NOT_TRACKED` if the packet belongs to no such flow.
#[inline(always)]
fn translate_tracked(ctx: &TcContext, pkt: &Packet, cfg: &Config) -> Result<u32, Reason> {
    let packed = translate_tracked_packed(ctx, pkt, cfg);
    match (packed >> 32) as usize {
        0 => Ok(packed as u32),
        r => Err(Reason::ALL
            .get(r - 1)
            .copied()
            .unwrap_or(Reason::DropRewrite)),
    }
}

/// `translate_flow` as a BPF function of its own: its stack frame then
/// does not add to the SNAT port search's, which must fit beside it in 512
/// bytes. It returns its answer packed in a scalar (the target in the low
/// half, a failure's reason plus one in the high half): with `Option<u32>`
/// the `None` path left the payload's register unwritten ("R9 pointer
/// arithmetic with <<= operator prohibited"), and a `Result` returned
/// through the caller's stack left that stack's address in R0 at exit
/// ("cannot return stack pointer to the caller"). It reads the clock
/// itself: BPF functions take at most five arguments.
#[inline(never)]
fn translate_tracked_packed(ctx: &TcContext, pkt: &Packet, cfg: &Config) -> u64 {
    match translate_flow(ctx, pkt, cfg) {
        Ok(target) => target as u64,
        Err(r) => (r as u64 + 1) << 32,
    }
}

#[inline(always)]
fn translate_flow(ctx: &TcContext, pkt: &Packet, cfg: &Config) -> Result<u32, Reason> {
    profile::mark(SEG_PARSE);
    let now = now();
    profile::mark(SEG_CLOCK);
    let found = conntrack::lookup(&pkt.key, cfg, now);
    profile::mark(SEG_LOOKUP);
    let Some(flow) = found else {
        return Ok(NOT_TRACKED);
    };
    // SAFETY: map value pointer from `lookup`.
    let (xlat, nat) = unsafe { ((*flow.entry).xlat, (*flow.entry).nat) };
    if nat == NAT_HAIRPIN {
        return Ok(NOT_TRACKED);
    }
    if pkt.is_icmp_error() {
        // Errors translate but do not advance the flow's state, and the
        // host stack delivers them.
        icmp_error(ctx, pkt, &xlat)?;
        return Ok(HOST_STACK);
    }
    rewrite(ctx, pkt, &xlat)?;
    profile::mark(SEG_REWRITE);
    conntrack::account(&flow, &pkt.key, pkt.tcp_flags, pkt.len, cfg, now)?;
    profile::mark(SEG_ACCOUNT);
    Ok(fast_target(cfg, pkt, &xlat, nat))
}

/// `fast_target`'s answer when the host stack delivers the packet.
const HOST_STACK: u32 = 0;
/// `translate_tracked`'s answer for a packet of no flow it translates
/// (255.255.255.255 is never a container's address).
const NOT_TRACKED: u32 = u32::MAX;

/// The container the fast path may deliver a translated packet from the
/// uplink to: the one its destination became, if the flow is the fast
/// path's to carry (`fast_path_carries`).
#[inline(always)]
fn fast_target(cfg: &Config, pkt: &Packet, xlat: &FlowKey, nat: u8) -> u32 {
    if !fast_path_carries(cfg, nat) || xlat.daddr == pkt.key.daddr {
        HOST_STACK
    } else {
        xlat.daddr
    }
}

fn translated(pkt: &Packet) -> Reason {
    if pkt.is_icmp_error() {
        Reason::IcmpErrorTranslated
    } else {
        Reason::Translated
    }
}

/// Runs one hook on a packet: parse, follow fragments, translate, and
/// remember first fragments for the ones that follow.
#[inline(always)]
pub fn run(ctx: &TcContext, hook: u8) -> Result<Outcome, Reason> {
    let cfg = config()?;
    // Index 0 of a one-entry array always exists.
    let pkt = PACKET.get_ptr_mut(0).ok_or(Reason::DropRewrite)?;
    // SAFETY: per-CPU map value, used by this packet only.
    let pkt = unsafe { &mut *pkt };
    match parse(ctx, pkt) {
        Err(Reason::PassIpv6) => return crate::ipv6::run(ctx, cfg, hook),
        r => r?,
    }
    if pkt.frag == FRAG_LATER {
        frag::recall(pkt, hook)?;
    }
    let outcome = match hook {
        HOOK_UPLINK_INGRESS => uplink_ingress(ctx, cfg, pkt),
        HOOK_UPLINK_EGRESS => uplink_egress(ctx, cfg, pkt),
        _ => bridge_ingress(ctx, cfg, pkt),
    };
    frag::remember(pkt, hook, outcome.is_ok());
    outcome
}

/// Uplink ingress: replies of masqueraded flows, and published ports.
#[inline(always)]
fn uplink_ingress(ctx: &TcContext, cfg: &Config, pkt: &Packet) -> Result<Outcome, Reason> {
    // The first test: a packet to a host port no flow and no mapping can
    // claim is the host's, with no lookup paid. The bridge's subnet is
    // always looked at (direct routing, routed mode), and so is an ICMP
    // error, whose tuple is the one it quotes.
    if !cfg.in_subnet(pkt.key.daddr)
        && !pkt.is_icmp_error()
        && !uplink_ports::may_be_ours(pkt.key.proto, pkt.key.dport)
    {
        return Err(Reason::PassNoMatch);
    }
    let target = translate_tracked(ctx, pkt, cfg)?;
    if target != NOT_TRACKED {
        return Ok(deliver_in(ctx, cfg, pkt, target, translated(pkt)));
    }
    if pkt.is_icmp_error() {
        return Err(nat::unmatched_icmp_error(pkt, cfg));
    }
    if !pkt.may_open_flow() {
        return Err(Reason::PassFragment);
    }
    let now = collector::new_flow_clock();
    if cfg.in_subnet(pkt.key.daddr) {
        if mode(cfg, CFG_INTERNAL) {
            return Err(Reason::DropInternal);
        }
        if !mode(cfg, CFG_ALLOW_DIRECT_ROUTING) && !(mode(cfg, CFG_ROUTED) && nat::routed_open(pkt))
        {
            return Err(Reason::DropDirectRouting);
        }
        nat::track_direct(pkt, cfg, now)?;
        return Ok(Outcome::pass(Reason::DirectNew));
    }
    let xlat = nat::published_flow(pkt).ok_or(Reason::PassNoMatch)?;
    // Here, not inside `dnat_new_flow`: beneath that function's frame the
    // firewall's would take the stack past 512 bytes.
    firewall::admit_in(cfg, pkt, &xlat)?;
    profile::mark(SEG_ADMIT);
    let xlat = nat::dnat_new_flow(pkt, &xlat, cfg, now)?;
    profile::mark(SEG_INSERT);
    rewrite(ctx, pkt, &xlat)?;
    profile::mark(SEG_REWRITE);
    Ok(deliver_in(ctx, cfg, pkt, xlat.daddr, Reason::DnatNew))
}

/// Uplink egress: replies of published-port flows, and masquerade.
#[inline(always)]
fn uplink_egress(ctx: &TcContext, cfg: &Config, pkt: &Packet) -> Result<Outcome, Reason> {
    // Already the uplink's source, yet no host socket sent it: the fast
    // path translated it on the bridge and redirected it here (the stack
    // never forwards a packet with a source of its own). Nothing to do, and
    // no lookups to pay for. This is also what keeps such a packet from
    // being taken for the host's own flow (`NAT_HOST`) that was moved off
    // the same tuple: past this point, the uplink's source means a host
    // socket.
    if pkt.key.saddr == cfg.uplink_addr && !crate::skb::sent_by_this_host(ctx) {
        return Err(Reason::PassNoMatch);
    }
    // The host's own packet from a port no set marks: no flow of it is
    // tracked, and no other flow (a masquerade flow's reply, a published
    // port's) holds its tuple (`NAT_HOST`).
    if pkt.key.saddr == cfg.uplink_addr
        && !pkt.is_icmp_error()
        && !uplink_ports::may_be_ours(pkt.key.proto, pkt.key.sport)
    {
        return Err(Reason::PassNoMatch);
    }
    if translate_tracked(ctx, pkt, cfg)? != NOT_TRACKED {
        return Ok(Outcome::pass(translated(pkt)));
    }
    // The host's own errors (and those of untracked traffic) leave as they
    // are; neither an error nor a later fragment opens a flow.
    if !pkt.may_open_flow() {
        return Err(Reason::PassNoMatch);
    }
    if pkt.key.saddr == cfg.uplink_addr {
        if !nat::host_flow_wanted(&pkt.key, pkt.tcp_flags, cfg, now()) {
            return Err(Reason::PassNoMatch);
        }
        let xlat = nat::host_new_flow(ctx, pkt, collector::new_flow_clock())?;
        if xlat != pkt.key {
            rewrite(ctx, pkt, &xlat)?;
        }
        return Ok(Outcome::pass(Reason::HostFlowNew));
    }
    if !nat::wants_snat(pkt, cfg) {
        return Err(Reason::PassNoMatch);
    }
    let now = collector::new_flow_clock();
    if leaves_untranslated(cfg, pkt) {
        // Tracked, so that its replies are known from direct routing.
        firewall::admit_out(cfg, pkt)?;
        nat::track_direct(pkt, cfg, now)?;
        return Ok(Outcome::pass(Reason::UntranslatedNew));
    }
    let xlat = nat::snat_new_flow(ctx, pkt, cfg, now)?;
    profile::mark(SEG_INSERT);
    rewrite(ctx, pkt, &xlat)?;
    profile::mark(SEG_REWRITE);
    Ok(Outcome::pass(Reason::SnatNew))
}

/// Whether a container's new flow out of the subnet keeps its source
/// address. Costs nothing while no destination is listed.
#[inline(always)]
fn leaves_untranslated(cfg: &Config, pkt: &Packet) -> bool {
    mode(cfg, CFG_NO_MASQUERADE) && nat::unmasqueraded(pkt.key.daddr)
}

/// An internal bridge's containers reach each other and the host's own
/// addresses (as Docker's internal networks drop only what the host would
/// forward), nothing beyond.
#[inline(always)]
fn internal_allows(cfg: &Config, pkt: &Packet) -> bool {
    // SAFETY: read-only lookup.
    cfg.in_subnet(pkt.key.daddr) || unsafe { LOCAL_ADDRS.get(&pkt.key.daddr) }.is_some()
}

/// Hands a packet translated on uplink ingress to the fast path when it is
/// on and the packet may go straight to container `target`; otherwise
/// (`HOST_STACK`) to the host stack.
#[inline(always)]
fn deliver_in(ctx: &TcContext, cfg: &Config, pkt: &Packet, target: u32, reason: Reason) -> Outcome {
    if mode(cfg, CFG_FAST_PATH) && !pkt.is_icmp_error() && target != HOST_STACK {
        if let Some(action) = redirect::into_container(ctx, target, cfg) {
            return Outcome { reason, action };
        }
    }
    Outcome::pass(reason)
}

/// Bridge-device ingress: traffic from containers entering the host stack.
/// Hairpin flows are translated here and redirected to the target's veth.
/// With the fast path, packets leaving through the uplink are translated
/// here and sent out directly, a new masquerade flow's first one included;
/// everything else is left to routing and the uplink. One conntrack lookup
/// per packet (`bridge_tracked`).
#[inline(always)]
fn bridge_ingress(ctx: &TcContext, cfg: &Config, pkt: &Packet) -> Result<Outcome, Reason> {
    if mode(cfg, CFG_INTERNAL) && !internal_allows(cfg, pkt) {
        return Err(Reason::DropInternal);
    }
    if container_to_container(cfg, pkt) {
        return Err(Reason::PassNoMatch);
    }
    let action = bridge_tracked(ctx, cfg, pkt)?;
    if action != NO_FLOW {
        return Ok(Outcome {
            reason: translated(pkt),
            action,
        });
    }
    if pkt.is_icmp_error() {
        return Err(Reason::PassNoMatch);
    }
    let hairpin = if pkt.may_open_flow() {
        nat::hairpin_new_flow(ctx, pkt, cfg, collector::new_flow_clock())?
    } else {
        None
    };
    if let Some(xlat) = hairpin {
        rewrite(ctx, pkt, &xlat)?;
        return Ok(Outcome {
            reason: Reason::HairpinNew,
            action: redirect::to_endpoint(ctx, xlat.daddr, cfg)?,
        });
    }
    if !mode(cfg, CFG_FAST_PATH) || !fast_path_carries(cfg, NAT_SNAT) {
        return Err(Reason::PassNoMatch);
    }
    let hop = fast_masquerade_route(ctx, cfg, pkt)?;
    let xlat = nat::snat_new_flow(ctx, pkt, cfg, collector::new_flow_clock())?;
    rewrite(ctx, pkt, &xlat)?;
    Ok(Outcome {
        reason: Reason::SnatNew,
        action: redirect::out_uplink(ctx, hop, cfg)?,
    })
}

/// Ingress of a container's host-side veth (`nb_ep_in`), with the fast
/// path: a packet of a flow `bridge_tracked` carries is translated and sent
/// on here, before the bridge. Each such packet then skips the bridge's
/// receive path and, with `br_netfilter` loaded (Docker hosts load it), the
/// netfilter hooks and the route lookup the bridge runs for every frame
/// addressed to the host: 15% of a masqueraded frame's kernel time in
/// `netbr bench --fwd` (docs/performance.md). Everything else, and a flow's
/// packet the fast path leaves to the stack, is `None`: untouched and
/// uncounted, for the bridge's hook, which decides as if this one did not
/// exist. So this hook opens no flow and never drops a packet the bridge
/// would have let by.
#[inline(always)]
pub fn endpoint_ingress(ctx: &TcContext) -> Option<Result<Outcome, Reason>> {
    let cfg = config().ok()?;
    if !mode(cfg, CFG_FAST_PATH) || mode(cfg, CFG_INTERNAL) {
        return None;
    }
    // Only frames the bridge would hand to the host, as its hook sees them.
    let dst_mac: [u8; 6] = crate::skb::read(ctx, 0).ok()?;
    if dst_mac != cfg.bridge_mac {
        return None;
    }
    // SAFETY: per-CPU map value, used by this packet only; the bridge's
    // hook parses again into it.
    let pkt = unsafe { &mut *PACKET.get_ptr_mut(0)? };
    match parse(ctx, pkt) {
        Ok(()) => {}
        Err(Reason::PassIpv6) => return crate::ipv6::endpoint_ingress(ctx, cfg),
        Err(_) => return None,
    }
    if pkt.frag != FRAG_NONE || container_to_container(cfg, pkt) {
        return None;
    }
    match bridge_tracked(ctx, cfg, pkt) {
        Ok(NO_FLOW) => None,
        Ok(action) => Some(Ok(Outcome {
            reason: translated(pkt),
            action,
        })),
        Err(r) if r.is_drop() => Some(Err(r)),
        Err(_) => None,
    }
}

/// A packet between two containers of the bridge, which both bridge hooks
/// leave alone without a lookup: no flow has such a tuple (a hairpin
/// flow's packets are addressed to a host address, its replies to the
/// gateway). An ICMP error may quote a flow's tuple, and routed mode
/// publishes at container addresses, so those are looked up.
#[inline(always)]
fn container_to_container(cfg: &Config, pkt: &Packet) -> bool {
    cfg.in_subnet(pkt.key.daddr)
        && pkt.key.daddr != cfg.gateway_addr
        && !pkt.is_icmp_error()
        && !mode(cfg, CFG_ROUTED)
}

/// `bridge_tracked`'s verdict for a packet of no flow the bridge acts on
/// at once: the caller goes on to open one.
const NO_FLOW: i32 = TC_ACT_UNSPEC;

/// A packet of a tracked flow on the bridge, with one conntrack lookup:
/// a hairpin flow's is translated and redirected to the target's veth; with
/// the fast path, a masquerade or published-port flow's is translated here
/// and sent out of the uplink when the routing table says so. Returns the
/// redirect verdict; `NO_FLOW` when no flow holds the packet (or, without
/// the fast path, only one the uplink translates); `Err(PassNoMatch)` when
/// a flow does but the packet must take the host stack (direct routing,
/// another route, a TTL about to expire, a packet too big for the uplink,
/// an ICMP error). A BPF function of its own, to keep its frame off the
/// others' stack. It returns a bare verdict: an `Option<Outcome>` left part
/// of its return value undefined on the `None` path, and the verifier
/// refused the resulting read of an unwritten register ("R9 !read_ok").
#[inline(never)]
fn bridge_tracked(ctx: &TcContext, cfg: &Config, pkt: &Packet) -> Result<i32, Reason> {
    let now = now();
    let Some(flow) = conntrack::lookup(&pkt.key, cfg, now) else {
        return Ok(NO_FLOW);
    };
    // SAFETY: map value pointer from `lookup`.
    let (xlat, nat) = unsafe { ((*flow.entry).xlat, (*flow.entry).nat) };
    if nat == NAT_HAIRPIN {
        if pkt.is_icmp_error() {
            // Errors translate but do not advance the flow's state.
            icmp_error(ctx, pkt, &xlat)?;
        } else {
            rewrite(ctx, pkt, &xlat)?;
            conntrack::account(&flow, &pkt.key, pkt.tcp_flags, pkt.len, cfg, now)?;
        }
        return redirect::to_endpoint(ctx, xlat.daddr, cfg);
    }
    if !mode(cfg, CFG_FAST_PATH) {
        return Ok(NO_FLOW);
    }
    if pkt.is_icmp_error() || !fast_path_carries(cfg, nat) {
        return Err(Reason::PassNoMatch);
    }
    let hop = redirect::route_out(ctx, &xlat, pkt.len, pkt.sport_off, cfg)?;
    rewrite(ctx, pkt, &xlat)?;
    conntrack::account(&flow, &pkt.key, pkt.tcp_flags, pkt.len, cfg, now)?;
    redirect::out_uplink(ctx, hop, cfg)
}

/// The fast path's masquerade: a container's new flow out of the uplink is
/// opened on bridge ingress rather than on uplink egress, so that not even
/// its first packet takes the host's forward path, where a firewall whose
/// forward policy is drop (Docker's own install sets one) would end it.
/// This decides whether the packet may go that way and how it leaves;
/// `Err(PassNoMatch)` leaves it to the host stack and the uplink, as without
/// the fast path. The flow is created by the caller: with the port search
/// beneath this function's frame, the stack exceeds 512 bytes.
#[inline(never)]
fn fast_masquerade_route(ctx: &TcContext, cfg: &Config, pkt: &Packet) -> Result<NextHop, Reason> {
    if !pkt.may_open_flow() || !nat::wants_snat(pkt, cfg) || leaves_untranslated(cfg, pkt) {
        return Err(Reason::PassNoMatch);
    }
    // The route is asked for before the flow exists: its source port does
    // not change the answer.
    let mut routed = pkt.key;
    routed.saddr = cfg.uplink_addr;
    redirect::route_out(ctx, &routed, pkt.len, pkt.sport_off, cfg)
}
