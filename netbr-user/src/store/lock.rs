//! The bridge's writer lock: `flock` on a file beside the state, so every
//! process that changes one bridge (CLI, CNI plugin, Docker driver) waits
//! for the others.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

pub const LOCK_FILE: &str = "lock";

/// Held while it lives; the kernel releases it when the process dies, so a
/// crashed writer never blocks the next one.
pub struct BridgeLock {
    _file: File,
    path: PathBuf,
}

impl BridgeLock {
    /// Blocks until this process is the bridge's only writer.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        loop {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: flock on a valid fd.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("locking {}", path.display()));
            }
            // A full detach removes the directory while holding the lock; a
            // waiter then holds a lock on a file no one else can open. Only
            // the lock on the file that is still there counts.
            let held = file.metadata().map(|m| m.ino()).ok();
            let there = std::fs::metadata(&path).map(|m| m.ino()).ok();
            if held.is_some() && held == there {
                return Ok(Self { _file: file, path });
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
