//! Map names, pin names and the Pod types stored in the maps.

/// Map names as they appear in the object file and under the pin directory.
/// Kernel object names are cut at 15 characters; these stay well below.
pub const MAP_CONFIG: &str = "NB_CFG";
pub const MAP_MAPPINGS: &str = "NB_MAPS";
/// Assured flows (TCP established, UDP answered): a plain hash, never
/// evicted. When it is full, flows about to become assured are refused
/// (`DropCtFull`) until expired entries are collected.
pub const MAP_CONNTRACK: &str = "NB_CT4";
/// Flows being set up: LRU, so a flood of new flows evicts only its own kind,
/// as netfilter's early_drop evicts only entries that are not ASSURED.
pub const MAP_CONNTRACK_NEW: &str = "NB_CT4N";
pub const MAP_LOCAL_ADDRS: &str = "NB_LOCAL";
/// Destinations containers reach untranslated (`attach --no-masquerade`,
/// CNI `nonMasqueradeCIDRs`, Docker's `enable_ip_masquerade=false`): an LPM
/// trie keyed by IPv4 prefix (address in network byte order), value unused.
pub const MAP_NO_MASQUERADE: &str = "NB_NOMASQ";
pub const NO_MASQUERADE_MAX_ENTRIES: u32 = 256;
/// The assured table's collector: a `bpf_timer` that collects expired
/// flows apart from any packet. Pinned, so collection goes on without a
/// netbr process; made afresh by every attach, so its timer runs the
/// programs that attach loaded.
pub const MAP_COLLECTOR: &str = "NB_GC";
pub const MAP_ENDPOINTS: &str = "NB_EP";
pub const MAP_COUNTERS: &str = "NB_CNT";
pub const MAP_SOCKETS: &str = "NB_SOCK";
pub const MAP_FRAGMENTS: &str = "NB_FRAG";
/// Per-CPU counts of packets the fast path delivered, indexed by `FAST_*`.
/// Counted besides each packet's reason in `NB_CNT`.
pub const MAP_FAST_PATH: &str = "NB_FAST";
pub const FAST_INTO_CONTAINER: u32 = 0;
pub const FAST_OUT_UPLINK: u32 = 1;
/// Delivered by the uplink's XDP program (`attach --xdp`).
pub const FAST_XDP: u32 = 2;
pub const FAST_COUNT: u32 = 3;
/// Per-CPU histogram of SNAT port-search attempts (`snat::SNAT_HISTOGRAM_LEN`).
pub const MAP_SNAT_HISTOGRAM: &str = "NB_SNATH";
/// Ring buffer of `Event`s, the datapath's rate-limited log; `netbr events`
/// drains it.
pub const MAP_EVENTS: &str = "NB_EVENTS";
pub const EVENTS_BYTES: u32 = 64 * 1024;
/// Per-reason time (monotonic ns) of the last event; then the time of the
/// last collection of the assured table (`EVENT_SLOT_GC`) and the entries
/// it held when last found full, 0 once a collection found room
/// (`EVENT_SLOT_FULL`).
pub const MAP_EVENT_LAST: &str = "NB_EVLAST";
/// Slot numbers are fixed, not derived from `REASON_COUNT`: a pinned map
/// outlives the binary that made it, and a slot that moved when a reason was
/// added would make a re-attached datapath read the wrong slot (and, for
/// `EVENT_SLOT_FULL`, silently stop refusing flows when the table is full).
/// Reasons take slots `0..REASON_SLOTS`.
/// A running monitor's deadline (`monitor`): reports before it.
pub const EVENT_SLOT_MONITOR: u32 = 61;
pub const EVENT_SLOT_GC: u32 = 62;
pub const EVENT_SLOT_FULL: u32 = 63;
pub const EVENT_SLOTS: u32 = 64;
/// Slots of the per-CPU counter array and of the per-reason event slots:
/// room for reasons yet to come, so adding one changes no map's size.
/// (Reasons stay below `EVENT_SLOT_MONITOR`, the first slot of another use.)
pub const REASON_SLOTS: u32 = 62;
const _: () = assert!(crate::counters::REASON_COUNT <= EVENT_SLOT_MONITOR);
const _: () = assert!(crate::counters::REASON_COUNT <= REASON_SLOTS);
/// At most one event per reason, and one collection, per this interval.
pub const EVENT_INTERVAL_NS: u64 = 1_000_000_000;

