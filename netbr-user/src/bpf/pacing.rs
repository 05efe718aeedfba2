//! The pacing programs: pinned by `attach`, then attached per limited
//! endpoint by whichever command sets its limits, through pinned TCX links
//! named after the endpoint's host-side veth.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    programs::{LinkOrder, TcAttachType},
    Ebpf,
};
use netbr_common::{
    maps::{PROG_PACE_EGRESS, PROG_PACE_INGRESS},
    pacing::PACE_EGRESS,
};

use super::pins::{PROG_PIN_PACE_EGRESS, PROG_PIN_PACE_INGRESS};
use super::veth;

/// Loads both programs and pins them, replacing the pins of an earlier
/// attach, so endpoints limited later attach this object's programs.
pub fn pin_programs(ebpf: &mut Ebpf, pins: &Path) -> Result<()> {
    veth::pin_program(ebpf, PROG_PACE_EGRESS, pins, PROG_PIN_PACE_EGRESS)?;
    veth::pin_program(ebpf, PROG_PACE_INGRESS, pins, PROG_PIN_PACE_INGRESS)
}

/// Attaches the pacing program of direction `dir` to `hook` of `ifname` in
/// the calling thread's network namespace, or moves an existing link to the
/// program pinned now (a re-attach loaded new ones). First among the
/// device's links: on the host veth's ingress, the policer must see a
/// packet before the fast path's `nb_ep_in` sends it on.
pub fn attach(pins: &Path, dir: u8, ifname: &str, hook: TcAttachType, link: &Path) -> Result<()> {
    let pin = if dir == PACE_EGRESS {
        PROG_PIN_PACE_EGRESS
    } else {
        PROG_PIN_PACE_INGRESS
    };
    veth::link_pinned(pins, pin, ifname, hook, LinkOrder::first(), link)
        .with_context(|| format!("attaching the pacing program to {ifname}"))
}

/// Detaches an endpoint's pacing in one direction, if attached.
pub fn detach(link: &Path) -> Result<()> {
    super::pins::unpin_link(link)
}
