//! Publishing container ports on the host and withdrawing them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};

use anyhow::{bail, Result};
use netbr_common::{
    conntrack::NAT_DNAT,
    maps::{
        MappingKey, MappingTarget, CFG_INTERNAL, CFG_ROUTED, MAPPING_HOLD, MAPPING_IPV4_ONLY,
        MAPPING_IPV6_ONLY,
    },
    net6::{words, MappingKey6},
    portspec::PortSpec,
    IPPROTO_TCP,
};

use super::{
    state::{Owner, Port},
    Store,
};
use crate::{
    addr::{to_be32, TupleAddr},
    bpf::datapath::{Datapath, MapKey, BPF_NOEXIST},
    netlink::Netlink,
};

pub fn mapping_key(p: &Port) -> MapKey {
    match p.host_ip6 {
        Some(ip6) => MapKey::V6(MappingKey6 {
            proto: p.proto,
            _pad: 0,
            port: p.host_port.to_be(),
            addr: words(&ip6.octets()),
        }),
        None => MapKey::V4(MappingKey {
            proto: p.proto,
            _pad: 0,
            port: p.host_port.to_be(),
            addr: p.host_ip.map(to_be32).unwrap_or(0),
        }),
    }
}

fn mapping_target(ip: Ipv4Addr, p: &Port, hold: bool) -> MappingTarget {
    let family = match (p.host_ip, p.host_ip6, p.ipv6_only) {
        (Some(ip), ..) if ip.is_unspecified() => MAPPING_IPV4_ONLY,
        (None, None, true) => MAPPING_IPV6_ONLY,
        _ => 0,
    };
    MappingTarget {
        addr: to_be32(ip),
        port: p.container_port.to_be(),
        flags: family | if hold { MAPPING_HOLD } else { 0 },
    }
}

/// The ports one spec stands for (for a spec that picks a host port: every
/// candidate).
fn spec_ports(s: &PortSpec) -> impl Iterator<Item = Port> + '_ {
    s.pairs().map(move |(h, c)| Port {
        proto: s.proto,
        host_ip: s.host_ip,
        ipv6_only: s.ipv6_only,
        host_ip6: s.host_ip6,
        host_port: h,
        container_port: c,
    })
}

/// A port as routed mode opens it: at the container's own address.
fn routed_port(ip: Ipv4Addr, p: &Port) -> Port {
    Port {
        host_ip: Some(ip),
        host_ip6: None,
        ipv6_only: false,
        host_port: p.container_port,
        ..*p
    }
}

/// Two ports claim the same traffic: same protocol and host port, and one
/// datapath entry (every address, whatever the families), or one of them
/// every address of a family and the other one address of it.
fn clash(a: &Port, b: &Port) -> bool {
    let every_ipv4 = |p: &Port| !p.ipv6_only && p.host_ip.is_none_or(|i| i.is_unspecified());
    let every_ipv6 = |p: &Port| p.host_ip.is_none() && p.host_ip6.is_none();
    let one_of = |every: &dyn Fn(&Port) -> bool, a: &Port, b: &Port| {
        (every(a) && !every(b)) || (every(b) && !every(a))
    };
    let one_ipv4 = |p: &Port| p.host_ip.is_some_and(|i| !i.is_unspecified());
    let one_ipv6 = |p: &Port| p.host_ip6.is_some();
    a.proto == b.proto
        && a.host_port == b.host_port
        && (mapping_key(a) == mapping_key(b)
            || (one_of(&every_ipv4, a, b) && (one_ipv4(a) || one_ipv4(b)))
            || (one_of(&every_ipv6, a, b) && (one_ipv6(a) || one_ipv6(b))))
}

/// Without a proxy nothing binds the host port, so check by binding: a host
/// process listening there would otherwise silently lose its traffic.
fn host_port_free(p: &Port) -> bool {
    let ip: IpAddr = match (p.host_ip, p.host_ip6, p.ipv6_only) {
        (Some(ip), ..) => ip.into(),
        (None, Some(ip6), _) => ip6.into(),
        (None, None, true) => Ipv6Addr::UNSPECIFIED.into(),
        (None, None, false) => Ipv4Addr::UNSPECIFIED.into(),
    };
    if p.proto == IPPROTO_TCP {
        TcpListener::bind((ip, p.host_port)).is_ok()
    } else {
        UdpSocket::bind((ip, p.host_port)).is_ok()
    }
}

