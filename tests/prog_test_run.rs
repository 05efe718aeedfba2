//! The real BPF programs run through BPF_PROG_TEST_RUN on crafted packets:
//! each test checks the verdict, the rewritten bytes (with checksums
//! verified) and the conntrack table. Nothing is attached anywhere.

mod support;

use std::net::Ipv4Addr;

use aya::{
    maps::PerCpuArray,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use netbr::{addr::to_be32, bpf::datapath::Datapath};
use netbr_common::{
    conntrack::{CtState, DEFAULT_TIMEOUTS, NAT_DNAT, NAT_HAIRPIN, NAT_SNAT, STATE_COUNT},
    counters::Reason,
    maps::{
        Endpoint, MappingKey, MappingTarget, CFG_ALLOW_DIRECT_ROUTING, CFG_FAST_PATH, CFG_HOST_NAT,
        CFG_INTERNAL, CFG_NO_MASQUERADE, CFG_ROUTED,
    },
    pacing::{Pace, PaceKey, PACE_EGRESS, PACE_INGRESS, PACE_STAMP},
    profile::{PROF_LEN, PROF_MAP, SEGMENTS, SEG_EMPTY},
};
use support::config::{test_config, BRIDGE_MAC, GATEWAY, HOST};
use support::packet::{
    echo6, fragment, fragment6, ipv6_checked, ipv6_frame, parse_checked, parse_checked6,
    parse_quoted, reassemble, reassemble6, tcp_header, udp_datagram, with_hop_by_hop,
    without_extension, Seen, Seen6, Spec, ACK, SYN, TCP, UDP,
};

const LAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const WEB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
/// The IPv6 side of the same topology: web's address on the bridge's
/// fd00:30::/64, lan's and the uplink's on 2001:db8:1::/64.
const WEB6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 2);
const LAN6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
const UPLINK6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const UP_IN: &str = "nb_up_in";
const UP_OUT: &str = "nb_up_out";
const BR_IN: &str = "nb_br_in";
const EP_IN: &str = "nb_ep_in";
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
const WEB_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 2];
const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 3];
const WEB_IFINDEX: u32 = 1002;
const CLIENT_IFINDEX: u32 = 1003;
const REDIRECT: u32 = 7; // TC_ACT_REDIRECT
const PASS: u32 = -1i32 as u32; // TC_ACT_UNSPEC
const SHOT: u32 = 2;

struct Harness {
    ebpf: Ebpf,
    dp: Datapath,
}

impl Harness {
    /// Loads the programs unpinned, configured like the sandbox: uplink
    /// 192.0.2.1, subnet 172.30.0.0/16, SNAT ports `snat`, host ephemeral
    /// range 32768-60999.
    fn new(snat: (u16, u16)) -> Self {
        Self::with_ct_max(snat, 1024)
    }

    fn with_ct_max(snat: (u16, u16), ct_max: u32) -> Self {
        Self::loaded(snat, ct_max, None)
    }

    /// With `modes`, the `CFG_*` flags fixed at load time as `attach`
    /// fixes them; without, the programs follow the config map.
    fn loaded(snat: (u16, u16), ct_max: u32, modes: Option<u32>) -> Self {
        let mut ebpf = netbr::bpf::attach::load(None, ct_max, modes).expect("load the BPF object");
        let mut dp = Datapath::from_ebpf(&mut ebpf).expect("maps");
        let mut cfg = test_config(snat, DEFAULT_TIMEOUTS);
        cfg.ct_max = ct_max;
        dp.set_config(&cfg).expect("config");
        for addr in [HOST, GATEWAY, Ipv4Addr::LOCALHOST] {
            dp.local_addrs
                .insert(to_be32(addr), 1, 0)
                .expect("local addr");
        }
        for (ip, ifindex, mac) in [
            (WEB, WEB_IFINDEX, WEB_MAC),
            (CLIENT, CLIENT_IFINDEX, CLIENT_MAC),
        ] {
            let ep = Endpoint::new(ifindex, mac, 0);
            dp.endpoints.insert(to_be32(ip), ep, 0).expect("endpoint");
        }
        for name in [UP_IN, UP_OUT, BR_IN, EP_IN] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("classifier");
            p.load().expect("verifier accepts the program");
        }
        Self { ebpf, dp }
    }

    fn publish(&mut self, proto: u8, host_port: u16, to: Ipv4Addr, port: u16) {
        let key = MappingKey {
            proto,
            _pad: 0,
            port: host_port.to_be(),
            addr: 0,
        };
        let target = MappingTarget {
            addr: to_be32(to),
            port: port.to_be(),
            flags: 0,
        };
        self.dp.mappings.insert(key, target, 0).expect("mapping");
        self.dp.set_published_ports(&[]).expect("published ports");
    }

    /// Runs `prog` on `frame`; returns the verdict and the output frame.
    fn run(&mut self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        run_on(self.classifier(prog), frame)
    }

    /// Runs `frame` through `prog` and asserts it passed unchanged; `what`
    /// names the case in the failure.
    fn assert_passes_untouched(&mut self, prog: &str, frame: &[u8], what: &str) {
        let (verdict, out) = self.run(prog, frame);
        assert_eq!((verdict, out.as_slice()), (PASS, frame), "{what}");
    }

    /// The TC program `prog` of the object.
    fn classifier(&mut self, prog: &str) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(prog)
            .expect("program")
            .try_into()
            .expect("classifier")
    }

    /// Runs the XDP program on `frame` (loading it first); returns the
    /// action and the output frame.
    fn run_xdp(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        run_on(self.xdp(), frame)
    }

    /// The XDP program, loaded.
    fn xdp(&mut self) -> &mut Xdp {
        let p: &mut Xdp = self
            .ebpf
            .program_mut("nb_xdp")
            .expect("program")
            .try_into()
            .expect("xdp");
        if p.fd().is_err() {
            p.load().expect("verifier accepts the XDP program");
        }
        p
    }

    /// Sets the config map's `CFG_*` flags to `flags`.
    fn set_map_flags(&mut self, flags: u32) {
        let mut cfg = self.dp.config().expect("config");
        cfg.flags = flags;
        self.dp.set_config(&cfg).expect("config");
    }

    /// Points the endpoint at `ip` to an interface that exists here
    /// (loopback), so redirects and MTU checks can resolve it.
    fn endpoint_on_loopback(&mut self, ip: Ipv4Addr) {
        let mut ep = self.dp.endpoints.get(&to_be32(ip), 0).expect("endpoint");
        ep.host_ifindex = 1;
        self.dp
            .endpoints
            .insert(to_be32(ip), ep, 0)
            .expect("endpoint");
    }

    /// Gives endpoint web its IPv6 address, `WEB6`.
    fn web_ipv6(&mut self) {
        let web = self.dp.endpoints.get(&to_be32(WEB), 0).expect("web");
        self.dp
            .set_endpoint6(to_be32(WEB), WEB6, web)
            .expect("endpoint's IPv6");
    }

    fn counter(&self, r: Reason) -> u64 {
        self.dp.counter(r).expect("counter")
    }

    fn flows(
        &self,
    ) -> Vec<(
        netbr_common::conntrack::FlowKey,
        netbr_common::conntrack::FlowView,
    )> {
        self.dp.flows().expect("flows")
    }

    /// Entries in both conntrack tables.
    fn entries(&self) -> usize {
        self.dp.conntrack.keys().count() + self.dp.conntrack_new.keys().count()
    }
}

