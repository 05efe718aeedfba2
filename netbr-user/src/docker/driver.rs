//! The driver's calls, one function each. Every change goes through the
//! store, so the driver serialises with the CLI and the CNI plugin, and a
//! restarted driver carries on from the state files: it keeps nothing of
//! its own in memory.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use netbr_common::{portspec::PortSpec, IPPROTO_TCP, IPPROTO_UDP};
use serde_json::{json, Value};

use super::api::{self, CreateNetwork, EndpointRequest, NetworkRef, PortBinding};
use crate::{
    addr::{Cidr, PortRange},
    store::{self, limits::parse_limit, AttachRequest, Limits, NetnsChoice, Owner, State, Store},
};

/// What the driver was started with.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Host ports for `HostPort` 0 (`docker run -p 80`, `-P`).
    pub host_ports: PortRange,
}

/// The bridge serving Docker network `id`, found through the state files.
fn bridge_of(id: &str) -> Result<String> {
    for bridge in store::bridges()? {
        let state = State::load(&store::state_dir(&bridge)?, &bridge)?;
        if state
            .network
            .as_ref()
            .and_then(|n| n.docker_network.as_deref())
            == Some(id)
        {
            return Ok(bridge);
        }
    }
    bail!("netbr knows no Docker network {id}: was it created with this driver?")
}

/// The endpoint's name in netbr: Docker's short ID form.
fn endpoint_name(endpoint_id: &str) -> String {
    let short: String = endpoint_id.chars().take(12).collect();
    format!("dk-{short}")
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .context("the request is not what Docker's network-driver API sends")
}

fn flag(opts: &std::collections::BTreeMap<String, String>, key: &str) -> Result<Option<bool>> {
    opts.get(key)
        .map(|v| match v.as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            other => Err(anyhow!("-o {key}={other}: use true or false")),
        })
        .transpose()
}

pub fn create_network(body: &[u8]) -> Result<Value> {
    let req: CreateNetwork = parse(body)?;
    if !req.ipv6_data.is_empty() {
        bail!("netbr networks are IPv4 only: create the network without --ipv6");
    }
    let [ipam] = req.ipv4_data.as_slice() else {
        bail!(
            "netbr needs exactly one IPv4 subnet (--subnet CIDR); got {}",
            req.ipv4_data.len()
        );
    };
    let opts = req.generic();
    let known = [
        "netbr.uplink",
        "netbr.bridge",
        "netbr.ct-max",
        "netbr.snat-ports",
        "netbr.icc",
        "netbr.fast-path",
        "netbr.allow-direct-routing",
    ];
    if let Some(k) = opts
        .keys()
        .find(|k| k.starts_with("netbr.") && !known.contains(&k.as_str()))
    {
        bail!("unknown option -o {k}: netbr takes {}", known.join(", "));
    }
    let subnet: Cidr = ipam.pool.parse().context("the network's subnet")?;
    let gateway: Option<Ipv4Addr> = match ipam.gateway.split('/').next() {
        Some("") | None => None,
        Some(g) => Some(g.parse().with_context(|| format!("gateway {g:?}"))?),
    };
    let uplink = opts.get("netbr.uplink").ok_or_else(|| {
        anyhow!("netbr needs its uplink: docker network create -o netbr.uplink=IFACE ...")
    })?;
    let bridge = opts.get("netbr.bridge").cloned().unwrap_or_else(|| {
        let short: String = req.network_id.chars().take(12).collect();
        format!("nb-{short}")
    });
    let mut attach = AttachRequest::new(subnet, uplink);
    attach.gateway = gateway;
    if let Some(n) = opts.get("netbr.ct-max") {
        attach.ct_max = Some(n.parse().with_context(|| format!("-o netbr.ct-max={n}"))?);
    }
    if let Some(r) = opts.get("netbr.snat-ports") {
        attach.snat_ports = r
            .parse()
            .with_context(|| format!("-o netbr.snat-ports={r}"))?;
    }
    attach.icc = flag(&opts, "netbr.icc")?.unwrap_or(true);
    attach.fast_path = flag(&opts, "netbr.fast-path")?.unwrap_or(true);
    attach.allow_direct_routing = flag(&opts, "netbr.allow-direct-routing")?.unwrap_or(false);
    crate::netlink::block_on(async {
        let mut store = Store::open(&bridge)?;
        let owner = store
            .state
            .network
            .as_ref()
            .and_then(|n| n.docker_network.clone());
        match owner {
            // dockerd (re)creating a network it already has: a restart.
            Some(id) if id == req.network_id => store.ensure_attached(&attach).await,
            Some(id) => bail!(
                "bridge {bridge} already serves Docker network {id}: pick another -o netbr.bridge"
            ),
            None if store.is_attached() || !store.state.endpoints.is_empty() => {
                bail!("bridge {bridge} is already in use by netbr: pick another -o netbr.bridge")
            }
            None => {
                store.attach(&attach).await?;
                store.set_docker_network(Some(req.network_id.clone()))
            }
        }
    })?;
    Ok(json!({}))
}

