//! Connection tracking: the flow tuple, the table entry and the TCP state
//! machine, as pure functions the BPF programs and host tests share.
//!
//! A tracked flow owns two entries, both in one of two tables: `NB_CT4N`
//! (LRU) while it is new, `NB_CT4` (a plain hash) once assured. The
//! *original* entry is keyed by the tuple of the first packet, the *reply*
//! entry by the tuple replies carry. Each stores the tuple its packets are
//! rewritten to (`xlat`), and the two are mirror images: `reply key =
//! orig.xlat.reversed()` and `reply.xlat = orig key.reversed()`, so either
//! entry finds its partner without storing it.
//!
//! Each entry holds everything a packet of its direction needs: the
//! translation, the flow's state, and its own direction's last-seen time
//! and counters. A packet of a tracked flow so makes one conntrack lookup
//! in steady state. The partner is read or written only when the packet
//! changes the flow's state (the original entry's state decides, and the
//! new state is copied to both) or when the packet's own direction has
//! been idle past its state's timeout (the flow lives while either
//! direction is seen). [`merge`] gives the flow as one record.

/// A flow tuple as it appears in a packet, of either address family
/// (`A`: [`FlowKey`]'s `u32`, [`FlowKey6`]'s four words). Network byte
/// order. For ICMP echo the identifier stands in for a port: a request
/// carries it as `sport` (`dport` 0), a reply as `dport` (`sport` 0), so a
/// request's reversed tuple is its reply's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// An IPv4 flow tuple: 16 bytes.
pub type FlowKey = FlowKeyOf<u32>;
/// An IPv6 flow tuple: each address as four words holding its bytes in
/// network order (`net6::halves` reads them the same way), 40 bytes.
pub type FlowKey6 = FlowKeyOf<[u32; 4]>;

impl<A: Copy> FlowKeyOf<A> {
    /// The tuple of a packet travelling the other way. Built from a copy of
    /// `self`, whose padding is zero, rather than as a literal: LLVM's BPF
    /// backend makes a literal's three zero padding bytes a memset call.
    pub const fn reversed(&self) -> Self {
        let mut r = *self;
        r.saddr = self.daddr;
        r.daddr = self.saddr;
        r.sport = self.dport;
        r.dport = self.sport;
        r
    }
}

/// `CtEntry::dir`.
pub const DIR_ORIG: u8 = 0;
pub const DIR_REPLY: u8 = 1;

/// `CtEntry::nat`: which translation created the flow. `NAT_NONE` flows are
/// tracked untranslated: directly routed inbound connections (opt-in), whose
/// replies must not be masqueraded.
pub const NAT_NONE: u8 = 0;
pub const NAT_DNAT: u8 = 1;
pub const NAT_SNAT: u8 = 2;
/// A container reaching a published port through a host address: DNAT to
/// the target plus SNAT to the gateway, translated on the bridge device.
pub const NAT_HAIRPIN: u8 = 3;
/// A flow the host itself opened out of the uplink, tracked so that no
/// container flow is given its tuple: an ICMP echo (kept identifier), or a
/// TCP or UDP flow whose tuple a container's masqueraded flow already held,
/// moved to another source port as netfilter's masquerade would move it.
pub const NAT_HOST: u8 = 4;

pub const fn nat_name(nat: u8) -> &'static str {
    match nat {
        NAT_DNAT => "dnat",
        NAT_SNAT => "snat",
        NAT_HAIRPIN => "hairpin",
        NAT_HOST => "host",
        _ => "none",
    }
}

/// One conntrack table entry, of either family. Times are
/// `bpf_ktime_get_ns` (CLOCK_MONOTONIC). `state` is the flow's, copied
/// into both entries on every change; the original entry's copy is the one
/// that decides. `last_seen_ns`, `packets` and `bytes` are this entry's
/// direction's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntryOf<A> {
    pub xlat: FlowKeyOf<A>,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub dir: u8,
    /// A [`CtState`] value.
    pub state: u8,
    pub nat: u8,
    pub _pad: [u8; 5],
}

