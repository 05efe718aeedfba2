//! The plugin's commands, one function each.

use std::{net::Ipv4Addr, path::PathBuf};

use netbr_common::{pacing::RATE_MIN_BPS, portspec::PortSpec};

use super::{
    ipam,
    types::{code, result, CniError, Made, NetConf, PortMapping, BURST_NOT_GIVEN},
    Env,
};
use crate::{
    addr::{Cidr, PortRange},
    bpf,
    netlink::Netlink,
    netns,
    store::{
        self, AttachRequest, EndpointRequest, Limit, Limits, NetnsChoice, Owner, PortTaken, Store,
        View,
    },
};

fn block<T>(f: impl std::future::Future<Output = Result<T, CniError>>) -> Result<T, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("starting a runtime: {e}")))?
        .block_on(f)
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn datapath(msg: &str, e: anyhow::Error) -> CniError {
    CniError::new(code::DATAPATH, format!("{msg}: {e:#}"))
}

/// `attach`'s options from the configuration's keys.
fn attach_request(conf: &NetConf) -> Result<AttachRequest, CniError> {
    let subnet: Cidr = conf
        .subnet
        .as_deref()
        .ok_or_else(|| invalid("the configuration has no \"subnet\": give the containers' subnet, e.g. 172.30.0.0/16"))?
        .parse()
        .map_err(|e| invalid(format!("\"subnet\": {e:#}")))?;
    let uplink = conf.uplink.as_deref().ok_or_else(|| {
        invalid("the configuration has no \"uplink\": name the interface that leads out")
    })?;
    let mut req = AttachRequest::new(subnet, uplink);
    req.gateway = conf.gateway;
    req.ct_max = conf.ct_max;
    if let Some(r) = &conf.snat_ports {
        req.snat_ports = r
            .parse::<PortRange>()
            .map_err(|e| invalid(format!("\"snatPorts\": {e:#}")))?;
    }
    req.icc = conf.icc.unwrap_or(true);
    req.fast_path = conf.fast_path.unwrap_or(true);
    req.allow_direct_routing = conf.allow_direct_routing.unwrap_or(false);
    req.mtu = conf.mtu;
    if let Some(cidrs) = &conf.non_masquerade_cidrs {
        for c in cidrs {
            req.no_masquerade.push(
                c.parse()
                    .map_err(|e| invalid(format!("\"nonMasqueradeCIDRs\": {c}: {e:#}")))?,
            );
        }
        // As ip-masq-agent (masqLinkLocal false): link-local destinations,
        // a cloud's metadata service among them, see the pod itself.
        req.no_masquerade
            .push(Cidr::new(std::net::Ipv4Addr::new(169, 254, 0, 0), 16));
    }
    if conf.ip_masq == Some(false) {
        req.no_masquerade = vec![Cidr::new(std::net::Ipv4Addr::UNSPECIFIED, 0)];
    }
    Ok(req)
}

/// The limits of a container: `runtimeConfig.bandwidth` if the runtime
/// sent it, else the configuration's own rates. A rate of 0 or none sets
/// none, as the reference `bandwidth` plugin reads it.
fn bandwidth_limits(conf: &NetConf) -> Result<Limits, CniError> {
    let bw = conf.runtime_config.bandwidth.unwrap_or(conf.bandwidth);
    let limit = |what: &str, rate: Option<u64>, burst: Option<u64>| match rate {
        None | Some(0) => Ok(None),
        Some(r) if r < RATE_MIN_BPS => Err(invalid(format!(
            "bandwidth {what}Rate {r} is below the slowest limit, {RATE_MIN_BPS} bits per second"
        ))),
        Some(r) => Ok(Some(Limit {
            rate: r,
            burst: burst.filter(|b| *b != BURST_NOT_GIVEN).unwrap_or(0) / 8,
        })),
    };
    Ok(Limits {
        egress: limit("egress", bw.egress_rate, bw.egress_burst)?,
        ingress: limit("ingress", bw.ingress_rate, bw.ingress_burst)?,
    })
}

