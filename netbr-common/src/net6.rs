//! The bridge's IPv6 network, for the datapath's IPv6: which packets come
//! from or go to the bridge's IPv6 subnet (masquerade, the direct-routing
//! refusal), and the uplink address containers' IPv6 is masqueraded to.

/// One-entry array holding [`Net6`]; all zeros while the bridge has no IPv6
/// subnet.
pub const MAP_NET6: &str = "NB_NET6";
/// The IPv6 conntrack tables, as `NB_CT4`/`NB_CT4N` are IPv4's: assured
/// flows (a plain hash) and new ones (LRU), keyed by `conntrack::FlowKey6`.
pub const MAP_CONNTRACK6: &str = "NB_CT6";
pub const MAP_CONNTRACK6_NEW: &str = "NB_CT6N";
/// Endpoints' IPv6 addresses by their IPv4 ones (network order, as
/// `NB_EP` keys them): a published port's mapping names the container by
/// its IPv4 address, and a client over IPv6 is sent to its IPv6 one.
pub const MAP_ENDPOINTS6: &str = "NB_EP6";
/// Endpoints by their IPv6 addresses: `NB_EP`'s record (veth, MAC) for
/// the fast path to deliver an IPv6 packet into its container with one
/// lookup. Its flags are always 0: pacing is IPv4's alone so far, so no
/// IPv6 packet needs to pass a paced veth's qdisc.
pub const MAP_ENDPOINTS6_BY_ADDR: &str = "NB_EP6R";
/// Host sockets whose IPv6 destination a cgroup hook rewrote, as
/// `NB_SOCK` holds IPv4's: [`SockKey6`] to the address the application
/// dialled ([`SockAddr6`]). LRU.
pub const MAP_SOCKETS6: &str = "NB_SOCK6";

/// Ports published on one IPv6 address (`-p [2001:db8::1]:8080:80`):
/// [`MappingKey6`] to `maps::MappingTarget`, as `NB_MAPS` holds IPv4's and
/// the wildcard ones of both families.
pub const MAP_MAPPINGS6: &str = "NB_MAP6";

/// `NB_MAP6`'s key: `maps::MappingKey` for one IPv6 address, held as a
/// `FlowKey6` holds it. Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MappingKey6 {
    pub proto: u8,
    pub _pad: u8,
    pub port: u16,
    pub addr: [u32; 4],
}

/// First fragments of IPv6 datagrams a hook saw, as `NB_FRAG` holds
/// IPv4's: [`FragKey6`] to `maps::FragVal`. LRU.
pub const MAP_FRAGMENTS6: &str = "NB_FRAG6";

/// `NB_FRAG6`'s key: a datagram (addresses, fragment header identification,
/// transport protocol) as one hook saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey6 {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub id: u32,
    pub proto: u8,
    pub hook: u8,
    pub _pad: [u8; 2],
}

/// `NB_SOCK6`'s key: the socket and the container address it now talks to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockKey6 {
    pub cookie: u64,
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad: [u16; 3],
}

/// An IPv6 address (as a `FlowKey6` holds it) and port, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockAddr6 {
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad: u16,
}

/// `::1` as a `FlowKey6` holds it.
pub const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// The bridge's IPv6 subnet, gateway and masquerade address. Every
/// address is held as a `FlowKey6` holds it (four words of network-order
/// bytes, `words`), so the datapath compares and masks what it reads from
/// a packet with no conversion.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Net6 {
    pub net: [u32; 4],
    pub mask: [u32; 4],
    pub gateway: [u32; 4],
    /// The uplink's global address containers' IPv6 is masqueraded to; all
    /// zeros: the uplink has none, and nothing is masqueraded.
    pub uplink: [u32; 4],
    /// Prefix length; 0: the bridge has no IPv6 subnet.
    pub prefix: u32,
    /// How many ports are published on one IPv6 address (`NB_MAP6`): while
    /// none is, a packet to an address other than `uplink` costs no lookup.
    pub one_address_mappings: u32,
}