/// How many ports of the bridge are published on one IPv6 address.
pub(super) fn one_address_mappings(state: &super::state::State) -> u32 {
    state
        .endpoints
        .iter()
        .flat_map(|e| &e.ports)
        .filter(|p| p.host_ip6.is_some())
        .count() as u32
}

/// Whether a port may be published on IPv6 address `ip6` alone: one of the
/// host's (a socket can bind it), not link-local (its packets could not
/// be routed off the link), and on a bridge whose containers' IPv6 the
/// datapath translates (an IPv6 subnet and an uplink with a global IPv6
/// address).
fn one_ipv6_address_publishable(dp: &Datapath, ip6: Ipv6Addr, bridge: &str) -> Result<()> {
    if ip6.segments()[0] & 0xffc0 == 0xfe80 || ip6.is_multicast() {
        bail!("{ip6} is link-local or multicast: publish on a global or unique local address of the host");
    }
    if UdpSocket::bind((ip6, 0)).is_err() {
        bail!("{ip6} is not an address of this host: publish on one of its addresses or omit the host IP");
    }
    let net6 = dp.net6.get(&0, 0)?;
    if !net6.masquerades() {
        bail!(
            "bridge {bridge} does not translate IPv6 (it needs an IPv6 --subnet and an uplink with a global IPv6 address): publish on an IPv4 address or attach with an IPv6 subnet"
        );
    }
    Ok(())
}

/// A port that cannot be published because something else holds it; the
/// runtimes report it with their "taken" code.
#[derive(Debug)]
pub struct PortTaken(pub String);

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PortTaken {}

impl Store {
    /// Why `port` cannot be published, naming its owner; `None` if it can.
    fn port_taken(&self, port: &Port, wanted: &[Port]) -> Option<String> {
        if let Some((ep, p)) = self.state.ports().find(|(_, p)| clash(p, port)) {
            let who = match &ep.owner {
                Owner::Cli => format!("endpoint {}", ep.name),
                Owner::Cni { container_id, .. } => {
                    format!("endpoint {} (container {container_id})", ep.name)
                }
                Owner::Docker { endpoint_id, .. } => {
                    format!("endpoint {} (Docker endpoint {endpoint_id})", ep.name)
                }
            };
            return Some(format!(
                "host port {} is already published by {who} as {}: choose another host port or unpublish it",
                port.host_side(),
                p.host_side()
            ));
        }
        if wanted.iter().any(|w| clash(w, port)) {
            return Some(format!("host port {} is given twice", port.host_side()));
        }
        if !host_port_free(port) {
            return Some(format!(
                "host port {} is in use by a process on the host: choose another host port",
                port.host_side()
            ));
        }
        None
    }

