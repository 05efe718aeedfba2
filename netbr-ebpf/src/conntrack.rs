//! The conntrack tables: lookup with expiry, flow creation, accounting,
//! promotion of assured flows, and collection of expired ones when full.
//! Entry layout and invariants are described in `netbr_common::conntrack`.
//!
//! Two tables, because netfilter's early_drop evicts only flows that are
//! not ASSURED: flows start in `CT_NEW` (LRU) and move to `CONNTRACK` once
//! they have seen traffic both ways. A flood of new flows then evicts only
//! other new flows. `CONNTRACK` is a plain hash, so nothing evicts an
//! established flow: when it is full, a flow about to become assured is
//! refused (`DropCtFull`, logged) after one collection of expired entries,
//! and service returns as flows end and time out. Both entries of a flow
//! always live in the same table.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_for_each_map_elem, bpf_ktime_get_coarse_ns},
    maps::{HashMap, LruHashMap},
};
use netbr_common::{
    conntrack::{
        expired, is_assured, next_state, CtEntry, CtEntry6, CtEntryOf, CtState, FlowKey, FlowKey6,
        FlowKeyOf, DIR_ORIG, DIR_REPLY,
    },
    counters::Reason,
    maps::{Config, EVENT_SLOT_FULL, EVENT_SLOT_GC},
};

use crate::{
    counters::count,
    events,
    maps::{CONNTRACK, CONNTRACK6, CT6_NEW, CT_NEW, EVENT_LAST, SCRATCH, SCRATCH6},
    monitor,
};

/// The flows' clock: CLOCK_MONOTONIC at the kernel tick's granularity (a
/// few milliseconds), as netfilter times its flows in jiffies; timeouts are
/// whole seconds. Every time a flow keeps, and every comparison with one,
/// reads this clock. The coarse read costs about 10 ns less per packet
/// than `bpf_ktime_get_ns` here (`cargo xtask cost --profile`, its
/// `clock` segment), and no comparison minds that it lags the precise
/// one by up to a tick: ages are taken with a saturating subtraction.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// What the flow logic needs of an address family: its two tables, the
/// scratch entry new flows are built in, and how a flow's end is reported.
/// Implemented by the family's address type, so that a tuple's type picks
/// the tables and every function here is written once for both families.
pub trait Family: Copy + PartialEq + 'static {
    fn assured() -> &'static HashMap<FlowKeyOf<Self>, CtEntryOf<Self>>;
    fn fresh() -> &'static LruHashMap<FlowKeyOf<Self>, CtEntryOf<Self>>;
    fn scratch() -> Option<*mut CtEntryOf<Self>>;
    /// Tells a listening monitor that the flow of `key` ended.
    fn report_end(key: &FlowKeyOf<Self>, e: &CtEntryOf<Self>, why: Reason);
    /// Where the family's full mark sits in `EVENT_SLOT_FULL`
    /// (`full_entries`): IPv4's in the low 32 bits, where the whole slot's
    /// value was before IPv6 had tables, IPv6's in the high.
    const FULL_SHIFT: u32;
}

impl Family for u32 {
    const FULL_SHIFT: u32 = 0;
    #[inline(always)]
    fn assured() -> &'static HashMap<FlowKey, CtEntry> {
        &CONNTRACK
    }
    #[inline(always)]
    fn fresh() -> &'static LruHashMap<FlowKey, CtEntry> {
        &CT_NEW
    }
    #[inline(always)]
    fn scratch() -> Option<*mut CtEntry> {
        SCRATCH.get_ptr_mut(0)
    }
    #[inline(always)]
    fn report_end(key: &FlowKey, e: &CtEntry, why: Reason) {
        monitor::flow_ended(key, e, why);
    }
}