/// `runtimeConfig.portMappings` as `-p` specs; IPv4 only.
fn port_specs(mappings: &[PortMapping]) -> Result<Vec<PortSpec>, CniError> {
    mappings
        .iter()
        .map(|m| {
            let proto = store::Port::proto_from_name(&m.protocol)
                .map_err(|e| invalid(format!("port mapping {}: {e:#}", m.host_port)))?;
            let host_ip = match m.host_ip.as_str() {
                "" | "0.0.0.0" => None,
                ip => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                    invalid(format!(
                        "port mapping {}: host IP {ip:?} is not an IPv4 address (netbr publishes on IPv4)",
                        m.host_port
                    ))
                })?),
            };
            if m.host_port == 0 || m.container_port == 0 {
                return Err(invalid(format!(
                    "port mapping {}:{}: ports must be 1-65535",
                    m.host_port, m.container_port
                )));
            }
            Ok(PortSpec {
                host_ip,
                ipv6_only: false,
                host_ip6: None,
                host_ports: (m.host_port, m.host_port),
                container_ports: (m.container_port, m.container_port),
                proto,
            })
        })
        .collect()
}

/// A readable endpoint name for an attachment: the container ID's first 12
/// characters and the interface, or a hash when that is taken.
fn endpoint_name(store: &Store, network: &str, container_id: &str, ifname: &str) -> String {
    let short: String = container_id
        .chars()
        .take(12)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = format!("{short}-{ifname}");
    if store.state.endpoint(&name).is_none() {
        return name;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network.bytes().chain([0]).chain(container_id.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("cni-{h:016x}-{ifname}")
}

fn cni_owner(conf: &NetConf, env: &Env) -> Owner {
    Owner::Cni {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
    }
}

/// Releases an attachment's address in the IPAM plugin, if one is used.
fn ipam_release(conf: &NetConf, stdin: &[u8], env: &[(&str, &str)]) -> Result<(), CniError> {
    match conf.ipam_type() {
        Some(t) => ipam::exec(t, "DEL", stdin, env).map(|_| ()),
        None => Ok(()),
    }
}

pub fn add(conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<serde_json::Value, CniError> {
    let req = attach_request(conf)?;
    let specs = port_specs(&conf.runtime_config.port_mappings)?;
    let limits = bandwidth_limits(conf)?;
    block(async {
        let mut store =
            Store::open(conf.bridge()).map_err(|e| datapath("opening the bridge", e))?;
        store
            .ensure_attached(&req)
            .await
            .map_err(|e| datapath("attaching netbr", e))?;
        if store
            .state
            .cni_endpoint(&conf.name, &env.container_id, &env.ifname)
            .is_some()
        {
            return Err(CniError::new(
                code::TAKEN,
                format!(
                    "container {} already has {} on network {}: DEL it first",
                    env.container_id, env.ifname, conf.name
                ),
            ));
        }
        let (subnet, gateway) = store
            .network()
            .map_err(|e| datapath("reading the bridge", e))?;
        let ip = match conf.ipam_type() {
            Some(t) => {
                let r = ipam::exec(t, "ADD", stdin, &[])?.ok_or_else(|| {
                    CniError::new(code::IPAM, format!("IPAM plugin {t} printed no result"))
                })?;
                let (ip, _) = ipam::first_ipv4(&r)?;
                if !subnet.is_host(ip) || ip == gateway {
                    let _ = ipam_release(conf, stdin, &[]);
                    return Err(CniError::new(
                        code::IPAM,
                        format!("IPAM plugin {t} gave {ip}, which is no host address of bridge {}'s subnet {subnet} besides its gateway: make the IPAM range part of \"subnet\"", conf.bridge()),
                    ));
                }
                Some(ip)
            }
            None => None,
        };
        let name = endpoint_name(&store, &conf.name, &env.container_id, &env.ifname);
        let ep = store
            .add_endpoint(&EndpointRequest {
                name: name.clone(),
                ip,
                ip6: None,
                netns: NetnsChoice::Existing(PathBuf::from(&env.netns)),
                ifname: env.ifname.clone(),
                owner: cni_owner(conf, env),
            })
            .await;
        let ep = match ep {
            Ok(ep) => ep,
            Err(e) => {
                let _ = ipam_release(conf, stdin, &[]);
                return Err(datapath("connecting the container", e));
            }
        };
        // Runtimes such as Podman bind and hold their containers' host
        // ports themselves once ADD returns: netbr must not refuse them.
        if let Err(e) = store.publish(&name, &specs, false).await {
            let _ = store.remove_endpoint(&name).await;
            let _ = ipam_release(conf, stdin, &[]);
            let code = if e.downcast_ref::<PortTaken>().is_some() {
                code::TAKEN
            } else {
                code::DATAPATH
            };
            return Err(CniError::new(code, format!("{e:#}")));
        }
        if limits != Limits::default() {
            if let Err(e) = store.set_limits(&name, limits).await {
                let _ = store.remove_endpoint(&name).await;
                let _ = ipam_release(conf, stdin, &[]);
                return Err(datapath("setting bandwidth limits", e));
            }
        }
        let nl = Netlink::connect().map_err(|e| datapath("netlink", e))?;
        let mac_of = |name: String| {
            let nl = &nl;
            async move {
                nl.link(&name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.mac)
                    .unwrap_or_default()
            }
        };
        let bridge_mac = mac_of(conf.bridge().to_string()).await;
        let host_mac = mac_of(ep.host_ifname.clone()).await;
        Ok(result(
            &conf.cni_version,
            &Made {
                bridge: conf.bridge(),
                bridge_mac,
                host_ifname: &ep.host_ifname,
                host_mac,
                ifname: &ep.ifname,
                mac: ep.mac,
                netns: &env.netns,
                ip: ep.ip,
                prefix: subnet.prefix,
                gateway,
            },
        ))
    })
}

/// Whether the bridge has state to look at: DEL, CHECK and GC on a bridge
/// netbr never set up must not create its directory.
fn bridge_known(conf: &NetConf) -> Result<bool, CniError> {
    Ok(store::state_dir(conf.bridge())
        .map_err(|e| datapath("finding the bridge's state", e))?
        .exists())
}

pub fn del(conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<(), CniError> {
    if bridge_known(conf)? {
        block(async {
            let mut store =
                Store::open(conf.bridge()).map_err(|e| datapath("opening the bridge", e))?;
            let name = store
                .state
                .cni_endpoint(&conf.name, &env.container_id, &env.ifname)
                .map(|e| e.name.clone());
            if let Some(name) = name {
                store
                    .remove_endpoint(&name)
                    .await
                    .map_err(|e| datapath("removing the container's endpoint", e))?;
            }
            Ok(())
        })?;
    }
    ipam_release(conf, stdin, &[])
}

/// The link `name` in the plugin's (the runtime's) namespace.
fn host_link(name: &str) -> Result<Option<crate::netlink::Link>, CniError> {
    block(async {
        let nl = Netlink::connect().map_err(|e| datapath("netlink", e))?;
        nl.link(name)
            .await
            .map_err(|e| datapath("reading links", e))
    })
}

fn check_failed(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

pub fn check(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| invalid("CHECK needs prevResult in the configuration"))?;
    let view = View::open(conf.bridge()).map_err(|e| datapath("opening the bridge", e))?;
    let ep = view
        .state
        .cni_endpoint(&conf.name, &env.container_id, &env.ifname)
        .cloned()
        .ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "container {} has no {} on network {}",
                    env.container_id, env.ifname, conf.name
                ),
            )
        })?;
    let (prev_ip, _) = ipam::first_ipv4(prev)?;
    if prev_ip != ep.ip {
        return Err(check_failed(format!(
            "prevResult says {prev_ip}, netbr gave {} {}",
            ep.name, ep.ip
        )));
    }
    let cfg = view
        .dp
        .config()
        .map_err(|e| datapath("reading the datapath", e))?;
    let gateway = crate::addr::from_be32(cfg.gateway_addr);
    // Inside the container: the interface, its address, the default route.
    let (ifname, ip) = (ep.ifname.clone(), ep.ip);
    let inside = netns::run_in(&PathBuf::from(&env.netns), move || {
        crate::netlink::block_on(async move {
            let nl = Netlink::connect()?;
            let Some(link) = nl.link(&ifname).await? else {
                return Ok(Some(format!(
                    "interface {ifname} is missing in the container"
                )));
            };
            if !nl
                .addrs(Some(link.index))
                .await?
                .iter()
                .any(|a| a.addr == ip)
            {
                return Ok(Some(format!("{ifname} lacks its address {ip}")));
            }
            if nl.default_gateway().await? != Some(gateway) {
                return Ok(Some(format!("the default route does not go via {gateway}")));
            }
            Ok(None)
        })
    })
    .map_err(|e| {
        CniError::from_anyhow(
            code::UNKNOWN_CONTAINER,
            "entering the container's namespace",
            &e,
        )
    })?
    .map_err(|e| datapath("reading the container's interfaces", e))?;
    if let Some(why) = inside {
        return Err(check_failed(why));
    }
    // On the host: the veth on the bridge, and the datapath's entries.
    let bridge_index = cfg.bridge_ifindex;
    match host_link(&ep.host_ifname)? {
        Some(l) if l.index == ep.host_ifindex && l.master == Some(bridge_index) => {}
        _ => {
            return Err(check_failed(format!(
                "host-side veth {} is missing or not on bridge {}",
                ep.host_ifname,
                conf.bridge()
            )))
        }
    }
    let ip_be = crate::addr::to_be32(ep.ip);
    match view.dp.endpoints.get(&ip_be, 0) {
        Ok(e) if e.host_ifindex == ep.host_ifindex => {}
        _ => {
            return Err(check_failed(format!(
                "the datapath has no endpoint entry for {}",
                ep.ip
            )))
        }
    }
    let mappings = view
        .dp
        .mapping_list()
        .map_err(|e| datapath("reading mappings", e))?;
    for spec in port_specs(&conf.runtime_config.port_mappings)? {
        let port = store::Port {
            proto: spec.proto,
            host_ip: spec.host_ip,
            ipv6_only: spec.ipv6_only,
            host_ip6: spec.host_ip6,
            host_port: spec.host_ports.0,
            container_port: spec.container_ports.0,
        };
        let key = store::mapping_key(&port);
        let mapped = mappings.iter().any(|(k, t)| {
            *k == key && t.addr == ip_be && u16::from_be(t.port) == port.container_port
        });
        if !mapped {
            return Err(check_failed(format!(
                "published port {} -> {} is missing from the datapath",
                port.host_side(),
                port.container_port
            )));
        }
    }
    Ok(())
}

