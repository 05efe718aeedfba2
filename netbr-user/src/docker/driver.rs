//! The driver's calls, one function each. Every change goes through the
//! store, so the driver serialises with the CLI and the CNI plugin, and a
//! restarted driver carries on from the state files: it keeps nothing of
//! its own in memory.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use netbr_common::{maps::CFG_INTERNAL, portspec::PortSpec, IPPROTO_TCP, IPPROTO_UDP};
use serde_json::{json, Value};

use super::{
    api::{self, CreateNetwork, EndpointRequest, NetworkRef, PortBinding},
    records::Records,
};
use crate::{
    addr::{Cidr, PortRange},
    store::{self, limits::parse_limit, AttachRequest, Limits, NetnsChoice, Owner, State, Store},
};

/// What the driver was started with.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Host ports for `HostPort` 0 (`docker run -p 80`, `-P`).
    pub host_ports: PortRange,
    /// The networks the driver made, kept across reboots.
    pub records: Records,
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

/// Like [`bridge_of`], attaching the network again from the driver's
/// record when netbr no longer has it (after a reboot, or a detach).
fn bridge_for(id: &str, cfg: &DriverConfig) -> Result<String> {
    if let Ok(bridge) = bridge_of(id) {
        return Ok(bridge);
    }
    let Some(request) = cfg.records.load(id)? else {
        return bridge_of(id);
    };
    log::info!("attaching Docker network {id} again from the driver's record");
    attach_network(&request).with_context(|| format!("attaching Docker network {id} again"))?;
    bridge_of(id)
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

/// Docker's own options of `-d bridge` (`docker network create -o`), as
/// they arrive among the generic ones, and `--internal`.
/// Docker's bridge driver options, by the names dockerd passes them.
pub mod bridge_opt {
    pub const NAME: &str = "com.docker.network.bridge.name";
    pub const ICC: &str = "com.docker.network.bridge.enable_icc";
    pub const MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
    pub const GATEWAY_MODE: &str = "com.docker.network.bridge.gateway_mode_ipv4";
    pub const HOST_BINDING: &str = "com.docker.network.bridge.host_binding_ipv4";
    pub const MTU: &str = "com.docker.network.driver.mtu";
    pub const INTERNAL: &str = "com.docker.network.internal";
}

/// What Docker's bridge options ask of a netbr network, with what they mean
/// for `-d bridge`; an unknown option or value is refused by name rather
/// than ignored.
#[derive(Debug, Default, PartialEq)]
struct DockerOptions {
    bridge: Option<String>,
    icc: Option<bool>,
    allow_direct_routing: Option<bool>,
    host_ip: Option<Ipv4Addr>,
    masquerade: bool,
    routed: bool,
    internal: bool,
    mtu: Option<u32>,
}

fn docker_options(
    opts: &std::collections::BTreeMap<String, String>,
    internal: bool,
) -> Result<DockerOptions> {
    use bridge_opt::*;
    let known = [NAME, ICC, MASQUERADE, GATEWAY_MODE, HOST_BINDING, MTU];
    if let Some(k) = opts
        .keys()
        .find(|k| k.starts_with("com.docker.network.") && !known.contains(&k.as_str()))
    {
        bail!("-o {k}: netbr cannot honour that option; create the network without it");
    }
    let mut out = DockerOptions {
        bridge: opts.get(NAME).cloned(),
        icc: flag(opts, ICC)?,
        masquerade: flag(opts, MASQUERADE)?.unwrap_or(true),
        internal,
        ..DockerOptions::default()
    };
    if let Some(name) = &out.bridge {
        store::validate_ifname(name).with_context(|| format!("-o {NAME}={name}"))?;
    }
    match opts.get(GATEWAY_MODE).map(String::as_str) {
        None | Some("nat") => {}
        // NAT, without Docker 28's protection against direct routing.
        Some("nat-unprotected") => out.allow_direct_routing = Some(true),
        Some("routed") => out.routed = true,
        Some(other) => bail!("-o {GATEWAY_MODE}={other}: use nat, nat-unprotected or routed"),
    }
    if internal && (out.routed || out.allow_direct_routing.is_some()) {
        bail!("--internal lets nothing in from outside: drop -o {GATEWAY_MODE}");
    }
    if let Some(ip) = opts.get(HOST_BINDING) {
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| anyhow!("-o {HOST_BINDING}={ip}: not an IPv4 address"))?;
        out.host_ip = (!ip.is_unspecified()).then_some(ip);
    }
    match opts.get(MTU).map(|m| (m, m.parse::<u32>())) {
        // 0 is Docker's "the default".
        None | Some((_, Ok(0))) => {}
        Some((_, Ok(mtu))) => out.mtu = Some(mtu),
        Some((m, Err(_))) => bail!("-o {MTU}={m}: not a number of bytes"),
    }
    Ok(out)
}

