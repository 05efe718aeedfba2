//! Crafting Ethernet/IPv4 packets and checking their checksums.

use std::net::Ipv4Addr;

use netbr::probe::inet_checksum;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// A packet to build: addresses, ports (the ICMP echo id goes in `sport`),
/// protocol, TCP flags, IP options and payload.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// ICMP type (8 echo request, 0 echo reply, 3 unreachable, 11 time exceeded).
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Raw IP options, a multiple of 4 bytes.
    pub ip_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// UDP only: send with checksum 0 (none).
    pub udp_no_csum: bool,
}

impl Spec {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Self::new(TCP, src, dst, flags)
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self::new(UDP, src, dst, 0)
    }

    /// An ICMP error from `src` to `dst` quoting `quoted` (a frame built by
    /// [`Spec::build`]): its IP header and first 8 bytes of L4.
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        quoted: &[u8],
    ) -> Self {
        let mut s = Self::new(ICMP, (src, 0), (dst, 0), 0);
        s.icmp_type = icmp_type;
        s.icmp_code = code;
        let ihl = ((quoted[14] & 0x0f) as usize) * 4;
        s.payload = quoted[14..14 + ihl + 8].to_vec();
        s
    }

    pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Self {
        let mut s = Self::new(ICMP, (src, id), (dst, 0), 0);
        s.icmp_type = 8;
        s
    }

    fn new(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Self {
            src: src.0,
            dst: dst.0,
            sport: src.1,
            dport: dst.1,
            proto,
            tcp_flags: flags,
            icmp_type: 0,
            icmp_code: 0,
            ip_options: Vec::new(),
            payload: b"netbr".to_vec(),
            udp_no_csum: false,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = match self.proto {
            TCP => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..8].copy_from_slice(&1u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = self.tcp_flags;
                h[14..16].copy_from_slice(&65535u16.to_be_bytes());
                h
            }
            UDP => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h
            }
            _ => {
                let id = if self.icmp_type == 8 {
                    self.sport
                } else {
                    self.dport
                };
                let mut h = vec![self.icmp_type, self.icmp_code, 0, 0, 0, 0, 0, 1];
                h[4..6].copy_from_slice(&id.to_be_bytes());
                h
            }
        };
        l4.extend_from_slice(&self.payload);
        let csum = match self.proto {
            ICMP => inet_checksum(&l4),
            UDP if self.udp_no_csum => 0,
            _ => l4_checksum(self.src, self.dst, self.proto, &l4),
        };
        let off = match self.proto {
            TCP => 16,
            UDP => 6,
            _ => 2,
        };
        l4[off..off + 2].copy_from_slice(&csum.to_be_bytes());

        let ihl = 20 + self.ip_options.len();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.ip_options);
        let c = inet_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut buf = Vec::with_capacity(12 + l4.len());
    buf.extend_from_slice(&src.octets());
    buf.extend_from_slice(&dst.octets());
    buf.extend_from_slice(&[0, proto]);
    buf.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    buf.extend_from_slice(l4);
    let c = inet_checksum(&buf);
    if proto == UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// The fields of a packet as the peer would read them.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// Parses a frame, panicking unless its IP and L4 checksums verify.
pub fn parse_checked(frame: &[u8]) -> Seen {
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert_eq!(inet_checksum(&ip[..ihl]), 0, "IP header checksum is wrong");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[ihl..tot];
    let proto = ip[9];
    match proto {
        ICMP => {
            assert_eq!(inet_checksum(l4), 0, "ICMP checksum is wrong");
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            let (sport, dport) = if l4[0] == 8 { (id, 0) } else { (0, id) };
            Seen {
                src,
                dst,
                sport,
                dport,
            }
        }
        _ => {
            let stored = u16::from_be_bytes([
                l4[if proto == TCP { 16 } else { 6 }],
                l4[if proto == TCP { 17 } else { 7 }],
            ]);
            if !(proto == UDP && stored == 0) {
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&src.octets());
                pseudo.extend_from_slice(&dst.octets());
                pseudo.extend_from_slice(&[0, proto]);
                pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                pseudo.extend_from_slice(l4);
                assert_eq!(inet_checksum(&pseudo), 0, "L4 checksum is wrong");
            }
            Seen {
                src,
                dst,
                sport: u16::from_be_bytes([l4[0], l4[1]]),
                dport: u16::from_be_bytes([l4[2], l4[3]]),
            }
        }
    }
}

/// The packet an ICMP error frame quotes, with its IP header checksum verified.
pub fn parse_quoted(frame: &[u8]) -> Seen {
    let outer_ihl = ((frame[14] & 0x0f) as usize) * 4;
    let inner = &frame[14 + outer_ihl + 8..];
    let ihl = ((inner[0] & 0x0f) as usize) * 4;
    assert_eq!(
        inet_checksum(&inner[..ihl]),
        0,
        "quoted IP header checksum is wrong"
    );
    let l4 = &inner[ihl..];
    let (sport, dport) = if inner[9] == ICMP {
        let id = u16::from_be_bytes([l4[4], l4[5]]);
        if l4[0] == 8 {
            (id, 0)
        } else {
            (0, id)
        }
    } else {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    };
    Seen {
        src: Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]),
        dst: Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]),
        sport,
        dport,
    }
}

/// Splits a frame carrying one IPv4 datagram (no options) into two
/// fragments, the first with `first_len` bytes of IP payload (a multiple of 8).
pub fn fragment(frame: &[u8], first_len: usize, id: u16) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(first_len % 8, 0);
    let (eth, ip) = frame.split_at(14);
    let (hdr, payload) = ip.split_at(20);
    let make = |part: &[u8], offset: usize, more: bool| {
        let mut h = hdr.to_vec();
        h[2..4].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&id.to_be_bytes());
        let field = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&field.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = inet_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        [eth, &h, part].concat()
    };
    (
        make(&payload[..first_len], 0, true),
        make(&payload[first_len..], first_len, false),
    )
}

