//! `netbr metrics --listen ADDR:PORT`: a Prometheus exporter for every
//! bridge in the namespace. Each scrape reads the pinned maps, the state
//! files and the kernel's link counters afresh; nothing else needs to run,
//! and the exporter keeps nothing between scrapes, so it can be restarted
//! (or run twice) at will.

use std::{convert::Infallible, net::SocketAddr};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::{
    body::Incoming, server::conn::http1, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use netbr_common::{
    pacing::{PACE_EGRESS, PACE_INGRESS},
    snat::SNAT_ATTEMPTS,
};

use crate::{
    bpf::datapath::Datapath,
    netlink::Netlink,
    store::{self, firewall::rules_with_hits, limits, View},
    traffic,
};

/// The text format's content type, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Args, Debug)]
pub struct Metrics {
    /// Where to serve `/metrics`, e.g. 127.0.0.1:9477 or [::]:9477.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
}

impl Metrics {
    pub async fn exec(self) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("listening on {}: is the port taken?", self.listen))?;
        eprintln!(
            "netbr metrics: serving http://{}/metrics",
            listener.local_addr()?
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("handling SIGTERM")?;
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted.context("accepting a scrape")?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
            };
            // One scrape at a time, on this thread: it runs in the
            // namespace netbr entered, and scrapes are seconds apart.
            let svc = service_fn(serve_one);
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                log::debug!("scrape connection: {e}");
            }
        }
    }
}

