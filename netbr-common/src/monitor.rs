//! `netbr monitor`: the datapath reports each dropped packet and each flow
//! it opens or ends, as they happen, through a ring buffer of its own.
//!
//! Nothing is reported while no monitor listens: a monitor keeps a deadline
//! (monotonic ns) in `maps::EVENT_SLOT_MONITOR` a few seconds ahead of now,
//! and the datapath reports only before it. So a monitor that dies stops
//! the reports within that time, and a host that never runs one pays one
//! array lookup per drop or new flow, nothing per tracked packet.

use crate::conntrack::FlowKey;

/// Ring buffer of `MonitorEvent`s, drained by `netbr monitor`.
pub const MAP_MONITOR: &str = "NB_MON";
/// Its size: a few thousand events, enough for a monitor that is late by a
/// scheduling quantum; beyond that events are lost, and counted
/// (`counters::Reason::MonitorLost`), rather than slowing the datapath.
pub const MONITOR_BYTES: u32 = 256 * 1024;
/// How far ahead of now a monitor keeps the deadline, and how often it
/// renews it (monotonic ns).
pub const MONITOR_LEASE_NS: u64 = 3_000_000_000;
pub const MONITOR_RENEW_NS: u64 = 1_000_000_000;

/// `MonitorEvent::kind`.
pub const MON_DROP: u8 = 1;
pub const MON_FLOW_NEW: u8 = 2;
pub const MON_FLOW_END: u8 = 3;

/// `MonitorEvent::hook` beyond `maps::HOOK_*` (the TC hooks, 0-2): the
/// pacing programs; flow reports name no hook.
pub const MON_HOOK_PACE_EGRESS: u8 = 4;
pub const MON_HOOK_PACE_INGRESS: u8 = 5;
pub const MON_HOOK_NONE: u8 = 255;

/// One report. For a drop, `orig` is the packet's tuple as parsed (all
/// zero when it could not be parsed: `DropTruncated`, `DropBadHeader`) and
/// `xlat` is zero. For a flow, `orig` is its original tuple and `xlat` the
/// tuple its original direction is translated to; `nat` is `CtEntry::nat`.
/// `ifindex` is the interface the packet was seen on (0 for flows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorEvent {
    pub ts_ns: u64,
    pub orig: FlowKey,
    pub xlat: FlowKey,
    /// A `counters::Reason` (for flows, the one that opened or ended it).
    pub reason: u32,
    pub ifindex: u32,
    pub kind: u8,
    pub hook: u8,
    pub nat: u8,
    pub _pad: u8,
    /// Explicit tail padding (a byte array here would cost the BPF side a
    /// `memset` call, and with it a stack frame, to clear).
    pub _pad2: u32,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), plain integers, explicit padding.
unsafe impl aya::Pod for MonitorEvent {}

/// Name of a `MonitorEvent::hook` for listings.
pub const fn hook_name(hook: u8) -> &'static str {
    match hook {
        crate::maps::HOOK_UPLINK_INGRESS => "uplink_ingress",
        crate::maps::HOOK_UPLINK_EGRESS => "uplink_egress",
        crate::maps::HOOK_BRIDGE_INGRESS => "bridge_ingress",
        MON_HOOK_PACE_EGRESS => "pace_egress",
        MON_HOOK_PACE_INGRESS => "pace_ingress",
        MON_HOOK_NONE => "-",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitor_event_has_no_implicit_padding() {
        assert_eq!(
            core::mem::size_of::<MonitorEvent>(),
            8 + 16 + 16 + 4 + 4 + 8
        );
        assert_eq!(core::mem::align_of::<MonitorEvent>(), 8);
    }
}