pub fn delete_network(body: &[u8]) -> Result<Value> {
    let req: NetworkRef = parse(body)?;
    let Ok(bridge) = bridge_of(&req.network_id) else {
        return Ok(json!({}));
    };
    let errors = crate::netlink::block_on(async {
        let store = Store::open(&bridge)?;
        if let Some(e) = store.state.endpoints.first() {
            bail!(
                "network still has endpoint {}: remove its containers first",
                e.name
            );
        }
        store.detach(false).await
    })?;
    match errors.into_iter().next() {
        Some(e) => Err(e.context(format!("detaching bridge {bridge}"))),
        None => Ok(json!({})),
    }
}

/// Endpoint options (`docker network connect --driver-opt KEY=VALUE`).
const ENDPOINT_OPTS: [&str; 2] = ["netbr.egress-rate", "netbr.ingress-rate"];

/// The limits an endpoint's driver options ask for; unknown `netbr.*` keys
/// and bad rates are refused.
fn endpoint_limits(req: &EndpointRequest) -> Result<Limits> {
    let opts = req.driver_opts();
    if let Some(k) = opts.keys().find(|k| !ENDPOINT_OPTS.contains(&k.as_str())) {
        bail!(
            "unknown endpoint option --driver-opt {k}: netbr takes {}",
            ENDPOINT_OPTS.join(", ")
        );
    }
    let mut limits = Limits::default();
    if let Some(r) = opts.get("netbr.egress-rate") {
        limits.egress = parse_limit(r).context("--driver-opt netbr.egress-rate")?;
    }
    if let Some(r) = opts.get("netbr.ingress-rate") {
        limits.ingress = parse_limit(r).context("--driver-opt netbr.ingress-rate")?;
    }
    Ok(limits)
}

pub fn create_endpoint(body: &[u8]) -> Result<Value> {
    let req: EndpointRequest = parse(body)?;
    let bridge = bridge_of(&req.network_id)?;
    let limits = endpoint_limits(&req)?;
    let iface = req.interface.unwrap_or_default();
    if !iface.address_ipv6.is_empty() {
        bail!("netbr networks are IPv4 only");
    }
    let ip = match iface.address.split('/').next() {
        Some("") | None => None,
        Some(a) => Some(
            a.parse::<Ipv4Addr>()
                .with_context(|| format!("address {a:?}"))?,
        ),
    };
    let ep = crate::netlink::block_on(async {
        let mut store = Store::open(&bridge)?;
        if let Some(ep) = store.state.docker_endpoint(&req.endpoint_id) {
            return Ok(ep.clone());
        }
        let ep = store
            .add_endpoint(&store::EndpointRequest {
                name: endpoint_name(&req.endpoint_id),
                ip,
                netns: NetnsChoice::HostSide,
                ifname: "eth0".into(),
                owner: Owner::Docker {
                    network_id: req.network_id.clone(),
                    endpoint_id: req.endpoint_id.clone(),
                },
            })
            .await?;
        if limits != Limits::default() {
            if let Err(e) = store.set_limits(&ep.name, limits).await {
                let _ = store.remove_endpoint(&ep.name).await;
                return Err(e);
            }
        }
        Ok(ep)
    })?;
    // Docker's IPAM chose the address; tell Docker only what it did not say.
    let mut interface = json!({});
    if ip.is_none() {
        let (subnet, _) = Store::open(&bridge)?.network()?;
        interface["Address"] = json!(format!("{}/{}", ep.ip, subnet.prefix));
    }
    Ok(json!({ "Interface": interface }))
}

