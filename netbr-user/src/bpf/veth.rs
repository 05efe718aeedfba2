//! Programs on endpoints' host-side veths: loaded and pinned once by
//! `attach`, then linked per endpoint through pinned TCX links named after
//! its veth, so any command (CLI, CNI plugin, Docker driver) can link a new
//! endpoint without the object. Pacing's programs go the same way
//! ([`super::pacing`]).

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
use netbr_common::maps::PROG_ENDPOINT_INGRESS;

use super::pins::{endpoint_link, unpin_link, PROG_PIN_ENDPOINT_INGRESS};

/// Loads the object's program `name` and pins it at `pin` in `pins`,
/// replacing the pin of an earlier attach, so endpoints linked later get
/// this object's program.
pub fn pin_program(ebpf: &mut Ebpf, name: &str, pins: &Path, pin: &str) -> Result<()> {
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
        .with_context(|| format!("pinning {name}"))
}

/// Links the program pinned at `pin` to `hook` of `ifname` in the calling
/// thread's network namespace, or moves an existing `link` to it (a
/// re-attach pinned a new one). `order` places a new link among the
/// device's others.
pub fn link_pinned(
    pins: &Path,
    pin: &str,
    ifname: &str,
    hook: TcAttachType,
    order: LinkOrder,
    link: &Path,
) -> Result<()> {
    let mut program = SchedClassifier::from_pin(pins.join(pin))
        .with_context(|| format!("opening {pin}: attach the bridge again"))?;
    if link.exists() {
        let old = PinnedLink::from_pin(link).context("opening the pinned link")?;
        match program.attach_to_link(FdLink::from(old).try_into()?) {
            Ok(id) => {
                drop(program.take_link(id)?);
                return Ok(());
            }
            // The device went away (and the link with it): start afresh.
            Err(_) => unpin_link(link)?,
        }
    }
    let id = program
        .attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(order))
        .with_context(|| format!("attaching {pin} to {ifname}"))?;
    let fd: FdLink = program.take_link(id)?.try_into()?;
    fd.pin(link).context("pinning the link")?;
    Ok(())
}

/// Pins the endpoint program (`nb_ep_in`) of a freshly loaded object.
pub fn pin_endpoint_program(ebpf: &mut Ebpf, pins: &Path) -> Result<()> {
    pin_program(ebpf, PROG_ENDPOINT_INGRESS, pins, PROG_PIN_ENDPOINT_INGRESS)
}

/// Links the endpoint program to the ingress of an endpoint's host-side
/// veth, after whatever is there (a policer of its limits must see every
/// packet first).
pub fn link_endpoint(pins: &Path, host_ifname: &str) -> Result<()> {
    link_pinned(
        pins,
        PROG_PIN_ENDPOINT_INGRESS,
        host_ifname,
        TcAttachType::Ingress,
        LinkOrder::last(),
        &endpoint_link(pins, host_ifname),
    )
    .with_context(|| format!("linking the fast path to {host_ifname}"))
}

/// Unlinks the endpoint program from an endpoint's veth, if linked.
pub fn unlink_endpoint(pins: &Path, host_ifname: &str) -> Result<()> {
    unpin_link(&endpoint_link(pins, host_ifname))
}
