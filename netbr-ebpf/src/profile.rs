//! Marks splitting a tracked packet's run into segments
//! (`netbr_common::profile`), for `cargo xtask cost --profile`. These
//! machines have no PMU (`perf stat` counts nothing), so the clock is the
//! profiler: with the `profile` feature a mark reads it and adds the time
//! since the last mark to its segment's per-CPU sum; without it, a mark
//! compiles to nothing and the map does not exist.

#[cfg(feature = "profile")]
mod on {
    use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
    use netbr_common::profile::{PROF_LAST, PROF_LEN, SEG_START};

    #[map(name = "NB_PROF")]
    static PROF: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROF_LEN, 0);

    #[inline(always)]
    pub fn mark(segment: u32) {
        // SAFETY: the helper has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let (Some(last), Some(sum)) = (PROF.get_ptr_mut(PROF_LAST), PROF.get_ptr_mut(segment))
        else {
            return;
        };
        // SAFETY: per-CPU map values, this run's alone.
        unsafe {
            if segment != SEG_START {
                *sum += now.saturating_sub(*last);
            }
            *last = now;
        }
    }
}

#[cfg(feature = "profile")]
pub use on::mark;

#[cfg(not(feature = "profile"))]
#[inline(always)]
pub fn mark(_segment: u32) {}
