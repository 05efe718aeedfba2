//! What each attach point does. A hook returns the counter reason for the
//! packet; `Err` reasons that are drops become `TC_ACT_SHOT`.
//!
//! Destination rewrites happen at ingress (before routing) and source
//! rewrites at egress (after it), as netfilter does them in PREROUTING and
//! POSTROUTING: the host stack must never route a packet whose source is one
//! of its own addresses (a martian) or whose destination is not yet final.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use netbr_common::{counters::Reason, maps::Config};

use crate::{
    conntrack,
    maps::CONFIG,
    nat,
    parse::{parse, Packet},
    rewrite::rewrite,
};

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

/// Translates a packet of a tracked flow; `Ok(None)` if it belongs to none.
/// A BPF function of its own: its stack frame then does not add to the
/// SNAT port search's, which must fit beside it in 512 bytes.
#[inline(never)]
fn translate_tracked(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &Config,
    now: u64,
) -> Result<Option<Reason>, Reason> {
    let Some(flow) = conntrack::lookup(&pkt.key, cfg, now) else {
        return Ok(None);
    };
    // SAFETY: map value pointer from `lookup`.
    let xlat = unsafe { (*flow.entry).xlat };
    rewrite(ctx, pkt, &xlat)?;
    conntrack::account(&flow, pkt.key.proto, pkt.tcp_flags, pkt.len, now);
    Ok(Some(Reason::Translated))
}

/// Uplink ingress: replies of masqueraded flows, and published ports.
#[inline(always)]
pub fn uplink_ingress(ctx: &TcContext) -> Result<Reason, Reason> {
    let cfg = config()?;
    let pkt = parse(ctx)?;
    let now = now();
    if let Some(r) = translate_tracked(ctx, &pkt, cfg, now)? {
        return Ok(r);
    }
    match nat::dnat_new_flow(&pkt, cfg, now)? {
        Some(xlat) => {
            rewrite(ctx, &pkt, &xlat)?;
            Ok(Reason::DnatNew)
        }
        None => Err(Reason::PassNoMatch),
    }
}

/// Uplink egress: replies of published-port flows, and masquerade.
#[inline(always)]
pub fn uplink_egress(ctx: &TcContext) -> Result<Reason, Reason> {
    let cfg = config()?;
    let pkt = parse(ctx)?;
    let now = now();
    if let Some(r) = translate_tracked(ctx, &pkt, cfg, now)? {
        return Ok(r);
    }
    if !nat::wants_snat(&pkt, cfg) {
        return Err(Reason::PassNoMatch);
    }
    let xlat = nat::snat_new_flow(&pkt, cfg, now)?;
    rewrite(ctx, &pkt, &xlat)?;
    Ok(Reason::SnatNew)
}

/// Bridge-device ingress: traffic from containers entering the host stack.
/// Every flow netbr creates today is translated on the uplink, so this hook
/// only classifies; it is attached now so later translations (hairpin) need
/// no new attach point.
#[inline(always)]
pub fn bridge_ingress(ctx: &TcContext) -> Result<Reason, Reason> {
    config()?;
    parse(ctx)?;
    Err(Reason::PassNoMatch)
}