/// Runs `f` on the store of the bridge and endpoint a request names.
fn with_endpoint<T>(
    body: &[u8],
    f: impl AsyncFnOnce(&mut Store, &EndpointRequest, String) -> Result<T>,
) -> Result<T> {
    let req: EndpointRequest = parse(body)?;
    let bridge = bridge_of(&req.network_id)?;
    crate::netlink::block_on(async {
        let mut store = Store::open(&bridge)?;
        let name = store
            .state
            .docker_endpoint(&req.endpoint_id)
            .map(|e| e.name.clone())
            .ok_or_else(|| {
                anyhow!(
                    "netbr knows no endpoint {} on network {}",
                    req.endpoint_id,
                    req.network_id
                )
            })?;
        f(&mut store, &req, name).await
    })
}

pub fn join(body: &[u8]) -> Result<Value> {
    with_endpoint(body, async |store, req, name| {
        store.set_endpoint_netns(&name, PathBuf::from(&req.sandbox_key))?;
        let (_, gateway) = store.network()?;
        let ep = store.endpoint(&name)?;
        Ok(serde_json::to_value(api::JoinResponse {
            interface_name: api::InterfaceName {
                src_name: ep.ifname.clone(),
                dst_prefix: "eth".into(),
            },
            // Always the gateway: without it dockerd adds a
            // docker_gwbridge network and publishes through docker-proxy.
            gateway: gateway.to_string(),
        })?)
    })
}

pub fn leave(body: &[u8]) -> Result<Value> {
    with_endpoint(body, async |store, _, name| {
        store.set_endpoint_netns(&name, PathBuf::new())?;
        Ok(json!({}))
    })
}

pub fn delete_endpoint(body: &[u8]) -> Result<Value> {
    let req: EndpointRequest = parse(body)?;
    let Ok(bridge) = bridge_of(&req.network_id) else {
        return Ok(json!({}));
    };
    crate::netlink::block_on(async {
        let mut store = Store::open(&bridge)?;
        let name = store
            .state
            .docker_endpoint(&req.endpoint_id)
            .map(|e| e.name.clone());
        if let Some(name) = name {
            store.remove_endpoint(&name).await?;
        }
        Ok(json!({}))
    })
}

/// `-p` bindings as specs: `HostPort` 0 picks from the driver's range,
/// `HostPort`-`HostPortEnd` from that range.
fn specs(bindings: &[PortBinding], cfg: &DriverConfig) -> Result<Vec<PortSpec>> {
    let mut out = Vec::new();
    for b in bindings {
        let proto = match b.proto {
            6 => IPPROTO_TCP,
            17 => IPPROTO_UDP,
            p => bail!(
                "port {}: protocol {p} is not supported: netbr publishes tcp and udp",
                b.port
            ),
        };
        let host_ip = match b.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            // Docker may add the IPv6 wildcard beside the IPv4 one; netbr
            // publishes on IPv4.
            "::" => continue,
            ip => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                anyhow!("host IP {ip} is not an IPv4 address: netbr publishes on IPv4")
            })?),
        };
        let host_ports = match (b.host_port, b.host_port_end) {
            (0, _) => (cfg.host_ports.0, cfg.host_ports.1),
            (p, e) if e > p => (p, e),
            (p, _) => (p, p),
        };
        out.push(PortSpec {
            host_ip,
            host_ports,
            container_ports: (b.port, b.port),
            proto,
        });
    }
    Ok(out)
}

