//! The uplink's port sets (`netbr_common::ports`): the first test a packet
//! at the uplink takes, before any conntrack or mapping lookup. Array
//! lookups are inlined by the verifier, so the test costs a few loads.

use netbr_common::ports::{port_slot, PORTS_FLOWS, PORTS_PUBLISHED, PORTS_RESTORED};

use crate::maps::PORTS;

/// Whether set `set` marks `slot`; a missing set marks everything.
#[inline(always)]
fn marked(set: u32, slot: usize) -> bool {
    match PORTS.get(set) {
        Some(s) => s.marked.get(slot).is_none_or(|b| *b != 0),
        None => true,
    }
}

/// Whether a packet to or from host port `port` (network byte order) of
/// `proto` may belong to a flow or a published port: false only when no
/// set marks it, and never for a protocol the sets do not cover.
#[inline(always)]
pub fn may_be_ours(proto: u8, port: u16) -> bool {
    match port_slot(proto, u16::from_be(port)) {
        Some(slot) => {
            marked(PORTS_FLOWS, slot)
                || marked(PORTS_PUBLISHED, slot)
                || marked(PORTS_RESTORED, slot)
        }
        None => true,
    }
}

/// Marks host port `port` (network byte order) as one a new flow's packets
/// arrive on, before the flow exists. Read first, so a port in use stays a
/// clean cache line.
#[inline(always)]
pub fn mark_flow(proto: u8, port: u16) {
    let Some(slot) = port_slot(proto, u16::from_be(port)) else {
        return;
    };
    let Some(set) = PORTS.get_ptr_mut(PORTS_FLOWS) else {
        return;
    };
    // SAFETY: a map value pointer, valid for this run; one byte's store
    // races with no other CPU's (a set is never cleared while attached).
    if let Some(b) = unsafe { (*set).marked.get_mut(slot) } {
        if *b == 0 {
            *b = 1;
        }
    }
}
