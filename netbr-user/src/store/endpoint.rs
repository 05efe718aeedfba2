//! Adding and removing endpoints: a veth pair, the container side configured
//! inside its namespace, and the datapath's entry for redirects to it.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{anyhow, bail, Context as _, Result};
use netbr_common::maps::{
    Endpoint, CFG_ALLOW_DIRECT_ROUTING, CFG_ICC_DISABLED, CFG_INTERNAL, CFG_XDP,
};

use super::{
    state::{EndpointState, Limits, Owner},
    validate_ifname, Store,
};
use crate::{
    addr::{from_be32, to_be32, Cidr, Cidr6, HostBlock},
    netlink::Netlink,
    netns::{self, NetnsGuard},
};

/// Endpoint names fit this many characters; a longer one is refused, never
/// cut.
pub const ENDPOINT_NAME_MAX: usize = 64;

/// Where an endpoint's container side goes.
#[derive(Debug, Clone)]
pub enum NetnsChoice {
    /// Create the named namespace `/run/netns/NAME` (as `ip netns add`).
    CreateNamed,
    /// An existing namespace, by path.
    Existing(PathBuf),
    /// None yet: the peer stays in this namespace, unconfigured, for a
    /// runtime that moves it into the container itself (Docker).
    HostSide,
}

#[derive(Debug, Clone)]
pub struct EndpointRequest {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    /// On a dual-stack bridge; the first free address when none is asked.
    pub ip6: Option<Ipv6Addr>,
    pub netns: NetnsChoice,
    /// Interface name inside the container.
    pub ifname: String,
    pub owner: Owner,
}

/// Interface names derived from an endpoint name: the kernel allows 15
/// characters, endpoint names may have 64, so both come from a hash of
/// (bridge, name) and stay unique per bridge.
pub fn veth_names(bridge: &str, name: &str) -> (String, String) {
    // FNV-1a, 32 bits: stable across versions, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in bridge.bytes().chain([0]).chain(name.bytes()) {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    (format!("nb{h:08x}"), format!("nbc{h:08x}"))
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= ENDPOINT_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if !ok {
        bail!(
            "endpoint name {name:?} must be 1-{ENDPOINT_NAME_MAX} characters of A-Z a-z 0-9 - _ ."
        );
    }
    Ok(())
}

/// Picks an endpoint's address of one family: the one asked for if it is
/// a free host address, else the first free one. `owner` names the
/// endpoint holding an address. The bridge's lock makes "first free" safe
/// among concurrent callers.
pub fn choose_ip<'a, B: HostBlock>(
    owner: impl Fn(B::Addr) -> Option<&'a str>,
    want: Option<B::Addr>,
    subnet: B,
    gateway: B::Addr,
) -> Result<B::Addr> {
    match want {
        Some(ip) if !subnet.is_host(ip) || ip == gateway => {
            bail!("{ip} is not a free host address of {subnet} (the gateway is {gateway})")
        }
        Some(ip) => match owner(ip) {
            Some(name) => bail!("{ip} is already used by endpoint {name}"),
            None => Ok(ip),
        },
        None => subnet
            .host_addrs()
            .find(|ip| *ip != gateway && owner(*ip).is_none())
            .with_context(|| format!("subnet {subnet} has no free address left")),
    }
}

/// The endpoint holding IPv4 address `ip`, by name.
fn owner4(endpoints: &[EndpointState], ip: Ipv4Addr) -> Option<&str> {
    endpoints
        .iter()
        .find(|e| e.ip == ip)
        .map(|e| e.name.as_str())
}

fn owner6(endpoints: &[EndpointState], ip: Ipv6Addr) -> Option<&str> {
    endpoints
        .iter()
        .find(|e| e.ip6 == Some(ip))
        .map(|e| e.name.as_str())
}

impl Store {
    /// The bridge's subnet and gateway, as attached.
    pub fn network(&self) -> Result<(Cidr, Ipv4Addr)> {
        let cfg = self.datapath()?.config()?;
        let subnet = Cidr::new(
            from_be32(cfg.subnet_addr),
            u32::from(from_be32(cfg.subnet_mask)).count_ones() as u8,
        );
        Ok((subnet, from_be32(cfg.gateway_addr)))
    }

