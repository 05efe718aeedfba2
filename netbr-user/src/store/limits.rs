//! Bandwidth limits of endpoints: the state's `Limits` made real. Each
//! limited direction gets `fq` as the root qdisc of the device its packets
//! leave by, the pacing program on that device's TC egress, and its entry
//! in the pacing map; a direction without a limit gets none of them.
//!
//! Egress (what the container sends) is paced on the container's own
//! interface, inside its namespace: there its packets still belong to its
//! sockets, so TCP small queues slow a sender before the horizon drops
//! anything (crossing into the host namespace orphans them:
//! `skb_scrub_packet`), and traffic to other containers and to the host is
//! limited too. Ingress is paced on the host-side veth, which every path to
//! the container leaves by (`EP_PACED_INGRESS` keeps the fast path and XDP
//! on it).

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use aya::programs::TcAttachType;
use netbr_common::{
    maps::EP_PACED_INGRESS,
    pacing::{parse_rate, Pace, PaceKey, RateError, PACE_EGRESS, PACE_INGRESS, PACE_STAMP},
};

use super::{
    state::{EndpointState, Limit, Limits},
    Store,
};
use crate::{
    addr::to_be32,
    bpf::{datapath::Datapath, pacing, pins},
    netlink::Netlink,
    netns::NetnsGuard,
};

/// A rate as given on the command line: tc's units, or `none`.
pub fn parse_limit(text: &str) -> Result<Option<Limit>> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let rate = parse_rate(text).map_err(|e| match e {
        RateError::Malformed => anyhow::anyhow!(
            "rate {text:?} is not a number with one of tc's units (bit, kbit, mbit, gbit, bps, kbps, mbps...), nor none"
        ),
        RateError::OutOfRange => anyhow::anyhow!(
            "rate {text:?} is out of range: limits go from 8kbit to 1000000tbit"
        ),
    })?;
    Ok(Some(Limit { rate, burst: 0 }))
}

/// A limit in tc's notation, for listings.
pub fn format_rate(bits: u64) -> String {
    for (unit, scale) in [
        ("gbit", 1_000_000_000),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
    ] {
        if bits >= scale && bits.is_multiple_of(scale) {
            return format!("{}{unit}", bits / scale);
        }
    }
    format!("{bits}bit")
}

impl Store {
    /// Applies an endpoint's limits again, as once its interface is in its
    /// container (Docker's ProgramExternalConnectivity).
    pub async fn reapply_limits(&mut self, name: &str) -> Result<()> {
        let ep = self.endpoint(name)?.clone();
        if ep.limits == Limits::default() {
            return Ok(());
        }
        let mut dp = self.datapath()?;
        apply(&self.pins, &mut dp, &ep)
            .await
            .with_context(|| format!("limiting endpoint {name}"))
    }

    /// Sets an endpoint's limits, both directions at once (`None` lifts
    /// one). Nothing changes unless all of it can be applied.
    pub async fn set_limits(&mut self, name: &str, limits: Limits) -> Result<EndpointState> {
        let mut ep = self.endpoint(name)?.clone();
        if self.ipv6_only() && (limits.egress.is_some() || limits.ingress.is_some()) {
            bail!(
                "bridge {} is IPv6-only, and bandwidth limits pace IPv4 packets only so far: endpoint {name} would not be limited",
                self.bridge
            );
        }
        let mut dp = self.datapath()?;
        let previous = ep.limits;
        ep.limits = limits;
        if let Err(e) = apply(&self.pins, &mut dp, &ep).await {
            ep.limits = previous;
            let _ = apply(&self.pins, &mut dp, &ep).await;
            return Err(e.context(format!("limiting endpoint {name}")));
        }
        if let Some(slot) = self.state.endpoints.iter_mut().find(|e| e.name == name) {
            slot.limits = limits;
        }
        self.commit()?;
        Ok(ep)
    }
}

