//! Per-endpoint bandwidth limits: earliest-departure-time pacing.
//!
//! A limited endpoint's packets are not queued by netbr: each gets a
//! departure time (`skb->tstamp`, monotonic clock) from a virtual clock that
//! advances by the packet's transmission time at the limit, and the `fq`
//! qdisc on the device the packet leaves by holds it until then (Cilium's
//! Bandwidth Manager, after Google's "Carousel", SIGCOMM 2017). A packet
//! that would have to wait more than the drop horizon is dropped instead, so
//! the backlog, and the latency it adds, stays bounded.
//!
//! Rates are counted in IP bytes (headers included, the Ethernet header
//! not), the way `tc` rates count a device's packets minus link framing.

/// Map of limits, keyed by [`PaceKey`].
pub const MAP_PACING: &str = "NB_PACE";
/// One entry per limited endpoint and direction.
pub const PACING_MAX_ENTRIES: u32 = 2 * crate::maps::ENDPOINTS_MAX_ENTRIES;

/// `PaceKey::dir`: traffic the container sends (paced on its `eth0`).
pub const PACE_EGRESS: u8 = 0;
/// `PaceKey::dir`: traffic to the container (paced on its host-side veth).
pub const PACE_INGRESS: u8 = 1;

/// Backlog beyond which packets are dropped: the most a limit adds to a
/// packet's latency. A packet is admitted while the backlog ahead of it is
/// below the horizon, however long it is itself, so a 64 KiB GSO packet
/// passes even at rates where it takes longer than the horizon to send.
pub const PACE_HORIZON_NS: u64 = 10_000_000;

/// Depth of the token bucket when policing, at least: room for a few 64 KiB
/// GSO packets, which TCP sends through veths unsegmented...
pub const POLICE_BUCKET_BYTES: u64 = 256 * 1024;
/// ... and at least a quarter of a second at the rate. TCP at a
/// microsecond RTT grows its window far past any queue; with a shallow
/// bucket it loses the whole tail of a burst and waits on its
/// retransmission timer (measured: 10-50% of the limit with 10-100 ms
/// buckets), with this one it gets 93-99% (`netbr bench --limits`). The
/// price: a sender idle that long may send that much at once.
pub const POLICE_BUCKET_NS: u64 = 250_000_000;

/// Slowest limit accepted: 8 kbit/s (1000 bytes per second).
pub const RATE_MIN_BPS: u64 = 8_000;
/// Fastest limit accepted, 1000 Tbit/s: far beyond any link, and small
/// enough that a packet's time at the rate never overflows.
pub const RATE_MAX_BPS: u64 = 1_000_000_000_000_000;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Key of the pacing map. `addr` is the container's IPv4 address (network
/// byte order): its packets' source on egress, their destination on ingress.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PaceKey {
    pub addr: u32,
    /// `PACE_EGRESS` or `PACE_INGRESS`.
    pub dir: u8,
    pub _pad: [u8; 3],
}

/// Value of the pacing map: the limit (set by the control plane) and the
/// virtual clock (kept by the datapath). Host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pace {
    /// The limit in bytes per second.
    pub rate_bytes: u64,
    /// How far the clock may lag behind now: `burst` bytes at the rate.
    pub burst_ns: u64,
    /// Backlog past which packets are dropped (see `PACE_HORIZON_NS`).
    pub horizon_ns: u64,
    /// When the bytes scheduled so far will have left (monotonic ns).
    /// Updated without atomics: two CPUs racing on one endpoint may each
    /// schedule against the same value, letting one packet through early.
    pub clock_ns: u64,
    /// Packets dropped at the horizon.
    pub dropped: u64,
    /// `PACE_STAMP` when the device has `fq` to hold packets until their
    /// departure time; 0 polices instead: a packet within the horizon
    /// leaves at once, so the horizon is the depth of a token bucket.
    pub mode: u32,
    pub _pad: u32,
}

/// `Pace::mode`: stamp departure times for `fq`.
pub const PACE_STAMP: u32 = 1;

impl Pace {
    pub fn new(rate_bits: u64, burst_bytes: u64, mode: u32) -> Self {
        let rate_bytes = (rate_bits / 8).max(1);
        Self {
            rate_bytes,
            burst_ns: burst_bytes.saturating_mul(NS_PER_SEC) / rate_bytes,
            horizon_ns: if mode == PACE_STAMP {
                PACE_HORIZON_NS
            } else {
                (POLICE_BUCKET_BYTES * NS_PER_SEC / rate_bytes).max(POLICE_BUCKET_NS)
            },
            clock_ns: 0,
            dropped: 0,
            mode,
            _pad: 0,
        }
    }