pub fn program_external_connectivity(body: &[u8], cfg: &DriverConfig) -> Result<Value> {
    with_endpoint(body, async |store, req, name| {
        let bindings = req.port_bindings().map_err(|e| anyhow!(e))?;
        let have = store.endpoint(&name)?.ports.clone();
        // Called again for a container already served (a dockerd restart):
        // what is published stays as it is.
        let wanted: Vec<PortSpec> = specs(&bindings, cfg)?
            .into_iter()
            .filter(|s| {
                !have.iter().any(|p| {
                    p.proto == s.proto
                        && p.host_ip == s.host_ip
                        && p.container_port == s.container_ports.0
                        && (s.host_ports.0..=s.host_ports.1).contains(&p.host_port)
                })
            })
            .collect();
        // Docker publishes nothing itself for a remote driver and no proxy
        // holds the ports: netbr holds them (see MAPPING_HOLD).
        store.publish(&name, &wanted, true).await?;
        // The interface is in the container by now: egress pacing, which
        // lives there, can be put in place.
        store.reapply_limits(&name).await?;
        Ok(json!({}))
    })
}

pub fn revoke_external_connectivity(body: &[u8]) -> Result<Value> {
    with_endpoint(body, async |store, _, name| {
        if !store.endpoint(&name)?.ports.is_empty() {
            store.unpublish(&name, None)?;
        }
        Ok(json!({}))
    })
}

pub fn endpoint_oper_info(body: &[u8]) -> Result<Value> {
    with_endpoint(body, async |store, _, name| {
        let ep = store.endpoint(&name)?;
        let ports: Vec<Value> = ep
            .ports
            .iter()
            .map(|p| {
                json!({
                    "Proto": p.proto,
                    "IP": ep.ip.to_string(),
                    "Port": p.container_port,
                    "HostIP": p.host_ip.map(|i| i.to_string()).unwrap_or_else(|| "0.0.0.0".into()),
                    "HostPort": p.host_port,
                    "HostPortEnd": p.host_port,
                })
            })
            .collect();
        // Docker shows a remote driver's operational data in `docker
        // network inspect --verbose` and otherwise ignores it: the
        // endpoint's traffic rides along for whoever asks.
        let nl = crate::netlink::Netlink::connect()?;
        let traffic = crate::traffic::of_endpoints(&nl, std::slice::from_ref(ep)).await?;
        Ok(json!({"Value": {
            api::PORTMAP: ports,
            "com.docker.network.endpoint.macaddress": ep.mac_string(),
            "netbr.traffic": traffic.get(&name),
        }}))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_become_specs() {
        let cfg = DriverConfig {
            host_ports: PortRange(20000, 29999),
        };
        let b = |proto, host_ip: &str, host_port, end| PortBinding {
            proto,
            ip: String::new(),
            port: 80,
            host_ip: host_ip.into(),
            host_port,
            host_port_end: end,
        };
        let s = specs(
            &[
                b(6, "", 8080, 8080),
                b(17, "127.0.0.1", 0, 0),
                b(6, "::", 8080, 8080),
                b(6, "", 9000, 9009),
            ],
            &cfg,
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].host_ports, s[0].host_ip), ((8080, 8080), None));
        assert!(s[1].picks_host_port() && s[1].host_ports == (20000, 29999));
        assert_eq!(s[1].host_ip, Some(Ipv4Addr::LOCALHOST));
        assert!(s[2].picks_host_port() && s[2].host_ports == (9000, 9009));
        assert!(specs(&[b(132, "", 1, 1)], &cfg).is_err());
        assert!(specs(&[b(6, "fe80::1", 1, 1)], &cfg).is_err());
        assert_eq!(endpoint_name("0123456789abcdef"), "dk-0123456789ab");
    }
}