/// Puts every endpoint's limits in place, as after `attach` loaded new
/// programs: links move to them, map entries are made again.
pub async fn install_all(
    pins: &Path,
    dp: &mut Datapath,
    endpoints: &[EndpointState],
) -> Result<()> {
    for ep in endpoints.iter().filter(|e| e.limits != Limits::default()) {
        apply(pins, dp, ep)
            .await
            .with_context(|| format!("restoring the limits of endpoint {}", ep.name))?;
    }
    Ok(())
}

/// Removes what an endpoint's limits put in the datapath and the pin
/// directory, for an endpoint on its way out (its veth, and with it the
/// qdiscs, goes next).
pub fn forget(pins: &Path, dp: &mut Datapath, ep: &EndpointState) -> Result<()> {
    for dir in [PACE_EGRESS, PACE_INGRESS] {
        let _ = dp.pacing.remove(&key(ep, dir));
        pacing::detach(&pins::pacing_link(pins, &ep.host_ifname, dir))?;
    }
    Ok(())
}

/// Makes the kernel match `ep.limits`, idempotently.
async fn apply(pins: &Path, dp: &mut Datapath, ep: &EndpointState) -> Result<()> {
    // Ingress: the flag last on the way up, first on the way down, so the
    // fast path only ever redirects to a veth that paces.
    let nl = Netlink::connect()?;
    let link = pins::pacing_link(pins, &ep.host_ifname, PACE_INGRESS);
    let mut fq = None;
    match ep.limits.ingress {
        Some(limit) => {
            claim_root_qdisc(&nl, ep.host_ifindex, &ep.host_ifname).await?;
            let has_fq = nl.set_fq_root(ep.host_ifindex).await?;
            fq = Some(has_fq);
            pacing::attach(
                pins,
                PACE_INGRESS,
                &ep.host_ifname,
                TcAttachType::Egress,
                &link,
            )?;
            set_pace(dp, ep, PACE_INGRESS, limit, has_fq)?;
            set_endpoint_flag(dp, ep, true)?;
        }
        None => {
            set_endpoint_flag(dp, ep, false)?;
            let _ = dp.pacing.remove(&key(ep, PACE_INGRESS));
            pacing::detach(&link)?;
            release_root_qdisc(&nl, ep.host_ifindex).await?;
        }
    }
    let link = pins::pacing_link(pins, &ep.host_ifname, PACE_EGRESS);
    let Some(limit) = ep.limits.egress else {
        let _ = dp.pacing.remove(&key(ep, PACE_EGRESS));
        pacing::detach(&link)?;
        // The namespace may be gone with the container, its qdisc too.
        if let Ok(inner) = Netlink::connect_in(&ep.netns) {
            if let Some(l) = inner.link(&ep.ifname).await? {
                release_root_qdisc(&inner, l.index).await?;
            }
        }
        return Ok(());
    };
    let has_fq = match fq {
        Some(known) => known,
        None => {
            claim_root_qdisc(&nl, ep.host_ifindex, &ep.host_ifname).await?;
            kernel_has_fq(&nl, ep.host_ifindex).await?
        }
    };
    if !has_fq {
        // Policing drops. Dropped on the container's own device a TCP
        // sender takes it for local congestion and stalls until a timer
        // fires; on the host side it is a loss it recovers from at once.
        // No need for the container's namespace, either.
        pacing::attach(
            pins,
            PACE_EGRESS,
            &ep.host_ifname,
            TcAttachType::Ingress,
            &link,
        )?;
    } else if ep.netns.as_os_str().is_empty() {
        // Not in its container yet (Docker moves the interface after Join):
        // `Store::reapply_limits` paces it once it is there.
        return Ok(());
    } else {
        let inner = Netlink::connect_in(&ep.netns)?;
        let index = inner.require_link(&ep.ifname).await?.index;
        claim_root_qdisc(&inner, index, &ep.ifname).await?;
        inner.set_fq_root(index).await?;
        let _in = NetnsGuard::enter(&ep.netns)?;
        pacing::attach(pins, PACE_EGRESS, &ep.ifname, TcAttachType::Egress, &link)?;
    }
    set_pace(dp, ep, PACE_EGRESS, limit, has_fq)
}

