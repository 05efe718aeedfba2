use std::net::IpAddr;

use anyhow::{Context as _, Result};
use clap::Args;
use netbr_common::conntrack::{CtState, STATE_COUNT};

use crate::{
    addr::{by_family, one_per_family, AnyCidr, Cidr, PortRange},
    host_firewall,
    store::{ipv6_only_keys, AttachRequest, Store},
};

#[derive(Args, Debug)]
pub struct Attach {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// The containers' subnet, e.g. 172.30.0.0/16; once more with an IPv6
    /// block (fd00:30::/64) for a dual-stack bridge, or an IPv6 block alone
    /// for an IPv6-only one.
    #[arg(long, required = true)]
    pub subnet: Vec<AnyCidr>,
    /// Interface that leads to the outside world.
    #[arg(long)]
    pub uplink: String,
    /// Bridge address; the first host address of the subnet by default.
    /// Once per family.
    #[arg(long)]
    pub gateway: Vec<IpAddr>,
    /// Entries per conntrack table (each flow takes two; assured and new
    /// flows have a table each). Fixed while attached; 131072 by default.
    #[arg(long)]
    pub ct_max: Option<u32>,
    /// Source ports masquerade picks from when a container's own port cannot
    /// be kept. Outside the host's ephemeral range by default.
    #[arg(long, default_value = "61000-65535")]
    pub snat_ports: PortRange,
    /// Let hosts on the uplink side reach container addresses directly when
    /// they route the subnet via this host (off by default, as in Docker 28).
    #[arg(long)]
    pub allow_direct_routing: bool,
    /// Deliver translated packets by redirect, skipping the host stack:
    /// straight into the container's namespace inbound, straight out of
    /// the uplink outbound. The default; kept for scripts that ask for it.
    #[arg(long, conflicts_with = "no_fast_path")]
    pub fast_path: bool,
    /// Hand translated packets to the host stack to route instead, through
    /// its forward path and firewall (a forward policy of drop drops them).
    #[arg(long)]
    pub no_fast_path: bool,
    /// Also translate packets of established flows bound for containers in
    /// an XDP program on the uplink, redirecting them to the container's
    /// veth (turns GRO on there, which veth needs to take XDP frames).
    /// Needs an uplink that delivers complete checksums, as physical NICs do.
    #[arg(long)]
    pub xdp: bool,
    /// Inter-container communication on the bridge (Docker's enable_icc).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub icc: bool,
    /// Conntrack timeout in seconds, repeatable: NAME=SECONDS with NAME one
    /// of tcp_syn_sent tcp_syn_recv tcp_established tcp_fin_wait
    /// tcp_close_wait tcp_time_wait tcp_close udp udp_stream icmp.
    #[arg(long = "timeout", value_name = "NAME=SECONDS", value_parser = parse_timeout)]
    pub timeouts: Vec<(CtState, u32)>,
    /// Destinations containers reach with their own address as source,
    /// repeatable (ip-masq-agent's nonMasqueradeCIDRs): other nodes' pod
    /// subnets, say. 0.0.0.0/0 turns masquerade off. Their replies come
    /// back untranslated, past the direct-routing protection.
    #[arg(long = "no-masquerade", value_name = "CIDR")]
    pub no_masquerade: Vec<Cidr>,
    /// Containers reach each other and the host, nothing beyond, and
    /// nothing beyond reaches them; no port may be published (Docker's
    /// --internal).
    #[arg(long, conflicts_with_all = ["allow_direct_routing", "routed"])]
    pub internal: bool,
    /// No translation at all (Docker 28's gateway_mode_ipv4=routed): the
    /// containers' traffic leaves with their own addresses, and publishing
    /// a port opens it at the container's address to hosts that route the
    /// subnet here.
    #[arg(long)]
    pub routed: bool,
    /// MTU of the bridge and of every endpoint's veth (1500 by default).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Let the host's netfilter see every packet of masquerade flows, as
    /// kube-proxy's Services need; attach turns this on by itself when it
    /// finds kube-proxy's rules.
    #[arg(long)]
    pub host_nat: bool,
}

