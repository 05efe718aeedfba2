//! Following fragmented datagrams: a first fragment is translated like any
//! packet and its ports remembered; later fragments, which carry no L4
//! header, recall them to find the flow and get their addresses rewritten.
//! The L4 checksum covers the whole datagram but lives in the first fragment,
//! so only that one's checksum changes.

use aya_ebpf::{bindings::BPF_ANY, maps::LruHashMap};
use netbr_common::{
    conntrack::FlowKeyOf,
    counters::Reason,
    maps::{FragKey, FragVal},
};

use crate::{
    maps::FRAGMENTS,
    parse::{Packet, FRAG_FIRST},
};

#[inline(always)]
fn key(pkt: &Packet, hook: u8) -> FragKey {
    FragKey {
        saddr: pkt.key.saddr,
        daddr: pkt.key.daddr,
        id: pkt.ip_id,
        proto: pkt.key.proto,
        hook,
    }
}

/// Records a first fragment's ports and whether this hook translated it.
#[inline(always)]
pub fn remember(pkt: &Packet, hook: u8, translated: bool) {
    if pkt.frag == FRAG_FIRST {
        remember_in(&FRAGMENTS, &key(pkt, hook), &pkt.key, translated);
    }
}

/// Fills a later fragment's ports in from its first fragment. A datagram
/// this hook left alone passes; one whose first fragment it never saw is
/// dropped, since nothing says where it belongs.
#[inline(always)]
pub fn recall(pkt: &mut Packet, hook: u8) -> Result<(), Reason> {
    let key = key(pkt, hook);
    recall_in(&FRAGMENTS, &key, &mut pkt.key)
}

/// [`remember`] for either family: `map` keyed by `key`, the ports of
/// `tuple`.
#[inline(always)]
pub fn remember_in<K, A>(
    map: &LruHashMap<K, FragVal>,
    key: &K,
    tuple: &FlowKeyOf<A>,
    translated: bool,
) {
    let val = crate::zeroing::padded!(FragVal {
        sport: tuple.sport,
        dport: tuple.dport,
        translated: translated as u8,
    });
    let _ = map.insert(key, &val, BPF_ANY as u64);
}

/// [`recall`] for either family: the ports go into `tuple`.
#[inline(always)]
pub fn recall_in<K, A>(
    map: &LruHashMap<K, FragVal>,
    key: &K,
    tuple: &mut FlowKeyOf<A>,
) -> Result<(), Reason> {
    // SAFETY: read-only copy out of the map value.
    let val = unsafe { map.get(key) }.ok_or(Reason::DropFragNoFirst)?;
    if val.translated == 0 {
        return Err(Reason::PassFragment);
    }
    tuple.sport = val.sport;
    tuple.dport = val.dport;
    Ok(())
}
