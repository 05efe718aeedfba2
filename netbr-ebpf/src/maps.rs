//! The maps, declared once. Pinning is the loader's choice: it pins the maps
//! `netbr_common::layout::PINNED` lists under the per-bridge directory, not
//! the per-CPU scratch maps; tests load them unpinned.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use netbr_common::{
    conntrack::{CtEntry, CtEntry6, FlowKey, FlowKey6},
    firewall::{FwKey, FwRule, FwScopeKey, FIREWALL_MAX_ENTRIES, FIREWALL_SCOPES_MAX_ENTRIES},
    maps::{
        Config, Endpoint, FragKey, FragVal, MappingKey, MappingTarget, SockKey,
        CT_MAX_ENTRIES_DEFAULT, ENDPOINTS_MAX_ENTRIES, EVENTS_BYTES, EVENT_SLOTS, FAST_COUNT,
        FRAGMENTS_MAX_ENTRIES, LOCAL_ADDRS_MAX_ENTRIES, MAPPINGS_MAX_ENTRIES,
        NO_MASQUERADE_MAX_ENTRIES, REASON_SLOTS, SOCKETS_MAX_ENTRIES,
    },
    net6::Net6,
    snat::SNAT_HISTOGRAM_LEN,
};

#[map(name = "NB_CFG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The bridge's IPv6 subnet (`netbr_common::net6`).
#[map(name = "NB_NET6")]
pub static NET6: Array<Net6> = Array::with_max_entries(1, 0);

#[map(name = "NB_MAPS")]
pub static MAPPINGS: HashMap<MappingKey, MappingTarget> =
    HashMap::with_max_entries(MAPPINGS_MAX_ENTRIES, 0);

/// Assured flows. Sized by the loader (`--ct-max`), like `CT_NEW`; see
/// `conntrack.rs` for why there are two tables and why this one is not LRU.
#[map(name = "NB_CT4")]
pub static CONNTRACK: HashMap<FlowKey, CtEntry> =
    HashMap::with_max_entries(CT_MAX_ENTRIES_DEFAULT, 0);

/// Flows not yet assured.
#[map(name = "NB_CT4N")]
pub static CT_NEW: LruHashMap<FlowKey, CtEntry> =
    LruHashMap::with_max_entries(CT_MAX_ENTRIES_DEFAULT, 0);

/// IPv6's assured flows and new ones, as `CONNTRACK` and `CT_NEW` are
/// IPv4's; sized alike.
#[map(name = "NB_CT6")]
pub static CONNTRACK6: HashMap<FlowKey6, CtEntry6> =
    HashMap::with_max_entries(CT_MAX_ENTRIES_DEFAULT, 0);

#[map(name = "NB_CT6N")]
pub static CT6_NEW: LruHashMap<FlowKey6, CtEntry6> =
    LruHashMap::with_max_entries(CT_MAX_ENTRIES_DEFAULT, 0);

/// IPv4 addresses of the host (network byte order), for Docker's
/// "published on every local address" (`-m addrtype --dst-type LOCAL`).
#[map(name = "NB_LOCAL")]
pub static LOCAL_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(LOCAL_ADDRS_MAX_ENTRIES, 0);

/// Destinations containers reach with their own address
/// (`netbr_common::maps::MAP_NO_MASQUERADE`).
#[map(name = "NB_NOMASQ")]
pub static NO_MASQUERADE: LpmTrie<u32, u32> =
    LpmTrie::with_max_entries(NO_MASQUERADE_MAX_ENTRIES, 0);

/// Host IPv6 sockets a cgroup hook rewrote (`netbr_common::net6`).
#[map(name = "NB_SOCK6")]
pub static SOCKETS6: LruHashMap<netbr_common::net6::SockKey6, netbr_common::net6::SockAddr6> =
    LruHashMap::with_max_entries(SOCKETS_MAX_ENTRIES, 0);

/// Endpoints by their IPv6 addresses (`netbr_common::net6`).
#[map(name = "NB_EP6R")]
pub static ENDPOINTS6_BY_ADDR: HashMap<[u32; 4], Endpoint> =
    HashMap::with_max_entries(ENDPOINTS_MAX_ENTRIES, 0);

/// Ports published on one IPv6 address (`netbr_common::net6`).
#[map(name = "NB_MAP6")]
pub static MAPPINGS6: HashMap<netbr_common::net6::MappingKey6, MappingTarget> =
    HashMap::with_max_entries(MAPPINGS_MAX_ENTRIES, 0);

/// Endpoints' IPv6 addresses by their IPv4 ones (`netbr_common::net6`).
#[map(name = "NB_EP6")]
pub static ENDPOINTS6: HashMap<u32, [u32; 4]> = HashMap::with_max_entries(ENDPOINTS_MAX_ENTRIES, 0);

#[map(name = "NB_EP")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::with_max_entries(ENDPOINTS_MAX_ENTRIES, 0);

/// Sockets whose destination a cgroup hook rewrote; LRU, so entries of
/// closed sockets age out without bookkeeping.
#[map(name = "NB_SOCK")]
pub static SOCKETS: LruHashMap<SockKey, MappingTarget> =
    LruHashMap::with_max_entries(SOCKETS_MAX_ENTRIES, 0);

