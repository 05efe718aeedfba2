//! The pacing programs: pinned by `attach`, then attached per limited
//! endpoint by whichever command sets its limits, through pinned TCX links
//! named after the endpoint's host-side veth.

use std::path::{Path, PathBuf};

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

/// Pins of the two programs and prefix of the per-endpoint links, in the
/// bridge's pin directory.
const PROG_PIN_EGRESS: &str = "prog_pace_out";
const PROG_PIN_INGRESS: &str = "prog_pace_in";
const LINK_PREFIX: &str = "pace_";

/// Whether a pin directory entry belongs to pacing (so `detach` removes it).
pub fn is_pacing_pin(name: &str) -> bool {
    name.starts_with(LINK_PREFIX) || name == PROG_PIN_EGRESS || name == PROG_PIN_INGRESS
}

/// The pinned link of an endpoint's pacing in direction `dir`.
pub fn link_path(pins: &Path, host_ifname: &str, dir: u8) -> PathBuf {
    let side = if dir == PACE_EGRESS { "out" } else { "in" };
    pins.join(format!("{LINK_PREFIX}{host_ifname}_{side}"))
}

/// Loads both programs and pins them, replacing the pins of an earlier
/// attach, so endpoints limited later attach this object's programs.
pub fn pin_programs(ebpf: &mut Ebpf, pins: &Path) -> Result<()> {
    for (name, pin) in [
        (PROG_PACE_EGRESS, PROG_PIN_EGRESS),
        (PROG_PACE_INGRESS, PROG_PIN_INGRESS),
    ] {
        let program: &mut SchedClassifier = super::attach::program(ebpf, name)?;
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
        PROG_PIN_EGRESS
    } else {
        PROG_PIN_INGRESS
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