    /// Publishes ports of endpoint `name`: every spec is checked before any
    /// is written, so a request with one taken port changes nothing. With
    /// `hold`, host sockets cannot bind the ports while they are published
    /// (see `MAPPING_HOLD`); a runtime that holds them itself passes false.
    pub async fn publish(
        &mut self,
        name: &str,
        specs: &[PortSpec],
        hold: bool,
    ) -> Result<Vec<Port>> {
        let mut dp = self.datapath()?;
        let ep = self.endpoint(name)?.clone();
        let cfg = dp.config()?;
        if cfg.has(CFG_INTERNAL) {
            bail!(
                "bridge {} is internal: it publishes no ports, as Docker's --internal networks do not",
                self.bridge
            );
        }
        // Addresses added since attach count too.
        super::local_addrs::sync_local_addrs(&Netlink::connect()?, &mut dp).await?;
        let routed = cfg.has(CFG_ROUTED);
        let hold = hold && !routed;
        let mut wanted: Vec<Port> = Vec::new();
        for spec in specs {
            let spec = &self.on_this_bridge(spec)?;
            if routed {
                // Docker's routed mode opens the container's own port and
                // ignores the host port: nothing on the host is taken.
                for p in spec_ports(spec).map(|p| routed_port(ep.ip, &p)) {
                    if !wanted.contains(&p) && !ep.ports.contains(&p) {
                        wanted.push(p);
                    }
                }
                continue;
            }
            if let Some(ip) = spec.host_ip.filter(|ip| !ip.is_unspecified()) {
                // The kernel takes all of 127.0.0.0/8 as local (its `local`
                // route on lo), listed on an interface or not, and so do
                // Docker and the datapath's host-local hooks.
                if !ip.is_loopback() && dp.local_addrs.get(&to_be32(ip), 0).is_err() {
                    bail!(
                        "{ip} is not an address of this host: publish on one of its addresses or omit the host IP"
                    );
                }
            }
            if let Some(ip6) = spec.host_ip6 {
                one_ipv6_address_publishable(&dp, ip6, &self.bridge)?;
            }
            if spec.picks_host_port() {
                let pick = spec_ports(spec)
                    .find(|p| self.port_taken(p, &wanted).is_none())
                    .ok_or_else(|| {
                        PortTaken(format!(
                            "no free host port in {spec}: every port of the range is taken"
                        ))
                    })?;
                wanted.push(pick);
            } else {
                for p in spec_ports(spec) {
                    if let Some(why) = self.port_taken(&p, &wanted) {
                        return Err(PortTaken(why).into());
                    }
                    wanted.push(p);
                }
            }
        }
        let keys: Vec<MapKey> = wanted.iter().map(mapping_key).collect();
        dp.set_published_ports(&keys)?;
        let mut written = Vec::new();
        for p in &wanted {
            let key = mapping_key(p);
            if let Err(e) = dp.insert_mapping(&key, mapping_target(ep.ip, p, hold), BPF_NOEXIST) {
                for k in &written {
                    dp.remove_mapping(k);
                }
                let _ = dp.set_published_ports(&[]);
                bail!(
                    "the datapath already maps host port {} ({e})",
                    p.host_side()
                );
            }
            written.push(key);
        }
        if let Some(e) = self.state.endpoint_mut(name) {
            e.ports.extend(wanted.iter().copied());
        }
        if let Err(e) = self.commit() {
            for k in &written {
                dp.remove_mapping(k);
            }
            if let Some(e) = self.state.endpoint_mut(name) {
                e.ports.retain(|p| !wanted.contains(p));
            }
            let _ = dp.set_published_ports(&[]);
            return Err(e);
        }
        self.sync_one_address_mappings(&mut dp)?;
        Ok(wanted)
    }

    /// Withdraws ports of endpoint `name` (`None`: all of them) and ends the
    /// flows they translated. Returns the ports and how many flows ended.
    pub fn unpublish(
        &mut self,
        name: &str,
        specs: Option<&[PortSpec]>,
    ) -> Result<(Vec<Port>, usize)> {
        let mut dp = self.datapath()?;
        let ep = self.endpoint(name)?.clone();
        let doomed: Vec<Port> = match specs {
            None => ep.ports.clone(),
            Some(specs) => {
                let mut doomed = Vec::new();
                for spec in specs {
                    let spec = &self.on_this_bridge(spec)?;
                    if spec.picks_host_port() {
                        doomed.extend(spec_ports(spec).filter(|p| ep.ports.contains(p)).take(1));
                    } else {
                        doomed.extend(spec_ports(spec));
                    }
                }
                if doomed.is_empty() {
                    bail!("none of those ports is published to {name}: see netbr ls");
                }
                if let Some(p) = doomed.iter().find(|p| !ep.ports.contains(p)) {
                    bail!(
                        "{} is not published to {name} port {}: see netbr ls",
                        p.host_side(),
                        p.container_port
                    );
                }
                doomed
            }
        };
        for p in &doomed {
            dp.remove_mapping(&mapping_key(p));
        }
        dp.set_published_ports(&[])?;
        if let Some(e) = self.state.endpoint_mut(name) {
            e.ports.retain(|p| !doomed.contains(p));
        }
        self.commit()?;
        self.sync_one_address_mappings(&mut dp)?;
        // Flows already translated by a withdrawn mapping end too, of both
        // families, so no stale UDP flow keeps delivering (moby#8795).
        let withdrawn = |proto: u8, dport: u16, daddr: IpAddr, target_port: u16| {
            doomed.iter().any(|p| {
                let k = mapping_key(p);
                proto == k.proto()
                    && u16::from_be(dport) == k.port()
                    && k.host_ip().is_none_or(|ip| ip == daddr)
                    && target_port == p.container_port.to_be()
            })
        };
        let ip = to_be32(ep.ip);
        let mut flows = dp.remove_flows(|key, e| {
            e.nat == NAT_DNAT
                && e.xlat.daddr == ip
                && withdrawn(key.proto, key.dport, key.daddr.ip(), e.xlat.dport)
        })?;
        if let Some(ip6) = ep.ip6.map(|a| words(&a.octets())) {
            flows += dp.remove_flows6(|key, e| {
                e.nat == NAT_DNAT
                    && e.xlat.daddr == ip6
                    && withdrawn(key.proto, key.dport, key.daddr.ip(), e.xlat.dport)
            })?;
        }
        Ok((doomed, flows))
    }

