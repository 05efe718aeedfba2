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