    pub fn rate_bits(&self) -> u64 {
        self.rate_bytes * 8
    }

    pub fn burst_bytes(&self) -> u64 {
        self.burst_ns.saturating_mul(self.rate_bytes) / NS_PER_SEC
    }
}

/// When a packet of `bytes` may leave under `pace`, at `now`: `Some(time)`
/// (at most `now`, meaning at once, after a pause), having advanced the
/// clock past it; `None` if the backlog is already past the horizon (the
/// caller drops the packet and the clock stays).
#[inline(always)]
pub fn schedule(pace: &mut Pace, now: u64, bytes: u64) -> Option<u64> {
    let earliest = now.saturating_sub(pace.burst_ns);
    let start = if pace.clock_ns > earliest {
        pace.clock_ns
    } else {
        earliest
    };
    if start > now && start - now > pace.horizon_ns {
        return None;
    }
    // A rate of 0 is never written; `checked_div` keeps the division free
    // of a panic path, which the verifier would refuse.
    let spent = (bytes * NS_PER_SEC)
        .checked_div(pace.rate_bytes)
        .unwrap_or(0);
    pace.clock_ns = start + spent;
    Some(if start > now { start } else { now })
}

/// Bytes a packet counts for: its IP length, with the headers of every
/// segment a GSO packet will be cut into (`segs`, each with `hdr_len` bytes
/// of IP and transport headers) rather than the one it carries now.
#[inline(always)]
pub const fn charged_bytes(ip_len: u64, segs: u64, hdr_len: u64) -> u64 {
    if segs > 1 {
        ip_len + (segs - 1) * hdr_len
    } else {
        ip_len
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `repr(C)`, explicitly padded, and valid for every bit pattern.
    unsafe impl aya::Pod for super::PaceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Pace {}
}

/// Why a rate was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateError {
    /// Not a number followed by one of tc's units.
    Malformed,
    /// Below `RATE_MIN_BPS`, or too large to count.
    OutOfRange,
}

