//! Source-port choice for masquerade, as pure arithmetic.

/// How many candidate ports a new flow tries before it is dropped with
/// `DropSnatExhausted`. Bounded because the verifier needs a bounded loop and
/// because a nearly full range should fail fast rather than spin per packet.
pub const SNAT_ATTEMPTS: u32 = 32;

/// Buckets of the SNAT attempt histogram: bucket 0 counts flows that kept
/// their own port, bucket k (1..=SNAT_ATTEMPTS) flows that got the k-th
/// candidate from the range, and the last bucket flows that found none.
pub const SNAT_HISTOGRAM_LEN: u32 = SNAT_ATTEMPTS + 2;
pub const SNAT_HISTOGRAM_EXHAUSTED: u32 = SNAT_ATTEMPTS + 1;

/// The `attempt`-th candidate in `[min, max]` for a flow whose random seed is
/// `seed`: a linear probe from a random start, so concurrent flows spread out
/// and successive attempts never repeat a port within one pass.
pub const fn snat_candidate(seed: u32, attempt: u32, min: u16, max: u16) -> u16 {
    let span = (max as u64).saturating_sub(min as u64) + 1;
    let offset = (seed as u64 % span + attempt as u64) % span;
    (min as u64 + offset) as u16
}

/// Whether a container's own source port may be kept: outside the host's
/// ephemeral range (a host socket may hold any port there) and not 0.
pub const fn may_keep_port(port: u16, host_min: u16, host_max: u16) -> bool {
    port != 0 && (port < host_min || port > host_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_stay_in_range_and_do_not_repeat() {
        let mut seen = std::vec::Vec::new();
        for a in 0..10 {
            let p = snat_candidate(0xdead_beef, a, 20000, 20009);
            assert!((20000..=20009).contains(&p));
            assert!(!seen.contains(&p));
            seen.push(p);
        }
        assert_eq!(snat_candidate(7, 0, 5, 5), 5);
        assert_eq!(
            snat_candidate(u32::MAX, 3, 0, 65535),
            snat_candidate(u32::MAX, 3, 0, 65535)
        );
    }

    #[test]
    fn full_range_does_not_overflow() {
        let p = snat_candidate(u32::MAX, u32::MAX - 1, 0, 65535);
        let _ = p;
        assert_eq!(snat_candidate(0, 65535, 0, 65535), 65535);
        assert_eq!(snat_candidate(0, 65536, 0, 65535), 0);
    }

    #[test]
    fn kept_ports_avoid_the_host_range() {
        assert!(may_keep_port(53, 32768, 60999));
        assert!(!may_keep_port(40000, 32768, 60999));
        assert!(!may_keep_port(0, 32768, 60999));
        assert!(may_keep_port(61000, 32768, 60999));
    }
}
