//! Logging and metrics set-up: structured `tracing` logs whose filter can be changed at run
//! time (admin API `PUT /api/v1/log-level`), and the global Prometheus recorder.
//!
//! Both are process-wide: the binary calls [`init_logging`] once; [`prometheus`] installs the
//! recorder on first use and hands the same handle to every node in the process (tests start
//! several nodes in one process).
//!
//! The recorder renders every histogram as a Prometheus histogram (`_bucket{le=...}`, so
//! `histogram_quantile` can add up nodes and peers), with the buckets [`builder`] gives each
//! name. A histogram keeps each recorded value in memory until it is folded into its buckets:
//! a scrape does that, and so does an upkeep thread every [`UPKEEP_EVERY`], so a node nobody
//! scrapes holds a few seconds' worth, not everything since it started.
//!
//! Process metrics (`process_*`: CPU seconds, resident and virtual memory, open and maximum
//! file descriptors, threads, start time) come from the `metrics-process` collector, read
//! from `/proc` at each scrape ([`collect_process`]); on other systems it has what the
//! platform offers.

use crate::config::{LogConfig, LogFormat};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
}

impl LogHandle {
    /// The filter directives in force.
    pub fn current(&self) -> String {
        self.current.lock().clone()
    }

    /// Replaces the filter; the error says why the directives were rejected.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        crate::config::validate_log_level(directives).map_err(|e| e.to_string())?;
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        self.reload.reload(filter).map_err(|e| e.to_string())?;
        *self.current.lock() = directives.to_owned();
        Ok(())
    }
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogInitError {
    /// `log.level` is not a valid filter.
    #[error("log.level {level:?}: {source}")]
    Level {
        /// The directives.
        level: String,
        /// Why they were rejected.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was installed already.
    #[error("a global log subscriber is already installed: {0}")]
    Installed(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber. Call once, after the config validated.
pub fn init_logging(cfg: &LogConfig) -> Result<LogHandle, LogInitError> {
    let filter = EnvFilter::try_new(&cfg.level).map_err(|source| LogInitError::Level {
        level: cfg.level.clone(),
        source,
    })?;
    let (layer, reload) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(layer);
    match cfg.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init()?,
    }
    Ok(LogHandle {
        reload,
        current: Arc::new(Mutex::new(cfg.level.clone())),
    })
}

/// Latencies and durations (every `*_seconds` histogram without buckets of its own): 50 µs to
/// 10 s in 1-2.5-5 steps, 17 buckets (+Inf). From a loopback delivery to a forward held up by
/// backpressure; past 10 s it is an outage more than a latency.
pub(crate) const SECONDS_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// `roost_raft_snapshot_duration_seconds`: a snapshot is copied, serialised and fsynced, which
/// takes milliseconds for a small state and minutes for a huge one: 10 ms to 250 s.
pub(crate) const SNAPSHOT_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0,
];

/// `roost_cluster_forward_batch_messages`: powers of two up to the forwarder's batch bound
/// (256 messages).
pub(crate) const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How often recorded histogram values are folded into their buckets between scrapes.
pub(crate) const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The exporter as Roost configures it: the buckets of each histogram (a full name wins over
/// the `_seconds` suffix).
fn builder() -> PrometheusBuilder {
    let buckets = [
        (
            Matcher::Full(roost_cluster::metrics::RAFT_SNAPSHOT_DURATION.to_owned()),
            &SNAPSHOT_BUCKETS[..],
        ),
        (
            Matcher::Full(roost_cluster::metrics::FORWARD_BATCH_MESSAGES.to_owned()),
            &BATCH_BUCKETS[..],
        ),
        (Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS[..]),
    ];
    let mut b = PrometheusBuilder::new();
    for (matcher, values) in buckets {
        b = b
            .set_buckets_for_metric(matcher, values)
            .expect("only an empty bucket list is refused");
    }
    b
}

/// The process metrics collector (`process_*`), described once with the recorder.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Reads the process metrics into the registry (called at each scrape). It lists
/// `/proc/self/fd`, one entry per open connection: call it off the async workers.
pub(crate) fn collect_process() {
    process_collector().collect();
}

/// The process's Prometheus recorder, installed on first call. `None` if another recorder
/// was installed by someone else.
pub(crate) fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = builder().install_recorder().ok()?;
            crate::metrics::describe();
            roost_cluster::metrics::describe();
            process_collector().describe();
            let upkeep = handle.clone();
            // A thread rather than a task: the recorder outlives any one runtime (tests start
            // and stop several).
            let spawned = std::thread::Builder::new()
                .name("roost-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread: histograms are folded only when scraped");
            }
            Some(handle)
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every histogram Roost records renders as a Prometheus histogram with its own buckets,
    /// not as a summary (so `histogram_quantile` works across nodes).
    #[test]
    fn histograms_render_with_their_buckets() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(crate::metrics::DELIVERY_LATENCY, "path" => "local")
                .record(0.000_07);
            metrics::histogram!("roost_cluster_forward_ack_latency_seconds", "peer" => "2")
                .record(3.0);
            metrics::histogram!(roost_cluster::metrics::FORWARD_BATCH_MESSAGES, "peer" => "2")
                .record(200.0);
            metrics::histogram!(roost_cluster::metrics::RAFT_SNAPSHOT_DURATION).record(30.0);
        });
        let text = handle.render();
        for line in [
            "# TYPE roost_delivery_latency_seconds histogram",
            "roost_delivery_latency_seconds_bucket{path=\"local\",le=\"0.00005\"} 0",
            "roost_delivery_latency_seconds_bucket{path=\"local\",le=\"0.0001\"} 1",
            "roost_delivery_latency_seconds_bucket{path=\"local\",le=\"10\"} 1",
            "roost_delivery_latency_seconds_count{path=\"local\"} 1",
            "roost_cluster_forward_ack_latency_seconds_bucket{peer=\"2\",le=\"2.5\"} 0",
            "roost_cluster_forward_ack_latency_seconds_bucket{peer=\"2\",le=\"5\"} 1",
            "roost_cluster_forward_batch_messages_bucket{peer=\"2\",le=\"128\"} 0",
            "roost_cluster_forward_batch_messages_bucket{peer=\"2\",le=\"256\"} 1",
            "roost_raft_snapshot_duration_seconds_bucket{le=\"25\"} 0",
            "roost_raft_snapshot_duration_seconds_bucket{le=\"50\"} 1",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("quantile="), "a summary is left:\n{text}");
    }
}
