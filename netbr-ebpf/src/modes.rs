//! The modes `attach` fixed at load time, and what they say about which
//! flows the fast path may carry: one answer for TC's redirects and XDP.

use aya_ebpf::Global;
use netbr_common::{
    conntrack::{NAT_NONE, NAT_SNAT},
    maps::{Config, CFG_HOST_NAT, FLAGS_FROM_MAP},
};

/// The modes `attach` fixed at load time (`netbr_common::maps::GLOBAL_FLAGS`).
#[unsafe(no_mangle)]
static NB_LOAD_FLAGS: Global<u32> = Global::new(FLAGS_FROM_MAP);

/// Whether the mode `flag` (`CFG_*`) is on. A constant to the verifier
/// when the loader fixed the flags, so a mode that is off costs nothing,
/// not even its code.
#[inline(always)]
pub fn mode(cfg: &Config, flag: u32) -> bool {
    let fixed = NB_LOAD_FLAGS.load();
    if fixed == FLAGS_FROM_MAP {
        cfg.has(flag)
    } else {
        fixed & flag != 0
    }
}

/// Whether the fast path (a TC redirect or XDP) may carry packets of a
/// flow of kind `nat` (`NAT_*`). Direct routing's packets are the host
/// firewall's to judge; beside the host's own NAT (kube-proxy), a
/// masquerade flow may carry a Service's translation, which netfilter must
/// see every packet of to reverse.
#[inline(always)]
pub fn fast_path_carries(cfg: &Config, nat: u8) -> bool {
    nat != NAT_NONE && !(nat == NAT_SNAT && mode(cfg, CFG_HOST_NAT))
}
