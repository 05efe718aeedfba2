use std::net::IpAddr;

use anyhow::Result;
use clap::{Args, Subcommand};
use netbr_common::{
    conntrack::{nat_name, CtState, FlowKeyOf, FlowViewOf, DIR_ORIG, DIR_REPLY},
    proto_name, IPPROTO_ICMPV6,
};
use serde_json::json;

use crate::{
    addr::{monotonic_ns, AddrBlock, TupleAddr},
    store::{Store, View},
};

#[derive(Subcommand, Debug)]
pub enum ConntrackCmd {
    /// List tracked flows with their original and translated tuples.
    List(ListArgs),
    /// Forget tracked flows: all of them, or those the filters select
    /// (for example to end flows a new firewall rule would refuse).
    Flush(FlushArgs),
}

#[derive(Args, Debug)]
pub struct FlushArgs {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Only flows whose original source is in this address or CIDR block,
    /// of either family.
    #[arg(long)]
    pub from: Option<AddrBlock>,
    /// Only flows with this port in their original or translated tuple.
    #[arg(long)]
    pub port: Option<u16>,
}

impl FlushArgs {
    fn matches<A: TupleAddr>(&self, k: &FlowKeyOf<A>, x: &FlowKeyOf<A>) -> bool {
        let ports = [k.sport, k.dport, x.sport, x.dport].map(u16::from_be);
        self.port.is_none_or(|p| ports.contains(&p))
            && self.from.is_none_or(|block| block.contains(k.saddr.ip()))
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Only flows to or from this endpoint.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Only flows of this protocol (tcp, udp, icmp).
    #[arg(long, value_parser = ["tcp", "udp", "icmp"])]
    pub proto: Option<String>,
    /// Only flows with this port in their original or translated tuple.
    #[arg(long)]
    pub port: Option<u16>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

impl ListArgs {
    /// `endpoint`: the endpoint's addresses, if one was asked for.
    fn matches<A: TupleAddr>(
        &self,
        k: &FlowKeyOf<A>,
        x: &FlowKeyOf<A>,
        endpoint: Option<&[IpAddr]>,
    ) -> bool {
        let ports = [k.sport, k.dport, x.sport, x.dport].map(u16::from_be);
        let addrs = [k.saddr, k.daddr, x.saddr, x.daddr].map(TupleAddr::ip);
        self.proto
            .as_deref()
            .is_none_or(|p| p == proto_name(k.proto) || (p == "icmp" && k.proto == IPPROTO_ICMPV6))
            && self.port.is_none_or(|p| ports.contains(&p))
            && endpoint.is_none_or(|ips| ips.iter().any(|ip| addrs.contains(ip)))
    }
}

/// The protocol's name as `conntrack list` shows and filters it: ICMPv6
/// as `icmp`.
fn proto_of(proto: u8) -> &'static str {
    if proto == IPPROTO_ICMPV6 {
        "icmp"
    } else {
        proto_name(proto)
    }
}

pub(crate) fn tuple<A: TupleAddr>(k: &FlowKeyOf<A>) -> serde_json::Value {
    json!({
        "src": k.saddr.ip().to_string(),
        "dst": k.daddr.ip().to_string(),
        "sport": u16::from_be(k.sport),
        "dport": u16::from_be(k.dport),
    })
}

pub(crate) fn tuple_text<A: TupleAddr>(k: &FlowKeyOf<A>) -> String {
    format!(
        "src={} dst={} sport={} dport={}",
        k.saddr.ip(),
        k.daddr.ip(),
        u16::from_be(k.sport),
        u16::from_be(k.dport)
    )
}

impl ConntrackCmd {
    pub async fn exec(self) -> Result<()> {
        match self {
            ConntrackCmd::List(args) => list(&args),
            ConntrackCmd::Flush(f) => {
                let store = Store::open(&f.bridge)?;
                let n = store.remove_flows(|k, e| f.matches(k, &e.xlat))?
                    + store.remove_flows6(|k, e| f.matches(k, &e.xlat))?;
                println!("flushed {n} flow(s)");
                Ok(())
            }
        }
    }
}

fn list(args: &ListArgs) -> Result<()> {
    let view = View::open(&args.bridge)?;
    let dp = &view.dp;
    let endpoint: Option<Vec<IpAddr>> = match &args.endpoint {
        Some(name) => {
            let ep = view.state.endpoint(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "no endpoint named {name} on bridge {}: see netbr ls --bridge {}",
                    args.bridge,
                    args.bridge
                )
            })?;
            Some(
                std::iter::once(IpAddr::from(ep.ip))
                    .chain(ep.ip6.map(IpAddr::from))
                    .collect(),
            )
        }
        None => None,
    };
    let cfg = dp.config()?;
    let now = monotonic_ns();
    let mut rows = Vec::new();
    rows.extend(flow_rows(
        args,
        &dp.flows()?,
        endpoint.as_deref(),
        &cfg,
        now,
    ));
    rows.extend(flow_rows(
        args,
        &dp.flows6()?,
        endpoint.as_deref(),
        &cfg,
        now,
    ));
    if args.json {
        super::print_json(&serde_json::Value::Array(rows));
    } else {
        println!("{} flow(s)", rows.len());
    }
    Ok(())
}

/// The listing's rows for one family's `flows`, printed as they go unless
/// `--json` asked for them at the end.
fn flow_rows<A: TupleAddr>(
    args: &ListArgs,
    flows: &[(FlowKeyOf<A>, FlowViewOf<A>)],
    endpoint: Option<&[IpAddr]>,
    cfg: &netbr_common::maps::Config,
    now: u64,
) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for (k, e) in flows {
        if !args.matches(k, &e.xlat, endpoint) {
            continue;
        }
        let timeout = cfg.timeouts.get(e.state as usize).copied().unwrap_or(0) as u64;
        let idle = now.saturating_sub(e.last_seen_ns) / 1_000_000_000;
        rows.push(json!({
            "proto": proto_of(k.proto),
            "state": CtState::from_u8(e.state).name(),
            "nat": nat_name(e.nat),
            "original": tuple(k),
            "translated": tuple(&e.xlat),
            "age_s": now.saturating_sub(e.created_ns) / 1_000_000_000,
            "expires_s": timeout.saturating_sub(idle),
            "packets": { "original": e.packets[DIR_ORIG as usize], "reply": e.packets[DIR_REPLY as usize] },
            "bytes": { "original": e.bytes[DIR_ORIG as usize], "reply": e.bytes[DIR_REPLY as usize] },
        }));
        if !args.json {
            println!(
                "{:<4} {:<11} {} -> {} {} age={}s expires={}s packets={}/{} bytes={}/{}",
                proto_of(k.proto),
                CtState::from_u8(e.state).name(),
                tuple_text(k),
                tuple_text(&e.xlat),
                nat_name(e.nat),
                now.saturating_sub(e.created_ns) / 1_000_000_000,
                timeout.saturating_sub(idle),
                e.packets[0],
                e.packets[1],
                e.bytes[0],
                e.bytes[1],
            );
        }
    }
    rows
}
