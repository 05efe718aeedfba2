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

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicU32, Ordering},
            Arc,
        },
        time::Duration,
    };

    use super::*;

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("netbr-lock-{tag}-{}", std::process::id()))
    }

    #[test]
    fn writers_take_turns() {
        let d = dir("turns");
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (d, inside) = (d.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _l = BridgeLock::acquire(&d).unwrap();
                        assert_eq!(
                            inside.fetch_add(1, Ordering::SeqCst),
                            0,
                            "two writers at once"
                        );
                        std::thread::sleep(Duration::from_micros(200));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_waiter_whose_lock_file_was_removed_locks_the_new_one() {
        let d = dir("removed");
        let held = BridgeLock::acquire(&d).unwrap();
        let d2 = d.clone();
        let waiter = std::thread::spawn(move || {
            let l = BridgeLock::acquire(&d2).unwrap();
            // What it holds is the file at the path, not the removed one.
            let held = std::fs::metadata(l.path()).unwrap().ino();
            (l, held)
        });
        std::thread::sleep(Duration::from_millis(50));
        // A full detach removes the directory while holding the lock.
        std::fs::remove_dir_all(&d).unwrap();
        drop(held);
        let (l, ino) = waiter.join().unwrap();
        assert_eq!(std::fs::metadata(l.path()).unwrap().ino(), ino);
        drop(l);
        let _ = std::fs::remove_dir_all(&d);
    }
}
