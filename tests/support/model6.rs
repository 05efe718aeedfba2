//! A reference model of the TC programs' IPv6 path (`netbr-ebpf/src/
//! ipv6.rs`), in plain Rust: what `nb_up_in`, `nb_up_out` and `nb_br_in`
//! must do to an IPv6 frame, given the tables as they are. Like `model.rs`
//! for IPv4 it mirrors the datapath's order of tests and lookups, and
//! leaves out what it cannot predict (the SNAT port drawn).

use netbr_common::{
    conntrack::{
        CtEntry6, FlowKey6, NAT_DNAT, NAT_HAIRPIN, NAT_HOST, NAT_NONE, NAT_SNAT, TCP_ACK, TCP_SYN,
    },
    counters::Reason,
    maps::{
        Config, FragVal, MappingKey, MappingTarget, CFG_ALLOW_DIRECT_ROUTING, CFG_FAST_PATH,
        CFG_HOST_NAT, CFG_INTERNAL, CFG_ROUTED, MAPPING_IPV4_ONLY,
    },
    net6::{FragKey6, MappingKey6, Net6},
    IPPROTO_TCP, IPPROTO_UDP,
};

use super::model::{Hook, UplinkRoute, ETH_FRAME_MAX, FRAG_FIRST, FRAG_LATER, FRAG_NONE};

pub use netbr_common::IPPROTO_ICMPV6;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
/// Extension headers the datapath walks, at most `EXT_MAX` of them, and
/// the last offset a transport header may start at.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
const EXT_MAX: usize = 4;
const L4_LAST: usize = 0x1ff - 20;
/// Offsets in the frame: the fixed header's fields, the transport header
/// without extension headers, an error's quoted header and its ports.
const NEXT: usize = 20;
const SADDR: usize = 22;
const DADDR: usize = 38;
pub const L4: usize = 54;
pub const QUOTED: usize = L4 + 8;
pub const QUOTED_L4: usize = QUOTED + 40;

/// Read-only access to the live tables.
pub trait Tables6 {
    fn config(&self) -> Config;
    fn net6(&self) -> Net6;
    /// A wildcard mapping (`NB_MAPS`, address 0).
    fn mapping(&self, key: &MappingKey) -> Option<MappingTarget>;
    fn mapping6(&self, key: &MappingKey6) -> Option<MappingTarget>;
    fn endpoint6(&self, addr4: u32) -> Option<[u32; 4]>;
    /// An entry of one conntrack table.
    fn ct6_in(&self, key: &FlowKey6, assured: bool) -> Option<CtEntry6>;
    fn frag6(&self, key: &FragKey6) -> Option<FragVal>;
    /// The MAC of the endpoint at IPv6 address `addr` (`NB_EP6R`).
    fn endpoint6_mac(&self, addr: &[u32; 4]) -> Option<[u8; 6]>;
    /// Where the routing table sends `daddr` out of the uplink, if it does.
    fn uplink_route6(&self, daddr: &[u32; 4]) -> UplinkRoute;
}

/// What the program must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect6 {
    Untouched(Reason),
    Drop(Reason),
    /// Rewrite the tuple to `to`; with `any_sport` the source port may be
    /// any the SNAT rules allow.
    Translate {
        reason: Reason,
        to: FlowKey6,
        any_sport: bool,
    },
    /// An ICMPv6 error translated: from outside (`outbound` false) its
    /// outer destination and the quoted source become `addr`; from a
    /// container its outer source and the quoted destination do. The
    /// quoted port of that side (or echo identifier), at `port_at`,
    /// becomes `port`.
    IcmpError {
        outbound: bool,
        addr: [u32; 4],
        port: u16,
        port_at: usize,
    },
    /// The fast path's redirect of `inner`'s packet, hop limit one less,
    /// addressed `macs` (source, destination), or left for the kernel to
    /// address (`None`, a neighbour not resolved yet).
    Forward {
        inner: Box<Expect6>,
        macs: Option<([u8; 6], [u8; 6])>,
    },
}

