use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use netbr_common::{
    maps::{MappingKey, MappingTarget},
    portspec::PortSpec,
    proto_name, IPPROTO_TCP,
};

use super::{find_endpoint, text};
use crate::{
    addr::{from_be32, to_be32},
    bpf::datapath::Datapath,
};

fn parse_spec(s: &str) -> Result<PortSpec> {
    s.parse::<PortSpec>()
        .map_err(|e| anyhow!("invalid -p {s:?}: {e}"))
}

#[derive(Args, Debug)]
pub struct Publish {
    pub endpoint: String,
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// [HOSTIP:]HOSTPORT[-END]:CPORT[-END][/tcp|/udp], repeatable.
    #[arg(short = 'p', long = "publish", required = true, value_parser = parse_spec)]
    pub specs: Vec<PortSpec>,
}

#[derive(Args, Debug)]
pub struct Unpublish {
    pub endpoint: String,
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    #[arg(short = 'p', long = "publish", value_parser = parse_spec, required_unless_present = "all", conflicts_with = "all")]
    pub specs: Vec<PortSpec>,
    /// Withdraw every port the endpoint publishes.
    #[arg(long)]
    pub all: bool,
}

/// The map entries one spec stands for (for a spec that picks a host port:
/// every candidate).
fn spec_entries(s: &PortSpec, ip: u32) -> impl Iterator<Item = (MappingKey, MappingTarget)> + '_ {
    s.pairs().map(move |(h, c)| {
        (
            MappingKey {
                proto: s.proto,
                _pad: 0,
                port: h.to_be(),
                addr: s.host_ip.map(to_be32).unwrap_or(0),
            },
            MappingTarget {
                addr: ip,
                port: c.to_be(),
                _pad: 0,
            },
        )
    })
}

fn describe(k: &MappingKey) -> String {
    let host = if k.addr == 0 {
        String::from("*")
    } else {
        from_be32(k.addr).to_string()
    };
    format!("{host}:{}/{}", u16::from_be(k.port), proto_name(k.proto))
}

/// Two keys claim the same traffic: same protocol and port, and the same
/// address or either of them the wildcard.
fn clash(a: &MappingKey, b: &MappingKey) -> bool {
    a.proto == b.proto && a.port == b.port && (a.addr == b.addr || a.addr == 0 || b.addr == 0)
}

/// Without a proxy nothing binds the host port, so check by binding: a host
/// process listening there would otherwise silently lose its traffic.
fn host_port_free(k: &MappingKey) -> bool {
    let ip = if k.addr == 0 {
        Ipv4Addr::UNSPECIFIED
    } else {
        from_be32(k.addr)
    };
    let port = u16::from_be(k.port);
    if k.proto == IPPROTO_TCP {
        TcpListener::bind((ip, port)).is_ok()
    } else {
        UdpSocket::bind((ip, port)).is_ok()
    }
}

impl Publish {
    pub async fn exec(self) -> Result<()> {
        let (mut dp, _) = Datapath::open(&self.bridge)?;
        let (ip, _) = find_endpoint(&dp, &self.bridge, &self.endpoint)?;
        // Addresses added since attach count too.
        super::attach::sync_local_addrs(&crate::netlink::Netlink::connect()?, &mut dp).await?;
        let existing = dp.mapping_list()?;
        let endpoints = dp.endpoint_list()?;
        let owner = |addr: u32| {
            endpoints
                .iter()
                .find(|(a, _)| *a == addr)
                .map(|(_, ep)| text(&ep.name))
                .unwrap_or_else(|| from_be32(addr).to_string())
        };
        // Validate every entry before writing any, so a bad request changes nothing.
        let mut wanted: Vec<(MappingKey, MappingTarget)> = Vec::new();
        for spec in &self.specs {
            if let Some(ip) = spec.host_ip {
                if dp.local_addrs.get(&to_be32(ip), 0).is_err() {
                    bail!(
                        "{ip} is not an address of this host: publish on one of its addresses or omit the host IP"
                    );
                }
            }
            let check = |k: &MappingKey, wanted: &[(MappingKey, MappingTarget)]| -> Result<()> {
                if let Some((ek, et)) = existing.iter().find(|(ek, _)| clash(ek, k)) {
                    bail!(
                        "host port {} is already published by endpoint {} (as {}): choose another host port or unpublish it",
                        describe(k),
                        owner(et.addr),
                        describe(ek)
                    );
                }
                if wanted.iter().any(|(w, _)| clash(w, k)) {
                    bail!("host port {} is given twice", describe(k));
                }
                if !host_port_free(k) {
                    bail!(
                        "host port {} is in use by a process on the host: choose another host port",
                        describe(k)
                    );
                }
                Ok(())
            };
            if spec.picks_host_port() {
                let pick = spec_entries(spec, ip)
                    .find(|(k, _)| check(k, &wanted).is_ok())
                    .ok_or_else(|| {
                        anyhow!("no free host port in {spec}: every port of the range is taken")
                    })?;
                wanted.push(pick);
            } else {
                for e in spec_entries(spec, ip) {
                    check(&e.0, &wanted)?;
                    wanted.push(e);
                }
            }
        }
        for (k, t) in &wanted {
            dp.mappings.insert(k, t, 0)?;
        }
        for (k, t) in &wanted {
            println!(
                "published {} -> {} {}:{}",
                describe(k),
                self.endpoint,
                from_be32(ip),
                u16::from_be(t.port)
            );
        }
        Ok(())
    }
}

impl Unpublish {
    pub async fn exec(self) -> Result<()> {
        let (mut dp, _) = Datapath::open(&self.bridge)?;
        let (ip, _) = find_endpoint(&dp, &self.bridge, &self.endpoint)?;
        let existing = dp.mapping_list()?;
        let doomed: Vec<(MappingKey, MappingTarget)> = if self.all {
            existing.into_iter().filter(|(_, t)| t.addr == ip).collect()
        } else {
            let mut wanted = Vec::new();
            for spec in &self.specs {
                if spec.picks_host_port() {
                    wanted.extend(
                        spec_entries(spec, ip)
                            .filter(|e| existing.contains(e))
                            .take(1),
                    );
                } else {
                    wanted.extend(spec_entries(spec, ip));
                }
            }
            if wanted.is_empty() {
                bail!(
                    "none of those ports is published to {}: see netbr ls",
                    self.endpoint
                );
            }
            for (k, t) in &wanted {
                if !existing.contains(&(*k, *t)) {
                    bail!(
                        "{} is not published to {} port {}: see netbr ls",
                        describe(k),
                        self.endpoint,
                        u16::from_be(t.port)
                    );
                }
            }
            wanted
        };
        for (k, _) in &doomed {
            dp.mappings.remove(k)?;
        }
        // Flows already translated by a withdrawn mapping end too, so no
        // stale UDP flow keeps delivering (moby#8795).
        let flows = dp.remove_flows(|key, e| {
            e.nat == netbr_common::conntrack::NAT_DNAT
                && doomed.iter().any(|(k, t)| {
                    key.proto == k.proto
                        && key.dport == k.port
                        && (k.addr == 0 || key.daddr == k.addr)
                        && e.xlat.daddr == t.addr
                        && e.xlat.dport == t.port
                })
        })?;
        println!(
            "unpublished {} port(s) of {}; ended {flows} flow(s)",
            doomed.len(),
            self.endpoint
        );
        Ok(())
    }
}
