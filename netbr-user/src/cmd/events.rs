//! `netbr events`: the datapath's log. The programs write rate-limited
//! events (at most one per kind and second) into a pinned ring buffer; this
//! command drains it. Reading consumes, so run one reader at a time.

use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, Result};
use clap::Args;
use netbr_common::{counters::Reason, maps::Event};
use serde_json::json;
use tokio::io::{unix::AsyncFd, Interest};

use crate::{addr::monotonic_ns, store::View};

#[derive(Args, Debug)]
pub struct Events {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Keep waiting for new events (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

impl Events {
    pub async fn exec(self) -> Result<()> {
        let mut dp = View::open(&self.bridge)?.dp;
        let ring = dp.events.as_raw_fd();
        // SAFETY: the descriptor belongs to `dp.events`, which outlives
        // `ready` and is neither closed nor replaced meanwhile.
        let ready = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .context("waiting on the event ring buffer")?;
        loop {
            for event in dp.drain_events() {
                self.print(&event);
            }
            if !self.follow {
                return Ok(());
            }
            ready.readable().await?.clear_ready();
        }
    }

    fn print(&self, event: &Event) {
        let when = wall_clock(event.ts_ns);
        let reason = Reason::ALL
            .get(event.reason as usize)
            .map_or("unknown", |r| r.name());
        let message = describe(event);
        if self.json {
            println!(
                "{}",
                json!({ "time": when, "reason": reason, "detail": event.detail, "message": message })
            );
        } else {
            println!("{when} {reason}: {message}");
        }
    }
}

/// What an event means and what to do about it.
pub fn describe(event: &Event) -> String {
    match Reason::ALL.get(event.reason as usize) {
        Some(Reason::DropCtFull) => format!(
            "conntrack table full ({} live flows after collecting expired ones): flows that \
             become established are dropped until others end; detach and attach with a larger \
             --ct-max, or lower the timeouts",
            event.detail
        ),
        Some(Reason::DropSnatExhausted) => "every SNAT port towards one destination is in use: \
             new masquerade flows to it are dropped; widen --snat-ports"
            .to_string(),
        Some(r) => r.name().to_string(),
        None => format!("unknown event {}", event.reason),
    }
}

/// An event's monotonic timestamp as UTC wall-clock time (RFC 3339).
pub(crate) fn wall_clock(ts_ns: u64) -> String {
    let ago = monotonic_ns().saturating_sub(ts_ns);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(std::time::Duration::from_nanos(ago));
    let secs = wall.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        wall.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
    }
}