/// One line of the datapath's log: something an operator must act on
/// happened (`reason` is a `counters::Reason`; its counter says how often,
/// the log only that it did).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// Monotonic clock (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub reason: u32,
    /// Entries the assured table held after collection, for `DropCtFull`;
    /// 0 otherwise.
    pub detail: u32,
}

/// Program names (ELF symbol names) and the hook each one is attached to.
pub const PROG_UPLINK_INGRESS: &str = "nb_up_in";
pub const PROG_UPLINK_EGRESS: &str = "nb_up_out";
pub const PROG_BRIDGE_INGRESS: &str = "nb_br_in";
/// On each endpoint's host-side veth, ingress (the fast path's tracked
/// flows, before the bridge).
pub const PROG_ENDPOINT_INGRESS: &str = "nb_ep_in";
/// XDP on the uplink (`attach --xdp`).
pub const PROG_XDP: &str = "nb_xdp";
/// cgroup sock_addr programs: host-local access to published ports.
pub const PROG_CONNECT4: &str = "nb_connect4";
pub const PROG_SENDMSG4: &str = "nb_sendmsg4";
pub const PROG_RECVMSG4: &str = "nb_recvmsg4";
pub const PROG_GETPEER4: &str = "nb_getpeer4";
/// cgroup bind4: host sockets may not bind published host ports.
pub const PROG_BIND4: &str = "nb_bind4";
/// The same for IPv6 sockets.
pub const PROG_CONNECT6: &str = "nb_connect6";
pub const PROG_SENDMSG6: &str = "nb_sendmsg6";
pub const PROG_RECVMSG6: &str = "nb_recvmsg6";
pub const PROG_GETPEER6: &str = "nb_getpeer6";
pub const PROG_BIND6: &str = "nb_bind6";
/// Pacing of limited endpoints (`netbr_common::pacing`), on TC egress of
/// the container's interface (what it sends; TC ingress of its host-side
/// veth when policing) and of its host-side veth (what it receives).
/// Pinned by `attach`, attached per endpoint.
pub const PROG_PACE_EGRESS: &str = "nb_pace_out";
pub const PROG_PACE_INGRESS: &str = "nb_pace_in";

/// Root of every netbr pin directory; each (network namespace, bridge) pair
/// gets `<netns cookie>-<bridge>` below it. The cookie (`SO_NETNS_COOKIE`)
/// is never reused by the kernel, unlike the namespace's inode, so pins a
/// dead namespace leaked can never be mistaken for a live bridge's.
pub const PIN_ROOT: &str = "/sys/fs/bpf/netbr";

/// Root of the control plane's state: `<netns cookie>-<bridge>/` holds the
/// lock every writer takes and the state file. On tmpfs, like bpffs, so the
/// state lives exactly as long as the pins do.
pub const STATE_ROOT: &str = "/run/netbr";

/// Bumped whenever a pinned map's key or value layout changes, so an `attach`
/// of a newer binary can tell that pinned maps were written by an older one.
pub const LAYOUT_VERSION: u32 = 8;

pub const CT_MAX_ENTRIES_DEFAULT: u32 = 131_072;
pub const MAPPINGS_MAX_ENTRIES: u32 = 65_536;
pub const LOCAL_ADDRS_MAX_ENTRIES: u32 = 256;
pub const ENDPOINTS_MAX_ENTRIES: u32 = 4_096;
pub const SOCKETS_MAX_ENTRIES: u32 = 65_536;
pub const FRAGMENTS_MAX_ENTRIES: u32 = 8_192;

/// Key of the fragment map: one fragmented datagram as one hook saw it
/// before translating it. Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    /// Which program saw it (`HOOK_*`): each hook keeps its own record.
    pub hook: u8,
}

/// What a datagram's first fragment told the hook: its ports, which later
/// fragments do not carry, and whether the hook translated it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragVal {
    pub sport: u16,
    pub dport: u16,
    /// u8 flag instead of bool, so the type has no invalid bit patterns.
    pub translated: u8,
    pub _pad: [u8; 3],
}

pub const HOOK_UPLINK_INGRESS: u8 = 0;
pub const HOOK_UPLINK_EGRESS: u8 = 1;
pub const HOOK_BRIDGE_INGRESS: u8 = 2;

/// Key of the socket map: a socket (by `bpf_get_socket_cookie`) and the
/// container address a cgroup hook rewrote its destination to. The value (a
/// [`MappingTarget`]) is the address the application asked for, so
/// `getpeername` and `recvfrom` can report it. Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of the published-port map: "traffic for `proto` to `addr:port` goes to
/// a container". `addr` 0 means every local address of the host (Docker's
/// `-p 8080:80` without a host IP). Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MappingKey {
    pub proto: u8,
    pub _pad: u8,
    pub port: u16,
    pub addr: u32,
}

