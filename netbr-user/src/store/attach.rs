//! Attaching a bridge's datapath and detaching it.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context as _, Result};
use netbr_common::{
    conntrack::{CtState, DEFAULT_TIMEOUTS},
    maps::{
        Config, CFG_ALLOW_DIRECT_ROUTING, CFG_FAST_PATH, CFG_HOST_NAT, CFG_ICC_DISABLED,
        CFG_INTERNAL, CFG_NO_MASQUERADE, CFG_ROUTED, CFG_XDP, CT_MAX_ENTRIES_DEFAULT,
        LAYOUT_VERSION,
    },
    net6::Net6,
};

use super::{
    endpoint::remove_endpoint_objects, local_addrs::sync_local_addrs, state::Network,
    validate_ifname, Store,
};
use crate::{
    addr::{to_be32, Cidr, Cidr6, PortRange},
    bpf::{attach, datapath::Datapath, layout, pins, upgrade},
    netlink::Netlink,
    sysctl,
};

/// What `attach` is asked for; the CNI plugin and the Docker driver fill
/// the same request from their configurations.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    /// For an IPv6-only bridge, [`ipv6_only_keys`].
    pub subnet: Cidr,
    /// No IPv4 for the bridge or its containers: only `subnet6`.
    pub ipv6_only: bool,
    /// The bridge's IPv6 subnet, for a dual-stack bridge.
    pub subnet6: Option<Cidr6>,
    /// The bridge's IPv6 address; the subnet's first by default.
    pub gateway6: Option<Ipv6Addr>,
    pub uplink: String,
    pub gateway: Option<Ipv4Addr>,
    pub ct_max: Option<u32>,
    pub snat_ports: PortRange,
    pub allow_direct_routing: bool,
    pub fast_path: bool,
    pub xdp: bool,
    pub icc: bool,
    pub timeouts: Vec<(CtState, u32)>,
    /// Destinations containers reach with their own address as source
    /// (ip-masq-agent's `nonMasqueradeCIDRs`); 0.0.0.0/0 turns masquerade
    /// off (Docker's `enable_ip_masquerade=false`).
    pub no_masquerade: Vec<Cidr>,
    /// No way in or out of the subnet beyond the host (`--internal`).
    pub internal: bool,
    /// Docker 28's routed gateway mode: no translation at all; published
    /// ports are opened at the container's own address.
    pub routed: bool,
    /// MTU of the bridge and of every endpoint's veth; the kernel's
    /// default (1500) when none is given.
    pub mtu: Option<u32>,
    /// Treat the host as translating Services (`CFG_HOST_NAT`) even when
    /// `attach` finds no kube-proxy rules (which it looks for itself).
    pub host_nat: bool,
}

impl AttachRequest {
    /// The defaults of `netbr attach` for a subnet and an uplink.
    pub fn new(subnet: Cidr, uplink: &str) -> Self {
        Self {
            subnet,
            ipv6_only: false,
            subnet6: None,
            gateway6: None,
            uplink: uplink.to_string(),
            gateway: None,
            ct_max: None,
            snat_ports: PortRange(61000, 65535),
            allow_direct_routing: false,
            fast_path: true,
            xdp: false,
            icc: true,
            timeouts: Vec::new(),
            no_masquerade: Vec::new(),
            internal: false,
            routed: false,
            mtu: None,
            host_nat: false,
        }
    }

    /// The `CFG_*` flags the request fixes, with the destinations that
    /// leave untranslated: everything when routed.
    fn modes(&self, service_nat_found: bool) -> Result<(u32, Vec<Cidr>)> {
        if self.internal && (self.allow_direct_routing || self.routed) {
            bail!("an internal bridge lets nothing in from outside: drop --allow-direct-routing and --routed, or --internal");
        }
        if let Some(mtu) = self.mtu {
            if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
                bail!("MTU {mtu} is out of range: use {MTU_MIN} to {MTU_MAX}");
            }
        }
        let mut no_masquerade = self.no_masquerade.clone();
        if self.routed {
            no_masquerade = vec![Cidr::new(Ipv4Addr::UNSPECIFIED, 0)];
        }
        let mut flags = 0;
        for (on, flag) in [
            (self.allow_direct_routing, CFG_ALLOW_DIRECT_ROUTING),
            (!self.icc, CFG_ICC_DISABLED),
            (self.fast_path, CFG_FAST_PATH),
            (self.xdp, CFG_XDP),
            (!no_masquerade.is_empty(), CFG_NO_MASQUERADE),
            (self.internal, CFG_INTERNAL),
            (self.routed, CFG_ROUTED),
            (self.host_nat || service_nat_found, CFG_HOST_NAT),
        ] {
            if on {
                flags |= flag;
            }
        }
        Ok((flags, no_masquerade))
    }
}

