//! IPv4 helpers: CIDR blocks, port ranges, and the byte-order conversions
//! between `Ipv4Addr` and the network-order `u32`s stored in maps.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use anyhow::{anyhow, bail, Result};

/// An address as the datapath stores it: network byte order in a `u32`.
pub fn to_be32(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn from_be32(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// A usable host address: inside, neither network nor broadcast.
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network() && ip != self.broadcast()
    }

    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.network()) + 1..u32::from(self.broadcast())).map(Ipv4Addr::from)
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| anyhow!("{s:?} is not a CIDR block like 172.30.0.0/16"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| anyhow!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| anyhow!("{p:?} is not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            bail!("prefix /{prefix} is out of range: use /8 to /30");
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An inclusive port range, `MIN-MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl FromStr for PortRange {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| anyhow!("{s:?} is not a port range like 61000-65535"))?;
        let (a, b): (u16, u16) = (
            a.parse().map_err(|_| anyhow!("{a:?} is not a port"))?,
            b.parse().map_err(|_| anyhow!("{b:?} is not a port"))?,
        );
        if a == 0 || a > b {
            bail!("port range {s} must be 1-65535 and ascending");
        }
        Ok(Self(a, b))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: fills a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let c: Cidr = "172.30.5.1/16".parse().unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(172, 30, 0, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(172, 30, 255, 255));
        assert!(c.is_host(Ipv4Addr::new(172, 30, 0, 1)));
        assert!(!c.is_host(Ipv4Addr::new(172, 30, 0, 0)));
        let lan: Cidr = "192.0.2.1/24".parse().unwrap();
        assert!(!c.overlaps(&lan));
        assert!(lan.overlaps(&"192.0.0.0/16".parse().unwrap()));
        assert!("172.30.0.0".parse::<Cidr>().is_err());
        assert!("172.30.0.0/31".parse::<Cidr>().is_err());
    }

    #[test]
    fn byte_order_round_trips() {
        let ip = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(to_be32(ip).to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(from_be32(to_be32(ip)), ip);
    }
}
