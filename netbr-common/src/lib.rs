//! Types, names and pure logic shared by netbr's BPF programs and its loader.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]` with
//! explicit padding, so both sides agree on the layout byte for byte.
//! Addresses and ports inside map keys and values are in **network byte
//! order** (exactly as they sit in a packet) unless a field says otherwise;
//! that lets the datapath compare and copy them without swapping.
#![no_std]

pub mod conntrack;
pub mod counters;
pub mod firewall;
pub mod layout;
pub mod maps;
pub mod monitor;
pub mod net6;
pub mod pacing;
pub mod ports;
pub mod portspec;
pub mod profile;
pub mod snat;

#[cfg(test)]
extern crate std;

/// IP protocol numbers the datapath tracks.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Name of an IP protocol for listings.
pub const fn proto_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_ICMP => "icmp",
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "other",
    }
}
