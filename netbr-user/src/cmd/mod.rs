//! One module per command; each is a clap struct with an `exec` method.

pub mod attach;
pub mod conntrack;
pub mod demo;
pub mod detach;
pub mod endpoint;
pub mod events;
pub mod firewall;
pub mod ls;
pub mod metrics;
pub mod monitor;
pub mod publish;
pub mod stats;
pub mod up;

pub const DEFAULT_BRIDGE: &str = "netbr0";

pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
