//! A reference model of the TC programs, in plain Rust: what `nb_up_in`,
//! `nb_up_out` and `nb_br_in` must do to a packet, given the tables as they are. It
//! mirrors the datapath's decisions (parse order, lookups, NAT rules) and
//! leaves out what it cannot predict, such as which free SNAT port is drawn.

use std::net::Ipv4Addr;

use netbr_common::{
    conntrack::{CtEntry, FlowKey, NAT_HAIRPIN, NAT_NONE, TCP_ACK, TCP_SYN},
    counters::Reason,
    firewall::{verdict, FlowFacts, RuleSpec, FW_IN, FW_OUT},
    maps::{
        Config, FragKey, FragVal, MappingKey, MappingTarget, CFG_ALLOW_DIRECT_ROUTING,
        CFG_FAST_PATH,
    },
    snat::may_keep_port,
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
};

/// Read-only access to the live tables.
pub trait Tables {
    fn config(&self) -> Config;
    fn mapping(&self, key: &MappingKey) -> Option<MappingTarget>;
    fn is_local(&self, addr: u32) -> bool;
    /// An entry of the assured table, then of the new-flow table, and which.
    fn ct(&self, key: &FlowKey) -> Option<(CtEntry, bool)>;
    /// An entry of one table.
    fn ct_in(&self, key: &FlowKey, assured: bool) -> Option<CtEntry>;
    fn frag(&self, key: &FragKey) -> Option<FragVal>;
    /// MAC of the endpoint that owns `addr`, if one does.
    fn endpoint_mac(&self, addr: u32) -> Option<[u8; 6]>;
    /// The firewall rules installed.
    fn firewall(&self) -> &[RuleSpec];
    /// Where the routing table of the programs' namespace sends `daddr`
    /// (asked only with the fast path on).
    fn uplink_route(&self, daddr: u32) -> UplinkRoute;
}

/// The firewall's verdict on a new flow (`netbr_common::firewall::verdict`,
/// the datapath's reference), as the reason a refused flow is dropped with.
fn firewall(t: &dyn Tables, dir: u8, key: &FlowKey, endpoint: u32) -> Result<(), Reason> {
    let host = |a: u32| u32::from(ip(a));
    let facts = FlowFacts {
        dir,
        proto: key.proto,
        port: if key.proto == IPPROTO_ICMP {
            0
        } else {
            u16::from_be(key.dport)
        },
        endpoint: host(endpoint),
        addr: host(if dir == FW_IN { key.saddr } else { key.daddr }),
    };
    match verdict(t.firewall(), &facts) {
        Ok(_) => Ok(()),
        Err(Some(_)) => Err(Reason::DropFirewallDeny),
        Err(None) => Err(Reason::DropFirewallNotAllowed),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    UplinkIngress = 0,
    UplinkEgress = 1,
    BridgeIngress = 2,
}

/// What the program must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Leave every byte as it is.
    Untouched(Reason),
    Drop(Reason),
    /// Rewrite the tuple to `to`; with `any_sport` the source port may be any
    /// the SNAT rules allow.
    Translate {
        reason: Reason,
        to: FlowKey,
        any_sport: bool,
    },
    /// Translate an ICMP error: outer addresses and the quoted tuple.
    IcmpError {
        outer_src: u32,
        outer_dst: u32,
        quoted: FlowKey,
    },
    /// Translate (as `Translate` or `IcmpError`) and redirect to the
    /// endpoint with MAC `to_mac`, from the bridge's MAC.
    Redirect {
        inner: Box<Expect>,
        to_mac: [u8; 6],
    },
    /// The fast path forwards: translate (as `inner`), decrement the TTL
    /// and redirect, from and to `macs` (source, destination), the MACs
    /// untouched when the kernel is to resolve the next hop. Out of the
    /// uplink from the bridge hook; into a container from the uplink's.
    Forward {
        inner: Box<Expect>,
        macs: Option<([u8; 6], [u8; 6])>,
    },
}

/// How the routing table sends a packet for an address out of the uplink:
/// `None` not through the uplink, `Some(None)` through it to a next hop not
/// resolved yet, `Some(Some((source MAC, destination MAC)))` resolved.
pub type UplinkRoute = Option<Option<([u8; 6], [u8; 6])>>;

