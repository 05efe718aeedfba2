use anyhow::Result;
use clap::Args;

use crate::store::View;

#[derive(Args, Debug)]
pub struct Stats {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Stats {
    pub async fn exec(self) -> Result<()> {
        let dp = View::open(&self.bridge)?.dp;
        let totals = dp.counter_totals()?;
        let attempts = dp.snat_attempts()?;
        let (fast_in, fast_out, fast_xdp) = dp.fast_path_counts()?;
        let bucket = |i: usize| match i {
            0 => "own_port".to_string(),
            i if i == attempts.len() - 1 => "exhausted".to_string(),
            i => i.to_string(),
        };
        if self.json {
            let mut map: serde_json::Map<_, _> = totals
                .iter()
                .map(|(r, v)| (r.name().to_string(), serde_json::json!(v)))
                .collect();
            let hist: serde_json::Map<_, _> = attempts
                .iter()
                .enumerate()
                .map(|(i, v)| (bucket(i), serde_json::json!(v)))
                .collect();
            map.insert("snat_attempts".into(), serde_json::Value::Object(hist));
            map.insert("fast_path_in".into(), serde_json::json!(fast_in));
            map.insert("fast_path_out".into(), serde_json::json!(fast_out));
            map.insert("fast_path_xdp".into(), serde_json::json!(fast_xdp));
            super::print_json(&serde_json::Value::Object(map));
        } else {
            for (r, v) in totals {
                println!("{:<24} {v}", r.name());
            }
            for (name, v) in [
                ("fast_path_in", fast_in),
                ("fast_path_out", fast_out),
                ("fast_path_xdp", fast_xdp),
            ] {
                println!("{name:<24} {v}");
            }
            let used: Vec<String> = attempts
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0)
                .map(|(i, v)| format!("{}:{v}", bucket(i)))
                .collect();
            println!(
                "{:<24} {}",
                "snat_attempts",
                if used.is_empty() {
                    "-".into()
                } else {
                    used.join(" ")
                }
            );
        }
        Ok(())
    }
}