impl Family for [u32; 4] {
    const FULL_SHIFT: u32 = 32;
    #[inline(always)]
    fn assured() -> &'static HashMap<FlowKey6, CtEntry6> {
        &CONNTRACK6
    }
    #[inline(always)]
    fn fresh() -> &'static LruHashMap<FlowKey6, CtEntry6> {
        &CT6_NEW
    }
    #[inline(always)]
    fn scratch() -> Option<*mut CtEntry6> {
        SCRATCH6.get_ptr_mut(0)
    }
    /// `netbr monitor`'s reports carry IPv4 tuples; IPv6 flows are not
    /// reported yet.
    #[inline(always)]
    fn report_end(_key: &FlowKey6, _e: &CtEntry6, _why: Reason) {}
}

/// What the flow logic needs of either table.
trait Table<A> {
    fn entry(&self, key: &FlowKeyOf<A>) -> Option<*mut CtEntryOf<A>>;
    fn put(&self, key: &FlowKeyOf<A>, value: &CtEntryOf<A>, flags: u32) -> Result<(), i32>;
    fn erase(&self, key: &FlowKeyOf<A>);
}

macro_rules! impl_table {
    ($map:ident) => {
        impl<A> Table<A> for $map<FlowKeyOf<A>, CtEntryOf<A>> {
            #[inline(always)]
            fn entry(&self, key: &FlowKeyOf<A>) -> Option<*mut CtEntryOf<A>> {
                self.get_ptr_mut(key)
            }
            #[inline(always)]
            fn put(&self, key: &FlowKeyOf<A>, value: &CtEntryOf<A>, flags: u32) -> Result<(), i32> {
                self.insert(key, value, flags as u64)
            }
            #[inline(always)]
            fn erase(&self, key: &FlowKeyOf<A>) {
                let _ = self.remove(key);
            }
        }
    };
}
impl_table!(HashMap);
impl_table!(LruHashMap);

/// A tracked flow as seen by one packet: the entry its tuple matched
/// (which holds all the packet needs), and whether it sits in the assured
/// table.
pub struct Flow<A> {
    pub entry: *mut CtEntryOf<A>,
    pub assured: bool,
}

/// Finds the live flow `key` belongs to, assured flows first.
#[inline(always)]
pub fn lookup<A: Family>(key: &FlowKeyOf<A>, cfg: &Config, now: u64) -> Option<Flow<A>> {
    lookup_in::<true, A>(A::assured(), true, key, cfg, now)
        .or_else(|| lookup_in::<true, A>(A::fresh(), false, key, cfg, now))
}

/// `lookup` for the paths that open flows, beneath which no stack is left
/// for telling a monitor of an expired flow met on the way.
#[inline(always)]
pub fn lookup_quiet<A: Family>(key: &FlowKeyOf<A>, cfg: &Config, now: u64) -> Option<Flow<A>> {
    lookup_in::<false, A>(A::assured(), true, key, cfg, now)
        .or_else(|| lookup_in::<false, A>(A::fresh(), false, key, cfg, now))
}

/// Finds the live flow `key` belongs to among assured flows only: the XDP
/// fast path leaves flows still being set up to TC.
#[inline(always)]
pub fn lookup_assured<A: Family>(key: &FlowKeyOf<A>, cfg: &Config, now: u64) -> Option<Flow<A>> {
    lookup_in::<true, A>(A::assured(), true, key, cfg, now)
}

/// The partner of `entry`, in the table its flow sits in (`assured`).
#[inline(always)]
fn partner_of<A: Family>(assured: bool, entry: &CtEntryOf<A>) -> Option<*mut CtEntryOf<A>> {
    let key = entry.xlat.reversed();
    if assured {
        A::assured().entry(&key)
    } else {
        A::fresh().entry(&key)
    }
}

