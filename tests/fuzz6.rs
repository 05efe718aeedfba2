//! Fuzzing the TC programs' IPv6 path against its reference model
//! (`support/model6.rs`) through BPF_PROG_TEST_RUN, as `fuzz.rs` does
//! IPv4's. Packets are structure-aware mutations of realistic dual-stack
//! traffic (masquerade and the host's own flows beside it, published
//! ports on every address and on one, hairpin, direct routing, ICMPv6
//! echo, errors quoting real flows,
//! neighbour discovery): extension-header chains of any length,
//! fragments and their fields, wrong payload lengths, next-header values,
//! truncation at any byte, flipped bits, VLAN tags. For each, the verdict,
//! the counter reason, every output byte outside the fields the model lets
//! change, the translated tuple and checksum validity must agree with the
//! model. `NETBR_FUZZ_PACKETS` and `NETBR_FUZZ_SEED` size and seed a run.

mod support;

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::Ebpf;
use netbr::{addr::to_be32, bpf::datapath::Datapath, probe::inet_checksum};
use netbr_common::{
    conntrack::{CtEntry6, FlowKey6, STATE_COUNT},
    maps::{
        Config, Endpoint, FragVal, MappingKey, MappingTarget, CFG_FAST_PATH, MAPPING_IPV4_ONLY,
        MAPPING_IPV6_ONLY,
    },
    net6::{words, FragKey6, MappingKey6, Net6, MAP_FRAGMENTS6},
    IPPROTO_TCP, IPPROTO_UDP,
};
use support::{
    config::{test_config, CT_MAX},
    fuzzing::{
        ask_route, counted, dropped, fuzz_seed, ifindex, in_fast_namespace, kernel_taint,
        load_tc_programs, redirected, run_tc, untouched, Recent, Record, Rng, C2_MAC, PASS,
        WEB_MAC,
    },
    model::{self, Hook, UplinkRoute, FRAG_LATER},
    model6::{self, Expect6, Tables6, IPPROTO_ICMPV6, L4},
    packet::{echo6, fragment6, ipv6_checked, ipv6_covered, tcp_header, udp_datagram},
};

const UPLINK6: &str = "2001:db8:1::1";
/// A second address of the host's, with a port published on it alone.
const SECOND6: &str = "2001:db8:1::9";
const LAN6: &str = "2001:db8:1::2";
const REMOTE6: &str = "2001:db8:2::7";
const LINK_LOCAL: &str = "fe80::5";
const GATEWAY6: &str = "fd00:30::1";
const WEB6: &str = "fd00:30::2";
const C2_6: &str = "fd00:30::3";
/// In the subnet, no endpoint's.
const NOBODY6: &str = "fd00:30::99";
const WEB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const C2: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
const PORTS: [u16; 14] = [
    8080, 8084, 8085, 8086, 8081, 5353, 53, 80, 443, 40000, 50000, 61000, 5000, 65535,
];

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 address")
}

struct Fixture {
    ebpf: Ebpf,
    dp: Datapath,
    frags: aya::maps::HashMap<aya::maps::MapData, FragKey6, FragVal>,
    /// The routing table's answers, asked once per address (fast path).
    routes: std::cell::RefCell<std::collections::HashMap<[u32; 4], UplinkRoute>>,
}

