//! Fuzzing the real TC programs (uplink and bridge) against the reference model
//! (`support/model.rs`) through BPF_PROG_TEST_RUN. Packets are
//! structure-aware mutations of realistic traffic (truncation at any byte,
//! any IHL, wrong total lengths, fragment bits, zero and bad checksums, VLAN
//! tags, ICMP errors quoting real flows, truncated quotes) and random bytes.
//! For each, the verdict, the counter reason, every output byte outside the
//! fields the model allows to change, the translated tuple, and checksum
//! validity must agree with the model. `NETBR_FUZZ_PACKETS` sets the count
//! (default one million; `cargo xtask fuzz --packets N`), `NETBR_FUZZ_SEED`
//! the seed; `NETBR_FUZZ_DEBUG=1` prints the conntrack entry the first
//! mismatching packet's tuple hit.

mod support;

use std::net::Ipv4Addr;

use aya::Ebpf;
use netbr::{addr::to_be32, bpf::datapath::Datapath, probe::inet_checksum};
use netbr_common::{
    conntrack::{CtEntry, CtState, FlowKey, DIR_ORIG, STATE_COUNT},
    counters::Reason,
    firewall::{RuleSpec, FW_ALLOW, FW_DENY, FW_IN, FW_OUT},
    maps::{
        Config, Endpoint, FragKey, FragVal, MappingKey, MappingTarget, CFG_FAST_PATH, MAP_FRAGMENTS,
    },
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
};
use support::{
    config::{test_config, BRIDGE_MAC, CT_MAX, HOST},
    fuzzing::{
        ask_route, counted, dropped, fuzz_seed, ifindex, in_fast_namespace, kernel_taint,
        load_tc_programs, redirected, run_tc, untouched, Recent, Record, Rng, C2_MAC, PASS,
        WEB_MAC,
    },
    model::{self, Expect, Hook, Tables, UplinkRoute},
    packet::{fragment, Spec},
};

const LAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
const WEB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const C2: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const PORTS: [u16; 16] = [
    8080, 8081, 8082, 5353, 22, 53, 80, 443, 40000, 40001, 50000, 61000, 61001, 5000, 123, 65535,
];

struct Fixture {
    ebpf: Ebpf,
    dp: Datapath,
    frags: aya::maps::HashMap<aya::maps::MapData, FragKey, FragVal>,
    rules: Vec<RuleSpec>,
    /// The routing table's answers, asked once per address (fast path).
    routes: std::cell::RefCell<std::collections::HashMap<u32, UplinkRoute>>,
}

impl Tables for Fixture {
    fn config(&self) -> Config {
        self.dp.config().expect("config")
    }
    fn mapping(&self, key: &MappingKey) -> Option<MappingTarget> {
        self.dp.mappings.get(key, 0).ok()
    }
    fn is_local(&self, addr: u32) -> bool {
        self.dp.local_addrs.get(&addr, 0).is_ok()
    }
    fn ct(&self, key: &FlowKey) -> Option<(CtEntry, bool)> {
        self.ct_in(key, true)
            .map(|e| (e, true))
            .or_else(|| self.ct_in(key, false).map(|e| (e, false)))
    }
    fn ct_in(&self, key: &FlowKey, assured: bool) -> Option<CtEntry> {
        let table = if assured {
            &self.dp.conntrack
        } else {
            &self.dp.conntrack_new
        };
        table.get(key, 0).ok()
    }
    fn frag(&self, key: &FragKey) -> Option<FragVal> {
        self.frags.get(key, 0).ok()
    }
    fn endpoint_mac(&self, addr: u32) -> Option<[u8; 6]> {
        self.dp.endpoints.get(&addr, 0).ok().map(|e| e.mac)
    }
    fn firewall(&self) -> &[RuleSpec] {
        &self.rules
    }
    fn uplink_route(&self, daddr: u32) -> UplinkRoute {
        *self
            .routes
            .borrow_mut()
            .entry(daddr)
            .or_insert_with(|| ask_route(model::ip(daddr).into()))
    }
}