    /// Whether the bridge is IPv6-only (its IPv4 addresses are keys only).
    pub fn ipv6_only(&self) -> bool {
        self.state.network.as_ref().is_some_and(|n| n.ipv6_only)
    }

    /// The bridge's IPv6 subnet and gateway, on a dual-stack bridge.
    pub fn network6(&self) -> Option<(Cidr6, Ipv6Addr)> {
        let n = self.state.network.as_ref()?;
        Some((n.subnet6.as_deref()?.parse().ok()?, n.gateway6?))
    }

    /// Connects a container namespace to the bridge. Validates everything
    /// first; a failure after that removes whatever was made.
    pub async fn add_endpoint(&mut self, req: &EndpointRequest) -> Result<EndpointState> {
        validate_name(&req.name)?;
        validate_ifname(&req.ifname)?;
        let mut dp = self.datapath()?;
        let cfg = dp.config()?;
        let (subnet, gateway) = self.network()?;
        if self.state.endpoint(&req.name).is_some() {
            bail!(
                "endpoint {} already exists on bridge {}",
                req.name,
                self.bridge
            );
        }
        let ipv6_only = self.ipv6_only();
        if let (true, Some(ip)) = (ipv6_only, req.ip) {
            bail!(
                "bridge {} is IPv6-only: give an IPv6 --ip, not {ip}",
                self.bridge
            );
        }
        let eps = &self.state.endpoints;
        let ip = choose_ip(|ip| owner4(eps, ip), req.ip, subnet, gateway)?;
        let net6 = self.network6();
        let masquerades6 = dp.net6.get(&0, 0)?.masquerades();
        let ip6 = match (net6, req.ip6) {
            (Some((subnet6, gateway6)), want) => {
                Some(choose_ip(|ip| owner6(eps, ip), want, subnet6, gateway6)?)
            }
            (None, Some(ip6)) => bail!(
                "bridge {} has no IPv6 subnet for {ip6}: attach it with an IPv6 --subnet too",
                self.bridge
            ),
            (None, None) => None,
        };
        let nl = Netlink::connect()?;
        let (host_if, peer_if) = veth_names(&self.bridge, &req.name);
        if nl.link(&host_if).await?.is_some() {
            bail!(
                "interface {host_if} (derived from endpoint {}) already exists",
                req.name
            );
        }
        let (ns_path, owns) = match &req.netns {
            NetnsChoice::Existing(p) => {
                netns::open(p)?;
                (Some(p.clone()), false)
            }
            NetnsChoice::CreateNamed => {
                if netns::exists(&req.name) {
                    bail!(
                        "network namespace {} already exists: pass --netns {} to use it",
                        req.name,
                        netns::resolve(&req.name).display()
                    );
                }
                (Some(netns::resolve(&req.name)), true)
            }
            NetnsChoice::HostSide => (None, false),
        };
        if let (Some(ns), false) = (&ns_path, owns) {
            let inner = Netlink::connect_in(ns)?;
            if inner.link(&req.ifname).await?.is_some() {
                bail!("namespace {} already has an {}", ns.display(), req.ifname);
            }
        }

        // Validated; from here on every step is undone if a later one fails.
        if owns {
            netns::create_named(&req.name)?;
        }
        let made = async {
            nl.create_veth(&host_if, &peer_if).await?;
            let host = nl.require_link(&host_if).await?;
            let peer = nl.require_link(&peer_if).await?;
            // Both ends take the bridge's MTU (`attach --mtu`), as Docker
            // gives a network's MTU to its containers' interfaces.
            let mtu = nl.require_link(&self.bridge).await?.mtu;
            if mtu != 0 && mtu != host.mtu {
                nl.set_mtu(host.index, mtu).await?;
                nl.set_mtu(peer.index, mtu).await?;
            }
            nl.set_master(host.index, cfg.bridge_ifindex).await?;
            if cfg.has(CFG_ICC_DISABLED) {
                nl.set_port_isolated(host.index, true).await?;
            }
            nl.set_up(host.index).await?;
            let (ifname, mac) = match &ns_path {
                Some(ns) => {
                    nl.move_to_netns(peer.index, &netns::open(ns)?).await?;
                    let inside = Inside {
                        ip: (!ipv6_only).then_some((ip, subnet.prefix, gateway)),
                        ip6: ip6.zip(net6).map(|(ip, (s, g))| (ip, s.prefix, g)),
                        route6: !cfg.has(CFG_INTERNAL)
                            && (masquerades6 || cfg.has(CFG_ALLOW_DIRECT_ROUTING)),
                    };
                    configure_inside(ns, &peer_if, &req.ifname, &inside).await?
                }
                // The runtime moves the peer into the container and sets
                // it up itself (Docker's Join answers with its name).
                None => (peer_if.clone(), peer.mac.unwrap_or_default()),
            };
            let ep = EndpointState {
                name: req.name.clone(),
                ip,
                ip6,
                netns: ns_path.clone().unwrap_or_default(),
                owns_netns: owns,
                host_ifname: host_if.clone(),
                host_ifindex: host.index,
                ifname,
                mac,
                owner: req.owner.clone(),
                ports: Vec::new(),
                limits: Limits::default(),
            };
            if cfg.has(CFG_XDP) && ns_path.is_some() {
                accept_xdp_frames(&ep)?;
            }
            let entry = Endpoint::new(ep.host_ifindex, ep.mac, 0);
            // BPF_NOEXIST: an entry already there means the state and the
            // maps disagree; never overwrite another endpoint's redirect.
            dp.endpoints
                .insert(to_be32(ip), entry, crate::bpf::datapath::BPF_NOEXIST)
                .map_err(|e| anyhow!("the datapath already has an endpoint at {ip} ({e})"))?;
            if let Some(ip6) = ip6 {
                if let Err(e) = dp.set_endpoint6(to_be32(ip), ip6, entry) {
                    let _ = dp.endpoints.remove(&to_be32(ip));
                    bail!(
                        "the datapath has no room for endpoint {}'s IPv6 address ({e:#})",
                        req.name
                    );
                }
            }
            if let Err(e) = crate::bpf::veth::link_endpoint(&self.pins, &host_if) {
                let _ = dp.endpoints.remove(&to_be32(ip));
                dp.remove_endpoint6(to_be32(ip));
                return Err(e);
            }
            self.state.endpoints.push(ep.clone());
            if let Err(e) = self.commit() {
                let _ = crate::bpf::veth::unlink_endpoint(&self.pins, &host_if);
                self.state.endpoints.pop();
                let _ = dp.endpoints.remove(&to_be32(ip));
                dp.remove_endpoint6(to_be32(ip));
                return Err(e);
            }
            Ok(ep)
        }
        .await;
        match made {
            Ok(ep) => Ok(ep),
            Err(e) => {
                // Deleting one end of a veth pair deletes both, wherever
                // the other end is by now.
                if let Ok(Some(l)) = nl.link(&host_if).await {
                    let _ = nl.del_link(l.index).await;
                }
                if owns {
                    let _ = netns::delete_named(&req.name);
                }
                Err(e.context(format!("adding endpoint {}", req.name)))
            }
        }
    }