pub type CtEntry = CtEntryOf<u32>;
pub type CtEntry6 = CtEntryOf<[u32; 4]>;

/// A flow as one record, from its two entries ([`merge`]): what `netbr
/// conntrack list`, flushes and tests read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowViewOf<A> {
    pub xlat: FlowKeyOf<A>,
    pub created_ns: u64,
    /// The later of the two directions' last packets.
    pub last_seen_ns: u64,
    /// Indexed by direction: `[DIR_ORIG]`, `[DIR_REPLY]`.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub state: u8,
    pub nat: u8,
}

pub type FlowView = FlowViewOf<u32>;

/// The flow of original entry `orig` and its reply entry, if that is
/// still there.
pub const fn merge<A: Copy>(orig: &CtEntryOf<A>, reply: Option<&CtEntryOf<A>>) -> FlowViewOf<A> {
    let (last, packets, bytes) = match reply {
        Some(r) => (
            if r.last_seen_ns > orig.last_seen_ns {
                r.last_seen_ns
            } else {
                orig.last_seen_ns
            },
            r.packets,
            r.bytes,
        ),
        None => (orig.last_seen_ns, 0, 0),
    };
    FlowViewOf {
        xlat: orig.xlat,
        created_ns: orig.created_ns,
        last_seen_ns: last,
        packets: [orig.packets, packets],
        bytes: [orig.bytes, bytes],
        state: orig.state,
        nat: orig.nat,
    }
}

/// Flow states. One numbering for every protocol so a single timeout table
/// indexed by state serves them all.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    /// The original direction sent FIN.
    FinOrig = 4,
    /// The reply direction sent FIN.
    FinReply = 5,
    /// Both sides sent FIN.
    TimeWait = 6,
    /// RST seen.
    Close = 7,
    UdpUnreplied = 8,
    UdpReplied = 9,
    Icmp = 10,
}

pub const STATE_COUNT: usize = 11;

impl CtState {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::SynSent,
            2 => Self::SynRecv,
            3 => Self::Established,
            4 => Self::FinOrig,
            5 => Self::FinReply,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::UdpUnreplied,
            9 => Self::UdpReplied,
            10 => Self::Icmp,
            _ => Self::None,
        }
    }

    /// Name of this state's timeout for `attach --timeout NAME=SECONDS`.
    pub const fn timeout_name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::SynSent => "tcp_syn_sent",
            Self::SynRecv => "tcp_syn_recv",
            Self::Established => "tcp_established",
            Self::FinOrig => "tcp_fin_wait",
            Self::FinReply => "tcp_close_wait",
            Self::TimeWait => "tcp_time_wait",
            Self::Close => "tcp_close",
            Self::UdpUnreplied => "udp",
            Self::UdpReplied => "udp_stream",
            Self::Icmp => "icmp",
        }
    }

    /// The state whose timeout is called `name`.
    pub fn by_timeout_name(name: &str) -> Option<Self> {
        (1..STATE_COUNT as u8)
            .map(Self::from_u8)
            .find(|s| s.timeout_name() == name)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::Established => "ESTABLISHED",
            Self::FinOrig => "FIN_WAIT",
            Self::FinReply => "CLOSE_WAIT",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::UdpUnreplied => "UNREPLIED",
            Self::UdpReplied => "REPLIED",
            Self::Icmp => "ICMP",
        }
    }
}