/// Value of the published-port map: where the traffic is translated to.
/// Network byte order. The socket map reuses the type for the address an
/// application asked for, with `flags` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MappingTarget {
    pub addr: u32,
    pub port: u16,
    /// `MAPPING_*` bits.
    pub flags: u16,
}

/// `MappingTarget::flags`: netbr holds the host port, so a host socket's
/// bind of it fails with EADDRINUSE (the cgroup bind4 hook). Set for ports
/// nobody else holds; not for a CNI runtime's, since Podman binds and holds
/// its containers' published ports itself and would be refused.
pub const MAPPING_HOLD: u16 = 1;
/// `MappingTarget::flags` of a mapping on every address (`addr` 0): only
/// IPv4's (`-p 0.0.0.0:...`), or only IPv6's (`-p [::]:...`); neither bit:
/// both families, as `-p PORT:...` without a host IP publishes.
pub const MAPPING_IPV4_ONLY: u16 = 2;
pub const MAPPING_IPV6_ONLY: u16 = 4;

/// Value of the endpoint map, keyed by the container's IPv4 address (network
/// byte order): what a redirect to the container needs, nothing else. Names,
/// namespaces and owners live in the control plane's state file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Host-side veth, enslaved to the bridge.
    pub host_ifindex: u32,
    /// MAC address of the container's eth0.
    pub mac: [u8; 6],
    /// `EP_*` bits.
    pub flags: u8,
    pub _pad: u8,
}

/// `Endpoint::flags`: traffic to the endpoint is paced on its host-side
/// veth (`netbr_common::pacing`), so every path must leave through that
/// veth's qdisc: the fast path redirects to it rather than past it into the
/// container, and XDP passes the packet to the stack.
pub const EP_PACED_INGRESS: u8 = 1;

impl Endpoint {
    pub const fn new(host_ifindex: u32, mac: [u8; 6], flags: u8) -> Self {
        Self {
            host_ifindex,
            mac,
            flags,
            _pad: 0,
        }
    }
}

/// Datapath configuration, one entry in an array map. Addresses are network
/// byte order; ports, counts and timeouts are host byte order because only
/// arithmetic uses them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// u32 flag instead of bool so the type has no invalid bit patterns;
    /// 0 means "not attached yet": the programs touch nothing.
    pub configured: u32,
    pub layout_version: u32,
    pub uplink_ifindex: u32,
    pub bridge_ifindex: u32,
    pub uplink_addr: u32,
    pub gateway_addr: u32,
    pub subnet_addr: u32,
    pub subnet_mask: u32,
    /// Source ports the SNAT allocator picks from, inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// The host's own ephemeral range (`ip_local_port_range`): a container's
    /// source port inside it is never kept, since a host socket may own it.
    pub host_port_min: u16,
    pub host_port_max: u16,
    /// Seconds, indexed by [`crate::conntrack::CtState`] value.
    pub timeouts: [u32; crate::conntrack::STATE_COUNT],
    /// `CFG_*` bits.
    pub flags: u32,
    /// The bridge device's MAC: source address of frames the datapath
    /// redirects to a container itself (hairpin).
    pub bridge_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Entries per conntrack table (`--ct-max`): the datapath tells a full
    /// assured table from one with room by it.
    pub ct_max: u32,
    /// Entries in the firewall trie (`firewall::MAP_FIREWALL`): with none,
    /// new flows skip the firewall's lookups.
    pub firewall_entries: u32,
    /// `SO_NETNS_COOKIE` of the attached namespace: the cgroup hooks see
    /// every process of the machine and act only for sockets of this one.
    pub netns_cookie: u64,
}

