//! The driver's durable record of each Docker network it made: dockerd
//! never sends `CreateNetwork` again for a remote driver's existing
//! networks (libnetwork's controller replays only address reservations),
//! while netbr's own state lives in `/run` and bpffs, which a reboot
//! empties. So the driver keeps the request that made each network, on
//! disk, and attaches the network again from it when a later call names a
//! network netbr no longer has. Never from Docker's API: dockerd restores
//! restart-policy containers before its API serves, and a driver calling
//! it then would deadlock.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// Where records live by default: not on tmpfs.
pub const DEFAULT_DIR: &str = "/var/lib/netbr/docker";

#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// A Docker ID is hex; anything else never names a file.
    fn path(&self, network_id: &str) -> Result<PathBuf> {
        if network_id.is_empty() || !network_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{network_id:?} is not a Docker network ID");
        }
        Ok(self.dir.join(format!("{network_id}.json")))
    }

    /// Keeps `request` (the `CreateNetwork` body) for `network_id`: written
    /// to a temporary file, synced and renamed over any older record, so a
    /// crash leaves the old record or the new one, never half of one.
    pub fn save(&self, network_id: &str, request: &[u8]) -> Result<()> {
        let path = self.path(network_id)?;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let tmp = path.with_extension("json.tmp");
        write_synced(&tmp, request)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        // The rename itself must reach the disk too.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))
    }

    /// The request that made `network_id`, if the driver made it.
    pub fn load(&self, network_id: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(network_id)?) {
            Ok(body) => Ok(Some(body)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading the driver's record of a network"),
        }
    }

    pub fn remove(&self, network_id: &str) -> Result<()> {
        match std::fs::remove_file(self.path(network_id)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).context("removing the driver's record of a network")
            }
            _ => Ok(()),
        }
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_read_and_removed_by_network_id_only() {
        let dir = std::env::temp_dir().join(format!("netbr-records-{}", std::process::id()));
        let r = Records::new(&dir);
        assert_eq!(r.load("abc123").unwrap(), None);
        r.save("abc123", b"{\"NetworkID\":\"abc123\"}").unwrap();
        r.save("abc123", b"{\"NetworkID\":\"abc123\",\"x\":1}")
            .unwrap();
        assert_eq!(
            r.load("abc123").unwrap().unwrap(),
            b"{\"NetworkID\":\"abc123\",\"x\":1}"
        );
        assert!(r.save("../etc/passwd", b"").is_err());
        r.remove("abc123").unwrap();
        r.remove("abc123").unwrap();
        assert_eq!(r.load("abc123").unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