/// Makes sure netbr may take the interface's root qdisc: none, a veth's
/// default `noqueue`, or the `fq` netbr puts there. Any other is the
/// operator's (the seeds' `tbf`, say), and netbr will not replace it.
async fn claim_root_qdisc(nl: &Netlink, index: u32, ifname: &str) -> Result<()> {
    match nl.root_qdisc(index).await?.as_deref() {
        None | Some("noqueue") | Some("fq") => Ok(()),
        Some(kind) => bail!(
            "{ifname} has a {kind} root qdisc that a netbr limit would replace: remove it (tc qdisc del dev {ifname} root) and set the limit again"
        ),
    }
}

/// Removes the interface's root qdisc if it is the `fq` netbr put there.
async fn release_root_qdisc(nl: &Netlink, index: u32) -> Result<()> {
    if nl.root_qdisc(index).await?.as_deref() == Some("fq") {
        nl.clear_root_qdisc(index).await?;
    }
    Ok(())
}

/// Whether the kernel has `fq`: tried on the endpoint's host-side veth,
/// whose root qdisc is put back as it was (none) afterwards.
async fn kernel_has_fq(nl: &Netlink, host_ifindex: u32) -> Result<bool> {
    let has = nl.set_fq_root(host_ifindex).await?;
    if has {
        nl.clear_root_qdisc(host_ifindex).await?;
    }
    Ok(has)
}

fn key(ep: &EndpointState, dir: u8) -> PaceKey {
    PaceKey {
        addr: to_be32(ep.ip),
        dir,
        _pad: [0; 3],
    }
}

/// Writes a direction's limit, keeping the clock and drop count of one
/// already there, so a changed rate applies from the next packet on. With
/// `fq` on the device the datapath paces, without it it polices.
fn set_pace(dp: &mut Datapath, ep: &EndpointState, dir: u8, limit: Limit, fq: bool) -> Result<()> {
    let k = key(ep, dir);
    let mode = if fq { PACE_STAMP } else { 0 };
    let mut pace = Pace::new(limit.rate, limit.burst, mode);
    if let Ok(old) = dp.pacing.get(&k, 0) {
        pace.clock_ns = old.clock_ns;
        pace.dropped = old.dropped;
    }
    dp.pacing
        .insert(k, pace, 0)
        .context("writing the pacing map")
}

fn set_endpoint_flag(dp: &mut Datapath, ep: &EndpointState, paced: bool) -> Result<()> {
    let ip = to_be32(ep.ip);
    let mut entry = dp
        .endpoints
        .get(&ip, 0)
        .with_context(|| format!("endpoint {} has no datapath entry", ep.name))?;
    if paced {
        entry.flags |= EP_PACED_INGRESS;
    } else {
        entry.flags &= !EP_PACED_INGRESS;
    }
    dp.endpoints
        .insert(ip, entry, 0)
        .context("writing the endpoint map")
}

/// A limited direction as the datapath holds it: packets dropped at the
/// horizon, and whether it paces (`fq`) or polices.
pub fn datapath_view(dp: &Datapath, ep: &EndpointState, dir: u8) -> Option<(u64, &'static str)> {
    let p = dp.pacing.get(&key(ep, dir), 0).ok()?;
    Some((
        p.dropped,
        if p.mode == PACE_STAMP {
            "edt"
        } else {
            "police"
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_print_in_tc_units() {
        assert_eq!(parse_limit("none").unwrap(), None);
        assert_eq!(parse_limit("20mbit").unwrap().unwrap().rate, 20_000_000);
        let err = parse_limit("20 mbps please").unwrap_err().to_string();
        assert!(err.contains("tc's units"), "{err}");
        let err = parse_limit("1bit").unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
        assert_eq!(format_rate(20_000_000), "20mbit");
        assert_eq!(format_rate(1_000_000_000), "1gbit");
        assert_eq!(format_rate(64_000), "64kbit");
        assert_eq!(format_rate(1_500_000), "1500kbit");
        assert_eq!(format_rate(12_345), "12345bit");
    }
}