    /// Removes an endpoint: its published ports, its flows, its datapath
    /// entry, its veth and the namespace netbr made for it. Goes on past
    /// failures to remove kernel objects (a namespace already gone took its
    /// veth with it) and reports the first one after the rest is done.
    pub async fn remove_endpoint(&mut self, name: &str) -> Result<EndpointState> {
        if !self.is_attached() && self.state.endpoints.is_empty() {
            return Err(super::not_attached(&self.bridge));
        }
        let ep = self.endpoint(name)?.clone();
        let nl = Netlink::connect()?;
        if self.is_attached() {
            let mut dp = self.datapath()?;
            for p in &ep.ports {
                dp.remove_mapping(&super::ports::mapping_key(p));
            }
            dp.set_published_ports(&[])?;
            let ip = to_be32(ep.ip);
            dp.remove_flows(|k, v| k.saddr == ip || v.xlat.daddr == ip)?;
            if let Some(ip6) = ep.ip6 {
                let ip6 = netbr_common::net6::words(&ip6.octets());
                dp.remove_flows6(|k, v| k.saddr == ip6 || v.xlat.daddr == ip6)?;
            }
            let _ = dp.endpoints.remove(&ip);
            dp.remove_endpoint6(ip);
            super::limits::forget(&self.pins, &mut dp, &ep)?;
            crate::bpf::veth::unlink_endpoint(&self.pins, &ep.host_ifname)?;
            self.remove_endpoint_rules(&mut dp, name)?;
        }
        let mut errors = remove_endpoint_objects(&nl, &ep).await;
        self.state.endpoints.retain(|e| e.name != name);
        self.commit()?;
        if self.is_attached() {
            self.sync_one_address_mappings(&mut self.datapath()?)?;
        }
        match errors.pop() {
            Some(e) => Err(e),
            None => Ok(ep),
        }
    }
}