/// The fields the datapath reads, as the model parsed them.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub key: FlowKey,
    pub ihl: usize,
    pub tcp_flags: u8,
    pub frag: u8,
    pub ip_id: u16,
    pub ttl: u8,
    /// Offset of the quoted IP header of an ICMP error.
    pub inner: Option<usize>,
    pub outer_saddr: u32,
    pub outer_daddr: u32,
}

pub const FRAG_NONE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;

fn u16_at(b: &[u8], off: usize, short: Reason) -> Result<u16, Reason> {
    b.get(off..off + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or(short)
}

/// A field loaded raw (as the datapath loads it: network order in memory).
fn raw16(b: &[u8], off: usize, short: Reason) -> Result<u16, Reason> {
    b.get(off..off + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]))
        .ok_or(short)
}

fn raw32(b: &[u8], off: usize) -> Result<u32, Reason> {
    b.get(off..off + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(Reason::DropTruncated)
}

fn byte(b: &[u8], off: usize, short: Reason) -> Result<u8, Reason> {
    b.get(off).copied().ok_or(short)
}

/// Mirrors `parse.rs`, check for check and in the same order.
pub fn parse(b: &[u8]) -> Result<Parsed, Reason> {
    const E: usize = 14;
    match u16_at(b, 12, Reason::PassNotIpv4)? {
        0x0800 => {}
        // Routed untranslated (`ipv6.rs`); the fuzzed bridge has no IPv6
        // subnet, so nothing is refused.
        0x86dd => return Err(Reason::PassIpv6),
        _ => return Err(Reason::PassNotIpv4),
    }
    let vihl = byte(b, E, Reason::DropTruncated)?;
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::DropBadHeader);
    }
    let tot_len = u16_at(b, E + 2, Reason::DropTruncated)? as usize;
    if tot_len < ihl {
        return Err(Reason::DropBadHeader);
    }
    if E + tot_len > b.len() {
        return Err(Reason::DropTruncated);
    }
    let frag_field = u16_at(b, E + 6, Reason::DropTruncated)?;
    let frag = if frag_field & 0x1fff != 0 {
        FRAG_LATER
    } else if frag_field & 0x2000 != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    let ip_id = if frag == FRAG_NONE {
        0
    } else {
        raw16(b, E + 4, Reason::DropTruncated)?
    };
    let proto = byte(b, E + 9, Reason::DropTruncated)?;
    let saddr = raw32(b, E + 12)?;
    let daddr = raw32(b, E + 16)?;
    let l4 = E + ihl;
    let l4_len = tot_len - ihl;
    let mut p = Parsed {
        key: FlowKey {
            saddr,
            daddr,
            sport: 0,
            dport: 0,
            proto,
            _pad: [0; 3],
        },
        ihl,
        tcp_flags: 0,
        frag,
        ip_id,
        ttl: byte(b, E + 8, Reason::DropTruncated)?,
        inner: None,
        outer_saddr: saddr,
        outer_daddr: daddr,
    };
    if frag == FRAG_LATER {
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return Err(Reason::PassFragment);
        }
        return Ok(p);
    }
    match proto {
        IPPROTO_TCP => {
            if l4_len < 20 {
                return Err(Reason::DropTruncated);
            }
            p.tcp_flags = byte(b, l4 + 13, Reason::DropTruncated)?;
        }
        IPPROTO_UDP => {
            if l4_len < 8 {
                return Err(Reason::DropTruncated);
            }
        }
        IPPROTO_ICMP if frag != FRAG_NONE => return Err(Reason::PassFragment),
        IPPROTO_ICMP => {
            if l4_len < 8 {
                return Err(Reason::DropTruncated);
            }
            let t = byte(b, l4, Reason::DropTruncated)?;
            let id = raw16(b, l4 + 4, Reason::DropTruncated)?;
            match t {
                8 => p.key.sport = id,
                0 => p.key.dport = id,
                3 | 11 | 12 => {
                    parse_icmp_error(b, &mut p, l4 + 8, l4_len - 8)?;
                    return Ok(p);
                }
                _ => return Err(Reason::PassUntrackedProto),
            }
            return Ok(p);
        }
        _ => return Err(Reason::PassUntrackedProto),
    }
    p.key.sport = raw16(b, l4, Reason::DropTruncated)?;
    p.key.dport = raw16(b, l4 + 2, Reason::DropTruncated)?;
    Ok(p)
}