impl Tables6 for Fixture {
    fn config(&self) -> Config {
        self.dp.config().expect("config")
    }
    fn net6(&self) -> Net6 {
        self.dp.net6.get(&0, 0).expect("net6")
    }
    fn mapping(&self, key: &MappingKey) -> Option<MappingTarget> {
        self.dp.mappings.get(key, 0).ok()
    }
    fn mapping6(&self, key: &MappingKey6) -> Option<MappingTarget> {
        self.dp.mappings6.get(key, 0).ok()
    }
    fn endpoint6(&self, addr4: u32) -> Option<[u32; 4]> {
        self.dp.endpoints6.get(&addr4, 0).ok()
    }
    fn ct6_in(&self, key: &FlowKey6, assured: bool) -> Option<CtEntry6> {
        let table = if assured {
            &self.dp.conntrack6
        } else {
            &self.dp.conntrack6_new
        };
        table.get(key, 0).ok()
    }
    fn frag6(&self, key: &FragKey6) -> Option<FragVal> {
        self.frags.get(key, 0).ok()
    }
    fn endpoint6_mac(&self, addr: &[u32; 4]) -> Option<[u8; 6]> {
        self.dp.endpoints6_by_addr.get(addr, 0).ok().map(|e| e.mac)
    }
    fn uplink_route6(&self, daddr: &[u32; 4]) -> UplinkRoute {
        *self.routes.borrow_mut().entry(*daddr).or_insert_with(|| {
            let octets: Vec<u8> = daddr.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let octets: [u8; 16] = octets.try_into().expect("16 bytes");
            ask_route(Ipv6Addr::from(octets).into())
        })
    }
}

impl Fixture {
    /// A dual-stack bridge fd00:30::/64 masqueraded to the uplink's
    /// 2001:db8:1::1; with `fast`, the fast path on, in the namespace of
    /// `fuzzing::in_fast_namespace`, whose `up0` and `br0` are the uplink
    /// and the bridge and whose veths the endpoints'.
    fn new(fast: bool) -> Self {
        let mut ebpf = netbr::bpf::attach::load(None, CT_MAX, None).expect("load");
        let mut dp = Datapath::from_ebpf(&mut ebpf).expect("maps");
        let mut cfg = test_config((61000, 65535), [86_400; STATE_COUNT]);
        if fast {
            cfg.flags |= CFG_FAST_PATH;
            cfg.uplink_ifindex = ifindex("up0");
            cfg.bridge_ifindex = ifindex("br0");
        }
        dp.set_config(&cfg).expect("config");
        let mut net = Net6::new(
            &v6("fd00:30::").octets(),
            64,
            &v6(GATEWAY6).octets(),
            &v6(UPLINK6).octets(),
        );
        net.one_address_mappings = 2;
        dp.set_net6(&net).expect("net6");
        for (ip, ip6, mac, veth) in [(WEB, WEB6, WEB_MAC, "web0"), (C2, C2_6, C2_MAC, "c20")] {
            let ip6 = words(&v6(ip6).octets());
            dp.endpoints6
                .insert(to_be32(ip), ip6, 0)
                .expect("endpoint's IPv6");
            let host_ifindex = if fast { ifindex(veth) } else { 100 };
            dp.endpoints6_by_addr
                .insert(ip6, Endpoint::new(host_ifindex, mac, 0), 0)
                .expect("endpoint by its IPv6");
        }
        let target = |to: Ipv4Addr, port: u16, flags: u16| MappingTarget {
            addr: to_be32(to),
            port: port.to_be(),
            flags,
        };
        // Every address (both families, IPv4's alone, IPv6's alone).
        for (proto, port, to, flags) in [
            (IPPROTO_TCP, 8080, target(WEB, 80, 0), 0),
            (IPPROTO_UDP, 5353, target(WEB, 53, 0), 0),
            (IPPROTO_TCP, 8081, target(WEB, 81, 0), MAPPING_IPV4_ONLY),
            (IPPROTO_TCP, 8086, target(C2, 86, 0), MAPPING_IPV6_ONLY),
        ] {
            let key = MappingKey {
                proto,
                _pad: 0,
                port: u16::to_be(port),
                addr: 0,
            };
            dp.mappings
                .insert(key, MappingTarget { flags, ..to }, 0)
                .expect("mapping");
        }
        // One address alone: a second one of the host's, and the uplink's.
        for (addr, port, to) in [
            (SECOND6, 8084, target(WEB, 84, 0)),
            (UPLINK6, 8085, target(C2, 85, 0)),
        ] {
            let key = MappingKey6 {
                proto: IPPROTO_TCP,
                _pad: 0,
                port: u16::to_be(port),
                addr: words(&v6(addr).octets()),
            };
            dp.mappings6
                .insert(key, to, 0)
                .expect("one-address mapping");
        }
        dp.set_published_ports(&[]).expect("published ports");
        let frags = ebpf
            .take_map(MAP_FRAGMENTS6)
            .expect("frag map")
            .try_into()
            .expect("frag map type");
        load_tc_programs(&mut ebpf);
        Self {
            ebpf,
            dp,
            frags,
            routes: Default::default(),
        }
    }

