//! Header parsing with direct packet access (`skb::read`), which falls
//! back to `bpf_skb_load_bytes` for headers outside the linear area.
//! Offsets that depend on IHL stay bounded (IHL is 4 bits), which is all
//! the verifier asks of a variable packet offset.

use aya_ebpf::programs::TcContext;
use netbr_common::{conntrack::FlowKey, counters::Reason, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::zeroing::{tuple, zero};

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// IPv4 header field offsets from the start of the frame (RFC 791).
pub const IP_TOT_LEN: usize = ETH_LEN + 2;
/// TTL, with the protocol after it: one 16-bit word of the checksum.
pub const IP_TTL: usize = ETH_LEN + 8;
pub const IP_CSUM: usize = ETH_LEN + 10;
pub const IP_SADDR: usize = ETH_LEN + 12;
pub const IP_DADDR: usize = ETH_LEN + 16;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// Where TCP and UDP keep their flags and checksums, and their minimum
/// header lengths.
pub const TCP_FLAGS: usize = 13;
pub const TCP_CSUM: usize = 16;
pub const UDP_CSUM: usize = 6;
pub const TCP_MIN: usize = 20;
pub const UDP_MIN: usize = 8;

/// `Packet::frag`.
pub const FRAG_NONE: u8 = 0;
/// Offset 0 with more fragments: has the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// Offset above 0: no L4 header; its ports come from the first fragment.
pub const FRAG_LATER: u8 = 2;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
/// An ICMP error quotes the offending packet's IP header and at least the
/// first 8 bytes of its L4 header (RFC 792): enough for ports or echo id.
const ICMP_QUOTED_L4: usize = 8;

/// What the translators need to know about one IPv4 packet.
pub struct Packet {
    pub key: FlowKey,
    /// Offsets of the fields a port rewrite touches. For ICMP echo both point
    /// at the identifier; the tuple's zero half never changes, so only the
    /// right one is ever written.
    pub sport_off: usize,
    pub dport_off: usize,
    pub csum_off: usize,
    /// The L4 checksum covers the IP addresses (pseudo-header): TCP and UDP.
    pub csum_pseudo: bool,
    /// Extra `bpf_l4_csum_replace` flags (`BPF_F_MARK_MANGLED_0` for UDP).
    pub csum_flags: u64,
    pub tcp_flags: u8,
    /// IP total length, for byte counters.
    pub len: u32,
    /// For an ICMP error: offset of the quoted (inner) IP header, else 0. The
    /// packet's `key` is then the inner tuple *reversed*, i.e. the tuple of a
    /// packet travelling the same way as the error, which finds the flow; the
    /// port offsets point into the inner header.
    pub inner_ip: usize,
    pub outer_saddr: u32,
    pub outer_daddr: u32,
    /// `FRAG_*`, and the IP identification that ties fragments together.
    pub frag: u8,
    pub ip_id: u16,
}

impl Packet {
    pub fn is_icmp_error(&self) -> bool {
        self.inner_ip != 0
    }

    /// Only a whole packet or a first fragment may open a flow: a later
    /// fragment has no ports, an ICMP error belongs to someone else's flow.
    pub fn may_open_flow(&self) -> bool {
        self.frag != FRAG_LATER && !self.is_icmp_error()
    }
}

/// The IPv4 header without options, as on the wire (network byte order).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv4Fixed {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub csum: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// A TCP header up to its flags.
#[derive(Clone, Copy)]
#[repr(C)]
struct TcpFixed {
    sport: u16,
    dport: u16,
    _seq: u32,
    _ack: u32,
    _off: u8,
    flags: u8,
}

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize, short: Reason) -> Result<T, Reason> {
    crate::skb::read::<T>(ctx, off).map_err(|_| short)
}

