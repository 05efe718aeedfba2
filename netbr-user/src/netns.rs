//! Network namespaces: entering one, creating and deleting named ones the way
//! `ip netns add`/`del` do, and running work inside one on its own thread.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread's namespace and keeps
//! the mount namespace, so `/sys/fs/bpf` stays the machine's bpffs. That is
//! why netbr never uses `ip netns exec`, which remounts `/sys`.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `NAME` means `/run/netns/NAME`; anything with a `/` is a path.
pub fn resolve(name_or_path: &str) -> PathBuf {
    if name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        Path::new(NETNS_RUN_DIR).join(name_or_path)
    }
}

pub fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| {
        format!(
            "network namespace {} does not exist: create it with `ip netns add` or pass an existing path",
            path.display()
        )
    })
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &Path) -> Result<()> {
    let file = open(path)?;
    setns(&file).with_context(|| format!("entering network namespace {}", path.display()))
}

fn setns(file: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Enters a namespace for the guard's lifetime and returns to the previous
/// one on drop. Sockets opened meanwhile stay in the entered namespace.
pub struct NetnsGuard {
    previous: File,
}

impl NetnsGuard {
    pub fn enter(path: &Path) -> Result<Self> {
        let previous = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        enter(path)?;
        Ok(Self { previous })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.previous) {
            // Continuing in the wrong namespace would act on the wrong
            // interfaces; stopping is the only safe choice.
            panic!("cannot return to the previous network namespace: {e}");
        }
    }
}

/// Inode of the calling thread's network namespace: stable for the life of
/// the namespace and unique among live ones, so it names pin directories.
pub fn current_id() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading own netns")?
        .ino())
}

pub fn exists(name: &str) -> bool {
    resolve(name).exists()
}

/// Creates `/run/netns/NAME` holding a new, empty network namespace, as
/// `ip netns add NAME` does: a thread unshares its netns and bind-mounts it.
pub fn create_named(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("{name:?} is not a valid namespace name");
    }
    let path = resolve(name);
    if path.exists() {
        bail!(
            "network namespace {name} already exists: pass --netns {} to use it",
            path.display()
        );
    }
    prepare_run_dir()?;
    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let target = path.clone();
    let result = std::thread::spawn(move || -> Result<()> {
        // SAFETY: plain syscalls; this thread exits right after.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
            }
        }
        // A new namespace's loopback is down; containers expect it up.
        loopback_up().context("setting lo up in the new namespace")?;
        mount_bind("/proc/thread-self/ns/net", &target)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Sets `lo` up in the calling thread's namespace with the interface
/// ioctls: the one link change this module makes, so it needs no netlink
/// (which itself enters namespaces through this module).
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain syscalls on a socket this function owns and closes;
    // `ifreq` is zeroed, so its name "lo" is NUL-terminated.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        let mut result = Ok(());
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            result = Err(std::io::Error::last_os_error());
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
                result = Err(std::io::Error::last_os_error());
            }
        }
        libc::close(fd);
        result
    }
}

/// Makes `/run/netns` a shared mount before a namespace is mounted in it,
/// as `ip netns add` does: on a fresh boot it is a plain directory, and
/// the first `ip netns add` after netbr would bind-mount the directory
/// over itself, hiding what netbr had mounted there (listed, but neither
/// enterable nor removable). Writers are serialised by a lock on the
/// directory: two racing bind mounts would stack (Debian bug 949235).
fn prepare_run_dir() -> Result<()> {
    std::fs::create_dir_all(NETNS_RUN_DIR).context("creating /run/netns")?;
    let dir = File::open(NETNS_RUN_DIR).context("opening /run/netns")?;
    // SAFETY: flock on a descriptor we own; released when `dir` closes.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking /run/netns");
    }
    let shared = || mount("none", NETNS_RUN_DIR, libc::MS_SHARED | libc::MS_REC);
    match shared() {
        Ok(()) => return Ok(()),
        // EINVAL: not a mount point yet. Make it one, then shared.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err(e).context("making /run/netns a shared mount"),
    }
    mount(NETNS_RUN_DIR, NETNS_RUN_DIR, libc::MS_BIND | libc::MS_REC)
        .and_then(|()| shared())
        .context("making /run/netns a shared mount")
}

/// `mount(2)` with no file system type or data: binds and propagation.
fn mount(source: &str, target: &str, flags: libc::c_ulong) -> std::io::Result<()> {
    let src = std::ffi::CString::new(source)?;
    let dst = std::ffi::CString::new(target)?;
    // SAFETY: valid NUL-terminated strings; null type and data are allowed
    // for these operations.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mount_bind(source: &str, target: &Path) -> Result<()> {
    let target_str = target
        .to_str()
        .context("a namespace path that is not UTF-8")?;
    mount(source, target_str, libc::MS_BIND)
        .with_context(|| format!("bind-mounting {source} on {}", target.display()))
}

/// Deletes a namespace made by [`create_named`] (or `ip netns add`). The
/// namespace itself lives on while a process still uses it.
pub fn delete_named(name: &str) -> Result<()> {
    let path = resolve(name);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid NUL-terminated string. EINVAL (not a mount) is fine.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// Runs `f` on a fresh thread inside the namespace at `path`, so the caller's
/// own namespace never changes.
pub fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = open(path)?;
    let path = path.to_path_buf();
    std::thread::spawn(move || -> Result<T> {
        setns(&file).with_context(|| format!("entering {}", path.display()))?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in a network namespace panicked"))?
}

/// Like [`run_in`] without waiting: for servers that outlive the call.
pub fn spawn_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let file = open(path)?;
    let path = path.to_path_buf();
    Ok(std::thread::spawn(move || -> Result<T> {
        setns(&file).with_context(|| format!("entering {}", path.display()))?;
        Ok(f())
    }))
}

/// `<netns cookie>-<name>`: names a bridge's pin and state directories.
/// The cookie, unlike the namespace's inode, is never reused, so nothing a
/// dead namespace leaked can be adopted by a new one.
pub fn scoped_name(name: &str) -> Result<String> {
    Ok(format!("{}-{name}", current_cookie()?))
}

/// `SO_NETNS_COOKIE` of the calling thread's namespace: what
/// `bpf_get_netns_cookie` returns for its sockets.
pub fn current_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").context("opening a socket")?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("reading SO_NETNS_COOKIE");
    }
    Ok(cookie)
}
