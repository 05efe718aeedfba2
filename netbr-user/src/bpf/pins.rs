//! Where a bridge's datapath is pinned, and bpffs itself.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::programs::links::PinnedLink;

/// Where the calling thread's namespace pins `bridge`'s datapath.
pub fn pin_dir(bridge: &str) -> Result<PathBuf> {
    Ok(Path::new(netbr_common::maps::PIN_ROOT).join(crate::netns::scoped_name(bridge)?))
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS: &str = "/sys/fs/bpf";

/// Names of the pinned TCX links, one per attach point.
pub const LINK_UPLINK_INGRESS: &str = "link_up_in";
pub const LINK_UPLINK_EGRESS: &str = "link_up_out";
pub const LINK_BRIDGE_INGRESS: &str = "link_br_in";
pub const LINK_CONNECT4: &str = "link_connect4";
pub const LINK_SENDMSG4: &str = "link_sendmsg4";
pub const LINK_RECVMSG4: &str = "link_recvmsg4";
pub const LINK_GETPEER4: &str = "link_getpeer4";
pub const LINK_BIND4: &str = "link_bind4";
pub const LINK_CONNECT6: &str = "link_connect6";
pub const LINK_SENDMSG6: &str = "link_sendmsg6";
pub const LINK_RECVMSG6: &str = "link_recvmsg6";
pub const LINK_GETPEER6: &str = "link_getpeer6";
pub const LINK_BIND6: &str = "link_bind6";
/// The uplink's XDP link, present only with `attach --xdp`.
pub const LINK_XDP: &str = "link_xdp";
pub const LINKS: [&str; 14] = [
    LINK_UPLINK_INGRESS,
    LINK_UPLINK_EGRESS,
    LINK_BRIDGE_INGRESS,
    LINK_CONNECT4,
    LINK_SENDMSG4,
    LINK_RECVMSG4,
    LINK_GETPEER4,
    LINK_BIND4,
    LINK_CONNECT6,
    LINK_SENDMSG6,
    LINK_RECVMSG6,
    LINK_GETPEER6,
    LINK_BIND6,
    LINK_XDP,
];

/// Pins of the two pacing programs and of the endpoint program, and the
/// prefixes of their per-endpoint links, in the bridge's pin directory.
pub const PROG_PIN_PACE_EGRESS: &str = "prog_pace_out";
pub const PROG_PIN_PACE_INGRESS: &str = "prog_pace_in";
pub const PROG_PIN_ENDPOINT_INGRESS: &str = "prog_ep_in";
const PACE_LINK_PREFIX: &str = "pace_";
const ENDPOINT_LINK_PREFIX: &str = "ep_";

/// Whether a pin directory entry is a program or link of an endpoint's veth
/// (so `detach` removes it).
pub fn is_veth_pin(name: &str) -> bool {
    name.starts_with(PACE_LINK_PREFIX)
        || name.starts_with(ENDPOINT_LINK_PREFIX)
        || [
            PROG_PIN_PACE_EGRESS,
            PROG_PIN_PACE_INGRESS,
            PROG_PIN_ENDPOINT_INGRESS,
        ]
        .contains(&name)
}

/// The pinned link of the endpoint program on an endpoint's veth.
pub fn endpoint_link(pins: &Path, host_ifname: &str) -> PathBuf {
    pins.join(format!("{ENDPOINT_LINK_PREFIX}{host_ifname}"))
}

/// The pinned link of an endpoint's pacing in direction `dir`.
pub fn pacing_link(pins: &Path, host_ifname: &str, dir: u8) -> PathBuf {
    let side = if dir == netbr_common::pacing::PACE_EGRESS {
        "out"
    } else {
        "in"
    };
    pins.join(format!("{PACE_LINK_PREFIX}{host_ifname}_{side}"))
}

/// Creates a bridge's pin directory and the netbr root above it. A detach
/// elsewhere removes the root once it is empty, and may do so between the
/// two mkdirs: then the root is simply made again.
pub fn create_pin_dir(dir: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::create_dir_all(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
            r => return r.with_context(|| format!("creating {}", dir.display())),
        }
    }
}

/// Mounts bpffs on /sys/fs/bpf when it is missing (a fresh machine).
pub fn ensure_bpffs() -> Result<()> {
    if is_bpffs(BPFFS) {
        return Ok(());
    }
    let fs = std::ffi::CString::new("bpf")?;
    let target = std::ffi::CString::new(BPFFS)?;
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
    }
    Ok(())
}

fn is_bpffs(path: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid systems). The sock_addr programs are
/// attached to its root so they see every process; they act only for the
/// attached namespace.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no cgroup v2 hierarchy is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) and attach again"
            )
        })
}

/// Removes a pinned link so that its program is detached when this returns.
/// Unlinking the pin alone drops the link's last reference in bpffs's RCU
/// callback, and `bpf_link_put` then frees (detaches) it from a workqueue
/// (since v6.5, commit ab5d47bd41b1 "bpf: Remove in_atomic() from
/// bpf_link_put()"): `detach` could return with the program still attached
/// (seen with XDP). Holding an fd across the unlink moves the last reference
/// to our `close`, which frees the link before the syscall returns.
pub fn unpin_link(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let removed = match PinnedLink::from_pin(path) {
        Ok(link) => link.unpin().map(drop),
        Err(_) => std::fs::remove_file(path),
    };
    removed.with_context(|| format!("removing {}", path.display()))
}