fn parse_icmp_error(b: &[u8], p: &mut Parsed, inner: usize, len: usize) -> Result<(), Reason> {
    let vihl = byte(b, inner, Reason::DropTruncated)?;
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::DropBadHeader);
    }
    if len < ihl + 8 {
        return Err(Reason::DropTruncated);
    }
    let proto = byte(b, inner + 9, Reason::DropTruncated)?;
    let saddr = raw32(b, inner + 12)?;
    let daddr = raw32(b, inner + 16)?;
    let l4 = inner + ihl;
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (
            raw16(b, l4, Reason::DropTruncated)?,
            raw16(b, l4 + 2, Reason::DropTruncated)?,
        ),
        IPPROTO_ICMP => {
            let t = byte(b, l4, Reason::DropTruncated)?;
            let id = raw16(b, l4 + 4, Reason::DropTruncated)?;
            match t {
                8 => (id, 0),
                0 => (0, id),
                _ => return Err(Reason::PassUntrackedProto),
            }
        }
        _ => return Err(Reason::PassUntrackedProto),
    };
    p.key = FlowKey {
        saddr: daddr,
        daddr: saddr,
        sport: dport,
        dport: sport,
        proto,
        _pad: [0; 3],
    };
    p.inner = Some(inner);
    Ok(())
}

fn in_subnet(cfg: &Config, a: u32) -> bool {
    a & cfg.subnet_mask == cfg.subnet_addr
}

fn is_loopback(a: u32) -> bool {
    a.to_ne_bytes()[0] == 127
}

/// Mirrors `conntrack::lookup` (with nothing expired: the fuzzer's timeouts
/// are long): the entry of `key` holds all its packet needs, whether or not
/// its partner is still there.
fn flow(t: &dyn Tables, key: &FlowKey) -> Option<CtEntry> {
    t.ct(key).map(|(e, _)| e)
}

fn published(t: &dyn Tables, proto: u8, addr: u32, port: u16) -> Option<MappingTarget> {
    let mut k = MappingKey {
        proto,
        _pad: 0,
        port,
        addr,
    };
    if let Some(m) = t.mapping(&k) {
        return Some(m);
    }
    if !is_loopback(addr) && !t.is_local(addr) {
        return None;
    }
    k.addr = 0;
    t.mapping(&k)
}

/// What the hook must do with `b`.
pub fn expect(b: &[u8], hook: Hook, t: &dyn Tables) -> Expect {
    match decide(b, hook, t) {
        Ok(e) => e,
        Err(r) if r.is_drop() => Expect::Drop(r),
        Err(r) => Expect::Untouched(r),
    }
}

