//! `netbr up`: attaches the bridges a configuration file lists, one `netbr
//! attach` per line, so a boot (whose bpffs and `/run` start empty) brings
//! the CLI's bridges back. The whole file is checked before anything is
//! attached; then each bridge is attached in order, and one that fails
//! does not keep the others down.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser};

use super::attach::Attach;

/// The file the systemd unit reads.
pub const DEFAULT_CONFIG: &str = "/etc/netbr/bridges.conf";

#[derive(Args, Debug)]
pub struct Up {
    /// One line per bridge: the options of `netbr attach` (`#` comments).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Only check the file.
    #[arg(long)]
    pub check: bool,
}

/// One line of the file, parsed as `netbr attach` parses its options.
#[derive(Parser, Debug)]
#[command(name = "attach")]
struct Line {
    #[command(flatten)]
    attach: Attach,
}

/// The file's bridges, each with its line number; every bad line named.
pub fn parse(text: &str, file: &str) -> Result<Vec<(usize, Attach)>> {
    let mut bridges = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split_once('#').map_or(raw, |(l, _)| l).trim();
        if line.is_empty() {
            continue;
        }
        let args = std::iter::once("attach").chain(line.split_whitespace());
        match Line::try_parse_from(args) {
            Ok(l) => bridges.push((i + 1, l.attach)),
            Err(e) => bad.push(format!(
                "{file}:{}: {}",
                i + 1,
                e.to_string().lines().next().unwrap_or_default()
            )),
        }
    }
    if !bad.is_empty() {
        bail!("{} (nothing attached)", bad.join("; "));
    }
    let mut names: Vec<&str> = bridges.iter().map(|(_, a)| a.bridge.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("{file}: bridge {} is listed twice (nothing attached)", w[0]);
    }
    Ok(bridges)
}

impl Up {
    pub async fn exec(self) -> Result<()> {
        let file = self.config.display().to_string();
        let text = std::fs::read_to_string(&self.config).with_context(|| {
            format!("reading {file}: list one bridge per line, as netbr attach takes its options")
        })?;
        let bridges = parse(&text, &file)?;
        if self.check {
            println!("{file}: {} bridge(s)", bridges.len());
            return Ok(());
        }
        let mut failed = Vec::new();
        for (line, attach) in bridges {
            let bridge = attach.bridge.clone();
            if let Err(e) = attach.exec().await {
                eprintln!("netbr up: {file}:{line}: bridge {bridge}: {e:#}");
                failed.push(bridge);
            }
        }
        if !failed.is_empty() {
            bail!("bridges not attached: {}", failed.join(", "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_lists_attach_options_per_line_and_is_checked_whole() {
        let ok = parse(
            "# bridges\n--bridge nb0 --subnet 172.30.0.0/16 --uplink eth0\n\n\
             --bridge nb1 --subnet 172.31.0.0/16 --uplink eth0 --icc=false  # isolated\n",
            "f",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(
            (ok[1].0, ok[1].1.bridge.as_str(), ok[1].1.icc),
            (4, "nb1", false)
        );
        let err = parse(
            "--bridge nb0 --uplink eth0\n--bridge nb1 --subnet x --uplink e\n",
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("f:1:") && err.contains("f:2:"), "{err}");
        let err = parse(
            "--subnet 172.30.0.0/16 --uplink a\n--subnet 172.31.0.0/16 --uplink b\n",
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("netbr0 is listed twice"), "{err}");
    }
}
