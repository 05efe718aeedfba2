use std::net::Ipv4Addr;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use netbr_common::{
    conntrack::{CtState, DEFAULT_TIMEOUTS, STATE_COUNT},
    maps::{
        Config, CFG_ALLOW_DIRECT_ROUTING, CFG_FAST_PATH, CFG_ICC_DISABLED, CFG_XDP,
        CT_MAX_ENTRIES_DEFAULT, LAYOUT_VERSION,
    },
};

use crate::{
    addr::{to_be32, Cidr, PortRange},
    bpf::{
        attach,
        datapath::{self, Datapath},
        pins,
    },
    netlink::Netlink,
    sysctl,
};

#[derive(Args, Debug)]
pub struct Attach {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// The containers' subnet, e.g. 172.30.0.0/16.
    #[arg(long)]
    pub subnet: Cidr,
    /// Interface that leads to the outside world.
    #[arg(long)]
    pub uplink: String,
    /// Bridge address; the first host address of the subnet by default.
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
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
    /// the uplink for tracked flows outbound.
    #[arg(long)]
    pub fast_path: bool,
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
        validate_ifname(&self.bridge)?;
        let nl = Netlink::connect()?;
        let uplink = nl.link(&self.uplink).await?.with_context(|| {
            format!(
                "uplink {} not found in this network namespace: pick an interface from `ip link`",
                self.uplink
            )
        })?;
        let uplink_addrs = nl.addrs(Some(uplink.index)).await?;
        let Some(uplink_addr) = uplink_addrs.first() else {
            bail!(
                "uplink {} has no IPv4 address: add one before attaching",
                self.uplink
            );
        };
        for a in &uplink_addrs {
            let net = Cidr::new(a.addr, a.prefix);
            if net.overlaps(&self.subnet) {
                bail!(
                    "subnet {} overlaps uplink {}'s {net}: choose another --subnet",
                    self.subnet,
                    self.uplink
                );
            }
        }
        let subnet = Cidr::new(self.subnet.network(), self.subnet.prefix);
        let gateway = self
            .gateway
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(subnet.network()) + 1));
        if !subnet.is_host(gateway) {
            bail!("gateway {gateway} is not a host address of {subnet}");
        }
        if self.bridge == self.uplink {
            bail!("the bridge and the uplink must be different interfaces");
        }
        let bridge = nl.link(&self.bridge).await?;
        if let Some(b) = &bridge {
            if !b.is_bridge {
                bail!(
                    "interface {} exists and is not a bridge: pick another --bridge",
                    self.bridge
                );
            }
        }
        if self.xdp && uplink.is_veth {
            eprintln!(
                "warning: uplink {} is a veth: XDP sees only a partial checksum in frames whose sender offloads it, and cannot fix it up; turn transmit checksumming off on its peer (ethtool -K PEER tx off), as a physical NIC's frames are always complete",
                self.uplink
            );
        }
        let dir = pins::pin_dir(&self.bridge)?;
        let reattach = dir.join(netbr_common::maps::MAP_CONFIG).exists();
        let kept: Vec<&str> = attach::KEPT_WITH_BRIDGE
            .iter()
            .copied()
            .filter(|m| dir.join(m).exists())
            .collect();
        if !reattach && kept.contains(&netbr_common::maps::MAP_ENDPOINTS) {
            // Endpoints kept by `detach --keep-bridge` must fit the subnet.
            for (ip, _) in datapath::pinned_endpoints(&dir)? {
                let ip = crate::addr::from_be32(ip);
                if !subnet.is_host(ip) {
                    bail!(
                        "bridge {} kept an endpoint at {ip}, outside {subnet}: attach with its old subnet, or run netbr detach --bridge {} without --keep-bridge",
                        self.bridge,
                        self.bridge
                    );
                }
            }
        }
        let ct_max = if reattach {
            check_compatible(&dir, &self.bridge, subnet, uplink.index)?;
            let pinned = datapath::pinned_ct_max(&dir)?;
            if self.ct_max.is_some_and(|n| n != pinned) {
                bail!(
                    "bridge {} keeps {pinned} conntrack entries per table while attached: run netbr detach --bridge {} first to change --ct-max",
                    self.bridge,
                    self.bridge
                );
            }
            pinned
        } else {
            let n = self.ct_max.unwrap_or(CT_MAX_ENTRIES_DEFAULT);
            if n < 64 {
                bail!("--ct-max {n} is too small: use at least 64");
            }
            n
        };
        let (host_min, host_max) = sysctl::local_port_range()?;

        // Everything is validated; from here on netbr changes the system.
        let bridge = match bridge {
            Some(b) => b,
            None => nl.create_bridge(&self.bridge).await?,
        };
        let have = nl.addrs(Some(bridge.index)).await?;
        if !have.iter().any(|a| a.addr == gateway) {
            nl.add_addr(bridge.index, gateway, subnet.prefix).await?;
        }
        nl.set_up(bridge.index).await?;
        sysctl::write("net.ipv4.ip_forward", "1")?;
        pins::ensure_bpffs()?;
        pins::create_pin_dir(&dir)?;

        let result = async {
            let mut ebpf = attach::load(Some(&dir), ct_max)?;
            let mut dp = Datapath::from_ebpf(&mut ebpf)?;
            let mut timeouts = DEFAULT_TIMEOUTS;
            if reattach {
                timeouts = dp.config()?.timeouts;
            }
            for (state, secs) in &self.timeouts {
                timeouts[*state as usize] = *secs;
            }
            let mut flags = 0;
            if self.allow_direct_routing {
                flags |= CFG_ALLOW_DIRECT_ROUTING;
            }
            if !self.icc {
                flags |= CFG_ICC_DISABLED;
            }
            if self.fast_path {
                flags |= CFG_FAST_PATH;
            }
            if self.xdp {
                flags |= CFG_XDP;
            }
            // Existing endpoints follow a changed --icc at once.
            for (_, ep) in dp.endpoint_list()? {
                nl.set_port_isolated(ep.host_ifindex, !self.icc).await?;
            }
            dp.set_config(&Config {
                configured: 1,
                layout_version: LAYOUT_VERSION,
                uplink_ifindex: uplink.index,
                bridge_ifindex: bridge.index,
                uplink_addr: to_be32(uplink_addr.addr),
                gateway_addr: to_be32(gateway),
                subnet_addr: to_be32(subnet.network()),
                subnet_mask: to_be32(Ipv4Addr::from(subnet.mask())),
                snat_port_min: self.snat_ports.0,
                snat_port_max: self.snat_ports.1,
                host_port_min: host_min,
                host_port_max: host_max,
                timeouts,
                flags,
                bridge_mac: bridge.mac.unwrap_or_default(),
                _pad: [0; 2],
                ct_max,
                _pad2: 0,
                netns_cookie: crate::netns::current_cookie()?,
            })?;
            sync_local_addrs(&nl, &mut dp).await?;
            attach::attach_all(&mut ebpf, &dir, &self.uplink, &self.bridge)?;
            if self.xdp {
                for (_, ep) in dp.endpoint_list()? {
                    super::endpoint::accept_xdp_frames(&ep)?;
                }
                attach::attach_xdp(&mut ebpf, &dir, uplink.index)
            } else {
                attach::detach_xdp(&dir)
            }
        }
        .await;
        if let Err(e) = result {
            if !reattach {
                // Pins a `detach --keep-bridge` left are the user's; keep them.
                for err in attach::remove_pins(&dir, &kept) {
                    log::warn!("{err:#}");
                }
            }
            return Err(e);
        }
        println!(
            "{} bridge {} ({gateway}/{}) with uplink {} ({}); pins in {}",
            if reattach { "re-attached" } else { "attached" },
            self.bridge,
            subnet.prefix,
            self.uplink,
            uplink_addr.addr,
            dir.display()
        );
        Ok(())
    }
}

