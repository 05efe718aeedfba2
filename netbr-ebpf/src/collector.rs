//! The assured tables' collector, on a BPF timer: a packet never walks a
//! table. The first packet that may open a flow arms the timer; from then
//! on it fires every `COLLECT_INTERVAL_NS`, each time for one family in
//! turn, and, when that family's table was found full, collects expired
//! entries (`conntrack::collect`). A timer lives as
//! long as its map: with the maps pinned, collection goes on with no netbr
//! process running. It still runs in softirq (hrtimer) context, but apart
//! from any packet; a BPF workqueue would run it in process context, but is
//! a kfunc this toolchain cannot call.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_timer,
    btf_maps::Array,
    helpers::{bpf_timer_init, bpf_timer_set_callback, bpf_timer_start},
    macros::btf_map,
};

use crate::{conntrack, maps::CONFIG};

/// How often the collector fires: each family's table is looked at every
/// other time, so once a second.
const COLLECT_INTERVAL_NS: u64 = 500_000_000;
/// `CLOCK_MONOTONIC`, the timer's clock.
const CLOCK_MONOTONIC: u64 = 1;

/// The timer, in a map with BTF as the kernel requires of `bpf_timer`.
#[repr(C)]
pub struct Collector {
    timer: bpf_timer,
    /// Non-zero once armed: then the times the timer fired, plus one,
    /// whose parity picks the family it collects.
    armed: u64,
}

#[btf_map(name = "NB_GC")]
static COLLECTOR: Array<Collector, 1> = Array::new();

/// Arms the collector's timer if no packet has yet.
#[inline(always)]
pub fn arm() {
    let Some(c) = COLLECTOR.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a map value pointer, valid for this run; two CPUs arming at
    // once is harmless: `bpf_timer_init` fails for the second.
    unsafe {
        if (*c).armed != 0 {
            return;
        }
        (*c).armed = 1;
        let timer = &mut (*c).timer as *mut bpf_timer;
        if bpf_timer_init(
            timer,
            &COLLECTOR as *const _ as *mut c_void,
            CLOCK_MONOTONIC,
        ) != 0
        {
            return;
        }
        bpf_timer_set_callback(timer, on_timer as *mut c_void);
        bpf_timer_start(timer, COLLECT_INTERVAL_NS, 0);
    }
}

/// The clock for opening a flow, of either family. The first such packet
/// arms the collector, which makes room apart from any packet.
#[inline(always)]
pub fn new_flow_clock() -> u64 {
    arm();
    conntrack::now()
}

extern "C" fn on_timer(_map: *mut c_void, _key: *mut u32, c: *mut Collector) -> i32 {
    // SAFETY: the timer's own map value, as the kernel passes it.
    let tick = unsafe {
        let tick = (*c).armed;
        (*c).armed = tick.wrapping_add(1).max(1);
        tick
    };
    if let Some(cfg) = CONFIG.get(0) {
        let now = crate::conntrack::now();
        // One family per firing: two walks in one callback took the
        // verifier past its 8192-jump history for one path ("The sequence
        // of 8193 jumps is too complex"); on separate branches each path
        // holds one. The monitor's walk of IPv4's new flows goes with
        // IPv4's turn.
        if tick & 1 == 0 {
            conntrack::collect_if_full::<u32>(cfg, now);
            if crate::monitor::listening() {
                conntrack::collect_new_for_monitor(cfg, now);
            }
        } else {
            conntrack::collect_if_full::<[u32; 4]>(cfg, now);
        }
    }
    // SAFETY: the timer's own map value, as the kernel passes it.
    unsafe { bpf_timer_start(&mut (*c).timer, COLLECT_INTERVAL_NS, 0) };
    0
}