/// `a`, unless `b` says otherwise: one setting given two ways must agree.
fn agree<T: PartialEq + std::fmt::Debug>(
    what: &str,
    a: Option<T>,
    b: Option<T>,
) -> Result<Option<T>> {
    match (a, b) {
        (Some(a), Some(b)) if a != b => bail!("{what} is given twice, as {a:?} and {b:?}"),
        (a, b) => Ok(a.or(b)),
    }
}

/// Attaches the network a `CreateNetwork` request describes and keeps the
/// request, so that the network outlives `/run` and bpffs.
pub fn create_network(body: &[u8], cfg: &DriverConfig) -> Result<Value> {
    let id = attach_network(body)?;
    if let Err(e) = cfg.records.save(&id, body) {
        // Without its record the network would not survive a reboot:
        // refuse it whole rather than half.
        let _ = delete_network(&json!({ "NetworkID": id }).to_string().into_bytes(), cfg);
        return Err(e);
    }
    Ok(json!({}))
}

/// Attaches a network as `CreateNetwork` asks; returns its ID.
fn attach_network(body: &[u8]) -> Result<String> {
    let req: CreateNetwork = parse(body)?;
    let internal = req
        .options
        .get(bridge_opt::INTERNAL)
        .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"));
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
    let docker = docker_options(&opts, internal)?;
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
    let bridge = agree(
        "the bridge's name (netbr.bridge, com.docker.network.bridge.name)",
        opts.get("netbr.bridge").cloned(),
        docker.bridge,
    )?
    .unwrap_or_else(|| {
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
    attach.icc = agree(
        "inter-container traffic (netbr.icc, com.docker.network.bridge.enable_icc)",
        flag(&opts, "netbr.icc")?,
        docker.icc,
    )?
    .unwrap_or(true);
    attach.fast_path = flag(&opts, "netbr.fast-path")?.unwrap_or(true);
    attach.allow_direct_routing = agree(
        "direct routing (netbr.allow-direct-routing, com.docker.network.bridge.gateway_mode_ipv4)",
        flag(&opts, "netbr.allow-direct-routing")?,
        docker.allow_direct_routing,
    )?
    .unwrap_or(false);
    if !docker.masquerade {
        attach.no_masquerade = vec![Cidr::new(Ipv4Addr::UNSPECIFIED, 0)];
    }
    attach.routed = docker.routed;
    attach.internal = docker.internal;
    attach.mtu = docker.mtu;
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
                store.set_docker_network(Some(req.network_id.clone()), docker.host_ip)
            }
        }
    })?;
    Ok(req.network_id)
}

