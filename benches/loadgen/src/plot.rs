//! SVG plots of a run's per-second series ([`crate::series`]): throughput (messages sent and
//! received per second) and latency (p50 and p99 per second, milliseconds) over the run.
//!
//! Two ways in, one drawing code:
//!
//! - `--plot DIR` on `throughput` and `round-trip`: the plots of that one run;
//! - `roost-loadgen plot --input NAME=FILE... --out DIR`: from the `--json` lines of several
//!   brokers, one pair of plots per scenario label with every broker's lines on the same axes
//!   (what `benches/run-compare.sh` links from its results).
//!
//! Files are `DIR/<label as a slug>-throughput.svg` and `-latency.svg`. plotters draws with its
//! SVG backend only, without its `ttf` feature: text becomes SVG `<text>` elements that the
//! viewer lays out, so nothing here needs fontconfig or FreeType.

use crate::series::SecondPoint;
use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Pixel size of every plot.
const SIZE: (u32, u32) = (960, 420);

/// Arguments of `roost-loadgen plot`.
#[derive(Debug, clap::Args)]
pub(crate) struct PlotArgs {
    /// `NAME=FILE`: a broker's name and its `--json` lines (one line per run); every label
    /// found with a series gets one pair of plots with a line per broker.
    #[arg(long = "input", value_name = "NAME=FILE", required = true)]
    pub(crate) inputs: Vec<String>,
    /// Directory for the SVG files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
}

/// `roost-loadgen plot`: writes the plots and prints their paths, one a line.
pub(crate) fn run(args: &PlotArgs) -> Result<()> {
    let brokers = crate::table::read_inputs(&args.inputs)?;
    for path in write_all(&args.out, &brokers)? {
        println!("{path}");
    }
    Ok(())
}

/// One pair of plots per label that has a series, every broker's run of that label in it.
fn write_all(dir: &Path, brokers: &[(String, Vec<Value>)]) -> Result<Vec<String>> {
    let mut labels: Vec<String> = Vec::new();
    for (_, reports) in brokers {
        for r in reports {
            if let Some(label) = r.get("label").and_then(Value::as_str) {
                if r.get("series").is_some() && !labels.iter().any(|l| l == label) {
                    labels.push(label.to_owned());
                }
            }
        }
    }
    let mut written = Vec::new();
    for label in &labels {
        let mut runs = Vec::new();
        for (name, reports) in brokers {
            let report = reports
                .iter()
                .find(|r| r.get("label").and_then(Value::as_str) == Some(label.as_str()));
            let Some(series) = report.and_then(|r| r.get("series")) else {
                continue;
            };
            let series: Vec<SecondPoint> = serde_json::from_value(series.clone())
                .with_context(|| format!("{name}: series of {label:?}"))?;
            runs.push((name.clone(), series));
        }
        written.extend(write(dir, label, &runs)?);
    }
    Ok(written)
}

/// The plots of one run.
pub(crate) fn write_run(dir: &Path, label: &str, series: &[SecondPoint]) -> Result<Vec<String>> {
    write(dir, label, &[(String::new(), series.to_vec())])
}

/// Writes `<slug>-throughput.svg` and `<slug>-latency.svg` for `runs` (name, series); a
/// single run with an empty name gets no name in its legend.
pub(crate) fn write(
    dir: &Path,
    label: &str,
    runs: &[(String, Vec<SecondPoint>)],
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let slug = slug(label);
    let throughput = dir.join(format!("{slug}-throughput.svg"));
    let latency = dir.join(format!("{slug}-latency.svg"));
    draw(
        &throughput,
        &format!("{label}: throughput"),
        "msg/s",
        runs,
        [
            ("received", |p: &SecondPoint| Some(p.received as f64)),
            ("sent", |p: &SecondPoint| Some(p.sent as f64)),
        ],
    )
    .with_context(|| format!("cannot draw {}", throughput.display()))?;
    draw(
        &latency,
        &format!("{label}: latency"),
        "ms",
        runs,
        [
            ("p99", |p: &SecondPoint| p.p99_us.map(|us| us / 1_000.0)),
            ("p50", |p: &SecondPoint| p.p50_us.map(|us| us / 1_000.0)),
        ],
    )
    .with_context(|| format!("cannot draw {}", latency.display()))?;
    Ok(vec![
        throughput.display().to_string(),
        latency.display().to_string(),
    ])
}

