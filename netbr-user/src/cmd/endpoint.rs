use std::net::Ipv4Addr;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use netbr_common::maps::{
    Endpoint, CFG_ICC_DISABLED, CFG_XDP, ENDPOINT_NAME_MAX, ENDPOINT_OWNS_NETNS,
};

use super::{find_endpoint, fixed, text};
use crate::{
    addr::{from_be32, to_be32, Cidr},
    bpf::datapath::Datapath,
    netlink::Netlink,
    netns::{self, NetnsGuard},
};

#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// Connect a container namespace to the bridge (veth, address, default route).
    Add(Add),
    /// Remove an endpoint, its published ports and flows, and the namespace netbr made for it.
    Rm(Rm),
}

impl EndpointCmd {
    pub async fn exec(self) -> Result<()> {
        match self {
            EndpointCmd::Add(c) => c.exec().await,
            EndpointCmd::Rm(c) => c.exec().await,
        }
    }
}

#[derive(Args, Debug)]
pub struct Add {
    /// Endpoint name, up to 64 characters; also the name of the namespace
    /// netbr creates when --netns is not given.
    pub name: String,
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Address in the bridge subnet; the first free one by default.
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// An existing network namespace (name or path) to connect.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
}

#[derive(Args, Debug)]
pub struct Rm {
    pub name: String,
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
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

fn validate_name(name: &str) -> Result<()> {
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

impl Add {
    pub async fn exec(self) -> Result<()> {
        validate_name(&self.name)?;
        let (mut dp, _) = Datapath::open(&self.bridge)?;
        let cfg = dp.config()?;
        let subnet = Cidr::new(
            from_be32(cfg.subnet_addr),
            u32::from(from_be32(cfg.subnet_mask)).count_ones() as u8,
        );
        let gateway = from_be32(cfg.gateway_addr);
        let endpoints = dp.endpoint_list()?;
        if endpoints.iter().any(|(_, ep)| text(&ep.name) == self.name) {
            bail!(
                "endpoint {} already exists on bridge {}",
                self.name,
                self.bridge
            );
        }
        let taken =
            |ip: Ipv4Addr| ip == gateway || endpoints.iter().any(|(a, _)| *a == to_be32(ip));
        let ip = match self.ip {
            Some(ip) if !subnet.is_host(ip) || ip == gateway => {
                bail!("{ip} is not a free host address of {subnet} (the gateway is {gateway})")
            }
            Some(ip) if taken(ip) => bail!("{ip} is already used by another endpoint"),
            Some(ip) => ip,
            None => subnet
                .hosts()
                .find(|ip| !taken(*ip))
                .with_context(|| format!("subnet {subnet} has no free address left"))?,
        };
        let nl = Netlink::connect()?;
        let (host_if, peer_if) = veth_names(&self.bridge, &self.name);
        if nl.link(&host_if).await?.is_some() {
            bail!(
                "interface {host_if} (derived from endpoint {}) already exists",
                self.name
            );
        }
        let (ns_path, owns) = match &self.netns {
            Some(ns) => {
                let p = netns::resolve(ns);
                netns::open(&p)?;
                (p, false)
            }
            None => (netns::create_named(&self.name)?, true),
        };
        let result = async {
            let inner = {
                let _in = NetnsGuard::enter(&ns_path)?;
                Netlink::connect()?
            };
            if inner.link("eth0").await?.is_some() {
                bail!("namespace {} already has an eth0", ns_path.display());
            }
            nl.create_veth(&host_if, &peer_if).await?;
            let host = nl.require_link(&host_if).await?;
            let peer = nl.require_link(&peer_if).await?;
            nl.move_to_netns(peer.index, &netns::open(&ns_path)?)
                .await?;
            nl.set_master(host.index, cfg.bridge_ifindex).await?;
            if cfg.has(CFG_ICC_DISABLED) {
                nl.set_port_isolated(host.index, true).await?;
            }
            nl.set_up(host.index).await?;
            let eth0 = inner.require_link(&peer_if).await?;
            inner.rename(eth0.index, "eth0").await?;
            inner.add_addr(eth0.index, ip, subnet.prefix).await?;
            inner.set_up(eth0.index).await?;
            let lo = inner.require_link("lo").await?;
            inner.set_up(lo.index).await?;
            inner.add_default_route(gateway).await?;
            let ep = Endpoint {
                host_ifindex: host.index,
                mac: inner.require_link("eth0").await?.mac.unwrap_or_default(),
                flags: if owns { ENDPOINT_OWNS_NETNS } else { 0 },
                name: fixed(&self.name),
                netns: fixed(&ns_path.to_string_lossy()),
            };
            if cfg.has(CFG_XDP) {
                accept_xdp_frames(&ep)?;
            }
            dp.endpoints.insert(to_be32(ip), ep, 0)?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            // Undo what was made, so a failed add changes nothing.
            if let Ok(Some(l)) = nl.link(&host_if).await {
                let _ = nl.del_link(l.index).await;
            }
            if owns {
                let _ = netns::delete_named(&self.name);
            }
            return Err(e.context(format!("adding endpoint {}", self.name)));
        }
        println!(
            "endpoint {} {ip}/{} in {} (veth {host_if} on {})",
            self.name,
            subnet.prefix,
            ns_path.display(),
            self.bridge
        );
        Ok(())
    }
}

impl Rm {
    pub async fn exec(self) -> Result<()> {
        let (mut dp, _) = Datapath::open(&self.bridge)?;
        let (ip, ep) = find_endpoint(&dp, &self.bridge, &self.name)?;
        let nl = Netlink::connect()?;
        let mut errors = remove_endpoint_objects(&nl, &ep).await;
        let published: Vec<_> = dp
            .mapping_list()?
            .into_iter()
            .filter(|(_, t)| t.addr == ip)
            .map(|(k, _)| k)
            .collect();
        for k in published {
            dp.mappings.remove(&k)?;
        }
        dp.remove_flows(|k, v| k.saddr == ip || v.xlat.daddr == ip)?;
        dp.endpoints.remove(&ip)?;
        if let Some(e) = errors.pop() {
            return Err(e);
        }
        println!("removed endpoint {}", self.name);
        Ok(())
    }
}

/// Deletes an endpoint's veth pair and the namespace netbr made for it.
/// Returns the errors met, having tried everything.
pub async fn remove_endpoint_objects(nl: &Netlink, ep: &Endpoint) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    match nl.link_by_index(ep.host_ifindex).await {
        Ok(Some(l)) => {
            if let Err(e) = nl.del_link(l.index).await {
                errors.push(e);
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e),
    }
    if ep.flags & ENDPOINT_OWNS_NETNS != 0 {
        let name = text(&ep.name);
        if netns::exists(&name) {
            if let Err(e) = netns::delete_named(&name) {
                errors.push(e);
            }
        }
    }
    errors
}

/// Readies an endpoint's veth for frames the uplink's XDP program
/// redirects to it: a veth drops them unless its NAPI instance runs, which
/// GRO turns on.
pub fn accept_xdp_frames(ep: &Endpoint) -> Result<()> {
    let ns = std::path::PathBuf::from(text(&ep.netns));
    let _in = NetnsGuard::enter(&ns)?;
    crate::ethtool::set_gro("eth0", true)
        .with_context(|| format!("endpoint {} in {}", text(&ep.name), ns.display()))
}