    /// Runs one frame (`fuzzing::run_tc`).
    fn run(&mut self, hook: Hook, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        run_tc(&mut self.ebpf, hook, frame, L4)
    }
}

/// A transport header of `proto` from `sport` to `dport`.
fn l4(rng: &mut Rng, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    match proto {
        IPPROTO_TCP => tcp_header(
            sport,
            dport,
            rng.pick(&[0x02, 0x10, 0x12, 0x11, 0x04, 0x18]),
        ),
        IPPROTO_UDP => {
            let mut d = udp_datagram(sport, dport);
            if rng.chance(10) {
                d.extend(std::iter::repeat_n(7, 64 + rng.below(400) as usize));
                let len = d.len() as u16;
                d[4..6].copy_from_slice(&len.to_be_bytes());
            }
            d
        }
        // Echo request or reply; now and then neighbour discovery or MLD,
        // which must pass untouched.
        _ => match rng.below(10) {
            0 => vec![rng.pick(&[133, 134, 135, 136, 143]), 0, 0, 0, 0, 0, 0, 0],
            1..=3 => echo6(129, sport),
            _ => echo6(128, sport),
        },
    }
}

/// Inserts `n` extension headers (hop-by-hop, routing, destination
/// options) of random lengths after the fixed header, keeping the chain's
/// next-header links and the payload length right.
fn with_extensions(rng: &mut Rng, frame: &[u8], n: usize) -> Vec<u8> {
    let mut next = frame[20];
    let mut chain = Vec::new();
    for _ in 0..n {
        let kind = rng.pick(&[0u8, 43, 60]);
        let units = rng.below(3) as usize;
        let mut h = vec![0u8; (units + 1) * 8];
        h[0] = next;
        h[1] = units as u8;
        if kind != 43 {
            // PadN over the rest.
            h[2] = 1;
            h[3] = (h.len() - 4) as u8;
        }
        next = kind;
        chain.splice(0..0, h);
    }
    let mut f = frame[..L4].to_vec();
    f[20] = next;
    let len = u16::from_be_bytes([f[18], f[19]]) + chain.len() as u16;
    f[18..20].copy_from_slice(&len.to_be_bytes());
    f.extend(chain);
    f.extend_from_slice(&frame[L4..]);
    f
}

/// An ICMPv6 error about `sent` back to its source, quoting as much of it
/// as fits, or less: from its destination, or from `router` on the way.
fn error_about(rng: &mut Rng, sent: &[u8], router: Option<&str>) -> Option<Vec<u8>> {
    if sent.len() < L4 + 8 || sent[12..14] != [0x86, 0xdd] {
        return None;
    }
    let to = Ipv6Addr::from(<[u8; 16]>::try_from(&sent[22..38]).ok()?);
    let from = match router {
        Some(r) if rng.chance(50) => v6(r),
        _ => Ipv6Addr::from(<[u8; 16]>::try_from(&sent[38..54]).ok()?),
    };
    let mut quoted = sent[14..].to_vec();
    quoted.truncate(if rng.chance(15) {
        rng.below(quoted.len() as u64) as usize
    } else {
        1232
    });
    let kind = rng.pick(&[1u8, 2, 3, 4]);
    let mut msg = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    if kind == 2 {
        msg[4..8].copy_from_slice(&1280u32.to_be_bytes());
    }
    msg.extend(quoted);
    Some(ipv6_checked(from, to, IPPROTO_ICMPV6, &msg))
}

