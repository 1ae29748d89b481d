//! A hand-written SVG of a run: the latency distribution (percentile curve, log-scaled towards the tail)
//! beside throughput over time. No plotting crate; plain `<polyline>`, `<line>` and `<text>` elements.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::report::{Report, Sample};

const W: f64 = 1100.0;
const H: f64 = 460.0;
const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 320.0;
const TOP: f64 = 80.0;
const LEFT1: f64 = 80.0;
const LEFT2: f64 = 620.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis maximum and tick step covering `max`.
pub fn nice_scale(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    } * mag;
    ((max / step).ceil() * step, step)
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The percentile curve: points (x = log10(1 / (1 - q)), latency in ms), q up to 99.999 %.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    if h.is_empty() {
        return out;
    }
    let max_x = 5.0;
    let steps = 200;
    for i in 0..=steps {
        let x = max_x * f64::from(i) / f64::from(steps);
        let q = 1.0 - 10f64.powf(-x);
        out.push((x, h.value_at_quantile(q) as f64 / 1000.0));
    }
    out
}

fn axes(s: &mut String, left: f64, title: &str, x_label: &str, y_label: &str) {
    let bottom = TOP + PANEL_H;
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="bold" text-anchor="middle">{}</text>
<line x1="{left:.1}" y1="{TOP:.1}" x2="{left:.1}" y2="{bottom:.1}" stroke="#333"/>
<line x1="{left:.1}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="#333"/>
<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>
<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{}</text>
"##,
        left + PANEL_W / 2.0,
        TOP - 15.0,
        esc(title),
        left + PANEL_W,
        left + PANEL_W / 2.0,
        bottom + 40.0,
        esc(x_label),
        left - 55.0,
        TOP + PANEL_H / 2.0,
        left - 55.0,
        TOP + PANEL_H / 2.0,
        esc(y_label),
    );
}

fn y_ticks(s: &mut String, left: f64, max: f64, step: f64) {
    let bottom = TOP + PANEL_H;
    let mut v = 0.0;
    while v <= max + step / 2.0 {
        let y = bottom - v / max * PANEL_H;
        let _ = writeln!(
            s,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            left + PANEL_W,
            left - 6.0,
            y + 4.0,
            fmt_num(v)
        );
        v += step;
    }
}

fn polyline(s: &mut String, pts: &[(f64, f64)], color: &str) {
    if pts.is_empty() {
        return;
    }
    s.push_str("<polyline fill=\"none\" stroke=\"");
    s.push_str(color);
    s.push_str("\" stroke-width=\"2\" points=\"");
    for (x, y) in pts {
        let _ = write!(s, "{x:.1},{y:.1} ");
    }
    s.push_str("\"/>\n");
}

fn latency_panel(s: &mut String, title: &str, h: Option<&Histogram<u64>>) {
    axes(s, LEFT1, title, "percentile", "latency (ms)");
    let bottom = TOP + PANEL_H;
    let labels = [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ];
    for (x, l) in labels {
        let px = LEFT1 + x / 5.0 * PANEL_W;
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP:.1}" x2="{px:.1}" y2="{bottom:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" font-size="11" text-anchor="middle">{l}</text>"##,
            bottom + 16.0
        );
    }
    let Some(h) = h.filter(|h| !h.is_empty()) else {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#888">no latency samples</text>"##,
            LEFT1 + PANEL_W / 2.0,
            TOP + PANEL_H / 2.0
        );
        return;
    };
    let curve = percentile_curve(h);
    let max_ms = curve.iter().map(|p| p.1).fold(0.0, f64::max);
    let (ymax, step) = nice_scale(max_ms);
    y_ticks(s, LEFT1, ymax, step);
    let pts: Vec<(f64, f64)> = curve
        .iter()
        .map(|&(x, ms)| (LEFT1 + x / 5.0 * PANEL_W, bottom - ms / ymax * PANEL_H))
        .collect();
    polyline(s, &pts, "#1f77b4");
    for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
        let ms = h.value_at_quantile(q) as f64 / 1000.0;
        let x = LEFT1 + (-(1.0f64 - q).log10()) / 5.0 * PANEL_W;
        let y = bottom - ms / ymax * PANEL_H;
        let _ = writeln!(
            s,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="#d62728"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#d62728">{name} {ms:.2} ms</text>"##,
            x + 5.0,
            y - 6.0
        );
    }
}

