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

use aya_ebpf::{bindings::TC_ACT_UNSPEC, helpers::bpf_ktime_get_ns, programs::TcContext};
use netbr_common::{
    conntrack::{FlowKey, NAT_HAIRPIN},
    counters::Reason,
    maps::{Config, CFG_ALLOW_DIRECT_ROUTING},
};

use crate::{
    conntrack,
    maps::CONFIG,
    nat,
    parse::{parse, Packet},
    redirect,
    rewrite::{icmp_error, rewrite},
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

#[inline(always)]
fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Translates a packet of a tracked flow that this hook owns (hairpin flows
/// on the bridge, the others on the uplink); returns the tuple it now has,
/// or `None` if the packet belongs to no such flow.
/// A BPF function of its own: its stack frame then does not add to the
/// SNAT port search's, which must fit beside it in 512 bytes.
#[inline(never)]
/// It reads the clock itself: BPF functions take at most five arguments,
/// and the returned `Result` already uses one.
fn translate_tracked(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &Config,
    hairpin: bool,
) -> Result<Option<FlowKey>, Reason> {
    let now = now();
    let Some(flow) = conntrack::lookup(&pkt.key, cfg, now) else {
        return Ok(None);
    };
    // SAFETY: map value pointer from `lookup`.
    let (xlat, nat) = unsafe { ((*flow.entry).xlat, (*flow.entry).nat) };
    if (nat == NAT_HAIRPIN) != hairpin {
        return Ok(None);
    }
    if pkt.is_icmp_error() {
        // Errors translate but do not advance the flow's state.
        icmp_error(ctx, pkt, &xlat)?;
        return Ok(Some(xlat));
    }
    rewrite(ctx, pkt, &xlat)?;
    conntrack::account(&flow, pkt.key.proto, pkt.tcp_flags, pkt.len, now);
    Ok(Some(xlat))
}

fn translated(pkt: &Packet) -> Reason {
    if pkt.is_icmp_error() {
        Reason::IcmpErrorTranslated
    } else {
        Reason::Translated
    }
}

/// Uplink ingress: replies of masqueraded flows, and published ports.
#[inline(always)]
pub fn uplink_ingress(ctx: &TcContext) -> Result<Outcome, Reason> {
    let cfg = config()?;
    let pkt = parse(ctx)?;
    if translate_tracked(ctx, &pkt, cfg, false)?.is_some() {
        return Ok(Outcome::pass(translated(&pkt)));
    }
    if pkt.is_icmp_error() {
        return Err(nat::unmatched_icmp_error(&pkt, cfg));
    }
    let now = now();
    if cfg.in_subnet(pkt.key.daddr) {
        if !cfg.has(CFG_ALLOW_DIRECT_ROUTING) {
            return Err(Reason::DropDirectRouting);
        }
        nat::track_direct(&pkt, cfg, now)?;
        return Ok(Outcome::pass(Reason::DirectNew));
    }
    match nat::dnat_new_flow(&pkt, cfg, now)? {
        Some(xlat) => {
            rewrite(ctx, &pkt, &xlat)?;
            Ok(Outcome::pass(Reason::DnatNew))
        }
        None => Err(Reason::PassNoMatch),
    }
}

/// Uplink egress: replies of published-port flows, and masquerade.
#[inline(always)]
pub fn uplink_egress(ctx: &TcContext) -> Result<Outcome, Reason> {
    let cfg = config()?;
    let pkt = parse(ctx)?;
    if translate_tracked(ctx, &pkt, cfg, false)?.is_some() {
        return Ok(Outcome::pass(translated(&pkt)));
    }
    // The host's own errors (and those of untracked traffic) leave as they
    // are; an error never opens a flow.
    if pkt.is_icmp_error() || !nat::wants_snat(&pkt, cfg) {
        return Err(Reason::PassNoMatch);
    }
    let now = now();
    let xlat = nat::snat_new_flow(&pkt, cfg, now)?;
    rewrite(ctx, &pkt, &xlat)?;
    Ok(Outcome::pass(Reason::SnatNew))
}

/// Bridge-device ingress: traffic from containers entering the host stack.
/// Hairpin flows are translated here and redirected to the target's veth;
/// everything else is left to routing and the uplink.
#[inline(always)]
pub fn bridge_ingress(ctx: &TcContext) -> Result<Outcome, Reason> {
    let cfg = config()?;
    let pkt = parse(ctx)?;
    let (xlat, reason) = match translate_tracked(ctx, &pkt, cfg, true)? {
        Some(xlat) => (xlat, translated(&pkt)),
        None if pkt.is_icmp_error() => return Err(Reason::PassNoMatch),
        None => match nat::hairpin_new_flow(&pkt, cfg, now())? {
            Some(xlat) => {
                rewrite(ctx, &pkt, &xlat)?;
                (xlat, Reason::HairpinNew)
            }
            None => return Err(Reason::PassNoMatch),
        },
    };
    let action = redirect::to_endpoint(ctx, xlat.daddr, cfg)?;
    Ok(Outcome { reason, action })
}