/// Default timeouts in seconds, indexed by state: netfilter's defaults
/// (`nf_conntrack_tcp_timeout_*`, `nf_conntrack_udp_timeout{,_stream}`,
/// `nf_conntrack_icmp_timeout`), so flows live as long as users expect.
pub const DEFAULT_TIMEOUTS: [u32; STATE_COUNT] = [
    0,       // None
    120,     // SynSent
    60,      // SynRecv
    432_000, // Established (5 days)
    120,     // FinOrig (FIN_WAIT)
    60,      // FinReply (CLOSE_WAIT)
    120,     // TimeWait
    10,      // Close
    30,      // UdpUnreplied
    120,     // UdpReplied
    30,      // Icmp
];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// State of a TCP flow after a packet with `flags` in direction `dir`.
///
/// A simplified netfilter machine: no window tracking, and like
/// `nf_conntrack_tcp_loose=1` a mid-stream packet of an unknown flow is
/// picked up as established (see [`tcp_initial`]).
pub const fn tcp_next(state: CtState, dir: u8, flags: u8) -> CtState {
    use CtState::*;
    if flags & TCP_RST != 0 {
        return Close;
    }
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    let fin = flags & TCP_FIN != 0;
    if syn && !ack && dir == DIR_ORIG {
        // A fresh SYN restarts a finished flow with the same tuple (port reuse).
        return match state {
            None | SynSent | TimeWait | Close => SynSent,
            other => other,
        };
    }
    if syn && ack && dir == DIR_REPLY {
        return match state {
            SynSent => SynRecv,
            other => other,
        };
    }
    if fin {
        return match (state, dir) {
            (Established | SynRecv, DIR_ORIG) => FinOrig,
            (Established | SynRecv, _) => FinReply,
            (FinOrig, DIR_REPLY) | (FinReply, DIR_ORIG) => TimeWait,
            (other, _) => other,
        };
    }
    match state {
        SynRecv if ack && dir == DIR_ORIG => Established,
        other => other,
    }
}

/// State of a flow created by its first packet.
pub const fn initial_state(proto: u8, tcp_flags: u8) -> CtState {
    match proto {
        crate::IPPROTO_TCP => tcp_initial(tcp_flags),
        crate::IPPROTO_UDP => CtState::UdpUnreplied,
        _ => CtState::Icmp,
    }
}

const fn tcp_initial(flags: u8) -> CtState {
    if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
        CtState::SynSent
    } else if flags & TCP_RST != 0 {
        CtState::Close
    } else {
        CtState::Established
    }
}

/// State after any packet of a tracked flow.
pub const fn next_state(proto: u8, state: CtState, dir: u8, tcp_flags: u8) -> CtState {
    match proto {
        crate::IPPROTO_TCP => tcp_next(state, dir, tcp_flags),
        crate::IPPROTO_UDP if dir == DIR_REPLY => CtState::UdpReplied,
        _ => state,
    }
}

/// Whether a flow in `state` is assured (netfilter's IPS_ASSURED): it has
/// seen traffic both ways and is worth protecting from floods of new flows.
pub const fn is_assured(state: CtState) -> bool {
    matches!(
        state,
        CtState::Established | CtState::FinOrig | CtState::FinReply | CtState::UdpReplied
    )
}