/// `Config::flags`: a packet from the uplink may address a container directly
/// (opt-in, like Docker's `allow_direct_routing`).
pub const CFG_ALLOW_DIRECT_ROUTING: u32 = 1;
/// `Config::flags`: containers on the bridge may not talk to each other
/// (Docker's `enable_icc=false`); enforced by isolating the bridge ports.
pub const CFG_ICC_DISABLED: u32 = 2;
/// `Config::flags`: deliver translated packets by redirect instead of
/// through the host stack (`attach --fast-path`).
pub const CFG_FAST_PATH: u32 = 4;
/// `Config::flags`: the uplink runs the XDP fast path (`attach --xdp`).
pub const CFG_XDP: u32 = 8;
/// `Config::flags`: `MAP_NO_MASQUERADE` holds prefixes; new flows out of
/// the bridge subnet look their destination up there.
pub const CFG_NO_MASQUERADE: u32 = 16;
/// `Config::flags`: the bridge is internal (`docker network create
/// --internal`): containers reach each other and the gateway, nothing
/// beyond, and nothing from outside reaches them.
pub const CFG_INTERNAL: u32 = 32;
/// `Config::flags`: Docker 28's `gateway_mode_ipv4=routed`: no address
/// translation; a packet from the uplink may reach a container's published
/// ports (mappings at the container's own address) and its ICMP echo.
pub const CFG_ROUTED: u32 = 64;
/// `Config::flags`: the host's netfilter translates forwarded traffic too
/// (kube-proxy's Services). A masquerade flow's first packet may have been
/// given a Service's endpoint by netfilter, which must see every packet of
/// the flow to reverse that: such flows take the host stack both ways, and
/// only published-port and hairpin flows keep the fast path.
pub const CFG_HOST_NAT: u32 = 128;

/// The BPF object's load-time constant (`EbpfLoader::override_global`)
/// holding the `CFG_*` flags `attach` fixed when it loaded the programs:
/// the verifier then knows them and prunes the code of every mode that is
/// off (the fast path's redirects and routing lookups, direct routing).
/// A `u32`.
pub const GLOBAL_FLAGS: &str = "NB_LOAD_FLAGS";
/// [`GLOBAL_FLAGS`]'s value when the loader fixed nothing: the programs
/// read the flags from the config map per packet (tests that change the
/// mode of one loaded object between runs).
pub const FLAGS_FROM_MAP: u32 = u32::MAX;

impl Config {
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    pub const fn in_subnet(&self, addr_be: u32) -> bool {
        addr_be & self.subnet_mask == self.subnet_addr
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), Copy, has explicit padding and no
    // invalid bit patterns.
    unsafe impl aya::Pod for super::MappingKey {}
    unsafe impl aya::Pod for super::MappingTarget {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragVal {}
    unsafe impl aya::Pod for crate::conntrack::FlowKey {}
    unsafe impl aya::Pod for crate::conntrack::CtEntry {}
    unsafe impl aya::Pod for crate::conntrack::FlowKey6 {}
    unsafe impl aya::Pod for crate::conntrack::CtEntry6 {}
    unsafe impl aya::Pod for crate::net6::MappingKey6 {}
    unsafe impl aya::Pod for crate::net6::Net6 {}
    unsafe impl aya::Pod for crate::net6::SockKey6 {}
    unsafe impl aya::Pod for crate::net6::SockAddr6 {}
    unsafe impl aya::Pod for crate::net6::FragKey6 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn pod_layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<MappingKey>(), 8);
        assert_eq!(size_of::<MappingTarget>(), 8);
        assert_eq!(size_of::<Endpoint>(), 12);
        assert_eq!(
            size_of::<Config>(),
            8 * 4 + 4 * 2 + 4 * crate::conntrack::STATE_COUNT + 4 + 8 + 8 + 8
        );
        assert_eq!(size_of::<SockKey>(), 16);
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(size_of::<FragVal>(), 8);
        assert_eq!(size_of::<crate::net6::MappingKey6>(), 20);
        assert_eq!(size_of::<crate::net6::Net6>(), 72);
    }

    #[test]
    fn subnet_membership_uses_network_order() {
        let cfg = Config {
            configured: 1,
            layout_version: LAYOUT_VERSION,
            uplink_ifindex: 0,
            bridge_ifindex: 0,
            uplink_addr: 0,
            gateway_addr: 0,
            subnet_addr: u32::from_ne_bytes([172, 30, 0, 0]),
            subnet_mask: u32::from_ne_bytes([255, 255, 0, 0]),
            snat_port_min: 0,
            snat_port_max: 0,
            host_port_min: 0,
            host_port_max: 0,
            timeouts: [0; crate::conntrack::STATE_COUNT],
            flags: 0,
            bridge_mac: [0; 6],
            _pad: [0; 2],
            ct_max: 0,
            firewall_entries: 0,
            netns_cookie: 0,
        };
        assert!(cfg.in_subnet(u32::from_ne_bytes([172, 30, 9, 3])));
        assert!(!cfg.in_subnet(u32::from_ne_bytes([172, 31, 0, 3])));
    }
}
