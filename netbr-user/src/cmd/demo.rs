use anyhow::Result;
use clap::Args;

use crate::cli::Global;

#[derive(Args, Debug)]
pub struct Demo {
    /// Leave the sandbox in place afterwards.
    #[arg(long)]
    pub keep: bool,
}

impl Demo {
    pub async fn exec(self, _g: Global) -> Result<()> {
        anyhow::bail!("demo is not written yet")
    }
}
