//! The segments `cargo xtask cost --profile` splits a tracked packet's
//! program run into, and the per-CPU map (`NB_PROF`, in profile builds of
//! the BPF programs only) that sums each segment's nanoseconds. A mark ends
//! the segment named after it: `SEG_LOOKUP` holds the time from the mark
//! before (the clock read) to the end of the conntrack lookup.

/// The map's name; it exists only in a build with the `profile` feature.
pub const PROF_MAP: &str = "NB_PROF";
/// Where a run starts: the mark only notes the time.
pub const SEG_START: u32 = 0;
/// From the program's start to the packet parsed and its path chosen.
pub const SEG_PARSE: u32 = 1;
/// Reading the clock (`bpf_ktime_get_ns`) for the flow's timers.
pub const SEG_CLOCK: u32 = 2;
/// The conntrack lookup (a hash of the tuple, one table; a new flow's
/// packet misses in both).
pub const SEG_LOOKUP: u32 = 3;
/// Rewriting addresses and ports with their checksums.
pub const SEG_REWRITE: u32 = 4;
/// The flow's counters, time and state.
pub const SEG_ACCOUNT: u32 = 5;
/// The rest: delivery (the fast path's lookups and redirect), counting the
/// outcome, the verdict.
pub const SEG_REST: u32 = 6;
/// Nothing: a mark right after the last one, which measures what a mark
/// itself adds to each segment (its clock read).
pub const SEG_EMPTY: u32 = 7;
/// A new flow's admission: its clock read, the published port's mapping,
/// the firewall.
pub const SEG_ADMIT: u32 = 8;
/// A new flow's entries: the port search (masquerade) and both inserts.
pub const SEG_INSERT: u32 = 9;
/// The slot holding the last mark's time.
pub const PROF_LAST: u32 = 15;
pub const PROF_LEN: u32 = 16;

/// The segments of a profile, in order, with the names the cost test
/// prints.
pub const SEGMENTS: [(u32, &str); 8] = [
    (SEG_PARSE, "parse"),
    (SEG_CLOCK, "clock"),
    (SEG_LOOKUP, "lookup"),
    (SEG_ADMIT, "admit"),
    (SEG_INSERT, "insert"),
    (SEG_REWRITE, "rewrite"),
    (SEG_ACCOUNT, "account"),
    (SEG_REST, "rest"),
];