/// Parses a rate as `tc` writes them: a number (decimals allowed) and a
/// unit, `bit` (or none), `kbit`, `mbit`, `gbit`, `tbit`, their binary
/// `kibit`... forms, or bytes per second as `bps`, `kbps`, `mbps`, `gbps`.
/// Returns bits per second.
pub fn parse_rate(text: &str) -> Result<u64, RateError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let mut lower = [0u8; 8];
    let unit = unit.as_bytes();
    if unit.len() > lower.len() {
        return Err(RateError::Malformed);
    }
    for (l, u) in lower.iter_mut().zip(unit) {
        *l = u.to_ascii_lowercase();
    }
    let scale: u64 = match &lower[..unit.len()] {
        b"" | b"bit" => 1,
        b"kbit" => 1_000,
        b"mbit" => 1_000_000,
        b"gbit" => 1_000_000_000,
        b"tbit" => 1_000_000_000_000,
        b"kibit" => 1 << 10,
        b"mibit" => 1 << 20,
        b"gibit" => 1 << 30,
        b"tibit" => 1 << 40,
        b"bps" => 8,
        b"kbps" => 8_000,
        b"mbps" => 8_000_000,
        b"gbps" => 8_000_000_000,
        _ => return Err(RateError::Malformed),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
        return Err(RateError::Malformed);
    }
    let digits = |s: &str| -> Result<u64, RateError> {
        if s.is_empty() {
            return Ok(0);
        }
        s.parse::<u64>().map_err(|_| RateError::OutOfRange)
    };
    let mut bits = digits(whole)?
        .checked_mul(scale)
        .ok_or(RateError::OutOfRange)?;
    if !frac.is_empty() {
        let denom = 10u64.pow(frac.len() as u32);
        let part = (digits(frac)? as u128 * scale as u128 / denom as u128) as u64;
        bits = bits.checked_add(part).ok_or(RateError::OutOfRange)?;
    }
    if !(RATE_MIN_BPS..=RATE_MAX_BPS).contains(&bits) {
        return Err(RateError::OutOfRange);
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 1_000_000;

    #[test]
    fn packets_are_spaced_by_their_time_at_the_rate() {
        // 8 Mbit/s = 1 MB/s: 1000 bytes take 1 ms.
        let mut p = Pace::new(8 * MBIT, 0, PACE_STAMP);
        let now = 5 * NS_PER_SEC;
        assert_eq!(schedule(&mut p, now, 1000), Some(now));
        assert_eq!(schedule(&mut p, now, 1000), Some(now + 1_000_000));
        assert_eq!(schedule(&mut p, now, 1000), Some(now + 2_000_000));
        assert_eq!(p.clock_ns, now + 3_000_000);
    }

    #[test]
    fn an_idle_clock_does_not_bank_credit_beyond_the_burst() {
        let mut p = Pace::new(8 * MBIT, 0, PACE_STAMP);
        assert_eq!(schedule(&mut p, 1_000_000, 1000), Some(1_000_000));
        // A second of silence, then two packets: the second waits.
        let later = 2 * NS_PER_SEC;
        assert_eq!(schedule(&mut p, later, 1000), Some(later));
        assert_eq!(schedule(&mut p, later, 1000), Some(later + 1_000_000));
    }

    #[test]
    fn a_burst_lets_that_many_bytes_leave_at_once() {
        let mut p = Pace::new(8 * MBIT, 3000, PACE_STAMP);
        assert_eq!(p.burst_ns, 3_000_000);
        assert_eq!(p.burst_bytes(), 3000);
        let now = 10 * NS_PER_SEC;
        for _ in 0..3 {
            assert_eq!(schedule(&mut p, now, 1000), Some(now));
        }
        assert_eq!(schedule(&mut p, now, 1000), Some(now));
        assert_eq!(schedule(&mut p, now, 1000), Some(now + 1_000_000));
    }

    #[test]
    fn the_horizon_bounds_the_backlog_but_admits_a_large_packet() {
        let mut p = Pace::new(8 * MBIT, 0, PACE_STAMP);
        let now = NS_PER_SEC;
        // 64 KiB at 1 MB/s is 65 ms, past the horizon: admitted at once.
        assert_eq!(schedule(&mut p, now, 65_536), Some(now));
        let clock = p.clock_ns;
        assert_eq!(schedule(&mut p, now, 100), None);
        assert_eq!(p.clock_ns, clock, "a dropped packet takes no time");
        // Once the backlog is back under the horizon, packets queue again.
        let then = clock - p.horizon_ns;
        assert_eq!(schedule(&mut p, then, 100), Some(clock));
    }

    #[test]
    fn the_rate_holds_over_a_long_run() {
        let mut p = Pace::new(100 * MBIT, 0, PACE_STAMP);
        let (mut now, mut sent, mut last) = (NS_PER_SEC, 0u64, 0u64);
        // Offered at twice the limit for one second.
        while now < 2 * NS_PER_SEC {
            if let Some(t) = schedule(&mut p, now, 1500) {
                sent += 1500;
                last = t;
            }
            now += 60_000;
        }
        let rate = sent * 8 * NS_PER_SEC / (last - NS_PER_SEC);
        assert!(rate.abs_diff(100 * MBIT) < MBIT, "{rate}");
    }

    #[test]
    fn rates_parse_as_tc_writes_them() {
        assert_eq!(parse_rate("20mbit"), Ok(20 * MBIT));
        assert_eq!(parse_rate("1.5Mbit"), Ok(1_500_000));
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("64kbit"), Ok(64_000));
        assert_eq!(parse_rate("10000"), Ok(10_000));
        assert_eq!(parse_rate("1mibit"), Ok(1 << 20));
        assert_eq!(parse_rate("1mbps"), Ok(8 * MBIT));
        for bad in ["", "mbit", "10 furlongs", "1.2.3mbit", "-5mbit", "10mbit/s"] {
            assert_eq!(parse_rate(bad), Err(RateError::Malformed), "{bad:?}");
        }
        for small in ["0", "7999", "1bit"] {
            assert_eq!(parse_rate(small), Err(RateError::OutOfRange), "{small:?}");
        }
        assert_eq!(parse_rate("99999999999999tbit"), Err(RateError::OutOfRange));
    }

    #[test]
    fn gso_packets_count_every_segment_header() {
        assert_eq!(charged_bytes(1500, 1, 52), 1500);
        assert_eq!(charged_bytes(20 + 32 + 4 * 1448, 4, 52), 52 * 4 + 4 * 1448);
    }
}