/// Finds the live flow of `key` in one table: one lookup while the
/// entry's own direction is active. Once that direction has been idle past
/// the state's timeout, the partner says whether the other direction kept
/// the flow alive (its time is then taken over, so the next packet needs
/// one lookup again); a flow idle both ways is removed here, so expiry
/// needs no garbage collector. `REPORT`: tell a listening monitor of a flow
/// that ended so; off beneath the SNAT port search, whose callers have no
/// stack to spare for the report's call.
#[inline(always)]
fn lookup_in<const REPORT: bool, A: Family>(
    table: &impl Table<A>,
    assured: bool,
    key: &FlowKeyOf<A>,
    cfg: &Config,
    now: u64,
) -> Option<Flow<A>> {
    let entry = table.entry(key)?;
    // SAFETY: a map value pointer stays valid for the program's run.
    let e = unsafe { &mut *entry };
    if !expired(&cfg.timeouts, e.state, e.last_seen_ns, now) {
        return Some(Flow { entry, assured });
    }
    if let Some(partner) = partner_of(assured, e) {
        // SAFETY: as above.
        let p = unsafe { &*partner };
        let state = if e.dir == DIR_ORIG { e.state } else { p.state };
        if !expired(&cfg.timeouts, state, p.last_seen_ns, now) {
            e.last_seen_ns = p.last_seen_ns;
            e.state = state;
            return Some(Flow { entry, assured });
        }
    }
    // Idle both ways, or the partner is gone (LRU eviction takes one
    // entry at a time) and this direction idle.
    count(Reason::CtExpired);
    if REPORT {
        A::report_end(key, e, Reason::CtExpired);
    }
    table.erase(&e.xlat.reversed());
    table.erase(key);
    None
}

/// Records a packet of a tracked flow whose tuple is `key`: its
/// direction's counters and time, and the flow's state transition, which
/// alone touches the partner entry; promotes the flow once it is assured.
/// Fails only when the flow cannot be promoted because the assured table is
/// full: the flow is then gone and its packet must be dropped.
#[inline(always)]
pub fn account<A: Family>(
    flow: &Flow<A>,
    key: &FlowKeyOf<A>,
    tcp_flags: u8,
    len: u32,
    cfg: &Config,
    now: u64,
) -> Result<(), Reason> {
    // SAFETY: a map value pointer from `lookup`, valid for this run. Two
    // CPUs may race on the counters; they are statistics, not accounting.
    let e = unsafe { &mut *flow.entry };
    e.last_seen_ns = now;
    e.packets += 1;
    e.bytes += len as u64;
    let dir = e.dir;
    let known = CtState::from_u8(e.state);
    if next_state(key.proto, known, dir, tcp_flags) == known {
        return Ok(());
    }
    let Some(partner) = partner_of(flow.assured, e) else {
        // The partner is gone: this entry is all the flow has left.
        e.state = next_state(key.proto, known, dir, tcp_flags) as u8;
        return Ok(());
    };
    // SAFETY: as above.
    let p = unsafe { &mut *partner };
    // The original entry's state decides; the copy each entry carries is
    // read back from it after the write, so CPUs changing the state at
    // once leave both entries with the last state written.
    let orig = if dir == DIR_ORIG { &mut *e } else { &mut *p };
    let state = next_state(key.proto, CtState::from_u8(orig.state), dir, tcp_flags);
    orig.state = state as u8;
    let written = orig.state;
    e.state = written;
    p.state = written;
    if flow.assured || !is_assured(state) {
        return Ok(());
    }
    // The partner's tuple is the one copy made: an IPv6 tuple is 40 bytes
    // of a 512-byte stack.
    let partner_key = e.xlat.reversed();
    let (orig_key, reply_key) = if dir == DIR_ORIG {
        (key, &partner_key)
    } else {
        (&partner_key, key)
    };
    if promote(orig_key, reply_key) {
        return Ok(());
    }
    // Full: mark it so, and new flows are refused until a collection
    // (`collect_if_full`) finds room.
    A::report_end(key, e, Reason::DropCtFull);
    A::fresh().erase(orig_key);
    A::fresh().erase(reply_key);
    mark_full::<A>(full_entries::<A>().max(cfg.ct_max as u64));
    refuse::<A>(now)
}