fn validate_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
        bail!("{name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)");
    }
    Ok(())
}

/// A re-attach may replace the programs but not change what the bridge is.
fn check_compatible(dir: &std::path::Path, bridge: &str, subnet: Cidr, uplink: u32) -> Result<()> {
    // A layout change of any value size fails to open the typed maps; the
    // version field catches changes that keep the sizes.
    let cfg = Datapath::from_pins(dir)
        .and_then(|dp| dp.config())
        .map_err(|e| {
            anyhow::anyhow!(
                "bridge {bridge}'s pinned maps do not match this netbr's map layout ({e:#}): run netbr detach --bridge {bridge} first"
            )
        })?;
    if cfg.layout_version != LAYOUT_VERSION {
        bail!(
            "bridge {bridge} was attached by a netbr with map layout {} (this one uses {LAYOUT_VERSION}): run netbr detach first",
            cfg.layout_version
        );
    }
    if cfg.configured != 0
        && (cfg.subnet_addr != to_be32(subnet.network())
            || cfg.subnet_mask != to_be32(Ipv4Addr::from(subnet.mask()))
            || cfg.uplink_ifindex != uplink)
    {
        bail!(
            "bridge {bridge} is already attached with another subnet or uplink: run netbr detach --bridge {bridge} first"
        );
    }
    Ok(())
}

/// Mirrors the namespace's IPv4 addresses into the datapath, for ports
/// published on every local address. Re-run `attach` after adding one.
pub async fn sync_local_addrs(nl: &Netlink, dp: &mut Datapath) -> Result<()> {
    let now: Vec<u32> = nl
        .addrs(None)
        .await?
        .iter()
        .map(|a| to_be32(a.addr))
        .collect();
    let stale: Vec<u32> = dp
        .local_addrs
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !now.contains(k))
        .collect();
    for k in stale {
        dp.local_addrs.remove(&k)?;
    }
    for a in now {
        dp.local_addrs.insert(a, 1, 0)?;
    }
    Ok(())
}