/// A metric drawn per run: its name and how to read it from a point (`None`: no value).
type Metric = (&'static str, fn(&SecondPoint) -> Option<f64>);

/// One chart: x = seconds since the start of the warm-up, one line per (run, metric); the
/// first metric of a run drawn bold, the second thin and lighter in the same colour.
fn draw(
    path: &Path,
    title: &str,
    unit: &str,
    runs: &[(String, Vec<SecondPoint>)],
    metrics: [Metric; 2],
) -> Result<()> {
    let mut x_max: f64 = 1.0;
    let mut y_max: f64 = 0.0;
    for (_, series) in runs {
        for p in series {
            x_max = x_max.max(p.t as f64 + 1.0);
            for (_, get) in &metrics {
                y_max = y_max.max(get(p).unwrap_or(0.0));
            }
        }
    }
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_labels((x_max as usize).clamp(2, 12))
        .x_label_formatter(&|v| axis_number(*v))
        .y_label_formatter(&|v| axis_number(*v))
        .max_light_lines(1)
        .x_desc("seconds since start (warm-up included)")
        .y_desc(unit)
        .draw()?;
    for (i, (name, series)) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        for (m, (metric, get)) in metrics.iter().enumerate() {
            let style = if m == 0 {
                color.stroke_width(2)
            } else {
                color.mix(0.45).stroke_width(1)
            };
            // Each point at the middle of its second.
            let points: Vec<(f64, f64)> = series
                .iter()
                .filter_map(|p| get(p).map(|v| (p.t as f64 + 0.5, v)))
                .collect();
            let legend = if name.is_empty() {
                (*metric).to_owned()
            } else {
                format!("{name} {metric}")
            };
            chart
                .draw_series(LineSeries::new(points, style))?
                .label(legend)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// An axis label: short, without needless decimals (`250`, `1.5`, `12k`, `1.2M`).
fn axis_number(v: f64) -> String {
    let a = v.abs();
    let short = |x: f64, unit: &str| {
        if x.fract() == 0.0 || x.abs() >= 10.0 {
            format!("{x:.0}{unit}")
        } else {
            format!("{x:.1}{unit}")
        }
    };
    if a >= 1e6 {
        short(v / 1e6, "M")
    } else if a >= 1e3 {
        short(v / 1e3, "k")
    } else if a >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A file name from a label: lowercase letters and digits, anything else one `-`.
fn slug(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("run");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: u64, sent: u64, received: u64, p50: Option<f64>) -> SecondPoint {
        SecondPoint {
            t,
            sent,
            received,
            p50_us: p50,
            p99_us: p50.map(|v| v * 3.0),
        }
    }

    #[test]
    fn axis_numbers_are_short() {
        let got: Vec<String> = [
            0.0,
            0.25,
            1.5,
            2.0,
            250.0,
            1_500.0,
            5_000.0,
            12_000.0,
            1_250_000.0,
        ]
        .into_iter()
        .map(axis_number)
        .collect();
        assert_eq!(
            got,
            ["0", "0.25", "1.5", "2", "250", "1.5k", "5k", "12k", "1.2M"]
        );
    }

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("4 pub → 4 sub, QoS 0, 64 B"), "4-pub-4-sub-qos-0-64-b");
        assert_eq!(slug("round-trip 1 QoS1"), "round-trip-1-qos1");
        assert_eq!(slug("→"), "run");
    }

    #[test]
    fn compares_brokers_with_one_line_each() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let series = |scale: u64| {
            serde_json::to_value(vec![
                point(0, 100 * scale, 90 * scale, Some(800.0)),
                point(1, 200 * scale, 200 * scale, None),
                point(2, 150 * scale, 160 * scale, Some(1_200.0)),
            ])
        };
        let roost = vec![
            serde_json::json!({"label": "qos0", "scenario": "throughput", "series": series(2)?}),
            serde_json::json!({"label": "idle", "scenario": "idle"}),
        ];
        let other = vec![serde_json::json!({"label": "qos0", "series": series(1)?})];
        let written = write_all(
            dir.path(),
            &[("roost".into(), roost), ("mosquitto".into(), other)],
        )?;
        assert_eq!(written.len(), 2, "{written:?}");
        let svg = std::fs::read_to_string(dir.path().join("qos0-throughput.svg"))?;
        assert!(svg.contains("<svg"), "{svg}");
        for text in [
            "roost received",
            "mosquitto sent",
            "msg/s",
            "qos0: throughput",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        let svg = std::fs::read_to_string(dir.path().join("qos0-latency.svg"))?;
        assert!(
            svg.contains("roost p99") && svg.contains("qos0: latency"),
            "{svg}"
        );
        Ok(())
    }

    #[test]
    fn a_run_without_latency_still_draws() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let written = write_run(dir.path(), "empty", &[point(0, 0, 0, None)])?;
        assert_eq!(written.len(), 2);
        Ok(())
    }
}