/// Reassembles two fragments made by [`fragment`] (after translation),
/// checking that they agree on addresses and that each IP header verifies.
pub fn reassemble(first: &[u8], later: &[u8]) -> Vec<u8> {
    for f in [first, later] {
        assert_eq!(
            inet_checksum(&f[14..34]),
            0,
            "fragment IP header checksum is wrong"
        );
    }
    assert_eq!(
        first[26..34],
        later[26..34],
        "fragments disagree on addresses"
    );
    let mut hdr = first[14..34].to_vec();
    let payload = [&first[34..], &later[34..]].concat();
    hdr[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    hdr[6..8].copy_from_slice(&[0x40, 0]);
    hdr[10..12].copy_from_slice(&[0, 0]);
    let c = inet_checksum(&hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
    [&first[..14], &hdr, &payload].concat()
}

/// An Ethernet + IPv6 frame carrying `payload` as protocol `next`, hop
/// limit 64. The payload's checksum is left as given: the datapath does
/// not translate IPv6, so tests compare frames byte for byte.
pub fn ipv6_frame(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    next: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[0..6].copy_from_slice(&[0x02, 0xaa, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0xbb, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(payload);
    f
}

/// The IPv6 pseudo-header (RFC 8200 8.1) and the L4 bytes of `frame`, as
/// the L4 checksum covers them.
pub fn ipv6_covered(frame: &[u8]) -> Vec<u8> {
    let l4 = &frame[54..];
    let mut covered = frame[22..54].to_vec();
    covered.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    covered.extend_from_slice(&[0, 0, 0, frame[20]]);
    covered.extend_from_slice(l4);
    covered
}

/// Where the L4 checksum of protocol `next` sits in its header.
fn l4_csum_offset(next: u8) -> usize {
    match next {
        TCP => 16,
        UDP => 6,
        _ => 2,
    }
}

/// [`ipv6_frame`] with its TCP, UDP or ICMPv6 checksum filled in.
pub fn ipv6_checked(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    next: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = ipv6_frame(src, dst, next, l4);
    let at = 54 + l4_csum_offset(next);
    f[at..at + 2].copy_from_slice(&[0, 0]);
    let sum = netbr::probe::inet_checksum(&ipv6_covered(&f));
    f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    f
}

/// What a test reads back from an IPv6 frame, its L4 checksum verified.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen6 {
    pub src: std::net::Ipv6Addr,
    pub dst: std::net::Ipv6Addr,
    /// TCP and UDP ports; for ICMPv6 echo, the identifier twice.
    pub sport: u16,
    pub dport: u16,
}

pub fn parse_checked6(frame: &[u8]) -> Seen6 {
    assert_eq!(
        netbr::probe::inet_checksum(&ipv6_covered(frame)),
        0,
        "L4 checksum of {frame:02x?}"
    );
    let addr = |at: usize| {
        let b: [u8; 16] = frame[at..at + 16].try_into().expect("address");
        std::net::Ipv6Addr::from(b)
    };
    let word = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let (sport, dport) = match frame[20] {
        TCP | UDP => (word(54), word(56)),
        _ => (word(58), word(58)),
    };
    Seen6 {
        src: addr(22),
        dst: addr(38),
        sport,
        dport,
    }
}

/// A TCP header (no options) from `sport` to `dport` with `flags`.
pub fn tcp_header(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1u32.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    h
}

/// A UDP datagram from `sport` to `dport` carrying "netbr".
pub fn udp_datagram(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&13u16.to_be_bytes());
    h.extend_from_slice(b"netbr");
    h
}

/// An ICMPv6 echo request (128) or reply (129) with identifier `id`.
pub fn echo6(kind: u8, id: u16) -> Vec<u8> {
    let mut h = vec![kind, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&1u16.to_be_bytes());
    h.extend_from_slice(b"netbr");
    h
}

/// An IPv6 frame from [`ipv6_checked`] with an 8-byte hop-by-hop header
/// (one PadN option) before its transport header; the L4 checksum stays
/// right, since the pseudo-header names the transport protocol.
pub fn with_hop_by_hop(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..54].to_vec();
    let next = f[20];
    f[20] = 0;
    let len = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&frame[54..]);
    f
}

/// An IPv6 frame without the 8-byte extension header after its fixed one.
pub fn without_extension(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..54].to_vec();
    f[20] = frame[54];
    let len = u16::from_be_bytes([f[18], f[19]]) - 8;
    f[18..20].copy_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&frame[62..]);
    f
}

/// Splits an IPv6 frame's payload into two fragments (RFC 8200 4.5) at
/// byte `at` (a multiple of 8), identification `id`.
pub fn fragment6(frame: &[u8], at: usize, id: u32) -> (Vec<u8>, Vec<u8>) {
    let next = frame[20];
    let l4 = &frame[54..];
    let piece = |offset: usize, more: bool, part: &[u8]| {
        let mut f = frame[..54].to_vec();
        f[20] = 44;
        f[18..20].copy_from_slice(&((8 + part.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[next, 0]);
        f.extend_from_slice(&(offset as u16 | u16::from(more)).to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(part);
        f
    };
    (piece(0, true, &l4[..at]), piece(at, false, &l4[at..]))
}

/// The datagram two fragments from [`fragment6`] carry, as one frame.
pub fn reassemble6(first: &[u8], later: &[u8]) -> Vec<u8> {
    let mut f = without_extension(first);
    f.extend_from_slice(&later[62..]);
    let len = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&len.to_be_bytes());
    f
}
