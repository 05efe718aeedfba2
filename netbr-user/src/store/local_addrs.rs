//! The datapath's copy of the namespace's own addresses, which ports
//! published on every local address match against; shared by `attach`
//! and `publish`.

use anyhow::Result;

use crate::{addr::to_be32, bpf::datapath::Datapath, netlink::Netlink};

/// Mirrors the namespace's IPv4 addresses into the datapath, for ports
/// published on every local address. Re-run `attach` after adding one.
pub async fn sync_local_addrs(nl: &Netlink, dp: &mut Datapath) -> Result<()> {
    let now: Vec<u32> = nl
        .addrs(None)
        .await?
        .iter()
        .map(|a| to_be32(a.addr))
        .collect();
    let stale: Vec<u32> = dp
        .local_addrs
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !now.contains(k))
        .collect();
    for k in stale {
        dp.local_addrs.remove(&k)?;
    }
    for a in now {
        dp.local_addrs.insert(a, 1, 0)?;
    }
    Ok(())
}