/// Sets up the container side inside `ns`: the peer renamed to `ifname`,
/// its address, loopback, and a default route via the gateway unless a
/// first network already gave one (as the reference bridge plugin does).
/// Returns the interface's name and MAC.
/// A container interface's addresses: `(address, prefix, gateway)` per
/// family.
struct Inside {
    /// None on an IPv6-only bridge.
    ip: Option<(Ipv4Addr, u8, Ipv4Addr)>,
    ip6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
    /// An IPv6 default route via the gateway: when the container's IPv6 is
    /// masqueraded, or routed (direct routing). Otherwise nothing beyond
    /// the host could answer it, and a container is better told at once
    /// that the network is unreachable than left waiting.
    route6: bool,
}

async fn configure_inside(
    ns: &std::path::Path,
    peer_if: &str,
    ifname: &str,
    inside: &Inside,
) -> Result<(String, [u8; 6])> {
    let inner = Netlink::connect_in(ns)?;
    let eth = inner.require_link(peer_if).await?;
    inner.rename(eth.index, ifname).await?;
    if let Some((ip, prefix, _)) = inside.ip {
        inner.add_addr(eth.index, ip, prefix).await?;
    }
    if let Some((ip6, prefix6, _)) = inside.ip6 {
        inner.add_addr6(eth.index, ip6, prefix6).await?;
    }
    inner.set_up(eth.index).await?;
    let lo = inner.require_link("lo").await?;
    inner.set_up(lo.index).await?;
    if let Some((_, _, gateway)) = inside.ip {
        if inner.default_gateway().await?.is_none() {
            inner.add_default_route(gateway).await?;
        }
    }
    if let (Some((_, _, gateway6)), true) = (inside.ip6, inside.route6) {
        inner.add_default_route(gateway6).await?;
    }
    let mac = inner.require_link(ifname).await?.mac.unwrap_or_default();
    Ok((ifname.to_string(), mac))
}

/// Deletes an endpoint's veth pair and the namespace netbr made for it.
/// Returns the errors met, having tried everything.
pub async fn remove_endpoint_objects(nl: &Netlink, ep: &EndpointState) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    // By name and index both: the index alone could have been reused.
    match nl.link(&ep.host_ifname).await {
        Ok(Some(l)) if l.index == ep.host_ifindex => match nl.del_link(l.index).await {
            // Gone in between: its namespace's teardown takes the veth
            // pair with it, asynchronously. What was wanted.
            Err(e) if crate::netlink::errno(&e) == Some(libc::ENODEV) => {}
            Err(e) => errors.push(e),
            Ok(()) => {}
        },
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
    if ep.owns_netns && netns::exists(&ep.name) {
        if let Err(e) = netns::delete_named(&ep.name) {
            errors.push(e);
        }
    }
    errors
}

