//! What the fuzzers share: their generator and how a run is sized.

/// A xorshift generator: the same seed gives the same packets.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A run's packet count and seed: `NETBR_FUZZ_PACKETS` (else `packets`)
/// and `NETBR_FUZZ_SEED`.
pub fn fuzz_seed(packets: u64) -> (u64, u64) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    (
        env("NETBR_FUZZ_PACKETS").unwrap_or(packets),
        env("NETBR_FUZZ_SEED").unwrap_or(0x005e_ed0f_ba5e),
    )
}

/// The kernel's taint flags, which a run must leave as they were.
pub fn kernel_taint() -> String {
    std::fs::read_to_string("/proc/sys/kernel/tainted").expect("tainted")
}

/// The TC programs a fuzzer runs, by hook.
pub fn program_of(hook: super::model::Hook) -> &'static str {
    match hook {
        super::model::Hook::UplinkIngress => "nb_up_in",
        super::model::Hook::UplinkEgress => "nb_up_out",
        super::model::Hook::BridgeIngress => "nb_br_in",
    }
}

/// Loads the three TC programs of `ebpf`, and the endpoint program.
pub fn load_tc_programs(ebpf: &mut aya::Ebpf) {
    use aya::programs::SchedClassifier;
    for name in [
        program_of(super::model::Hook::UplinkIngress),
        program_of(super::model::Hook::UplinkEgress),
        program_of(super::model::Hook::BridgeIngress),
        netbr_common::maps::PROG_ENDPOINT_INGRESS,
    ] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("classifier");
        p.load().expect("load program");
    }
}

/// Runs `frame` through `hook`'s program: its verdict and output, or
/// `None` when BPF_PROG_TEST_RUN refuses it, which it does only to a frame
/// shorter than `shortest` (an IP ethertype wants a whole IP header behind
/// it: 20 bytes for IPv4, 40 for IPv6). A frame for the bridge meets
/// `nb_ep_in` first, as on a container's veth (`endpoint_first`): the
/// model says what the pair must do, which is what `nb_br_in` alone does.
pub fn run_tc(
    ebpf: &mut aya::Ebpf,
    hook: super::model::Hook,
    frame: &[u8],
    shortest: usize,
) -> Option<(u32, Vec<u8>)> {
    if hook == super::model::Hook::BridgeIngress {
        if let Some(sent_on) = endpoint_first(ebpf, frame, shortest) {
            return Some(sent_on);
        }
    }
    test_run(ebpf, program_of(hook), frame, shortest)
}

/// `nb_ep_in` on a container's frame, addressed to the bridge as a
/// container addresses its gateway: the verdict and output if the program
/// sent the frame on, `None` if it passed it to the bridge, which it must
/// do untouched.
fn endpoint_first(ebpf: &mut aya::Ebpf, frame: &[u8], shortest: usize) -> Option<(u32, Vec<u8>)> {
    use super::config::BRIDGE_MAC;
    if frame.len() < 6 {
        return None;
    }
    let mut addressed = frame.to_vec();
    addressed[..6].copy_from_slice(&BRIDGE_MAC);
    let (verdict, mut out) = test_run(
        ebpf,
        netbr_common::maps::PROG_ENDPOINT_INGRESS,
        &addressed,
        shortest,
    )?;
    if verdict == PASS {
        assert!(
            out == addressed,
            "nb_ep_in changed a frame it passed on to the bridge: {}",
            hex(frame)
        );
        return None;
    }
    // A redirect to an unresolved neighbour leaves the destination MAC to
    // the kernel: the one written here for the program goes again.
    if out.len() >= 6 && out[..6] == BRIDGE_MAC {
        out[..6].copy_from_slice(&frame[..6]);
    }
    Some((verdict, out))
}

/// One BPF_PROG_TEST_RUN of the TC program `name` (`run_tc`).
fn test_run(
    ebpf: &mut aya::Ebpf,
    name: &str,
    frame: &[u8],
    shortest: usize,
) -> Option<(u32, Vec<u8>)> {
    use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
    let p: &mut SchedClassifier = ebpf
        .program_mut(name)
        .expect("program")
        .try_into()
        .expect("classifier");
    let mut out = vec![0u8; frame.len() + 64];
    match p.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    }) {
        Ok(r) => {
            out.truncate(r.data_size_out as usize);
            Some((r.return_value, out))
        }
        Err(_) if frame.len() < shortest => None,
        Err(e) => panic!(
            "BPF_PROG_TEST_RUN refused {} bytes {}: {e:?}",
            frame.len(),
            hex(frame)
        ),
    }
}