/// One BPF_PROG_TEST_RUN of a packet program on `frame`: its return value
/// and the frame it left.
fn run_on<P>(p: &P, frame: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn seen(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Seen {
    Seen {
        src: src.0,
        dst: dst.0,
        sport: src.1,
        dport: dst.1,
    }
}

#[test]
fn syn_to_published_port_is_dnated_and_tracked() {
    let mut h = Harness::new((61000, 65535));
    h.publish(TCP, 8080, WEB, 80);
    let (verdict, out) = h.run(UP_IN, &Spec::tcp((LAN, 40000), (HOST, 8080), SYN).build());
    assert_eq!(verdict, PASS);
    assert_eq!(parse_checked(&out), seen((LAN, 40000), (WEB, 80)));
    let flows = h.flows();
    assert_eq!(flows.len(), 1);
    let (key, entry) = flows[0];
    assert_eq!(entry.nat, NAT_DNAT);
    assert_eq!(entry.state, CtState::SynSent as u8);
    assert_eq!(key.dport, 8080u16.to_be());
    assert_eq!(entry.xlat.daddr, to_be32(WEB));
    assert_eq!(h.entries(), 2, "an original and a reply entry");
    assert_eq!(h.counter(Reason::DnatNew), 1);
}

#[test]
fn reply_of_published_flow_leaves_with_the_host_address() {
    let mut h = Harness::new((61000, 65535));
    h.publish(TCP, 8080, WEB, 80);
    h.run(UP_IN, &Spec::tcp((LAN, 40000), (HOST, 8080), SYN).build());
    let (verdict, out) = h.run(
        UP_OUT,
        &Spec::tcp((WEB, 80), (LAN, 40000), SYN | ACK).build(),
    );
    assert_eq!(verdict, PASS);
    assert_eq!(parse_checked(&out), seen((HOST, 8080), (LAN, 40000)));
    h.run(UP_IN, &Spec::tcp((LAN, 40000), (HOST, 8080), ACK).build());
    let (_, e) = h.flows()[0];
    assert_eq!(e.state, CtState::Established as u8);
    assert_eq!(e.packets, [2, 1]);
    assert_eq!(h.counter(Reason::Translated), 2);
}

#[test]
fn outbound_udp_is_masqueraded_keeping_a_low_port_and_its_reply_returns() {
    let mut h = Harness::new((61000, 65535));
    let (verdict, out) = h.run(UP_OUT, &Spec::udp((WEB, 5000), (REMOTE, 53)).build());
    assert_eq!(verdict, PASS);
    assert_eq!(parse_checked(&out), seen((HOST, 5000), (REMOTE, 53)));
    let (_, out) = h.run(UP_IN, &Spec::udp((REMOTE, 53), (HOST, 5000)).build());
    assert_eq!(parse_checked(&out), seen((REMOTE, 53), (WEB, 5000)));
    let (_, e) = h.flows()[0];
    assert_eq!((e.nat, e.state), (NAT_SNAT, CtState::UdpReplied as u8));
}

#[test]
fn source_port_in_the_host_ephemeral_range_is_remapped_into_the_snat_range() {
    let mut h = Harness::new((61000, 61009));
    let (_, out) = h.run(UP_OUT, &Spec::tcp((WEB, 40000), (REMOTE, 443), SYN).build());
    let s = parse_checked(&out);
    assert_eq!(s.src, HOST);
    assert!(
        (61000..=61009).contains(&s.sport),
        "port {} outside the SNAT range",
        s.sport
    );
    let (_, back) = h.run(
        UP_IN,
        &Spec::tcp((REMOTE, 443), (HOST, s.sport), SYN | ACK).build(),
    );
    assert_eq!(parse_checked(&back), seen((REMOTE, 443), (WEB, 40000)));
}

#[test]
fn udp_without_checksum_keeps_checksum_zero() {
    let mut h = Harness::new((61000, 65535));
    h.publish(UDP, 5353, WEB, 53);
    let mut spec = Spec::udp((LAN, 1234), (HOST, 5353));
    spec.udp_no_csum = true;
    let (_, out) = h.run(UP_IN, &spec.build());
    assert_eq!(parse_checked(&out), seen((LAN, 1234), (WEB, 53)));
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
}

#[test]
fn icmp_echo_is_masqueraded_and_the_reply_returns() {
    let mut h = Harness::new((61000, 65535));
    let (_, out) = h.run(UP_OUT, &Spec::echo_request(WEB, REMOTE, 0x1234).build());
    let s = parse_checked(&out);
    assert_eq!((s.src, s.dst, s.sport), (HOST, REMOTE, 0x1234));
    let mut reply = Spec::echo_request(REMOTE, HOST, 0);
    reply.icmp_type = 0;
    reply.dport = 0x1234;
    let (_, back) = h.run(UP_IN, &reply.build());
    let b = parse_checked(&back);
    assert_eq!((b.src, b.dst, b.dport), (REMOTE, WEB, 0x1234));
}

#[test]
fn packet_with_ip_options_is_translated_at_the_right_offsets() {
    let mut h = Harness::new((61000, 65535));
    h.publish(TCP, 8080, WEB, 80);
    let mut spec = Spec::tcp((LAN, 40001), (HOST, 8080), SYN);
    spec.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL: IHL 6
    let (verdict, out) = h.run(UP_IN, &spec.build());
    assert_eq!(verdict, PASS);
    assert_eq!(out[14] & 0x0f, 6);
    assert_eq!(parse_checked(&out), seen((LAN, 40001), (WEB, 80)));
}

#[test]
fn truncated_tcp_header_is_dropped_and_counted() {
    let mut h = Harness::new((61000, 65535));
    h.publish(TCP, 8080, WEB, 80);
    let mut frame = Spec::tcp((LAN, 40000), (HOST, 8080), SYN).build();
    frame.truncate(14 + 20 + 10);
    let (verdict, _) = h.run(UP_IN, &frame);
    assert_eq!(verdict, SHOT);
    assert_eq!(h.counter(Reason::DropTruncated), 1);
    assert_eq!(h.entries(), 0);
}

#[test]
fn bad_ihl_is_dropped_and_counted() {
    let mut h = Harness::new((61000, 65535));
    let mut frame = Spec::udp((LAN, 1), (HOST, 2)).build();
    frame[14] = 0x43;
    let (verdict, _) = h.run(UP_IN, &frame);
    assert_eq!(verdict, SHOT);
    assert_eq!(h.counter(Reason::DropBadHeader), 1);
}

#[test]
fn packet_matching_nothing_is_untouched() {
    let mut h = Harness::new((61000, 65535));
    h.publish(TCP, 8080, WEB, 80);
    for (prog, spec) in [
        (UP_IN, Spec::tcp((LAN, 40000), (HOST, 22), SYN)),
        (UP_IN, Spec::udp((LAN, 40000), (HOST, 8080))),
        (UP_OUT, Spec::tcp((HOST, 40000), (LAN, 80), SYN)),
    ] {
        h.assert_passes_untouched(prog, &spec.build(), &format!("{spec:?}"));
    }
    assert_eq!(h.counter(Reason::PassNoMatch), 3);
    assert_eq!(h.entries(), 0);
}

#[test]
fn snat_never_picks_a_published_port_and_fails_counted_when_the_range_is_full() {
    // A one-port SNAT range that is also a published port: nothing is free.
    let mut h = Harness::new((61000, 61000));
    h.publish(TCP, 61000, WEB, 80);
    let (verdict, _) = h.run(UP_OUT, &Spec::tcp((WEB, 40000), (REMOTE, 443), SYN).build());
    assert_eq!(verdict, SHOT);
    assert_eq!(h.counter(Reason::DropSnatExhausted), 1);

    // Two ports, three flows to one peer: the third is refused, and no
    // tuple is handed out twice.
    let mut h = Harness::new((62000, 62001));
    let mut ports = Vec::new();
    for sport in [40000, 40001] {
        let (verdict, out) = h.run(UP_OUT, &Spec::tcp((WEB, sport), (REMOTE, 443), SYN).build());
        assert_eq!(verdict, PASS);
        ports.push(parse_checked(&out).sport);
    }
    ports.sort();
    assert_eq!(ports, [62000, 62001]);
    let (verdict, _) = h.run(UP_OUT, &Spec::tcp((WEB, 40002), (REMOTE, 443), SYN).build());
    assert_eq!(verdict, SHOT);
    assert_eq!(h.counter(Reason::DropSnatExhausted), 1);
}

#[test]
fn expired_flow_is_forgotten_on_lookup() {
    let mut h = Harness::new((61000, 65535));
    let mut cfg = h.dp.config().expect("config");
    cfg.timeouts = [0; STATE_COUNT];
    h.dp.set_config(&cfg).expect("config");
    h.run(UP_OUT, &Spec::udp((WEB, 5000), (REMOTE, 53)).build());
    past_a_clock_tick();
    assert_reply_finds_the_flow_expired(&mut h);
}

/// Waits until the flows' clock, which moves a kernel tick at a time
/// (`conntrack::now`: 10 ms at the slowest HZ), has moved.
fn past_a_clock_tick() {
    std::thread::sleep(std::time::Duration::from_millis(25));
}

/// Sends the reply of the flow (WEB, 5000) -> (REMOTE, 53) masqueraded to
/// (HOST, 5000), and asserts the flow had expired: the reply passes
/// untranslated, the expiry is counted, and both entries are gone.
fn assert_reply_finds_the_flow_expired(h: &mut Harness) {
    let frame = Spec::udp((REMOTE, 53), (HOST, 5000)).build();
    h.assert_passes_untouched(UP_IN, &frame, "the reply of an expired flow");
    assert_eq!(h.counter(Reason::CtExpired), 1);
    assert_eq!(h.entries(), 0);
}

/// A harness with one masqueraded datagram's flow, web:5000 to
/// remote:53, and its two tuples: original and reply.
fn with_masqueraded_dns() -> (
    Harness,
    netbr_common::conntrack::FlowKey,
    netbr_common::conntrack::FlowKey,
) {
    let mut h = Harness::new((61000, 65535));
    h.run(UP_OUT, &Spec::udp((WEB, 5000), (REMOTE, 53)).build());
    let (orig_key, flow) = h.flows()[0];
    (h, orig_key, flow.xlat.reversed())
}

/// The raw entry of tuple `key` in the table of new flows.
fn new_entry(
    h: &Harness,
    key: &netbr_common::conntrack::FlowKey,
) -> netbr_common::conntrack::CtEntry {
    h.dp.conntrack_new.get(key, 0).expect("entry")
}

#[test]
fn a_tracked_packet_touches_only_its_own_entry_until_the_state_changes() {
    let (mut h, orig_key, reply_key) = with_masqueraded_dns();
    let before = new_entry(&h, &orig_key);
    // More datagrams out: the state stays UNREPLIED, the reply entry is
    // neither read for state nor written.
    let reply_before = new_entry(&h, &reply_key);
    past_a_clock_tick();
    h.run(UP_OUT, &Spec::udp((WEB, 5000), (REMOTE, 53)).build());
    let orig = new_entry(&h, &orig_key);
    assert_eq!(orig.packets, before.packets + 1);
    assert!(orig.last_seen_ns > before.last_seen_ns);
    assert_eq!(new_entry(&h, &reply_key), reply_before);
    // The first reply changes the state: both entries carry the new one,
    // and the flow moves to the assured table.
    h.run(UP_IN, &Spec::udp((REMOTE, 53), (HOST, 5000)).build());
    let (o, r) = (
        h.dp.conntrack.get(&orig_key, 0).expect("assured original"),
        h.dp.conntrack.get(&reply_key, 0).expect("assured reply"),
    );
    assert_eq!(
        (o.state, r.state),
        (CtState::UdpReplied as u8, CtState::UdpReplied as u8)
    );
    assert_eq!(
        (o.packets, r.packets),
        (2, 1),
        "each entry counts its direction"
    );
    // A later reply leaves the original entry as it was.
    h.run(UP_IN, &Spec::udp((REMOTE, 53), (HOST, 5000)).build());
    assert_eq!(h.dp.conntrack.get(&orig_key, 0).expect("original"), o);
    let (_, merged) = h.flows()[0];
    assert_eq!(merged.packets, [2, 2]);
}

#[test]
fn a_direction_idle_past_its_timeout_lives_while_the_other_is_seen() {
    let (mut h, orig_key, reply_key) = with_masqueraded_dns();
    // The replies' direction last seen long ago (past UNREPLIED's 30 s),
    // the original one just now: a reply still finds the flow.
    let mut r = new_entry(&h, &reply_key);
    r.last_seen_ns = r.last_seen_ns.saturating_sub(100_000_000_000);
    h.dp.conntrack_new
        .insert(reply_key, r, 0)
        .expect("age the reply");
    let (_, out) = h.run(UP_IN, &Spec::udp((REMOTE, 53), (HOST, 5000)).build());
    assert_eq!(parse_checked(&out), seen((REMOTE, 53), (WEB, 5000)));
    assert_eq!(h.counter(Reason::CtExpired), 0);
    // Both directions idle: the flow is gone, both entries with it.
    for key in [orig_key, reply_key] {
        let table = if h.dp.conntrack.get(&key, 0).is_ok() {
            &mut h.dp.conntrack
        } else {
            &mut h.dp.conntrack_new
        };
        let mut e = table.get(&key, 0).expect("entry");
        e.last_seen_ns = e.last_seen_ns.saturating_sub(1_000_000_000_000);
        table.insert(key, e, 0).expect("age");
    }
    assert_reply_finds_the_flow_expired(&mut h);
}

#[test]
fn the_port_sets_mark_published_ports_and_the_ports_flows_arrive_on() {
    use netbr_common::ports::{PORTS_FLOWS, PORTS_PUBLISHED};
    let mut h = Harness::new((61000, 61000));
    h.publish(TCP, 8080, WEB, 80);
    let marked = |h: &Harness, set: u32, slot: usize| {
        h.dp.ports.get(&set, 0).expect("port set").marked[slot]
    };
    assert_eq!(
        (
            marked(&h, PORTS_PUBLISHED, 8080),
            marked(&h, PORTS_PUBLISHED, 8081)
        ),
        (1, 0)
    );
    // A masquerade flow's translated port is marked before its reply comes.
    let (_, out) = h.run(UP_OUT, &Spec::tcp((WEB, 40000), (REMOTE, 443), SYN).build());
    assert_eq!(parse_checked(&out).sport, 61000);
    assert_eq!(marked(&h, PORTS_FLOWS, 61000), 1);
    let (_, back) = h.run(
        UP_IN,
        &Spec::tcp((REMOTE, 443), (HOST, 61000), SYN | ACK).build(),
    );
    assert_eq!(parse_checked(&back), seen((REMOTE, 443), (WEB, 40000)));
    // A datagram to a port no set marks is the host's, untouched.
    let frame = Spec::udp((LAN, 40000), (HOST, 9999)).build();
    let before = h.counter(Reason::PassNoMatch);
    h.assert_passes_untouched(UP_IN, &frame, "an unmarked port");
    assert_eq!(h.counter(Reason::PassNoMatch), before + 1);
}

#[test]
fn hairpin_is_dnated_to_the_target_and_snated_to_the_gateway_then_redirected() {
    let mut h = Harness::new((61000, 65535));
    h.publish(TCP, 8080, WEB, 80);
    let (verdict, out) = h.run(
        BR_IN,
        &Spec::tcp((CLIENT, 40000), (HOST, 8080), SYN).build(),
    );
    assert_eq!(verdict, REDIRECT);
    let s = parse_checked(&out);
    assert_eq!((s.src, s.dst, s.dport), (GATEWAY, WEB, 80));
    assert!(
        (61000..=65535).contains(&s.sport),
        "gateway port {} outside the SNAT range",
        s.sport
    );
    assert_eq!(
        &out[0..6],
        &WEB_MAC,
        "frame must be addressed to the target container"
    );
    assert_eq!(&out[6..12], &BRIDGE_MAC);
    let (_, e) = h.flows()[0];
    assert_eq!(e.nat, NAT_HAIRPIN);

    // The target's reply returns to the client as if from HOST:8080.
    let (verdict, back) = h.run(
        BR_IN,
        &Spec::tcp((WEB, 80), (GATEWAY, s.sport), SYN | ACK).build(),
    );
    assert_eq!(verdict, REDIRECT);
    assert_eq!(parse_checked(&back), seen((HOST, 8080), (CLIENT, 40000)));
    assert_eq!(&back[0..6], &CLIENT_MAC);
    assert_eq!(h.counter(Reason::HairpinNew), 1);
    assert_eq!(h.counter(Reason::Translated), 1);
}

/// `frame` as a container sends it to its gateway: to the bridge's MAC,
/// which is what `nb_ep_in` acts on.
fn to_bridge(mut frame: Vec<u8>) -> Vec<u8> {
    frame[..6].copy_from_slice(&BRIDGE_MAC);
    frame
}

#[test]
fn the_endpoint_program_sends_tracked_flows_on_and_passes_the_rest_untouched() {
    let mut h = Harness::new((61000, 65535));
    h.set_map_flags(CFG_FAST_PATH);
    h.publish(TCP, 8080, WEB, 80);
    // A new flow's first packet is the bridge's: nb_ep_in passes it as it
    // came, opens nothing, counts nothing.
    let syn = to_bridge(Spec::tcp((CLIENT, 40000), (HOST, 8080), SYN).build());
    h.assert_passes_untouched(EP_IN, &syn, "a new flow's first packet");
    assert_eq!(h.entries(), 0);
    assert_eq!(h.counter(Reason::PassNoMatch), 0);
    let (verdict, out) = h.run(BR_IN, &syn);
    assert_eq!(verdict, REDIRECT);
    let gateway_port = parse_checked(&out).sport;
    // The flow's next packet is nb_ep_in's: translated as the bridge
    // would, addressed to the target, redirected, counted once.
    let ack = to_bridge(Spec::tcp((CLIENT, 40000), (HOST, 8080), ACK).build());
    let (verdict, out) = h.run(EP_IN, &ack);
    assert_eq!(verdict, REDIRECT);
    assert_eq!(
        parse_checked(&out),
        seen((GATEWAY, gateway_port), (WEB, 80))
    );
    assert_eq!((&out[0..6], &out[6..12]), (&WEB_MAC[..], &BRIDGE_MAC[..]));
    assert_eq!(h.counter(Reason::Translated), 1);
    // Not addressed to the bridge, or with the fast path off: the bridge's.
    let mut elsewhere = ack.clone();
    elsewhere[..6].copy_from_slice(&WEB_MAC);
    h.assert_passes_untouched(EP_IN, &elsewhere, "a frame to another MAC");
    h.set_map_flags(0);
    h.assert_passes_untouched(EP_IN, &ack, "the fast path off");
    assert_eq!(h.counter(Reason::Translated), 1);
}

#[test]
fn bridge_ingress_leaves_uplink_flows_to_routing() {
    let mut h = Harness::new((61000, 65535));
    // A masqueraded flow exists; its next packet enters the bridge device
    // before routing and must reach the uplink untranslated.
    h.run(UP_OUT, &Spec::udp((WEB, 5000), (REMOTE, 53)).build());
    let frame = Spec::udp((WEB, 5000), (REMOTE, 53)).build();
    h.assert_passes_untouched(BR_IN, &frame, "a masquerade flow on the bridge");
}

#[test]
fn direct_routing_to_a_container_is_dropped_unless_allowed() {
    let mut h = Harness::new((61000, 65535));
    let frame = Spec::tcp((LAN, 40000), (WEB, 80), SYN).build();
    let (verdict, _) = h.run(UP_IN, &frame);
    assert_eq!(verdict, SHOT);
    assert_eq!(h.counter(Reason::DropDirectRouting), 1);

    h.set_map_flags(CFG_ALLOW_DIRECT_ROUTING);
    let (verdict, out) = h.run(UP_IN, &frame);
    assert_eq!((verdict, out), (PASS, frame));
}

#[test]
fn ipv6_to_the_bridge_subnet_is_refused_unless_direct_routing_is_allowed() {
    use netbr_common::net6::Net6;
    use std::net::Ipv6Addr;
    let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("v6");
    let mut h = Harness::new((61000, 65535));
    let net = Net6::new(
        &v6("fd00:30::").octets(),
        64,
        &v6("fd00:30::1").octets(),
        &[0; 16],
    );
    h.dp.set_net6(&net).expect("net6");
    let mut syn = vec![0u8; 20];
    syn[2..4].copy_from_slice(&80u16.to_be_bytes());
    syn[12] = 5 << 4;
    syn[13] = SYN;
    let lan = v6("2001:db8:1::2");
    let to_container = ipv6_frame(lan, v6("fd00:30::2"), TCP, &syn);
    assert_eq!(h.run(UP_IN, &to_container).0, SHOT);
    assert_eq!(h.counter(Reason::DropDirectRouting), 1);
    // Neighbour discovery, the host's own addresses and other subnets are
    // not netbr's to judge.
    let solicit = [135u8, 0, 0, 0, 0, 0, 0, 0];
    for (frame, what) in [
        (
            ipv6_frame(lan, v6("ff02::1:ff00:2"), 58, &solicit),
            "a neighbour solicitation",
        ),
        (
            ipv6_frame(lan, v6("2001:db8:1::1"), TCP, &syn),
            "the host's address",
        ),
        (
            ipv6_frame(lan, v6("fd00:31::2"), TCP, &syn),
            "another subnet",
        ),
    ] {
        h.assert_passes_untouched(UP_IN, &frame, what);
    }
    // From containers nothing is refused: without a route out they only
    // reach the bridge.
    h.assert_passes_untouched(
        BR_IN,
        &ipv6_frame(v6("fd00:30::2"), lan, TCP, &syn),
        "outbound",
    );
    assert_eq!(h.counter(Reason::PassIpv6), 4, "IPv6 is counted as such");
    h.set_map_flags(CFG_ALLOW_DIRECT_ROUTING);
    h.assert_passes_untouched(UP_IN, &to_container, "direct routing allowed");
    h.set_map_flags(CFG_INTERNAL);
    assert_eq!(h.run(UP_IN, &to_container).0, SHOT);
    assert_eq!(h.counter(Reason::DropInternal), 1);
    assert_eq!(h.counter(Reason::DropDirectRouting), 1);
}

/// One protocol's masquerade case: the L4 bytes a container sends, the
/// reply's given the port (or echo identifier) the packet left with, and
/// the sent packet's ports.
struct Case6 {
    proto: u8,
    out: Vec<u8>,
    reply: fn(u16) -> Vec<u8>,
    ports: (u16, u16),
}

/// A harness whose bridge has IPv6 subnet fd00:30::/64, masqueraded to
/// the uplink's 2001:db8:1::1.
fn with_ipv6_masquerade() -> Harness {
    use netbr_common::net6::Net6;
    let h = Harness::new((61000, 65535));
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("v6").octets();
    let net = Net6::new(&v6("fd00:30::"), 64, &v6("fd00:30::1"), &UPLINK6.octets());
    let mut h = h;
    h.dp.set_net6(&net).expect("net6");
    h
}

#[test]
fn ipv6_masquerade_translates_tcp_udp_and_echo_both_ways_with_valid_checksums() {
    let (container, lan, uplink) = (WEB6, LAN6, UPLINK6);
    let mut h = with_ipv6_masquerade();
    // A port in the host's ephemeral range is never kept; one outside it
    // is, and so is an echo identifier.
    let cases = [
        Case6 {
            proto: TCP,
            out: tcp_header(40000, 80, SYN),
            reply: |port| tcp_header(80, port, SYN | ACK),
            ports: (40000, 80),
        },
        Case6 {
            proto: UDP,
            out: udp_datagram(5000, 53),
            reply: |port| udp_datagram(53, port),
            ports: (5000, 53),
        },
        Case6 {
            proto: 58,
            out: echo6(128, 0x4242),
            reply: |id| echo6(129, id),
            ports: (0x4242, 0x4242),
        },
    ];
    for case in cases {
        let (proto, out_l4, reply_l4, (sport, dport)) =
            (case.proto, case.out, case.reply, case.ports);
        let (verdict, out) = h.run(UP_OUT, &ipv6_checked(container, lan, proto, &out_l4));
        assert_eq!(verdict, PASS);
        let seen = parse_checked6(&out);
        assert_eq!((seen.src, seen.dst), (uplink, lan), "protocol {proto}");
        assert_eq!(seen.dport, dport);
        match proto {
            TCP => assert!((61000..=65535).contains(&seen.sport), "{}", seen.sport),
            _ => assert_eq!(seen.sport, sport, "protocol {proto} keeps its port"),
        }
        let (verdict, back) = h.run(
            UP_IN,
            &ipv6_checked(lan, uplink, proto, &reply_l4(seen.sport)),
        );
        assert_eq!(verdict, PASS);
        let back = parse_checked6(&back);
        assert_eq!((back.src, back.dst), (lan, container), "protocol {proto}");
        assert_eq!(back.dport, sport);
    }
    assert_eq!(h.counter(Reason::SnatNew), 3);
    assert_eq!(h.counter(Reason::Translated), 3);
    assert_eq!(h.dp.flows6().expect("flows").len(), 3);
    // The host's own IPv6 and an echo reply from a container are not
    // masquerade's; an unknown reply to the uplink is the host's.
    h.assert_passes_untouched(
        UP_OUT,
        &ipv6_checked(uplink, lan, UDP, &udp_datagram(7, 7)),
        "the host's own",
    );
    h.assert_passes_untouched(
        UP_OUT,
        &ipv6_checked(container, lan, 58, &echo6(129, 9)),
        "an echo reply",
    );
    h.assert_passes_untouched(
        UP_IN,
        &ipv6_checked(lan, uplink, UDP, &udp_datagram(53, 9999)),
        "no flow",
    );
}

#[test]
fn ipv6_extension_headers_are_walked_and_fragments_follow_their_first() {
    let (container, lan, uplink) = (WEB6, LAN6, UPLINK6);
    let mut h = with_ipv6_masquerade();
    // A hop-by-hop header before UDP: walked over, the datagram translated.
    let hop = with_hop_by_hop(&ipv6_checked(container, lan, UDP, &udp_datagram(5000, 53)));
    let (verdict, out) = h.run(UP_OUT, &hop);
    assert_eq!(verdict, PASS);
    let seen = parse_checked6(&without_extension(&out));
    assert_eq!((seen.src, seen.sport), (uplink, 5000));
    // A datagram in two fragments: the first translated like any packet,
    // the later one (no UDP header) by the first's ports; reassembled, the
    // checksum holds.
    let mut l4 = udp_datagram(6000, 53);
    l4.truncate(8);
    l4[4..6].copy_from_slice(&1008u16.to_be_bytes());
    l4.extend_from_slice(&[9; 1000]);
    let whole = ipv6_checked(container, lan, UDP, &l4);
    let (first, later) = fragment6(&whole, 504, 0x1234);
    let (v1, out1) = h.run(UP_OUT, &first);
    let (v2, out2) = h.run(UP_OUT, &later);
    assert_eq!((v1, v2), (PASS, PASS));
    let seen = parse_checked6(&reassemble6(&out1, &out2));
    assert_eq!((seen.src, seen.dst, seen.sport), (uplink, lan, 6000));
    // A later fragment whose first this hook never saw has nowhere to go.
    let (_, stray) = fragment6(&whole, 504, 0x9999);
    assert_eq!(h.run(UP_OUT, &stray).0, SHOT);
    assert_eq!(h.counter(Reason::DropFragNoFirst), 1);
}

#[test]
fn an_icmpv6_error_about_a_masqueraded_packet_reaches_its_container_translated() {
    use std::net::Ipv6Addr;
    let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("v6");
    let (container, far, uplink, router) = (
        v6("fd00:30::2"),
        v6("2001:db8:2::2"),
        v6("2001:db8:1::1"),
        v6("2001:db8:1::2"),
    );
    let mut h = with_ipv6_masquerade();
    let mut l4 = tcp_header(40000, 80, ACK);
    l4.extend_from_slice(&[7; 1200]);
    let (_, sent) = h.run(UP_OUT, &ipv6_checked(container, far, TCP, &l4));
    let port = parse_checked6(&sent).sport;
    // A router's Packet Too Big (MTU 1280) quoting the packet as it left.
    let mut error = vec![2, 0, 0, 0];
    error.extend_from_slice(&1280u32.to_be_bytes());
    error.extend_from_slice(&sent[14..14 + 1184]);
    let (verdict, out) = h.run(UP_IN, &ipv6_checked(router, uplink, 58, &error));
    assert_eq!(verdict, PASS);
    let seen = parse_checked6(&out);
    assert_eq!((seen.src, seen.dst), (router, container), "outer header");
    let quoted_src: [u8; 16] = out[70..86].try_into().expect("quoted source");
    assert_eq!(Ipv6Addr::from(quoted_src), container, "quoted source");
    let quoted_sport = u16::from_be_bytes([out[102], out[103]]);
    assert_eq!(quoted_sport, 40000, "quoted source port (was {port})");
    assert_eq!(&out[58..62], &1280u32.to_be_bytes(), "the MTU is kept");
    assert_eq!(h.counter(Reason::IcmpErrorTranslated), 1);
    // One about no flow of netbr's is the host's.
    let mut stray = error.clone();
    stray[8 + 40..8 + 42].copy_from_slice(&9999u16.to_be_bytes());
    let stray = ipv6_checked(router, uplink, 58, &stray);
    h.assert_passes_untouched(UP_IN, &stray, "an error about no flow");
}

#[test]
fn a_published_port_answers_on_the_uplinks_ipv6_address_hairpin_included_but_not_to_link_local_sources_nor_under_firewall_rules(
) {
    use std::net::Ipv6Addr;
    let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("v6");
    let (web6, lan, uplink) = (WEB6, LAN6, UPLINK6);
    let mut h = with_ipv6_masquerade();
    h.publish(TCP, 8080, WEB, 80);
    let web6_words = netbr_common::net6::words(&web6.octets());
    h.dp.endpoints6
        .insert(to_be32(WEB), web6_words, 0)
        .expect("endpoint's IPv6");
    let syn = ipv6_checked(lan, uplink, TCP, &tcp_header(40000, 8080, SYN));
    let (verdict, inbound) = h.run(UP_IN, &syn);
    assert_eq!(verdict, PASS);
    let seen = parse_checked6(&inbound);
    assert_eq!(
        (seen.src, seen.dst, seen.sport, seen.dport),
        (lan, web6, 40000, 80)
    );
    let reply = ipv6_checked(web6, lan, TCP, &tcp_header(80, 40000, SYN | ACK));
    let (_, outbound) = h.run(UP_OUT, &reply);
    let seen = parse_checked6(&outbound);
    assert_eq!(
        (seen.src, seen.dst, seen.sport, seen.dport),
        (uplink, lan, 8080, 40000)
    );
    assert_eq!(h.counter(Reason::DnatNew), 1);
    // A container through the uplink's address (hairpin): to the target
    // from the gateway, and the target's reply back from the port.
    let (client6, gateway6) = (v6("fd00:30::3"), v6("fd00:30::1"));
    let hairpin = ipv6_checked(client6, uplink, TCP, &tcp_header(5555, 8080, SYN));
    let (verdict, to_web) = h.run(BR_IN, &hairpin);
    assert_eq!(verdict, PASS);
    let seen = parse_checked6(&to_web);
    assert_eq!((seen.src, seen.dst, seen.dport), (gateway6, web6, 80));
    let back = ipv6_checked(web6, gateway6, TCP, &tcp_header(80, seen.sport, SYN | ACK));
    let (_, to_client) = h.run(BR_IN, &back);
    let seen = parse_checked6(&to_client);
    assert_eq!(
        (seen.src, seen.dst, seen.sport, seen.dport),
        (uplink, client6, 8080, 5555)
    );
    assert_eq!(h.counter(Reason::HairpinNew), 1);
    // An unpublished port is the host's, and so is a published one from a
    // link-local source (Docker 28 excludes them); with firewall rules
    // (IPv4 blocks) the port does not open to IPv6 clients at all.
    let other = ipv6_checked(lan, uplink, TCP, &tcp_header(40001, 9999, SYN));
    h.assert_passes_untouched(UP_IN, &other, "an unpublished port");
    let link_local = ipv6_checked(v6("fe80::2"), uplink, TCP, &tcp_header(40003, 8080, SYN));
    h.assert_passes_untouched(UP_IN, &link_local, "a link-local source");
    let mut cfg = h.dp.config().expect("config");
    cfg.firewall_entries = 1;
    h.dp.set_config(&cfg).expect("config");
    let again = ipv6_checked(lan, uplink, TCP, &tcp_header(40002, 8080, SYN));
    h.assert_passes_untouched(UP_IN, &again, "a published port under firewall rules");
    assert_eq!(h.counter(Reason::DnatNew), 1);
}

#[test]
fn a_port_published_on_one_ipv6_address_answers_there_alone_and_costs_nothing_while_none_is() {
    use netbr_common::net6::{words, MappingKey6};
    use std::net::Ipv6Addr;
    let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("v6");
    // The host's second address on the uplink, beside 2001:db8:1::1.
    let (web6, lan, second) = (v6("fd00:30::2"), v6("2001:db8:1::2"), v6("2001:db8:1::9"));
    let mut h = with_ipv6_masquerade();
    h.dp.endpoints6
        .insert(to_be32(WEB), words(&web6.octets()), 0)
        .expect("endpoint's IPv6");
    let key = MappingKey6 {
        proto: TCP,
        _pad: 0,
        port: 8083u16.to_be(),
        addr: words(&second.octets()),
    };
    let target = MappingTarget {
        addr: to_be32(WEB),
        port: 80u16.to_be(),
        flags: 0,
    };
    h.dp.mappings6.insert(key, target, 0).expect("mapping");
    // Until the datapath is told one exists, it looks none up.
    let syn = ipv6_checked(lan, second, TCP, &tcp_header(40000, 8083, SYN));
    h.assert_passes_untouched(UP_IN, &syn, "no one-address mapping announced");
    h.dp.set_one_address_mappings(1).expect("count");
    let (verdict, inbound) = h.run(UP_IN, &syn);
    assert_eq!(verdict, PASS);
    let seen = parse_checked6(&inbound);
    assert_eq!(
        (seen.src, seen.dst, seen.sport, seen.dport),
        (lan, web6, 40000, 80)
    );
    let reply = ipv6_checked(web6, lan, TCP, &tcp_header(80, 40000, SYN | ACK));
    let (_, outbound) = h.run(UP_OUT, &reply);
    let seen = parse_checked6(&outbound);
    assert_eq!(
        (seen.src, seen.dst, seen.sport, seen.dport),
        (second, lan, 8083, 40000),
        "the reply leaves from the address the client dialled"
    );
    // That address alone: the uplink's masquerade address has no such port.
    let elsewhere = ipv6_checked(lan, v6("2001:db8:1::1"), TCP, &tcp_header(40001, 8083, SYN));
    h.assert_passes_untouched(UP_IN, &elsewhere, "the port on another address");
    // A container through that address (hairpin) reaches the target from
    // the gateway; its masquerade flows to beyond the uplink are left alone
    // on the bridge, to be translated on the uplink.
    let (client6, gateway6) = (v6("fd00:30::3"), v6("fd00:30::1"));
    let hairpin = ipv6_checked(client6, second, TCP, &tcp_header(5555, 8083, SYN));
    let (_, to_web) = h.run(BR_IN, &hairpin);
    let seen = parse_checked6(&to_web);
    assert_eq!((seen.src, seen.dst, seen.dport), (gateway6, web6, 80));
    let out = ipv6_checked(client6, lan, UDP, &udp_datagram(5000, 53));
    let (_, masq) = h.run(UP_OUT, &out);
    assert_eq!(parse_checked6(&masq).src, v6("2001:db8:1::1"));
    h.assert_passes_untouched(BR_IN, &out, "a masqueraded flow on the bridge");
    assert_eq!(h.counter(Reason::DnatNew), 1);
    assert_eq!(h.counter(Reason::HairpinNew), 1);
}

#[test]
fn the_fast_path_delivers_an_ipv6_reply_into_the_container_as_a_router_would() {
    let (web6, lan, uplink) = (WEB6, LAN6, UPLINK6);
    let mut h = with_ipv6_masquerade();
    h.set_map_flags(CFG_FAST_PATH);
    h.endpoint_on_loopback(WEB);
    h.web_ipv6();
    let (_, out) = h.run(
        UP_OUT,
        &ipv6_checked(web6, lan, UDP, &udp_datagram(5000, 53)),
    );
    assert_eq!(parse_checked6(&out).src, uplink);
    let reply = ipv6_checked(lan, uplink, UDP, &udp_datagram(53, 5000));
    let (verdict, back) = h.run(UP_IN, &reply);
    assert_eq!(
        verdict, REDIRECT,
        "redirected into the container's namespace"
    );
    assert_eq!(
        parse_checked6(&back),
        Seen6 {
            src: lan,
            dst: web6,
            sport: 53,
            dport: 5000
        }
    );
    assert_eq!((&back[0..6], &back[6..12]), (&WEB_MAC[..], &BRIDGE_MAC[..]));
    assert_eq!(back[21], reply[21] - 1, "hop limit decremented");
    assert_eq!(h.dp.fast_path_counts().expect("fast").0, 1);
    // The next frame, not IPv6 at all (ARP), inherits nothing of that
    // redirect: it goes on as it came.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&WEB_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    arp.resize(64, 0);
    h.assert_passes_untouched(UP_IN, &arp, "an ARP frame after a redirect");
    // A hop limit that would expire here goes to the stack (translated),
    // which answers with time exceeded; an ICMPv6 error always does.
    let mut last_hop = reply.clone();
    last_hop[21] = 1;
    let (verdict, back) = h.run(UP_IN, &last_hop);
    assert_eq!(verdict, PASS);
    assert_eq!((parse_checked6(&back).dst, back[21]), (web6, 1));
    assert_eq!(h.dp.fast_path_counts().expect("fast").0, 1);
}

#[test]
fn an_icmpv6_error_from_a_published_container_leaves_as_the_host() {
    use std::net::Ipv6Addr;
    let (web6, lan, uplink) = (WEB6, LAN6, UPLINK6);
    let mut h = with_ipv6_masquerade();
    h.publish(UDP, 5353, WEB, 53);
    h.web_ipv6();
    let (_, delivered) = h.run(
        UP_IN,
        &ipv6_checked(lan, uplink, UDP, &udp_datagram(40000, 5353)),
    );
    assert_eq!(parse_checked6(&delivered).dst, web6);
    // web answers port unreachable, quoting the datagram as it got it.
    let mut msg = vec![1, 4, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&delivered[14..]);
    let error = ipv6_checked(web6, lan, 58, &msg);
    let (verdict, out) = h.run(UP_OUT, &error);
    assert_eq!(verdict, PASS);
    assert_eq!(
        netbr::probe::inet_checksum(&support::packet::ipv6_covered(&out)),
        0,
        "ICMPv6 checksum"
    );
    let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&out[at..at + 16]).expect("addr"));
    const QUOTED: usize = 54 + 8;
    assert_eq!((addr(22), addr(38)), (uplink, lan), "outer: from the host");
    assert_eq!(
        (addr(QUOTED + 8), addr(QUOTED + 24)),
        (lan, uplink),
        "quoted as lan sent it"
    );
    let quoted_dport = u16::from_be_bytes([out[QUOTED + 42], out[QUOTED + 43]]);
    assert_eq!(quoted_dport, 5353, "the published port, as lan dialled it");
    assert_eq!(h.counter(Reason::IcmpErrorTranslated), 1);
}