/// A realistic IPv6 frame for a hook, before mutation. A datagram sent
/// in two fragments leaves its later one in `pending`, to go next.
fn base(
    rng: &mut Rng,
    recent: &[(Hook, Vec<u8>)],
    pending: &mut Option<(Hook, Vec<u8>)>,
) -> (Hook, Vec<u8>) {
    if let Some(later) = pending.take() {
        return later;
    }
    if rng.chance(8) && !recent.is_empty() {
        // What left through the uplink draws an error back from beyond it;
        // what reached a container, one from the container.
        let (hook, sent) = &recent[rng.below(recent.len() as u64) as usize];
        let (back, router) = match hook {
            Hook::UplinkEgress => (Hook::UplinkIngress, Some(REMOTE6)),
            _ => (Hook::UplinkEgress, None),
        };
        if let Some(e) = error_about(rng, sent, router) {
            return (back, e);
        }
    }
    if rng.chance(3) {
        let len = L4 + rng.below(80) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        b[12..14].copy_from_slice(&[0x86, 0xdd]);
        b[14] = 0x60;
        return (
            rng.pick(&[Hook::UplinkIngress, Hook::UplinkEgress, Hook::BridgeIngress]),
            b,
        );
    }
    let hook = rng.pick(&[Hook::UplinkIngress, Hook::UplinkEgress, Hook::BridgeIngress]);
    let (src, dst) = match hook {
        Hook::UplinkIngress => (
            rng.pick(&[LAN6, LAN6, REMOTE6, LINK_LOCAL]),
            rng.pick(&[UPLINK6, UPLINK6, UPLINK6, SECOND6, WEB6, NOBODY6, REMOTE6]),
        ),
        Hook::UplinkEgress => (
            rng.pick(&[WEB6, WEB6, C2_6, UPLINK6]),
            rng.pick(&[REMOTE6, LAN6, LAN6, C2_6, UPLINK6]),
        ),
        Hook::BridgeIngress => (
            rng.pick(&[WEB6, C2_6, C2_6]),
            rng.pick(&[UPLINK6, UPLINK6, SECOND6, GATEWAY6, REMOTE6, C2_6]),
        ),
    };
    let proto = rng.pick(&[
        IPPROTO_TCP,
        IPPROTO_TCP,
        IPPROTO_UDP,
        IPPROTO_UDP,
        IPPROTO_ICMPV6,
    ]);
    let (sport, dport) = (rng.pick(&PORTS), rng.pick(&PORTS));
    let payload = l4(rng, proto, sport, dport);
    let mut frame = ipv6_checked(v6(src), v6(dst), proto, &payload);
    if rng.chance(12) {
        let n = 1 + rng.below(5) as usize;
        frame = with_extensions(rng, &frame, n);
    }
    if frame.len() > L4 + 64 && frame[20] == IPPROTO_UDP && rng.chance(60) {
        let at = 8 * (1 + rng.below(((frame.len() - L4) / 8 - 1) as u64) as usize);
        let (first, later) = fragment6(&frame, at, rng.next() as u32);
        frame = match rng.below(4) {
            0 => later,
            1 => first,
            _ => {
                *pending = Some((hook, later));
                first
            }
        };
    }
    (hook, frame)
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(8) {
            0 => {
                let keep = L4 + rng.below((b.len() - L4 + 1) as u64) as usize;
                b.truncate(keep);
            }
            1 => {
                let v = if rng.chance(50) {
                    rng.next() as u16
                } else {
                    (b.len() as u16)
                        .wrapping_sub(L4 as u16)
                        .wrapping_add(rng.below(9) as u16)
                        .wrapping_sub(4)
                };
                b[18..20].copy_from_slice(&v.to_be_bytes());
            }
            2 => {
                let random = rng.next() as u8;
                b[20] = rng.pick(&[0, 6, 17, 43, 44, 58, 59, 60, random]);
            }
            // A fragment header's offset and more-fragments bit.
            3 if b[20] == 44 && b.len() >= L4 + 8 => {
                let random = rng.next() as u16;
                let v = rng.pick(&[0x0001u16, 0x0000, 0x0008, 0x0009, 0xfff8, random]);
                b[L4 + 2..L4 + 4].copy_from_slice(&v.to_be_bytes());
            }
            // An extension header's length or next header.
            4 if matches!(b[20], 0 | 43 | 60) && b.len() >= L4 + 2 => {
                b[L4 + rng.below(2) as usize] = rng.next() as u8;
            }
            5 => {
                b.splice(12..12, [0x81, 0x00, 0x00, 0x2a]);
            }
            6 => {
                let i = 14 + rng.below((b.len().min(130) - 14) as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            _ => {}
        }
    }
}

/// L4 checksum validity of a frame with no extension header whose payload
/// length is its own.
fn l4_csum_ok(b: &[u8]) -> Option<bool> {
    let whole = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6].contains(b.get(20)?)
        && usize::from(u16::from_be_bytes([b[18], b[19]])) == b.len() - L4;
    whole.then(|| inet_checksum(&ipv6_covered(b)) == 0)
}