/// Whether an entry last seen at `last_seen_ns` has outlived its state's timeout.
pub const fn expired(
    timeouts: &[u32; STATE_COUNT],
    state: u8,
    last_seen_ns: u64,
    now_ns: u64,
) -> bool {
    let idx = state as usize;
    let secs = if idx < STATE_COUNT { timeouts[idx] } else { 0 };
    now_ns.saturating_sub(last_seen_ns) > secs as u64 * 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::CtState::*;
    use super::*;

    #[test]
    fn three_way_handshake_establishes() {
        let s = tcp_initial(TCP_SYN);
        assert_eq!(s, SynSent);
        let s = tcp_next(s, DIR_REPLY, TCP_SYN | TCP_ACK);
        assert_eq!(s, SynRecv);
        let s = tcp_next(s, DIR_ORIG, TCP_ACK);
        assert_eq!(s, Established);
    }

    #[test]
    fn fin_from_both_sides_reaches_time_wait() {
        let s = tcp_next(Established, DIR_REPLY, TCP_FIN | TCP_ACK);
        assert_eq!(s, FinReply);
        assert_eq!(tcp_next(s, DIR_REPLY, TCP_ACK), FinReply);
        assert_eq!(tcp_next(s, DIR_ORIG, TCP_FIN | TCP_ACK), TimeWait);
        let s = tcp_next(Established, DIR_ORIG, TCP_FIN);
        assert_eq!(tcp_next(s, DIR_REPLY, TCP_FIN), TimeWait);
    }

    #[test]
    fn rst_closes_from_any_state() {
        for s in [SynSent, SynRecv, Established, FinOrig, TimeWait] {
            assert_eq!(tcp_next(s, DIR_REPLY, TCP_RST | TCP_ACK), Close);
        }
    }

    #[test]
    fn new_syn_restarts_a_finished_flow_but_not_a_live_one() {
        assert_eq!(tcp_next(TimeWait, DIR_ORIG, TCP_SYN), SynSent);
        assert_eq!(tcp_next(Close, DIR_ORIG, TCP_SYN), SynSent);
        assert_eq!(tcp_next(Established, DIR_ORIG, TCP_SYN), Established);
    }

    #[test]
    fn midstream_pickup_is_established() {
        assert_eq!(initial_state(crate::IPPROTO_TCP, TCP_ACK), Established);
        assert_eq!(initial_state(crate::IPPROTO_UDP, 0), UdpUnreplied);
        assert_eq!(initial_state(crate::IPPROTO_ICMP, 0), Icmp);
    }

    #[test]
    fn udp_reply_marks_replied() {
        assert_eq!(
            next_state(crate::IPPROTO_UDP, UdpUnreplied, DIR_REPLY, 0),
            UdpReplied
        );
        assert_eq!(
            next_state(crate::IPPROTO_UDP, UdpUnreplied, DIR_ORIG, 0),
            UdpUnreplied
        );
    }

    #[test]
    fn only_two_way_flows_are_assured() {
        assert!(is_assured(Established) && is_assured(UdpReplied) && is_assured(FinReply));
        assert!(!is_assured(SynSent) && !is_assured(SynRecv) && !is_assured(UdpUnreplied));
        assert!(!is_assured(Icmp) && !is_assured(Close) && !is_assured(TimeWait));
    }

    #[test]
    fn expiry_follows_the_state_timeout() {
        let t = DEFAULT_TIMEOUTS;
        let s = 1_000_000_000u64;
        assert!(!expired(&t, UdpUnreplied as u8, 0, 30 * s));
        assert!(expired(&t, UdpUnreplied as u8, 0, 31 * s));
        assert!(!expired(&t, Established as u8, 0, 31 * s));
        assert!(expired(&t, 200, 0, 1));
    }

    #[test]
    fn a_flow_is_alive_and_counted_by_both_directions() {
        let orig = CtEntry {
            last_seen_ns: 5,
            packets: 3,
            bytes: 300,
            state: Established as u8,
            ..CtEntry::default()
        };
        let reply = CtEntry {
            last_seen_ns: 9,
            packets: 2,
            bytes: 100,
            dir: DIR_REPLY,
            // A copy the original's state overrides.
            state: SynRecv as u8,
            ..CtEntry::default()
        };
        let f = merge(&orig, Some(&reply));
        assert_eq!(
            (f.last_seen_ns, f.packets, f.bytes),
            (9, [3, 2], [300, 100])
        );
        assert_eq!(f.state, Established as u8);
        let alone = merge(&orig, Option::None);
        assert_eq!((alone.last_seen_ns, alone.packets), (5, [3, 0]));
    }

    #[test]
    fn both_families_lay_out_without_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<FlowKey6>(), 40);
        assert_eq!(size_of::<CtEntry>(), 16 + 4 * 8 + 8);
        assert_eq!(size_of::<CtEntry6>(), 40 + 4 * 8 + 8);
    }

    #[test]
    fn reversal_round_trips() {
        let k = FlowKey {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 4,
            proto: 6,
            _pad: [0; 3],
        };
        assert_eq!(k.reversed().reversed(), k);
        assert_eq!(k.reversed().saddr, 2);
        assert_eq!(k.reversed().sport, 4);
    }

    #[test]
    fn timeout_names_round_trip() {
        for v in 1..STATE_COUNT as u8 {
            let s = CtState::from_u8(v);
            assert_eq!(CtState::by_timeout_name(s.timeout_name()), Some(s));
        }
        assert!(CtState::by_timeout_name("none").is_none());
    }

    #[test]
    fn state_names_round_trip() {
        for v in 0..STATE_COUNT as u8 {
            assert_eq!(CtState::from_u8(v) as u8, v);
        }
    }
}
