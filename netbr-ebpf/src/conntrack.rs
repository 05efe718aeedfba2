//! The conntrack tables: lookup with expiry, flow creation, accounting, and
//! promotion of assured flows. Entry layout and invariants are described in
//! `netbr_common::conntrack`.
//!
//! Two LRU tables, as netfilter's early_drop evicts only flows that are not
//! ASSURED: flows start in `CT_NEW` and move to `CONNTRACK` once they have
//! seen traffic both ways. A flood of new flows then evicts only other new
//! flows; an established one can only be pushed out by established ones.
//! Both entries of a flow always live in the same table.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    maps::LruHashMap,
};
use netbr_common::{
    conntrack::{expired, is_assured, next_state, CtEntry, CtState, FlowKey, DIR_ORIG, DIR_REPLY},
    counters::Reason,
    maps::Config,
};

use crate::{
    counters::count,
    maps::{CONNTRACK, CT_NEW, SCRATCH},
};

type Table = LruHashMap<FlowKey, CtEntry>;

/// How long a freshly claimed reply entry may wait for its original entry
/// before `lookup` treats it as garbage. Far longer than the few instructions
/// between the two inserts, far shorter than any timeout.
const CLAIM_GRACE_NS: u64 = 1_000_000_000;

/// A tracked flow as seen by one packet: the entry its tuple matched, the
/// original entry that holds the flow's state (the same one for DIR_ORIG),
/// and whether they sit in the assured table.
pub struct Flow {
    pub entry: *mut CtEntry,
    pub orig: *mut CtEntry,
    pub assured: bool,
}

/// Finds the live flow `key` belongs to, assured flows first.
#[inline(always)]
pub fn lookup(key: &FlowKey, cfg: &Config, now: u64) -> Option<Flow> {
    lookup_in(&CONNTRACK, true, key, cfg, now).or_else(|| lookup_in(&CT_NEW, false, key, cfg, now))
}

/// Finds the live flow of `key` in one table. Entries whose partner is gone
/// (LRU eviction takes one entry at a time) or whose state timed out are
/// removed here, so expiry needs no garbage collector.
#[inline(always)]
fn lookup_in(table: &Table, assured: bool, key: &FlowKey, cfg: &Config, now: u64) -> Option<Flow> {
    let entry = table.get_ptr_mut(key)?;
    // SAFETY: a map value pointer stays valid for the program's run.
    let e = unsafe { &*entry };
    let orig_key = e.xlat.reversed();
    let orig = if e.dir == DIR_ORIG {
        entry
    } else {
        match table.get_ptr_mut(&orig_key) {
            Some(orig) => orig,
            None => {
                // A reply entry without its original: LRU evicted the
                // original, or another CPU claimed this reply a moment ago
                // and has not inserted the original yet. Only the first is
                // garbage; taking the second would give its port to two flows.
                if now.saturating_sub(e.created_ns) > CLAIM_GRACE_NS {
                    let _ = table.remove(key);
                }
                return None;
            }
        }
    };
    // SAFETY: as above.
    let o = unsafe { &*orig };
    if expired(&cfg.timeouts, o.state, o.last_seen_ns, now) {
        count(Reason::CtExpired);
        let (orig_key, reply_key) = if e.dir == DIR_ORIG {
            (*key, e.xlat.reversed())
        } else {
            (orig_key, *key)
        };
        let _ = table.remove(&orig_key);
        let _ = table.remove(&reply_key);
        return None;
    }
    Some(Flow {
        entry,
        orig,
        assured,
    })
}

/// Records a packet of a tracked flow whose tuple is `key`: state
/// transition, counters, last seen; promotes the flow once it is assured.
#[inline(always)]
pub fn account(flow: &Flow, key: &FlowKey, proto: u8, tcp_flags: u8, len: u32, now: u64) {
    // SAFETY: map value pointers from `lookup`, valid for this run. Two CPUs
    // may race on the counters; they are statistics, not accounting.
    let (e, o) = unsafe { (&*flow.entry, &mut *flow.orig) };
    let dir = e.dir;
    let state = next_state(proto, CtState::from_u8(o.state), dir, tcp_flags);
    o.state = state as u8;
    o.last_seen_ns = now;
    let d = (dir & 1) as usize;
    o.packets[d] += 1;
    o.bytes[d] += len as u64;
    if !flow.assured && is_assured(state) {
        let (orig_key, reply_key) = if dir == DIR_ORIG {
            (*key, o.xlat.reversed())
        } else {
            (e.xlat.reversed(), *key)
        };
        promote(&orig_key, &reply_key, flow.orig);
    }
}

