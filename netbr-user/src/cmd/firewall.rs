use anyhow::Result;
use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;

use crate::store::{
    firewall::{describe, parse_cidr, parse_port, rules_with_hits, RuleRequest},
    Store, View,
};

#[derive(Subcommand, Debug)]
pub enum FirewallCmd {
    /// Add a rule for new flows to published ports (--in) or from
    /// containers (--out); prints its id.
    Add(Add),
    /// Remove rule ID.
    Rm(Rm),
    /// List the rules with the flows each decided.
    Ls(LsArgs),
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("action").required(true).args(["allow", "deny"])))]
#[command(group(ArgGroup::new("direction").args(["in_", "out"])))]
pub struct Add {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    #[arg(long)]
    pub allow: bool,
    #[arg(long)]
    pub deny: bool,
    /// New flows arriving from the uplink at published ports (the default).
    #[arg(long = "in")]
    pub in_: bool,
    /// New flows from containers out through the uplink.
    #[arg(long)]
    pub out: bool,
    /// `--in`: the client's address or CIDR block.
    #[arg(long, value_parser = parse_cidr)]
    pub from: Option<(std::net::Ipv4Addr, u8)>,
    /// `--out`: the destination's address or CIDR block.
    #[arg(long, value_parser = parse_cidr)]
    pub to: Option<(std::net::Ipv4Addr, u8)>,
    /// PORT[/tcp|/udp]: the published host port (`--in`) or the
    /// destination port (`--out`); both protocols without one.
    #[arg(long, value_parser = parse_port)]
    pub port: Option<(u8, u16)>,
    /// The endpoint a published port leads to (`--in`) or that opens the
    /// flow (`--out`).
    #[arg(long)]
    pub endpoint: Option<String>,
}

#[derive(Args, Debug)]
pub struct Rm {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    pub id: u32,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

impl FirewallCmd {
    pub async fn exec(self) -> Result<()> {
        match self {
            FirewallCmd::Add(a) => {
                let id = Store::open(&a.bridge)?.add_rule(&RuleRequest {
                    allow: a.allow,
                    out: a.out,
                    from: a.from,
                    to: a.to,
                    port: a.port,
                    endpoint: a.endpoint,
                })?;
                println!("rule {id}");
                Ok(())
            }
            FirewallCmd::Rm(r) => {
                let rule = Store::open(&r.bridge)?.remove_rule(r.id)?;
                println!("removed rule {} ({})", rule.id, describe(&rule));
                Ok(())
            }
            FirewallCmd::Ls(l) => list(&l),
        }
    }
}

fn list(args: &LsArgs) -> Result<()> {
    let view = View::open(&args.bridge)?;
    let rules = rules_with_hits(&view.dp, &view.state)?;
    if args.json {
        let rows: Vec<_> = rules
            .iter()
            .map(|r| {
                json!({
                    "id": r.rule.id,
                    "action": if r.rule.allow { "allow" } else { "deny" },
                    "direction": if r.rule.out { "out" } else { "in" },
                    "cidr": r.rule.cidr.map(|(a, l)| format!("{a}/{l}")),
                    "port": r.rule.port.map(|(_, p)| p),
                    "proto": r.rule.port.map(|(proto, _)| match proto {
                        0 => "tcp+udp",
                        p => netbr_common::proto_name(p),
                    }),
                    "endpoint": r.rule.endpoint,
                    "hits": r.hits,
                    "rule": describe(&r.rule),
                })
            })
            .collect();
        super::print_json(&serde_json::Value::Array(rows));
        return Ok(());
    }
    println!("{:<6} {:>10}  RULE", "ID", "HITS");
    for r in &rules {
        println!("{:<6} {:>10}  {}", r.rule.id, r.hits, describe(&r.rule));
    }
    Ok(())
}
