use anyhow::{anyhow, Result};
use clap::Args;
use netbr_common::portspec::PortSpec;

use crate::store::Store;

fn parse_spec(s: &str) -> Result<PortSpec> {
    s.parse::<PortSpec>()
        .map_err(|e| anyhow!("invalid -p {s:?}: {e}"))
}

#[derive(Args, Debug)]
pub struct Publish {
    pub endpoint: String,
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// [HOSTIP:|[HOSTIP6]:]HOSTPORT[-END]:CPORT[-END][/tcp|/udp], repeatable
    /// ([::] for every IPv6 address, 0.0.0.0 for every IPv4 one).
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

impl Publish {
    pub async fn exec(self) -> Result<()> {
        let mut store = Store::open(&self.bridge)?;
        let ports = store.publish(&self.endpoint, &self.specs, true).await?;
        let ip = store.endpoint(&self.endpoint)?.ip;
        for p in ports {
            println!(
                "published {} -> {} {ip}:{}",
                p.host_side(),
                self.endpoint,
                p.container_port
            );
        }
        Ok(())
    }
}

impl Unpublish {
    pub async fn exec(self) -> Result<()> {
        let mut store = Store::open(&self.bridge)?;
        let specs = (!self.all).then_some(self.specs.as_slice());
        let (ports, flows) = store.unpublish(&self.endpoint, specs)?;
        println!(
            "unpublished {} port(s) of {}; ended {flows} flow(s)",
            ports.len(),
            self.endpoint
        );
        Ok(())
    }
}