/// Moves both entries of a flow into the assured table. The values are
/// copied map to map, never onto the stack.
#[inline(always)]
fn promote(orig_key: &FlowKey, reply_key: &FlowKey, orig: *mut CtEntry) {
    let Some(reply) = CT_NEW.get_ptr_mut(reply_key) else {
        return;
    };
    // SAFETY: map value pointers, valid for this run.
    let (orig, reply) = unsafe { (&*orig, &*reply) };
    // The original first: from the moment it is in, a lookup of the flow's
    // first tuple finds it, whichever table it tries first.
    if CONNTRACK.insert(orig_key, orig, BPF_ANY as u64).is_err() {
        return;
    }
    if CONNTRACK.insert(reply_key, reply, BPF_ANY as u64).is_err() {
        let _ = CONNTRACK.remove(orig_key);
        return;
    }
    let _ = CT_NEW.remove(orig_key);
    let _ = CT_NEW.remove(reply_key);
}

/// Builds, in per-CPU scratch space, the reply entry of a new flow whose
/// first packet had tuple `orig`. It is the same whatever the flow is
/// translated to, so a port search builds it once.
#[inline(always)]
pub fn reply_entry(
    orig: &FlowKey,
    nat: u8,
    state: CtState,
    now: u64,
) -> Result<&'static mut CtEntry, Reason> {
    let e = SCRATCH.get_ptr_mut(0).ok_or(Reason::DropCtInsert)?;
    // SAFETY: per-CPU map value, used by this packet only.
    let e = unsafe { &mut *e };
    e.xlat = orig.reversed();
    e.created_ns = now;
    e.last_seen_ns = now;
    e.packets = [0, 0];
    e.bytes = [0, 0];
    e.dir = DIR_REPLY;
    e.state = state as u8;
    e.nat = nat;
    e._pad = [0; 5];
    Ok(e)
}

/// Claims `reply_key` for a new flow. Inserting with `BPF_NOEXIST` makes the
/// claim atomic, so two CPUs racing for one SNAT port cannot both win it. A
/// key held by a dead flow (expired, or its partner evicted) or a finished
/// one (see `held`) is reclaimed.
#[inline(always)]
pub fn claim_reply(reply_key: &FlowKey, reply: &CtEntry, cfg: &Config, now: u64) -> bool {
    if held(&CONNTRACK, true, reply_key, cfg, now) {
        return false;
    }
    if CT_NEW.insert(reply_key, reply, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    // Already this flow's: another CPU handling a packet of the same new flow
    // won the race (kubernetes#56903 in netfilter drops the loser's packet),
    // or LRU evicted the original and left the reply. Adopt it.
    // SAFETY: read-only copy out of the map value.
    if unsafe { CT_NEW.get(reply_key) }.is_some_and(|e| e.xlat == reply.xlat) {
        return true;
    }
    !held(&CT_NEW, false, reply_key, cfg, now)
        && CT_NEW.insert(reply_key, reply, BPF_NOEXIST as u64).is_ok()
}

/// Whether a flow that still needs it holds tuple `key` in `table`. A
/// finished TCP flow (TIME_WAIT or CLOSE) gives its tuple up to a new one,
/// as the kernel's tcp_tw_reuse does; otherwise every short connection would
/// pin its SNAT port for the whole TIME_WAIT timeout, and a busy container
/// would run the range dry.
#[inline(always)]
fn held(table: &Table, assured: bool, key: &FlowKey, cfg: &Config, now: u64) -> bool {
    let Some(flow) = lookup_in(table, assured, key, cfg, now) else {
        return false;
    };
    // SAFETY: map value pointers from `lookup_in`.
    let (e, state) = unsafe { (&*flow.entry, (*flow.orig).state) };
    if !matches!(CtState::from_u8(state), CtState::TimeWait | CtState::Close) {
        return true;
    }
    let (orig_key, reply_key) = if e.dir == DIR_ORIG {
        (*key, e.xlat.reversed())
    } else {
        (e.xlat.reversed(), *key)
    };
    let _ = table.remove(&orig_key);
    let _ = table.remove(&reply_key);
    false
}

/// Completes a flow whose reply entry is claimed: turns the scratch entry
/// into the original one (rewriting to `xlat`) and inserts it, or releases
/// the claim if that fails.
#[inline(always)]
pub fn insert_orig(
    orig: &FlowKey,
    xlat: &FlowKey,
    entry: &mut CtEntry,
    len: u32,
) -> Result<(), Reason> {
    entry.xlat = *xlat;
    entry.dir = DIR_ORIG;
    entry.packets = [1, 0];
    entry.bytes = [len as u64, 0];
    if CT_NEW.insert(orig, &*entry, BPF_ANY as u64).is_err() {
        let _ = CT_NEW.remove(&xlat.reversed());
        return Err(Reason::DropCtInsert);
    }
    Ok(())
}