/// A frame as hex, for a mismatch's report.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `TC_ACT_UNSPEC` and `TC_ACT_SHOT`, as BPF_PROG_TEST_RUN reports them.
pub const PASS: u32 = -1i32 as u32;
pub const SHOT: u32 = 2;

/// The verdict and bytes of a packet the model says passes untouched.
pub fn untouched(verdict: u32, b: &[u8], out: &[u8]) -> Result<(), String> {
    if verdict != PASS || out != b {
        return Err(format!(
            "expected untouched pass, got verdict {verdict:#x}, changed: {}",
            out != b
        ));
    }
    Ok(())
}

/// The verdict of a packet the model says is dropped.
pub fn dropped(verdict: u32) -> Result<(), String> {
    if verdict != SHOT {
        return Err(format!("expected drop, got verdict {verdict:#x}"));
    }
    Ok(())
}

/// What a run saw: how many packets ended each way, and the first
/// mismatches with the model.
#[derive(Default)]
pub struct Record {
    pub seen: std::collections::BTreeMap<&'static str, u64>,
    mismatches: Vec<String>,
}

impl Record {
    pub fn count(&mut self, outcome: &'static str) {
        *self.seen.entry(outcome).or_default() += 1;
    }

    pub fn has_mismatches(&self) -> bool {
        !self.mismatches.is_empty()
    }

    /// A mismatch: the first ten are kept whole.
    pub fn mismatch(&mut self, what: String, b: &[u8], out: &[u8]) {
        let kept = if self.mismatches.len() < 10 {
            format!("{what}\n  in  {}\n  out {}", hex(b), hex(out))
        } else {
            String::new()
        };
        self.mismatches.push(kept);
    }

    /// Fails unless the run agreed with the model throughout, left the
    /// kernel's taint as it was, and saw every outcome of `expected`.
    pub fn assert_passed(&self, what: &str, tainted: &str, expected: &[&str]) {
        println!("{what}, outcomes: {:?}", self.seen);
        assert_eq!(kernel_taint(), tainted, "kernel taint changed");
        assert!(
            self.mismatches.is_empty(),
            "{} mismatches, first ones:\n{}",
            self.mismatches.len(),
            self.mismatches.join("\n")
        );
        for r in expected {
            assert!(
                self.seen.get(r).copied().unwrap_or(0) > 0,
                "no packet ended as {r}: {:?}",
                self.seen
            );
        }
    }
}

/// The last 256 frames a run saw translated, which errors may quote.
#[derive(Default)]
pub struct Recent(pub Vec<(super::model::Hook, Vec<u8>)>);

impl Recent {
    /// Keeps packet `n`'s output if `hook`'s program passed it changed.
    pub fn keep(&mut self, n: u64, hook: super::model::Hook, verdict: u32, b: &[u8], out: Vec<u8>) {
        if verdict != PASS || out == b {
            return;
        }
        if self.0.len() < 256 {
            self.0.push((hook, out));
        } else {
            self.0[(n % 256) as usize] = (hook, out);
        }
    }
}

/// `result`, unless the reason's counter failed to move by one.
pub fn counted(
    result: Result<(), String>,
    reason: netbr_common::counters::Reason,
    before: u64,
    after: u64,
) -> Result<(), String> {
    result.and_then(|()| {
        if after == before + 1 {
            Ok(())
        } else {
            Err(format!("counter {} did not move", reason.name()))
        }
    })
}

/// `TC_ACT_REDIRECT`: the fast path's verdict.
pub const REDIRECT: u32 = 7;
/// The fast-path runs' uplink `up0` and its one resolved neighbour, lan.
pub const UPLINK_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
/// The endpoints' MACs.
pub const WEB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
pub const C2_MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];

/// The fast-path runs' namespace, for both families: an uplink `up0`
/// (192.0.2.1/24 and 2001:db8:1::1/64, MAC `UPLINK_MAC`) whose only
/// resolved neighbour is lan (192.0.2.2, 2001:db8:1::2), also the default
/// gateway of each family; a bridge `br0` (172.30.0.1/16, fd00:30::1/64);
/// and the endpoints' host-side veths `web0` and `c20`.
const FAST_SETUP: &[&str] = &[
    "ip link add up0 address 02:00:00:00:01:01 type veth peer name up0p",
    // No dummy interfaces on this kernel: a veth pair stands in for a NIC.
    "ip link set up0p up",
    "ip addr add 192.0.2.1/24 dev up0",
    "ip link set up0 up",
    "ip -6 addr add 2001:db8:1::1/64 dev up0 nodad",
    "ip link add br0 type bridge",
    "ip addr add 172.30.0.1/16 dev br0",
    "ip link set br0 up",
    "ip -6 addr add fd00:30::1/64 dev br0 nodad",
    "ip neigh replace 192.0.2.2 lladdr 02:00:00:00:02:02 dev up0 nud permanent",
    "ip -6 neigh replace 2001:db8:1::2 lladdr 02:00:00:00:02:02 dev up0 nud permanent",
    "ip route add default via 192.0.2.2",
    "ip -6 route add default via 2001:db8:1::2",
    // The endpoints' host-side veths, for the fast path into containers.
    "ip link add web0 type veth peer name web0c",
    "ip link add c20 type veth peer name c20c",
    "sysctl -qw net.ipv4.conf.all.forwarding=1",
    "sysctl -qw net.ipv6.conf.all.forwarding=1",
];

