//! netbr's firewall for what it exposes: rules on new flows arriving at
//! published ports (`in`) and on containers' new masqueraded flows (`out`),
//! evaluated in the datapath before translation.
//!
//! Semantics, the same on both sides and in [`verdict`] (the reference the
//! datapath is tested against): a matching deny rule wins; otherwise, if
//! any allow rule's *scope* covers the flow, the flow passes only if one of
//! those allow rules matches it; otherwise it passes. The scope of an `in`
//! allow rule is its host port (every published port without `--port`); of
//! an `out` allow rule, its endpoint (every endpoint without `--endpoint`).
//!
//! Lookups stay flat with the number of rules: rules live in an LPM trie
//! whose key is the exact part (direction, action, protocol, port,
//! endpoint) followed by the address prefix (`--from` for `in`, `--to` for
//! `out`). A flow needs at most four lookups per action, one for each way
//! its port and endpoint can be named or left open; scopes are a hash.

/// Map names.
pub const MAP_FIREWALL: &str = "NB_FW";
pub const MAP_FIREWALL_SCOPES: &str = "NB_FWSC";
/// Per-CPU hit counters, indexed by `FwRule::slot`. Per CPU because BPF
/// has no atomic add this toolchain will emit for a shared counter.
pub const MAP_FIREWALL_HITS: &str = "NB_FWHITS";
/// Trie entries: a rule with a port and no protocol takes two (tcp, udp).
pub const FIREWALL_MAX_ENTRIES: u32 = 32_768;
pub const FIREWALL_SCOPES_MAX_ENTRIES: u32 = 32_768;

/// `FwKey::dir`.
pub const FW_IN: u8 = 1;
pub const FW_OUT: u8 = 2;
/// `FwKey::action`.
pub const FW_ALLOW: u8 = 1;
pub const FW_DENY: u8 = 2;

/// Bits of `FwKey` before the address: all of them are always matched
/// exactly, so a rule's prefix length is this plus its CIDR's.
pub const FW_EXACT_BITS: u32 = 96;

/// The data part of an LPM trie key (the trie's `prefixlen` comes first in
/// the kernel's key). `proto` and `port` are 0 for a rule without a port
/// (it matches every protocol, ICMP included); `endpoint` is 0 for a rule
/// without one. `port`, `endpoint` and `addr` are in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FwKey {
    pub dir: u8,
    pub action: u8,
    pub proto: u8,
    pub _pad: u8,
    pub port: u16,
    pub _pad2: u16,
    /// The endpoint's address: the published port's target (`in`) or the
    /// flow's source container (`out`).
    pub endpoint: u32,
    /// `in`: the client's address (`--from`); `out`: the destination (`--to`).
    pub addr: u32,
}

/// A trie entry's value: which rule it is, and where its hits are counted
/// (the slot of `MAP_FIREWALL_HITS`, unique to the entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FwRule {
    pub id: u32,
    pub slot: u32,
}

/// A scope of allow rules (see the module's doc); its value counts the trie
/// entries of allow rules in it. `in`: `proto`/`port` set, or all 0 for
/// every port. `out`: `endpoint` set, or 0 for every endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FwScopeKey {
    pub dir: u8,
    pub proto: u8,
    pub port: u16,
    pub endpoint: u32,
}

/// One rule as the control plane knows it, host byte order, for [`entries`]
/// and [`verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub id: u32,
    pub dir: u8,
    pub action: u8,
    /// `(address, prefix length)`.
    pub cidr: (u32, u8),
    /// `None`: every port; `Some((0, port))`: tcp and udp.
    pub port: Option<(u8, u16)>,
    /// The endpoint's address, if the rule names one.
    pub endpoint: Option<u32>,
}

/// A new flow as the firewall sees it, host byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowFacts {
    pub dir: u8,
    pub proto: u8,
    /// The published host port (`in`) or the destination port (`out`); 0
    /// for ICMP.
    pub port: u16,
    pub endpoint: u32,
    pub addr: u32,
}

fn to_be_addr(addr: u32) -> u32 {
    u32::from_ne_bytes(addr.to_be_bytes())
}

const fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

/// The trie entries of a rule: `(prefix length, key)`, one per protocol.
pub fn entries(rule: &RuleSpec) -> impl Iterator<Item = (u32, FwKey)> + '_ {
    // A port without protocol stands for tcp and udp; no port, for every
    // protocol (0).
    let protos: &[u8] = match &rule.port {
        None => &[0],
        Some((0, _)) => &[crate::IPPROTO_TCP, crate::IPPROTO_UDP],
        Some((p, _)) => core::slice::from_ref(p),
    };
    protos.iter().map(move |&proto| {
        let (addr, len) = rule.cidr;
        (
            FW_EXACT_BITS + len as u32,
            FwKey {
                dir: rule.dir,
                action: rule.action,
                proto,
                port: rule.port.map_or(0, |(_, p)| p).to_be(),
                endpoint: rule.endpoint.map_or(0, to_be_addr),
                addr: to_be_addr(addr & mask(len)),
                ..FwKey::default()
            },
        )
    })
}

/// The scope of a flow or an allow rule with these fields (network byte
/// order): `in` scopes by protocol and port, `out` by endpoint.
#[inline(always)]
pub const fn scope_key(dir: u8, proto: u8, port: u16, endpoint: u32) -> FwScopeKey {
    if dir == FW_IN {
        FwScopeKey {
            dir,
            proto,
            port,
            endpoint: 0,
        }
    } else {
        FwScopeKey {
            dir,
            proto: 0,
            port: 0,
            endpoint,
        }
    }
}

/// The scope that covers every flow of a direction.
pub const fn any_scope(dir: u8) -> FwScopeKey {
    scope_key(dir, 0, 0, 0)
}

/// The scopes an allow rule opens (empty for a deny rule).
pub fn scopes(rule: &RuleSpec) -> impl Iterator<Item = FwScopeKey> + '_ {
    let allow = rule.action == FW_ALLOW;
    entries(rule)
        .filter(move |_| allow)
        .map(move |(_, k)| scope_key(rule.dir, k.proto, k.port, k.endpoint))
}

fn rule_matches(rule: &RuleSpec, f: &FlowFacts) -> bool {
    let (addr, len) = rule.cidr;
    rule.dir == f.dir
        && (addr ^ f.addr) & mask(len) == 0
        && rule.endpoint.is_none_or(|e| e == f.endpoint)
        && match rule.port {
            None => true,
            Some((proto, port)) => {
                f.port != 0 && port == f.port && (proto == 0 || proto == f.proto)
            }
        }
}

fn in_scope(rule: &RuleSpec, f: &FlowFacts) -> bool {
    rule.dir == f.dir
        && rule.action == FW_ALLOW
        && if f.dir == FW_IN {
            rule.port
                .is_none_or(|(proto, port)| f.port == port && (proto == 0 || proto == f.proto))
        } else {
            rule.endpoint.is_none_or(|e| e == f.endpoint)
        }
}