#[test]
fn destinations_without_masquerade_leave_untranslated_and_their_replies_return() {
    let mut h = Harness::new((61000, 65535));
    let pods: netbr::addr::Cidr = "198.51.100.0/24".parse().expect("cidr");
    h.dp.set_no_masquerade(&[pods]).expect("no-masquerade list");
    h.set_map_flags(CFG_NO_MASQUERADE | CFG_FAST_PATH);
    // The fast path leaves it to the host stack, which routes it to the
    // uplink; there it is tracked as it is.
    let out = Spec::tcp((WEB, 40000), (REMOTE, 80), SYN).build();
    assert_eq!(h.run(BR_IN, &out), (PASS, out.clone()));
    assert_eq!(h.run(UP_OUT, &out), (PASS, out.clone()));
    assert_eq!(h.counter(Reason::UntranslatedNew), 1);
    // The reply is the flow's, not direct routing.
    let reply = Spec::tcp((REMOTE, 80), (WEB, 40000), SYN | ACK).build();
    assert_eq!(h.run(UP_IN, &reply), (PASS, reply.clone()));
    assert_eq!(h.counter(Reason::DropDirectRouting), 0);
    // Other destinations are still masqueraded.
    let (_, masq) = h.run(UP_OUT, &Spec::udp((WEB, 5000), (LAN, 53)).build());
    assert_eq!(parse_checked(&masq).src, HOST);
    assert_eq!(h.counter(Reason::SnatNew), 1);
}

