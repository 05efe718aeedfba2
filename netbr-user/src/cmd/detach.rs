use anyhow::{bail, Result};
use clap::Args;

use crate::{
    bpf::{attach, datapath::pinned_endpoints, pins},
    netlink::Netlink,
};

#[derive(Args, Debug)]
pub struct Detach {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Keep the bridge, its endpoints and their published ports; remove only
    /// the datapath. The next `attach` serves them again.
    #[arg(long)]
    pub keep_bridge: bool,
}

impl Detach {
    pub async fn exec(self) -> Result<()> {
        let nl = Netlink::connect()?;
        let dir = pins::pin_dir(&self.bridge)?;
        let bridge = nl.link(&self.bridge).await?;
        if !dir.exists() && bridge.is_none() {
            bail!(
                "bridge {} is not attached in this network namespace: nothing to detach",
                self.bridge
            );
        }
        // Teardown keeps going past failures and reports them all at the end.
        let mut errors = Vec::new();
        if !self.keep_bridge && dir.exists() {
            match pinned_endpoints(&dir) {
                Ok(eps) => {
                    for (_, ep) in eps {
                        errors.extend(super::endpoint::remove_endpoint_objects(&nl, &ep).await);
                    }
                }
                Err(e) => errors.push(e.context("finding the endpoints to remove")),
            }
        }
        let keep: &[&str] = if self.keep_bridge {
            &attach::KEPT_WITH_BRIDGE
        } else {
            &[]
        };
        errors.extend(attach::remove_pins(&dir, keep));
        if !self.keep_bridge {
            if let Some(b) = bridge {
                if let Err(e) = nl.del_link(b.index).await {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            println!("detached bridge {}", self.bridge);
            return Ok(());
        }
        for e in &errors {
            eprintln!("netbr: {e:#}");
        }
        bail!(
            "detach of {} finished with {} error(s) above",
            self.bridge,
            errors.len()
        )
    }
}
