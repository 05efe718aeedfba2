//! The datapath configuration the BPF_PROG_TEST_RUN tests and the fuzzer
//! load: the sandbox's addresses, without real interfaces.

use std::net::Ipv4Addr;

use netbr::addr::to_be32;
use netbr_common::{
    conntrack::STATE_COUNT,
    maps::{Config, LAYOUT_VERSION},
};

pub const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
pub const BRIDGE_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];
/// Entries per conntrack table the test programs are loaded with.
pub const CT_MAX: u32 = 65_536;

/// Uplink 192.0.2.1, subnet 172.30.0.0/16, host ephemeral range
/// 32768-60999, the given SNAT range and timeouts.
pub fn test_config(snat: (u16, u16), timeouts: [u32; STATE_COUNT]) -> Config {
    Config {
        configured: 1,
        layout_version: LAYOUT_VERSION,
        uplink_ifindex: 1,
        bridge_ifindex: 2,
        uplink_addr: to_be32(HOST),
        gateway_addr: to_be32(GATEWAY),
        subnet_addr: to_be32(Ipv4Addr::new(172, 30, 0, 0)),
        subnet_mask: to_be32(Ipv4Addr::new(255, 255, 0, 0)),
        snat_port_min: snat.0,
        snat_port_max: snat.1,
        host_port_min: 32768,
        host_port_max: 60999,
        timeouts,
        flags: 0,
        bridge_mac: BRIDGE_MAC,
        _pad: [0; 2],
        ct_max: CT_MAX,
        firewall_entries: 0,
        netns_cookie: 0,
    }
}