impl Expect6 {
    pub fn reason(&self) -> Reason {
        match self {
            Self::Untouched(r) | Self::Drop(r) => *r,
            Self::Translate { reason, .. } => *reason,
            Self::IcmpError { .. } => Reason::IcmpErrorTranslated,
            Self::Forward { inner, .. } => inner.reason(),
        }
    }
}

/// One IPv6 packet as the datapath's `parse` reads it.
#[derive(Clone, Copy, Debug)]
pub struct Parsed6 {
    pub key: FlowKey6,
    pub frag: u8,
    /// The transport header's offset, and where its checksum sits.
    pub l4: usize,
    pub csum_at: usize,
    /// TCP's flags; 0 for anything else.
    pub tcp_flags: u8,
}

fn at<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N], Reason> {
    b.get(off..off + N)
        .map(|s| s.try_into().expect("length"))
        .ok_or(Reason::DropTruncated)
}

fn addr(b: &[u8], off: usize) -> Result<[u32; 4], Reason> {
    at::<16>(b, off).map(|a| netbr_common::net6::words(&a))
}

/// The datagram a fragment belongs to, as `hook` saw it.
fn frag_key(key: &FlowKey6, id: u32, hook: Hook) -> FragKey6 {
    FragKey6 {
        saddr: key.saddr,
        daddr: key.daddr,
        id,
        proto: key.proto,
        hook: hook as u8,
        _pad: [0; 2],
    }
}

/// Mirrors `ipv6::parse`: the extension-header walk, fragments, and the
/// transport ports; `None` for a later fragment's ports when `frags` is
/// not given (parsing a translated output).
pub fn parse6(b: &[u8], hook: Hook, t: Option<&dyn Tables6>) -> Result<Parsed6, Reason> {
    let mut next = at::<1>(b, NEXT)?[0];
    let mut key = FlowKey6 {
        saddr: addr(b, SADDR)?,
        daddr: addr(b, DADDR)?,
        ..FlowKey6::default()
    };
    let (mut frag, mut id) = (FRAG_NONE, 0u32);
    let mut off = L4;
    for _ in 0..EXT_MAX {
        match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                let h = at::<2>(b, off)?;
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            FRAGMENT => {
                let f = at::<8>(b, off)?;
                next = f[0];
                let offset_and_more = u16::from_be_bytes([f[2], f[3]]);
                id = u32::from_ne_bytes([f[4], f[5], f[6], f[7]]);
                frag = if offset_and_more & 0xfff8 != 0 {
                    FRAG_LATER
                } else if offset_and_more & 1 != 0 {
                    FRAG_FIRST
                } else {
                    FRAG_NONE
                };
                off += 8;
            }
            _ => break,
        }
        if off > L4_LAST {
            return Err(Reason::PassIpv6);
        }
    }
    key.proto = next;
    if frag == FRAG_LATER {
        if ![IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6].contains(&next) {
            return Err(Reason::PassIpv6);
        }
        if let Some(t) = t {
            let v = t
                .frag6(&frag_key(&key, id, hook))
                .ok_or(Reason::DropFragNoFirst)?;
            if v.translated == 0 {
                return Err(Reason::PassFragment);
            }
            key.sport = v.sport;
            key.dport = v.dport;
        }
        return Ok(Parsed6 {
            key,
            frag,
            l4: off,
            csum_at: 0,
            tcp_flags: 0,
        });
    }
    let mut tcp_flags = 0;
    let csum_at = match next {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports = at::<4>(b, off)?;
            key.sport = u16::from_ne_bytes([ports[0], ports[1]]);
            key.dport = u16::from_ne_bytes([ports[2], ports[3]]);
            if next == IPPROTO_TCP {
                tcp_flags = at::<1>(b, off + 13)?[0];
                off + 16
            } else {
                off + 6
            }
        }
        IPPROTO_ICMPV6 => {
            let kind = at::<1>(b, off)?[0];
            let id = at::<2>(b, off + 4)?;
            let id = u16::from_ne_bytes(id);
            (key.sport, key.dport) = match kind {
                ECHO_REQUEST => (id, 0),
                ECHO_REPLY => (0, id),
                _ => return Err(Reason::PassIpv6),
            };
            off + 2
        }
        _ => return Err(Reason::PassIpv6),
    };
    Ok(Parsed6 {
        key,
        frag,
        l4: off,
        csum_at,
        tcp_flags,
    })
}