/// Readies an endpoint's veth for frames the uplink's XDP program
/// redirects to it: a veth drops them unless its NAPI instance runs, which
/// GRO turns on.
pub fn accept_xdp_frames(ep: &EndpointState) -> Result<()> {
    let _in = NetnsGuard::enter(&ep.netns)?;
    crate::ethtool::set_gro(&ep.ifname, true)
        .with_context(|| format!("endpoint {} in {}", ep.name, ep.netns.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str, ip: [u8; 4]) -> EndpointState {
        EndpointState {
            name: name.into(),
            ip: Ipv4Addr::from(ip),
            ip6: None,
            netns: "/run/netns/x".into(),
            owns_netns: false,
            host_ifname: "nb0".into(),
            host_ifindex: 1,
            ifname: "eth0".into(),
            mac: [0; 6],
            owner: Owner::Cli,
            ports: Vec::new(),
            limits: Limits::default(),
        }
    }

    #[test]
    fn addresses_are_the_first_free_or_the_one_asked_for_if_free() {
        let subnet: Cidr = "172.30.0.0/29".parse().unwrap();
        let gw = Ipv4Addr::new(172, 30, 0, 1);
        let mut eps = vec![ep("a", [172, 30, 0, 2]), ep("b", [172, 30, 0, 4])];
        let choose_ip = |eps: &[EndpointState], want, subnet, gw| {
            choose_ip(|ip| owner4(eps, ip), want, subnet, gw)
        };
        assert_eq!(
            choose_ip(&eps, None, subnet, gw).unwrap(),
            Ipv4Addr::new(172, 30, 0, 3)
        );
        let want = Ipv4Addr::new(172, 30, 0, 6);
        assert_eq!(choose_ip(&eps, Some(want), subnet, gw).unwrap(), want);
        let err = choose_ip(&eps, Some(Ipv4Addr::new(172, 30, 0, 4)), subnet, gw).unwrap_err();
        assert!(err.to_string().contains("endpoint b"), "{err}");
        for bad in [
            [172, 30, 0, 1],
            [172, 30, 0, 0],
            [172, 30, 0, 7],
            [10, 0, 0, 2],
        ] {
            assert!(choose_ip(&eps, Some(Ipv4Addr::from(bad)), subnet, gw).is_err());
        }
        for (i, last) in [3u8, 5, 6].into_iter().enumerate() {
            eps.push(ep(&format!("x{i}"), [172, 30, 0, last]));
        }
        let err = choose_ip(&eps, None, subnet, gw).unwrap_err();
        assert!(err.to_string().contains("no free address"), "{err}");
    }

    #[test]
    fn ipv6_addresses_skip_the_gateway_and_taken_ones() {
        let subnet: Cidr6 = "fd00:30::/64".parse().unwrap();
        let gw: Ipv6Addr = "fd00:30::1".parse().unwrap();
        let mut a = ep("a", [172, 30, 0, 2]);
        a.ip6 = Some("fd00:30::2".parse().unwrap());
        let eps = [a];
        let pick = |want| choose_ip(|ip| owner6(&eps, ip), want, subnet, gw);
        assert_eq!(
            pick(None).unwrap(),
            "fd00:30::3".parse::<Ipv6Addr>().unwrap()
        );
        let err = pick(Some("fd00:30::2".parse().unwrap())).unwrap_err();
        assert!(err.to_string().contains("endpoint a"), "{err}");
        assert!(pick(Some(gw)).is_err());
        assert!(pick(Some("fd00:31::2".parse().unwrap())).is_err());
    }

    #[test]
    fn names_are_refused_not_cut() {
        assert!(validate_name(&"a".repeat(ENDPOINT_NAME_MAX)).is_ok());
        assert!(validate_name(&"a".repeat(ENDPOINT_NAME_MAX + 1)).is_err());
        for bad in ["", ".hidden", "a/b", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn veth_names_fit_the_kernel_and_differ_per_bridge() {
        let (h, p) = veth_names("netbr0", &"n".repeat(64));
        assert!(h.len() <= 15 && p.len() <= 15);
        assert_ne!(veth_names("a", "x"), veth_names("b", "x"));
    }
}