/// Whether a new flow of family `A` may be created: not while `A`'s
/// assured table was last found full (the other family's has its own
/// room). Refusing at the first packet, as netfilter does when its table
/// is full, fails a connection attempt cleanly instead of mid-handshake.
#[inline(always)]
pub fn admit<A: Family>(now: u64) -> Result<(), Reason> {
    if full_entries::<A>() == 0 {
        return Ok(());
    }
    refuse::<A>(now)
}

/// While family `A`'s assured table is marked full, collects its expired
/// flows, which clears the mark once there is room. Called by the
/// collector's timer (`collector`), never by a packet.
#[inline(always)]
pub fn collect_if_full<A: Family>(cfg: &Config, now: u64) {
    if full_entries::<A>() != 0 {
        collect::<A>(cfg, now);
    }
}

/// The part of `EVENT_SLOT_FULL` one family's mark takes.
const FULL_MASK: u64 = 0xffff_ffff;

/// Entries `A`'s assured table held when last found full; 0 if it has room.
#[inline(always)]
fn full_entries<A: Family>() -> u64 {
    let slot = EVENT_LAST.get(EVENT_SLOT_FULL).copied().unwrap_or(0);
    (slot >> A::FULL_SHIFT) & FULL_MASK
}

/// Sets `A`'s full mark to `entries` (0: the table has room), leaving the
/// other family's. Two CPUs marking at once may lose one write; the next
/// refused promotion marks the table again.
#[inline(always)]
fn mark_full<A: Family>(entries: u64) {
    if let Some(slot) = EVENT_LAST.get_ptr_mut(EVENT_SLOT_FULL) {
        // SAFETY: a map value pointer, valid for this run.
        unsafe {
            *slot =
                (*slot & !(FULL_MASK << A::FULL_SHIFT)) | (entries.min(FULL_MASK) << A::FULL_SHIFT)
        };
    }
}

#[inline(always)]
fn refuse<A: Family>(now: u64) -> Result<(), Reason> {
    events::log(Reason::DropCtFull, (full_entries::<A>() / 2) as u32, now);
    Err(Reason::DropCtFull)
}

/// Moves both entries of a flow into the assured table; false if it is
/// full. The values are copied map to map, never onto the stack.
#[inline(always)]
fn promote<A: Family>(orig_key: &FlowKeyOf<A>, reply_key: &FlowKeyOf<A>) -> bool {
    let (fresh, assured) = (A::fresh(), A::assured());
    let (Some(orig), Some(reply)) = (fresh.entry(orig_key), fresh.entry(reply_key)) else {
        // Another CPU promoted it a moment ago.
        return true;
    };
    // SAFETY: map value pointers, valid for this run.
    let (orig, reply) = unsafe { (&*orig, &*reply) };
    // The original first: from the moment it is in, a lookup of the flow's
    // first tuple finds it, whichever table it tries first.
    if assured.put(orig_key, orig, BPF_ANY).is_err() {
        return false;
    }
    if assured.put(reply_key, reply, BPF_ANY).is_err() {
        assured.erase(orig_key);
        return false;
    }
    fresh.erase(orig_key);
    fresh.erase(reply_key);
    true
}

/// State of one walk of a conntrack table.
struct Collection {
    cfg: *const Config,
    now: u64,
    /// Entries of the flows found alive.
    live: u32,
    /// Which table: the assured one, or the one of new flows.
    assured: u32,
}