/// The live flow `key` belongs to: assured table first. Nothing expires
/// in the fuzzer's runs.
pub fn flow6(t: &dyn Tables6, key: &FlowKey6) -> Option<CtEntry6> {
    t.ct6_in(key, true).or_else(|| t.ct6_in(key, false))
}

fn contains(net: &Net6, a: &[u32; 4]) -> bool {
    net.prefix != 0 && (0..4).all(|i| a[i] & net.mask[i] == net.net[i])
}

fn masquerades(net: &Net6) -> bool {
    net.uplink != [0; 4]
}

/// What the programs must do to IPv6 frame `b` on `hook`.
pub fn expect6(b: &[u8], hook: Hook, t: &dyn Tables6) -> Expect6 {
    let r = decide(b, hook, t).unwrap_or_else(|r| r);
    match r {
        Outcome::Done(e) => e,
        Outcome::Reason(r) if r.is_drop() => Expect6::Drop(r),
        Outcome::Reason(r) => Expect6::Untouched(r),
    }
}

enum Outcome {
    Done(Expect6),
    Reason(Reason),
}

impl From<Reason> for Outcome {
    fn from(r: Reason) -> Self {
        Outcome::Reason(r)
    }
}

fn decide(b: &[u8], hook: Hook, t: &dyn Tables6) -> Result<Outcome, Outcome> {
    if b.get(12..14) != Some(&[0x86, 0xdd]) {
        return Ok(Reason::PassNotIpv4.into());
    }
    let (cfg, net) = (t.config(), t.net6());
    if net.prefix == 0 {
        return Ok(Reason::PassIpv6.into());
    }
    let daddr = addr(b, DADDR)?;
    let mode = |flag: u32| cfg.flags & flag != 0;
    match hook {
        Hook::UplinkIngress => {
            if masquerades(&net) && daddr == net.uplink {
                if is_icmp_error(b) {
                    return icmp_error(b, t, false);
                }
                return tracked_or(b, hook, t, &cfg, |p| publish(b, t, &cfg, &net, p, NAT_DNAT));
            }
            if !contains(&net, &daddr) {
                if masquerades(&net) && net.one_address_mappings != 0 {
                    return tracked_or(b, hook, t, &cfg, |p| {
                        publish(b, t, &cfg, &net, p, NAT_DNAT)
                    });
                }
                return Ok(Reason::PassIpv6.into());
            }
            if mode(CFG_INTERNAL) {
                Ok(Reason::DropInternal.into())
            } else if mode(CFG_ALLOW_DIRECT_ROUTING) {
                unimplemented!("the fuzzer's bridges refuse direct routing")
            } else {
                Ok(Reason::DropDirectRouting.into())
            }
        }
        Hook::UplinkEgress => {
            if !masquerades(&net) || mode(CFG_ROUTED) || mode(CFG_INTERNAL) {
                return Ok(Reason::PassIpv6.into());
            }
            let saddr = addr(b, SADDR)?;
            if saddr == net.uplink {
                if daddr == net.uplink {
                    return Ok(Reason::PassIpv6.into());
                }
                return host_egress(b, hook, t, &cfg);
            }
            if !contains(&net, &saddr) || contains(&net, &daddr) {
                return Ok(Reason::PassIpv6.into());
            }
            if is_icmp_error(b) {
                return icmp_error(b, t, true);
            }
            tracked_or(b, hook, t, &cfg, |p| {
                if p.key.proto == IPPROTO_ICMPV6 && p.key.sport == 0 {
                    return Ok(Reason::PassIpv6.into());
                }
                let mut to = p.key;
                to.saddr = net.uplink;
                new_flow(b, t, &cfg, p, to, NAT_SNAT)
            })
        }
        Hook::BridgeIngress => {
            if !masquerades(&net) {
                return Ok(Reason::PassIpv6.into());
            }
            let to_host = daddr == net.uplink
                || (net.one_address_mappings != 0
                    && !contains(&net, &daddr)
                    && parse6(b, hook, Some(t)).is_ok_and(|p| {
                        mapped6(t, &net, &p.key.daddr, p.key.proto, p.key.dport, false).is_some()
                    }));
            if !to_host && daddr != net.gateway {
                if mode(CFG_FAST_PATH) && !contains(&net, &daddr) {
                    return out_uplink(b, hook, t, &cfg);
                }
                return Ok(Reason::PassIpv6.into());
            }
            tracked_or(b, hook, t, &cfg, |p| {
                if to_host {
                    publish(b, t, &cfg, &net, p, NAT_HAIRPIN)
                } else {
                    Ok(Reason::PassIpv6.into())
                }
            })
        }
    }
}