/// The IPv4 block an IPv6-only bridge's endpoints take their keys from.
/// The datapath's tables name endpoints by IPv4 address (a mapping's
/// target, `NB_EP`, `NB_EP6`'s key), so each still gets one, from
/// 240.0.0.0/16: reserved (RFC 1112's class E), never routed, and
/// configured on no link, bridge or container, so no packet carries one.
pub fn ipv6_only_keys() -> Cidr {
    Cidr::new(Ipv4Addr::new(240, 0, 0, 0), 16)
}

/// Lets the host route IPv6 between the uplink and the bridge. Forwarding
/// makes the kernel ignore router advertisements on interfaces whose
/// `accept_ra` is 1, so an uplink configured by SLAAC would lose its
/// default route when it expired: such an uplink is moved to 2 (accept
/// even while forwarding) first, as a router that keeps its upstream
/// configuration by RA needs.
fn forward_ipv6(uplink: &str) -> Result<()> {
    let accept_ra = format!("net.ipv6.conf.{uplink}.accept_ra");
    if sysctl::read(&accept_ra)?.trim() == "1" {
        sysctl::write(&accept_ra, "2")?;
    }
    sysctl::write("net.ipv6.conf.all.forwarding", "1")
}

/// IPv4's smallest MTU (RFC 791) and the largest a Linux bridge takes.
const MTU_MIN: u32 = 68;
const MTU_MAX: u32 = 65535;

pub struct AttachReport {
    pub reattached: bool,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// The bridge's IPv6 address and prefix, on a dual-stack bridge.
    pub gateway6: Option<(Ipv6Addr, u8)>,
    /// The uplink address containers' IPv6 is masqueraded to, if any.
    pub uplink6: Option<Ipv6Addr>,
    pub uplink_addr: Ipv4Addr,
    /// kube-proxy's rules found (`host_firewall::service_nat`).
    pub service_nat: Vec<String>,
    /// Flows carried over from the previous release's tables, when this
    /// attach upgraded them (`bpf::upgrade`).
    pub upgraded_flows: Option<usize>,
}

impl Store {
    /// Attaches the bridge unless it already is; an attached bridge must
    /// have the subnet and uplink asked for. For runtimes, whose every ADD
    /// carries the network's configuration.
    pub async fn ensure_attached(&mut self, req: &AttachRequest) -> Result<()> {
        if !self.is_attached() {
            self.attach(req).await?;
            return Ok(());
        }
        let dp = self.datapath()?;
        let cfg = dp.config()?;
        let uplink = Netlink::connect()?.link(&req.uplink).await?;
        if cfg.subnet_addr != to_be32(req.subnet.network())
            || cfg.subnet_mask != to_be32(Ipv4Addr::from(req.subnet.mask()))
            || uplink.map(|l| l.index) != Some(cfg.uplink_ifindex)
        {
            bail!(
                "bridge {} is already attached with another subnet or uplink than {} via {}: use another bridge name, or detach it first",
                self.bridge,
                req.subnet,
                req.uplink
            );
        }
        // kube-proxy may write its rules after a node's first pod: the
        // datapath must then let netfilter see Services' flows.
        if !cfg.has(CFG_HOST_NAT) && !crate::host_firewall::service_nat().is_empty() {
            self.attach(req).await?;
        }
        Ok(())
    }

