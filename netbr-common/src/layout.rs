//! The pinned datapath's layout: every pinned map with its kernel type, key
//! and value sizes and size, and every program. The loader checks pins
//! against this table each time it opens them, so a binary never writes into
//! maps of another layout; a test checks the BPF object against it, so the
//! table cannot drift from what the programs declare.

use core::mem::size_of;

use crate::{
    conntrack::{CtEntry, CtEntry6, FlowKey, FlowKey6},
    firewall::*,
    maps::*,
    monitor::{MAP_MONITOR, MONITOR_BYTES},
    net6::{
        FragKey6, MappingKey6, Net6, SockAddr6, SockKey6, MAP_CONNTRACK6, MAP_CONNTRACK6_NEW,
        MAP_ENDPOINTS6, MAP_ENDPOINTS6_BY_ADDR, MAP_FRAGMENTS6, MAP_MAPPINGS6, MAP_NET6,
        MAP_SOCKETS6,
    },
    pacing::{Pace, PaceKey, MAP_PACING, PACING_MAX_ENTRIES},
    ports::{PortSet, MAP_PORTS, PORT_SETS},
    snat::SNAT_HISTOGRAM_LEN,
};

/// `enum bpf_map_type` values of the maps netbr pins.
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
pub const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
pub const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// What one pinned map must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// `None`: sized by `attach` (the conntrack tables, `--ct-max`).
    pub max_entries: Option<u32>,
}

const fn spec<K, V>(name: &'static str, map_type: u32, max: Option<u32>) -> MapSpec {
    MapSpec {
        name,
        map_type,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        max_entries: max,
    }
}

/// Every map the loader pins, in one list so attach, open and detach agree.
pub const PINNED: [MapSpec; 29] = [
    spec::<u32, Config>(MAP_CONFIG, BPF_MAP_TYPE_ARRAY, Some(1)),
    spec::<u32, Net6>(MAP_NET6, BPF_MAP_TYPE_ARRAY, Some(1)),
    spec::<MappingKey, MappingTarget>(MAP_MAPPINGS, BPF_MAP_TYPE_HASH, Some(MAPPINGS_MAX_ENTRIES)),
    spec::<MappingKey6, MappingTarget>(
        MAP_MAPPINGS6,
        BPF_MAP_TYPE_HASH,
        Some(MAPPINGS_MAX_ENTRIES),
    ),
    spec::<FlowKey, CtEntry>(MAP_CONNTRACK, BPF_MAP_TYPE_HASH, None),
    spec::<FlowKey, CtEntry>(MAP_CONNTRACK_NEW, BPF_MAP_TYPE_LRU_HASH, None),
    spec::<FlowKey6, CtEntry6>(MAP_CONNTRACK6, BPF_MAP_TYPE_HASH, None),
    spec::<FlowKey6, CtEntry6>(MAP_CONNTRACK6_NEW, BPF_MAP_TYPE_LRU_HASH, None),
    spec::<u32, [u32; 4]>(
        MAP_ENDPOINTS6,
        BPF_MAP_TYPE_HASH,
        Some(ENDPOINTS_MAX_ENTRIES),
    ),
    spec::<[u32; 4], Endpoint>(
        MAP_ENDPOINTS6_BY_ADDR,
        BPF_MAP_TYPE_HASH,
        Some(ENDPOINTS_MAX_ENTRIES),
    ),
    spec::<SockKey6, SockAddr6>(
        MAP_SOCKETS6,
        BPF_MAP_TYPE_LRU_HASH,
        Some(SOCKETS_MAX_ENTRIES),
    ),
    spec::<FragKey6, FragVal>(
        MAP_FRAGMENTS6,
        BPF_MAP_TYPE_LRU_HASH,
        Some(FRAGMENTS_MAX_ENTRIES),
    ),
    spec::<u32, u32>(
        MAP_LOCAL_ADDRS,
        BPF_MAP_TYPE_HASH,
        Some(LOCAL_ADDRS_MAX_ENTRIES),
    ),
    spec::<u32, Endpoint>(
        MAP_ENDPOINTS,
        BPF_MAP_TYPE_HASH,
        Some(ENDPOINTS_MAX_ENTRIES),
    ),
    spec::<u32, u64>(MAP_COUNTERS, BPF_MAP_TYPE_PERCPU_ARRAY, Some(REASON_SLOTS)),
    spec::<SockKey, MappingTarget>(
        MAP_SOCKETS,
        BPF_MAP_TYPE_LRU_HASH,
        Some(SOCKETS_MAX_ENTRIES),
    ),
    spec::<FragKey, FragVal>(
        MAP_FRAGMENTS,
        BPF_MAP_TYPE_LRU_HASH,
        Some(FRAGMENTS_MAX_ENTRIES),
    ),
    spec::<u32, u64>(
        MAP_SNAT_HISTOGRAM,
        BPF_MAP_TYPE_PERCPU_ARRAY,
        Some(SNAT_HISTOGRAM_LEN),
    ),
    spec::<u32, u64>(MAP_FAST_PATH, BPF_MAP_TYPE_PERCPU_ARRAY, Some(FAST_COUNT)),
    MapSpec {
        name: MAP_EVENTS,
        map_type: BPF_MAP_TYPE_RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: Some(EVENTS_BYTES),
    },
    spec::<u32, u64>(MAP_EVENT_LAST, BPF_MAP_TYPE_ARRAY, Some(EVENT_SLOTS)),
    MapSpec {
        name: MAP_MONITOR,
        map_type: BPF_MAP_TYPE_RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: Some(MONITOR_BYTES),
    },
    // The trie's key is the kernel's `bpf_lpm_trie_key` header (a u32
    // prefix length) followed by the data.
    MapSpec {
        name: MAP_FIREWALL,
        map_type: BPF_MAP_TYPE_LPM_TRIE,
        key_size: 4 + size_of::<FwKey>() as u32,
        value_size: size_of::<FwRule>() as u32,
        max_entries: Some(FIREWALL_MAX_ENTRIES),
    },
    spec::<FwScopeKey, u32>(
        MAP_FIREWALL_SCOPES,
        BPF_MAP_TYPE_HASH,
        Some(FIREWALL_SCOPES_MAX_ENTRIES),
    ),
    spec::<u32, u64>(
        MAP_FIREWALL_HITS,
        BPF_MAP_TYPE_PERCPU_ARRAY,
        Some(FIREWALL_MAX_ENTRIES),
    ),
    MapSpec {
        name: MAP_NO_MASQUERADE,
        map_type: BPF_MAP_TYPE_LPM_TRIE,
        key_size: 4 + 4,
        value_size: 4,
        max_entries: Some(NO_MASQUERADE_MAX_ENTRIES),
    },
    spec::<PaceKey, Pace>(MAP_PACING, BPF_MAP_TYPE_HASH, Some(PACING_MAX_ENTRIES)),
    spec::<u32, PortSet>(MAP_PORTS, BPF_MAP_TYPE_ARRAY, Some(PORT_SETS)),
    // A `bpf_timer` (16 bytes) and a word.
    MapSpec {
        name: MAP_COLLECTOR,
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 24,
        max_entries: Some(1),
    },
];

