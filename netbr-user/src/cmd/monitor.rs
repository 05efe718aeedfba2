//! `netbr monitor`: each dropped packet and each flow opened or ended, as
//! the datapath reports them (`netbr_common::monitor`), one line or JSON
//! object each, like `cilium monitor --type drop` and `conntrack -E`.
//!
//! The datapath reports only while a monitor keeps its deadline ahead, so
//! this command renews it every second and clears it on exit; one that is
//! killed stops the reports within the lease. Reading consumes: run one
//! monitor per bridge at a time.

use std::os::fd::AsRawFd as _;

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
                    for ev in dp.drain_monitor() {
                        self.print(&ev, &names);
                    }
                }
                _ = renew.tick() => {
                    if let Err(e) = dp.set_monitor_deadline(monotonic_ns() + MONITOR_LEASE_NS) {
                        break Err(e);
                    }
                    let now_lost = dp.counter(Reason::MonitorLost)?;
                    if now_lost > lost {
                        self.missed(now_lost - lost);
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

    fn print(&self, ev: &MonitorEvent, names: &Names) {
        if !self.wants(ev) {
            return;
        }
        let time = wall_clock(ev.ts_ns);
        let reason = Reason::ALL
            .get(ev.reason as usize)
            .map_or("unknown", |r| r.name());
        let endpoint = names.of(&ev.orig).or_else(|| names.of(&ev.xlat));
        let proto = proto_name(ev.orig.proto);
        if ev.kind == MON_DROP {
            let parsed = ev.orig != FlowKey::default();
            if self.json {
                println!(
                    "{}",
                    json!({
                        "time": time, "event": "drop", "reason": reason,
                        "hook": hook_name(ev.hook), "ifindex": ev.ifindex,
                        "proto": parsed.then_some(proto),
                        "tuple": parsed.then(|| tuple(&ev.orig)),
                        "endpoint": endpoint,
                    })
                );
            } else {
                let what = if parsed {
                    format!("{proto} {}", tuple_text(&ev.orig))
                } else {
                    "unparsed".to_string()
                };
                println!(
                    "{time} drop {reason} {} ifindex={} {what}{}",
                    hook_name(ev.hook),
                    ev.ifindex,
                    endpoint
                        .map(|e| format!(" endpoint={e}"))
                        .unwrap_or_default()
                );
            }
            return;
        }
        let event = if ev.kind == MON_FLOW_NEW {
            "new"
        } else {
            "end"
        };
        if self.json {
            println!(
                "{}",
                json!({
                    "time": time, "event": event, "nat": nat_name(ev.nat), "proto": proto,
                    "original": tuple(&ev.orig), "translated": tuple(&ev.xlat),
                    "reason": (ev.kind != MON_FLOW_NEW).then_some(reason),
                    "endpoint": endpoint,
                })
            );
        } else {
            println!(
                "{time} {event} {} {proto} {} -> {}{}{}",
                nat_name(ev.nat),
                tuple_text(&ev.orig),
                tuple_text(&ev.xlat),
                if ev.kind == MON_FLOW_NEW {
                    String::new()
                } else {
                    format!(" reason={reason}")
                },
                endpoint
                    .map(|e| format!(" endpoint={e}"))
                    .unwrap_or_default()
            );
        }
    }

    /// Says that the ring was full and `n` reports never reached us.
    fn missed(&self, n: u64) {
        if self.json {
            println!("{}", json!({ "event": "missed", "count": n }));
        } else {
            println!("missed {n} report(s): the monitor fell behind and the ring buffer was full");
        }
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