pub fn delete_network(body: &[u8], cfg: &DriverConfig) -> Result<Value> {
    let req: NetworkRef = parse(body)?;
    let Ok(bridge) = bridge_of(&req.network_id) else {
        cfg.records.remove(&req.network_id)?;
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
        None => {
            cfg.records.remove(&req.network_id)?;
            Ok(json!({}))
        }
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

pub fn create_endpoint(body: &[u8], cfg: &DriverConfig) -> Result<Value> {
    let req: EndpointRequest = parse(body)?;
    let bridge = bridge_for(&req.network_id, cfg)?;
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
                ip6: None,
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
    cfg: &DriverConfig,
    f: impl AsyncFnOnce(&mut Store, &EndpointRequest, String) -> Result<T>,
) -> Result<T> {
    let req: EndpointRequest = parse(body)?;
    let bridge = bridge_for(&req.network_id, cfg)?;
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

pub fn join(body: &[u8], cfg: &DriverConfig) -> Result<Value> {
    with_endpoint(body, cfg, async |store, req, name| {
        store.set_endpoint_netns(&name, PathBuf::from(&req.sandbox_key))?;
        let (_, gateway) = store.network()?;
        let internal = store.datapath()?.config()?.has(CFG_INTERNAL);
        let ep = store.endpoint(&name)?;
        Ok(serde_json::to_value(api::JoinResponse {
            interface_name: api::InterfaceName {
                src_name: ep.ifname.clone(),
                dst_prefix: "eth".into(),
            },
            // The gateway whenever there is a way out: without it dockerd
            // adds a docker_gwbridge network and publishes through
            // docker-proxy. An internal network has none, so its
            // containers get no default route, as with `-d bridge`.
            gateway: (!internal).then(|| gateway.to_string()),
        })?)
    })
}

/// Like [`with_endpoint`], for the calls that take something down: an
/// endpoint or a network netbr no longer has (gone with a reboot, or
/// removed after a crash, when dockerd cleans up) is down already, and the
/// call succeeds.
fn with_endpoint_or_gone(
    body: &[u8],
    f: impl AsyncFnOnce(&mut Store, String) -> Result<()>,
) -> Result<Value> {
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
            f(&mut store, name).await?;
        }
        Ok(json!({}))
    })
}

pub fn leave(body: &[u8]) -> Result<Value> {
    with_endpoint_or_gone(body, async |store, name| {
        store.set_endpoint_netns(&name, PathBuf::new())
    })
}

pub fn delete_endpoint(body: &[u8]) -> Result<Value> {
    with_endpoint_or_gone(body, async |store, name| {
        store.remove_endpoint(&name).await.map(drop)
    })
}

/// `-p` bindings as specs: `HostPort` 0 picks from the driver's range,
/// `HostPort`-`HostPortEnd` from that range; a binding without a host IP
/// takes the network's `default_ip` (`host_binding_ipv4`), if it has one.
fn specs(
    bindings: &[PortBinding],
    cfg: &DriverConfig,
    default_ip: Option<Ipv4Addr>,
) -> Result<Vec<PortSpec>> {
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
            "" => default_ip,
            "0.0.0.0" => None,
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
            ipv6_only: false,
            host_ip6: None,
            host_ports,
            container_ports: (b.port, b.port),
            proto,
        });
    }
    Ok(out)
}