fn parse_timeout(s: &str) -> Result<(CtState, u32)> {
    let (name, secs) = s
        .split_once('=')
        .with_context(|| format!("{s:?} is not NAME=SECONDS"))?;
    let state = CtState::by_timeout_name(name).with_context(|| {
        let names: Vec<_> = (1..STATE_COUNT as u8)
            .map(|v| CtState::from_u8(v).timeout_name())
            .collect();
        format!("unknown timeout {name:?}: use one of {}", names.join(" "))
    })?;
    let secs: u32 = secs
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .with_context(|| format!("{secs:?} is not a positive number of seconds"))?;
    Ok((state, secs))
}

impl Attach {
    pub async fn exec(self) -> Result<()> {
        let mut store = Store::open(&self.bridge)?;
        let request = self.request()?;
        let report = store.attach(&request).await?;
        let (ipv4, uplink_ipv4) = if request.ipv6_only {
            ("IPv6 only".to_string(), String::new())
        } else {
            (
                format!("{}/{}", report.gateway, report.prefix),
                format!(" ({})", report.uplink_addr),
            )
        };
        println!(
            "{} bridge {} ({ipv4}) with uplink {}{uplink_ipv4}; pins in {}",
            if report.reattached {
                "re-attached"
            } else {
                "attached"
            },
            self.bridge,
            self.uplink,
            store.pins.display()
        );
        if let Some((gateway, prefix)) = report.gateway6 {
            match report.uplink6 {
                Some(up) => println!("IPv6 gateway {gateway}/{prefix}, masquerading to {up}"),
                None => println!(
                    "IPv6 gateway {gateway}/{prefix}; {} has no global IPv6 address to masquerade to: containers' IPv6 stays on the host unless --allow-direct-routing",
                    self.uplink
                ),
            }
        }
        if let Some(flows) = report.upgraded_flows {
            println!(
                "upgraded bridge {} from map layout {}: {flows} flow(s) carried over",
                self.bridge,
                crate::bpf::upgrade::PREVIOUS_LAYOUT
            );
        }
        if !report.service_nat.is_empty() {
            eprintln!(
                "{}",
                host_firewall::service_nat_note(&report.service_nat, &self.bridge)
            );
        }
        let chains = host_firewall::restrictive_forward_chains();
        if !chains.is_empty() {
            eprintln!(
                "{}",
                host_firewall::advice(&chains, &self.bridge, !self.no_fast_path)
            );
        }
        Ok(())
    }

    fn request(&self) -> Result<AttachRequest> {
        let (subnet, subnet6) =
            one_per_family("--subnet", self.subnet.iter().map(|s| s.by_family()))?;
        let (gateway, gateway6) =
            one_per_family("--gateway", self.gateway.iter().map(|ip| by_family(*ip)))?;
        if gateway6.is_some() && subnet6.is_none() {
            anyhow::bail!("an IPv6 --gateway needs an IPv6 --subnet");
        }
        // An IPv6 --subnet alone makes an IPv6-only bridge.
        let ipv6_only = subnet.is_none();
        if ipv6_only && gateway.is_some() {
            anyhow::bail!("an IPv4 --gateway needs an IPv4 --subnet");
        }
        Ok(AttachRequest {
            subnet: subnet.unwrap_or_else(ipv6_only_keys),
            ipv6_only,
            subnet6,
            gateway6,
            uplink: self.uplink.clone(),
            gateway,
            ct_max: self.ct_max,
            snat_ports: self.snat_ports,
            allow_direct_routing: self.allow_direct_routing,
            fast_path: !self.no_fast_path,
            xdp: self.xdp,
            icc: self.icc,
            timeouts: self.timeouts.clone(),
            no_masquerade: self.no_masquerade.clone(),
            internal: self.internal,
            routed: self.routed,
            mtu: self.mtu,
            host_nat: self.host_nat,
        })
    }
}
