//! Address helpers: CIDR blocks of both families, port ranges, and the
//! byte-order conversions between `Ipv4Addr` and the network-order `u32`s
//! stored in maps.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use anyhow::{anyhow, bail, Result};

/// An address as the datapath stores it: network byte order in a `u32`.
pub fn to_be32(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn from_be32(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// `ADDR/LEN` of one family, split and parsed; `example` shows a good one.
fn split_block<A: FromStr>(s: &str, example: &str, family: &str) -> Result<(A, u8)> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("{s:?} is not a CIDR block like {example}"))?;
    let addr = a
        .parse()
        .map_err(|_| anyhow!("{a:?} is not an {family} address"))?;
    let prefix = p
        .parse()
        .map_err(|_| anyhow!("{p:?} is not a prefix length"))?;
    Ok((addr, prefix))
}

/// An address as a flow tuple holds it (network order), either family.
pub trait TupleAddr: Copy + PartialEq {
    fn ip(self) -> IpAddr;
}

impl TupleAddr for u32 {
    fn ip(self) -> IpAddr {
        from_be32(self).into()
    }
}

impl TupleAddr for [u32; 4] {
    fn ip(self) -> IpAddr {
        Ipv6Addr::from(netbr_common::net6::bytes(&self)).into()
    }
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
        let (addr, prefix) = split_block::<Ipv4Addr>(s, "172.30.0.0/16", "IPv4")?;
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

/// An IPv6 block, for a bridge's IPv6 subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr6 {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Cidr6 {
    fn mask(&self) -> u128 {
        u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0)
    }

    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.network())
    }

    pub fn overlaps(&self, other: &Cidr6) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// A usable host address: inside, and not the subnet-router anycast
    /// address (the network's own, RFC 4291 2.6.1).
    pub fn is_host(&self, ip: Ipv6Addr) -> bool {
        self.contains(ip) && ip != self.network()
    }

    /// Host addresses in order from the network's first, as IPAM hands
    /// them out; the walk stops after 2^16 of them, more than a bridge
    /// has endpoints.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        let first = u128::from(self.network()) + 1;
        (first..first.saturating_add(1 << 16))
            .map(Ipv6Addr::from)
            .take_while(|ip| self.contains(*ip))
    }
}

impl FromStr for Cidr6 {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (addr, prefix) = split_block::<Ipv6Addr>(s, "fd00:30::/64", "IPv6")?;
        if !(16..=124).contains(&prefix) {
            bail!("prefix /{prefix} is out of range for IPv6: use /16 to /124");
        }
        if addr.segments()[0] & 0xffc0 == 0xfe80 || addr.is_multicast() || addr.is_loopback() {
            bail!("{s} is not a unicast block for containers: use a global or unique local one (fd00::/8)");
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What address assignment asks of a subnet of either family.
pub trait HostBlock: fmt::Display + Copy {
    type Addr: Copy + PartialEq + fmt::Display;
    fn is_host(&self, ip: Self::Addr) -> bool;
    /// Host addresses in the order they are handed out.
    fn host_addrs(&self) -> Box<dyn Iterator<Item = Self::Addr> + '_>;
}

impl HostBlock for Cidr {
    type Addr = Ipv4Addr;
    fn is_host(&self, ip: Ipv4Addr) -> bool {
        Cidr::is_host(self, ip)
    }
    fn host_addrs(&self) -> Box<dyn Iterator<Item = Ipv4Addr> + '_> {
        Box::new(self.hosts())
    }
}

impl HostBlock for Cidr6 {
    type Addr = Ipv6Addr;
    fn is_host(&self, ip: Ipv6Addr) -> bool {
        Cidr6::is_host(self, ip)
    }
    fn host_addrs(&self) -> Box<dyn Iterator<Item = Ipv6Addr> + '_> {
        Box::new(self.hosts())
    }
}

/// `--subnet` of either family, as `docker network create --subnet`
/// takes it: an IPv6 block when it holds a colon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyCidr {
    V4(Cidr),
    V6(Cidr6),
}

impl FromStr for AnyCidr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.contains(':') {
            s.parse().map(Self::V6)
        } else {
            s.parse().map(Self::V4)
        }
    }
}

