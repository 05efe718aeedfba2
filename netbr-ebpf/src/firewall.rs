//! The firewall's verdict on a new flow, before it is translated (rules and
//! semantics: `netbr_common::firewall`). Only new flows pay for it, and only
//! while rules exist (`Config::firewall_entries`).

use aya_ebpf::maps::lpm_trie::Key;
use netbr_common::{
    conntrack::FlowKey,
    counters::Reason,
    firewall::{any_scope, scope_key, FwKey, FW_ALLOW, FW_DENY, FW_EXACT_BITS, FW_IN, FW_OUT},
    maps::Config,
};

use crate::{
    maps::{FIREWALL, FIREWALL_HITS, FIREWALL_KEY, FIREWALL_SCOPES},
    parse::Packet,
};

/// Whether the firewall lets a new flow from the uplink to a published
/// port (translated to `xlat`) open; counts a hit for the deciding rule.
#[inline(always)]
pub fn admit_in(cfg: &Config, pkt: &Packet, xlat: &FlowKey) -> Result<(), Reason> {
    if cfg.firewall_entries == 0 {
        return Ok(());
    }
    decide(&FwKey {
        dir: FW_IN,
        proto: pkt.key.proto,
        port: pkt.key.dport,
        endpoint: xlat.daddr,
        addr: pkt.key.saddr,
        ..FwKey::default()
    })
}

/// Whether the firewall lets a container's new masqueraded flow open.
#[inline(always)]
pub fn admit_out(cfg: &Config, pkt: &Packet) -> Result<(), Reason> {
    if cfg.firewall_entries == 0 {
        return Ok(());
    }
    let key = &pkt.key;
    decide(&FwKey {
        dir: FW_OUT,
        proto: key.proto,
        // 0 for an echo request, whose identifier sits in `sport`: it has
        // no port, so only rules without one match it.
        port: key.dport,
        endpoint: key.saddr,
        addr: key.daddr,
        ..FwKey::default()
    })
}

// A BPF function of its own: the SNAT port search runs after it returns, so
// its frame never sits beneath the search's.
#[inline(never)]
fn decide(flow: &FwKey) -> Result<(), Reason> {
    if let Some(rule) = matching(flow, FW_DENY) {
        hit(rule);
        return Err(Reason::DropFirewallDeny);
    }
    if !in_allow_scope(flow) {
        return Ok(());
    }
    match matching(flow, FW_ALLOW) {
        Some(rule) => {
            hit(rule);
            Ok(())
        }
        None => Err(Reason::DropFirewallNotAllowed),
    }
}

/// The first rule of `action` matching the flow: a rule names its port (or
/// not) and its endpoint (or not), so four keys cover every rule; the trie
/// matches the address by prefix.
#[inline(always)]
fn matching(flow: &FwKey, action: u8) -> Option<u32> {
    for (any_port, any_endpoint) in [(false, false), (false, true), (true, false), (true, true)] {
        // ICMP has no port: only rules without one can match it.
        if !any_port && flow.port == 0 {
            continue;
        }
        let key = FIREWALL_KEY.get_ptr_mut(0)?;
        let mut data = *flow;
        data.action = action;
        if any_port {
            data.proto = 0;
            data.port = 0;
        }
        if any_endpoint {
            data.endpoint = 0;
        }
        // SAFETY: per-CPU map value, used by this packet only.
        let key = unsafe {
            *key = Key::new(FW_EXACT_BITS + 32, data);
            &*key
        };
        if let Some(rule) = FIREWALL.get(key) {
            return Some(rule.slot);
        }
    }
    None
}

/// Whether any allow rule's scope covers the flow: its own port (`in`) or
/// endpoint (`out`), or every one.
#[inline(always)]
fn in_allow_scope(flow: &FwKey) -> bool {
    let own = scope_key(flow.dir, flow.proto, flow.port, flow.endpoint);
    let any = any_scope(flow.dir);
    // SAFETY: read-only lookups of plain counters.
    unsafe { FIREWALL_SCOPES.get(&own).is_some() || FIREWALL_SCOPES.get(&any).is_some() }
}

#[inline(always)]
fn hit(slot: u32) {
    if let Some(count) = FIREWALL_HITS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { *count += 1 };
    }
}
