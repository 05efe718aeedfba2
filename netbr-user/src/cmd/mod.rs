//! One module per command; each is a clap struct with an `exec` method.

pub mod attach;
pub mod conntrack;
pub mod demo;
pub mod detach;
pub mod endpoint;
pub mod events;
pub mod ls;
pub mod publish;
pub mod stats;

use anyhow::{anyhow, Result};
use netbr_common::maps::Endpoint;

use crate::bpf::datapath::Datapath;

pub const DEFAULT_BRIDGE: &str = "netbr0";

/// Copies `s` into a NUL-padded fixed-size field.
pub fn fixed<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0; N];
    let n = s.len().min(N);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// Reads a NUL-padded fixed-size field.
pub fn text(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The endpoint named `name` and its address (network order).
pub fn find_endpoint(dp: &Datapath, bridge: &str, name: &str) -> Result<(u32, Endpoint)> {
    dp.endpoint_list()?
        .into_iter()
        .find(|(_, ep)| text(&ep.name) == name)
        .ok_or_else(|| {
            anyhow!("no endpoint named {name} on bridge {bridge}: see netbr ls --bridge {bridge}")
        })
}

pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
