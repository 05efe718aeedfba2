//! Delivering a translated packet straight to a container's veth.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use netbr_common::{counters::Reason, maps::Config};

use crate::maps::ENDPOINTS;

/// Redirects the frame to the endpoint that owns `daddr`, addressed from the
/// bridge to the container's MAC. Used for hairpin flows: sending them back
/// through routing would put a host address as source on a routed packet,
/// which the kernel drops as martian.
#[inline(always)]
pub fn to_endpoint(ctx: &TcContext, daddr: u32, cfg: &Config) -> Result<i32, Reason> {
    // SAFETY: read-only copy out of the map value.
    let ep = unsafe { ENDPOINTS.get(&daddr) }.ok_or(Reason::DropNoEndpoint)?;
    let (mac, ifindex) = (ep.mac, ep.host_ifindex);
    ctx.store(0, &mac, 0).map_err(|_| Reason::DropRewrite)?;
    ctx.store(6, &cfg.bridge_mac, 0)
        .map_err(|_| Reason::DropRewrite)?;
    // SAFETY: the helper has no preconditions; it returns TC_ACT_REDIRECT.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}
