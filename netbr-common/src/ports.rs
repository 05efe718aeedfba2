//! The uplink's port sets: a first test that lets a packet which cannot
//! belong to any flow or published port skip the conntrack and mapping
//! lookups. One byte per (protocol, port), TCP's 65536 then UDP's, so that
//! setting one is a plain store that never races with another CPU setting
//! its neighbour (a bit would need an atomic read-modify-write).
//!
//! `NB_PORTS` is an array of two sets. [`PORTS_FLOWS`] is the programs':
//! they mark the port a new flow's packets will arrive on at the uplink
//! (a masquerade flow's translated source port, the host's own flows'
//! ports) before the flow exists, and never clear it while the bridge is
//! attached, so a marked port only costs the lookups it would have cost
//! anyway. [`PORTS_PUBLISHED`] is netbr's: rewritten from the mappings on
//! every change, the ports marked before a mapping is added and cleared
//! after it is removed. [`PORTS_RESTORED`] is netbr's too: the ports of the
//! flows an upgrade carried over from the previous layout's tables, which
//! the programs never saw open (written while they may run, so it cannot be
//! the programs' set). Packets of other protocols (ICMP, whose errors quote
//! flows), and those addressed to the bridge's subnet (direct routing,
//! routed mode), never take the shortcut.

use crate::{IPPROTO_TCP, IPPROTO_UDP};

pub const MAP_PORTS: &str = "NB_PORTS";
/// Slot of the set the programs mark as flows open.
pub const PORTS_FLOWS: u32 = 0;
/// Slot of the set of published host ports, which netbr writes.
pub const PORTS_PUBLISHED: u32 = 1;
/// Slot of the set of ports of flows an upgrade restored, which netbr writes.
pub const PORTS_RESTORED: u32 = 2;
pub const PORT_SETS: u32 = 3;

/// Bytes of one set: TCP's ports, then UDP's.
pub const PORT_SLOTS: usize = 2 * 65536;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PortSet {
    pub marked: [u8; PORT_SLOTS],
}

impl PortSet {
    pub const EMPTY: Self = Self {
        marked: [0; PORT_SLOTS],
    };

    /// Marks `port` (network byte order) of `proto`, if the sets cover it.
    pub fn mark(&mut self, proto: u8, port: u16) {
        if let Some(slot) = port_slot(proto, u16::from_be(port)) {
            self.marked[slot] = 1;
        }
    }
}

/// The byte of `port` (host byte order) of protocol `proto`, if the sets
/// cover the protocol.
#[inline(always)]
pub const fn port_slot(proto: u8, port: u16) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(port as usize),
        IPPROTO_UDP => Some(65536 + port as usize),
        _ => None,
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, a plain byte array.
unsafe impl aya::Pod for PortSet {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_and_port_has_its_own_byte() {
        assert_eq!(port_slot(IPPROTO_TCP, 0), Some(0));
        assert_eq!(port_slot(IPPROTO_TCP, 65535), Some(65535));
        assert_eq!(port_slot(IPPROTO_UDP, 0), Some(65536));
        assert_eq!(port_slot(IPPROTO_UDP, 65535), Some(PORT_SLOTS - 1));
        assert_eq!(port_slot(crate::IPPROTO_ICMP, 7), None);
    }
}