/// An address as on the wire in the four words a `FlowKey6` holds.
pub const fn words(addr: &[u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        out[i] = u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ]);
        i += 1;
    }
    out
}

/// The address a `FlowKey6` holds, as on the wire.
pub const fn bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = words[i].to_ne_bytes();
        out[4 * i] = w[0];
        out[4 * i + 1] = w[1];
        out[4 * i + 2] = w[2];
        out[4 * i + 3] = w[3];
        i += 1;
    }
    out
}

impl Net6 {
    /// The network `addr/prefix` (host bits of `addr` cleared), with
    /// `gateway` and the masquerade address `uplink` (all zeros: none).
    pub const fn new(addr: &[u8; 16], prefix: u8, gateway: &[u8; 16], uplink: &[u8; 16]) -> Self {
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
        let mask = words(&mask);
        let a = words(addr);
        Self {
            net: [
                a[0] & mask[0],
                a[1] & mask[1],
                a[2] & mask[2],
                a[3] & mask[3],
            ],
            mask,
            gateway: words(gateway),
            uplink: words(uplink),
            prefix: prefix as u32,
            one_address_mappings: 0,
        }
    }

    /// The network's address as on the wire.
    pub const fn network(&self) -> [u8; 16] {
        bytes(&self.net)
    }

    pub const fn configured(&self) -> bool {
        self.prefix != 0
    }

    /// Whether containers' IPv6 is masqueraded: the uplink has a global
    /// address.
    pub const fn masquerades(&self) -> bool {
        self.uplink[0] | self.uplink[1] | self.uplink[2] | self.uplink[3] != 0
    }

    /// Whether `addr` lies in the subnet. Never true of an unconfigured one.
    pub const fn contains(&self, addr: &[u32; 4]) -> bool {
        self.configured()
            && addr[0] & self.mask[0] == self.net[0]
            && addr[1] & self.mask[1] == self.net[1]
            && addr[2] & self.mask[2] == self.net[2]
            && addr[3] & self.mask[3] == self.net[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn membership_follows_the_prefix_in_network_order() {
        let net = Net6::new(
            &v6("fd00:30::77"),
            64,
            &v6("fd00:30::1"),
            &v6("2001:db8::1"),
        );
        assert_eq!(core::mem::size_of::<Net6>(), 72);
        assert_eq!(core::mem::size_of::<SockKey6>(), 32);
        assert_eq!(core::mem::size_of::<SockAddr6>(), 20);
        assert_eq!(core::mem::size_of::<FragKey6>(), 40);
        assert_eq!(bytes(&LOOPBACK6), v6("::1"));
        assert!(net.masquerades());
        assert_eq!(bytes(&net.uplink), v6("2001:db8::1"));
        assert!(net.contains(&words(&v6("fd00:30::2"))));
        assert_eq!(net.network(), v6("fd00:30::"));
        assert!(net.contains(&words(&v6("fd00:30::ffff:1:2:3"))));
        assert!(!net.contains(&words(&v6("fd00:31::2"))));
        assert!(!net.contains(&words(&v6("fe80::1"))));
        let none = [0; 16];
        let odd = Net6::new(&v6("2001:db8:ab80::"), 41, &v6("2001:db8:ab80::1"), &none);
        assert!(!odd.masquerades());
        assert!(odd.contains(&words(&v6("2001:db8:ab80::9"))));
        assert!(odd.contains(&words(&v6("2001:db8:abff::9"))));
        assert!(!odd.contains(&words(&v6("2001:db8:ab00::9"))));
        let wide = Net6::new(&v6("fd00:30::"), 120, &v6("fd00:30::1"), &none);
        assert!(wide.contains(&words(&v6("fd00:30::ff"))));
        assert!(!wide.contains(&words(&v6("fd00:30::100"))));
        assert!(!Net6::default().contains(&words(&v6("::"))));
    }
}
