//! `netbr monitor`: each dropped packet and each flow opened or ended, as
//! the datapath reports them (`netbr_common::monitor`), one line or JSON
//! object each, like `cilium monitor --type drop` and `conntrack -E`.
//!
//! The datapath reports only while a monitor keeps its deadline ahead, so
//! this command renews it every second and clears it on exit; one that is
//! killed stops the reports within the lease. Reading consumes: run one
//! monitor per bridge at a time.

use std::{io::Write as _, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result};
use clap::Args;
use netbr_common::{
    conntrack::{nat_name, FlowKey},
    counters::Reason,
    monitor::{
        hook_name, MonitorEvent, MONITOR_LEASE_NS, MONITOR_RENEW_NS, MON_DROP, MON_FLOW_NEW,
    },
    proto_name,
};
use serde_json::json;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use super::{
    conntrack::{tuple, tuple_text},
    events::wall_clock,
};
use crate::{
    addr::{monotonic_ns, to_be32},
    store::{state_dir, State, View},
};

#[derive(Args, Debug)]
pub struct Monitor {
    #[arg(long, default_value = super::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Show dropped packets (with neither --drops nor --flows, both show).
    #[arg(long)]
    pub drops: bool,
    /// Show flows as they open and end.
    #[arg(long)]
    pub flows: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

impl Monitor {
    pub async fn exec(self) -> Result<()> {
        let view = View::open(&self.bridge)?;
        let mut dp = view.dp;
        let mut names = Names::from(&view.state);
        let mut lost = dp.counter(Reason::MonitorLost)?;
        // Reports a monitor before this one left unread are stale.
        dp.drain_monitor();
        dp.set_monitor_deadline(monotonic_ns() + MONITOR_LEASE_NS)?;
        let ring = dp.monitor.as_raw_fd();
        // SAFETY: the descriptor belongs to `dp.monitor`, which outlives
        // `ready` and is neither closed nor replaced meanwhile.
        let ready = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .context("waiting on the monitor's ring buffer")?;
        let mut renew = tokio::time::interval(std::time::Duration::from_nanos(MONITOR_RENEW_NS));
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        eprintln!(
            "netbr monitor: watching bridge {} (Ctrl-C to stop)",
            self.bridge
        );
        let outcome: Result<()> = loop {
            tokio::select! {
                guard = ready.readable() => {
                    match guard {
                        Ok(mut g) => g.clear_ready(),
                        Err(e) => break Err(e.into()),
                    }
                    // A reader that went away (`netbr monitor | head`) ends
                    // the monitor, which then clears its deadline.
                    if let Err(e) = dp.drain_monitor().iter().try_for_each(|ev| self.print(ev, &names)) {
                        break gone(e);
                    }
                }
                _ = renew.tick() => {
                    if let Err(e) = dp.set_monitor_deadline(monotonic_ns() + MONITOR_LEASE_NS) {
                        break Err(e);
                    }
                    let now_lost = match dp.counter(Reason::MonitorLost) {
                        Ok(n) => n,
                        Err(e) => break Err(e),
                    };
                    if now_lost > lost {
                        if let Err(e) = self.missed(now_lost - lost) {
                            break gone(e);
                        }
                        lost = now_lost;
                    }
                    // Endpoints come and go while a monitor runs.
                    if let Ok(state) = state_dir(&self.bridge).and_then(|d| State::load(&d, &self.bridge)) {
                        names = Names::from(&state);
                    }
                }
                _ = tokio::signal::ctrl_c() => break Ok(()),
                _ = term.recv() => break Ok(()),
            }
        };
        dp.set_monitor_deadline(0)?;
        outcome
    }

    fn wants(&self, ev: &MonitorEvent) -> bool {
        let both = !self.drops && !self.flows;
        if ev.kind == MON_DROP {
            both || self.drops
        } else {
            both || self.flows
        }
    }

    /// Writes one report, if wanted; fails when stdout is gone.
    fn print(&self, ev: &MonitorEvent, names: &Names) -> std::io::Result<()> {
        if !self.wants(ev) {
            return Ok(());
        }
        let time = wall_clock(ev.ts_ns);
        let reason = Reason::ALL
            .get(ev.reason as usize)
            .map_or("unknown", |r| r.name());
        let endpoint = names.of(&ev.orig).or_else(|| names.of(&ev.xlat));
        let at_endpoint = endpoint
            .map(|e| format!(" endpoint={e}"))
            .unwrap_or_default();
        let proto = proto_name(ev.orig.proto);
        let line = if ev.kind == MON_DROP {
            let parsed = ev.orig != FlowKey::default();
            if self.json {
                json!({
                    "time": time, "event": "drop", "reason": reason,
                    "hook": hook_name(ev.hook), "ifindex": ev.ifindex,
                    "proto": parsed.then_some(proto),
                    "tuple": parsed.then(|| tuple(&ev.orig)),
                    "endpoint": endpoint,
                })
                .to_string()
            } else {
                let what = if parsed {
                    format!("{proto} {}", tuple_text(&ev.orig))
                } else {
                    "unparsed".to_string()
                };
                format!(
                    "{time} drop {reason} {} ifindex={} {what}{at_endpoint}",
                    hook_name(ev.hook),
                    ev.ifindex,
                )
            }
        } else {
            let opened = ev.kind == MON_FLOW_NEW;
            let event = if opened { "new" } else { "end" };
            if self.json {
                json!({
                    "time": time, "event": event, "nat": nat_name(ev.nat), "proto": proto,
                    "original": tuple(&ev.orig), "translated": tuple(&ev.xlat),
                    "reason": (!opened).then_some(reason),
                    "endpoint": endpoint,
                })
                .to_string()
            } else {
                let why = if opened {
                    String::new()
                } else {
                    format!(" reason={reason}")
                };
                format!(
                    "{time} {event} {} {proto} {} -> {}{why}{at_endpoint}",
                    nat_name(ev.nat),
                    tuple_text(&ev.orig),
                    tuple_text(&ev.xlat),
                )
            }
        };
        writeln!(std::io::stdout().lock(), "{line}")
    }

    /// Says that the ring was full and `n` reports never reached us.
    fn missed(&self, n: u64) -> std::io::Result<()> {
        let line = if self.json {
            json!({ "event": "missed", "count": n }).to_string()
        } else {
            format!("missed {n} report(s): the monitor fell behind and the ring buffer was full")
        };
        writeln!(std::io::stdout().lock(), "{line}")
    }
}

/// A closed stdout ends the monitor quietly, as a pipe's reader leaving
/// does; anything else is an error.
fn gone(e: std::io::Error) -> Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(anyhow::Error::from(e).context("writing to stdout"))
    }
}

/// Endpoint names by container address (network byte order).
struct Names(Vec<(u32, String)>);

impl Names {
    fn from(state: &State) -> Self {
        Self(
            state
                .endpoints
                .iter()
                .map(|e| (to_be32(e.ip), e.name.clone()))
                .collect(),
        )
    }

    /// The endpoint either address of `k` belongs to.
    fn of(&self, k: &FlowKey) -> Option<&str> {
        self.0
            .iter()
            .find(|(ip, _)| *ip != 0 && (*ip == k.saddr || *ip == k.daddr))
            .map(|(_, n)| n.as_str())
    }
}