fn decide(b: &[u8], hook: Hook, t: &dyn Tables) -> Result<Expect, Reason> {
    let cfg = t.config();
    let mut p = parse(b)?;
    if p.frag == FRAG_LATER {
        let fk = FragKey {
            saddr: p.key.saddr,
            daddr: p.key.daddr,
            id: p.ip_id,
            proto: p.key.proto,
            hook: hook as u8,
        };
        let v = t.frag(&fk).ok_or(Reason::DropFragNoFirst)?;
        if v.translated == 0 {
            return Err(Reason::PassFragment);
        }
        p.key.sport = v.sport;
        p.key.dport = v.dport;
    }
    let hairpin = hook == Hook::BridgeIngress;
    if let Some(e) = flow(t, &p.key).filter(|e| (e.nat == NAT_HAIRPIN) == hairpin) {
        let x = e.xlat;
        let translated = if p.inner.is_some() {
            let k = &p.key;
            let outer_dst = if p.outer_daddr == k.daddr {
                x.daddr
            } else {
                p.outer_daddr
            };
            let outer_src = if p.outer_saddr == k.saddr {
                x.saddr
            } else {
                p.outer_saddr
            };
            Expect::IcmpError {
                outer_src,
                outer_dst,
                quoted: x.reversed(),
            }
        } else {
            Expect::Translate {
                reason: Reason::Translated,
                to: x,
                any_sport: false,
            }
        };
        if !hairpin {
            return Ok(if hook == Hook::UplinkIngress {
                deliver_in(t, &cfg, b, &p, &x, translated)
            } else {
                translated
            });
        }
        let to_mac = t.endpoint_mac(x.daddr).ok_or(Reason::DropNoEndpoint)?;
        return Ok(Expect::Redirect {
            inner: Box::new(translated),
            to_mac,
        });
    }
    let fast = cfg.flags & CFG_FAST_PATH != 0;
    if hairpin && fast {
        // Mirrors `hooks::bridge_tracked`: a flow the uplink translates,
        // translated here and sent out of the uplink.
        if let Some(e) = flow(t, &p.key) {
            if e.nat == NAT_NONE || p.inner.is_some() {
                return Err(Reason::PassNoMatch);
            }
            let macs = t.uplink_route(e.xlat.daddr).ok_or(Reason::PassNoMatch)?;
            if p.ttl <= 1 {
                return Err(Reason::PassNoMatch);
            }
            return Ok(Expect::Forward {
                inner: Box::new(Expect::Translate {
                    reason: Reason::Translated,
                    to: e.xlat,
                    any_sport: false,
                }),
                macs,
            });
        }
    }
    if hairpin {
        if let Some(e) = hairpin_new(t, &cfg, &p)? {
            return Ok(e);
        }
        // Mirrors `hooks::fast_masquerade_route`, then `nat::snat_new_flow`.
        let may_open = p.frag != FRAG_LATER && p.inner.is_none();
        if !fast || !may_open || !wants_snat(&cfg, &p.key) {
            return Err(Reason::PassNoMatch);
        }
        let macs = t.uplink_route(p.key.daddr).ok_or(Reason::PassNoMatch)?;
        if p.ttl <= 1 {
            return Err(Reason::PassNoMatch);
        }
        firewall(t, FW_OUT, &p.key, p.key.saddr)?;
        let mut to = p.key;
        to.saddr = cfg.uplink_addr;
        return Ok(Expect::Forward {
            inner: Box::new(Expect::Translate {
                reason: Reason::SnatNew,
                to,
                any_sport: true,
            }),
            macs,
        });
    }
    let may_open = p.frag != FRAG_LATER && p.inner.is_none();
    match hook {
        Hook::UplinkIngress => {
            if p.inner.is_some() {
                let (from, port) = (p.key.daddr, u16::from_be(p.key.dport));
                let ours = (from == cfg.uplink_addr
                    && port >= cfg.snat_port_min
                    && port <= cfg.snat_port_max)
                    || in_subnet(&cfg, p.key.saddr)
                    || in_subnet(&cfg, p.key.daddr);
                return Err(if ours {
                    Reason::DropIcmpNoFlow
                } else {
                    Reason::PassNoMatch
                });
            }
            if !may_open {
                return Err(Reason::PassFragment);
            }
            if in_subnet(&cfg, p.key.daddr) {
                if cfg.flags & CFG_ALLOW_DIRECT_ROUTING == 0 {
                    return Err(Reason::DropDirectRouting);
                }
                return Ok(Expect::Untouched(Reason::DirectNew));
            }
            if p.key.proto == IPPROTO_ICMP || is_loopback(p.key.daddr) {
                return Err(Reason::PassNoMatch);
            }
            let m =
                published(t, p.key.proto, p.key.daddr, p.key.dport).ok_or(Reason::PassNoMatch)?;
            firewall(t, FW_IN, &p.key, m.addr)?;
            let mut to = p.key;
            to.daddr = m.addr;
            to.dport = m.port;
            let translated = Expect::Translate {
                reason: Reason::DnatNew,
                to,
                any_sport: false,
            };
            Ok(deliver_in(t, &cfg, b, &p, &to, translated))
        }
        Hook::UplinkEgress | Hook::BridgeIngress => {
            if !may_open {
                return Err(Reason::PassNoMatch);
            }
            // Mirrors `nat::host_flow_wanted`; BPF_PROG_TEST_RUN gives every
            // packet a socket, so those from the uplink address are the host's.
            if hook == Hook::UplinkEgress && p.key.saddr == cfg.uplink_addr {
                let k = &p.key;
                let wanted = match k.proto {
                    IPPROTO_ICMP => k.sport != 0,
                    IPPROTO_TCP | IPPROTO_UDP => {
                        (k.proto == IPPROTO_UDP || p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
                            && !(cfg.host_port_min..=cfg.host_port_max)
                                .contains(&u16::from_be(k.sport))
                            && flow(t, &k.reversed()).is_some()
                    }
                    _ => false,
                };
                if !wanted {
                    return Err(Reason::PassNoMatch);
                }
                return Ok(Expect::Translate {
                    reason: Reason::HostFlowNew,
                    to: p.key,
                    any_sport: true,
                });
            }
            if !may_open || !wants_snat(&cfg, &p.key) {
                return Err(Reason::PassNoMatch);
            }
            firewall(t, FW_OUT, &p.key, p.key.saddr)?;
            let mut to = p.key;
            to.saddr = cfg.uplink_addr;
            Ok(Expect::Translate {
                reason: Reason::SnatNew,
                to,
                any_sport: true,
            })
        }
    }
}

/// Mirrors `hooks::deliver_in` and `redirect::into_container`: with the
/// fast path, a packet translated towards a container (not an ICMP error,
/// not a direct-routed flow's) goes straight into it when its link takes
/// the frame and its TTL survives the hop; otherwise, translated, to the
/// host stack.
fn deliver_in(
    t: &dyn Tables,
    cfg: &Config,
    b: &[u8],
    p: &Parsed,
    to: &FlowKey,
    translated: Expect,
) -> Expect {
    let forwards = cfg.flags & CFG_FAST_PATH != 0
        && p.inner.is_none()
        && to.daddr != p.key.daddr
        && b.len() <= ETH_FRAME_MAX
        && p.ttl > 1;
    match t.endpoint_mac(to.daddr) {
        Some(mac) if forwards => Expect::Forward {
            inner: Box::new(translated),
            macs: Some((cfg.bridge_mac, mac)),
        },
        _ => translated,
    }
}

/// The largest frame a 1500-byte-MTU Ethernet link takes (`bpf_check_mtu`).
pub const ETH_FRAME_MAX: usize = 1514;

/// Mirrors `nat::wants_snat`.
fn wants_snat(cfg: &Config, k: &FlowKey) -> bool {
    in_subnet(cfg, k.saddr) && !in_subnet(cfg, k.daddr) && (k.proto != IPPROTO_ICMP || k.sport != 0)
}

/// Mirrors `nat::hairpin_new_flow`: a container's new flow to a published
/// port on a host address, or `None` when the packet is not one.
fn hairpin_new(t: &dyn Tables, cfg: &Config, p: &Parsed) -> Result<Option<Expect>, Reason> {
    if p.frag == FRAG_LATER || p.inner.is_some() {
        return Ok(None);
    }
    if p.key.proto == IPPROTO_ICMP || !in_subnet(cfg, p.key.saddr) || !t.is_local(p.key.daddr) {
        return Ok(None);
    }
    let Some(m) = published(t, p.key.proto, p.key.daddr, p.key.dport) else {
        return Ok(None);
    };
    let mut to = p.key;
    to.daddr = m.addr;
    to.dport = m.port;
    to.saddr = cfg.gateway_addr;
    let to_mac = t.endpoint_mac(m.addr).ok_or(Reason::DropNoEndpoint)?;
    Ok(Some(Expect::Redirect {
        inner: Box::new(Expect::Translate {
            reason: Reason::HairpinNew,
            to,
            any_sport: true,
        }),
        to_mac,
    }))
}

/// Whether `port` is a source port a new flow whose own source port was
/// `own` may be given (`reason` says which kind of flow): the host's own
/// flows keep any free port.
pub fn snat_port_allowed(cfg: &Config, reason: Reason, own: u16, port: u16) -> bool {
    (port == own
        && (reason == Reason::HostFlowNew
            || may_keep_port(own, cfg.host_port_min, cfg.host_port_max)))
        || (port >= cfg.snat_port_min && port <= cfg.snat_port_max)
}

pub fn ip(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a.to_ne_bytes())
}