/// Byte ranges a translation of `p` may change: the addresses, and unless
/// it is a later fragment the ports (echo identifier) and the checksum.
fn mutable_ranges(p: &model6::Parsed6) -> Vec<std::ops::Range<usize>> {
    let addresses = 22..54;
    if p.frag == FRAG_LATER {
        return [addresses].into();
    }
    // Ports, or an echo's identifier.
    let ports = if p.key.proto == IPPROTO_ICMPV6 {
        p.l4 + 4..p.l4 + 6
    } else {
        p.l4..p.l4 + 4
    };
    [addresses, ports, p.csum_at..p.csum_at + 2].into()
}

fn unchanged_but(b: &[u8], out: &[u8], ranges: &[std::ops::Range<usize>]) -> Result<(), String> {
    for i in 0..b.len() {
        if b[i] != out[i] && !ranges.iter().any(|r| r.contains(&i)) {
            return Err(format!(
                "byte {i} changed ({:#04x} -> {:#04x}) outside the translated fields",
                b[i], out[i]
            ));
        }
    }
    Ok(())
}

fn check(
    b: &[u8],
    hook: Hook,
    expect: &Expect6,
    verdict: u32,
    out: &[u8],
    f: &Fixture,
) -> Result<(), String> {
    if let Expect6::Forward { inner, macs } = expect {
        // The rest is checked as the translation it carries (IPv6 has no
        // header checksum to follow the hop limit).
        let routed = redirected(verdict, b, out, macs, Some(21))?;
        return check(&routed, hook, inner, PASS, out, f);
    }
    match expect {
        Expect6::Forward { .. } => unreachable!("checked above"),
        Expect6::Untouched(_) => untouched(verdict, b, out)?,
        Expect6::Drop(_) => dropped(verdict)?,
        Expect6::Translate {
            reason,
            to,
            any_sport,
        } => {
            if verdict != PASS || out.len() != b.len() {
                return Err(format!("expected translation, got verdict {verdict:#x}"));
            }
            let input = model6::parse6(b, hook, None).map_err(|r| format!("input: {r:?}"))?;
            let got = model6::parse6(out, hook, None).map_err(|r| format!("output: {r:?}"))?;
            let mut want = *to;
            if *any_sport {
                let (own, port) = (u16::from_be(input.key.sport), u16::from_be(got.key.sport));
                if !model::snat_port_allowed(&f.config(), *reason, own, port) {
                    return Err(format!("SNAT chose port {port}"));
                }
                want.sport = got.key.sport;
            }
            let (g, w) = (&got.key, &want);
            let same = if input.frag == FRAG_LATER {
                (g.saddr, g.daddr) == (w.saddr, w.daddr)
            } else {
                g == w
            };
            if !same {
                return Err(format!("translated to {g:?}, want {w:?}"));
            }
            unchanged_but(b, out, &mutable_ranges(&input))?;
            if l4_csum_ok(b) == Some(true) && l4_csum_ok(out) != Some(true) {
                return Err("L4 checksum broken by translation".into());
            }
        }
        Expect6::IcmpError {
            outbound,
            addr,
            port,
            port_at,
        } => {
            if verdict != PASS || out.len() != b.len() {
                return Err(format!(
                    "expected ICMPv6 error translation, got {verdict:#x}"
                ));
            }
            // Outbound, the outer source and the quoted destination;
            // inbound, the outer destination and the quoted source.
            let (outer, quoted) = if *outbound {
                (22, model6::QUOTED + 24)
            } else {
                (38, model6::QUOTED + 8)
            };
            let word_addr = |at: usize| words(&out[at..at + 16].try_into().expect("address"));
            if word_addr(outer) != *addr || word_addr(quoted) != *addr {
                return Err("outer or quoted address not translated".into());
            }
            if out[*port_at..*port_at + 2] != port.to_ne_bytes() {
                return Err("quoted port not translated".into());
            }
            let ranges = [
                outer..outer + 16,
                L4 + 2..L4 + 4,
                quoted..quoted + 16,
                *port_at..*port_at + 2,
            ];
            unchanged_but(b, out, &ranges)?;
            if l4_csum_ok(b) == Some(true) && l4_csum_ok(out) != Some(true) {
                return Err("ICMPv6 checksum broken".into());
            }
        }
    }
    Ok(())
}

