//! `attach` over a bridge attached by the previous release: its tables are
//! taken over, flows included, so connections carry on across the upgrade.
//!
//! From layout 7 to 8 only the conntrack tables changed shape (each entry
//! now holds its own direction's time and counters, `netbr_common::
//! conntrack`); every other pinned map keeps its layout and is reused as
//! `attach` always reuses pins, and the new `NB_NET6` (the IPv6 subnet) is
//! pinned by the load as any map not pinned yet. The old tables are opened with their old
//! entry type and unpinned, so the load pins fresh ones; the old programs
//! keep using the old tables until their links are swapped. The flows are
//! copied into the new tables before the swap, so no packet of an
//! established flow meets an empty table, and once more after it (adding
//! only flows the old programs opened in between). Their ports go into the
//! port set netbr owns (`PORTS_RESTORED`), since the new programs never saw
//! them open. If the attach fails, the old tables are pinned back.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use netbr_common::{
    conntrack::{CtEntry, FlowKey, DIR_ORIG, DIR_REPLY, NAT_HOST, NAT_SNAT},
    maps::{Config, MAP_CONFIG, MAP_CONNTRACK, MAP_CONNTRACK_NEW},
    ports::{PortSet, PORTS_RESTORED},
};

use super::datapath::{Datapath, BPF_NOEXIST};

/// The layout this binary upgrades from.
pub const PREVIOUS_LAYOUT: u32 = 7;

/// A conntrack entry as layout 7 stored it: the original entry held the
/// flow's time and both directions' counters, the reply entry forwarded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct CtEntryV7 {
    xlat: FlowKey,
    created_ns: u64,
    last_seen_ns: u64,
    packets: [u64; 2],
    bytes: [u64; 2],
    dir: u8,
    state: u8,
    nat: u8,
    _pad: [u8; 5],
}

// SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
unsafe impl aya::Pod for CtEntryV7 {}

type OldTable = HashMap<MapData, FlowKey, CtEntryV7>;

/// The previous layout's conntrack tables, unpinned and held open.
pub struct Upgrade {
    /// Each table with its pin path, the assured one first.
    tables: Vec<(OldTable, PathBuf, bool)>,
}

/// The configuration of the bridge pinned at `dir`, read without opening
/// the other maps (whose layout may be the previous one's).
pub fn pinned_config(dir: &Path) -> Result<Config> {
    let data = MapData::from_pin(dir.join(MAP_CONFIG)).context("opening the pinned config")?;
    let config: Array<MapData, Config> = Map::from_map_data(data)?.try_into()?;
    Ok(config.get(&0, 0)?)
}

fn pinned_version(dir: &Path) -> Result<u32> {
    Ok(pinned_config(dir)?.layout_version)
}

/// Whether the bridge pinned at `dir` was attached with the previous
/// layout, which `attach` upgrades (any other version is the layout
/// checks' to judge).
pub fn is_previous_layout(dir: &Path) -> bool {
    pinned_version(dir).ok() == Some(PREVIOUS_LAYOUT)
}

/// The maps whose layout changed since [`PREVIOUS_LAYOUT`]: the checks
/// leave them to the upgrade.
pub const CHANGED_MAPS: [&str; 2] = [MAP_CONNTRACK, MAP_CONNTRACK_NEW];

impl Upgrade {
    /// Takes over the previous layout's conntrack tables at `dir`: opened,
    /// then unpinned, so the next load pins new ones in their place.
    pub fn begin(dir: &Path) -> Result<Self> {
        let mut tables = Vec::new();
        for (name, assured) in [(MAP_CONNTRACK, true), (MAP_CONNTRACK_NEW, false)] {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening the previous layout's {name}"))?;
            let table: OldTable = Map::from_map_data(data)?
                .try_into()
                .with_context(|| format!("{name} is not the previous layout's table"))?;
            tables.push((table, path, assured));
        }
        for (_, path, _) in &tables {
            std::fs::remove_file(path).with_context(|| format!("unpinning {}", path.display()))?;
        }
        Ok(Self { tables })
    }

    /// The flows of the old tables in the new layout: each with its two
    /// entries and whether it is assured. A reply entry without its
    /// original was garbage under the old layout and is left behind.
    fn flows(&self) -> Vec<(FlowKey, CtEntry, FlowKey, CtEntry, bool)> {
        let mut out = Vec::new();
        for (table, _, assured) in &self.tables {
            for (key, orig) in table.iter().filter_map(|r| r.ok()) {
                if orig.dir != DIR_ORIG {
                    continue;
                }
                let reply_key = orig.xlat.reversed();
                let Ok(reply) = table.get(&reply_key, 0) else {
                    continue;
                };
                let entry = |e: &CtEntryV7, dir: u8| CtEntry {
                    xlat: e.xlat,
                    created_ns: e.created_ns,
                    last_seen_ns: orig.last_seen_ns,
                    packets: orig.packets[dir as usize],
                    bytes: orig.bytes[dir as usize],
                    dir,
                    state: orig.state,
                    nat: orig.nat,
                    _pad: [0; 5],
                };
                out.push((
                    key,
                    entry(&orig, DIR_ORIG),
                    reply_key,
                    entry(&reply, DIR_REPLY),
                    *assured,
                ));
            }
        }
        out
    }

    /// Copies the old tables' flows into the new ones and marks their
    /// ports. `again`: after the programs were swapped, when the new tables
    /// are live; entries already there (the new programs' own) win.
    /// Returns how many flows were copied.
    pub fn restore(&self, dp: &mut Datapath, again: bool) -> Result<usize> {
        let flags = if again { BPF_NOEXIST } else { 0 };
        let mut ports = Box::new(PortSet::EMPTY);
        let mut copied = 0;
        for (key, orig, reply_key, reply, assured) in self.flows() {
            let table = if assured {
                &mut dp.conntrack
            } else {
                &mut dp.conntrack_new
            };
            // The reply first, as the programs insert them: a packet that
            // finds the original finds its partner too.
            let ok = table.insert(reply_key, reply, flags).is_ok()
                & table.insert(key, orig, flags).is_ok();
            copied += usize::from(ok);
            if orig.nat == NAT_SNAT || orig.nat == NAT_HOST {
                ports.mark(orig.xlat.proto, orig.xlat.sport);
            }
            if orig.nat == NAT_HOST {
                ports.mark(key.proto, key.sport);
            }
        }
        // By reference: the set is 128 KiB, too big to pass by value.
        let ports: &PortSet = &ports;
        dp.ports
            .set(PORTS_RESTORED, ports, 0)
            .context("writing the restored flows' ports")?;
        Ok(copied)
    }

    /// Pins the old tables back where they were: the attach failed, and
    /// the old programs, still attached, go on using them.
    pub fn abandon(self) {
        for (table, path, _) in self.tables {
            // The failed load may have pinned its own table there.
            let _ = std::fs::remove_file(&path);
            if let Err(e) = table.pin(&path) {
                log::warn!("pinning {} back: {e}", path.display());
            }
        }
    }
}