#[test]
fn an_internal_bridge_reaches_the_host_and_nothing_beyond() {
    let mut h = Harness::new((61000, 65535));
    h.set_map_flags(CFG_INTERNAL | CFG_FAST_PATH);
    let out = Spec::udp((WEB, 5000), (REMOTE, 53)).build();
    assert_eq!(h.run(BR_IN, &out).0, SHOT);
    assert_eq!(h.counter(Reason::DropInternal), 1);
    for host in [GATEWAY, HOST] {
        let frame = Spec::udp((WEB, 5000), (host, 53)).build();
        assert_eq!(h.run(BR_IN, &frame), (PASS, frame.clone()), "to {host}");
    }
    let inbound = Spec::tcp((LAN, 40000), (WEB, 80), SYN).build();
    assert_eq!(h.run(UP_IN, &inbound).0, SHOT);
    assert_eq!(h.counter(Reason::DropInternal), 2);
}

#[test]
fn routed_mode_opens_published_container_ports_and_echo_only() {
    let mut h = Harness::new((61000, 65535));
    h.set_map_flags(CFG_ROUTED);
    // Routed mode publishes at the container's own address.
    let key = MappingKey {
        proto: TCP,
        _pad: 0,
        port: 80u16.to_be(),
        addr: to_be32(WEB),
    };
    let target = MappingTarget {
        addr: to_be32(WEB),
        port: 80u16.to_be(),
        flags: 0,
    };
    h.dp.mappings.insert(key, target, 0).expect("mapping");
    let open = Spec::tcp((LAN, 40000), (WEB, 80), SYN).build();
    assert_eq!(h.run(UP_IN, &open), (PASS, open.clone()));
    assert_eq!(h.counter(Reason::DirectNew), 1);
    let ping = Spec::echo_request(LAN, WEB, 7).build();
    assert_eq!(h.run(UP_IN, &ping), (PASS, ping.clone()));
    let closed = Spec::tcp((LAN, 40000), (WEB, 22), SYN).build();
    assert_eq!(h.run(UP_IN, &closed).0, SHOT);
    assert_eq!(h.counter(Reason::DropDirectRouting), 1);
}

#[test]
fn beside_the_hosts_nat_masquerade_takes_the_stack_and_published_ports_the_fast_path() {
    let mut h = Harness::new((61000, 65535));
    h.set_map_flags(CFG_FAST_PATH | CFG_HOST_NAT);
    h.endpoint_on_loopback(WEB);
    // A pod's new flow is left to netfilter, which may give it a
    // Service's endpoint; the uplink masquerades what leaves.
    let out = Spec::tcp((WEB, 40000), (REMOTE, 80), SYN).build();
    assert_eq!(h.run(BR_IN, &out), (PASS, out.clone()));
    let (verdict, masq) = h.run(UP_OUT, &out);
    let masq = parse_checked(&masq);
    assert_eq!((verdict, masq.src), (PASS, HOST));
    // Its reply is translated back but handed to the stack, not redirected.
    let reply = Spec::tcp((REMOTE, 80), (HOST, masq.sport), SYN | ACK).build();
    let (verdict, back) = h.run(UP_IN, &reply);
    assert_eq!(verdict, PASS);
    assert_eq!(parse_checked(&back), seen((REMOTE, 80), (WEB, 40000)));
    // A published port keeps the fast path.
    h.publish(TCP, 8080, WEB, 80);
    let syn = Spec::tcp((LAN, 40001), (HOST, 8080), SYN).build();
    assert_eq!(h.run(UP_IN, &syn).0, REDIRECT);
}

/// A monitor's deadline far ahead, as `netbr monitor` keeps it.
fn listen(h: &mut Harness) {
    h.dp.set_monitor_deadline(u64::MAX).expect("deadline");
}

#[test]
fn the_monitor_hears_drops_and_new_flows_only_while_it_listens() {
    use netbr_common::monitor::{hook_name, MON_DROP, MON_FLOW_NEW};
    let mut h = Harness::new((61000, 65535));
    h.publish(TCP, 8080, WEB, 80);
    let direct = Spec::udp((LAN, 40000), (WEB, 9999)).build();
    assert_eq!(h.run(UP_IN, &direct).0, SHOT);
    assert!(h.dp.drain_monitor().is_empty(), "reported with no monitor");

    listen(&mut h);
    assert_eq!(h.run(UP_IN, &direct).0, SHOT);
    let mut truncated = Spec::tcp((LAN, 40000), (HOST, 8080), SYN).build();
    truncated.truncate(14 + 20 + 10);
    assert_eq!(h.run(UP_IN, &truncated).0, SHOT);
    h.run(UP_IN, &Spec::tcp((LAN, 40001), (HOST, 8080), SYN).build());
    // A tracked packet is no report.
    h.run(UP_IN, &Spec::tcp((LAN, 40001), (HOST, 8080), ACK).build());
    let reports = h.dp.drain_monitor();
    assert_eq!(reports.len(), 3, "{reports:#?}");

    let drop = &reports[0];
    assert_eq!(
        (drop.kind, hook_name(drop.hook)),
        (MON_DROP, "uplink_ingress")
    );
    assert_eq!(drop.reason, Reason::DropDirectRouting as u32);
    assert_eq!(
        (
            drop.orig.saddr,
            drop.orig.daddr,
            u16::from_be(drop.orig.dport),
            drop.orig.proto
        ),
        (to_be32(LAN), to_be32(WEB), 9999, UDP)
    );
    let unparsed = &reports[1];
    assert_eq!(
        (unparsed.kind, unparsed.reason),
        (MON_DROP, Reason::DropTruncated as u32)
    );
    assert_eq!(
        unparsed.orig,
        Default::default(),
        "a truncated packet has no tuple"
    );
    let flow = &reports[2];
    assert_eq!((flow.kind, flow.nat), (MON_FLOW_NEW, NAT_DNAT));
    assert_eq!(flow.reason, Reason::DnatNew as u32);
    assert_eq!(
        (flow.orig.daddr, u16::from_be(flow.orig.dport)),
        (to_be32(HOST), 8080)
    );
    assert_eq!(
        (
            flow.xlat.daddr,
            u16::from_be(flow.xlat.dport),
            u16::from_be(flow.xlat.sport)
        ),
        (to_be32(WEB), 80, 40001)
    );

    h.dp.set_monitor_deadline(0).expect("deadline");
    assert_eq!(h.run(UP_IN, &direct).0, SHOT);
    assert!(
        h.dp.drain_monitor().is_empty(),
        "reported after the monitor left"
    );
}

#[test]
fn while_a_monitor_listens_expired_new_flows_are_collected_and_reported() {
    use netbr_common::monitor::MON_FLOW_END;
    let mut h = Harness::new((61000, 65535));
    // A masqueraded UDP flow nobody answers: it stays in the new-flow table.
    h.run(UP_OUT, &Spec::udp((CLIENT, 5353), (REMOTE, 53)).build());
    assert_eq!(h.flows().len(), 1);
    listen(&mut h);
    let mut cfg = h.dp.config().expect("config");
    cfg.timeouts[CtState::UdpUnreplied as usize] = 0;
    h.dp.set_config(&cfg).expect("config");
    // The collector's timer (armed by the flow's packet) walks the new-flow
    // table once a second while the monitor listens: this test only waits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let mut ends = Vec::new();
    while ends.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ends.extend(
            h.dp.drain_monitor()
                .into_iter()
                .filter(|r| r.kind == MON_FLOW_END),
        );
    }
    let [end] = ends.as_slice() else {
        panic!("expected one flow end: {ends:#?}");
    };
    assert_eq!(end.reason, Reason::CtExpired as u32);
    assert_eq!(end.nat, NAT_SNAT);
    assert_eq!(
        (end.orig.saddr, u16::from_be(end.orig.sport), end.orig.daddr),
        (to_be32(CLIENT), 5353, to_be32(REMOTE))
    );
    assert_eq!(
        end.xlat.saddr,
        to_be32(HOST),
        "masqueraded to the uplink's address"
    );
    assert!(h.flows().is_empty(), "the flow is gone from the table");
}

#[test]
fn loopback_destination_from_outside_is_never_dnated() {
    let mut h = Harness::new((61000, 65535));
    h.publish(TCP, 8080, WEB, 80);
    let key = MappingKey {
        proto: TCP,
        _pad: 0,
        port: 8081u16.to_be(),
        addr: to_be32(Ipv4Addr::LOCALHOST),
    };
    let target = MappingTarget {
        addr: to_be32(WEB),
        port: 80u16.to_be(),
        flags: 0,
    };
    h.dp.mappings.insert(key, target, 0).expect("mapping");
    h.dp.set_published_ports(&[]).expect("published ports");
    for port in [8080, 8081] {
        let frame = Spec::tcp((LAN, 40000), (Ipv4Addr::LOCALHOST, port), SYN).build();
        let (verdict, out) = h.run(UP_IN, &frame);
        assert_eq!((verdict, out), (PASS, frame), "port {port}");
    }
    // A 127.0.0.1-only mapping does not answer on the uplink address either.
    let frame = Spec::tcp((LAN, 40000), (HOST, 8081), SYN).build();
    assert_eq!(h.run(UP_IN, &frame).1, frame);
    assert_eq!(h.entries(), 0);
}

