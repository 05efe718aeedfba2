use std::net::{IpAddr, Ipv6Addr};

use anyhow::Result;
use clap::Args;
use netbr_common::{
    conntrack::CtState,
    maps::{
        CFG_ALLOW_DIRECT_ROUTING, CFG_FAST_PATH, CFG_HOST_NAT, CFG_ICC_DISABLED, CFG_INTERNAL,
        CFG_ROUTED, CFG_XDP, MAPPING_IPV4_ONLY, MAPPING_IPV6_ONLY,
    },
    pacing::{PACE_EGRESS, PACE_INGRESS},
    proto_name,
};
use serde_json::json;

use crate::{
    addr::{from_be32, to_be32},
    host_firewall,
    netlink::Netlink,
    store::{
        limits::{self, format_rate},
        Limit, View,
    },
    traffic,
};

#[derive(Args, Debug)]
pub struct Ls {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Ls {
    pub async fn exec(self) -> Result<()> {
        let view = View::open(&self.bridge)?;
        let (dp, dir) = (&view.dp, &view.pins);
        let cfg = dp.config()?;
        let nl = Netlink::connect()?;
        let traffic = traffic::of_endpoints(&nl, &view.state.endpoints).await?;
        let mtu = nl
            .link_by_index(cfg.bridge_ifindex)
            .await?
            .map_or(0, |l| l.mtu);
        let ifname = |i: u32| async move { nl_name(&nl, i).await };
        let uplink = ifname(cfg.uplink_ifindex).await;
        let no_masquerade: Vec<String> = dp
            .no_masquerade_list()?
            .iter()
            .map(|c| c.to_string())
            .collect();
        // An IPv6-only bridge's IPv4 addresses are keys, never shown.
        let ipv4 = !view.state.network.as_ref().is_some_and(|n| n.ipv6_only);
        let eps: Vec<_> = view
            .state
            .endpoints
            .iter()
            .map(|ep| {
                let limit = |l: Option<Limit>, dir: u8| match l {
                    Some(l) => {
                        let (dropped, mode) =
                            limits::datapath_view(dp, ep, dir).unwrap_or((0, "none"));
                        json!({
                            "rate": format_rate(l.rate),
                            "rate_bps": l.rate,
                            "burst_bytes": l.burst,
                            "mode": mode,
                            "dropped": dropped,
                        })
                    }
                    None => serde_json::Value::Null,
                };
                json!({
                    "name": ep.name,
                    "ip": ipv4.then(|| ep.ip.to_string()),
                    "ip6": ep.ip6.map(|ip| ip.to_string()),
                    "mac": ep.mac_string(),
                    "host_ifname": ep.host_ifname,
                    "host_ifindex": ep.host_ifindex,
                    "ifname": ep.ifname,
                    "netns": ep.netns.display().to_string(),
                    "owner": ep.owner,
                    "container_id": ep.container_id(),
                    "traffic": traffic.get(&ep.name),
                    "egress_limit": limit(ep.limits.egress, PACE_EGRESS),
                    "ingress_limit": limit(ep.limits.ingress, PACE_INGRESS),
                })
            })
            .collect();
        let name_of = |addr: u32| {
            view.state
                .endpoints
                .iter()
                .find(|e| to_be32(e.ip) == addr)
                .map(|e| e.name.clone())
                .unwrap_or_default()
        };
        // The datapath's mappings, which are what packets meet.
        let mut maps: Vec<_> = dp.mapping_list()?;
        maps.sort_by_key(|(k, _)| (k.port(), k.proto(), k.host_ip()));
        let mappings: Vec<_> = maps
            .iter()
            .map(|(k, t)| {
                json!({
                    "proto": proto_name(k.proto()),
                    "host_ip": match (k.host_ip(), t.flags & MAPPING_IPV6_ONLY != 0) {
                        (None, true) => "::".to_string(),
                        (None, false) => "0.0.0.0".to_string(),
                        (Some(addr), _) => addr.to_string(),
                    },
                    "families": match (k.host_ip(), t.flags & (MAPPING_IPV4_ONLY | MAPPING_IPV6_ONLY)) {
                        (None, 0) => "both",
                        (None, MAPPING_IPV6_ONLY) | (Some(IpAddr::V6(_)), _) => "ipv6",
                        _ => "ipv4",
                    },
                    "host_port": k.port(),
                    "endpoint": name_of(t.addr),
                    "container_ip": from_be32(t.addr).to_string(),
                    "container_port": u16::from_be(t.port),
                })
            })
            .collect();
        let timeouts: serde_json::Map<_, _> = cfg
            .timeouts
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, t)| {
                (
                    CtState::from_u8(i as u8).timeout_name().to_string(),
                    json!(t),
                )
            })
            .collect();
        let forward_drop = host_firewall::restrictive_forward_chains();
        let service_nat = host_firewall::service_nat();
        let mask_bits = u32::from(from_be32(cfg.subnet_mask)).count_ones();
        // What the datapath holds, as for IPv4.
        let net6 = dp.net6.get(&0, 0)?;
        let (subnet6, gateway6) = if net6.configured() {
            (
                Some(format!(
                    "{}/{}",
                    Ipv6Addr::from(net6.network()),
                    net6.prefix
                )),
                Some(Ipv6Addr::from(netbr_common::net6::bytes(&net6.gateway)).to_string()),
            )
        } else {
            (None, None)
        };
        let masquerade6 = net6
            .masquerades()
            .then(|| Ipv6Addr::from(netbr_common::net6::bytes(&net6.uplink)).to_string());
        let doc = json!({
            "bridge": self.bridge,
            "subnet": ipv4.then(|| format!("{}/{mask_bits}", from_be32(cfg.subnet_addr))),
            "gateway": ipv4.then(|| from_be32(cfg.gateway_addr).to_string()),
            "ipv6_only": !ipv4,
            "subnet6": subnet6,
            "gateway6": gateway6,
            "masquerade6": masquerade6,
            "uplink": uplink,
            "uplink_ip": (cfg.uplink_addr != 0).then(|| from_be32(cfg.uplink_addr).to_string()),
            "snat_ports": format!("{}-{}", cfg.snat_port_min, cfg.snat_port_max),
            "ct_max": view.ct_max,
            "icc": !cfg.has(CFG_ICC_DISABLED),
            "allow_direct_routing": cfg.has(CFG_ALLOW_DIRECT_ROUTING),
            "fast_path": cfg.has(CFG_FAST_PATH),
            "xdp": cfg.has(CFG_XDP),
            "no_masquerade": no_masquerade,
            "internal": cfg.has(CFG_INTERNAL),
            "routed": cfg.has(CFG_ROUTED),
            "mtu": mtu,
            "host_forward_drop": forward_drop,
            "host_nat": cfg.has(CFG_HOST_NAT),
            "kube_proxy_rules": service_nat,
            "firewall_rules": view.state.firewall.len(),
            "timeouts_s": timeouts,
            "pins": dir.display().to_string(),
            "endpoints": eps,
            "mappings": mappings,
        });
        if self.json {
            super::print_json(&doc);
            return Ok(());
        }
        println!(
            "bridge {} subnet {} gateway {} uplink {} ({})",
            self.bridge,
            doc["subnet"].as_str().unwrap_or("none (IPv6 only)"),
            doc["gateway"].as_str().unwrap_or("none"),
            doc["uplink"].as_str().unwrap_or(""),
            doc["uplink_ip"].as_str().unwrap_or("no IPv4")
        );
        let dual_stack = subnet6.is_some();
        if let (Some(subnet6), Some(gateway6)) = (&subnet6, &gateway6) {
            match &masquerade6 {
                Some(up) => println!("ipv6 subnet {subnet6} gateway {gateway6} masquerading to {up}"),
                None => println!(
                    "ipv6 subnet {subnet6} gateway {gateway6} (no uplink IPv6 address: not masqueraded)"
                ),
            }
        }
        println!(
            "snat ports {}  fast path {}  xdp {}  firewall rules {}  pins {}",
            doc["snat_ports"].as_str().unwrap_or(""),
            cfg.has(CFG_FAST_PATH),
            cfg.has(CFG_XDP),
            view.state.firewall.len(),
            dir.display()
        );
        let modes: Vec<String> = [
            (cfg.has(CFG_INTERNAL), "internal".to_string()),
            (cfg.has(CFG_ROUTED), "routed".to_string()),
            (
                !cfg.has(CFG_ROUTED) && !no_masquerade.is_empty(),
                format!("no masquerade to {}", no_masquerade.join(" ")),
            ),
            (mtu != 1500, format!("mtu {mtu}")),
        ]
        .into_iter()
        .filter_map(|(on, what)| on.then_some(what))
        .collect();
        if !modes.is_empty() {
            println!("{}", modes.join("  "));
        }
        if !service_nat.is_empty() {
            println!(
                "{}",
                host_firewall::service_nat_note(&service_nat, &self.bridge)
            );
            if !cfg.has(CFG_HOST_NAT) {
                println!(
                    "warning: {} was attached before they were: attach it again",
                    self.bridge
                );
            }
        }
        if !forward_drop.is_empty() {
            println!(
                "{}",
                host_firewall::advice(&forward_drop, &self.bridge, cfg.has(CFG_FAST_PATH))
            );
        }
        println!(
            "timeouts (s): {}",
            serde_json::to_string(&doc["timeouts_s"])?
        );
        println!(
            "\nENDPOINT                         IP               {}CONTAINER     RECEIVED   SENT       EGRESS     INGRESS    NETNS",
            if dual_stack { format!("{:<26}", "IPV6") } else { String::new() }
        );
        for e in &eps {
            let id = e["container_id"].as_str().unwrap_or("-");
            let rate = |l: &serde_json::Value| l["rate"].as_str().unwrap_or("-").to_string();
            let bytes = |k: &str| {
                e["traffic"][k]
                    .as_u64()
                    .map_or("-".to_string(), traffic::human_bytes)
            };
            let ip6 = if dual_stack {
                format!("{:<26}", e["ip6"].as_str().unwrap_or("-"))
            } else {
                String::new()
            };
            println!(
                "{:<32} {:<16} {ip6}{:<13} {:<10} {:<10} {:<10} {:<10} {}",
                e["name"].as_str().unwrap_or(""),
                e["ip"].as_str().unwrap_or("-"),
                &id[..id.len().min(12)],
                bytes("received_bytes"),
                bytes("sent_bytes"),
                rate(&e["egress_limit"]),
                rate(&e["ingress_limit"]),
                e["netns"].as_str().unwrap_or("")
            );
        }
        println!("\nPUBLISHED                        -> ENDPOINT");
        for m in &mappings {
            let host_ip = m["host_ip"].as_str().unwrap_or("");
            println!(
                "{:<32} -> {} {}:{}",
                format!(
                    "{}:{}/{}",
                    if host_ip.contains(':') {
                        format!("[{host_ip}]")
                    } else {
                        host_ip.to_string()
                    },
                    m["host_port"],
                    m["proto"].as_str().unwrap_or("")
                ),
                m["endpoint"].as_str().unwrap_or(""),
                m["container_ip"].as_str().unwrap_or(""),
                m["container_port"]
            );
        }
        Ok(())
    }
}

async fn nl_name(nl: &Netlink, index: u32) -> String {
    match nl.link_by_index(index).await {
        Ok(Some(l)) => l.name,
        _ => format!("ifindex {index} (gone)"),
    }
}