    /// Creates the bridge if needed and loads, pins and attaches the
    /// datapath; on a re-attach swaps the programs and keeps maps and flows.
    pub async fn attach(&mut self, req: &AttachRequest) -> Result<AttachReport> {
        let bridge_name = self.bridge.clone();
        validate_ifname(&req.uplink)?;
        let service_nat = crate::host_firewall::service_nat();
        let (flags, no_masquerade) = req.modes(!service_nat.is_empty())?;
        if req.internal && self.state.ports().next().is_some() {
            bail!("bridge {bridge_name} has published ports, and an internal bridge publishes none: unpublish them first");
        }
        let nl = Netlink::connect()?;
        let uplink = nl.link(&req.uplink).await?.with_context(|| {
            format!(
                "uplink {} not found in this network namespace: pick an interface from `ip link`",
                req.uplink
            )
        })?;
        let uplink_addrs = nl.addrs(Some(uplink.index)).await?;
        if req.ipv6_only && req.subnet6.is_none() {
            bail!("an IPv6-only bridge needs an IPv6 --subnet");
        }
        if req.ipv6_only && req.routed {
            bail!("routed mode is IPv4's so far: attach an IPv6-only bridge without --routed");
        }
        // An IPv6-only bridge masquerades no IPv4: its uplink needs none.
        let uplink_addr = match uplink_addrs.first() {
            Some(a) => a.addr,
            None if req.ipv6_only => Ipv4Addr::UNSPECIFIED,
            None => bail!(
                "uplink {} has no IPv4 address: add one before attaching, or attach an IPv6-only bridge (--subnet with an IPv6 block alone)",
                req.uplink
            ),
        };
        for a in uplink_addrs.iter().filter(|_| !req.ipv6_only) {
            let net = Cidr::new(a.addr, a.prefix);
            if net.overlaps(&req.subnet) {
                bail!(
                    "subnet {} overlaps uplink {}'s {net}: choose another --subnet",
                    req.subnet,
                    req.uplink
                );
            }
        }
        let subnet = Cidr::new(req.subnet.network(), req.subnet.prefix);
        let gateway = req
            .gateway
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(subnet.network()) + 1));
        if !subnet.is_host(gateway) {
            bail!("gateway {gateway} is not a host address of {subnet}");
        }
        let uplink_addrs6 = nl.addrs6(uplink.index).await?;
        let net6 = self.ipv6_network(req, &uplink_addrs6)?;
        // Containers' IPv6 is masqueraded to the uplink's first global
        // address; without one it is only routed (`--allow-direct-routing`).
        let uplink6 = net6.and(uplink_addrs6.first().map(|(a, _)| *a));
        if bridge_name == req.uplink {
            bail!("the bridge and the uplink must be different interfaces");
        }
        let bridge = nl.link(&bridge_name).await?;
        if let Some(b) = &bridge {
            if !b.is_bridge {
                bail!("interface {bridge_name} exists and is not a bridge: pick another --bridge");
            }
            if req.mtu.is_some_and(|m| m != b.mtu) && !self.state.endpoints.is_empty() {
                bail!(
                    "bridge {bridge_name} has endpoints at MTU {}: remove them (or detach) to change the MTU",
                    b.mtu
                );
            }
        }
        if req.xdp && uplink.is_veth {
            eprintln!(
                "warning: uplink {} is a veth: XDP sees only a partial checksum in frames whose sender offloads it, and cannot fix it up; turn transmit checksumming off on its peer (ethtool -K PEER tx off), as a physical NIC's frames are always complete",
                req.uplink
            );
        }
        let dir = self.pins.clone();
        let reattach = self.is_attached();
        let kept: Vec<&str> = attach::KEPT_WITH_BRIDGE
            .iter()
            .copied()
            .filter(|m| dir.join(m).exists())
            .collect();
        if !reattach {
            // Endpoints kept by `detach --keep-bridge` must fit the subnet.
            for ep in &self.state.endpoints {
                let outside = if !subnet.is_host(ep.ip) {
                    Some((ep.ip.to_string(), subnet.to_string()))
                } else {
                    match (ep.ip6, net6) {
                        (Some(ip), Some((subnet6, _))) if !subnet6.is_host(ip) => {
                            Some((ip.to_string(), subnet6.to_string()))
                        }
                        (Some(ip), None) => Some((ip.to_string(), "an IPv4-only bridge".into())),
                        _ => None,
                    }
                };
                if let Some((ip, net)) = outside {
                    bail!(
                        "bridge {bridge_name} kept endpoint {} at {ip}, outside {net}: attach with its old subnets, or run netbr detach --bridge {bridge_name} without --keep-bridge",
                        ep.name,
                    );
                }
            }
        }
        // The previous release's layout is upgraded in place, its flows
        // carried over (`bpf::upgrade`); any other must match exactly.
        let upgrading = reattach && upgrade::is_previous_layout(&dir);
        let ct_max = if reattach {
            // Links are replaced below, so only the maps must match: a
            // newer netbr may attach programs the older one did not have.
            let pinned = layout::ct_max(&dir, &bridge_name)?;
            let changed: &[&str] = if upgrading {
                &upgrade::CHANGED_MAPS
            } else {
                &[]
            };
            layout::check_maps(&dir, &bridge_name, pinned, changed)?;
            let cfg = if upgrading {
                upgrade::pinned_config(&dir)
            } else {
                Datapath::from_pins(&dir).and_then(|dp| dp.config())
            }
            .map_err(|e| layout::refusal(&bridge_name, &format!("{e:#}")))?;
            if !upgrading {
                layout::check_version(&bridge_name, cfg.layout_version)?;
            }
            if cfg.subnet_addr != to_be32(subnet.network())
                || cfg.subnet_mask != to_be32(Ipv4Addr::from(subnet.mask()))
                || cfg.uplink_ifindex != uplink.index
            {
                bail!(
                    "bridge {bridge_name} is already attached with another subnet or uplink: run netbr detach --bridge {bridge_name} first"
                );
            }
            if req.ct_max.is_some_and(|n| n != pinned) {
                bail!(
                    "bridge {bridge_name} keeps {pinned} conntrack entries per table while attached: run netbr detach --bridge {bridge_name} first to change --ct-max"
                );
            }
            pinned
        } else {
            let n = req.ct_max.unwrap_or(CT_MAX_ENTRIES_DEFAULT);
            if n < 64 {
                bail!("--ct-max {n} is too small: use at least 64");
            }
            // Maps a `detach --keep-bridge` left must be of this layout too.
            layout::check_maps(&dir, &bridge_name, n, &[])?;
            n
        };
        let (host_min, host_max) = sysctl::local_port_range()?;

        // Everything is validated; from here on netbr changes the system.
        let bridge = match bridge {
            Some(b) => b,
            None => nl.create_bridge(&bridge_name).await?,
        };
        // A bridge whose MAC was never set takes the lowest of its ports'
        // MACs, and changes it as ports come and go. The programs compare
        // and write the gateway's MAC (`Config::bridge_mac`), so it is set
        // once to what it is, as Docker sets docker0's.
        if let Some(mac) = bridge.mac {
            nl.set_mac(bridge.index, mac).await?;
        }
        if let Some(mtu) = req.mtu.filter(|m| *m != bridge.mtu) {
            nl.set_mtu(bridge.index, mtu).await?;
        }
        let have = nl.addrs(Some(bridge.index)).await?;
        if !req.ipv6_only && !have.iter().any(|a| a.addr == gateway) {
            nl.add_addr(bridge.index, gateway, subnet.prefix).await?;
        }
        if let Some((subnet6, gateway6)) = net6 {
            if !nl
                .addrs6(bridge.index)
                .await?
                .contains(&(gateway6, subnet6.prefix))
            {
                nl.add_addr6(bridge.index, gateway6, subnet6.prefix).await?;
            }
        }
        nl.set_up(bridge.index).await?;
        if !req.ipv6_only {
            sysctl::write("net.ipv4.ip_forward", "1")?;
        }
        if net6.is_some() {
            forward_ipv6(&req.uplink)?;
        }
        pins::ensure_bpffs()?;
        pins::create_pin_dir(&dir)?;

        let endpoints = self.state.endpoints.clone();
        let state = self.state.clone();
        let upgrade = if upgrading {
            Some(upgrade::Upgrade::begin(&dir)?)
        } else {
            None
        };
        let result = async {
            let mut ebpf = attach::load(Some(&dir), ct_max, Some(flags))?;
            let mut dp = Datapath::from_ebpf(&mut ebpf)?;
            let mut timeouts = DEFAULT_TIMEOUTS;
            if reattach {
                timeouts = dp.config()?.timeouts;
            }
            for (state, secs) in &req.timeouts {
                timeouts[*state as usize] = *secs;
            }
            // Existing endpoints follow a changed --icc at once.
            for ep in &endpoints {
                nl.set_port_isolated(ep.host_ifindex, !req.icc).await?;
            }
            dp.set_config(&Config {
                configured: 1,
                layout_version: LAYOUT_VERSION,
                uplink_ifindex: uplink.index,
                bridge_ifindex: bridge.index,
                uplink_addr: to_be32(uplink_addr),
                gateway_addr: to_be32(gateway),
                subnet_addr: to_be32(subnet.network()),
                subnet_mask: to_be32(Ipv4Addr::from(subnet.mask())),
                snat_port_min: req.snat_ports.0,
                snat_port_max: req.snat_ports.1,
                host_port_min: host_min,
                host_port_max: host_max,
                timeouts,
                flags,
                bridge_mac: bridge.mac.unwrap_or_default(),
                _pad: [0; 2],
                ct_max,
                firewall_entries: 0,
                netns_cookie: crate::netns::current_cookie()?,
            })?;
            let mut net6 = net6.map_or_else(Net6::default, |(subnet6, gateway6)| {
                Net6::new(
                    &subnet6.network().octets(),
                    subnet6.prefix,
                    &gateway6.octets(),
                    &uplink6.map_or([0; 16], |a| a.octets()),
                )
            });
            // The ports a kept bridge's endpoints publish on one IPv6
            // address are in their kept map already.
            net6.one_address_mappings = super::ports::one_address_mappings(&state);
            dp.set_net6(&net6)?;
            // Kept endpoints' IPv6 addresses, both ways: a bridge attached
            // before the fast path carried IPv6 has them one way only.
            for ep in &endpoints {
                if let Some(ip6) = ep.ip6 {
                    let entry = netbr_common::maps::Endpoint::new(ep.host_ifindex, ep.mac, 0);
                    dp.set_endpoint6(to_be32(ep.ip), ip6, entry)?;
                }
            }
            dp.set_no_masquerade(&no_masquerade)?;
            dp.set_published_ports(&[])?;
            sync_local_addrs(&nl, &mut dp).await?;
            super::firewall::install_all(&mut dp, &state)?;
            let carried = match &upgrade {
                Some(u) => Some(u.restore(&mut dp, false)?),
                None => None,
            };
            attach::attach_all(&mut ebpf, &dir, &req.uplink, &bridge_name)?;
            crate::bpf::pacing::pin_programs(&mut ebpf, &dir)?;
            crate::bpf::veth::pin_endpoint_program(&mut ebpf, &dir)?;
            // Limits first: a policer's link goes ahead of the endpoint
            // program's on the same hook.
            super::limits::install_all(&dir, &mut dp, &endpoints).await?;
            for ep in &endpoints {
                crate::bpf::veth::link_endpoint(&dir, &ep.host_ifname)?;
            }
            if req.xdp {
                for ep in &endpoints {
                    super::endpoint::accept_xdp_frames(ep)?;
                }
                attach::attach_xdp(&mut ebpf, &dir, uplink.index)?;
            } else {
                attach::detach_xdp(&dir)?;
            }
            if let Some(u) = &upgrade {
                // Flows the old programs opened while the first copy ran.
                u.restore(&mut dp, true)?;
            }
            anyhow::Ok(carried)
        }
        .await;
        let upgraded_flows = match result {
            Ok(carried) => carried,
            Err(e) => {
                if let Some(u) = upgrade {
                    u.abandon();
                }
                if !reattach {
                    // Pins a `detach --keep-bridge` left are the user's; keep them.
                    for err in attach::remove_pins(&dir, &kept) {
                        log::warn!("{err:#}");
                    }
                }
                return Err(e);
            }
        };
        let (docker_network, docker_host_ip) =
            self.state.network.as_ref().map_or((None, None), |n| {
                (n.docker_network.clone(), n.docker_host_ip)
            });
        self.state.network = Some(Network {
            subnet: subnet.to_string(),
            gateway,
            subnet6: net6.map(|(s, _)| s.to_string()),
            gateway6: net6.map(|(_, g)| g),
            ipv6_only: req.ipv6_only,
            uplink: req.uplink.clone(),
            docker_network,
            docker_host_ip,
        });
        self.commit()?;
        Ok(AttachReport {
            reattached: reattach,
            gateway,
            prefix: subnet.prefix,
            gateway6: net6.map(|(s, g)| (g, s.prefix)),
            uplink6,
            uplink_addr,
            service_nat,
            upgraded_flows,
        })
    }

    /// The IPv6 subnet and gateway the bridge is to have: the request's,
    /// else (a re-attach that names none) the ones it was attached with.
    /// A re-attach may not change them, as it may not change IPv4's.
    fn ipv6_network(
        &self,
        req: &AttachRequest,
        uplink_addrs6: &[(Ipv6Addr, u8)],
    ) -> Result<Option<(Cidr6, Ipv6Addr)>> {
        let attached = self.state.network.as_ref().and_then(|n| {
            let subnet: Cidr6 = n.subnet6.as_deref()?.parse().ok()?;
            Some((subnet, n.gateway6?))
        });
        let Some(asked) = req.subnet6 else {
            return Ok(attached);
        };
        let subnet = Cidr6 {
            addr: asked.network(),
            prefix: asked.prefix,
        };
        let gateway = req
            .gateway6
            .unwrap_or_else(|| Ipv6Addr::from(u128::from(subnet.network()) + 1));
        if !subnet.is_host(gateway) {
            bail!("gateway {gateway} is not a host address of {subnet}");
        }
        if let Some((s, g)) = attached.filter(|a| *a != (subnet, gateway)) {
            if self.is_attached() {
                bail!(
                    "bridge {} is already attached with IPv6 subnet {s} (gateway {g}): run netbr detach --bridge {} first to change it",
                    self.bridge,
                    self.bridge
                );
            }
        }
        for &(addr, prefix) in uplink_addrs6 {
            let net = Cidr6 { addr, prefix };
            if net.overlaps(&subnet) {
                bail!(
                    "subnet {subnet} overlaps uplink {}'s {net}: choose another IPv6 --subnet",
                    req.uplink
                );
            }
        }
        Ok(Some((subnet, gateway)))
    }

    /// Removes the datapath, and unless `keep_bridge` the endpoints, the
    /// bridge and the state. Keeps going past failures and reports them
    /// all, so a half-made bridge never blocks its own teardown.
    pub async fn detach(mut self, keep_bridge: bool) -> Result<Vec<anyhow::Error>> {
        let nl = Netlink::connect()?;
        let bridge = nl.link(&self.bridge).await?;
        if !self.pins.exists() && bridge.is_none() && self.state.endpoints.is_empty() {
            let _ = self.remove_state_dir();
            bail!(
                "bridge {} is not attached in this network namespace: nothing to detach",
                self.bridge
            );
        }
        let mut errors = Vec::new();
        if !keep_bridge {
            for ep in std::mem::take(&mut self.state.endpoints) {
                errors.extend(remove_endpoint_objects(&nl, &ep).await);
            }
        }
        let keep: &[&str] = if keep_bridge {
            &attach::KEPT_WITH_BRIDGE
        } else {
            &[]
        };
        errors.extend(attach::remove_pins(&self.pins, keep));
        if keep_bridge {
            if let Err(e) = self.commit() {
                errors.push(e);
            }
        } else {
            if let Some(b) = bridge {
                if let Err(e) = nl.del_link(b.index).await {
                    errors.push(e);
                }
            }
            if let Err(e) = self.remove_state_dir() {
                errors.push(e);
            }
        }
        Ok(errors)
    }
}