const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);

#[test]
fn icmp_error_for_a_masqueraded_flow_reaches_the_container_translated() {
    let mut h = Harness::new((61000, 65535));
    let (_, out) = h.run(UP_OUT, &Spec::tcp((WEB, 40000), (REMOTE, 443), SYN).build());
    let sent = parse_checked(&out);
    // A router on the path: fragmentation needed (PMTU), quoting what it got.
    let err = Spec::icmp_error(ROUTER, HOST, 3, 4, &out).build();
    let (verdict, back) = h.run(UP_IN, &err);
    assert_eq!(verdict, PASS);
    let outer = parse_checked(&back);
    assert_eq!(
        (outer.src, outer.dst),
        (ROUTER, WEB),
        "the router keeps its address"
    );
    assert_eq!(parse_quoted(&back), seen((WEB, 40000), (REMOTE, 443)));
    assert_eq!(h.counter(Reason::IcmpErrorTranslated), 1);
    // The error did not advance the flow.
    assert_eq!(h.flows()[0].1.state, CtState::SynSent as u8);
    let _ = sent;
}

#[test]
fn port_unreachable_from_a_published_container_leaves_as_the_host() {
    let mut h = Harness::new((61000, 65535));
    h.publish(UDP, 5353, WEB, 53);
    let (_, delivered) = h.run(UP_IN, &Spec::udp((LAN, 7000), (HOST, 5353)).build());
    // The container has no listener: it answers port unreachable.
    let err = Spec::icmp_error(WEB, LAN, 3, 3, &delivered).build();
    let (verdict, out) = h.run(UP_OUT, &err);
    assert_eq!(verdict, PASS);
    let outer = parse_checked(&out);
    assert_eq!((outer.src, outer.dst), (HOST, LAN));
    assert_eq!(parse_quoted(&out), seen((LAN, 7000), (HOST, 5353)));
}

#[test]
fn time_exceeded_for_a_masqueraded_ping_restores_the_echo_id() {
    let mut h = Harness::new((61000, 65535));
    let (_, out) = h.run(UP_OUT, &Spec::echo_request(WEB, REMOTE, 40001).build());
    let sent = parse_checked(&out);
    assert_ne!(
        sent.sport, 40001,
        "an id in the host's ephemeral range is remapped"
    );
    let err = Spec::icmp_error(ROUTER, HOST, 11, 0, &out).build();
    let (_, back) = h.run(UP_IN, &err);
    assert_eq!(parse_checked(&back).dst, WEB);
    let q = parse_quoted(&back);
    assert_eq!((q.src, q.dst, q.sport), (WEB, REMOTE, 40001));
}

#[test]
fn icmp_error_matching_no_flow_is_dropped_when_it_names_netbr_traffic() {
    let mut h = Harness::new((61000, 65535));
    // Quotes a packet from the SNAT range that no flow sent: stale or spoofed.
    let quoted = Spec::udp((HOST, 61234), (REMOTE, 53)).build();
    let (verdict, _) = h.run(
        UP_IN,
        &Spec::icmp_error(REMOTE, HOST, 3, 3, &quoted).build(),
    );
    assert_eq!(verdict, SHOT);
    assert_eq!(h.counter(Reason::DropIcmpNoFlow), 1);
    // One about the host's own traffic is the host's business.
    let quoted = Spec::udp((HOST, 40000), (REMOTE, 53)).build();
    let err = Spec::icmp_error(REMOTE, HOST, 3, 3, &quoted).build();
    let (verdict, out) = h.run(UP_IN, &err);
    assert_eq!((verdict, out), (PASS, err));
}

#[test]
fn untracked_icmp_error_from_a_container_never_opens_a_flow() {
    let mut h = Harness::new((61000, 65535));
    let quoted = Spec::udp((REMOTE, 53), (WEB, 5000)).build();
    let err = Spec::icmp_error(WEB, REMOTE, 3, 3, &quoted).build();
    let (verdict, out) = h.run(UP_OUT, &err);
    assert_eq!((verdict, out), (PASS, err));
    assert_eq!(h.entries(), 0);
}

fn big_udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut spec = Spec::udp(src, dst);
    spec.payload = (0..1200u32).map(|i| (i % 251) as u8).collect();
    spec.build()
}

#[test]
fn fragments_of_a_published_datagram_follow_the_first() {
    let mut h = Harness::new((61000, 65535));
    h.publish(UDP, 5353, WEB, 53);
    let (first, later) = fragment(&big_udp((LAN, 7000), (HOST, 5353)), 800, 0x4242);
    let (v1, out1) = h.run(UP_IN, &first);
    let (v2, out2) = h.run(UP_IN, &later);
    assert_eq!((v1, v2), (PASS, PASS));
    // Reassembled, the datagram is the DNATed one with a valid UDP checksum.
    assert_eq!(
        parse_checked(&reassemble(&out1, &out2)),
        seen((LAN, 7000), (WEB, 53))
    );
    assert_eq!(
        &out2[34..],
        &later[34..],
        "a later fragment's payload is not touched"
    );
    // The reply, fragmented by the container, leaves as the host.
    let (first, later) = fragment(&big_udp((WEB, 53), (LAN, 7000)), 800, 0x1111);
    let (_, out1) = h.run(UP_OUT, &first);
    let (_, out2) = h.run(UP_OUT, &later);
    assert_eq!(
        parse_checked(&reassemble(&out1, &out2)),
        seen((HOST, 5353), (LAN, 7000))
    );
}

#[test]
fn later_fragment_without_its_first_is_dropped_and_counted() {
    let mut h = Harness::new((61000, 65535));
    h.publish(UDP, 5353, WEB, 53);
    let (_, later) = fragment(&big_udp((LAN, 7000), (HOST, 5353)), 800, 0x4343);
    let (verdict, _) = h.run(UP_IN, &later);
    assert_eq!(verdict, SHOT);
    assert_eq!(h.counter(Reason::DropFragNoFirst), 1);
}

#[test]
fn fragments_of_the_hosts_own_traffic_pass_untouched() {
    let mut h = Harness::new((61000, 65535));
    let (first, later) = fragment(&big_udp((LAN, 7000), (HOST, 9999)), 800, 0x4444);
    for f in [first, later] {
        let (verdict, out) = h.run(UP_IN, &f);
        assert_eq!((verdict, out), (PASS, f));
    }
}

#[test]
fn a_new_flow_raced_by_another_cpu_is_adopted_not_dropped() {
    let mut h = Harness::new((61000, 65535));
    h.publish(UDP, 5353, WEB, 53);
    let query = Spec::udp((LAN, 7000), (HOST, 5353)).build();
    h.run(UP_IN, &query);
    // What a racing CPU leaves mid-creation: the reply entry claimed, the
    // original not yet inserted (kubernetes#56903's parallel DNS queries).
    let (orig, _) = h.flows()[0];
    h.dp.conntrack_new.remove(&orig).expect("remove original");
    let (verdict, out) = h.run(UP_IN, &query);
    assert_eq!(
        verdict, PASS,
        "the second packet of the flow must not be dropped"
    );
    assert_eq!(parse_checked(&out), seen((LAN, 7000), (WEB, 53)));
    assert_eq!(h.entries(), 2);
    assert_eq!(h.counter(Reason::DropCtInsert), 0);
}

#[test]
fn a_fresh_reply_entry_without_its_original_is_not_reclaimed() {
    let mut h = Harness::new((61000, 61000));
    h.run(UP_OUT, &Spec::udp((WEB, 40000), (REMOTE, 53)).build());
    let (orig, _) = h.flows()[0];
    h.dp.conntrack_new.remove(&orig).expect("remove original");
    // Another flow to the same peer wants the only SNAT port: it must not
    // take the one a half-created flow has just claimed.
    let (verdict, _) = h.run(UP_OUT, &Spec::udp((CLIENT, 40001), (REMOTE, 53)).build());
    assert_eq!(verdict, SHOT);
    assert_eq!(h.counter(Reason::DropSnatExhausted), 1);
}

#[test]
fn a_flood_of_new_flows_never_evicts_established_ones() {
    let mut h = Harness::with_ct_max((61000, 65535), 64);
    h.publish(TCP, 8080, WEB, 80);
    let clients: Vec<u16> = (41000..41010).collect();
    for &port in &clients {
        h.run(UP_IN, &Spec::tcp((LAN, port), (HOST, 8080), SYN).build());
        h.run(
            UP_OUT,
            &Spec::tcp((WEB, 80), (LAN, port), SYN | ACK).build(),
        );
        h.run(UP_IN, &Spec::tcp((LAN, port), (HOST, 8080), ACK).build());
    }
    assert_eq!(
        h.dp.conntrack.keys().count(),
        20,
        "established flows are in the assured table"
    );
    // A SYN flood far larger than the table.
    for port in 1000..2000u16 {
        h.run(UP_IN, &Spec::tcp((REMOTE, port), (HOST, 8080), SYN).build());
    }
    assert_eq!(
        h.counter(Reason::DnatNew),
        1010,
        "new flows keep being accepted"
    );
    for &port in &clients {
        // The container's side first: a flow lost to eviction would have its
        // reply masqueraded as HOST:80 instead of un-DNATed to HOST:8080.
        let (_, back) = h.run(UP_OUT, &Spec::tcp((WEB, 80), (LAN, port), ACK).build());
        assert_eq!(
            parse_checked(&back),
            seen((HOST, 8080), (LAN, port)),
            "flow from port {port}"
        );
        let (_, out) = h.run(UP_IN, &Spec::tcp((LAN, port), (HOST, 8080), ACK).build());
        assert_eq!(parse_checked(&out), seen((LAN, port), (WEB, 80)));
    }
    // The same flows, not re-created ones: their counters carried on.
    let flows = h.flows();
    for &port in &clients {
        let (_, e) = flows
            .iter()
            .find(|(k, _)| k.sport == port.to_be())
            .unwrap_or_else(|| panic!("flow from port {port} is gone"));
        assert_eq!(e.packets, [3, 2], "flow from port {port} was re-created");
    }
}

#[test]
fn a_full_assured_table_refuses_new_flows_logs_once_and_recovers_as_flows_expire() {
    // 64 entries per table: 32 established flows fill the assured one.
    let mut h = Harness::with_ct_max((61000, 65535), 64);
    h.publish(TCP, 8080, WEB, 80);
    let handshake = |h: &mut Harness, port: u16| -> u32 {
        h.run(UP_IN, &Spec::tcp((LAN, port), (HOST, 8080), SYN).build());
        h.run(
            UP_OUT,
            &Spec::tcp((WEB, 80), (LAN, port), SYN | ACK).build(),
        );
        h.run(UP_IN, &Spec::tcp((LAN, port), (HOST, 8080), ACK).build())
            .0
    };
    let established: Vec<u16> = (41000..41032).collect();
    for &port in &established {
        assert_eq!(handshake(&mut h, port), PASS, "flow from port {port}");
    }
    assert_eq!(
        h.dp.conntrack.keys().count(),
        64,
        "the assured table is full"
    );
    assert!(h.dp.drain_events().is_empty());

    // The next flow completes its handshake in the new-flow table, then
    // cannot be promoted: refused, counted, logged.
    assert_eq!(handshake(&mut h, 42000), SHOT);
    assert_eq!(h.counter(Reason::DropCtFull), 1);
    // From then on new flows are refused at their first packet, as
    // netfilter refuses them when its table is full; logged once a second.
    let (verdict, _) = h.run(UP_IN, &Spec::tcp((LAN, 42001), (HOST, 8080), SYN).build());
    assert_eq!(verdict, SHOT);
    let (verdict, _) = h.run(UP_OUT, &Spec::udp((WEB, 5353), (REMOTE, 53)).build());
    assert_eq!(verdict, SHOT);
    assert_eq!(h.counter(Reason::DropCtFull), 3);
    let events = h.dp.drain_events();
    assert_eq!(events.len(), 1, "rate-limited: {events:?}");
    assert_eq!(events[0].reason, Reason::DropCtFull as u32);
    assert_eq!(events[0].detail, 32, "established flows");
    assert!(
        h.flows().iter().all(|(k, _)| u16::from_be(k.sport) < 42000),
        "a refused flow leaves nothing behind"
    );

    // Established flows never noticed.
    let ack = |port: u16| Spec::tcp((LAN, port), (HOST, 8080), ACK).build();
    for &port in &established {
        let (verdict, out) = h.run(UP_IN, &ack(port));
        assert_eq!(verdict, PASS);
        assert_eq!(parse_checked(&out), seen((LAN, port), (WEB, 80)));
    }

    // Half of them end (RST) and time out at once (a CLOSE timeout of 0).
    for &port in &established[..16] {
        h.run(
            UP_IN,
            &Spec::tcp((LAN, port), (HOST, 8080), netbr_common::conntrack::TCP_RST).build(),
        );
    }
    let mut cfg = h.dp.config().expect("config");
    cfg.timeouts[CtState::Close as usize] = 0;
    h.dp.set_config(&cfg).expect("config");
    // The collector's timer (armed by the first packet, firing every
    // second) collects them with no packet running and no netbr process:
    // this test only waits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while h.dp.conntrack.keys().count() > 32 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        h.dp.conntrack.keys().count(),
        32,
        "the ended flows collected"
    );
    assert_eq!(h.counter(Reason::CtExpired), 16);
    assert_eq!(handshake(&mut h, 42002), PASS, "service returns");
    assert_eq!(h.counter(Reason::DropCtFull), 3);
    for &port in &established[16..] {
        let (_, out) = h.run(UP_IN, &ack(port));
        assert_eq!(parse_checked(&out), seen((LAN, port), (WEB, 80)));
    }
}