/// Rules the generated traffic meets: a deny of one lan client on 8080, an
/// allow list on 5353/udp, and C2 refused 198.51.100.0/24 port 53.
fn fuzz_rules() -> Vec<RuleSpec> {
    let host = |a: Ipv4Addr| u32::from(a);
    vec![
        RuleSpec {
            id: 1,
            dir: FW_IN,
            action: FW_DENY,
            cidr: (host(OTHER), 32),
            port: Some((0, 8080)),
            endpoint: None,
        },
        RuleSpec {
            id: 2,
            dir: FW_IN,
            action: FW_ALLOW,
            cidr: (host(LAN), 32),
            port: Some((IPPROTO_UDP, 5353)),
            endpoint: None,
        },
        RuleSpec {
            id: 3,
            dir: FW_OUT,
            action: FW_DENY,
            cidr: (host(Ipv4Addr::new(198, 51, 100, 0)), 24),
            port: Some((0, 53)),
            endpoint: Some(host(C2)),
        },
    ]
}

impl Fixture {
    /// With `fast`, the fast path is on and the programs see this thread's
    /// namespace's `up0` and `br0` (`FAST_SETUP`) as uplink and bridge.
    fn new(fast: bool) -> Self {
        let mut ebpf = netbr::bpf::attach::load(None, CT_MAX, None).expect("load");
        let mut dp = Datapath::from_ebpf(&mut ebpf).expect("maps");
        // Nothing expires during a run.
        let mut cfg = test_config((61000, 65535), [86_400; STATE_COUNT]);
        if fast {
            cfg.flags |= CFG_FAST_PATH;
            cfg.uplink_ifindex = ifindex("up0");
            cfg.bridge_ifindex = ifindex("br0");
        }
        dp.set_config(&cfg).expect("config");
        for (ip, mac, veth) in [(WEB, WEB_MAC, "web0"), (C2, C2_MAC, "c20")] {
            let host_ifindex = if fast { ifindex(veth) } else { 100 };
            let ep = Endpoint::new(host_ifindex, mac, 0);
            dp.endpoints.insert(to_be32(ip), ep, 0).expect("endpoint");
        }
        for a in [HOST, Ipv4Addr::new(172, 30, 0, 1), Ipv4Addr::LOCALHOST] {
            dp.local_addrs.insert(to_be32(a), 1, 0).expect("local");
        }
        for (proto, addr, port, cport) in [
            (IPPROTO_TCP, Ipv4Addr::UNSPECIFIED, 8080, 80),
            (IPPROTO_UDP, Ipv4Addr::UNSPECIFIED, 5353, 53),
            (IPPROTO_TCP, HOST, 8081, 81),
            (IPPROTO_TCP, Ipv4Addr::LOCALHOST, 8082, 82),
        ] {
            let key = MappingKey {
                proto,
                _pad: 0,
                port: u16::to_be(port),
                addr: to_be32(addr),
            };
            let target = MappingTarget {
                addr: to_be32(WEB),
                port: u16::to_be(cport),
                flags: 0,
            };
            dp.mappings.insert(key, target, 0).expect("mapping");
        }
        dp.set_published_ports(&[]).expect("published ports");
        let frags = ebpf
            .take_map(MAP_FRAGMENTS)
            .expect("frag map")
            .try_into()
            .expect("frag map type");
        load_tc_programs(&mut ebpf);
        let rules = fuzz_rules();
        let mut slot = 0;
        let installed: Vec<_> = rules
            .iter()
            .map(|r| {
                let n = netbr_common::firewall::entries(r).count() as u32;
                slot += n;
                (*r, (slot - n..slot).collect())
            })
            .collect();
        netbr::store::firewall::replace_rules(&mut dp, &installed).expect("firewall rules");
        Self {
            ebpf,
            dp,
            frags,
            rules,
            routes: Default::default(),
        }
    }

    /// Runs one frame (`fuzzing::run_tc`).
    fn run(&mut self, hook: Hook, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        // Its mutations may make an IPv6 ethertype: 40 bytes behind it.
        run_tc(&mut self.ebpf, hook, frame, 14 + 40)
    }
}

