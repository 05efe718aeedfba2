//! `netbr bench --svg`: the medians as a chart a person can read. One panel
//! of horizontal bars per metric (arms side by side, the value printed on
//! each bar), then connect/close rate against published ports, and against
//! conntrack prefill, as one line per arm. Plain SVG, no dependencies.

use std::fmt::Write as _;

use super::{arms::Arm, Scenario, METRICS};

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 170.0;
const COLUMNS: usize = 2;
const LABEL_W: f64 = 120.0;
const PALETTE: [&str; 7] = [
    "#7f7f7f", "#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#2ca02c", "#17becf",
];

fn color(arm: Arm) -> &'static str {
    let i = Arm::ALL.iter().position(|a| *a == arm).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

type Median<'a> = &'a dyn Fn(Scenario, Arm, &str) -> Option<f64>;

/// `median(scenario, arm, metric)` gives the figure to draw.
pub fn svg(median: Median, arms: &[Arm], ports: &[u16], prefills: &[u32]) -> String {
    let bar_ports = ports.first().copied().unwrap_or(1);
    let rows = METRICS.len().div_ceil(COLUMNS);
    let lines_top = 40.0 + rows as f64 * PANEL_H;
    let charts = if prefills.is_empty() { 1.0 } else { 2.0 };
    let width = PANEL_W * COLUMNS as f64 + 20.0;
    let height = lines_top + PANEL_H * 1.6 * charts + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="22" font-size="15">netbr bench: medians with {bar_ports} published port(s)</text>"#
    );
    for (k, (metric, higher_better)) in METRICS.iter().enumerate() {
        let x0 = 10.0 + (k % COLUMNS) as f64 * PANEL_W;
        let y0 = 40.0 + (k / COLUMNS) as f64 * PANEL_H;
        bars(&mut out, (x0, y0), metric, *higher_better, arms, &|a| {
            median(Scenario::Ports(bar_ports), a, metric)
        });
    }
    let by_ports: Vec<_> = ports
        .iter()
        .map(|&n| (n.to_string(), Scenario::Ports(n)))
        .collect();
    let title = "connect_close_per_s against published ports";
    lines(&mut out, (10.0, lines_top), title, &by_ports, median, arms);
    if !prefills.is_empty() {
        let by_fill: Vec<_> = prefills
            .iter()
            .map(|&n| (n.to_string(), Scenario::Prefill(n)))
            .collect();
        let title = "connect_close_per_s against flows already tracked";
        let top = lines_top + PANEL_H * 1.6;
        lines(&mut out, (10.0, top), title, &by_fill, median, arms);
    }
    out.push_str("</svg>\n");
    out
}

fn bars(
    out: &mut String,
    (x0, y0): (f64, f64),
    metric: &str,
    higher_better: bool,
    arms: &[Arm],
    value: &dyn Fn(Arm) -> Option<f64>,
) {
    let arrow = if higher_better {
        "higher is better"
    } else {
        "lower is better"
    };
    heading(out, (x0, y0), &format!("{metric} ({arrow})"));
    let max = largest(arms.iter().filter_map(|a| value(*a)));
    let bar_h = ((PANEL_H - 40.0) / arms.len().max(1) as f64).min(22.0);
    let span = PANEL_W - LABEL_W - 80.0;
    for (i, &arm) in arms.iter().enumerate() {
        let y = y0 + 24.0 + i as f64 * bar_h;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            x0 + LABEL_W - 6.0,
            y + bar_h * 0.7,
            arm.name()
        );
        let Some(v) = value(arm) else { continue };
        let w = (v / max * span).max(1.0);
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"/>"#,
            x0 + LABEL_W,
            bar_h - 3.0,
            color(arm)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x0 + LABEL_W + w + 4.0,
            y + bar_h * 0.7,
            figure(v)
        );
    }
}

/// Connect/close rate (through DNAT) against `xs` (label, scenario), one
/// line per arm; the x values are spaced evenly, whatever they are.
fn lines(
    out: &mut String,
    (x0, y0): (f64, f64),
    title: &str,
    xs: &[(String, Scenario)],
    median: Median,
    arms: &[Arm],
) {
    let metric = "connect_close_per_s";
    let (w, h) = (PANEL_W * COLUMNS as f64 - 200.0, PANEL_H * 1.6 - 60.0);
    let (px, py) = (x0 + 60.0, y0 + 30.0);
    heading(out, (x0, y0), title);
    let max = largest(
        arms.iter()
            .flat_map(|a| xs.iter().filter_map(|(_, sc)| median(*sc, *a, metric))),
    );
    let _ = writeln!(
        out,
        r#"<path d="M{px} {py} V{} H{}" stroke="black" fill="none"/>"#,
        py + h,
        px + w
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">0</text>"#,
        px - 4.0,
        py + 4.0,
        figure(max),
        px - 4.0,
        py + h
    );
    let step = w / xs.len().max(1) as f64;
    let x_of = |i: usize| px + step * (i as f64 + 0.5);
    for (i, (label, _)) in xs.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            x_of(i),
            py + h + 14.0
        );
    }
    for (k, &arm) in arms.iter().enumerate() {
        let points: Vec<String> = xs
            .iter()
            .enumerate()
            .filter_map(|(i, (_, sc))| {
                median(*sc, arm, metric)
                    .map(|v| format!("{:.1},{:.1}", x_of(i), py + h - v / max * h))
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            points.join(" "),
            color(arm)
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" fill="{}">{}</text>"#,
            px + w + 10.0,
            py + 12.0 + k as f64 * 14.0,
            color(arm),
            arm.name()
        );
    }
}

fn heading(out: &mut String, (x0, y0): (f64, f64), text: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}" font-size="13">{text}</text>"#,
        y0 + 14.0
    );
}

/// The largest value, never 0, so scaling by it is safe.
fn largest(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0f64, f64::max).max(f64::MIN_POSITIVE)
}

/// A figure with three significant digits and no exponent.
fn figure(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_draws_every_metric_and_arm() {
        let arms = [Arm::Routed, Arm::Netbr];
        let svg = svg(
            &|sc, a, _| {
                let x = match sc {
                    Scenario::Ports(n) => f64::from(n),
                    Scenario::Prefill(n) | Scenario::Rules(n) => f64::from(n),
                };
                Some(x + if a == Arm::Netbr { 10.0 } else { 5.0 })
            },
            &arms,
            &[1, 1000],
            &[0, 100_000],
        );
        for (m, _) in METRICS {
            assert!(svg.contains(m), "{m}");
        }
        assert_eq!(svg.matches("<polyline").count(), 2 * arms.len());
        assert_eq!(svg.matches("<rect").count(), 1 + METRICS.len() * arms.len());
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
