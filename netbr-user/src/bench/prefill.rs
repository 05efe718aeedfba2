//! Conntrack prefill for `netbr bench --prefill`: how connect/close holds up
//! when the table already tracks many flows, as on a busy host. Each arm's
//! table gets the same synthetic established TCP flows (198.51.100.x to
//! the host, timeouts of an hour, so none expires during the run): through
//! ctnetlink (`conntrack -R`) for the netfilter arms, through the pinned
//! maps for netbr's. The routed arm tracks nothing, so it has nothing to fill.

use std::{fmt::Write as _, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use netbr_common::conntrack::{CtEntry, CtState, FlowKey, DIR_ORIG, DIR_REPLY, NAT_NONE};

use super::arms::{self, Arm, Setup};
use crate::{
    addr::{monotonic_ns, to_be32},
    bpf::datapath::Datapath,
    sandbox::UPLINK_IP,
};

const PORTS_PER_ADDR: u32 = 60_000;
const FIRST_PORT: u32 = 1024;
const DPORT: u16 = 7000;
const NF_MAX: &str = "net.netfilter.nf_conntrack_max";

/// Flow `i`'s client: 198.51.100.(1 + i / 60000), port 1024 + i % 60000.
fn client(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(198, 51, 100, (1 + i / PORTS_PER_ADDR) as u8),
        (FIRST_PORT + i % PORTS_PER_ADDR) as u16,
    )
}

/// The most flows a prefill may ask for (the client addresses run out).
pub const MAX_FLOWS: u32 = 200 * PORTS_PER_ADDR;

/// Raises the machine-wide `nf_conntrack_max` while alive (the limit is
/// global; only the initial namespace may set it), restoring it after.
pub struct NfLimit(Option<String>);

impl NfLimit {
    pub fn at_least(flows: u32) -> Result<Self> {
        let Ok(before) = crate::sysctl::read(NF_MAX) else {
            // nf_conntrack is not loaded: no netfilter arm runs.
            return Ok(Self(None));
        };
        let want = u64::from(flows) + 65_536;
        if before.parse::<u64>().unwrap_or(0) < want {
            crate::sysctl::write(NF_MAX, &want.to_string())?;
        }
        Ok(Self(Some(before)))
    }
}

impl Drop for NfLimit {
    fn drop(&mut self) {
        if let Some(v) = &self.0 {
            let _ = crate::sysctl::write(NF_MAX, v);
        }
    }
}

/// Fills the arm's table with `flows` established flows.
pub fn fill(s: &Setup, flows: u32) -> Result<()> {
    match s.arm {
        Arm::Routed => Ok(()),
        a if a.is_netbr() => fill_netbr(s, flows),
        _ => {
            let mut lines = String::new();
            for i in 0..flows {
                let (addr, port) = client(i);
                let _ = writeln!(
                    lines,
                    "-I -p tcp -s {addr} -d {UPLINK_IP} --sport {port} --dport {DPORT} --state ESTABLISHED -t 3600 -u ASSURED"
                );
            }
            arms::run(&s.sb, "conntrack", &["-R", "-"], Some(&lines))
                .context("filling netfilter's conntrack table")
        }
    }
}

fn fill_netbr(s: &Setup, flows: u32) -> Result<()> {
    let mut dp = Datapath::from_pins(&s.sb.pin_dir()?)?;
    let now = monotonic_ns();
    for i in 0..flows {
        let (addr, port) = client(i);
        let key = FlowKey {
            saddr: to_be32(addr),
            daddr: to_be32(UPLINK_IP),
            sport: port.to_be(),
            dport: DPORT.to_be(),
            proto: netbr_common::IPPROTO_TCP,
            ..Default::default()
        };
        // Tracked untranslated: each entry rewrites to its own tuple.
        let entry = |k: FlowKey, dir: u8| CtEntry {
            xlat: k,
            created_ns: now,
            last_seen_ns: now,
            packets: 1,
            bytes: 60,
            dir,
            state: CtState::Established as u8,
            nat: NAT_NONE,
            _pad: [0; 5],
        };
        dp.conntrack
            .insert(key, entry(key, DIR_ORIG), 0)
            .context("filling netbr's conntrack table: raise --ct-max")?;
        let reply = key.reversed();
        dp.conntrack
            .insert(reply, entry(reply, DIR_REPLY), 0)
            .context("filling netbr's conntrack table: raise --ct-max")?;
    }
    Ok(())
}

/// Empties the arm's table again.
pub fn clear(s: &Setup) -> Result<()> {
    match s.arm {
        Arm::Routed => Ok(()),
        a if a.is_netbr() => s.sb.netbr_ok(&["conntrack", "flush"]).map(drop),
        _ => arms::run(&s.sb, "conntrack", &["-F"], None),
    }
}