/// First fragments seen, so later ones (which carry no ports) can follow
/// them. LRU: a datagram's record is only needed while it is in flight.
#[map(name = "NB_FRAG")]
pub static FRAGMENTS: LruHashMap<FragKey, FragVal> =
    LruHashMap::with_max_entries(FRAGMENTS_MAX_ENTRIES, 0);

/// IPv6's first fragments, as `FRAGMENTS` holds IPv4's.
#[map(name = "NB_FRAG6")]
pub static FRAGMENTS6: LruHashMap<netbr_common::net6::FragKey6, FragVal> =
    LruHashMap::with_max_entries(FRAGMENTS_MAX_ENTRIES, 0);

/// How many candidates new masquerade flows needed (see
/// `netbr_common::snat::SNAT_HISTOGRAM_LEN`).
#[map(name = "NB_SNATH")]
pub static SNAT_HISTOGRAM: PerCpuArray<u64> = PerCpuArray::with_max_entries(SNAT_HISTOGRAM_LEN, 0);

/// Packets the fast path delivered (`netbr_common::maps::FAST_*`).
#[map(name = "NB_FAST")]
pub static FAST_PATH: PerCpuArray<u64> = PerCpuArray::with_max_entries(FAST_COUNT, 0);

/// Per-CPU room for `bpf_fib_lookup`'s 64-byte parameters, off the stack.
#[map(name = "NB_FIB")]
pub static FIB: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);

/// The datapath's log (`netbr_common::maps::Event`), rate-limited through
/// `EVENT_LAST`; read by `netbr events`.
#[map(name = "NB_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Reports for `netbr monitor` (`netbr_common::monitor::MonitorEvent`).
#[map(name = "NB_MON")]
pub static MONITOR: RingBuf = RingBuf::with_byte_size(netbr_common::monitor::MONITOR_BYTES, 0);

#[map(name = "NB_EVLAST")]
pub static EVENT_LAST: Array<u64> = Array::with_max_entries(EVENT_SLOTS, 0);

/// Firewall rules (`netbr_common::firewall`); the loader keeps them in step
/// with the state file.
#[map(name = "NB_FW")]
pub static FIREWALL: LpmTrie<FwKey, FwRule> = LpmTrie::with_max_entries(FIREWALL_MAX_ENTRIES, 0);

/// Per-CPU room for the firewall's trie key: on the stack it would push
/// `nb_up_in`'s call chain past 512 bytes. Not pinned.
#[map(name = "NB_FWKEY")]
pub static FIREWALL_KEY: PerCpuArray<aya_ebpf::maps::lpm_trie::Key<FwKey>> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-CPU hits of each firewall trie entry, by `FwRule::slot`.
#[map(name = "NB_FWHITS")]
pub static FIREWALL_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FIREWALL_MAX_ENTRIES, 0);

/// Scopes of firewall allow rules, each with its count of trie entries.
#[map(name = "NB_FWSC")]
pub static FIREWALL_SCOPES: HashMap<FwScopeKey, u32> =
    HashMap::with_max_entries(FIREWALL_SCOPES_MAX_ENTRIES, 0);

#[map(name = "NB_CNT")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_SLOTS, 0);

/// Per-CPU room for building a conntrack entry: the 512-byte BPF stack is
/// shared by the whole call chain, and the SNAT port search (a `bpf_loop`
/// callback) would not fit with a 72-byte entry on it. Not pinned: nothing in
/// it outlives one packet.
#[map(name = "NB_SCRATCH")]
pub static SCRATCH: PerCpuArray<CtEntry> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "NB_SCRATCH6")]
pub static SCRATCH6: PerCpuArray<CtEntry6> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for a parsed IPv6 packet, as `PACKET` is IPv4's.
#[map(name = "NB_PKT6")]
pub static PACKET6: PerCpuArray<crate::ipv6::Packet6> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for the parsed packet, for the same reason as `SCRATCH`:
/// on the stack it would not leave room for the port search beneath it.
#[map(name = "NB_PKT")]
pub static PACKET: PerCpuArray<crate::parse::Packet> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU state of the SNAT port search (`nat::probe_port` says why it is
/// not on the stack). Not pinned.
#[map(name = "NB_SEARCH")]
pub static SEARCH: PerCpuArray<crate::port_search::PortSearch> =
    PerCpuArray::with_max_entries(1, 0);

/// Limits of paced endpoints and their departure clocks
/// (`netbr_common::pacing`).
#[map(name = "NB_PACE")]
pub static PACING: HashMap<netbr_common::pacing::PaceKey, netbr_common::pacing::Pace> =
    HashMap::with_max_entries(netbr_common::pacing::PACING_MAX_ENTRIES, 0);

/// The uplink's port sets (`netbr_common::ports`): flows' and published.
#[map(name = "NB_PORTS")]
pub static PORTS: Array<netbr_common::ports::PortSet> =
    Array::with_max_entries(netbr_common::ports::PORT_SETS, 0);