/// Removes `A`'s assured table's expired flows (and replies orphaned past
/// the claim grace), and records when, and whether the table has room for
/// another flow. Only a full table needs this: otherwise `lookup_in` drops
/// dead entries as it meets them.
#[inline(never)]
fn collect<A: Family>(cfg: &Config, now: u64) {
    if let Some(last) = EVENT_LAST.get_ptr_mut(EVENT_SLOT_GC) {
        // SAFETY: a map value pointer, valid for this run.
        unsafe { *last = now };
    }
    let left = walk::<A, _>(A::assured(), 1, cfg, now) as u64;
    mark_full::<A>(if left + 2 > cfg.ct_max as u64 {
        left
    } else {
        0
    });
}

/// While a monitor listens, the collector's timer also walks the table of
/// new flows, which nothing else collects (LRU eviction is silent), so a
/// flow's end is reported within a second of its expiry, as `conntrack -E`
/// reports its destruction.
#[inline(never)]
pub fn collect_new_for_monitor(cfg: &Config, now: u64) {
    walk::<u32, _>(u32::fresh(), 0, cfg, now);
}

/// Walks conntrack table `map` of family `A` (`assured` says which) with
/// `collect_one`; returns the entries of the flows found alive.
#[inline(always)]
fn walk<A: Family, M>(map: &'static M, assured: u32, cfg: &Config, now: u64) -> u32 {
    let mut walk = Collection {
        cfg,
        now,
        live: 0,
        assured,
    };
    // SAFETY: `map` is a map definition (the helper's first argument; the
    // callers pass `A`'s tables), and the callback and its context follow
    // the helper's contract. Deleting the visited element is allowed for
    // hash maps (the kernel's for_each_hash_map_elem selftest does it).
    unsafe {
        bpf_for_each_map_elem(
            map as *const M as *mut c_void,
            collect_one::<A> as *mut c_void,
            &mut walk as *mut Collection as *mut c_void,
            0,
        )
    };
    walk.live
}

extern "C" fn collect_one<A: Family>(
    _map: *mut c_void,
    key: *mut c_void,
    value: *mut c_void,
    ctx: *mut c_void,
) -> i64 {
    // SAFETY: the helper passes the visited element and our context; `cfg`
    // points at the config map's value, alive for the whole walk.
    let (key, e, walk) = unsafe {
        (
            &*(key as *const FlowKeyOf<A>),
            &*(value as *const CtEntryOf<A>),
            &mut *(ctx as *mut Collection),
        )
    };
    let cfg = unsafe { &*walk.cfg };
    let erase = |k: &FlowKeyOf<A>| {
        if walk.assured != 0 {
            A::assured().erase(k)
        } else {
            A::fresh().erase(k)
        }
    };
    let partner = partner_of(walk.assured != 0, e);
    if e.dir != DIR_ORIG {
        // A reply goes with its original. Alone (LRU evicted the
        // original), it lives while its own direction is seen.
        if partner.is_none() {
            if expired(&cfg.timeouts, e.state, e.last_seen_ns, walk.now) {
                erase(key);
            } else {
                walk.live += 1;
            }
        }
        return 0;
    }
    // The flow lives while either direction is seen.
    // SAFETY: a map value pointer, valid for this callback.
    let last = partner.map_or(e.last_seen_ns, |r| unsafe { (*r).last_seen_ns });
    if expired(&cfg.timeouts, e.state, e.last_seen_ns.max(last), walk.now) {
        count(Reason::CtExpired);
        A::report_end(key, e, Reason::CtExpired);
        erase(&e.xlat.reversed());
        erase(key);
    } else {
        walk.live += 2;
    }
    0
}

/// Builds, in per-CPU scratch space, the reply entry of a new flow whose
/// first packet had tuple `orig`. It is the same whatever the flow is
/// translated to, so a port search builds it once.
#[inline(always)]
pub fn reply_entry<A: Family>(
    orig: &FlowKeyOf<A>,
    nat: u8,
    state: CtState,
    now: u64,
) -> Result<&'static mut CtEntryOf<A>, Reason> {
    let e = A::scratch().ok_or(Reason::DropCtInsert)?;
    // SAFETY: per-CPU map value, used by this packet only.
    let e = unsafe { &mut *e };
    e.xlat = orig.reversed();
    e.created_ns = now;
    e.last_seen_ns = now;
    crate::zeroing::zero(&mut e.packets);
    crate::zeroing::zero(&mut e.bytes);
    e.dir = DIR_REPLY;
    e.state = state as u8;
    e.nat = nat;
    crate::zeroing::zero_pad(&mut e._pad);
    Ok(e)
}

