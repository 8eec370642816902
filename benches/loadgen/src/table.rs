//! `table`: a Markdown comparison of brokers from the JSON lines `idle --json`,
//! `throughput --json`, `round-trip --json` and `subscribe-latency --json` printed. A column need not be a broker:
//! any name for a set of runs with the same labels (e.g. `new=` and `existing=` filters).
//!
//! Each input is `NAME=FILE`, FILE holding one JSON report per line. A run that failed is a
//! line with its `scenario`, `label` and a `run_failed` field saying why (`run-compare.sh` writes
//! it when the load generator exits with an error or times out); its cells say `failed`. A
//! label a column has no line for was not run there (a single-node scenario in a cluster's
//! column): `not run`. Rows follow the scenario labels in the order they first appear; one
//! column per broker; a value a report lacks is shown as `—`. Pure text processing: no network.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fmt::Write as _;

/// Arguments of `roost-loadgen table`.
#[derive(Debug, clap::Args)]
pub(crate) struct TableArgs {
    /// `NAME=FILE`: a broker's name and its JSON lines; one column each, in this order.
    #[arg(long = "input", value_name = "NAME=FILE", required = true)]
    pub(crate) inputs: Vec<String>,
}

/// Prints the table on stdout.
pub(crate) fn run(args: &TableArgs) -> Result<()> {
    print!("{}", render(&read_inputs(&args.inputs)?));
    Ok(())
}

/// Each `--input NAME=FILE` (of `table` and `plot`): the broker's name and its JSON lines.
pub(crate) fn read_inputs(inputs: &[String]) -> Result<Vec<(String, Vec<Value>)>> {
    let mut brokers = Vec::new();
    for input in inputs {
        let Some((name, file)) = input.split_once('=') else {
            bail!("--input {input:?}: expected NAME=FILE");
        };
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
        brokers.push((name.to_owned(), parse_lines(&text)?));
    }
    Ok(brokers)
}

pub(crate) fn parse_lines(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).with_context(|| format!("line {}", n + 1))?);
    }
    Ok(out)
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_f64()
}

