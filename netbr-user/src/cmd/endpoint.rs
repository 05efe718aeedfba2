use std::net::IpAddr;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::{
    addr::{by_family, one_per_family},
    netns,
    store::{
        limits::{format_rate, parse_limit},
        EndpointRequest, Limit, Limits, NetnsChoice, Owner, Store,
    },
};

#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// Connect a container namespace to the bridge (veth, address, default route).
    Add(Add),
    /// Remove an endpoint, its published ports and flows, and the namespace netbr made for it.
    Rm(Rm),
    /// Change a running endpoint's bandwidth limits (`none` lifts one).
    Limit(LimitCmd),
}

impl EndpointCmd {
    pub async fn exec(self) -> Result<()> {
        match self {
            EndpointCmd::Add(c) => c.exec().await,
            EndpointCmd::Rm(c) => c.exec().await,
            EndpointCmd::Limit(c) => c.exec().await,
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
    /// Address in the bridge subnet; the first free one by default. Once
    /// per family: on a dual-stack bridge the endpoint gets an address of
    /// each.
    #[arg(long)]
    pub ip: Vec<IpAddr>,
    /// An existing network namespace (name or path) to connect.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    #[command(flatten)]
    pub limits: RateArgs,
}

/// Bandwidth limits, in tc's units (`20mbit`, `1gbit`, `64kbit`, bits per
/// second without a unit).
#[derive(Args, Debug)]
pub struct RateArgs {
    /// Limit on what the container sends.
    #[arg(long, value_name = "RATE|none")]
    pub egress_rate: Option<String>,
    /// Limit on what the container receives.
    #[arg(long, value_name = "RATE|none")]
    pub ingress_rate: Option<String>,
}

impl RateArgs {
    /// `current` with the rates given applied; each one not given stays.
    fn apply_to(&self, current: Limits) -> Result<Limits> {
        let mut limits = current;
        if let Some(r) = &self.egress_rate {
            limits.egress = parse_limit(r)?;
        }
        if let Some(r) = &self.ingress_rate {
            limits.ingress = parse_limit(r)?;
        }
        Ok(limits)
    }
}

#[derive(Args, Debug)]
pub struct LimitCmd {
    pub name: String,
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    #[command(flatten)]
    pub limits: RateArgs,
}

impl LimitCmd {
    pub async fn exec(self) -> Result<()> {
        if self.limits.egress_rate.is_none() && self.limits.ingress_rate.is_none() {
            bail!("give --egress-rate and/or --ingress-rate (a rate, or none to lift it)");
        }
        let mut store = Store::open(&self.bridge)?;
        let current = store.endpoint(&self.name)?.limits;
        let limits = self.limits.apply_to(current)?;
        store.set_limits(&self.name, limits).await?;
        println!("endpoint {}: {}", self.name, describe(&limits));
        Ok(())
    }
}

fn describe(limits: &Limits) -> String {
    let rate = |l: Option<Limit>| l.map(|l| format_rate(l.rate)).unwrap_or("none".into());
    format!(
        "egress {}, ingress {}",
        rate(limits.egress),
        rate(limits.ingress)
    )
}

#[derive(Args, Debug)]
pub struct Rm {
    pub name: String,
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
}

impl Add {
    pub async fn exec(self) -> Result<()> {
        // Refused before anything is made.
        let limits = self.limits.apply_to(Limits::default())?;
        let (ip, ip6) = one_per_family("--ip", self.ip.iter().map(|ip| by_family(*ip)))?;
        let mut store = Store::open(&self.bridge)?;
        let ep = store
            .add_endpoint(&EndpointRequest {
                name: self.name.clone(),
                ip,
                ip6,
                netns: match &self.netns {
                    Some(ns) => NetnsChoice::Existing(netns::resolve(ns)),
                    None => NetnsChoice::CreateNamed,
                },
                ifname: "eth0".into(),
                owner: Owner::Cli,
            })
            .await?;
        if limits != Limits::default() {
            if let Err(e) = store.set_limits(&ep.name, limits).await {
                let _ = store.remove_endpoint(&ep.name).await;
                return Err(e);
            }
        }
        let (subnet, _) = store.network()?;
        let mut addrs = Vec::new();
        if !store.ipv6_only() {
            addrs.push(format!("{}/{}", ep.ip, subnet.prefix));
        }
        if let (Some(ip6), Some((subnet6, _))) = (ep.ip6, store.network6()) {
            addrs.push(format!("{ip6}/{}", subnet6.prefix));
        }
        println!(
            "endpoint {} {} in {} (veth {} on {})",
            ep.name,
            addrs.join(" "),
            ep.netns.display(),
            ep.host_ifname,
            self.bridge
        );
        Ok(())
    }
}

impl Rm {
    pub async fn exec(self) -> Result<()> {
        Store::open(&self.bridge)?
            .remove_endpoint(&self.name)
            .await?;
        println!("removed endpoint {}", self.name);
        Ok(())
    }
}