/// Claims `reply_key` for a new flow. Inserting with `BPF_NOEXIST` makes the
/// claim atomic, so two CPUs racing for one SNAT port cannot both win it. A
/// key held by a dead flow (expired, or its partner evicted) or a finished
/// one (see `held`) is reclaimed.
#[inline(always)]
pub fn claim_reply<A: Family>(
    reply_key: &FlowKeyOf<A>,
    reply: &CtEntryOf<A>,
    cfg: &Config,
    now: u64,
) -> bool {
    let fresh = A::fresh();
    if held(A::assured(), true, reply_key, cfg, now) {
        return false;
    }
    if fresh.put(reply_key, reply, BPF_NOEXIST).is_ok() {
        return true;
    }
    // Already this flow's: another CPU handling a packet of the same new flow
    // won the race (kubernetes#56903 in netfilter drops the loser's packet),
    // or LRU evicted the original and left the reply. Adopt it.
    // SAFETY: read-only copy out of the map value.
    if unsafe { fresh.get(reply_key) }.is_some_and(|e| e.xlat == reply.xlat) {
        return true;
    }
    !held(fresh, false, reply_key, cfg, now) && fresh.put(reply_key, reply, BPF_NOEXIST).is_ok()
}

/// Whether a flow that still needs it holds tuple `key` in `table`. A
/// finished TCP flow (TIME_WAIT or CLOSE) gives its tuple up to a new one,
/// as the kernel's tcp_tw_reuse does; otherwise every short connection would
/// pin its SNAT port for the whole TIME_WAIT timeout, and a busy container
/// would run the range dry.
#[inline(always)]
fn held<A: Family>(
    table: &impl Table<A>,
    assured: bool,
    key: &FlowKeyOf<A>,
    cfg: &Config,
    now: u64,
) -> bool {
    let Some(flow) = lookup_in::<false, A>(table, assured, key, cfg, now) else {
        return false;
    };
    // SAFETY: map value pointers from `lookup_in`.
    let e = unsafe { &*flow.entry };
    // The original entry's state decides (a reply's copy may lag a change
    // another CPU is making).
    let state = match partner_of(assured, e) {
        // SAFETY: as above.
        Some(p) if e.dir != DIR_ORIG => unsafe { (*p).state },
        _ => e.state,
    };
    if !matches!(CtState::from_u8(state), CtState::TimeWait | CtState::Close) {
        return true;
    }
    let partner_key = e.xlat.reversed();
    let (orig_key, reply_key) = if e.dir == DIR_ORIG {
        (key, &partner_key)
    } else {
        (&partner_key, key)
    };
    table.erase(orig_key);
    table.erase(reply_key);
    false
}

/// Completes a flow whose reply entry is claimed: turns the scratch entry
/// into the original one (rewriting to `xlat`) and inserts it, or releases
/// the claim if that fails.
#[inline(always)]
pub fn insert_orig<A: Family>(
    orig: &FlowKeyOf<A>,
    xlat: &FlowKeyOf<A>,
    entry: &mut CtEntryOf<A>,
    len: u32,
) -> Result<(), Reason> {
    entry.xlat = *xlat;
    entry.dir = DIR_ORIG;
    entry.packets = 1;
    entry.bytes = len as u64;
    if A::fresh().put(orig, entry, BPF_ANY).is_err() {
        A::fresh().erase(&xlat.reversed());
        return Err(Reason::DropCtInsert);
    }
    Ok(())
}
