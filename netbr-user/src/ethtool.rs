//! The ethtool settings netbr needs, through the legacy one-value ioctls:
//! generic receive offload on a container's veth (a veth delivers frames
//! another device's XDP program redirects to it only while its NAPI
//! instance runs, which it does once GRO is on), and, for test sandboxes
//! that play a physical wire, transmit checksumming.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{bail, Context as _, Result};

const ETHTOOL_STXCSUM: u32 = 0x0000_0017;
const ETHTOOL_SGRO: u32 = 0x0000_002c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// Turns GRO on or off on `ifname` in the calling thread's namespace.
pub fn set_gro(ifname: &str, on: bool) -> Result<()> {
    set(ifname, ETHTOOL_SGRO, on).with_context(|| format!("turning GRO {} on {ifname}", on_off(on)))
}

/// Turns transmit checksumming (and so TSO) on or off on `ifname`.
pub fn set_tx_checksum(ifname: &str, on: bool) -> Result<()> {
    set(ifname, ETHTOOL_STXCSUM, on)
        .with_context(|| format!("turning transmit checksumming {} on {ifname}", on_off(on)))
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn set(ifname: &str, cmd: u32, on: bool) -> Result<()> {
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("interface name {ifname} is too long");
    }
    // SAFETY: a plain socket call; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening an ethtool socket");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue {
        cmd,
        data: u32::from(on),
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points
    // to, both alive for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
