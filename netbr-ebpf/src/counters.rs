use netbr_common::counters::Reason;

use crate::maps::COUNTERS;

/// Counts one occurrence of `reason`. Every packet a hook sees ends in one
/// verdict reason; events on the way (an expired entry found, a socket
/// rewritten) count under their own.
#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, and BPF programs are not preempted on one CPU.
        unsafe { *slot += 1 };
    }
}
