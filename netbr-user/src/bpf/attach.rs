//! Loading the object with its maps pinned, attaching the TC programs through
//! pinned TCX links, and undoing it all.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink, PinnedLink},
        tc::TcAttachOptions,
        xdp::XdpLink,
        CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use netbr_common::{
    layout::PINNED,
    maps::{
        FLAGS_FROM_MAP, GLOBAL_FLAGS, MAP_COLLECTOR, MAP_CONNTRACK, MAP_CONNTRACK_NEW, PROG_BIND4,
        PROG_BIND6, PROG_BRIDGE_INGRESS, PROG_CONNECT4, PROG_CONNECT6, PROG_GETPEER4,
        PROG_GETPEER6, PROG_RECVMSG4, PROG_RECVMSG6, PROG_SENDMSG4, PROG_SENDMSG6,
        PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS, PROG_XDP,
    },
    net6::{MAP_CONNTRACK6, MAP_CONNTRACK6_NEW},
};

use super::{
    pins::{
        cgroup2_root, is_veth_pin, unpin_link, LINKS, LINK_BIND4, LINK_BIND6, LINK_BRIDGE_INGRESS,
        LINK_CONNECT4, LINK_CONNECT6, LINK_GETPEER4, LINK_GETPEER6, LINK_RECVMSG4, LINK_RECVMSG6,
        LINK_SENDMSG4, LINK_SENDMSG6, LINK_UPLINK_EGRESS, LINK_UPLINK_INGRESS, LINK_XDP,
    },
    program,
};