pub fn gc(conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    if !bridge_known(conf)? {
        return Ok(());
    }
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let gone = block(async {
        let mut store =
            Store::open(conf.bridge()).map_err(|e| datapath("opening the bridge", e))?;
        let stale: Vec<(String, String, String)> = store
            .state
            .endpoints
            .iter()
            .filter_map(|e| match &e.owner {
                Owner::Cni {
                    network,
                    container_id,
                } if *network == conf.name
                    && !valid
                        .iter()
                        .any(|a| a.container_id == *container_id && a.ifname == e.ifname) =>
                {
                    Some((e.name.clone(), container_id.clone(), e.ifname.clone()))
                }
                _ => None,
            })
            .collect();
        for (name, _, _) in &stale {
            // Its namespace may be long gone; the rest still goes.
            let _ = store.remove_endpoint(name).await;
        }
        Ok(stale)
    })?;
    for (_, id, ifname) in &gone {
        ipam_release(
            conf,
            stdin,
            &[
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", ifname),
                ("CNI_NETNS", ""),
            ],
        )?;
    }
    Ok(())
}

pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let not_available = |msg: String| CniError::new(code::NOT_AVAILABLE, msg);
    let pins = bpf::pins::pin_dir(conf.bridge()).map_err(|e| datapath("finding the pins", e))?;
    if pins.join(netbr_common::maps::MAP_CONFIG).exists() {
        return View::open(conf.bridge())
            .map(|_| ())
            .map_err(|e| not_available(format!("{e:#}")));
    }
    // Not attached yet: the first ADD attaches, which needs the uplink.
    let req = attach_request(conf)?;
    match host_link(&req.uplink)? {
        Some(_) => Ok(()),
        None => Err(not_available(format!(
            "uplink {} not found: the first ADD could not attach bridge {}",
            req.uplink,
            conf.bridge()
        ))),
    }
}