#[test]
fn the_ipv6_path_agrees_with_the_reference_model() {
    fuzz6(false);
}

/// The same with the fast path on, in a namespace of the test's own whose
/// uplink and bridge the programs route through: tracked flows' packets
/// leave the bridge hook translated, hop limit one less, addressed to the
/// next hop or for the kernel to resolve it; packets the uplink translates
/// towards a container are redirected into it, hop limit one less,
/// addressed from the bridge.
#[test]
fn the_ipv6_path_agrees_with_the_reference_model_with_the_fast_path_on() {
    in_fast_namespace(|| fuzz6(true));
}

fn fuzz6(fast: bool) {
    let (packets, seed) = fuzz_seed(500_000);
    let tainted = kernel_taint();
    let mut f = Fixture::new(fast);
    let mut rng = Rng(seed | 1);
    let mut recent = Recent::default();
    let mut pending = None;
    let mut record = Record::default();
    for n in 0..packets {
        let (hook, mut b) = base(&mut rng, &recent.0, &mut pending);
        if rng.chance(40) {
            mutate(&mut rng, &mut b);
        }
        let expect = model6::expect6(&b, hook, &f);
        if matches!(expect, Expect6::Forward { .. }) {
            record.count(if hook == Hook::UplinkIngress {
                "fast_path_in"
            } else {
                "fast_path_out"
            });
        }
        let reason = expect.reason();
        let before = f.dp.counter(reason).expect("counter");
        let Some((verdict, out)) = f.run(hook, &b) else {
            record.count("refused_by_test_run");
            continue;
        };
        let result = counted(
            check(&b, hook, &expect, verdict, &out, &f),
            reason,
            before,
            f.dp.counter(reason).expect("counter"),
        );
        record.count(reason.name());
        if let Err(e) = result {
            record.mismatch(format!("#{n} {hook:?} expected {expect:?}: {e}"), &b, &out);
        }
        // What crossed the uplink translated may draw an error back.
        if hook != Hook::BridgeIngress {
            recent.keep(n, hook, verdict, &b, out);
        }
    }
    let mut expected = vec![
        "translated",
        "snat_new",
        "dnat_new",
        "hairpin_new",
        "host_flow_new",
        "icmp_error_translated",
        "pass_ipv6",
        "pass_not_ipv4",
        "pass_fragment",
        "drop_truncated",
        "drop_direct_routing",
        "drop_frag_no_first",
        "drop_rewrite",
    ];
    if fast {
        expected.extend(["fast_path_in", "fast_path_out"]);
    }
    record.assert_passed(
        &format!("{packets} IPv6 packets (seed {seed})"),
        &tainted,
        &expected,
    );
}