/// Loads the object. With `pin_dir`, every map is pinned there, and maps
/// already pinned by an earlier attach are reused, so flows and mappings
/// survive a re-attach. `flags` fixes the `CFG_*` modes in the programs
/// (`GLOBAL_FLAGS`), so the verifier prunes what is off; without, they
/// follow the config map.
pub fn load(pin_dir: Option<&Path>, ct_max: u32, flags: Option<u32>) -> Result<Ebpf> {
    if let Some(dir) = pin_dir {
        // The collector's timer calls back into the programs that armed
        // it: a new load gets a new timer. The old one stops once its map
        // has no pin and no fd left.
        let old = dir.join(MAP_COLLECTOR);
        if old.exists() {
            std::fs::remove_file(&old).with_context(|| format!("replacing {}", old.display()))?;
        }
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_CONNTRACK, ct_max);
    loader.map_max_entries(MAP_CONNTRACK_NEW, ct_max);
    loader.map_max_entries(MAP_CONNTRACK6, ct_max);
    loader.map_max_entries(MAP_CONNTRACK6_NEW, ct_max);
    let flags = flags.unwrap_or(FLAGS_FROM_MAP);
    loader.override_global(GLOBAL_FLAGS, &flags, true);
    let paths: Vec<_> = match pin_dir {
        Some(dir) => PINNED.iter().map(|m| (m.name, dir.join(m.name))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .load(super::OBJECT)
        .context("loading the netbr BPF programs")
}

/// Attaches the three TC programs. Where a pinned link exists (a re-attach)
/// the program behind it is swapped atomically with BPF_LINK_UPDATE, so no
/// packet sees a moment without a program.
pub fn attach_all(ebpf: &mut Ebpf, dir: &Path, uplink: &str, bridge: &str) -> Result<()> {
    for (prog, iface, hook, link) in [
        (
            PROG_UPLINK_INGRESS,
            uplink,
            TcAttachType::Ingress,
            LINK_UPLINK_INGRESS,
        ),
        (
            PROG_UPLINK_EGRESS,
            uplink,
            TcAttachType::Egress,
            LINK_UPLINK_EGRESS,
        ),
        (
            PROG_BRIDGE_INGRESS,
            bridge,
            TcAttachType::Ingress,
            LINK_BRIDGE_INGRESS,
        ),
    ] {
        attach_one(ebpf, prog, iface, hook, &dir.join(link))
            .with_context(|| format!("attaching {prog} to {iface}"))?;
    }
    let root = cgroup2_root()?;
    let cgroup =
        std::fs::File::open(&root).with_context(|| format!("opening cgroup {}", root.display()))?;
    for (prog, link) in [
        (PROG_CONNECT4, LINK_CONNECT4),
        (PROG_SENDMSG4, LINK_SENDMSG4),
        (PROG_RECVMSG4, LINK_RECVMSG4),
        (PROG_GETPEER4, LINK_GETPEER4),
        (PROG_BIND4, LINK_BIND4),
        (PROG_CONNECT6, LINK_CONNECT6),
        (PROG_SENDMSG6, LINK_SENDMSG6),
        (PROG_RECVMSG6, LINK_RECVMSG6),
        (PROG_GETPEER6, LINK_GETPEER6),
        (PROG_BIND6, LINK_BIND6),
    ] {
        attach_cgroup_one(ebpf, prog, &cgroup, &dir.join(link))
            .with_context(|| format!("attaching {prog} to cgroup {}", root.display()))?;
    }
    Ok(())
}

/// Attaches a sock_addr program to the cgroup. On a re-attach the new link
/// goes in before the old one is released, so no connect() ever misses a
/// rewrite; running both at once is harmless, since a rewritten destination
/// is a container address, which no mapping matches.
fn attach_cgroup_one(
    ebpf: &mut Ebpf,
    prog: &str,
    cgroup: &std::fs::File,
    link_path: &Path,
) -> Result<()> {
    let program: &mut CgroupSockAddr = program(ebpf, prog)?;
    program
        .load()
        .with_context(|| format!("verifying {prog}"))?;
    let old = if link_path.exists() {
        Some(PinnedLink::from_pin(link_path).context("opening the pinned link")?)
    } else {
        None
    };
    // BPF links on cgroups always allow several programs, whatever the mode.
    let id = program.attach(cgroup, CgroupAttachMode::Single)?;
    let link: FdLink = program.take_link(id)?.try_into()?;
    if let Some(old) = old {
        drop(old.unpin().context("unpinning the previous link")?);
    }
    link.pin(link_path).context("pinning the link")?;
    Ok(())
}

fn attach_one(
    ebpf: &mut Ebpf,
    prog: &str,
    iface: &str,
    hook: TcAttachType,
    link_path: &Path,
) -> Result<()> {
    let program: &mut SchedClassifier = program(ebpf, prog)?;
    program
        .load()
        .with_context(|| format!("verifying {prog}"))?;
    if link_path.exists() {
        let old = PinnedLink::from_pin(link_path).context("opening the pinned link")?;
        let id = program.attach_to_link(FdLink::from(old).try_into()?)?;
        // The pin keeps the updated link alive; dropping our handle is fine.
        drop(program.take_link(id)?);
    } else {
        let id = program.attach_with_options(
            iface,
            hook,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        let link: FdLink = program.take_link(id)?.try_into()?;
        link.pin(link_path).context("pinning the link")?;
    }
    Ok(())
}

/// Attaches the XDP fast path to the uplink in native (driver) mode, or
/// swaps the program behind an existing link, as for TC.
pub fn attach_xdp(ebpf: &mut Ebpf, dir: &Path, uplink_index: u32) -> Result<()> {
    let program: &mut Xdp = program(ebpf, PROG_XDP)?;
    program
        .load()
        .with_context(|| format!("verifying {PROG_XDP}"))?;
    let link_path = dir.join(LINK_XDP);
    if link_path.exists() {
        let old = PinnedLink::from_pin(&link_path).context("opening the pinned XDP link")?;
        let link = XdpLink::try_from(FdLink::from(old))?;
        let id = program.attach_to_link(link)?;
        drop(program.take_link(id)?);
    } else {
        let id = program
            .attach_to_if_index(uplink_index, XdpMode::Driver)
            .context("attaching XDP to the uplink in driver mode (does its driver support XDP?)")?;
        let link: FdLink = program.take_link(id)?.try_into()?;
        link.pin(&link_path).context("pinning the XDP link")?;
    }
    Ok(())
}

/// Removes the uplink's XDP program, if attached.
pub fn detach_xdp(dir: &Path) -> Result<()> {
    unpin_link(&dir.join(LINK_XDP))
}

/// Removes links (which detaches the programs), map pins but those in
/// `keep`, and the directory once empty. Keeps going past failures and
/// reports all of them, so a half-attached bridge never blocks its own
/// cleanup.
pub fn remove_pins(dir: &Path, keep: &[&str]) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    for name in LINKS.iter().filter(|n| !keep.contains(n)) {
        if let Err(e) = unpin_link(&dir.join(name)) {
            errors.push(e);
        }
    }
    // Endpoints' veth links and programs: links first, so no program is
    // left attached when its pin goes.
    let mut on_veths: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| is_veth_pin(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    on_veths.sort_by_key(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("prog_"))
    });
    for path in on_veths {
        if let Err(e) = unpin_link(&path) {
            errors.push(e);
        }
    }
    for name in PINNED.iter().map(|m| &m.name).filter(|n| !keep.contains(n)) {
        let path = dir.join(name);
        if path.exists() {
            if let Err(e) = std::fs::remove_file(&path) {
                errors.push(anyhow::Error::from(e).context(format!("removing {}", path.display())));
            }
        }
    }
    if keep.is_empty() && dir.exists() {
        if let Err(e) = std::fs::remove_dir(dir) {
            errors.push(anyhow::Error::from(e).context(format!("removing {}", dir.display())));
        }
        // The netbr root too, once no bridge anywhere is attached; while one
        // is, removing the non-empty directory fails, as it should.
        if let Some(root) = dir.parent() {
            let _ = std::fs::remove_dir(root);
        }
    }
    errors
}

/// What `detach --keep-bridge` keeps: the configuration of the bridge's
/// endpoints and published ports, which the next `attach` picks up again.
pub const KEPT_WITH_BRIDGE: [&str; 5] = [
    netbr_common::maps::MAP_ENDPOINTS,
    netbr_common::net6::MAP_ENDPOINTS6,
    netbr_common::net6::MAP_ENDPOINTS6_BY_ADDR,
    netbr_common::maps::MAP_MAPPINGS,
    netbr_common::net6::MAP_MAPPINGS6,
];
