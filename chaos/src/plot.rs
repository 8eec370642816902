//! The run's plots, as SVG written by hand (no plotting crate): throughput (acknowledged
//! publishes and receipts per second) and publish latency (p50 and p99 per second, from
//! sending a PUBLISH to its acknowledgement) over the run, with each fault's interval shaded
//! and named.

use crate::history::{Nanos, Op, Outcome};
use std::fmt::Write as _;

/// A fault's interval, for shading.
#[derive(Debug, Clone)]
pub struct Interval {
    pub label: String,
    pub from: Nanos,
    pub to: Nanos,
}

const W: f64 = 960.0;
const H: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 40.0;

/// One line of a chart: its name, colour and points (seconds, value).
struct Series {
    name: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

fn secs(n: Nanos) -> f64 {
    n as f64 / 1e9
}

/// Acknowledged publishes and receipts per second.
pub fn throughput_svg(ops: &[Op], faults: &[Interval]) -> String {
    let end = ops.iter().map(last_time).max().unwrap_or(0);
    let buckets = (end / 1_000_000_000) as usize + 1;
    let mut acked = vec![0.0; buckets];
    let mut received = vec![0.0; buckets];
    for op in ops {
        match op {
            Op::Publish {
                end,
                outcome: Outcome::Ok,
                ..
            } => acked[(*end / 1_000_000_000) as usize] += 1.0,
            Op::Receive { at, .. } => received[(*at / 1_000_000_000) as usize] += 1.0,
            _ => {}
        }
    }
    let line = |v: Vec<f64>| {
        v.into_iter()
            .enumerate()
            .map(|(i, y)| (i as f64 + 0.5, y))
            .collect()
    };
    chart(
        "throughput",
        "messages / s",
        &[
            Series {
                name: "acknowledged publishes",
                color: "#1f77b4",
                points: line(acked),
            },
            Series {
                name: "receipts",
                color: "#2ca02c",
                points: line(received),
            },
        ],
        faults,
        secs(end),
    )
}

/// Publish latency per second: p50 and p99 of acknowledged publishes ending in that second.
pub fn latency_svg(ops: &[Op], faults: &[Interval]) -> String {
    let end = ops.iter().map(last_time).max().unwrap_or(0);
    let buckets = (end / 1_000_000_000) as usize + 1;
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); buckets];
    for op in ops {
        if let Op::Publish {
            start,
            end,
            outcome: Outcome::Ok,
            ..
        } = op
        {
            per[(*end / 1_000_000_000) as usize].push(end.saturating_sub(*start) as f64 / 1e6);
        }
    }
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for (i, mut v) in per.into_iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        p50.push((i as f64 + 0.5, at(0.5)));
        p99.push((i as f64 + 0.5, at(0.99)));
    }
    chart(
        "publish latency (acknowledged)",
        "ms",
        &[
            Series {
                name: "p50",
                color: "#1f77b4",
                points: p50,
            },
            Series {
                name: "p99",
                color: "#d62728",
                points: p99,
            },
        ],
        faults,
        secs(end),
    )
}

fn last_time(op: &Op) -> Nanos {
    match op {
        Op::Publish { end, .. } => *end,
        Op::Receive { at, .. } => *at,
        Op::Read { end, .. } => *end,
        Op::Ending { at, .. } | Op::Will { at, .. } => *at,
        Op::Fault { until, .. } | Op::OutageBound { until, .. } => *until,
        Op::Subscriber { from, until, .. } | Op::Session { from, until, .. } => {
            until.unwrap_or(*from)
        }
    }
}

/// A round step for about `n` ticks over `0..max`.
fn step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn chart(title: &str, unit: &str, series: &[Series], faults: &[Interval], x_max: f64) -> String {
    let x_max = x_max.max(1.0);
    let y_top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1.0);
    let y_step = step(y_top, 4.0);
    let y_max = (y_top / y_step).ceil() * y_step;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |s: f64| LEFT + s / x_max * pw;
    let y = |v: f64| TOP + ph - v / y_max * ph;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"18\" font-size=\"14\">{title}</text>\n"
    );
    for f in faults {
        let (x0, x1) = (x(secs(f.from)), x(secs(f.to).min(x_max)));
        let _ = writeln!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{ph}\" fill=\"#d62728\" \
             fill-opacity=\"0.12\"><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#a00\">{}</text>",
            (x1 - x0).max(1.0),
            f.label,
            x0 + 2.0,
            TOP + 12.0,
            f.label
        );
    }
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0,
            v
        );
        v += y_step;
    }
    let x_step = step(x_max, 10.0);
    let mut t = 0.0;
    while t <= x_max {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}</text>",
            x(t),
            H - BOTTOM + 16.0
        );
        t += x_step;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds since the run started</text>\
         <text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{unit}</text>\
         <rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>",
        LEFT + pw / 2.0,
        H - 6.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{:.1}\" y=\"18\" fill=\"{}\">{}</text>",
            s.color,
            pts.join(" "),
            W - RIGHT - 300.0 + 150.0 * i as f64,
            s.color,
            s.name
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(seq: u64, start: Nanos, end: Nanos) -> Op {
        Op::Publish {
            client: "p".into(),
            node: 1,
            topic: "t".into(),
            seq,
            qos: 1,
            start,
            end,
            outcome: Outcome::Ok,
            retain: false,
        }
    }

    #[test]
    fn the_plots_draw_the_series_and_shade_the_faults() {
        let ops: Vec<Op> = (0..50)
            .map(|i| publish(i, i * 100_000_000, i * 100_000_000 + 2_000_000))
            .collect();
        let faults = [Interval {
            label: "Partition node 3".into(),
            from: 1_000_000_000,
            to: 3_000_000_000,
        }];
        for svg in [throughput_svg(&ops, &faults), latency_svg(&ops, &faults)] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
            assert!(svg.contains("Partition node 3"));
            assert!(svg.contains("fill-opacity=\"0.12\""));
        }
        // 10 publishes acknowledged in each of the 5 seconds.
        assert!(throughput_svg(&ops, &[]).contains("receipts"));
        assert_eq!(step(95.0, 4.0), 50.0);
        assert_eq!(step(10.0, 10.0), 1.0);
    }
}
