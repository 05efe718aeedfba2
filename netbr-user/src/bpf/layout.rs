//! Checking pins against this binary's layout before any map is used, so a
//! binary never reads or writes maps that another netbr laid out.

use std::{collections::HashMap, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::MapData,
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use netbr_common::{
    layout::{MapSpec, PINNED},
    maps::{
        MAP_CONNTRACK, PROG_BIND4, PROG_BIND6, PROG_BRIDGE_INGRESS, PROG_CONNECT4, PROG_CONNECT6,
        PROG_GETPEER4, PROG_GETPEER6, PROG_RECVMSG4, PROG_RECVMSG6, PROG_SENDMSG4, PROG_SENDMSG6,
        PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS, PROG_XDP,
    },
};

use super::pins::{
    LINK_BIND4, LINK_BIND6, LINK_BRIDGE_INGRESS, LINK_CONNECT4, LINK_CONNECT6, LINK_GETPEER4,
    LINK_GETPEER6, LINK_RECVMSG4, LINK_RECVMSG6, LINK_SENDMSG4, LINK_SENDMSG6, LINK_UPLINK_EGRESS,
    LINK_UPLINK_INGRESS, LINK_XDP,
};

/// Each pinned link and the program that must be behind it. The XDP link
/// is optional (`attach --xdp`), and so are the IPv6 sock_addr links (a
/// bridge a netbr without them attached gets them at its next attach);
/// every other one must be there.
const LINKED: [(&str, &str, bool); 14] = [
    (LINK_UPLINK_INGRESS, PROG_UPLINK_INGRESS, true),
    (LINK_UPLINK_EGRESS, PROG_UPLINK_EGRESS, true),
    (LINK_BRIDGE_INGRESS, PROG_BRIDGE_INGRESS, true),
    (LINK_CONNECT4, PROG_CONNECT4, true),
    (LINK_SENDMSG4, PROG_SENDMSG4, true),
    (LINK_RECVMSG4, PROG_RECVMSG4, true),
    (LINK_GETPEER4, PROG_GETPEER4, true),
    (LINK_BIND4, PROG_BIND4, true),
    (LINK_CONNECT6, PROG_CONNECT6, false),
    (LINK_SENDMSG6, PROG_SENDMSG6, false),
    (LINK_RECVMSG6, PROG_RECVMSG6, false),
    (LINK_GETPEER6, PROG_GETPEER6, false),
    (LINK_BIND6, PROG_BIND6, false),
    (LINK_XDP, PROG_XDP, false),
];

/// How one pinned map differs from its spec, if it does.
fn map_mismatch(dir: &Path, spec: &MapSpec, ct_max: u32) -> Result<Option<String>> {
    let path = dir.join(spec.name);
    if !path.exists() {
        return Ok(Some(format!("map {} is missing", spec.name)));
    }
    let info = MapData::from_pin(&path)
        .and_then(|m| m.info())
        .with_context(|| format!("reading pinned map {}", path.display()))?;
    let map_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    let max = spec.max_entries.unwrap_or(ct_max);
    let have = (
        map_type,
        info.key_size(),
        info.value_size(),
        info.max_entries(),
    );
    let want = (spec.map_type, spec.key_size, spec.value_size, max);
    Ok((have != want).then(|| {
        format!(
            "map {} is (type {}, key {} B, value {} B, {} entries), this netbr expects (type {}, key {} B, value {} B, {} entries)",
            spec.name, have.0, have.1, have.2, have.3, want.0, want.1, want.2, want.3
        )
    }))
}

/// Names of loaded programs by id, read once per check.
fn program_names() -> HashMap<u32, String> {
    loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect()
}

fn link_mismatch(dir: &Path, names: &HashMap<u32, String>) -> Result<Option<String>> {
    for (link, prog, required) in LINKED {
        let path = dir.join(link);
        if !path.exists() {
            if required {
                return Ok(Some(format!("link {link} (program {prog}) is missing")));
            }
            continue;
        }
        let info = PinnedLink::from_pin(&path)
            .map_err(|e| anyhow!("{e}"))
            .and_then(|l| FdLink::from(l).info().map_err(|e| anyhow!("{e}")))
            .with_context(|| format!("reading pinned link {}", path.display()))?;
        let name = names
            .get(&info.program_id())
            .map(String::as_str)
            .unwrap_or("");
        // The kernel keeps 15 characters of a program's name.
        if !prog.starts_with(name) || name.is_empty() {
            return Ok(Some(format!(
                "link {link} runs program {name:?}, this netbr expects {prog}"
            )));
        }
    }
    Ok(None)
}

/// The pinned conntrack tables' size (`--ct-max`).
pub fn ct_max(dir: &Path, bridge: &str) -> Result<u32> {
    MapData::from_pin(dir.join(MAP_CONNTRACK))
        .and_then(|m| m.info())
        .map(|i| i.max_entries())
        .map_err(|e| refusal(bridge, &format!("map {MAP_CONNTRACK}: {e}")))
}

/// Checks an attached bridge's pins: every map of [`PINNED`] with its type,
/// sizes and entries, every link with its program. Returns the conntrack
/// tables' size. The error names the fix.
pub fn check(dir: &Path, bridge: &str) -> Result<u32> {
    let ct_max = ct_max(dir, bridge)?;
    check_maps(dir, bridge, ct_max, &[])?;
    if let Some(why) = link_mismatch(dir, &program_names())? {
        return Err(refusal(bridge, &why));
    }
    Ok(ct_max)
}

/// Checks the pinned maps (all that `attach` reuses: it replaces links)
/// but those in `upgraded` (an upgrade replaces them). Maps not pinned yet
/// pass: a first attach, or one after `detach --keep-bridge`, pins them.
pub fn check_maps(dir: &Path, bridge: &str, ct_max: u32, upgraded: &[&str]) -> Result<()> {
    for spec in &PINNED {
        if dir.join(spec.name).exists() && !upgraded.contains(&spec.name) {
            if let Some(why) = map_mismatch(dir, spec, ct_max)? {
                return Err(refusal(bridge, &why));
            }
        }
    }
    Ok(())
}

pub fn refusal(bridge: &str, why: &str) -> anyhow::Error {
    anyhow!(
        "bridge {bridge}'s pinned maps do not match this netbr's map layout ({why}): run netbr detach --bridge {bridge} first, then attach again"
    )
}

/// Fails unless the configuration's layout version is this binary's.
pub fn check_version(bridge: &str, version: u32) -> Result<()> {
    if version != netbr_common::maps::LAYOUT_VERSION {
        bail!(
            "bridge {bridge} was attached by a netbr with map layout {version} (this one uses {}): run netbr detach --bridge {bridge} first, then attach again",
            netbr_common::maps::LAYOUT_VERSION
        );
    }
    Ok(())
}