#[test]
fn snat_attempts_at_10_50_90_and_100_percent_fill() {
    // A 100-port range towards one peer; container ports inside the host's
    // ephemeral range, so every flow draws from the range.
    let mut h = Harness::new((62000, 62099));
    let mut next_port = 33000u16;
    let open_flow = |h: &mut Harness, port: u16| -> u32 {
        h.run(UP_OUT, &Spec::udp((WEB, port), (REMOTE, 53)).build())
            .0
    };
    let mut report = Vec::new();
    for fill in [10usize, 50, 90, 99, 100] {
        // Near full, 32 probes from a random start may miss the last free
        // ports; filling simply tries again.
        let mut tries = 0;
        while h.flows().len() < fill {
            next_port += 1;
            open_flow(&mut h, next_port);
            tries += 1;
            assert!(tries < 100_000, "cannot fill to {fill}%");
        }
        // Sample new flows at this fill, removing each so the fill holds.
        let before = h.dp.snat_attempts().expect("histogram");
        let samples = 200;
        for _ in 0..samples {
            let len_before = h.flows().len();
            next_port += 1;
            open_flow(&mut h, next_port);
            if h.flows().len() > len_before {
                let newest = next_port.to_be();
                h.dp.remove_flows(|k, _| k.sport == newest).expect("remove");
            }
        }
        let after = h.dp.snat_attempts().expect("histogram");
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let exhausted = *delta.last().expect("buckets");
        let found: u64 = delta[..delta.len() - 1].iter().sum();
        let tries: u64 = delta[..delta.len() - 1]
            .iter()
            .enumerate()
            .map(|(i, n)| i as u64 * n)
            .sum();
        let mean = if found > 0 {
            tries as f64 / found as f64
        } else {
            0.0
        };
        report.push((fill, mean, exhausted));
        println!("fill {fill:>3}%: {found} found, mean {mean:.2} candidates, {exhausted} of {samples} exhausted");
    }
    let at = |f| report.iter().find(|r| r.0 == f).copied().expect("level");
    assert!(at(10).1 < 1.5 && at(10).2 == 0, "{report:?}");
    assert!(
        at(50).1 < at(90).1,
        "more fill must need more attempts: {report:?}"
    );
    assert_eq!(at(100).2, 200, "a full range finds nothing: {report:?}");
}

#[test]
fn bridge_ingress_never_masquerades_a_container_packet_to_a_host_address() {
    let mut h = Harness::new((61000, 65535));
    // Uplink egress once saw this tuple and made a masquerade flow of it.
    for frame in [
        Spec::udp((WEB, 61000), (HOST, 9999)).build(),
        Spec::echo_request(WEB, HOST, 22).build(),
    ] {
        h.run(UP_OUT, &frame);
        h.assert_passes_untouched(BR_IN, &frame, "to a host address");
    }
}

#[test]
fn a_snat_port_is_free_again_once_its_flow_has_timed_out() {
    // One port in the range, held by a flow towards REMOTE:53.
    let mut h = Harness::new((61000, 61000));
    let (verdict, out) = h.run(UP_OUT, &Spec::udp((WEB, 40000), (REMOTE, 53)).build());
    assert_eq!((verdict, parse_checked(&out).sport), (PASS, 61000));
    let (verdict, _) = h.run(UP_OUT, &Spec::udp((CLIENT, 40001), (REMOTE, 53)).build());
    assert_eq!(verdict, SHOT, "the only port is in use");
    // The first flow times out (timeouts of 0 s, then a moment).
    let mut cfg = h.dp.config().expect("config");
    cfg.timeouts = [0; STATE_COUNT];
    h.dp.set_config(&cfg).expect("config");
    past_a_clock_tick();
    let (verdict, out) = h.run(UP_OUT, &Spec::udp((CLIENT, 40001), (REMOTE, 53)).build());
    assert_eq!(verdict, PASS, "the timed-out flow's port must be reusable");
    assert_eq!(parse_checked(&out), seen((HOST, 61000), (REMOTE, 53)));
}

#[test]
fn fast_path_delivers_a_published_packet_into_the_container_as_a_router_would() {
    let mut h = Harness::new((61000, 65535));
    h.publish(TCP, 8080, WEB, 80);
    h.set_map_flags(CFG_FAST_PATH);
    h.endpoint_on_loopback(WEB);
    let frame = Spec::tcp((LAN, 40000), (HOST, 8080), SYN).build();
    let (verdict, out) = h.run(UP_IN, &frame);
    assert_eq!(
        verdict, REDIRECT,
        "redirected into the container's namespace"
    );
    assert_eq!(parse_checked(&out), seen((LAN, 40000), (WEB, 80)));
    assert_eq!(&out[0..6], &WEB_MAC);
    assert_eq!(&out[6..12], &BRIDGE_MAC);
    assert_eq!(out[22], frame[22] - 1, "TTL decremented");
    assert_eq!(h.dp.fast_path_counts().expect("fast").0, 1);

    // A TTL that would expire here goes to the stack (translated), which
    // answers with time-exceeded.
    let mut frame = Spec::tcp((LAN, 40001), (HOST, 8080), SYN).build();
    frame[22] = 1;
    let c = netbr::probe::inet_checksum(&{
        let mut h = frame[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    let (verdict, out) = h.run(UP_IN, &frame);
    assert_eq!(verdict, PASS);
    assert_eq!(parse_checked(&out), seen((LAN, 40001), (WEB, 80)));
}

/// `attach` fixes the modes when it loads the programs: the verifier prunes
/// the code of a mode that is off, and a fixed mode holds whatever the
/// config map's flags say.
#[test]
fn modes_fixed_at_load_prune_what_is_off_and_hold_against_the_map() {
    let verified_size = |modes| {
        let mut h = Harness::loaded((61000, 65535), 1024, Some(modes));
        let info = h.classifier(BR_IN).info().expect("program info");
        info.size_translated().expect("translated size")
    };
    let (off, on) = (verified_size(0), verified_size(CFG_FAST_PATH));
    println!("nb_br_in as verified: {off} bytes with the fast path fixed off, {on} on");
    assert!(
        off < on,
        "nb_br_in with the fast path fixed off ({off} bytes) is smaller than with it on ({on})"
    );
    for (fixed, in_map, want) in [(CFG_FAST_PATH, 0, REDIRECT), (0, CFG_FAST_PATH, PASS)] {
        let mut h = Harness::loaded((61000, 65535), 1024, Some(fixed));
        h.publish(TCP, 8080, WEB, 80);
        h.endpoint_on_loopback(WEB);
        h.set_map_flags(in_map);
        let frame = Spec::tcp((LAN, 40000), (HOST, 8080), SYN).build();
        let (verdict, out) = h.run(UP_IN, &frame);
        assert_eq!(
            verdict, want,
            "fixed modes {fixed:#x}, map flags {in_map:#x}"
        );
        assert_eq!(parse_checked(&out), seen((LAN, 40000), (WEB, 80)));
    }
}

#[test]
fn fast_path_leaves_too_big_packets_to_the_stack() {
    // bpf_check_mtu looks the endpoint's veth up in the namespace of the
    // thread running the test: give it a private one with a narrow veth.
    let ns = format!("nbt-mtu-{}", netbr::sandbox::unique_suffix());
    let path = netbr::netns::create_named(&ns).expect("namespace");
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = netbr::netns::delete_named(&self.0);
        }
    }
    let _cleanup = Cleanup(ns);
    for args in [
        &[
            "link", "add", "nbt0", "mtu", "1280", "type", "veth", "peer", "name", "nbt1",
        ][..],
        &["link", "set", "nbt0", "up"],
    ] {
        let o = netbr::sandbox::in_netns(&path, "ip", args).expect("ip");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let verdicts = netbr::netns::run_in(&path, || {
        let mut h = Harness::new((61000, 65535));
        h.publish(UDP, 5353, WEB, 53);
        h.set_map_flags(CFG_FAST_PATH);
        let index = netbr::netlink::block_on(async {
            let nl = netbr::netlink::Netlink::connect()?;
            Ok(nl.require_link("nbt0").await?.index)
        })
        .expect("ifindex");
        let mut ep = h.dp.endpoints.get(&to_be32(WEB), 0).expect("endpoint");
        ep.host_ifindex = index;
        h.dp.endpoints
            .insert(to_be32(WEB), ep, 0)
            .expect("endpoint");
        let mut big = Spec::udp((LAN, 7000), (HOST, 5353));
        big.payload = vec![1; 1400];
        let (too_big, out) = h.run(UP_IN, &big.build());
        let small = h
            .run(UP_IN, &Spec::udp((LAN, 7001), (HOST, 5353)).build())
            .0;
        (too_big, parse_checked(&out), small)
    })
    .expect("run in namespace");
    assert_eq!(
        verdicts.0, PASS,
        "a packet over the veth's MTU goes to the stack"
    );
    assert_eq!(verdicts.1, seen((LAN, 7000), (WEB, 53)), "still translated");
    assert_eq!(
        verdicts.2, REDIRECT,
        "a packet that fits takes the fast path"
    );
}

#[test]
fn a_finished_tcp_flow_gives_its_snat_port_to_a_new_connection() {
    // One SNAT port, held by a connection that has closed (TIME_WAIT).
    let mut h = Harness::new((61000, 61000));
    h.run(UP_OUT, &Spec::tcp((WEB, 40000), (REMOTE, 443), SYN).build());
    h.run(
        UP_IN,
        &Spec::tcp((REMOTE, 443), (HOST, 61000), SYN | ACK).build(),
    );
    h.run(UP_OUT, &Spec::tcp((WEB, 40000), (REMOTE, 443), ACK).build());
    h.run(
        UP_OUT,
        &Spec::tcp((WEB, 40000), (REMOTE, 443), 0x11).build(),
    );
    h.run(
        UP_IN,
        &Spec::tcp((REMOTE, 443), (HOST, 61000), 0x11).build(),
    );
    assert_eq!(h.flows()[0].1.state, CtState::TimeWait as u8);
    // A new connection to the same peer takes the port over...
    let (verdict, out) = h.run(
        UP_OUT,
        &Spec::tcp((CLIENT, 40001), (REMOTE, 443), SYN).build(),
    );
    assert_eq!(verdict, PASS);
    assert_eq!(parse_checked(&out), seen((HOST, 61000), (REMOTE, 443)));
    // ...while a live one keeps it.
    let (verdict, _) = h.run(UP_OUT, &Spec::tcp((WEB, 40002), (REMOTE, 443), SYN).build());
    assert_eq!(verdict, SHOT);
}

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

#[test]
fn xdp_carries_established_flows_into_containers_and_leaves_the_rest_to_tc() {
    let mut h = Harness::new((61000, 65535));
    h.publish(TCP, 8080, WEB, 80);
    h.publish(UDP, 5353, WEB, 53);
    h.endpoint_on_loopback(WEB);
    let data = |flags| {
        let mut s = Spec::tcp((LAN, 40000), (HOST, 8080), flags);
        s.payload = (0..200u8).collect();
        s.build()
    };
    // Not yet established: TC's.
    let syn = Spec::tcp((LAN, 40000), (HOST, 8080), SYN).build();
    assert_eq!(h.run_xdp(&syn), (XDP_PASS, syn.clone()));
    h.run(UP_IN, &syn);
    h.run(
        UP_OUT,
        &Spec::tcp((WEB, 80), (LAN, 40000), SYN | ACK).build(),
    );
    let frame = data(ACK);
    assert_eq!(h.run_xdp(&frame), (XDP_PASS, frame.clone()), "half-open");
    h.run(UP_IN, &frame);

    // Established: translated in the driver, addressed to the container's
    // MAC from the bridge, TTL down by one, checksums right.
    let frame = data(ACK | 0x08);
    let (action, out) = h.run_xdp(&frame);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(parse_checked(&out), seen((LAN, 40000), (WEB, 80)));
    assert_eq!(&out[0..6], &WEB_MAC);
    assert_eq!(&out[6..12], &BRIDGE_MAC);
    assert_eq!(out[22], frame[22] - 1, "TTL decremented");
    assert_eq!(&out[54..], &frame[54..], "payload untouched");
    assert_eq!(h.dp.fast_path_counts().expect("fast").2, 1);
    let flow = h
        .flows()
        .into_iter()
        .find(|(k, _)| k.sport == 40000u16.to_be())
        .expect("flow");
    assert_eq!(flow.1.packets[0], 3, "XDP accounts the packet to its flow");

    // State changes, fragments, options and ICMP stay with TC.
    let fin = data(ACK | 0x01);
    assert_eq!(h.run_xdp(&fin), (XDP_PASS, fin.clone()), "FIN");
    let (first, _) = fragment(&frame, 48, 7);
    assert_eq!(h.run_xdp(&first), (XDP_PASS, first.clone()), "fragment");
    let mut opts = Spec::tcp((LAN, 40000), (HOST, 8080), ACK);
    opts.ip_options = vec![1, 1, 1, 0];
    let opts = opts.build();
    assert_eq!(h.run_xdp(&opts), (XDP_PASS, opts.clone()), "IP options");
    let ping = Spec::echo_request(LAN, HOST, 7).build();
    assert_eq!(h.run_xdp(&ping), (XDP_PASS, ping.clone()), "ICMP");
    // A packet matching nothing is not XDP's to judge either.
    let stray = Spec::tcp((LAN, 40001), (HOST, 9999), ACK).build();
    assert_eq!(h.run_xdp(&stray), (XDP_PASS, stray.clone()), "no flow");

    // UDP without a checksum keeps none.
    let mut q = Spec::udp((LAN, 40002), (HOST, 5353));
    q.udp_no_csum = true;
    let q = q.build();
    h.run(UP_IN, &q);
    h.run(UP_OUT, &Spec::udp((WEB, 53), (LAN, 40002)).build());
    let (action, out) = h.run_xdp(&q);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(parse_checked(&out), seen((LAN, 40002), (WEB, 53)));
    assert_eq!(&out[40..42], &[0, 0], "no checksum stays none");
}

/// Removes a test's pin directory however the test ends.
struct PinDirGuard(std::path::PathBuf);

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_objects_maps_and_programs_are_exactly_the_layout_the_loader_expects() {
    use netbr_common::layout::{PINNED, PROGRAMS, UNPINNED};
    netbr::bpf::pins::ensure_bpffs().expect("bpffs");
    let dir = PinDirGuard(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/netbr-layout-test-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).expect("pin dir");
    let ebpf = netbr::bpf::attach::load(Some(&dir.0), 1024, None).expect("load the BPF object");
    let mut maps: Vec<&str> = ebpf.maps().map(|(n, _)| n).collect();
    maps.sort_unstable();
    let mut want: Vec<&str> = PINNED.iter().map(|s| s.name).chain(UNPINNED).collect();
    want.sort_unstable();
    assert_eq!(maps, want, "the object's maps");
    let mut progs: Vec<&str> = ebpf.programs().map(|(n, _)| n).collect();
    progs.sort_unstable();
    let mut want_progs = PROGRAMS.to_vec();
    want_progs.sort_unstable();
    assert_eq!(progs, want_progs, "the object's programs");
    // Every pinned map has exactly the type, sizes and entries of its spec,
    // checked by the same code every command runs on open.
    netbr::bpf::layout::check_maps(&dir.0, "layout-test", 1024, &[]).expect("layout");
    let mut pinned: Vec<String> = std::fs::read_dir(&dir.0)
        .expect("read pins")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    pinned.sort_unstable();
    let mut want_pinned: Vec<String> = PINNED.iter().map(|s| s.name.to_string()).collect();
    want_pinned.sort_unstable();
    assert_eq!(pinned, want_pinned, "what the loader pins");
    // A spec that disagrees with the pins is refused with the fix.
    let err = netbr::bpf::layout::check_maps(&dir.0, "layout-test", 2048, &[])
        .expect_err("a conntrack size other than the pinned one is refused")
        .to_string();
    assert!(err.contains("netbr detach"), "{err}");
}

mod firewall {
    use super::*;
    use netbr::store::firewall::replace_rules;
    use netbr_common::firewall::{RuleSpec, FW_ALLOW, FW_DENY, FW_IN, FW_OUT};

    fn rule(id: u32, dir: u8, action: u8, cidr: (Ipv4Addr, u8)) -> RuleSpec {
        RuleSpec {
            id,
            dir,
            action,
            cidr: (u32::from(cidr.0), cidr.1),
            port: None,
            endpoint: None,
        }
    }

    /// Installs `rules`; rule `i` counts its hits in slots `2i` and `2i+1`.
    fn install(h: &mut Harness, rules: &[RuleSpec]) {
        let rules: Vec<_> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let n = netbr_common::firewall::entries(r).count() as u32;
                (*r, (0..n).map(|k| 2 * i as u32 + k).collect())
            })
            .collect();
        replace_rules(&mut h.dp, &rules).expect("rules");
    }

    fn hits(h: &Harness, slot: u32) -> u64 {
        h.dp.firewall_hits.get(&slot, 0).expect("hits").iter().sum()
    }

    #[test]
    fn a_deny_by_client_block_and_port_drops_the_first_packet_untranslated() {
        let mut h = Harness::new((61000, 65535));
        h.publish(TCP, 8080, WEB, 80);
        h.publish(TCP, 9090, WEB, 80);
        let mut deny = rule(1, FW_IN, FW_DENY, (Ipv4Addr::new(192, 0, 2, 0), 24));
        deny.port = Some((0, 8080));
        install(&mut h, &[deny]);

        let (verdict, _) = h.run(UP_IN, &Spec::tcp((LAN, 40000), (HOST, 8080), SYN).build());
        assert_eq!(verdict, SHOT);
        assert_eq!(h.entries(), 0, "a denied flow left conntrack entries");
        assert_eq!(h.counter(Reason::DropFirewallDeny), 1);
        assert_eq!(hits(&h, 0), 1, "the tcp entry counts the hit");
        // Another client, another port: untouched.
        let (verdict, out) = h.run(
            UP_IN,
            &Spec::tcp((REMOTE, 40000), (HOST, 8080), SYN).build(),
        );
        assert_eq!((verdict, parse_checked(&out).dst), (PASS, WEB));
        let (verdict, _) = h.run(UP_IN, &Spec::tcp((LAN, 40001), (HOST, 9090), SYN).build());
        assert_eq!(verdict, PASS);
        assert_eq!(h.counter(Reason::DnatNew), 2);
    }

    #[test]
    fn an_allow_closes_its_port_to_everyone_else_and_tracked_flows_carry_on() {
        let mut h = Harness::new((61000, 65535));
        h.publish(TCP, 8080, WEB, 80);
        h.publish(UDP, 5353, WEB, 53);
        // A flow opened before any rule.
        let (verdict, _) = h.run(UP_IN, &Spec::tcp((LAN, 40000), (HOST, 8080), SYN).build());
        assert_eq!(verdict, PASS);
        let mut allow = rule(1, FW_IN, FW_ALLOW, (Ipv4Addr::new(198, 51, 100, 0), 24));
        allow.port = Some((TCP, 8080));
        install(&mut h, &[allow]);

        let (verdict, _) = h.run(UP_IN, &Spec::tcp((LAN, 40001), (HOST, 8080), SYN).build());
        assert_eq!(verdict, SHOT);
        assert_eq!(h.counter(Reason::DropFirewallNotAllowed), 1);
        let (verdict, _) = h.run(
            UP_IN,
            &Spec::tcp((REMOTE, 40001), (HOST, 8080), SYN).build(),
        );
        assert_eq!(verdict, PASS);
        assert_eq!(hits(&h, 0), 1);
        // Outside the rule's scope (udp), and the flow already tracked.
        let (verdict, _) = h.run(UP_IN, &Spec::udp((LAN, 40002), (HOST, 5353)).build());
        assert_eq!(verdict, PASS);
        let (verdict, out) = h.run(UP_IN, &Spec::tcp((LAN, 40000), (HOST, 8080), ACK).build());
        assert_eq!((verdict, parse_checked(&out).dst), (PASS, WEB));
    }

    #[test]
    fn an_out_deny_stops_one_containers_new_flows_icmp_included() {
        let mut h = Harness::new((61000, 65535));
        let mut deny = rule(1, FW_OUT, FW_DENY, (REMOTE, 32));
        deny.endpoint = Some(u32::from(CLIENT));
        install(&mut h, &[deny]);

        let (verdict, _) = h.run(UP_OUT, &Spec::udp((CLIENT, 5000), (REMOTE, 53)).build());
        assert_eq!(verdict, SHOT);
        let (verdict, _) = h.run(UP_OUT, &Spec::echo_request(CLIENT, REMOTE, 7).build());
        assert_eq!(verdict, SHOT);
        assert_eq!(h.counter(Reason::DropFirewallDeny), 2);
        assert_eq!(hits(&h, 0), 2);
        // Another container, another destination: masqueraded.
        let (verdict, out) = h.run(UP_OUT, &Spec::udp((WEB, 5000), (REMOTE, 53)).build());
        assert_eq!((verdict, parse_checked(&out).src), (PASS, HOST));
        let (verdict, _) = h.run(UP_OUT, &Spec::udp((CLIENT, 5001), (LAN, 53)).build());
        assert_eq!(verdict, PASS);
        assert_eq!(h.counter(Reason::SnatNew), 2);
    }
}