/// What the rules decide for a new flow: `Ok(Some(id))` passed by allow
/// rule `id`, `Ok(None)` passed with no rule involved, `Err(Some(id))`
/// denied by rule `id`, `Err(None)` not allowed by any rule of its scope.
/// Where several rules of one kind match, which one is named is the
/// datapath's choice (the most specific key), so callers compare only the
/// kind.
pub fn verdict(rules: &[RuleSpec], f: &FlowFacts) -> Result<Option<u32>, Option<u32>> {
    if let Some(r) = rules
        .iter()
        .find(|r| r.action == FW_DENY && rule_matches(r, f))
    {
        return Err(Some(r.id));
    }
    if !rules.iter().any(|r| in_scope(r, f)) {
        return Ok(None);
    }
    match rules
        .iter()
        .find(|r| r.action == FW_ALLOW && rule_matches(r, f))
    {
        Some(r) => Ok(Some(r.id)),
        None => Err(None),
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::FwKey {}
    unsafe impl aya::Pod for super::FwRule {}
    unsafe impl aya::Pod for super::FwScopeKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IPPROTO_TCP, IPPROTO_UDP};
    use core::mem::size_of;

    const LAN: u32 = 0xc000_0264; // 192.0.2.100
    const C1: u32 = 0xac1e_0002; // 172.30.0.2
    const C2: u32 = 0xac1e_0003;

    fn rule(id: u32, dir: u8, action: u8, cidr: (u32, u8)) -> RuleSpec {
        RuleSpec {
            id,
            dir,
            action,
            cidr,
            port: None,
            endpoint: None,
        }
    }

    fn inbound(port: u16, from: u32) -> FlowFacts {
        FlowFacts {
            dir: FW_IN,
            proto: IPPROTO_TCP,
            port,
            endpoint: C1,
            addr: from,
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FwKey>() as u32 * 8, FW_EXACT_BITS + 32);
        assert_eq!(size_of::<FwRule>(), 8);
        assert_eq!(size_of::<FwScopeKey>(), 8);
    }

    #[test]
    fn no_rules_pass_everything() {
        assert_eq!(verdict(&[], &inbound(8080, LAN)), Ok(None));
    }

    #[test]
    fn a_matching_deny_wins_over_an_allow() {
        let mut deny = rule(1, FW_IN, FW_DENY, (0xc000_0200, 24));
        deny.port = Some((0, 8080));
        let allow = rule(2, FW_IN, FW_ALLOW, (0, 0));
        let rules = [allow, deny];
        assert_eq!(verdict(&rules, &inbound(8080, LAN)), Err(Some(1)));
        // Another port, another source: the deny does not match.
        assert_eq!(verdict(&rules, &inbound(9090, LAN)), Ok(Some(2)));
        assert_eq!(verdict(&rules, &inbound(8080, 0x0a00_0001)), Ok(Some(2)));
    }

    #[test]
    fn an_allow_on_a_port_closes_that_port_only() {
        let mut allow = rule(3, FW_IN, FW_ALLOW, (0x0a00_0000, 8));
        allow.port = Some((IPPROTO_TCP, 8080));
        let rules = [allow];
        assert_eq!(verdict(&rules, &inbound(8080, 0x0a01_0203)), Ok(Some(3)));
        assert_eq!(verdict(&rules, &inbound(8080, LAN)), Err(None));
        assert_eq!(verdict(&rules, &inbound(9090, LAN)), Ok(None));
        // The rule names tcp: udp to the same port is outside its scope.
        let udp = FlowFacts {
            proto: IPPROTO_UDP,
            ..inbound(8080, LAN)
        };
        assert_eq!(verdict(&rules, &udp), Ok(None));
    }

    #[test]
    fn out_allows_are_scoped_by_endpoint() {
        let mut allow = rule(4, FW_OUT, FW_ALLOW, (0xc000_0200, 24));
        allow.endpoint = Some(C1);
        let rules = [allow];
        let out = |endpoint, addr| FlowFacts {
            dir: FW_OUT,
            proto: IPPROTO_UDP,
            port: 53,
            endpoint,
            addr,
        };
        assert_eq!(verdict(&rules, &out(C1, LAN)), Ok(Some(4)));
        assert_eq!(verdict(&rules, &out(C1, 0x0808_0808)), Err(None));
        assert_eq!(verdict(&rules, &out(C2, 0x0808_0808)), Ok(None));
    }

    #[test]
    fn entries_expand_a_port_without_protocol_and_mask_the_address() {
        let mut r = rule(5, FW_IN, FW_DENY, (0xc000_02ff, 24));
        r.port = Some((0, 8080));
        let e: std::vec::Vec<_> = entries(&r).collect();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, FW_EXACT_BITS + 24);
        assert_eq!((e[0].1.proto, e[1].1.proto), (IPPROTO_TCP, IPPROTO_UDP));
        assert_eq!(e[0].1.addr, u32::from_ne_bytes([192, 0, 2, 0]));
        assert_eq!(e[0].1.port, 8080u16.to_be());
        assert_eq!(scopes(&r).count(), 0, "a deny opens no scope");
    }
}