/// Parses an Ethernet + IPv4 + TCP/UDP/ICMP-echo packet. `Err` carries the
/// reason the packet is not translatable; [`Reason::is_drop`] says whether it
/// is malformed (drop) or merely not ours (pass untouched). An IPv6 frame
/// is `Err(PassIpv6)`, for `hooks::run` to hand to IPv6's path, which then
/// need not read the ethertype again.
#[inline(always)]
pub fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<(), Reason> {
    let ethertype = u16::from_be(load(ctx, 12, Reason::PassNotIpv4)?);
    if ethertype == ETH_P_IPV6 {
        return Err(Reason::PassIpv6);
    }
    if ethertype != ETH_P_IP {
        return Err(Reason::PassNotIpv4);
    }
    // The whole fixed header at once. Only a packet too short for it takes
    // the byte-by-byte path, which reports why in the same order of checks.
    let Ok(ip) = crate::skb::read::<Ipv4Fixed>(ctx, ETH_LEN) else {
        let vihl: u8 = load(ctx, ETH_LEN, Reason::DropTruncated)?;
        if vihl >> 4 != 4 || vihl & 0x0f < 5 {
            return Err(Reason::DropBadHeader);
        }
        let tot_len = u16::from_be(load(ctx, IP_TOT_LEN, Reason::DropTruncated)?) as usize;
        if tot_len < ((vihl & 0x0f) as usize) * 4 {
            return Err(Reason::DropBadHeader);
        }
        return Err(Reason::DropTruncated);
    };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::DropBadHeader);
    }
    let tot_len = u16::from_be(ip.tot_len) as usize;
    if tot_len < ihl {
        return Err(Reason::DropBadHeader);
    }
    if ETH_LEN + tot_len > ctx.len() as usize {
        return Err(Reason::DropTruncated);
    }
    let frag_field = u16::from_be(ip.frag);
    let frag = if frag_field & IP_OFFSET != 0 {
        FRAG_LATER
    } else if frag_field & IP_MF != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    let ip_id = if frag == FRAG_NONE { 0 } else { ip.id };
    let (proto, saddr, daddr) = (ip.proto, ip.saddr, ip.daddr);
    let l4 = ETH_LEN + ihl;
    let l4_len = tot_len - ihl;

    // Every field, one by one rather than as a literal, whose zeros LLVM
    // would merge into a memset call (`zeroing`).
    pkt.key = tuple(saddr, daddr, 0, 0, proto);
    pkt.sport_off = l4;
    pkt.dport_off = l4 + 2;
    pkt.csum_pseudo = true;
    pkt.len = tot_len as u32;
    pkt.outer_saddr = saddr;
    pkt.outer_daddr = daddr;
    pkt.frag = frag;
    pkt.ip_id = ip_id;
    zero(&mut pkt.csum_off);
    zero(&mut pkt.csum_flags);
    zero(&mut pkt.tcp_flags);
    zero(&mut pkt.inner_ip);
    if frag == FRAG_LATER {
        // Only TCP and UDP datagrams are followed; their ports are filled in
        // from the first fragment (`frag::recall`).
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return Err(Reason::PassFragment);
        }
        pkt.csum_pseudo = false;
        return Ok(());
    }
    match proto {
        IPPROTO_TCP => {
            if l4_len < TCP_MIN {
                return Err(Reason::DropTruncated);
            }
            let tcp: TcpFixed = load(ctx, l4, Reason::DropTruncated)?;
            pkt.key.sport = tcp.sport;
            pkt.key.dport = tcp.dport;
            pkt.tcp_flags = tcp.flags;
            pkt.csum_off = l4 + TCP_CSUM;
            return Ok(());
        }
        IPPROTO_UDP => {
            if l4_len < UDP_MIN {
                return Err(Reason::DropTruncated);
            }
            pkt.csum_off = l4 + UDP_CSUM;
            pkt.csum_flags = aya_ebpf::bindings::BPF_F_MARK_MANGLED_0 as u64;
        }
        IPPROTO_ICMP if frag != FRAG_NONE => return Err(Reason::PassFragment),
        IPPROTO_ICMP => {
            if l4_len < 8 {
                return Err(Reason::DropTruncated);
            }
            let icmp_type: u8 = load(ctx, l4, Reason::DropTruncated)?;
            let id: u16 = load(ctx, l4 + 4, Reason::DropTruncated)?;
            match icmp_type {
                ICMP_ECHO_REQUEST => pkt.key.sport = id,
                ICMP_ECHO_REPLY => pkt.key.dport = id,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB => {
                    pkt.csum_off = l4 + 2;
                    pkt.csum_pseudo = false;
                    parse_icmp_error(ctx, pkt, l4 + 8, l4_len - 8)?;
                    return Ok(());
                }
                _ => return Err(Reason::PassUntrackedProto),
            }
            pkt.sport_off = l4 + 4;
            pkt.dport_off = l4 + 4;
            pkt.csum_off = l4 + 2;
            pkt.csum_pseudo = false;
            return Ok(());
        }
        _ => return Err(Reason::PassUntrackedProto),
    }
    let ports: [u16; 2] = load(ctx, l4, Reason::DropTruncated)?;
    pkt.key.sport = ports[0];
    pkt.key.dport = ports[1];
    Ok(())
}

/// Reads the packet an ICMP error quotes, at `inner` with `len` bytes left.
#[inline(always)]
fn parse_icmp_error(
    ctx: &TcContext,
    pkt: &mut Packet,
    inner: usize,
    len: usize,
) -> Result<(), Reason> {
    let vihl: u8 = load(ctx, inner, Reason::DropTruncated)?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::DropBadHeader);
    }
    if len < ihl + ICMP_QUOTED_L4 {
        return Err(Reason::DropTruncated);
    }
    let proto: u8 = load(ctx, inner + 9, Reason::DropTruncated)?;
    let saddr: u32 = load(ctx, inner + 12, Reason::DropTruncated)?;
    let daddr: u32 = load(ctx, inner + 16, Reason::DropTruncated)?;
    let l4 = inner + ihl;
    let (sport, dport, sport_off, dport_off) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (
            load(ctx, l4, Reason::DropTruncated)?,
            load(ctx, l4 + 2, Reason::DropTruncated)?,
            l4,
            l4 + 2,
        ),
        IPPROTO_ICMP => {
            let t: u8 = load(ctx, l4, Reason::DropTruncated)?;
            let id: u16 = load(ctx, l4 + 4, Reason::DropTruncated)?;
            match t {
                ICMP_ECHO_REQUEST => (id, 0, l4 + 4, l4 + 4),
                ICMP_ECHO_REPLY => (0, id, l4 + 4, l4 + 4),
                _ => return Err(Reason::PassUntrackedProto),
            }
        }
        _ => return Err(Reason::PassUntrackedProto),
    };
    // The key is the quoted tuple reversed; the offsets stay the quoted
    // packet's own, so a rewrite swaps them back (see `rewrite::icmp_error`).
    pkt.key = tuple(daddr, saddr, dport, sport, proto);
    pkt.sport_off = sport_off;
    pkt.dport_off = dport_off;
    pkt.inner_ip = inner;
    Ok(())
}