/// The kernel's time for one run of a program on `frame` (BPF_PROG_TEST_RUN
/// with one repeat: repeats would run on the frame the previous run
/// rewrote), in ns.
fn run_ns<P>(p: &P, frame: &[u8]) -> u64
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    repeat_ns(p, frame, 1)
}

/// The kernel's mean ns per run over `repeat` runs on one frame (which the
/// runs must leave unchanged for the figure to mean one path).
fn repeat_ns<P>(p: &P, frame: &[u8], repeat: u32) -> u64
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    r.duration.as_nanos() as u64
}

/// Median ns per run of `prog` over `frames(i)` for i in 0..RUNS.
/// How many single runs a cost figure is the median of.
const COST_RUNS: u16 = 2000;

fn median_ns(h: &mut Harness, prog: &str, frames: impl Fn(u16) -> Vec<u8>) -> u64 {
    let mut v: Vec<u64> = if prog == "nb_xdp" {
        let p = h.xdp();
        (0..COST_RUNS).map(|i| run_ns(p, &frames(i))).collect()
    } else {
        let p = h.classifier(prog);
        (0..COST_RUNS).map(|i| run_ns(p, &frames(i))).collect()
    };
    v.sort_unstable();
    v[v.len() / 2]
}

/// A cost row's packets, by run.
type Frames = Box<dyn Fn(u16) -> Vec<u8>>;

/// The per-CPU sums of a profile build's segments.
fn profile_sums(ebpf: &mut Ebpf) -> PerCpuArray<&mut aya::maps::MapData, u64> {
    PerCpuArray::try_from(ebpf.map_mut(PROF_MAP).expect("profile map")).expect("per-CPU array")
}

/// Runs `median_ns`'s series of single runs on programs built with their
/// timing marks, reading the segments' sums after each run: the median ns
/// of each segment (`netbr_common::profile`) less a mark's own cost (the
/// median empty segment), and that cost (a clock read). Medians, as for
/// the cost figures: a new flow's mean carries the rare run that evicts
/// from the LRU table.
fn profile_ns(h: &mut Harness, prog: &str, frames: impl Fn(u16) -> Vec<u8>) -> (Vec<u64>, u64) {
    let sums = |h: &mut Harness| -> Vec<u64> {
        let map = profile_sums(&mut h.ebpf);
        (0..PROF_LEN)
            .map(|i| map.get(&i, 0).expect("segment").iter().sum())
            .collect()
    };
    let mut before = sums(h);
    let mut runs: Vec<Vec<u64>> = vec![Vec::new(); PROF_LEN as usize];
    for i in 0..COST_RUNS {
        run_ns(h.classifier(prog), &frames(i));
        let after = sums(h);
        for (segment, times) in runs.iter_mut().enumerate() {
            times.push(after[segment] - before[segment]);
        }
        before = after;
    }
    let mut median = |segment: u32| -> u64 {
        let times = &mut runs[segment as usize];
        times.sort_unstable();
        times[times.len() / 2]
    };
    let mark = median(SEG_EMPTY);
    let segments = SEGMENTS
        .iter()
        .map(|&(s, _)| median(s).saturating_sub(mark))
        .collect();
    (segments, mark)
}

