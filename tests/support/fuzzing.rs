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

/// Loads the three TC programs of `ebpf`.
pub fn load_tc_programs(ebpf: &mut aya::Ebpf) {
    use aya::programs::SchedClassifier;
    for hook in [
        super::model::Hook::UplinkIngress,
        super::model::Hook::UplinkEgress,
        super::model::Hook::BridgeIngress,
    ] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(program_of(hook))
            .expect("program")
            .try_into()
            .expect("classifier");
        p.load().expect("load program");
    }
}

/// Runs `frame` through `hook`'s program: its verdict and output, or
/// `None` when BPF_PROG_TEST_RUN refuses it, which it does only to a frame
/// shorter than `shortest` (an IP ethertype wants a whole IP header behind
/// it: 20 bytes for IPv4, 40 for IPv6).
pub fn run_tc(
    ebpf: &mut aya::Ebpf,
    hook: super::model::Hook,
    frame: &[u8],
    shortest: usize,
) -> Option<(u32, Vec<u8>)> {
    use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
    let p: &mut SchedClassifier = ebpf
        .program_mut(program_of(hook))
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
