use anyhow::{bail, Result};
use clap::Args;

use crate::store::Store;

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
        let errors = Store::open(&self.bridge)?.detach(self.keep_bridge).await?;
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
