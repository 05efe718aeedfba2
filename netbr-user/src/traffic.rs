//! Per-endpoint traffic, what `docker stats` shows as NET I/O, from the
//! kernel's own counters of each endpoint's veth, which cost the datapath
//! nothing. They are read on the container's side of the pair: the fast
//! path's `bpf_redirect_peer` hands packets to the container's interface
//! without the host-side veth ever transmitting them, and the kernel counts
//! them only there (`skb_do_redirect` adds them to the peer's receive
//! statistics). The container's interface is read from the host namespace
//! (`IFLA_TARGET_NETNSID`), without entering the container's.

use std::collections::HashMap;

use anyhow::Result;
use serde::Serialize;

use crate::{netlink::Netlink, store::EndpointState};

/// An endpoint's traffic, from the container's side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub received_bytes: u64,
    pub received_packets: u64,
    pub sent_bytes: u64,
    pub sent_packets: u64,
}

/// Every endpoint's traffic, by endpoint name. An endpoint whose veth is
/// gone has none.
pub async fn of_endpoints(
    nl: &Netlink,
    endpoints: &[EndpointState],
) -> Result<HashMap<String, Traffic>> {
    let host_links: HashMap<u32, _> = nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.index, l))
        .collect();
    let mut out = HashMap::new();
    for ep in endpoints {
        let Some(host) = host_links.get(&ep.host_ifindex) else {
            continue;
        };
        let container = match host.peer {
            Some((netnsid, index)) => nl.link_in(netnsid, index).await?,
            None => None,
        };
        let traffic = match container {
            Some(c) => Traffic {
                received_bytes: c.stats.rx_bytes,
                received_packets: c.stats.rx_packets,
                sent_bytes: c.stats.tx_bytes,
                sent_packets: c.stats.tx_packets,
            },
            // The peer cannot be read (its namespace has no id here): the
            // host side's counters, mirrored, miss only the fast path.
            None => Traffic {
                received_bytes: host.stats.tx_bytes,
                received_packets: host.stats.tx_packets,
                sent_bytes: host.stats.rx_bytes,
                sent_packets: host.stats.rx_packets,
            },
        };
        out.insert(ep.name.clone(), traffic);
    }
    Ok(out)
}

/// Bytes for people: `1.5MB`, `512B` (powers of 1000, as `docker stats`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_docker_stats_prints_them() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(1_500), "1.5kB");
        assert_eq!(human_bytes(2_345_678), "2.3MB");
        assert_eq!(human_bytes(7_000_000_000), "7.0GB");
    }
}