/// At most one value of each family from a repeatable option: `--subnet`,
/// `--gateway`, `--ip`.
pub fn one_per_family<T: Copy, U: Copy>(
    what: &str,
    values: impl IntoIterator<Item = std::result::Result<T, U>>,
) -> Result<(Option<T>, Option<U>)> {
    let (mut v4, mut v6) = (None, None);
    for v in values {
        match v {
            Ok(a) if v4.replace(a).is_some() => {
                bail!("{what} is given twice for IPv4: give one per family")
            }
            Err(b) if v6.replace(b).is_some() => {
                bail!("{what} is given twice for IPv6: give one per family")
            }
            _ => {}
        }
    }
    Ok((v4, v6))
}

/// An address of either family as [`one_per_family`] takes it.
pub fn by_family(ip: IpAddr) -> std::result::Result<Ipv4Addr, Ipv6Addr> {
    match ip {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(a) => Err(a),
    }
}

impl AnyCidr {
    pub fn by_family(self) -> std::result::Result<Cidr, Cidr6> {
        match self {
            Self::V4(c) => Ok(c),
            Self::V6(c) => Err(c),
        }
    }
}

/// An address or block of either family that selects addresses, as
/// `conntrack flush --from` takes it: `192.0.2.7`, `192.0.2.0/24`,
/// `2001:db8::/64`. Any prefix length is accepted, /0 included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrBlock {
    net: IpAddr,
    prefix: u8,
}

impl AddrBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_bits::<32>(u32::from(net).into(), u32::from(ip).into(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_bits::<128>(u128::from(net), u128::from(ip), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of the `BITS` low bits of `a` and `b` agree.
fn prefix_bits<const BITS: u32>(a: u128, b: u128, prefix: u8) -> bool {
    let prefix = u32::from(prefix);
    prefix == 0 || (a ^ b) >> (BITS - prefix) == 0
}

impl FromStr for AddrBlock {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = a.parse().map_err(|_| {
            anyhow!("{s:?} is not an address or CIDR block like 192.0.2.0/24 or 2001:db8::/64")
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| anyhow!("{s:?} has no prefix length from 0 to {max}"))?,
        };
        Ok(Self { net, prefix })
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
    fn ipv6_blocks() {
        let c: Cidr6 = "fd00:30::77/64".parse().unwrap();
        assert_eq!(c.network(), "fd00:30::".parse::<Ipv6Addr>().unwrap());
        assert!(c.is_host("fd00:30::1".parse().unwrap()));
        assert!(!c.is_host("fd00:30::".parse().unwrap()));
        assert!(!c.contains("fd00:31::1".parse().unwrap()));
        let hosts: Vec<_> = c.hosts().take(2).collect();
        assert_eq!(hosts[1], "fd00:30::2".parse::<Ipv6Addr>().unwrap());
        let small: Cidr6 = "fd00:30::/124".parse().unwrap();
        assert_eq!(small.hosts().count(), 15);
        assert!("fe80::/64".parse::<Cidr6>().is_err());
        assert!("fd00::/8".parse::<Cidr6>().is_err());
        assert!(matches!("fd00::/64".parse::<AnyCidr>(), Ok(AnyCidr::V6(_))));
        assert!(matches!(
            "172.30.0.0/16".parse::<AnyCidr>(),
            Ok(AnyCidr::V4(_))
        ));
        let two = ["fd00::/64", "fd01::/64"].map(|s| s.parse::<AnyCidr>().unwrap().by_family());
        assert!(one_per_family("--subnet", two).is_err());
    }

    #[test]
    fn byte_order_round_trips() {
        let ip = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(to_be32(ip).to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(from_be32(to_be32(ip)), ip);
    }

    #[test]
    fn address_blocks_of_either_family_select_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let block = |s: &str| s.parse::<AddrBlock>().unwrap();
        assert!(block("192.0.2.0/24").contains(ip("192.0.2.200")));
        assert!(!block("192.0.2.0/24").contains(ip("192.0.3.1")));
        assert!(block("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!block("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(block("0.0.0.0/0").contains(ip("198.51.100.1")));
        assert!(block("2001:db8::/64").contains(ip("2001:db8::9")));
        assert!(!block("2001:db8::/64").contains(ip("2001:db8:0:1::9")));
        assert!(block("fd00:30::2").contains(ip("fd00:30::2")));
        // A block never selects the other family's addresses.
        assert!(!block("::/0").contains(ip("192.0.2.1")));
        assert!(!block("0.0.0.0/0").contains(ip("2001:db8::1")));
        for bad in [
            "192.0.2.0/33",
            "2001:db8::/129",
            "x",
            "192.0.2/24",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<AddrBlock>().is_err(), "{bad}");
        }
    }
}
