//! Reports for `netbr monitor` (`netbr_common::monitor`): each dropped
//! packet, and each flow opened or ended, while a monitor listens. Every
//! report is made on a drop or a flow change, never on a tracked packet's
//! path; with no monitor, it costs the deadline's array lookup.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use netbr_common::{
    conntrack::{CtEntry, FlowKey, DIR_ORIG},
    counters::Reason,
    maps::EVENT_SLOT_MONITOR,
    monitor::{MonitorEvent, MON_DROP, MON_FLOW_END, MON_FLOW_NEW, MON_HOOK_NONE},
};

use crate::{
    counters::count,
    maps::{CT_NEW, EVENT_LAST, MONITOR, PACKET},
};

/// Whether a monitor's deadline lies ahead.
#[inline(always)]
pub fn listening() -> bool {
    match EVENT_LAST.get(EVENT_SLOT_MONITOR) {
        // SAFETY: the helper has no preconditions.
        Some(&deadline) if deadline != 0 => (unsafe { bpf_ktime_get_ns() }) < deadline,
        _ => false,
    }
}

/// `MonitorEvent`'s kind, hook and NAT type, packed to keep `emit` within
/// BPF's five arguments.
#[inline(always)]
const fn head(kind: u8, hook: u8, nat: u8) -> u32 {
    kind as u32 | (hook as u32) << 8 | (nat as u32) << 16
}

/// Writes one report straight into the ring (nothing on the stack: flows
/// end beneath hooks whose frames use most of the 512 bytes), or counts it
/// lost when the ring is full: a monitor that falls behind loses reports,
/// never slows packets. A missing tuple is written as zeros.
#[inline(never)]
fn emit(head: u32, reason: u32, orig: Option<&FlowKey>, xlat: Option<&FlowKey>, ifindex: u32) {
    let Some(mut slot) = MONITOR.reserve::<MonitorEvent>(0) else {
        count(Reason::MonitorLost);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points at the reserved record, which is ours until
    // submitted.
    unsafe {
        (*ev).orig = orig.copied().unwrap_or_default();
        (*ev).xlat = xlat.copied().unwrap_or_default();
        fill(ev, head, reason, ifindex);
    }
    slot.submit(0);
}

/// `emit` for a flow that ended, from the entry tuple `key` found; its
/// partner's tuple and translation follow from it (the two are mirror
/// images). The tuples are worked out in the ring, not on the caller's
/// stack.
#[inline(never)]
fn emit_end(key: &FlowKey, entry: &CtEntry, reason: u32) {
    let Some(mut slot) = MONITOR.reserve::<MonitorEvent>(0) else {
        count(Reason::MonitorLost);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: as in `emit`.
    unsafe {
        if entry.dir == DIR_ORIG {
            (*ev).orig = *key;
            (*ev).xlat = entry.xlat;
        } else {
            (*ev).orig = entry.xlat.reversed();
            (*ev).xlat = key.reversed();
        }
        fill(ev, head(MON_FLOW_END, MON_HOOK_NONE, entry.nat), reason, 0);
    }
    slot.submit(0);
}

/// Writes a reserved report's fields other than its tuples.
///
/// # Safety
/// `ev` points at a record reserved in the ring and not yet submitted.
#[inline(always)]
unsafe fn fill(ev: *mut MonitorEvent, head: u32, reason: u32, ifindex: u32) {
    // SAFETY: as the caller promises; the helper has no preconditions.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).reason = reason;
        (*ev).ifindex = ifindex;
        (*ev).kind = head as u8;
        (*ev).hook = (head >> 8) as u8;
        (*ev).nat = (head >> 16) as u8;
        (*ev)._pad = 0;
        (*ev)._pad2 = 0;
    }
}

/// Reports a TC hook's outcome when it dropped the packet or opened a
/// flow: the packet's tuple as parsed (none for the reasons that stop
/// parsing), and for a flow what it is translated to, read back from the
/// entry the hook just made.
#[inline(always)]
pub fn outcome(ctx: &TcContext, hook: u8, reason: Reason) {
    if (reason.is_drop() || reason.opens_flow()) && listening() {
        // SAFETY: reading a context field.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        report(hook, reason as u32, reason.is_drop(), ifindex);
    }
}

/// `outcome`'s report, a BPF function of its own so the hooks' frames do
/// not grow by its locals.
#[inline(never)]
fn report(hook: u8, reason: u32, drop: bool, ifindex: u32) {
    let Some(pkt) = PACKET.get(0) else {
        return;
    };
    if drop {
        let parsed =
            reason != Reason::DropTruncated as u32 && reason != Reason::DropBadHeader as u32;
        let key = if parsed { Some(&pkt.key) } else { None };
        emit(head(MON_DROP, hook, 0), reason, key, None, ifindex);
        return;
    }
    // SAFETY: a read-only look at the entry this packet just inserted.
    if let Some(e) = unsafe { CT_NEW.get(&pkt.key) } {
        emit(
            head(MON_FLOW_NEW, hook, e.nat),
            reason,
            Some(&pkt.key),
            Some(&e.xlat),
            ifindex,
        );
    }
}

/// A flow ended (timed out, gave its tuple to a new flow, or found no room
/// in the assured table) for `reason`: `entry` is the entry tuple `key`
/// found. Taking the entry rather than the tuples keeps the callers, which
/// sit beneath the SNAT port search, from building tuples on the stack for
/// it.
#[inline(always)]
pub fn flow_ended(key: &FlowKey, entry: &CtEntry, reason: Reason) {
    if listening() {
        emit_end(key, entry, reason as u32);
    }
}

/// A packet a bandwidth limit dropped on pacing hook `hook`, with the
/// container's address as its tuple (all the pacing program reads).
#[inline(always)]
pub fn paced_drop(hook: u8, key: &FlowKey, ifindex: u32) {
    if listening() {
        emit(
            head(MON_DROP, hook, 0),
            Reason::DropPaceHorizon as u32,
            Some(key),
            None,
            ifindex,
        );
    }
}