/// Maps of the object that are never pinned: per-CPU scratch space whose
/// contents do not outlive one packet, and `.rodata`, the load-time
/// constants (`maps::GLOBAL_FLAGS`), which each load sets afresh.
pub const UNPINNED: [&str; 8] = [
    "NB_FIB",
    "NB_SCRATCH",
    "NB_SCRATCH6",
    "NB_PKT6",
    "NB_PKT",
    "NB_SEARCH",
    "NB_FWKEY",
    ".rodata",
];

/// Every program of the object.
pub const PROGRAMS: [&str; 17] = [
    PROG_UPLINK_INGRESS,
    PROG_UPLINK_EGRESS,
    PROG_BRIDGE_INGRESS,
    PROG_ENDPOINT_INGRESS,
    PROG_XDP,
    PROG_CONNECT4,
    PROG_SENDMSG4,
    PROG_RECVMSG4,
    PROG_GETPEER4,
    PROG_BIND4,
    PROG_CONNECT6,
    PROG_SENDMSG6,
    PROG_RECVMSG6,
    PROG_GETPEER6,
    PROG_BIND6,
    PROG_PACE_EGRESS,
    PROG_PACE_INGRESS,
];

/// The spec of pinned map `name`.
pub fn pinned(name: &str) -> Option<&'static MapSpec> {
    PINNED.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_names_are_unique_and_fit_the_kernel() {
        for (i, a) in PINNED.iter().enumerate() {
            assert!(a.name.len() < 16, "{}", a.name);
            assert!(
                PINNED[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
            assert!(!UNPINNED.contains(&a.name));
        }
    }

    #[test]
    fn slots_are_fixed_numbers() {
        // Changing these moves pinned slots: bump LAYOUT_VERSION with them.
        assert_eq!(
            (
                EVENT_SLOT_MONITOR,
                EVENT_SLOT_GC,
                EVENT_SLOT_FULL,
                EVENT_SLOTS
            ),
            (61, 62, 63, 64)
        );
        assert_eq!(REASON_SLOTS, 62);
        const { assert!(crate::counters::REASON_COUNT <= REASON_SLOTS) };
    }
}
