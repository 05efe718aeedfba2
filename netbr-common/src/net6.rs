//! The bridge's IPv6 network, for the datapath's IPv6 policy.
//!
//! netbr does not yet translate or track IPv6 (no NAT66, no IPv6
//! conntrack): a dual-stack bridge's containers reach each other and the
//! gateway over IPv6, and reach beyond the host only when direct routing is
//! allowed, untranslated. What the datapath needs for that is whether a
//! packet's destination lies in the bridge's IPv6 subnet, so that a packet
//! from the uplink to a container is refused as IPv4's is.

/// One-entry array holding [`Net6`]; all zeros while the bridge has no IPv6
/// subnet.
pub const MAP_NET6: &str = "NB_NET6";

/// An IPv6 prefix as two 64-bit halves. Each half holds eight address
/// bytes in network order, read as a native `u64` (`u64::from_ne_bytes`),
/// so that masking an address read the same way from a packet needs no
/// byte swap.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Net6 {
    pub net: [u64; 2],
    pub mask: [u64; 2],
    /// The gateway's address as on the wire.
    pub gateway: [u8; 16],
    /// Prefix length; 0: the bridge has no IPv6 subnet.
    pub prefix: u32,
    pub _pad: u32,
}

/// `addr` (network order, as on the wire) as [`Net6`]'s two halves.
pub const fn halves(addr: &[u8; 16]) -> [u64; 2] {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    let mut i = 0;
    while i < 8 {
        lo[i] = addr[i];
        hi[i] = addr[i + 8];
        i += 1;
    }
    [u64::from_ne_bytes(lo), u64::from_ne_bytes(hi)]
}

impl Net6 {
    /// The network `addr/prefix` (host bits of `addr` cleared), with
    /// `gateway`.
    pub const fn new(addr: &[u8; 16], prefix: u8, gateway: &[u8; 16]) -> Self {
        let mut mask = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            let bits = prefix as i32 - (i as i32) * 8;
            mask[i] = if bits >= 8 {
                0xff
            } else if bits <= 0 {
                0
            } else {
                !(0xffu8 >> bits)
            };
            i += 1;
        }
        let mask = halves(&mask);
        let a = halves(addr);
        Self {
            net: [a[0] & mask[0], a[1] & mask[1]],
            mask,
            gateway: *gateway,
            prefix: prefix as u32,
            _pad: 0,
        }
    }

    /// The network's address as on the wire.
    pub fn network(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.net[0].to_ne_bytes());
        out[8..].copy_from_slice(&self.net[1].to_ne_bytes());
        out
    }

    pub const fn configured(&self) -> bool {
        self.prefix != 0
    }

    /// Whether `addr` (the halves of an address as on the wire) lies in
    /// the subnet. Never true of an unconfigured one.
    pub const fn contains(&self, addr: [u64; 2]) -> bool {
        self.configured()
            && addr[0] & self.mask[0] == self.net[0]
            && addr[1] & self.mask[1] == self.net[1]
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
unsafe impl aya::Pod for Net6 {}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn membership_follows_the_prefix_in_network_order() {
        let net = Net6::new(&v6("fd00:30::77"), 64, &v6("fd00:30::1"));
        assert_eq!(core::mem::size_of::<Net6>(), 56);
        assert!(net.contains(halves(&v6("fd00:30::2"))));
        assert_eq!(net.network(), v6("fd00:30::"));
        assert!(net.contains(halves(&v6("fd00:30::ffff:1:2:3"))));
        assert!(!net.contains(halves(&v6("fd00:31::2"))));
        assert!(!net.contains(halves(&v6("fe80::1"))));
        let odd = Net6::new(&v6("2001:db8:ab80::"), 41, &v6("2001:db8:ab80::1"));
        assert!(odd.contains(halves(&v6("2001:db8:ab80::9"))));
        assert!(odd.contains(halves(&v6("2001:db8:abff::9"))));
        assert!(!odd.contains(halves(&v6("2001:db8:ab00::9"))));
        let wide = Net6::new(&v6("fd00:30::"), 120, &v6("fd00:30::1"));
        assert!(wide.contains(halves(&v6("fd00:30::ff"))));
        assert!(!wide.contains(halves(&v6("fd00:30::100"))));
        assert!(!Net6::default().contains(halves(&v6("::"))));
    }
}
