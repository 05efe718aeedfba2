//! The command line: global options, subcommands, and running one.

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::cmd;

#[derive(Parser, Debug)]
#[command(
    name = "netbr",
    version,
    about = "Docker-style bridge networking with NAT in eBPF instead of iptables"
)]
pub struct Cli {
    /// Run inside this network namespace (a name under /run/netns or a path).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the bridge if needed and attach the datapath to it and the uplink.
    Attach(cmd::attach::Attach),
    /// Attach every bridge a configuration file lists (at boot).
    Up(cmd::up::Up),
    /// Remove the datapath, its pins, endpoints and (unless --keep-bridge) the bridge.
    Detach(cmd::detach::Detach),
    /// Add or remove a container endpoint on the bridge.
    #[command(subcommand)]
    Endpoint(cmd::endpoint::EndpointCmd),
    /// Publish container ports on the host, Docker's -p.
    Publish(cmd::publish::Publish),
    /// Withdraw published ports.
    Unpublish(cmd::publish::Unpublish),
    /// Show the bridge, its endpoints and published ports.
    Ls(cmd::ls::Ls),
    /// List or flush tracked connections.
    #[command(subcommand)]
    Conntrack(cmd::conntrack::ConntrackCmd),
    /// Rules for new flows to published ports and from containers.
    #[command(subcommand)]
    Firewall(cmd::firewall::FirewallCmd),
    /// Show the datapath's counters.
    Stats(cmd::stats::Stats),
    /// Show the datapath's log (full conntrack table, exhausted SNAT ports).
    Events(cmd::events::Events),
    /// Show each dropped packet and each flow opened or ended, live.
    Monitor(cmd::monitor::Monitor),
    /// Serve Prometheus metrics for every bridge in this namespace.
    Metrics(cmd::metrics::Metrics),
    /// Build a sandbox, show netbr at work, and clean up.
    Demo(cmd::demo::Demo),
    /// Measure netbr against the routed path and netfilter, side by side.
    Bench(crate::bench::Bench),
    /// Serve Docker's remote network-driver API on a unix socket.
    DockerPlugin(crate::docker::DockerPlugin),
}

pub fn run(cli: Cli) -> Result<()> {
    // setns affects only this thread, so enter before the single-threaded
    // runtime starts: every socket netbr opens is then in that namespace.
    if let Some(ns) = &cli.netns {
        crate::netns::enter(&crate::netns::resolve(ns))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Attach(c) => c.exec().await,
            Command::Up(c) => c.exec().await,
            Command::Detach(c) => c.exec().await,
            Command::Endpoint(c) => c.exec().await,
            Command::Publish(c) => c.exec().await,
            Command::Unpublish(c) => c.exec().await,
            Command::Ls(c) => c.exec().await,
            Command::Conntrack(c) => c.exec().await,
            Command::Firewall(c) => c.exec().await,
            Command::Stats(c) => c.exec().await,
            Command::Events(c) => c.exec().await,
            Command::Monitor(c) => c.exec().await,
            Command::Metrics(c) => c.exec().await,
            Command::Demo(c) => c.exec().await,
            Command::Bench(c) => c.exec().await,
            Command::DockerPlugin(c) => c.exec().await,
        }
    })
}