type Metric = (&'static str, fn(&Value) -> Option<String>);

const IDLE_METRICS: &[Metric] = &[
    ("connections established", |v| {
        Some(format!(
            "{} / {}",
            num(v, &["connected"])?,
            num(v, &["connections_requested"])?
        ))
    }),
    ("connect rate (conn/s)", |v| {
        Some(format!("{:.0}", num(v, &["connections_per_sec"])?))
    }),
    ("broker RSS before → after (MiB)", |v| {
        Some(format!(
            "{:.1} → {:.1}",
            num(v, &["broker_rss_before_kib"])? / 1024.0,
            num(v, &["broker_rss_after_kib"])? / 1024.0
        ))
    }),
    ("**broker memory per connection (KiB)**", |v| {
        Some(format!(
            "**{:.2}**",
            num(v, &["broker_kib_per_connection"])?
        ))
    }),
];

const THROUGHPUT_METRICS: &[Metric] = &[
    ("published (msg/s)", |v| {
        Some(format!("{:.0}", num(v, &["published_per_sec"])?))
    }),
    ("**delivered (msg/s)**", |v| {
        Some(format!("**{:.0}**", num(v, &["delivered_per_sec"])?))
    }),
    ("latency p50 / p90 / p99 / p99.9 / max (ms)", latency_cell),
    ("lost / duplicated / reordered / unacked", |v| {
        Some(format!(
            "{} / {} / {} / {}",
            num(v, &["lost"])?,
            num(v, &["duplicated"])?,
            num(v, &["reordered"]).map_or("—".to_owned(), |n| n.to_string()),
            num(v, &["unacked"])?
        ))
    }),
    ("CPU broker / load generator (%)", cpu_cell),
    ("broker peak RSS (MiB)", |v| {
        Some(format!("{:.1}", num(v, &["broker_peak_rss_kib"])? / 1024.0))
    }),
];

const ROUND_TRIP_METRICS: &[Metric] = &[
    ("**round trips/s**", |v| {
        Some(format!("**{:.0}**", num(v, &["round_trips_per_sec"])?))
    }),
    ("latency p50 / p90 / p99 / p99.9 / max (ms)", latency_cell),
    ("lost / duplicated / reordered / unacked", |v| {
        Some(format!(
            "{} / {} / {} / {}",
            num(v, &["lost"])?,
            num(v, &["duplicated"])?,
            num(v, &["reordered"])?,
            num(v, &["unacked"])?
        ))
    }),
    ("CPU broker / load generator (%)", cpu_cell),
];

/// Broker and load generator CPU, percent of one core.
fn cpu_cell(v: &Value) -> Option<String> {
    Some(format!(
        "{:.0} / {:.0}",
        num(v, &["broker_cpu_percent"])?,
        num(v, &["loadgen_cpu_percent"])?
    ))
}

/// `latency_us` as p50 / p90 / p99 / p99.9 / max in ms (reports from before p99.9 show `—`
/// there); nothing when no sample was taken.
fn latency_cell(v: &Value) -> Option<String> {
    if num(v, &["latency_us", "samples"])? == 0.0 {
        return None;
    }
    let ms = |k: &str| {
        num(v, &["latency_us", k]).map_or("—".to_owned(), |us| format!("{:.2}", us / 1000.0))
    };
    Some(format!(
        "{} / {} / {} / {} / {}",
        ms("p50"),
        ms("p90"),
        ms("p99"),
        ms("p999"),
        ms("max")
    ))
}

const SUBSCRIBE_LATENCY_METRICS: &[Metric] = &[
    ("subscribes/s", |v| {
        Some(format!("{:.0}", num(v, &["subscribes_per_sec"])?))
    }),
    ("**SUBACK p50 / p90 / p99 / max (ms)**", |v| {
        let ms = |k: &str| num(v, &["suback_us", k]).map(|us| us / 1000.0);
        Some(format!(
            "**{:.2} / {:.2} / {:.2} / {:.2}**",
            ms("p50")?,
            ms("p90")?,
            ms("p99")?,
            ms("max")?
        ))
    }),
    ("SUBACKs (refused)", |v| {
        Some(format!(
            "{} ({})",
            num(v, &["subscribes"])?,
            num(v, &["refused"])?
        ))
    }),
    ("cross-node lost / published", |v| {
        Some(format!(
            "{} / {}",
            num(v, &["cross_node", "lost"])?,
            num(v, &["cross_node", "published"])?
        ))
    }),
    ("cross-node delivery p50 / p99 (ms)", |v| {
        let ms = |k: &str| num(v, &["cross_node", "delivery_us", k]).map(|us| us / 1000.0);
        Some(format!("{:.2} / {:.2}", ms("p50")?, ms("p99")?))
    }),
    ("PUBACK 0x10 no matching subscribers", |v| {
        Some(format!(
            "{}",
            num(v, &["cross_node", "puback_no_matching_subscribers"])?
        ))
    }),
    ("CPU broker / load generator (%)", cpu_cell),
];

fn render(brokers: &[(String, Vec<Value>)]) -> String {
    // (label, scenario), merged in each broker's order: a label only one broker has (the
    // other did not run it) goes right after the label that preceded it there.
    let mut labels: Vec<(String, String)> = Vec::new();
    for (_, reports) in brokers {
        let mut after = None;
        for r in reports {
            let label = r.get("label").and_then(Value::as_str).unwrap_or("?");
            let scenario = r.get("scenario").and_then(Value::as_str).unwrap_or("?");
            let at = match labels.iter().position(|(l, _)| l == label) {
                Some(i) => i,
                None => {
                    let i = after.map_or(labels.len(), |a: usize| a + 1);
                    labels.insert(i, (label.to_owned(), scenario.to_owned()));
                    i
                }
            };
            after = Some(at);
        }
    }
    let mut out = String::from("| scenario | metric |");
    for (name, _) in brokers {
        let _ = write!(out, " {name} |");
    }
    out.push_str("\n|---|---|");
    for _ in brokers {
        out.push_str("--:|");
    }
    out.push('\n');
    for (label, scenario) in &labels {
        let metrics = match scenario.as_str() {
            "idle" => IDLE_METRICS,
            "throughput" => THROUGHPUT_METRICS,
            "round-trip" => ROUND_TRIP_METRICS,
            "subscribe-latency" => SUBSCRIBE_LATENCY_METRICS,
            _ => continue,
        };
        for (i, (metric, get)) in metrics.iter().enumerate() {
            let first = if i == 0 { label.as_str() } else { "" };
            let _ = write!(out, "| {first} | {metric} |");
            for (_, reports) in brokers {
                let report = reports
                    .iter()
                    .find(|r| r.get("label").and_then(Value::as_str) == Some(label));
                let cell = match report {
                    Some(r) if r.get("run_failed").is_some() => "failed".to_owned(),
                    Some(r) => get(r).unwrap_or_else(|| "—".to_owned()),
                    None => "not run".to_owned(),
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_column_per_broker_and_tells_failed_runs_from_runs_not_made() -> Result<()> {
        let a = parse_lines(concat!(
            // `failed` here counts connections that failed (an idle report's field), not a failed run.
            r#"{"scenario":"idle","label":"idle 10","connected":10,"connections_requested":10,"failed":0,"#,
            r#""connections_per_sec":500.0,"broker_rss_before_kib":1024,"broker_rss_after_kib":2048,"#,
            r#""broker_kib_per_connection":102.4}"#,
            "\n",
            r#"{"scenario":"throughput","label":"qos0","published_per_sec":10.0,"delivered_per_sec":9.0,"#,
            r#""latency_us":{"samples":9,"p50":1500.0,"p90":1800.0,"p99":2000.0,"p999":2500.0,"max":3000.0},"#,
            r#""lost":1,"duplicated":0,"reordered":2,"unacked":0}"#,
            "\n",
            r#"{"scenario":"throughput","label":"stalled","published_per_sec":10.0,"delivered_per_sec":0.0,"#,
            r#""latency_us":{"samples":0,"p50":0.0,"p99":0.0,"max":0.0},"lost":9,"duplicated":0,"unacked":0}"#,
            "\n"
        ))?;
        let b = parse_lines(concat!(
            r#"{"scenario":"throughput","label":"qos0","published_per_sec":20.0,"delivered_per_sec":20.0,"#,
            r#""latency_us":{"samples":20,"p50":500.0,"p99":900.0,"max":1000.0},"lost":0,"duplicated":0,"unacked":0}"#,
            "\n",
            r#"{"scenario":"throughput","label":"stalled","run_failed":"timed out after 60 s"}"#,
            "\n",
            r#"{"scenario":"round-trip","label":"rtt","round_trips_per_sec":4321.4,"#,
            r#""latency_us":{"samples":20,"p50":200.0,"p90":300.0,"p99":400.0,"p999":500.0,"max":600.0},"#,
            r#""lost":0,"duplicated":0,"reordered":0,"unacked":0}"#
        ))?;
        let table = render(&[("roost".into(), a), ("other".into(), b)]);
        assert!(table.starts_with("| scenario | metric | roost | other |\n|---|---|--:|--:|\n"));
        assert!(table.contains("| idle 10 | connections established | 10 / 10 | not run |"));
        assert!(table.contains("| **broker memory per connection (KiB)** | **102.40** | not run |"));
        assert!(table.contains("| qos0 | published (msg/s) | 10 | 20 |"));
        assert!(table.contains("| stalled | published (msg/s) | 10 | failed |"));
        assert!(
            table.contains(
                "| latency p50 / p90 / p99 / p99.9 / max (ms) | 1.50 / 1.80 / 2.00 / 2.50 / 3.00 \
                 | 0.50 / — / 0.90 / — / 1.00 |"
            ),
            "{table}"
        );
        assert!(table.contains(
            "| lost / duplicated / reordered / unacked | 1 / 0 / 2 / 0 | 0 / 0 / — / 0 |"
        ));
        assert!(table.contains("| CPU broker / load generator (%) | — | — |"));
        assert!(
            table.contains("| latency p50 / p90 / p99 / p99.9 / max (ms) | — | failed |"),
            "a run written as failed: {table}"
        );
        assert!(
            table.contains("| rtt | **round trips/s** | not run | **4321** |"),
            "{table}"
        );
        assert!(
            table.contains("| 0.20 / 0.30 / 0.40 / 0.50 / 0.60 |"),
            "{table}"
        );
        Ok(())
    }

    #[test]
    fn rows_keep_the_run_order_when_one_broker_misses_a_run() -> Result<()> {
        let line = |label: &str| {
            format!(r#"{{"scenario":"throughput","label":"{label}","published_per_sec":1.0}}"#)
        };
        let a = parse_lines(&[line("one"), line("three")].join("\n"))?;
        let b = parse_lines(&[line("one"), line("two"), line("three")].join("\n"))?;
        let table = render(&[("a".into(), a), ("b".into(), b)]);
        let rows: Vec<&str> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" |").next())
            .filter(|l| !l.is_empty() && *l != "scenario")
            .collect();
        assert_eq!(rows, ["one", "two", "three"], "{table}");
        Ok(())
    }

    #[test]
    fn renders_subscribe_latency_runs_side_by_side() -> Result<()> {
        let new = parse_lines(concat!(
            r#"{"scenario":"subscribe-latency","label":"follower","subscribes_per_sec":250.4,"#,
            r#""subscribes":1000,"refused":0,"#,
            r#""suback_us":{"samples":1000,"p50":4000.0,"p90":6000.0,"p99":9000.0,"max":12000.0},"#,
            r#""cross_node":{"published":1000,"lost":0,"puback_no_matching_subscribers":0,"#,
            r#""delivery_us":{"p50":500.0,"p99":1500.0}}}"#
        ))?;
        let existing = parse_lines(concat!(
            r#"{"scenario":"subscribe-latency","label":"follower","subscribes_per_sec":9000.0,"#,
            r#""subscribes":1000,"refused":0,"cross_node":null,"#,
            r#""suback_us":{"samples":1000,"p50":100.0,"p90":200.0,"p99":300.0,"max":400.0}}"#
        ))?;
        let table = render(&[("new".into(), new), ("existing".into(), existing)]);
        assert!(
            table.contains("| follower | subscribes/s | 250 | 9000 |"),
            "{table}"
        );
        assert!(table.contains(
            "| **SUBACK p50 / p90 / p99 / max (ms)** | **4.00 / 6.00 / 9.00 / 12.00** | \
             **0.10 / 0.20 / 0.30 / 0.40** |"
        ));
        assert!(
            table.contains("| cross-node lost / published | 0 / 1000 | — |"),
            "{table}"
        );
        assert!(table.contains("| cross-node delivery p50 / p99 (ms) | 0.50 / 1.50 | — |"));
        Ok(())
    }
}