/// Per-packet cost of each program and path under BPF_PROG_TEST_RUN: the
/// kernel's ns per run, median of 2000 runs. A measurement, not a check
/// (speed targets live in benchmarks): `cargo xtask cost` prints it.
#[test]
#[ignore = "a measurement, not a check: cargo xtask cost"]
fn per_packet_cost() {
    // As `attach` loads them by default: the fast path fixed on, and the
    // conntrack tables at their default size. A new flow's inserts and
    // lookups that miss cost twice as much in a table that size as in the
    // other tests' 1,024 entries, which stay in the CPU's caches.
    let mut h = Harness::loaded(
        (61000, 65535),
        netbr_common::maps::CT_MAX_ENTRIES_DEFAULT,
        Some(CFG_FAST_PATH),
    );
    h.set_map_flags(CFG_FAST_PATH);
    h.publish(TCP, 8080, WEB, 80);
    h.endpoint_on_loopback(WEB);
    // An established DNAT flow, as lan -> 8080 -> web:80.
    h.run(UP_IN, &Spec::tcp((LAN, 40000), (HOST, 8080), SYN).build());
    h.run(
        UP_OUT,
        &Spec::tcp((WEB, 80), (LAN, 40000), SYN | ACK).build(),
    );
    h.run(UP_IN, &Spec::tcp((LAN, 40000), (HOST, 8080), ACK).build());
    let data = |from: (Ipv4Addr, u16), to: (Ipv4Addr, u16)| {
        let mut s = Spec::tcp(from, to, ACK | 0x08);
        s.payload = vec![0; 18];
        s.build()
    };
    let rows: Vec<(&str, &str, u64)> = vec![
        (
            UP_IN,
            "tracked TCP, translated, redirected into the container",
            median_ns(&mut h, UP_IN, |_| data((LAN, 40000), (HOST, 8080))),
        ),
        (
            UP_IN,
            "new flow (SYN to a published port)",
            median_ns(&mut h, UP_IN, |i| {
                Spec::tcp((REMOTE, 1024 + i), (HOST, 8080), SYN).build()
            }),
        ),
        (
            UP_IN,
            "unmatched (UDP to an unpublished port)",
            median_ns(&mut h, UP_IN, |_| {
                Spec::udp((LAN, 40000), (HOST, 9999)).build()
            }),
        ),
        (
            UP_OUT,
            "tracked TCP reply, translated",
            median_ns(&mut h, UP_OUT, |_| data((WEB, 80), (LAN, 40000))),
        ),
        (
            UP_OUT,
            "new masquerade flow (UDP)",
            median_ns(&mut h, UP_OUT, |i| {
                Spec::udp((CLIENT, 1024 + i), (REMOTE, 53)).build()
            }),
        ),
        (
            UP_OUT,
            "unmatched (the host's own TCP)",
            median_ns(&mut h, UP_OUT, |_| data((HOST, 40000), (REMOTE, 80))),
        ),
        (
            BR_IN,
            "new flow (hairpin: a container to a published port)",
            median_ns(&mut h, BR_IN, |i| {
                Spec::tcp((CLIENT, 1024 + i), (HOST, 8080), SYN).build()
            }),
        ),
        (BR_IN, "tracked TCP, translated (hairpin), redirected", {
            h.run(BR_IN, &Spec::tcp((CLIENT, 5555), (HOST, 8080), SYN).build());
            median_ns(&mut h, BR_IN, |_| data((CLIENT, 5555), (HOST, 8080)))
        }),
        (EP_IN, "tracked TCP, translated (hairpin), redirected", {
            median_ns(&mut h, EP_IN, |_| {
                to_bridge(data((CLIENT, 5555), (HOST, 8080)))
            })
        }),
        (
            EP_IN,
            "passed to the bridge (a new flow's first packet)",
            median_ns(&mut h, EP_IN, |i| {
                to_bridge(Spec::tcp((CLIENT, 1024 + i), (REMOTE, 80), SYN).build())
            }),
        ),
        (
            BR_IN,
            "unmatched (container to container)",
            median_ns(&mut h, BR_IN, |_| {
                Spec::udp((CLIENT, 5000), (WEB, 53)).build()
            }),
        ),
        (
            "nb_xdp",
            "tracked TCP, translated and redirected",
            median_ns(&mut h, "nb_xdp", |_| data((LAN, 40000), (HOST, 8080))),
        ),
        (
            "nb_xdp",
            "unmatched (UDP to an unpublished port)",
            median_ns(&mut h, "nb_xdp", |_| {
                Spec::udp((LAN, 40000), (HOST, 9999)).build()
            }),
        ),
    ];
    // Pacing: a limited container's packet (a limit too high to drop any)
    // and an unlimited one's, on the program every limited endpoint runs.
    h.dp.pacing
        .insert(
            pace_key(CLIENT, PACE_EGRESS),
            Pace::new(1_000_000_000_000, 0, PACE_STAMP),
            0,
        )
        .expect("pacing entry");
    h.classifier("nb_pace_out")
        .load()
        .expect("verifier accepts nb_pace_out");
    let mut rows = rows;
    // IPv6, against the IPv4 rows above: the same conntrack code on
    // 40-byte tuples. The bridge's IPv6 subnet is masqueraded to the
    // uplink's 2001:db8:1::1.
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("v6");
    let (lan6, uplink6, web6) = (LAN6, UPLINK6, WEB6);
    let net6 = netbr_common::net6::Net6::new(
        &v6("fd00:30::").octets(),
        64,
        &v6("fd00:30::1").octets(),
        &uplink6.octets(),
    );
    h.dp.set_net6(&net6).expect("net6");
    // web's IPv6 address, so the fast path delivers into it as IPv4's does.
    h.web_ipv6();
    let udp6 = |dst: &str| ipv6_frame(lan6, v6(dst), UDP, &udp_datagram(40000, 53));
    // An established masquerade flow, web6:40000 -> lan6:80.
    h.run(
        UP_OUT,
        &ipv6_checked(web6, lan6, TCP, &tcp_header(40000, 80, SYN)),
    );
    let port6 =
        h.dp.flows6()
            .expect("flows")
            .iter()
            .find(|(k, _)| k.sport == 40000u16.to_be())
            .map(|(_, f)| u16::from_be(f.xlat.sport))
            .expect("the IPv6 masquerade flow");
    h.run(
        UP_IN,
        &ipv6_checked(lan6, uplink6, TCP, &tcp_header(80, port6, SYN | ACK)),
    );
    let data6 = |from, sport, to, dport| {
        let mut l4 = tcp_header(sport, dport, ACK | 0x08);
        l4.extend_from_slice(&[0; 18]);
        ipv6_checked(from, to, TCP, &l4)
    };
    rows.push((
        UP_OUT,
        "IPv6 tracked TCP, translated",
        median_ns(&mut h, UP_OUT, |_| data6(web6, 40000, lan6, 80)),
    ));
    rows.push((
        UP_IN,
        "IPv6 tracked TCP reply, translated, redirected into the container",
        median_ns(&mut h, UP_IN, |_| data6(lan6, 80, uplink6, port6)),
    ));
    rows.push((
        UP_OUT,
        "IPv6 new masquerade flow (UDP)",
        median_ns(&mut h, UP_OUT, |i| {
            ipv6_checked(web6, lan6, UDP, &udp_datagram(1024 + i, 53))
        }),
    ));
    rows.push((
        UP_IN,
        "IPv6, passed (not the host's, not the subnet's)",
        median_ns(&mut h, UP_IN, |_| udp6("2001:db8:1::3")),
    ));
    rows.push((
        UP_IN,
        "IPv6 to the subnet, dropped (direct routing)",
        median_ns(&mut h, UP_IN, |_| udp6("fd00:30::2")),
    ));
    rows.push((
        "nb_pace_out",
        "limited endpoint, stamped for fq",
        median_ns(&mut h, "nb_pace_out", |_| udp_of_len(CLIENT, 1000)),
    ));
    rows.push((
        "nb_pace_out",
        "unlimited endpoint",
        median_ns(&mut h, "nb_pace_out", |_| udp_of_len(WEB, 1000)),
    ));
    // What a listening monitor costs: a drop and a new flow make a report,
    // a tracked packet none. Each series is shorter than the ring, which is
    // emptied before it, as a reading monitor keeps it.
    let direct = || Spec::udp((LAN, 40000), (WEB, 9999)).build();
    rows.push((
        UP_IN,
        "dropped (direct routing), no monitor",
        median_ns(&mut h, UP_IN, |_| direct()),
    ));
    listen(&mut h);
    let with_monitor = |h: &mut Harness, prog, what, frames: &dyn Fn(u16) -> Vec<u8>| {
        h.dp.drain_monitor();
        let ns = median_ns(h, prog, frames);
        assert!(!h.dp.drain_monitor().is_empty(), "{what}: no report");
        ns
    };
    let ns = with_monitor(&mut h, UP_IN, "drop", &|_| direct());
    rows.push((UP_IN, "dropped (direct routing), monitor listening", ns));
    let ns = with_monitor(&mut h, UP_OUT, "new flow", &|i| {
        Spec::udp((CLIENT, 30000 + i), (REMOTE, 53)).build()
    });
    rows.push((UP_OUT, "new masquerade flow (UDP), monitor listening", ns));
    h.dp.drain_monitor();
    rows.push((
        UP_IN,
        "tracked TCP, translated, redirected, monitor listening",
        median_ns(&mut h, UP_IN, |_| data((LAN, 40000), (HOST, 8080))),
    ));
    h.dp.set_monitor_deadline(0).expect("deadline");
    // A packet the program leaves unchanged can be repeated in one call,
    // which spreads the test run's own per-call cost over many runs: the
    // difference is what each single-run figure above carries besides the
    // program. Every unmatched packet is such a packet.
    // The profile of the lookups: a datagram to a port a masquerade flow
    // marked, from a peer of no flow, pays what an unmatched packet paid
    // before the port sets (two conntrack misses, the exact mapping, the
    // local-address check, the wildcard mapping).
    h.run(UP_OUT, &Spec::udp((CLIENT, 7777), (REMOTE, 53)).build());
    let marked_port = h
        .flows()
        .iter()
        .find(|(k, _)| k.sport == 7777u16.to_be())
        .map(|(_, f)| u16::from_be(f.xlat.sport))
        .expect("the masquerade flow");
    let repeated = [
        (UP_IN, Spec::udp((LAN, 40000), (HOST, 9999)).build()),
        (UP_IN, Spec::udp((LAN, 40001), (HOST, marked_port)).build()),
        (UP_OUT, data((HOST, 40000), (REMOTE, 80))),
        (BR_IN, Spec::udp((CLIENT, 5000), (WEB, 53)).build()),
        ("nb_xdp", Spec::udp((LAN, 40000), (HOST, 9999)).build()),
        (UP_IN, udp6("2001:db8:1::3")),
        (
            BR_IN,
            ipv6_frame(v6("fd00:30::2"), v6("fd00:30::3"), UDP, &[0; 8]),
        ),
    ]
    .map(|(prog, frame)| {
        let ns = if prog == "nb_xdp" {
            repeat_ns(h.xdp(), &frame, 100_000)
        } else {
            repeat_ns(h.classifier(prog), &frame, 100_000)
        };
        (prog, ns)
    });
    println!("\nper-packet cost under BPF_PROG_TEST_RUN (median ns per run of 2000)");
    println!("{:<12} {:<44} {:>6}", "PROGRAM", "PACKET", "NS");
    for (prog, what, ns) in &rows {
        println!("{prog:<12} {what:<44} {ns:>6}");
    }
    println!("\nunchanged packets, 100000 repeats in one call (the rest of a single-run figure is the test run's own cost)");
    let what = [
        "unmatched",
        "unmatched, port marked: 5 lookups that miss",
        "unmatched",
        "unmatched (container to container)",
        "unmatched",
        "IPv6, passed (not the host's, not the subnet's)",
        "IPv6, container to container",
    ];
    for ((prog, ns), what) in repeated.iter().zip(what) {
        println!("{prog:<12} {what:<44} {ns:>6}");
    }
    // Programs built with their timing marks (`cargo xtask cost
    // --profile`): where a tracked packet's time goes, and a new flow's.
    if h.ebpf.map(PROF_MAP).is_some() {
        // Tracked packets are the same every run; new flows' come from
        // ports no row above used.
        let rows: [(&str, &str, Frames); 7] = [
            (
                UP_OUT,
                "IPv4, egress",
                Box::new(move |_| data((WEB, 80), (LAN, 40000))),
            ),
            (
                UP_IN,
                "IPv4, into the container",
                Box::new(move |_| data((LAN, 40000), (HOST, 8080))),
            ),
            (
                UP_OUT,
                "IPv6, egress",
                Box::new(move |_| data6(web6, 40000, lan6, 80)),
            ),
            (
                UP_IN,
                "IPv6, into the container",
                Box::new(move |_| data6(lan6, 80, uplink6, port6)),
            ),
            (
                UP_IN,
                "IPv4, new flow (DNAT SYN)",
                Box::new(|i| Spec::tcp((REMOTE, 20000 + i), (HOST, 8080), SYN).build()),
            ),
            (
                UP_OUT,
                "IPv4, new masquerade flow",
                Box::new(|i| Spec::udp((CLIENT, 22000 + i), (REMOTE, 53)).build()),
            ),
            (
                UP_OUT,
                "IPv6, new masquerade flow",
                Box::new(move |i| ipv6_checked(web6, lan6, UDP, &udp_datagram(24000 + i, 53))),
            ),
        ];
        println!("\nwhere a packet's time goes (median ns of {COST_RUNS} runs, each segment less one mark's own cost)");
        print!("{:<12} {:<26}", "PROGRAM", "PACKET");
        for (_, name) in SEGMENTS {
            print!(" {name:>8}");
        }
        println!(" {:>8}", "mark");
        for (prog, what, frames) in rows {
            let (segments, mark) = profile_ns(&mut h, prog, frames);
            print!("{prog:<12} {what:<26}");
            for ns in segments {
                print!(" {ns:>8}");
            }
            println!(" {mark:>8}");
        }
    }
    // The runs did what their names say.
    assert!(h.counter(Reason::Translated) >= 2 * 2000);
    assert!(h.counter(Reason::DnatNew) >= 2000);
    assert!(h.counter(Reason::SnatNew) >= 2000);
}

/// Offset of `tstamp` in `struct __sk_buff`, and the struct's size
/// (include/uapi/linux/bpf.h): BPF_PROG_TEST_RUN returns the departure time
/// a pacing program set through the context.
const SKB_TSTAMP: usize = 152;
const SKB_CTX_LEN: usize = 192;

/// A UDP frame of `ip_len` IP bytes from `src`.
fn udp_of_len(src: Ipv4Addr, ip_len: usize) -> Vec<u8> {
    let mut spec = Spec::udp((src, 4000), (LAN, 5201));
    spec.payload = vec![7; ip_len - 28];
    spec.build()
}

/// Runs a pacing program; returns its verdict and the departure time it
/// stamped (0: none).
fn run_paced(h: &mut Harness, prog: &str, frame: &[u8]) -> (u32, u64) {
    let p = h.classifier(prog);
    if p.fd().is_err() {
        p.load().expect("verifier accepts the pacing program");
    }
    let ctx_in = [0u8; SKB_CTX_LEN];
    let mut ctx_out = [0u8; SKB_CTX_LEN];
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    let stamp = u64::from_ne_bytes(ctx_out[SKB_TSTAMP..SKB_TSTAMP + 8].try_into().unwrap());
    (r.return_value, stamp)
}

fn pace_key(addr: Ipv4Addr, dir: u8) -> PaceKey {
    PaceKey {
        addr: to_be32(addr),
        dir,
        _pad: [0; 3],
    }
}

#[test]
fn pacing_spaces_departures_by_the_rate_and_drops_past_the_horizon() {
    let mut h = Harness::new((61000, 65535));
    // 8 Mbit/s: 1000 IP bytes take 1 ms; the horizon is 10 ms.
    let pace = Pace::new(8_000_000, 0, PACE_STAMP);
    h.dp.pacing
        .insert(pace_key(WEB, PACE_EGRESS), pace, 0)
        .expect("pacing entry");
    let frame = udp_of_len(WEB, 1000);
    let (verdict, first) = run_paced(&mut h, "nb_pace_out", &frame);
    assert_eq!(verdict, PASS);
    assert!(first > 0, "the first packet is stamped with now");
    let mut last = first;
    let (mut passed, mut shot) = (1u64, 0u64);
    for _ in 0..30 {
        match run_paced(&mut h, "nb_pace_out", &frame) {
            (PASS, t) => {
                // Each departure is at least one packet's time after the
                // last: 1 ms at this rate.
                assert!(t >= last + 1_000_000, "{t} after {last}");
                last = t;
                passed += 1;
            }
            (SHOT, _) => shot += 1,
            other => panic!("verdict {other:?}"),
        }
    }
    // About 11 packets fit the 10 ms horizon (less if this thread was
    // descheduled between runs, as the clock moves on).
    assert!(
        (10..=30).contains(&passed) && shot > 0,
        "{passed} passed, {shot} dropped"
    );
    let after =
        h.dp.pacing
            .get(&pace_key(WEB, PACE_EGRESS), 0)
            .expect("entry");
    assert_eq!(after.dropped, shot);
    assert_eq!(h.counter(Reason::DropPaceHorizon), shot);
    // The other direction and other addresses are not limited.
    assert_eq!(run_paced(&mut h, "nb_pace_in", &frame), (PASS, 0));
    assert_eq!(
        run_paced(&mut h, "nb_pace_out", &udp_of_len(CLIENT, 1000)),
        (PASS, 0)
    );
}

#[test]
fn pacing_lets_a_burst_leave_at_once_and_polices_without_fq() {
    let mut h = Harness::new((61000, 65535));
    // Ingress is keyed by destination: packets to WEB.
    let mut spec = Spec::udp((LAN, 5201), (WEB, 4000));
    spec.payload = vec![7; 1000 - 28];
    let to_web = spec.build();
    // A burst of 3000 bytes: the first four packets leave at once.
    let pace = Pace::new(8_000_000, 3000, PACE_STAMP);
    h.dp.pacing
        .insert(pace_key(WEB, PACE_INGRESS), pace, 0)
        .expect("pacing entry");
    let stamps: Vec<u64> = (0..6)
        .map(|_| run_paced(&mut h, "nb_pace_in", &to_web))
        .map(|(v, t)| {
            assert_eq!(v, PASS);
            t
        })
        .collect();
    // Within the burst each leaves "now" (its own run's time); the fifth
    // waits one packet time past the burst's end.
    assert!(stamps[4] >= stamps[0] + 1_000_000, "{stamps:?}");
    assert!(stamps[1] < stamps[0] + 1_000_000, "{stamps:?}");
    // Policing (no fq): nothing is stamped, the bucket still drops.
    let police = Pace::new(8_000_000, 0, 0);
    h.dp.pacing
        .insert(pace_key(WEB, PACE_INGRESS), police, 0)
        .expect("pacing entry");
    // The bucket's depth in 1000-byte packets.
    let bucket = (police.horizon_ns / 1_000_000) as usize;
    let verdicts: Vec<(u32, u64)> = (0..bucket + 20)
        .map(|_| run_paced(&mut h, "nb_pace_in", &to_web))
        .collect();
    assert!(
        verdicts.iter().all(|(_, t)| *t == 0),
        "policing stamps nothing"
    );
    let passed = verdicts.iter().filter(|(v, _)| *v == PASS).count();
    assert!(
        passed >= bucket && passed < bucket + 20,
        "{passed} of {}",
        verdicts.len()
    );
}