pub fn program_external_connectivity(body: &[u8], cfg: &DriverConfig) -> Result<Value> {
    with_endpoint(body, cfg, async |store, req, name| {
        let bindings = req.port_bindings().map_err(|e| anyhow!(e))?;
        let have = store.endpoint(&name)?.ports.clone();
        // Called again for a container already served (a dockerd restart):
        // what is published stays as it is.
        let default_ip = store.state.network.as_ref().and_then(|n| n.docker_host_ip);
        let wanted: Vec<PortSpec> = specs(&bindings, cfg, default_ip)?
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
    with_endpoint_or_gone(body, async |store, name| {
        if !store.endpoint(&name)?.ports.is_empty() {
            store.unpublish(&name, None)?;
        }
        Ok(())
    })
}

pub fn endpoint_oper_info(body: &[u8], cfg: &DriverConfig) -> Result<Value> {
    with_endpoint(body, cfg, async |store, _, name| {
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
            records: Records::new(std::env::temp_dir().join("netbr-test-records-unused")),
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
            None,
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].host_ports, s[0].host_ip), ((8080, 8080), None));
        assert!(s[1].picks_host_port() && s[1].host_ports == (20000, 29999));
        assert_eq!(s[1].host_ip, Some(Ipv4Addr::LOCALHOST));
        assert!(s[2].picks_host_port() && s[2].host_ports == (9000, 9009));
        assert!(specs(&[b(132, "", 1, 1)], &cfg, None).is_err());
        assert!(specs(&[b(6, "fe80::1", 1, 1)], &cfg, None).is_err());
        assert_eq!(endpoint_name("0123456789abcdef"), "dk-0123456789ab");
        // A network's host_binding_ipv4 is the default host IP, never an
        // override of one given.
        let host = Some(Ipv4Addr::new(192, 0, 2, 1));
        let s = specs(&[b(6, "", 80, 80), b(6, "0.0.0.0", 81, 81)], &cfg, host).unwrap();
        assert_eq!((s[0].host_ip, s[1].host_ip), (host, None));
    }

    #[test]
    fn taking_down_what_netbr_no_longer_has_succeeds() {
        // A network and endpoint this namespace has never seen, as after a
        // reboot or a crash.
        let body = br#"{"NetworkID":"0badc0ffee","EndpointID":"0badf00d"}"#;
        let cfg = DriverConfig {
            host_ports: PortRange(20000, 29999),
            records: Records::new(std::env::temp_dir().join("netbr-test-records-unused")),
        };
        for call in [
            "RevokeExternalConnectivity",
            "Leave",
            "DeleteEndpoint",
            "DeleteNetwork",
        ] {
            let (status, v) = super::super::handle(&format!("/NetworkDriver.{call}"), body, &cfg);
            assert_eq!((status.as_u16(), v), (200, json!({})), "{call}");
        }
    }

    #[test]
    fn dockers_bridge_options_mean_what_they_mean_for_bridge_or_are_refused_by_name() {
        use bridge_opt::*;
        let opts = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let ok = docker_options(
            &opts(&[
                (NAME, "br-web"),
                (ICC, "false"),
                (MASQUERADE, "true"),
                (GATEWAY_MODE, "nat-unprotected"),
                (HOST_BINDING, "127.0.0.1"),
                (MTU, "1400"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            ok,
            DockerOptions {
                bridge: Some("br-web".into()),
                icc: Some(false),
                allow_direct_routing: Some(true),
                host_ip: Some(Ipv4Addr::LOCALHOST),
                masquerade: true,
                mtu: Some(1400),
                ..DockerOptions::default()
            }
        );
        let routed = docker_options(
            &opts(&[(MASQUERADE, "false"), (GATEWAY_MODE, "routed"), (MTU, "0")]),
            false,
        )
        .unwrap();
        assert_eq!(
            (routed.masquerade, routed.routed, routed.mtu),
            (false, true, None)
        );
        assert!(docker_options(&opts(&[]), true).unwrap().internal);
        let refused = |kv: &[(&str, &str)], internal: bool| {
            docker_options(&opts(kv), internal).unwrap_err().to_string()
        };
        for (kv, says) in [
            (
                &[(GATEWAY_MODE, "bogus")][..],
                "use nat, nat-unprotected or routed",
            ),
            (&[(MTU, "big")][..], "mtu=big: not a number"),
            (&[(ICC, "maybe")][..], "use true or false"),
            (&[(HOST_BINDING, "::1")][..], "not an IPv4 address"),
            (&[(NAME, "a name too long for linux")][..], "bridge.name"),
            (
                &[("com.docker.network.bridge.inhibit_ipv4", "true")][..],
                "inhibit_ipv4: netbr cannot honour",
            ),
        ] {
            let err = refused(kv, false);
            assert!(err.contains(says), "{kv:?}: {err}");
        }
        assert!(refused(&[(GATEWAY_MODE, "routed")], true).contains("--internal"));
        assert!(agree("x", Some(1), Some(2)).is_err());
        assert_eq!(agree("x", None, Some(2)).unwrap(), Some(2));
    }
}
