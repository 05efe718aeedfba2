use netbr_common::counters::Reason;

use crate::maps::COUNTERS;

/// Every packet a program sees lands in exactly one counter.
#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, and BPF programs are not preempted on one CPU.
        unsafe { *slot += 1 };
    }
}
