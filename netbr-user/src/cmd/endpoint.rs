use std::net::Ipv4Addr;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::{
    netns,
    store::{EndpointRequest, NetnsChoice, Owner, Store},
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

impl Add {
    pub async fn exec(self) -> Result<()> {
        let mut store = Store::open(&self.bridge)?;
        let ep = store
            .add_endpoint(&EndpointRequest {
                name: self.name.clone(),
                ip: self.ip,
                netns: match &self.netns {
                    Some(ns) => NetnsChoice::Existing(netns::resolve(ns)),
                    None => NetnsChoice::CreateNamed,
                },
                ifname: "eth0".into(),
                owner: Owner::Cli,
            })
            .await?;
        let (subnet, _) = store.network()?;
        println!(
            "endpoint {} {}/{} in {} (veth {} on {})",
            ep.name,
            ep.ip,
            subnet.prefix,
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
