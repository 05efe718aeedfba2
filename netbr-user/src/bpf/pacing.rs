//! The pacing programs: pinned by `attach`, then attached per limited
//! endpoint by whichever command sets its limits, through pinned TCX links
//! named after the endpoint's host-side veth.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
        LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use netbr_common::{
    maps::{PROG_PACE_EGRESS, PROG_PACE_INGRESS},
    pacing::PACE_EGRESS,
};

use super::pins::{PROG_PIN_PACE_EGRESS, PROG_PIN_PACE_INGRESS};

/// Loads both programs and pins them, replacing the pins of an earlier
/// attach, so endpoints limited later attach this object's programs.
pub fn pin_programs(ebpf: &mut Ebpf, pins: &Path) -> Result<()> {
    for (name, pin) in [
        (PROG_PACE_EGRESS, PROG_PIN_PACE_EGRESS),
        (PROG_PACE_INGRESS, PROG_PIN_PACE_INGRESS),
    ] {
        let program: &mut SchedClassifier = super::program(ebpf, name)?;
        program
            .load()
            .with_context(|| format!("verifying {name}"))?;
        let path = pins.join(pin);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("replacing {}", path.display()))?;
        }
        program
            .pin(&path)
            .with_context(|| format!("pinning {name}"))?;
    }
    Ok(())
}

/// Attaches the pacing program of direction `dir` to `hook` of `ifname` in
/// the calling thread's network namespace, or moves an existing link to the
/// program pinned now (a re-attach loaded new ones).
pub fn attach(pins: &Path, dir: u8, ifname: &str, hook: TcAttachType, link: &Path) -> Result<()> {
    let pin = if dir == PACE_EGRESS {
        PROG_PIN_PACE_EGRESS
    } else {
        PROG_PIN_PACE_INGRESS
    };
    let mut program = SchedClassifier::from_pin(pins.join(pin))
        .with_context(|| format!("opening {pin}: attach the bridge again"))?;
    if link.exists() {
        let old = PinnedLink::from_pin(link).context("opening the pinned pacing link")?;
        match program.attach_to_link(FdLink::from(old).try_into()?) {
            Ok(id) => {
                drop(program.take_link(id)?);
                return Ok(());
            }
            // The device went away (and the link with it): start afresh.
            Err(_) => super::pins::unpin_link(link)?,
        }
    }
    let id = program
        .attach_with_options(
            ifname,
            hook,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| format!("attaching the pacing program to {ifname}"))?;
    let fd: FdLink = program.take_link(id)?.try_into()?;
    fd.pin(link).context("pinning the pacing link")?;
    Ok(())
}

/// Detaches an endpoint's pacing in one direction, if attached.
pub fn detach(link: &Path) -> Result<()> {
    super::pins::unpin_link(link)
}