async fn serve_one(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = if req.uri().path() != "/metrics" {
        (StatusCode::NOT_FOUND, "netbr serves /metrics\n".to_string())
    } else {
        match scrape().await {
            Ok(text) => (StatusCode::OK, text),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("netbr: scrape failed: {e:#}\n"),
            ),
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    Ok(resp)
}

/// Every bridge of the calling thread's namespace, in the text format.
pub async fn scrape() -> Result<String> {
    let mut out = Exposition::default();
    let nl = Netlink::connect()?;
    let mut bridges = store::bridges()?;
    bridges.sort();
    for bridge in bridges {
        let attached = match View::open(&bridge) {
            Ok(view) => {
                bridge_metrics(&mut out, &nl, &bridge, &view).await?;
                1
            }
            // Detached with --keep-bridge, or pins of another layout:
            // say so rather than fail the whole scrape.
            Err(_) => 0,
        };
        out.add(
            "netbr_bridge_attached",
            Kind::Gauge,
            "Whether the bridge's datapath is attached and readable (1) or not (0).",
            "",
            &[("bridge", &bridge)],
            attached,
        );
    }
    Ok(out.render())
}

async fn bridge_metrics(
    out: &mut Exposition,
    nl: &Netlink,
    bridge: &str,
    view: &View,
) -> Result<()> {
    let dp = &view.dp;
    let b = ("bridge", bridge);
    for (reason, n) in dp.counter_totals()? {
        let (name, help) = if reason.is_drop() {
            (
                "netbr_drops_total",
                "Packets the datapath dropped, by reason.",
            )
        } else {
            (
                "netbr_datapath_events_total",
                "Packets the datapath passed or translated, and events it met, by reason (drops are netbr_drops_total).",
            )
        };
        out.add(
            name,
            Kind::Counter,
            help,
            "",
            &[b, ("reason", reason.name())],
            n,
        );
    }
    conntrack_metrics(out, dp, bridge, view.ct_max)?;
    snat_histogram(out, dp, bridge)?;
    let (fast_in, fast_out, fast_xdp) = dp.fast_path_counts()?;
    for (path, n) in [
        ("into_container", fast_in),
        ("out_uplink", fast_out),
        ("xdp", fast_xdp),
    ] {
        out.add(
            "netbr_fast_path_packets_total",
            Kind::Counter,
            "Packets the fast path delivered past the host stack, by path.",
            "",
            &[b, ("path", path)],
            n,
        );
    }
    for r in rules_with_hits(dp, &view.state)? {
        out.add(
            "netbr_firewall_rule_hits_total",
            Kind::Counter,
            "New flows each firewall rule matched.",
            "",
            &[b, ("rule", &r.rule.id.to_string())],
            r.hits,
        );
    }
    out.add(
        "netbr_published_ports",
        Kind::Gauge,
        "Published ports (datapath mappings).",
        "",
        &[b],
        dp.mapping_list()?.len() as u64,
    );
    out.add(
        "netbr_endpoints",
        Kind::Gauge,
        "Endpoints on the bridge.",
        "",
        &[b],
        view.state.endpoints.len() as u64,
    );
    let traffic = traffic::of_endpoints(nl, &view.state.endpoints).await?;
    for ep in &view.state.endpoints {
        let labels = [
            b,
            ("endpoint", ep.name.as_str()),
            ("container_id", ep.container_id().unwrap_or("")),
        ];
        let t = traffic.get(&ep.name).copied().unwrap_or_default();
        for (name, help, v) in [
            (
                "netbr_endpoint_received_bytes_total",
                "Bytes the endpoint's container received.",
                t.received_bytes,
            ),
            (
                "netbr_endpoint_received_packets_total",
                "Packets the endpoint's container received.",
                t.received_packets,
            ),
            (
                "netbr_endpoint_sent_bytes_total",
                "Bytes the endpoint's container sent.",
                t.sent_bytes,
            ),
            (
                "netbr_endpoint_sent_packets_total",
                "Packets the endpoint's container sent.",
                t.sent_packets,
            ),
        ] {
            out.add(name, Kind::Counter, help, "", &labels, v);
        }
        for (dir, name, limit) in [
            (PACE_EGRESS, "egress", ep.limits.egress),
            (PACE_INGRESS, "ingress", ep.limits.ingress),
        ] {
            if limit.is_none() {
                continue;
            }
            let dropped = limits::datapath_view(dp, ep, dir).map_or(0, |(d, _)| d);
            out.add(
                "netbr_pacing_drops_total",
                Kind::Counter,
                "Packets a bandwidth limit dropped, by endpoint and direction.",
                "",
                &[labels[0], labels[1], labels[2], ("direction", name)],
                dropped,
            );
        }
    }
    Ok(())
}

fn conntrack_metrics(out: &mut Exposition, dp: &Datapath, bridge: &str, ct_max: u32) -> Result<()> {
    for (table, map) in [("assured", &dp.conntrack), ("new", &dp.conntrack_new)] {
        // Keys only: the entries' values are not needed to count them.
        let mut n = 0u64;
        for key in map.keys() {
            key.context("reading conntrack")?;
            n += 1;
        }
        out.add(
            "netbr_conntrack_entries",
            Kind::Gauge,
            "Conntrack entries (two per flow), by table.",
            "",
            &[("bridge", bridge), ("table", table)],
            n,
        );
        out.add(
            "netbr_conntrack_max_entries",
            Kind::Gauge,
            "Size of each conntrack table (attach --ct-max), by table.",
            "",
            &[("bridge", bridge), ("table", table)],
            ct_max as u64,
        );
    }
    Ok(())
}

/// The SNAT port search as a histogram of candidates a new masquerade flow
/// needed: 0 kept its own port; a flow that found none counts only in
/// `+Inf`, with every candidate it tried in the sum.
fn snat_histogram(out: &mut Exposition, dp: &Datapath, bridge: &str) -> Result<()> {
    const NAME: &str = "netbr_snat_port_candidates";
    const HELP: &str = "Candidate ports each new masquerade flow tried before it found a free one (0: it kept its own).";
    // Index k: flows that needed k candidates; the last, flows that found none.
    let counts = dp.snat_attempts()?;
    let b = ("bridge", bridge);
    for le in [0u32, 1, 2, 4, 8, 16, SNAT_ATTEMPTS] {
        let at_most: u64 = counts.iter().take(le as usize + 1).sum();
        out.add(
            NAME,
            Kind::Histogram,
            HELP,
            "_bucket",
            &[b, ("le", &le.to_string())],
            at_most,
        );
    }
    let total: u64 = counts.iter().sum();
    let sum: u64 = counts
        .iter()
        .enumerate()
        .map(|(k, n)| (k as u64).min(SNAT_ATTEMPTS as u64) * n)
        .sum();
    out.add(
        NAME,
        Kind::Histogram,
        HELP,
        "_bucket",
        &[b, ("le", "+Inf")],
        total,
    );
    out.add(NAME, Kind::Histogram, HELP, "_sum", &[b], sum);
    out.add(NAME, Kind::Histogram, HELP, "_count", &[b], total);
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Metric families in the order first seen, each with its samples, so a
/// family's samples stand together under one HELP and TYPE whatever order
/// the bridges add them in.
#[derive(Default)]
struct Exposition {
    families: Vec<Family>,
}

struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<String>,
}

impl Exposition {
    fn add(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        suffix: &str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    kind,
                    help,
                    samples: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        self.families[at]
            .samples
            .push(format!("{name}{suffix}{{{}}} {value}", labels.join(",")));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            out.push_str(&format!("# HELP {} {}\n", f.name, f.help));
            out.push_str(&format!("# TYPE {} {}\n", f.name, f.kind.name()));
            for s in &f.samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

/// A label value as the text format needs it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The value of the sample `name{labels}` in a scrape, labels given as
/// `k="v"` pairs in their order: for tests and tools reading a scrape.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    let head = format!("{name}{{{}}} ", labels.join(","));
    text.lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_stand_together_whatever_order_samples_come_in() {
        let mut e = Exposition::default();
        let help = "h";
        e.add("a_total", Kind::Counter, help, "", &[("bridge", "b1")], 1);
        e.add("g", Kind::Gauge, help, "", &[("bridge", "b1")], 2);
        e.add("a_total", Kind::Counter, help, "", &[("bridge", "b\"2")], 3);
        let text = e.render();
        assert_eq!(
            text,
            "# HELP a_total h\n# TYPE a_total counter\na_total{bridge=\"b1\"} 1\n\
             a_total{bridge=\"b\\\"2\"} 3\n# HELP g h\n# TYPE g gauge\ng{bridge=\"b1\"} 2\n"
        );
        assert_eq!(sample(&text, "a_total", &[("bridge", "b\"2")]), Some(3));
        assert_eq!(sample(&text, "a_total", &[("bridge", "b3")]), None);
    }
}