/// Runs `run` in a namespace of its own set up as `FAST_SETUP` says, and
/// removes the namespace after, also when `run` panics.
pub fn in_fast_namespace(run: impl FnOnce() + Send + 'static) {
    struct Namespace(String);
    impl Drop for Namespace {
        fn drop(&mut self) {
            let _ = netbr::netns::delete_named(&self.0);
        }
    }
    let ns = Namespace(format!("nbfz-{}", netbr::sandbox::unique_suffix()));
    let path = netbr::netns::create_named(&ns.0).expect("namespace");
    for line in FAST_SETUP {
        let cmd: Vec<&str> = line.split_whitespace().collect();
        let o = netbr::sandbox::in_netns(&path, cmd[0], &cmd[1..]).expect("setup command");
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    netbr::netns::run_in(&path, run).expect("the fast-path run passed");
}

/// The index of interface `name` in this thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: a NUL-terminated name; asks this thread's namespace.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {name}");
    i
}

/// Where this thread's namespace routes `dst` out of `up0`, from `ip route
/// get` (the kernel's own answer, which `bpf_fib_lookup` gives the
/// programs too): `None` when not out of `up0` (or not forwarded at all),
/// `Some(Some((UPLINK_MAC, LAN_MAC)))` through lan, the one resolved
/// neighbour, `Some(None)` through a neighbour not resolved yet.
pub fn ask_route(dst: std::net::IpAddr) -> super::model::UplinkRoute {
    // What the stack never forwards, though `ip route get` (an output
    // lookup) may find a route for it: `redirect::forwardable{,6}`.
    let forwardable = match dst {
        std::net::IpAddr::V4(a) => {
            let first = a.octets()[0];
            !(224..=239).contains(&first) && !a.is_broadcast() && first != 0 && first != 127
        }
        std::net::IpAddr::V6(a) => {
            let first = a.segments()[0];
            first >> 8 != 0xff
                && first & 0xffc0 != 0xfe80
                && !a.is_unspecified()
                && !a.is_loopback()
        }
    };
    if !forwardable {
        return None;
    }
    let family = if dst.is_ipv6() { "-6" } else { "-4" };
    let out = std::process::Command::new("timeout")
        .args(["5", "ip", family, "-j", "route", "get", &dst.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let route = &doc[0];
    if route.get("type").is_some_and(|t| t != "unicast") || route["dev"] != "up0" {
        return None;
    }
    let hop = route["gateway"].as_str().or(route["dst"].as_str())?;
    let lan = ["192.0.2.2", "2001:db8:1::2"];
    Some(lan.contains(&hop).then_some((UPLINK_MAC, LAN_MAC)))
}

/// Checks a redirect of `b` into `out`: the verdict, the addressing
/// (`macs`, source and destination; `None`: left for the kernel to
/// address) and, for a packet routed on the fast path, the TTL or hop limit
/// at `hops_at`, one less (a hairpin bridged to its endpoint keeps it).
/// Returns `b` as the redirect changed it apart from its translation (the
/// MACs and that byte), for the caller to check the translation on.
pub fn redirected(
    verdict: u32,
    b: &[u8],
    out: &[u8],
    macs: &Option<([u8; 6], [u8; 6])>,
    hops_at: Option<usize>,
) -> Result<Vec<u8>, String> {
    if verdict != REDIRECT || out.len() != b.len() {
        return Err(format!("expected a redirect, got verdict {verdict:#x}"));
    }
    let addressed = match macs {
        Some((src, dst)) => out[0..6] == *dst && out[6..12] == *src,
        None => out[..12] == b[..12],
    };
    if !addressed {
        return Err("redirected frame not addressed to the next hop".into());
    }
    let mut routed = b.to_vec();
    routed[..12].copy_from_slice(&out[..12]);
    if let Some(at) = hops_at {
        if out[at] != b[at].wrapping_sub(1) {
            return Err(format!(
                "TTL or hop limit {} -> {}, not one less",
                b[at], out[at]
            ));
        }
        routed[at] = out[at];
    }
    Ok(routed)
}