    /// `spec` as this bridge can publish it: on an IPv6-only bridge a port
    /// without a host IP is IPv6's alone, and an IPv4 host IP is refused.
    fn on_this_bridge(&self, spec: &PortSpec) -> Result<PortSpec> {
        if !self.ipv6_only() {
            return Ok(*spec);
        }
        if let Some(ip) = spec.host_ip {
            bail!(
                "bridge {} is IPv6-only: publish on [::], an IPv6 address of the host, or without a host IP, not on {ip}",
                self.bridge
            );
        }
        Ok(PortSpec {
            ipv6_only: true,
            ..*spec
        })
    }

    /// Tells the IPv6 datapath how many ports are published on one IPv6
    /// address, so that it looks them up only while there are some.
    pub(super) fn sync_one_address_mappings(&self, dp: &mut Datapath) -> Result<()> {
        dp.set_one_address_mappings(one_address_mappings(&self.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(ip: Option<[u8; 4]>, host_port: u16, proto: u8) -> Port {
        Port {
            proto,
            ipv6_only: false,
            host_ip6: None,
            host_ip: ip.map(Ipv4Addr::from),
            host_port,
            container_port: 80,
        }
    }

    #[test]
    fn ports_clash_on_the_same_address_or_a_wildcard() {
        let any = port(None, 8080, IPPROTO_TCP);
        let lo = port(Some([127, 0, 0, 1]), 8080, IPPROTO_TCP);
        let up = port(Some([192, 0, 2, 1]), 8080, IPPROTO_TCP);
        assert!(clash(&any, &lo) && clash(&lo, &any) && clash(&lo, &lo));
        assert!(!clash(&lo, &up));
        assert!(!clash(&any, &port(None, 8081, IPPROTO_TCP)));
        assert!(!clash(&any, &port(None, 8080, netbr_common::IPPROTO_UDP)));
        // One datapath entry serves every address, whatever the families;
        // an IPv6-only port leaves IPv4's addresses free.
        let v6_only = Port {
            ipv6_only: true,
            ..any
        };
        let v4_any = port(Some([0, 0, 0, 0]), 8080, IPPROTO_TCP);
        assert!(clash(&v6_only, &v4_any) && clash(&any, &v4_any) && clash(&v4_any, &lo));
        assert!(!clash(&v6_only, &lo));
    }

    #[test]
    fn a_spec_stands_for_its_pairs() {
        let s: PortSpec = "127.0.0.1:9000-9001:90-91/udp".parse().unwrap();
        let ports: Vec<_> = spec_ports(&s).collect();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[1].host_port, 9001);
        assert_eq!(ports[1].container_port, 91);
        assert_eq!(ports[1].host_side(), "127.0.0.1:9001/udp");
        let k = mapping_key(&ports[0]);
        assert_eq!(k.port(), 9000);
        assert_eq!(k.host_ip(), Some(Ipv4Addr::LOCALHOST.into()));
    }
}