/// A realistic packet for `hook`, before mutation.
fn base(rng: &mut Rng, recent: &[(Hook, Vec<u8>)]) -> (Hook, Vec<u8>) {
    let kind = rng.below(100);
    if kind < 8 && !recent.is_empty() {
        // An ICMP error about a packet that went out: it comes back the other way.
        let (hook, sent) = &recent[rng.below(recent.len() as u64) as usize];
        if sent.len() >= 14 + 28
            && sent[12..14] == [8, 0]
            && sent[14] >> 4 == 4
            && (sent[14] & 0xf) >= 5
        {
            let s = Ipv4Addr::new(sent[30], sent[31], sent[32], sent[33]);
            let d = Ipv4Addr::new(sent[26], sent[27], sent[28], sent[29]);
            let from = if rng.chance(50) { s } else { REMOTE };
            let quoted_len = ((sent[14] & 0xf) as usize * 4 + 8).min(sent.len() - 14);
            let mut quoted = sent[..14 + quoted_len].to_vec();
            if rng.chance(10) {
                quoted.truncate(14 + rng.below(quoted_len as u64) as usize);
            }
            let mut spec = Spec::icmp_error(
                from,
                d,
                rng.pick(&[3, 11, 12]),
                rng.pick(&[0, 3, 4]),
                &[sent.as_slice(), &[0; 8]].concat(),
            );
            spec.payload = quoted[14..].to_vec();
            let back = if *hook == Hook::UplinkEgress {
                Hook::UplinkIngress
            } else {
                Hook::UplinkEgress
            };
            return (back, spec.build());
        }
    }
    if kind < 12 {
        let len = 15 + rng.below(100) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.chance(70) {
            b[12] = 8;
            b[13] = 0;
            b[14] = 0x45;
        }
        return (
            if rng.chance(50) {
                Hook::UplinkIngress
            } else {
                Hook::UplinkEgress
            },
            b,
        );
    }
    if rng.chance(25) {
        // Containers' traffic entering the host: hairpin to a published port
        // on a host address, or anything else, which must pass untouched.
        let src = rng.pick(&[WEB, C2, C2, REMOTE]);
        let dst = rng.pick(&[
            HOST,
            HOST,
            Ipv4Addr::new(172, 30, 0, 1),
            REMOTE,
            WEB,
            Ipv4Addr::LOCALHOST,
        ]);
        let (sp, dp) = (rng.pick(&PORTS), rng.pick(&PORTS));
        let spec = match rng.below(3) {
            0 => Spec::tcp((src, sp), (dst, dp), rng.pick(&[0x02, 0x10, 0x12])),
            1 => Spec::udp((src, sp), (dst, dp)),
            _ => Spec::echo_request(src, dst, sp),
        };
        return (Hook::BridgeIngress, spec.build());
    }
    let ingress = rng.chance(50);
    let (src, dst) = if ingress {
        (
            rng.pick(&[LAN, REMOTE]),
            rng.pick(&[HOST, HOST, HOST, Ipv4Addr::LOCALHOST, WEB, OTHER]),
        )
    } else {
        (
            rng.pick(&[WEB, WEB, C2, HOST]),
            rng.pick(&[REMOTE, LAN, C2]),
        )
    };
    let (sp, dp) = (rng.pick(&PORTS), rng.pick(&PORTS));
    let mut spec = match rng.below(10) {
        0..=3 => Spec::tcp(
            (src, sp),
            (dst, dp),
            rng.pick(&[0x02, 0x10, 0x12, 0x11, 0x04, 0x18]),
        ),
        4..=7 => Spec::udp((src, sp), (dst, dp)),
        _ => {
            let mut s = Spec::echo_request(src, dst, sp);
            if rng.chance(50) {
                s.icmp_type = 0;
                s.dport = sp;
                s.sport = 0;
            }
            s
        }
    };
    if rng.chance(10) {
        spec.ip_options = vec![1; 4 * (1 + rng.below(10) as usize)];
    }
    if rng.chance(10) && spec.proto == IPPROTO_UDP {
        spec.payload = vec![9; 64 + rng.below(200) as usize];
        let (first, later) = fragment(&spec.build(), 32, rng.next() as u16);
        let hook = if ingress {
            Hook::UplinkIngress
        } else {
            Hook::UplinkEgress
        };
        return (hook, if rng.chance(60) { first } else { later });
    }
    if rng.chance(5) {
        spec.udp_no_csum = true;
    }
    (
        if ingress {
            Hook::UplinkIngress
        } else {
            Hook::UplinkEgress
        },
        spec.build(),
    )
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(8) {
            0 => {
                let keep = 14 + rng.below((b.len() - 13) as u64) as usize;
                b.truncate(keep);
            }
            1 if b.len() > 14 => b[14] = (b[14] & 0xf0) | rng.below(16) as u8,
            2 if b.len() > 17 => {
                let v = if rng.chance(50) {
                    rng.next() as u16
                } else {
                    (b.len() as u16)
                        .wrapping_sub(14)
                        .wrapping_add(rng.below(9) as u16)
                        .wrapping_sub(4)
                };
                b[16..18].copy_from_slice(&v.to_be_bytes());
            }
            3 if b.len() > 21 => {
                let random = rng.next() as u16;
                let v = rng.pick(&[0x2000u16, 0x0001, 0x2004, 0x4000, 0x1fff, random]);
                b[20..22].copy_from_slice(&v.to_be_bytes());
            }
            4 if b.len() > 25 => {
                b[24] = 0;
                b[25] = if rng.chance(50) { 0 } else { rng.next() as u8 };
            }
            5 => {
                b.splice(12..12, [0x81, 0x00, 0x00, 0x2a]);
            }
            6 if b.len() > 15 => {
                let i = 14 + rng.below((b.len().min(90) - 14) as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            _ => {}
        }
    }
}

fn counter(f: &Fixture, r: Reason) -> u64 {
    f.dp.counter(r).expect("counter")
}

fn ip_csum_ok(b: &[u8]) -> Option<bool> {
    let ihl = (*b.get(14)? & 0x0f) as usize * 4;
    (ihl >= 20)
        .then(|| b.get(14..14 + ihl).map(|h| inet_checksum(h) == 0))
        .flatten()
}

/// L4 checksum validity of a whole (unfragmented) TCP/UDP/ICMP packet.
fn l4_csum_ok(b: &[u8]) -> Option<bool> {
    let ihl = (b[14] & 0x0f) as usize * 4;
    let tot = u16::from_be_bytes([b[16], b[17]]) as usize;
    let l4 = b.get(14 + ihl..14 + tot)?;
    match b[23] {
        IPPROTO_ICMP => Some(inet_checksum(l4) == 0),
        p @ (IPPROTO_TCP | IPPROTO_UDP) => {
            if p == IPPROTO_UDP && l4.get(6..8)? == [0, 0] {
                return Some(true);
            }
            let mut ph = Vec::with_capacity(12 + l4.len());
            ph.extend_from_slice(&b[26..34]);
            ph.extend_from_slice(&[0, p]);
            ph.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            ph.extend_from_slice(l4);
            Some(inet_checksum(&ph) == 0)
        }
        _ => None,
    }
}

/// Byte ranges a translation may change, from the input's own layout.
fn mutable_ranges(b: &[u8], icmp_error_inner: Option<usize>) -> Vec<std::ops::Range<usize>> {
    let ihl = (b[14] & 0x0f) as usize * 4;
    let l4 = 14 + ihl;
    let later = u16::from_be_bytes([b[20], b[21]]) & 0x1fff != 0;
    let mut r = vec![24..26, 26..34];
    if later {
        return r;
    }
    match b[23] {
        IPPROTO_TCP => r.extend([l4..l4 + 4, l4 + 16..l4 + 18]),
        IPPROTO_UDP => r.extend([l4..l4 + 4, l4 + 6..l4 + 8]),
        _ => r.extend([l4 + 2..l4 + 4, l4 + 4..l4 + 6]),
    }
    if let Some(inner) = icmp_error_inner {
        let iihl = (b[inner] & 0x0f) as usize * 4;
        let il4 = inner + iihl;
        r.extend([inner + 10..inner + 20, il4..il4 + 6]);
    }
    r
}

fn check(
    b: &[u8],
    hook: Hook,
    expect: &Expect,
    verdict: u32,
    out: &[u8],
    f: &Fixture,
) -> Result<(), String> {
    if let Expect::Forward { inner, macs } = expect {
        // The rest is checked as the translation it carries.
        let mut routed = redirected(verdict, b, out, macs, Some(22))?;
        // The TTL's change folded into the checksum incrementally (RFC
        // 1624), so a right checksum stays right and a wrong one wrong.
        let word = |ttl: u8| u32::from(u16::from_be_bytes([ttl, b[23]]));
        let mut sum = u32::from(!u16::from_be_bytes([b[24], b[25]]))
            + (!word(b[22]) & 0xffff)
            + word(out[22]);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        routed[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        return check(&routed, hook, inner, PASS, out, f);
    }
    if let Expect::Redirect { inner, to_mac } = expect {
        // A hairpin, bridged from the bridge's MAC to the endpoint's.
        let addressed = redirected(verdict, b, out, &Some((BRIDGE_MAC, *to_mac)), None)?;
        return check(&addressed, hook, inner, PASS, out, f);
    }
    match expect {
        Expect::Untouched(_) => untouched(verdict, b, out)?,
        Expect::Drop(_) => dropped(verdict)?,
        Expect::Translate {
            to,
            any_sport,
            reason,
        } => {
            if verdict != PASS || out.len() != b.len() {
                return Err(format!("expected translation, got verdict {verdict:#x}"));
            }
            let got = model::parse(out).map_err(|r| format!("output does not parse: {r:?}"))?;
            let later = got.frag == model::FRAG_LATER;
            let mut want = *to;
            if *any_sport {
                let cfg = f.config();
                let (own, port) = (
                    u16::from_be(model::parse(b).expect("input parses").key.sport),
                    u16::from_be(got.key.sport),
                );
                if !model::snat_port_allowed(&cfg, *reason, own, port) {
                    return Err(format!("SNAT chose port {port}"));
                }
                want.sport = got.key.sport;
            }
            let (g, w) = (&got.key, &want);
            let same = if later {
                (g.saddr, g.daddr) == (w.saddr, w.daddr)
            } else {
                g == w
            };
            if !same {
                return Err(format!(
                    "translated to {}:{} -> {}:{}, want {}:{} -> {}:{}",
                    model::ip(g.saddr),
                    u16::from_be(g.sport),
                    model::ip(g.daddr),
                    u16::from_be(g.dport),
                    model::ip(w.saddr),
                    u16::from_be(w.sport),
                    model::ip(w.daddr),
                    u16::from_be(w.dport)
                ));
            }
            compare_rest(b, out, None)?;
            let whole = u16::from_be_bytes([b[20], b[21]]) & 0x3fff == 0;
            if ip_csum_ok(b) == Some(true) && ip_csum_ok(out) != Some(true) {
                return Err("IP checksum broken by translation".into());
            }
            if whole && l4_csum_ok(b) == Some(true) && l4_csum_ok(out) != Some(true) {
                return Err("L4 checksum broken by translation".into());
            }
        }
        Expect::IcmpError {
            outer_src,
            outer_dst,
            quoted,
        } => {
            if verdict != PASS || out.len() != b.len() {
                return Err(format!(
                    "expected ICMP error translation, got verdict {verdict:#x}"
                ));
            }
            let inner = model::parse(b)
                .ok()
                .and_then(|p| p.inner)
                .ok_or("input is not an ICMP error")?;
            let (s, d) = (
                u32::from_ne_bytes([out[26], out[27], out[28], out[29]]),
                u32::from_ne_bytes([out[30], out[31], out[32], out[33]]),
            );
            if (s, d) != (*outer_src, *outer_dst) {
                return Err(format!(
                    "outer {} -> {}, want {} -> {}",
                    model::ip(s),
                    model::ip(d),
                    model::ip(*outer_src),
                    model::ip(*outer_dst)
                ));
            }
            let got = model::parse(out).ok().ok_or("output does not parse")?;
            if got.key.reversed() != *quoted {
                return Err("quoted tuple not translated as the flow says".into());
            }
            compare_rest(b, out, Some(inner))?;
            if ip_csum_ok(b) == Some(true) && ip_csum_ok(out) != Some(true) {
                return Err("outer IP checksum broken".into());
            }
            if l4_csum_ok(b) == Some(true) && l4_csum_ok(out) != Some(true) {
                return Err("ICMP checksum broken".into());
            }
            let qsum = |x: &[u8]| {
                let ihl = (x[inner] & 0x0f) as usize * 4;
                x.get(inner..inner + ihl).map(|h| inet_checksum(h) == 0)
            };
            if qsum(b) == Some(true) && qsum(out) != Some(true) {
                return Err("quoted IP checksum broken".into());
            }
        }
        Expect::Redirect { .. } | Expect::Forward { .. } => unreachable!("handled above"),
    }
    let _ = hook;
    Ok(())
}

fn compare_rest(b: &[u8], out: &[u8], inner: Option<usize>) -> Result<(), String> {
    let ranges = mutable_ranges(b, inner);
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

fn reason_of(e: &Expect) -> Reason {
    match e {
        Expect::Untouched(r) | Expect::Drop(r) => *r,
        Expect::Translate { reason, .. } => *reason,
        Expect::IcmpError { .. } => Reason::IcmpErrorTranslated,
        Expect::Redirect { inner, .. } | Expect::Forward { inner, .. } => reason_of(inner),
    }
}

/// Mirrors `conntrack::claim_reply`: whether a new flow whose reply tuple is
/// `reply_key` can be created, so the model knows a DnatNew from a drop.
fn claimable(f: &Fixture, reply_key: &FlowKey, reply_xlat: &FlowKey) -> bool {
    // A finished TCP flow gives its tuple up (conntrack::held); the
    // original entry's state decides, a lone entry's own copy otherwise.
    let finished = |e: &CtEntry, assured: bool| {
        let state = match f.ct_in(&e.xlat.reversed(), assured) {
            Some(o) if e.dir != DIR_ORIG => o.state,
            _ => e.state,
        };
        state == CtState::TimeWait as u8 || state == CtState::Close as u8
    };
    if let Some(e) = f.ct_in(reply_key, true) {
        if !finished(&e, true) {
            return false;
        }
    }
    match f.ct_in(reply_key, false) {
        None => true,
        Some(e) if e.xlat == *reply_xlat => true,
        Some(e) => finished(&e, false),
    }
}

#[test]
fn the_tc_programs_agree_with_the_reference_model() {
    fuzz(false);
}

/// The same with the fast path on, in a namespace of the test's own whose
/// uplink and bridge the programs route through: tracked flows and new
/// masquerade flows leave the bridge hook translated, TTL decremented and
/// addressed to the next hop, or for the kernel to resolve it; packets the
/// uplink translates towards a container are redirected into it, TTL
/// decremented and addressed from the bridge.
#[test]
fn the_tc_programs_agree_with_the_reference_model_with_the_fast_path_on() {
    in_fast_namespace(|| fuzz(true));
}

fn fuzz(fast: bool) {
    let (packets, seed) = fuzz_seed(1_000_000);
    let tainted = kernel_taint();
    let mut f = Fixture::new(fast);
    let mut rng = Rng(seed | 1);
    let mut recent = Recent::default();
    let mut record = Record::default();
    for n in 0..packets {
        let (hook, mut b) = base(&mut rng, &recent.0);
        if rng.chance(40) {
            mutate(&mut rng, &mut b);
        }
        if b.len() < 14 {
            continue;
        }
        let mut expect = model::expect(&b, hook, &f);
        // A new published-port flow, delivered by the stack or forwarded.
        let dnat = match &expect {
            Expect::Forward { inner, .. } => inner.as_ref(),
            e => e,
        };
        if let Expect::Translate {
            reason: Reason::DnatNew,
            to,
            ..
        } = dnat
        {
            if !claimable(
                &f,
                &to.reversed(),
                &model::parse(&b).expect("parses").key.reversed(),
            ) {
                expect = Expect::Drop(Reason::DropCtInsert);
            }
        }
        if matches!(expect, Expect::Forward { .. }) {
            let way = if hook == Hook::UplinkIngress {
                "fast_path_in"
            } else {
                "fast_path_out"
            };
            record.count(way);
        }
        let reason = reason_of(&expect);
        let before = counter(&f, reason);
        let Some((verdict, out)) = f.run(hook, &b) else {
            record.count("refused_by_test_run");
            continue;
        };
        let result = counted(
            check(&b, hook, &expect, verdict, &out, &f),
            reason,
            before,
            counter(&f, reason),
        );
        record.count(reason.name());
        if let Err(e) = result {
            if std::env::var_os("NETBR_FUZZ_DEBUG").is_some() && !record.has_mismatches() {
                if let Ok(p) = model::parse(&b) {
                    eprintln!("entry for {:?}: {:?}", p.key, f.ct(&p.key));
                }
            }
            record.mismatch(format!("#{n} {hook:?} expected {expect:?}: {e}"), &b, &out);
        }
        recent.keep(n, hook, verdict, &b, out);
    }
    // The run exercised every kind of outcome the model distinguishes.
    let mut expected = vec![
        "hairpin_new",
        "translated",
        "dnat_new",
        "snat_new",
        "icmp_error_translated",
        "drop_truncated",
        "drop_bad_header",
        "pass_fragment",
        "pass_not_ipv4",
        "pass_no_match",
        "drop_direct_routing",
        "drop_fw_deny",
        "drop_fw_not_allowed",
    ];
    if fast {
        expected.extend(["fast_path_in", "fast_path_out"]);
    }
    record.assert_passed(
        &format!("{packets} packets (seed {seed})"),
        &tainted,
        &expected,
    );
}