/// Mirrors `ipv6::host_egress`: the host's own packet (BPF_PROG_TEST_RUN
/// gives every packet a socket, so any from the uplink's address is the
/// host's; the fixtures fill no port set, so none is skipped by port).
fn host_egress(b: &[u8], hook: Hook, t: &dyn Tables6, cfg: &Config) -> Result<Outcome, Outcome> {
    let pass = Ok(Reason::PassIpv6.into());
    if is_icmp_error(b) {
        return pass;
    }
    let Ok(p) = parse6(b, hook, Some(t)) else {
        return pass;
    };
    if let Some(e) = flow6(t, &p.key) {
        return translate(b, &p, Reason::Translated, e.xlat, false);
    }
    // Mirrors `nat::host_flow_wanted`.
    let k = &p.key;
    let wanted = match k.proto {
        IPPROTO_ICMPV6 => k.sport != 0,
        IPPROTO_TCP | IPPROTO_UDP => {
            (k.proto == IPPROTO_UDP || p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
                && !(cfg.host_port_min..=cfg.host_port_max).contains(&u16::from_be(k.sport))
                && flow6(t, &k.reversed()).is_some()
        }
        _ => false,
    };
    if p.frag == FRAG_LATER || !wanted {
        return pass;
    }
    new_flow(b, t, cfg, &p, p.key, NAT_HOST)
}

/// Mirrors `ipv6::translate_tracked`: parse, then the flow's translation,
/// or `untracked` for a packet of no flow; on uplink ingress, with the
/// fast path's delivery into the container (`ipv6::deliver_in`).
fn tracked_or(
    b: &[u8],
    hook: Hook,
    t: &dyn Tables6,
    cfg: &Config,
    untracked: impl FnOnce(&Parsed6) -> Result<Outcome, Outcome>,
) -> Result<Outcome, Outcome> {
    let p = parse6(b, hook, Some(t))?;
    let Some(e) = flow6(t, &p.key) else {
        return untracked(&p);
    };
    let translated = translate(b, &p, Reason::Translated, e.xlat, false)?;
    let into_container = hook == Hook::UplinkIngress
        && cfg.flags & CFG_FAST_PATH != 0
        && carries(cfg, e.nat)
        && b.len() <= ETH_FRAME_MAX
        && hop_limit(b) > 1;
    match (translated, t.endpoint6_mac(&e.xlat.daddr)) {
        (Outcome::Done(inner @ Expect6::Translate { .. }), Some(mac)) if into_container => {
            Ok(Outcome::Done(Expect6::Forward {
                inner: Box::new(inner),
                macs: Some((cfg.bridge_mac, mac)),
            }))
        }
        (translated, _) => Ok(translated),
    }
}

/// Mirrors `ipv6::out_uplink`: with the fast path, a container's packet of
/// a tracked flow leaving beyond the host is translated on the bridge and
/// sent out of the uplink, when the routing table sends it there, its hop
/// limit above 1 and its length within the uplink's MTU; otherwise it
/// goes on to the stack untouched.
fn out_uplink(b: &[u8], hook: Hook, t: &dyn Tables6, cfg: &Config) -> Result<Outcome, Outcome> {
    let pass = Ok(Reason::PassIpv6.into());
    let p = parse6(b, hook, Some(t))?;
    let Some(e) = flow6(t, &p.key) else {
        return pass;
    };
    if e.nat == NAT_HAIRPIN || !carries(cfg, e.nat) {
        return pass;
    }
    // `bpf_fib_lookup` is asked with the header's length, and answers
    // "fragmentation needed" past the uplink's MTU.
    let len = 40 + usize::from(u16::from_be_bytes([b[18], b[19]]));
    let Some(macs) = t.uplink_route6(&e.xlat.daddr) else {
        return pass;
    };
    if len > 1500 || hop_limit(b) <= 1 {
        return pass;
    }
    match translate(b, &p, Reason::Translated, e.xlat, false)? {
        Outcome::Done(inner) => Ok(Outcome::Done(Expect6::Forward {
            inner: Box::new(inner),
            macs,
        })),
        other => Ok(other),
    }
}

/// Mirrors `modes::fast_path_carries`.
fn carries(cfg: &Config, nat: u8) -> bool {
    nat != NAT_NONE && !(nat == NAT_SNAT && cfg.flags & CFG_HOST_NAT != 0)
}

fn hop_limit(b: &[u8]) -> u8 {
    b[21]
}

/// Mirrors `nat::mapped6`.
fn mapped6(
    t: &dyn Tables6,
    net: &Net6,
    daddr: &[u32; 4],
    proto: u8,
    port: u16,
    any_too: bool,
) -> Option<MappingTarget> {
    if net.one_address_mappings != 0 {
        let key = MappingKey6 {
            proto,
            _pad: 0,
            port,
            addr: *daddr,
        };
        if let Some(m) = t.mapping6(&key) {
            return Some(m);
        }
    }
    if !any_too {
        return None;
    }
    let key = MappingKey {
        proto,
        _pad: 0,
        port,
        addr: 0,
    };
    t.mapping(&key).filter(|m| m.flags & MAPPING_IPV4_ONLY == 0)
}

/// Mirrors `ipv6::publish`: a new connection to a published port.
fn publish(
    b: &[u8],
    t: &dyn Tables6,
    cfg: &Config,
    net: &Net6,
    p: &Parsed6,
    nat: u8,
) -> Result<Outcome, Outcome> {
    let pass = Ok(Reason::PassIpv6.into());
    if nat == NAT_DNAT && cfg.firewall_entries != 0 {
        return pass;
    }
    if p.key.proto != IPPROTO_TCP && p.key.proto != IPPROTO_UDP {
        return pass;
    }
    if u32::from_be(p.key.saddr[0]) & 0xffc0_0000 == 0xfe80_0000 {
        return pass;
    }
    let on_uplink = p.key.daddr == net.uplink;
    let Some(m) = mapped6(t, net, &p.key.daddr, p.key.proto, p.key.dport, on_uplink) else {
        return pass;
    };
    let Some(target) = t.endpoint6(m.addr) else {
        return pass;
    };
    let mut to = p.key;
    to.daddr = target;
    to.dport = m.port;
    if nat == NAT_HAIRPIN {
        to.saddr = net.gateway;
    }
    new_flow(b, t, cfg, p, to, nat)
}

/// Mirrors `ipv6::new_flow` up to what the model can know: a flow whose
/// source port may move (masquerade, hairpin, the host's own whose tuple
/// is held) is any allowed port; one
/// whose port stays must be able to claim its reply tuple.
fn new_flow(
    b: &[u8],
    t: &dyn Tables6,
    cfg: &Config,
    p: &Parsed6,
    to: FlowKey6,
    nat: u8,
) -> Result<Outcome, Outcome> {
    let (reason, moves) = match nat {
        NAT_SNAT => (Reason::SnatNew, true),
        NAT_HAIRPIN => (Reason::HairpinNew, true),
        // The host's own flow keeps its port while it can claim the reply
        // tuple: the model knows which, and so whether the packet changes.
        NAT_HOST => (
            Reason::HostFlowNew,
            !claimable6(t, &to.reversed(), &p.key.reversed()),
        ),
        _ => (Reason::DnatNew, false),
    };
    if !moves && !claimable6(t, &to.reversed(), &p.key.reversed()) {
        return Ok(Reason::DropCtInsert.into());
    }
    // Where the port may move, the checker asks `model::snat_port_allowed`
    // of the one chosen (the packet's own only where it may be kept).
    let _ = cfg;
    translate(b, p, reason, to, moves)
}

/// Mirrors `conntrack::claim_reply` for a kept port: the reply tuple is
/// free, a finished flow's, or already this flow's.
pub fn claimable6(t: &dyn Tables6, reply_key: &FlowKey6, reply_xlat: &FlowKey6) -> bool {
    use netbr_common::conntrack::{CtState, DIR_ORIG};
    let finished = |e: &CtEntry6, assured: bool| {
        let state = match t.ct6_in(&e.xlat.reversed(), assured) {
            Some(o) if e.dir != DIR_ORIG => o.state,
            _ => e.state,
        };
        state == CtState::TimeWait as u8 || state == CtState::Close as u8
    };
    if let Some(e) = t.ct6_in(reply_key, true) {
        if !finished(&e, true) {
            return false;
        }
    }
    match t.ct6_in(reply_key, false) {
        None => true,
        Some(e) if e.xlat == *reply_xlat => true,
        Some(e) => finished(&e, false),
    }
}

/// The rewrite to `to`, or `DropRewrite` when the L4 checksum it must
/// update lies past the frame (the helper refuses).
fn translate(
    b: &[u8],
    p: &Parsed6,
    reason: Reason,
    to: FlowKey6,
    any_sport: bool,
) -> Result<Outcome, Outcome> {
    // `rewrite` leaves an unchanged packet alone, its checksum unread.
    let changes = any_sport || to != p.key;
    if changes && p.frag != FRAG_LATER && p.csum_at + 2 > b.len() {
        return Ok(Reason::DropRewrite.into());
    }
    Ok(Outcome::Done(Expect6::Translate {
        reason,
        to,
        any_sport,
    }))
}

/// Mirrors `ipv6::is_icmp_error`: an ICMPv6 error right behind the fixed
/// header.
fn is_icmp_error(b: &[u8]) -> bool {
    b.get(NEXT) == Some(&IPPROTO_ICMPV6) && b.get(L4).is_some_and(|k| (1..=4).contains(k))
}

/// Mirrors `ipv6::translate_error`.
fn icmp_error(b: &[u8], t: &dyn Tables6, outbound: bool) -> Result<Outcome, Outcome> {
    let proto = at::<1>(b, QUOTED + 6)?[0];
    let (qs, qd) = (addr(b, QUOTED + 8)?, addr(b, QUOTED + 24)?);
    let mut key = FlowKey6 {
        saddr: qd,
        daddr: qs,
        proto,
        ..FlowKey6::default()
    };
    let sport_at = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports = at::<4>(b, QUOTED_L4)?;
            key.sport = u16::from_ne_bytes([ports[2], ports[3]]);
            key.dport = u16::from_ne_bytes([ports[0], ports[1]]);
            QUOTED_L4
        }
        IPPROTO_ICMPV6 if !outbound => {
            let kind = at::<1>(b, QUOTED_L4)?[0];
            let id = u16::from_ne_bytes(at::<2>(b, QUOTED_L4 + 4)?);
            if kind != ECHO_REQUEST {
                return Ok(Reason::PassIpv6.into());
            }
            key.dport = id;
            QUOTED_L4 + 4
        }
        _ => return Ok(Reason::PassIpv6.into()),
    };
    let Some(e) = flow6(t, &key) else {
        return Ok(Reason::PassIpv6.into());
    };
    let (addr, port, port_at) = if outbound {
        (e.xlat.saddr, e.xlat.sport, sport_at + 2)
    } else {
        (e.xlat.daddr, e.xlat.dport, sport_at)
    };
    Ok(Outcome::Done(Expect6::IcmpError {
        outbound,
        addr,
        port,
        port_at,
    }))
}
