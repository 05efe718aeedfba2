use anyhow::Result;
use clap::Args;

use crate::{bpf::datapath::Datapath, cli::Global};

#[derive(Args, Debug)]
pub struct Stats {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
}

impl Stats {
    pub async fn exec(self, g: Global) -> Result<()> {
        let (dp, _) = Datapath::open(&self.bridge)?;
        let totals = dp.counter_totals()?;
        if g.json {
            let map: serde_json::Map<_, _> = totals
                .iter()
                .map(|(r, v)| (r.name().to_string(), serde_json::json!(v)))
                .collect();
            super::print_json(&serde_json::Value::Object(map));
        } else {
            for (r, v) in totals {
                println!("{:<24} {v}", r.name());
            }
        }
        Ok(())
    }
}