fn throughput_panel(s: &mut String, label: &str, series: &[Sample]) {
    axes(s, LEFT2, "Throughput over time", "seconds", label);
    let bottom = TOP + PANEL_H;
    if series.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#888">no samples</text>"##,
            LEFT2 + PANEL_W / 2.0,
            TOP + PANEL_H / 2.0
        );
        return;
    }
    let tmax = series.iter().map(|p| p.t).fold(0.0, f64::max);
    let rmax = series.iter().map(|p| p.rate).fold(0.0, f64::max);
    let (xmax, xstep) = nice_scale(tmax);
    let (ymax, ystep) = nice_scale(rmax);
    y_ticks(s, LEFT2, ymax, ystep);
    let mut t = 0.0;
    while t <= xmax + xstep / 2.0 {
        let px = LEFT2 + t / xmax * PANEL_W;
        let _ = writeln!(
            s,
            r##"<text x="{px:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            bottom + 16.0,
            fmt_num(t)
        );
        t += xstep;
    }
    let pts: Vec<(f64, f64)> = series
        .iter()
        .map(|p| {
            (
                LEFT2 + p.t / xmax * PANEL_W,
                bottom - p.rate / ymax * PANEL_H,
            )
        })
        .collect();
    polyline(s, &pts, "#2ca02c");
}

/// The SVG document for `report`.
pub fn render(report: &Report) -> String {
    let mut s = String::with_capacity(16 * 1024);
    let _ = writeln!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{:.1}" y="28" font-size="17" text-anchor="middle">{}</text>"##,
        W / 2.0,
        esc(&format!(
            "banter bench {} ({}, {}){}",
            report.scenario,
            report.transport,
            if report.ok { "ok" } else { "FAILED" },
            report
                .messages
                .as_ref()
                .map(|m| format!(
                    " — {:.0} deliveries/s, p99 {:.2} ms",
                    m.deliveries_per_sec, m.p99_ms
                ))
                .unwrap_or_default()
        ))
    );
    let title = if report.connections.is_some() {
        "Connect + authenticate latency"
    } else {
        "Latency distribution (send → receive)"
    };
    latency_panel(&mut s, title, report.latency.as_ref());
    let label = if report.timeline_label.is_empty() {
        "per second"
    } else {
        &report.timeline_label
    };
    throughput_panel(&mut s, label, &report.timeline);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::new_histogram;

    #[test]
    fn scales_are_nice() {
        assert_eq!(nice_scale(9.3), (10.0, 2.0));
        assert_eq!(nice_scale(47_000.0), (50_000.0, 10_000.0));
        assert_eq!(nice_scale(0.0), (1.0, 0.2));
        let (m, s) = nice_scale(123.0);
        assert!(m >= 123.0 && s > 0.0);
    }

    #[test]
    fn renders_a_well_formed_document() {
        let mut r = Report::new("peer", serde_json::json!({}), "tcp");
        let mut h = new_histogram();
        for v in 1..5000u64 {
            h.record(v * 3).unwrap();
        }
        r.latency = Some(h);
        r.timeline = (1..20)
            .map(|i| Sample {
                t: f64::from(i) * 0.25,
                rate: 1000.0 * f64::from(i),
            })
            .collect();
        r.timeline_label = "deliveries/s".into();
        let svg = render(&r);
        assert!(svg.starts_with("<?xml"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("p99 "));
        // Balanced elements: every opened tag with content is closed.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn renders_without_data() {
        let r = Report::new("connections", serde_json::json!({}), "tcp");
        let svg = render(&r);
        assert!(svg.contains("no latency samples"));
        assert!(svg.contains("no samples"));
    }

    #[test]
    fn curve_is_monotonic() {
        let mut h = new_histogram();
        for v in [10u64, 20, 30, 1000, 5000] {
            h.record(v).unwrap();
        }
        let c = percentile_curve(&h);
        assert!(c.windows(2).all(|w| w[1].1 >= w[0].1));
    }
}
