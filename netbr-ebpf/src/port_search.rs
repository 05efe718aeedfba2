//! The SNAT port search's state: its own module, below both the search
//! (`nat`) and the per-CPU map that holds it (`maps::SEARCH`).

use aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1;
use netbr_common::conntrack::FlowKey;

/// The port search's state, in a per-CPU map rather than on the caller's
/// stack (see `nat::probe_port`).
#[repr(C)]
pub struct PortSearch {
    /// The translated tuple; `sport` is the candidate.
    pub xlat: FlowKey,
    pub seed: u32,
    /// The packet's own source port (host order), tried first when it may be kept.
    pub own_port: u16,
    pub found: u16,
    /// Probes made so far; the one that found the port is `attempt`.
    pub next: u32,
    /// Which probe found the port: 0 for the own port.
    pub attempt: u32,
    /// 1: the own port is tried whatever its range (the host's own flows).
    pub keep_own: u16,
    /// 1: candidates a host socket would take the peer's replies for are
    /// skipped (container flows; a host flow's own socket is not a clash).
    pub check_sockets: u16,
    /// The socket lookup's tuple: here, not on the callback's stack, whose
    /// frame with its callers' must fit in 512 bytes.
    pub tuple: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
}
