//! The datapath's log: events an operator must act on (a full conntrack
//! table, an exhausted SNAT range), at most one per kind and interval, in a
//! ring buffer that `netbr events` drains. Counters say how often; the log
//! says that and when, with no netbr process needing to watch. Not
//! `bpf_printk`: loading a program that uses it prints the kernel's
//! "trace_printk() being used" debug-kernel banner on an operator's host.

use netbr_common::{
    counters::Reason,
    maps::{Event, EVENT_INTERVAL_NS},
};

use crate::maps::{EVENTS, EVENT_LAST};

/// Whether `slot`'s rate limit lets something through at `now`; if so, the
/// slot is stamped. Two CPUs racing may both pass once: a log line more, not
/// a wrong one.
#[inline(always)]
pub fn due(slot: u32, now: u64) -> bool {
    let Some(last) = EVENT_LAST.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: a map value pointer, valid for this run.
    unsafe {
        if *last != 0 && now.saturating_sub(*last) < EVENT_INTERVAL_NS {
            return false;
        }
        *last = now;
    }
    true
}

/// Logs `reason` unless one was logged within the interval.
#[inline(always)]
pub fn log(reason: Reason, detail: u32, now: u64) {
    if !due(reason as u32, now) {
        return;
    }
    let event = Event {
        ts_ns: now,
        reason: reason as u32,
        detail,
    };
    // A full ring (nobody reading) loses the line; the counter still counts.
    let _ = EVENTS.output::<Event>(&event, 0);
}
