//! `throughput`: messages per second through the broker, publish-to-delivery latency, and
//! whether anything was lost, duplicated or reordered.
//!
//! ```text
//!  S subscribers: SUBSCRIBE at --qos (the filter depends on the pattern, below), SUBACK
//!  P publishers:  PUBLISH bench/{p % T} at --qos, as fast as the window / TCP allow
//!                 (QoS 0: keep the socket full; QoS 1/2: at most --window unacknowledged)
//!  t0 ── warm-up (1 s) ── warm ── --duration-secs ── end ── drain (≤ --drain-secs) ── DISCONNECT
//!                           └──── rates, latency, CPU ────┘
//!  └───────────── per-second series: sent, received, latency p50/p99 ─────────────┘
//! ```
//!
//! Patterns (the shapes other brokers publish their numbers for):
//!
//! ```text
//!  pairs (default)  pub p -> bench/{p % T}   sub k <- bench/{k % T}     T = min(P, S)
//!  --fanout         pub p -> bench/{p % T}   every sub <- bench/#       T = min(P, S)
//!  --fan-in         pub p -> bench/{p % T}   every sub <- bench/#       T = P (e.g. P=50, S=1)
//!  --shared GROUP   pub p -> bench/{p % T}   sub k <- $share/GROUP/bench/#   T = P:
//!                   every message goes to exactly one member of the group
//! ```
//!
//! `--fanout` and `--fan-in` differ only in the default topic count and the label: the first
//! is "one message, many receivers", the second "many senders, one receiver". `--topics`
//! overrides T for any pattern. Where connections go (`--nodes`, `--pub-nodes`,
//! `--sub-nodes`): [`crate::target`].
//!
//! Everything runs in this one process, so a publisher stamps each payload with the
//! monotonic time since the shared start `t0` and the subscriber subtracts it from its own
//! reading of the same clock: no clock skew, also across cluster nodes. Payload layout
//! (big-endian), padded to `--payload` bytes:
//!
//! ```text
//!  0..8 send time (ns since t0) | 8..16 sequence (per publisher, from 0)
//!  16..20 publisher index       | 20..24 run tag (our pid; other runs' messages are ignored)
//! ```
//!
//! Counted over the measurement window [warm, end): messages published (queued for QoS 0,
//! sent for QoS 1/2) and delivered (received by any subscriber), each divided by the window.
//! Latency covers every message *sent* in the window, including those that arrive during the
//! drain, so a backlog shows up in the tail instead of disappearing (HdrHistogram, 3
//! significant digits: [`crate::latency`]). The per-second series covers the whole run, each
//! message in the second it was sent (`sent`) or received (`received`, latency):
//! [`crate::series`]; `--plot DIR` draws it ([`crate::plot`]).
//!
//! Loss, duplication and reordering are counted over the whole run per (publisher,
//! subscriber) pair from the sequence numbers: every message a publisher sent (and, for QoS
//! 1/2, had acknowledged) must reach every subscriber whose filter matches its topic exactly
//! once, and a pair is reordered each time a message arrives with a lower sequence number than
//! the one before it from the same publisher (MQTT keeps one publisher's messages on one topic
//! in order, §4.6). With `--shared` the group is the receiver: each message must reach exactly
//! one member, a message two members got counts as duplicated, and reordering is counted per
//! (publisher, member). At QoS 0 the broker may drop (its queues are bounded), so "lost" there
//! is reported but is not a fault.
//!
//! The load generator competes with the broker for the same cores; the report includes both
//! processes' CPU use over the window (the broker's with `--broker-pid`).

use crate::client::{Client, ConnectOptions, Event};
use crate::join_all;
use crate::latency::LatencyReport;
use crate::plot;
use crate::procfs;
use crate::progress::{self, RateBar};
use crate::series::{Batch, Recorder, SecondPoint};
use crate::target::{NodeArgs, Placement, UsageError};
use crate::{Common, MessageArgs};
use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use roost_codec::{Ack, Packet, PacketId, Properties, Publish, QoS};
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of the payload header (time, sequence, publisher, run tag).
const HEADER_LEN: usize = 24;
/// A subscriber stops draining once nothing has arrived for this long.
const QUIET: Duration = Duration::from_millis(500);
/// A publisher stops queueing while this many bytes wait for the socket (QoS 0 backpressure).
const WRITE_HIGH_WATER: usize = 16 * 1024;
/// Largest sequence number a subscriber tracks (a bitmap of 32 MiB per pair at most); larger
/// ones cannot come from this run and are counted as foreign.
const MAX_TRACKED_SEQ: u64 = 1 << 28;
/// Keep-alive announced by throughput clients; PINGREQ every half of it.
const KEEP_ALIVE_SECS: u16 = 30;
/// Problem pairs listed in the report (the totals always cover all pairs).
const MAX_LISTED_PAIRS: usize = 100;
/// Bytes of the payload header, for the other scenarios that use it.
pub(crate) const PAYLOAD_HEADER_LEN: usize = HEADER_LEN;

/// Arguments of `roost-loadgen throughput`.
#[derive(Debug, clap::Args)]
pub(crate) struct ThroughputArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Publishing connections.
    #[arg(long, default_value_t = 4)]
    pub(crate) publishers: usize,
    /// Subscribing connections.
    #[arg(long, default_value_t = 4)]
    pub(crate) subscribers: usize,
    #[command(flatten)]
    pub(crate) message: MessageArgs,
    /// Warm-up before the window; its messages count for loss but not for rates or latency.
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup_secs: u64,
    /// Number of topics bench/0..T-1: publisher p publishes to bench/{p % T} and (without a
    /// pattern) subscriber k subscribes to bench/{k % T}. Default min(publishers,
    /// subscribers), so every publisher has a subscriber; with --fan-in or --shared, the
    /// publishers.
    #[arg(long)]
    pub(crate) topics: Option<usize>,
    /// Fan-out: every subscriber subscribes to bench/# and receives every message.
    #[arg(long, group = "pattern")]
    pub(crate) fanout: bool,
    /// Fan-in: many publishers, each on its own topic, into subscribers on bench/# (usually
    /// --subscribers 1).
    #[arg(long, group = "pattern")]
    pub(crate) fan_in: bool,
    /// Shared subscription: every subscriber subscribes to $share/GROUP/bench/#, so each
    /// message goes to one member; loss and duplicates are counted over the group.
    #[arg(long, value_name = "GROUP", group = "pattern")]
    pub(crate) shared: Option<String>,
    #[command(flatten)]
    pub(crate) nodes: NodeArgs,
    /// Write SVG plots of throughput and latency per second into DIR (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) plot: Option<PathBuf>,
    /// Most unacknowledged QoS 1/2 publishes per publisher (also capped by the broker's
    /// Receive Maximum).
    #[arg(long, default_value_t = 16)]
    pub(crate) window: u16,
    /// Messages per second per publisher; 0 publishes as fast as the window and TCP allow.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// After the window, the most seconds publishers wait for outstanding acks and
    /// subscribers for messages still on their way (a subscriber stops earlier once nothing
    /// has arrived for 0.5 s). What has not arrived by then counts as lost.
    #[arg(long, default_value_t = 5)]
    pub(crate) drain_secs: u64,
}

/// How publishers and subscribers meet (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Pairs,
    FanOut,
    FanIn,
    Shared,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Pairs => "pairs",
            Pattern::FanOut => "fan-out",
            Pattern::FanIn => "fan-in",
            Pattern::Shared => "shared",
        }
    }
}

impl ThroughputArgs {
    fn pattern(&self) -> Pattern {
        if self.fanout {
            Pattern::FanOut
        } else if self.fan_in {
            Pattern::FanIn
        } else if self.shared.is_some() {
            Pattern::Shared
        } else {
            Pattern::Pairs
        }
    }

    fn topic_count(&self) -> usize {
        let default = match self.pattern() {
            Pattern::Pairs | Pattern::FanOut => self.publishers.min(self.subscribers),
            Pattern::FanIn | Pattern::Shared => self.publishers,
        };
        self.topics.unwrap_or(default).max(1)
    }

    /// Subscriber `k`'s filter.
    fn filter(&self, k: usize) -> String {
        match (self.pattern(), &self.shared) {
            (Pattern::Pairs, _) => format!("bench/{}", k % self.topic_count()),
            (Pattern::Shared, Some(group)) => format!("$share/{group}/bench/#"),
            _ => "bench/#".to_owned(),
        }
    }

    /// Whether publisher `p`'s messages reach subscriber `k` (for a shared group: may reach).
    fn matches(&self, p: usize, k: usize) -> bool {
        match self.pattern() {
            Pattern::Pairs => p % self.topic_count() == k % self.topic_count(),
            Pattern::FanOut | Pattern::FanIn | Pattern::Shared => true,
        }
    }

    fn label(&self) -> String {
        if let Some(label) = &self.common.label {
            return label.clone();
        }
        let pattern = match (self.pattern(), &self.shared) {
            (Pattern::Pairs, _) => String::new(),
            (Pattern::FanOut, _) => " fanout".to_owned(),
            (Pattern::FanIn, _) => " fan-in".to_owned(),
            (Pattern::Shared, group) => format!(" shared={}", group.as_deref().unwrap_or("")),
        };
        format!(
            "throughput {}x{}{pattern} qos{} {}B",
            self.publishers, self.subscribers, self.message.qos, self.message.payload
        )
    }

    fn validate(&self) -> Result<(), UsageError> {
        let bad = |m: String| Err(UsageError(m));
        if self.publishers == 0 || self.subscribers == 0 {
            return bad("--publishers and --subscribers must be at least 1".into());
        }
        self.message.validate()?;
        if self.topics == Some(0) {
            return bad("--topics must be at least 1".into());
        }
        if let Some(group) = &self.shared {
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return bad(format!(
                    "--shared {group:?}: a share name is not empty and has no '/', '+' or '#' \
                     [MQTT-4.8.2-1] [MQTT-4.8.2-2]"
                ));
            }
        }
        if self.drain_secs > 600 {
            return bad(format!("--drain-secs {} is above 600", self.drain_secs));
        }
        if self.window == 0 {
            return bad("--window must be at least 1".into());
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return bad(format!(
                "--rate {} must be 0 or a positive number",
                self.rate
            ));
        }
        let connections = self.publishers + self.subscribers;
        procfs::check_open_files(
            connections as u64 + 64,
            &format!("{connections} connections"),
        )
    }
}

/// The shared clock of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeline {
    pub(crate) t0: Instant,
    pub(crate) warm: Instant,
    pub(crate) end: Instant,
    /// Longest wait after `end` for acks and deliveries (`--drain-secs`).
    pub(crate) drain: Duration,
}

impl Timeline {
    /// Starts now: `warmup` then `duration`, then at most `drain`.
    pub(crate) fn starting_now(warmup: u64, duration: u64, drain: u64) -> Timeline {
        let t0 = Instant::now();
        let warm = t0 + Duration::from_secs(warmup);
        Timeline {
            t0,
            warm,
            end: warm + Duration::from_secs(duration),
            drain: Duration::from_secs(drain),
        }
    }

    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_nanos() as u64
    }

    pub(crate) fn in_window(&self, at: Instant) -> bool {
        at >= self.warm && at < self.end
    }

    /// The measurement window, seconds.
    pub(crate) fn window_secs(&self) -> f64 {
        self.end.saturating_duration_since(self.warm).as_secs_f64()
    }
}

/// What one publisher did.
#[derive(Debug, Default)]
struct PublisherResult {
    /// Messages queued, sequence numbers 0..sent.
    sent: u64,
    /// Of those, queued during the window.
    sent_in_window: u64,
    /// QoS 1/2 messages never acknowledged (still in the window after the drain).
    unacked: Vec<u64>,
    /// Acks with an error reason code (v5).
    errors: u64,
    /// Messages sent per second of the run.
    per_second: Vec<u64>,
}

/// Which sequence numbers of one publisher a subscriber has seen (a growable bitmap), how
/// many arrived twice, and how many arrived after a higher one.
#[derive(Debug, Default, Clone)]
pub(crate) struct SeqSet {
    words: Vec<u64>,
    pub(crate) duplicates: u64,
    /// Messages (not duplicates) whose sequence is below the previous message's.
    pub(crate) reordered: u64,
    last: Option<u64>,
}

impl SeqSet {
    /// Marks `seq` seen; counts a duplicate if it already was, else a reordering if it is
    /// below the sequence received just before.
    pub(crate) fn insert(&mut self, seq: u64) {
        let word = (seq / 64) as usize;
        if word >= self.words.len() {
            self.words.resize((word + 1).next_power_of_two(), 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.words[word] & bit != 0 {
            self.duplicates += 1;
        } else if self.last.is_some_and(|last| seq < last) {
            self.reordered += 1;
        }
        self.words[word] |= bit;
        self.last = Some(seq);
    }

    /// Adds the sequences `other` saw (not its counters); returns how many both saw.
    fn union_with(&mut self, other: &SeqSet) -> u64 {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        let mut both = 0;
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            both += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        both
    }

    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// How many of 0..n were seen.
    pub(crate) fn count_below(&self, n: u64) -> u64 {
        let full = (n / 64) as usize;
        let mut count: u64 = self
            .words
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = n % 64;
        if rest > 0 {
            if let Some(w) = self.words.get(full) {
                count += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        count
    }
}

/// What one subscriber saw (its latencies went to the run's [`Recorder`]).
#[derive(Debug)]
struct SubscriberResult {
    delivered_in_window: u64,
    /// One per publisher.
    seen: Vec<SeqSet>,
    /// Messages that were not from this run's publishers.
    foreign: u64,
}

/// Loss, duplication or reordering between one publisher and one subscriber (with
/// `--shared`: the whole group, `subscriber` null).
#[derive(Debug, Serialize)]
pub(crate) struct PairReport {
    pub(crate) publisher: usize,
    pub(crate) subscriber: Option<usize>,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
}

/// What `throughput` measured (one JSON object with `--json`).
#[derive(Debug, Serialize)]
pub(crate) struct ThroughputReport {
    pub(crate) scenario: &'static str,
    pub(crate) label: String,
    pub(crate) protocol: &'static str,
    /// `tcp`, `tls` or `quic`.
    pub(crate) transport: &'static str,
    pub(crate) publishers: usize,
    pub(crate) subscribers: usize,
    pub(crate) topics: usize,
    /// `pairs`, `fan-out`, `fan-in` or `shared`.
    pub(crate) pattern: &'static str,
    pub(crate) fanout: bool,
    /// The share name with `--shared`.
    pub(crate) shared_group: Option<String>,
    /// Nodes the publishers and the subscribers connected to (round-robin), as given.
    pub(crate) pub_nodes: Vec<String>,
    pub(crate) sub_nodes: Vec<String>,
    pub(crate) qos: u8,
    pub(crate) payload_bytes: usize,
    /// Effective per-publisher window (QoS 1/2).
    pub(crate) window: u16,
    /// Messages per second per publisher; `None`: unlimited.
    pub(crate) rate_per_publisher: Option<f64>,
    pub(crate) warmup_secs: u64,
    pub(crate) duration_secs: u64,
    /// Measurement window, seconds (the duration, as actually elapsed).
    pub(crate) window_secs: f64,
    pub(crate) published: u64,
    pub(crate) published_per_sec: f64,
    pub(crate) delivered: u64,
    pub(crate) delivered_per_sec: f64,
    pub(crate) latency_us: LatencyReport,
    /// Whole run: messages sent by all publishers.
    pub(crate) sent_total: u64,
    /// Whole run: (message, matching subscriber) pairs that must be delivered.
    pub(crate) expected_deliveries: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    /// Messages that arrived after a later one of the same publisher (per pair).
    pub(crate) reordered: u64,
    pub(crate) unacked: u64,
    pub(crate) publish_errors: u64,
    pub(crate) foreign: u64,
    /// Pairs with loss, duplicates or reordering (at most 100 listed).
    pub(crate) problem_pairs: Vec<PairReport>,
    pub(crate) problem_pair_count: usize,
    /// CPU over the window, broker memory at its end (top-level fields in the JSON).
    #[serde(flatten)]
    pub(crate) usage: Usage,
    /// Per second since the start of the warm-up: sent, received, latency p50/p99.
    pub(crate) series: Vec<SecondPoint>,
    /// SVG files written by `--plot`.
    pub(crate) plots: Vec<String>,
}

/// CPU and memory sampled around the window ([`sample_usage`]).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Usage {
    pub(crate) broker_cpu_percent: Option<f64>,
    pub(crate) loadgen_cpu_percent: Option<f64>,
    pub(crate) broker_rss_kib: Option<u64>,
    pub(crate) broker_peak_rss_kib: Option<u64>,
}

impl Usage {
    /// The reports' `cpu` line (no newline).
    pub(crate) fn write_cpu(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpu = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} %"));
        write!(
            f,
            "  cpu        broker {}, load generator {} (100 % = one core)",
            cpu(self.broker_cpu_percent),
            cpu(self.loadgen_cpu_percent)
        )
    }
}

/// Runs the scenario with connections placed by `nodes` and returns its report.
pub(crate) async fn run(args: &ThroughputArgs, nodes: &Placement) -> Result<ThroughputReport> {
    args.validate()?;
    let protocol = args.common.protocol();
    let qos = args.message.qos();
    let topics = args.topic_count();
    let run_tag = std::process::id();
    let dialer = args.common.transport.dialer()?;
    let options = |role: &str, i: usize| ConnectOptions {
        dialer: dialer.clone(),
        client_id: format!("roost-bench-{run_tag}-{role}-{i}"),
        protocol,
        keep_alive: KEEP_ALIVE_SECS,
        read_chunk: 64 * 1024,
        session_expiry: None,
    };

    // Subscribers first, so nothing published is missed.
    let mut connecting = Vec::new();
    for k in 0..args.subscribers {
        let filter = args.filter(k);
        let opts = options("sub", k);
        let addr = nodes.subscriber(k);
        connecting.push(tokio::spawn(async move {
            let mut client = Client::connect(addr, &opts).await?;
            client.subscribe(&[filter], qos).await?;
            Ok::<_, anyhow::Error>(client)
        }));
    }
    let subscribers = join_all(connecting)
        .await
        .context("cannot set up subscribers")?;
    let mut connecting = Vec::new();
    for p in 0..args.publishers {
        let opts = options("pub", p);
        let addr = nodes.publisher(p);
        connecting.push(tokio::spawn(
            async move { Client::connect(addr, &opts).await },
        ));
    }
    let publishers = join_all(connecting)
        .await
        .context("cannot set up publishers")?;
    let window = publishers
        .iter()
        .map(Client::server_receive_maximum)
        .fold(args.window, u16::min);
    eprintln!(
        "throughput: {} publishers, {} subscribers connected ({}); running {} s warm-up + {} s",
        args.publishers,
        args.subscribers,
        args.pattern().name(),
        args.warmup_secs,
        args.message.duration_secs
    );

    let timeline = Timeline::starting_now(
        args.warmup_secs,
        args.message.duration_secs,
        args.drain_secs,
    );
    let recorder = Arc::new(Recorder::new(timeline.t0));
    let bar = RateBar::start(
        progress::enabled(args.common.no_progress),
        "throughput",
        timeline.t0,
        timeline.end - timeline.t0,
        recorder.clone(),
    );
    let usage = tokio::spawn(sample_usage(timeline, args.common.broker_pid));
    let mut sub_tasks = Vec::new();
    for (k, client) in subscribers.into_iter().enumerate() {
        let sub = Subscriber {
            client,
            publishers: args.publishers,
            run_tag,
            timeline,
            recorder: recorder.clone(),
        };
        sub_tasks.push(tokio::spawn(async move {
            sub.run().await.with_context(|| format!("subscriber {k}"))
        }));
    }
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let mut pub_tasks = Vec::new();
    for (p, client) in publishers.into_iter().enumerate() {
        let publisher = Publisher {
            client,
            index: p as u32,
            run_tag,
            topic: format!("bench/{}", p % topics),
            qos,
            payload_len: args.message.payload,
            window: usize::from(window),
            interval,
            timeline,
            recorder: recorder.clone(),
        };
        pub_tasks.push(tokio::spawn(async move {
            publisher
                .run()
                .await
                .with_context(|| format!("publisher {p}"))
        }));
    }
    let published = join_all(pub_tasks).await;
    let received = join_all(sub_tasks).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    let (published, received) = (published?, received?);
    let usage = usage.await.context("usage sampler failed")??;
    for p in &published {
        recorder.add_sent(&p.per_second);
    }
    let (latency, series) = recorder.finish();
    let mut report = summarize(
        args,
        nodes,
        window,
        timeline.window_secs(),
        &published,
        &received,
        usage,
    );
    report.latency_us = latency.report();
    report.series = series;
    if let Some(dir) = &args.plot {
        report.plots = plot::write_run(dir, &report.label, &report.series)?;
    }
    Ok(report)
}

/// Reads CPU time at `warm` and at `end`, and memory at `end`.
pub(crate) async fn sample_usage(timeline: Timeline, broker_pid: Option<u32>) -> Result<Usage> {
    let broker = broker_pid.map(|pid| pid.to_string());
    let read_cpu = |who: Option<&str>| who.map(procfs::cpu_secs).transpose();
    tokio::time::sleep_until(timeline.warm.into()).await;
    let broker_start = read_cpu(broker.as_deref())?;
    let self_start = procfs::cpu_secs("self")?;
    tokio::time::sleep_until(timeline.end.into()).await;
    let broker_end = read_cpu(broker.as_deref())?;
    let self_end = procfs::cpu_secs("self")?;
    let secs = timeline
        .end
        .saturating_duration_since(timeline.warm)
        .as_secs_f64()
        .max(1e-9);
    let percent = |a: f64, b: f64| (b - a) / secs * 100.0;
    Ok(Usage {
        broker_cpu_percent: broker_start.zip(broker_end).map(|(a, b)| percent(a, b)),
        loadgen_cpu_percent: Some(percent(self_start, self_end)),
        broker_rss_kib: broker_pid.map(procfs::rss_kib).transpose()?,
        broker_peak_rss_kib: broker_pid.map(procfs::peak_rss_kib).transpose()?,
    })
}

/// One publishing connection.
struct Publisher {
    client: Client,
    index: u32,
    run_tag: u32,
    topic: String,
    qos: QoS,
    payload_len: usize,
    /// Most unacknowledged QoS 1/2 publishes.
    window: usize,
    /// Time between two publishes when `--rate` is set.
    interval: Option<Duration>,
    timeline: Timeline,
    recorder: Arc<Recorder>,
}

impl Publisher {
    /// Publishes until `end`, then waits (at most `--drain-secs`) for outstanding acks and
    /// disconnects.
    async fn run(mut self) -> Result<PublisherResult> {
        let t = self.timeline;
        let mut result = PublisherResult::default();
        // Packet id and sequence of each unacknowledged publish; at most `window` entries, so
        // a linear scan is the cheapest lookup.
        let mut inflight: Vec<(PacketId, u64)> = Vec::with_capacity(self.window);
        let mut packet = Packet::Publish(Publish {
            dup: false,
            qos: self.qos,
            retain: false,
            topic: self.topic.clone(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::new(),
        });
        let mut scratch = BytesMut::new();
        let mut deadline = pin!(tokio::time::sleep_until(t.end.into()));
        let mut pace = pin!(tokio::time::sleep_until(t.t0.into()));
        let mut pacing = false;
        let mut next_due = t.t0;
        let mut stopping = false;
        let ping_period = Duration::from_secs(u64::from(KEEP_ALIVE_SECS / 2));
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_period, ping_period);
        loop {
            let mut burst = 0;
            while !stopping
                && !pacing
                && (self.qos == QoS::AtMostOnce || inflight.len() < self.window)
                && self.client.pending_write() < WRITE_HIGH_WATER
            {
                let now = Instant::now();
                if let Some(interval) = self.interval {
                    if now < next_due {
                        pace.as_mut().reset(next_due.into());
                        pacing = true;
                        break;
                    }
                    next_due += interval;
                }
                let seq = result.sent;
                write_header(
                    &mut scratch,
                    self.payload_len,
                    t.nanos(now),
                    seq,
                    self.index,
                    self.run_tag,
                );
                let packet_id = (self.qos != QoS::AtMostOnce).then(|| {
                    let id = self.client.next_packet_id();
                    inflight.push((id, seq));
                    id
                });
                if let Packet::Publish(p) = &mut packet {
                    p.packet_id = packet_id;
                    p.payload = scratch.split().freeze();
                }
                self.client.queue(&packet)?;
                if let Packet::Publish(p) = &mut packet {
                    // Let `scratch.reserve` reuse the allocation.
                    p.payload = Bytes::new();
                }
                result.sent += 1;
                burst += 1;
                if t.in_window(now) {
                    result.sent_in_window += 1;
                }
                self.recorder.count_sent(&mut result.per_second, now);
            }
            if burst > 0 {
                self.recorder.sent.fetch_add(burst, Ordering::Relaxed);
            }
            if stopping && inflight.is_empty() && self.client.pending_write() == 0 {
                break;
            }
            tokio::select! {
                biased;
                _ = deadline.as_mut() => {
                    if stopping {
                        break; // the drain is over; what is left is unacked
                    }
                    stopping = true;
                    deadline.as_mut().reset((t.end + t.drain).into());
                }
                event = self.client.next_event() => {
                    self.handle(event?, &mut inflight, &mut result)?;
                }
                _ = pace.as_mut(), if pacing => pacing = false,
                _ = ping.tick() => self.client.queue(&Packet::PingReq)?,
            }
        }
        result.unacked = inflight.iter().map(|&(_, seq)| seq).collect();
        self.client.disconnect().await?;
        Ok(result)
    }

    fn handle(
        &mut self,
        event: Event,
        inflight: &mut Vec<(PacketId, u64)>,
        result: &mut PublisherResult,
    ) -> Result<()> {
        let mut complete = |ack: &Ack, result: &mut PublisherResult| -> Result<()> {
            let Some(i) = inflight.iter().position(|&(id, _)| id == ack.packet_id) else {
                bail!(
                    "ack for packet id {} that is not in flight",
                    ack.packet_id.get()
                );
            };
            inflight.swap_remove(i);
            if ack.reason_code.is_error() {
                result.errors += 1;
            }
            Ok(())
        };
        match event {
            Event::Wrote | Event::Packet(Packet::PingResp) => {}
            Event::Packet(Packet::PubAck(ack)) if self.qos == QoS::AtLeastOnce => {
                complete(&ack, result)?
            }
            Event::Packet(Packet::PubRec(ack)) if self.qos == QoS::ExactlyOnce => {
                if ack.reason_code.is_error() {
                    complete(&ack, result)?; // the flow ends at an error PUBREC
                } else {
                    self.client
                        .queue(&Packet::PubRel(Ack::new(ack.packet_id)))?;
                }
            }
            Event::Packet(Packet::PubComp(ack)) if self.qos == QoS::ExactlyOnce => {
                complete(&ack, result)?
            }
            Event::Packet(Packet::Disconnect(d)) => {
                bail!("broker sent DISCONNECT 0x{:02X}", d.reason_code.0)
            }
            Event::Packet(other) => bail!("unexpected {} from the broker", other.kind()),
            Event::Closed => bail!("broker closed the connection"),
        }
        Ok(())
    }
}

/// One subscribing connection.
struct Subscriber {
    client: Client,
    publishers: usize,
    run_tag: u32,
    timeline: Timeline,
    recorder: Arc<Recorder>,
}

impl Subscriber {
    /// Receives (and acknowledges) until `end`, then until nothing arrives for [`QUIET`]
    /// (at most `--drain-secs` more), then disconnects.
    async fn run(mut self) -> Result<SubscriberResult> {
        let t = self.timeline;
        let mut batch = Batch::default();
        let mut result = SubscriberResult {
            delivered_in_window: 0,
            seen: vec![SeqSet::default(); self.publishers],
            foreign: 0,
        };
        let (warm_ns, end_ns) = (t.nanos(t.warm), t.nanos(t.end));
        let mut last_rx = t.t0;
        let mut deadline = pin!(tokio::time::sleep_until(t.end.into()));
        let ping_period = Duration::from_secs(u64::from(KEEP_ALIVE_SECS / 2));
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_period, ping_period);
        loop {
            tokio::select! {
                biased;
                _ = deadline.as_mut() => {
                    let now = Instant::now();
                    let quiet_until = last_rx + QUIET;
                    if now >= t.end + t.drain || (now >= quiet_until && now >= t.end) {
                        break;
                    }
                    let next = quiet_until.max(t.end + QUIET).min(t.end + t.drain);
                    deadline.as_mut().reset(next.into());
                }
                event = self.client.next_event() => match event? {
                    Event::Packet(Packet::Publish(p)) => {
                        let now = Instant::now();
                        last_rx = now;
                        if t.in_window(now) {
                            result.delivered_in_window += 1;
                        }
                        match self.parse_header(&p.payload) {
                            Some((sent_ns, seq, publisher)) => {
                                let latency = t.nanos(now).saturating_sub(sent_ns);
                                let in_window = sent_ns >= warm_ns && sent_ns < end_ns;
                                batch.record(&self.recorder, now, Some((latency, in_window)));
                                result.seen[publisher].insert(seq);
                            }
                            None => {
                                batch.record(&self.recorder, now, None);
                                result.foreign += 1;
                            }
                        }
                        match (p.qos, p.packet_id) {
                            (QoS::AtLeastOnce, Some(id)) => {
                                self.client.queue(&Packet::PubAck(Ack::new(id)))?
                            }
                            (QoS::ExactlyOnce, Some(id)) => {
                                self.client.queue(&Packet::PubRec(Ack::new(id)))?
                            }
                            _ => {}
                        }
                    }
                    Event::Packet(Packet::PubRel(rel)) => {
                        self.client.queue(&Packet::PubComp(Ack::new(rel.packet_id)))?
                    }
                    Event::Packet(Packet::PingResp) | Event::Wrote => {}
                    Event::Packet(Packet::Disconnect(d)) => {
                        bail!("broker sent DISCONNECT 0x{:02X}", d.reason_code.0)
                    }
                    Event::Packet(other) => bail!("unexpected {} from the broker", other.kind()),
                    Event::Closed => bail!("broker closed the connection"),
                },
                _ = ping.tick() => self.client.queue(&Packet::PingReq)?,
            }
        }
        batch.flush(&self.recorder);
        self.client.disconnect().await?;
        Ok(result)
    }

    /// (send time ns, sequence, publisher index) if the payload comes from this run.
    fn parse_header(&self, payload: &[u8]) -> Option<(u64, u64, usize)> {
        parse_header(self.run_tag, self.publishers, payload)
    }
}

/// Appends the payload header (see the module docs) and pads to `len` bytes.
pub(crate) fn write_header(
    buf: &mut BytesMut,
    len: usize,
    sent_ns: u64,
    seq: u64,
    publisher: u32,
    run_tag: u32,
) {
    buf.reserve(len);
    buf.put_u64(sent_ns);
    buf.put_u64(seq);
    buf.put_u32(publisher);
    buf.put_u32(run_tag);
    buf.resize(len, 0);
}

/// (send time ns, sequence, publisher index) if `payload` comes from run `run_tag` with at most
/// `publishers` publishers.
pub(crate) fn parse_header(
    run_tag: u32,
    publishers: usize,
    payload: &[u8],
) -> Option<(u64, u64, usize)> {
    let mut header = payload.get(..HEADER_LEN)?;
    let sent_ns = header.get_u64();
    let seq = header.get_u64();
    let publisher = header.get_u32() as usize;
    let tag = header.get_u32();
    (tag == run_tag && publisher < publishers && seq < MAX_TRACKED_SEQ)
        .then_some((sent_ns, seq, publisher))
}

fn summarize(
    args: &ThroughputArgs,
    nodes: &Placement,
    window: u16,
    window_secs: f64,
    published: &[PublisherResult],
    received: &[SubscriberResult],
    usage: Usage,
) -> ThroughputReport {
    let mut delivered = 0;
    let mut foreign = 0;
    for sub in received {
        delivered += sub.delivered_in_window;
        foreign += sub.foreign;
    }
    let integrity = if args.pattern() == Pattern::Shared {
        group_integrity(published, received)
    } else {
        pair_integrity(args, published, received)
    };
    let published_in_window: u64 = published.iter().map(|p| p.sent_in_window).sum();
    ThroughputReport {
        scenario: "throughput",
        label: args.label(),
        protocol: args.common.protocol_name(),
        transport: args.common.transport.transport.name(),
        publishers: args.publishers,
        subscribers: args.subscribers,
        topics: args.topic_count(),
        pattern: args.pattern().name(),
        fanout: args.fanout,
        shared_group: args.shared.clone(),
        pub_nodes: nodes.publisher_names(),
        sub_nodes: nodes.subscriber_names(),
        qos: args.message.qos,
        payload_bytes: args.message.payload,
        window,
        rate_per_publisher: (args.rate > 0.0).then_some(args.rate),
        warmup_secs: args.warmup_secs,
        duration_secs: args.message.duration_secs,
        window_secs,
        published: published_in_window,
        published_per_sec: published_in_window as f64 / window_secs.max(1e-9),
        delivered,
        delivered_per_sec: delivered as f64 / window_secs.max(1e-9),
        latency_us: LatencyReport::default(),
        sent_total: published.iter().map(|p| p.sent).sum(),
        expected_deliveries: integrity.expected,
        lost: integrity.lost,
        duplicated: integrity.duplicated,
        reordered: integrity.reordered,
        unacked: published.iter().map(|p| p.unacked.len() as u64).sum(),
        publish_errors: published.iter().map(|p| p.errors).sum(),
        foreign,
        problem_pair_count: integrity.problems.len(),
        problem_pairs: integrity
            .problems
            .into_iter()
            .take(MAX_LISTED_PAIRS)
            .collect(),
        usage,
        series: Vec::new(),
        plots: Vec::new(),
    }
}

/// Loss, duplication and reordering totals, and the pairs that had any.
#[derive(Debug, Default)]
struct Integrity {
    expected: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    problems: Vec<PairReport>,
}

impl Integrity {
    fn add(&mut self, pair: PairReport) {
        self.expected += pair.expected;
        self.lost += pair.lost;
        self.duplicated += pair.duplicated;
        self.reordered += pair.reordered;
        if pair.lost > 0 || pair.duplicated > 0 || pair.reordered > 0 {
            self.problems.push(pair);
        }
    }
}

/// What `publisher` must have delivered (sent and, QoS 1/2, acknowledged) and how many of
/// those `seen` holds.
fn expected_and_received(publisher: &PublisherResult, seen: &SeqSet) -> (u64, u64) {
    let unacked_seen = publisher
        .unacked
        .iter()
        .filter(|&&s| seen.contains(s))
        .count() as u64;
    let expected = publisher.sent - publisher.unacked.len() as u64;
    let got = seen.count_below(publisher.sent) - unacked_seen;
    (expected, got.min(expected))
}

/// Every subscriber whose filter matches a publisher's topic must get each of its messages
/// once.
fn pair_integrity(
    args: &ThroughputArgs,
    published: &[PublisherResult],
    received: &[SubscriberResult],
) -> Integrity {
    let mut out = Integrity::default();
    for (k, sub) in received.iter().enumerate() {
        for (p, publisher) in published.iter().enumerate() {
            let seen = &sub.seen[p];
            if !args.matches(p, k) {
                // Anything seen here was misrouted: count it as duplicated delivery.
                out.duplicated += seen.count_below(MAX_TRACKED_SEQ) + seen.duplicates;
                continue;
            }
            let (expected, got) = expected_and_received(publisher, seen);
            out.add(PairReport {
                publisher: p,
                subscriber: Some(k),
                expected,
                received: got,
                lost: expected - got,
                duplicated: seen.duplicates,
                reordered: seen.reordered,
            });
        }
    }
    out
}

/// A shared group must get each message once, at any one member: loss over the union of the
/// members, duplicates within a member and across members, reordering within each member.
fn group_integrity(published: &[PublisherResult], received: &[SubscriberResult]) -> Integrity {
    let mut out = Integrity::default();
    for (p, publisher) in published.iter().enumerate() {
        let mut union = SeqSet::default();
        let (mut duplicated, mut reordered) = (0, 0);
        for sub in received {
            let seen = &sub.seen[p];
            duplicated += seen.duplicates + union.union_with(seen);
            reordered += seen.reordered;
        }
        let (expected, got) = expected_and_received(publisher, &union);
        out.add(PairReport {
            publisher: p,
            subscriber: None,
            expected,
            received: got,
            lost: expected - got,
            duplicated,
            reordered,
        });
    }
    out
}

impl fmt::Display for ThroughputReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "throughput ({})", self.label)?;
        let pattern = match (self.pattern, &self.shared_group) {
            ("fan-out", _) => ", fan-out bench/#".to_owned(),
            ("fan-in", _) => ", fan-in bench/#".to_owned(),
            ("shared", Some(g)) => format!(", shared $share/{g}/bench/#"),
            _ => String::new(),
        };
        writeln!(
            f,
            "  setup      {} publishers -> {} subscribers, {} topics{pattern}, QoS {}, {} B \
             payload, {} over {}",
            self.publishers,
            self.subscribers,
            self.topics,
            self.qos,
            self.payload_bytes,
            self.protocol,
            self.transport
        )?;
        if self.pub_nodes != self.sub_nodes {
            writeln!(
                f,
                "  nodes      publishers on {}, subscribers on {}",
                self.pub_nodes.join(","),
                self.sub_nodes.join(",")
            )?;
        }
        let rate = match self.rate_per_publisher {
            Some(r) => format!("{r:.0} msg/s per publisher"),
            None => "unlimited rate".to_owned(),
        };
        writeln!(
            f,
            "  load       window {} (QoS 1/2), {rate}, {} s warm-up + {:.2} s measured",
            self.window, self.warmup_secs, self.window_secs
        )?;
        writeln!(
            f,
            "  published  {:.0} msg/s ({} in window)",
            self.published_per_sec, self.published
        )?;
        writeln!(
            f,
            "  delivered  {:.0} msg/s ({} in window)",
            self.delivered_per_sec, self.delivered
        )?;
        writeln!(f, "  latency    {}", self.latency_us.line())?;
        let note = if self.qos == 0 {
            " (QoS 0: the broker may drop)"
        } else {
            ""
        };
        writeln!(
            f,
            "  integrity  {} expected deliveries, {} lost{note}, {} duplicated, {} reordered, \
             {} unacked, {} publish errors, {} foreign",
            self.expected_deliveries,
            self.lost,
            self.duplicated,
            self.reordered,
            self.unacked,
            self.publish_errors,
            self.foreign
        )?;
        for pair in self.problem_pairs.iter().take(10) {
            let to = match pair.subscriber {
                Some(k) => format!("subscriber {k}"),
                None => "the group".to_owned(),
            };
            writeln!(
                f,
                "    publisher {} -> {to}: {} of {} received, {} lost, {} duplicated, {} \
                 reordered",
                pair.publisher,
                pair.received,
                pair.expected,
                pair.lost,
                pair.duplicated,
                pair.reordered
            )?;
        }
        if self.problem_pair_count > 10 {
            writeln!(f, "    ... {} pairs in all", self.problem_pair_count)?;
        }
        let usage = &self.usage;
        usage.write_cpu(f)?;
        if let (Some(rss), Some(peak)) = (usage.broker_rss_kib, usage.broker_peak_rss_kib) {
            write!(f, "\n  broker RSS {rss} KiB at end, peak {peak} KiB")?;
        }
        for plot in &self.plots {
            write!(f, "\n  plot       {plot}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use roost_testkit::TestNode;

    pub(crate) fn args(
        qos: u8,
        publishers: usize,
        subscribers: usize,
        fanout: bool,
    ) -> ThroughputArgs {
        ThroughputArgs {
            common: Common::for_tests(),
            publishers,
            subscribers,
            message: MessageArgs::for_tests(qos),
            warmup_secs: 0,
            topics: None,
            fanout,
            fan_in: false,
            shared: None,
            nodes: NodeArgs::default(),
            plot: None,
            window: 16,
            rate: 2_000.0,
            drain_secs: 5,
        }
    }

    #[test]
    fn seq_set_counts_seen_and_duplicates() {
        let mut s = SeqSet::default();
        for seq in [0, 1, 5, 63, 64, 130, 5] {
            s.insert(seq);
        }
        assert_eq!(s.duplicates, 1);
        assert!(s.contains(130) && !s.contains(2) && !s.contains(1 << 40));
        assert_eq!(s.count_below(0), 0);
        assert_eq!(s.count_below(5), 2);
        assert_eq!(s.count_below(6), 3);
        assert_eq!(s.count_below(64), 4);
        assert_eq!(s.count_below(65), 5);
        assert_eq!(s.count_below(10_000), 6);
        // 0 1 5 63 64 130 5: the second 5 is a duplicate, not a reordering.
        assert_eq!(s.reordered, 0);
    }

    #[test]
    fn seq_set_counts_a_step_backwards_once_per_message() {
        let mut s = SeqSet::default();
        for seq in [0, 1, 3, 2, 4, 5, 9, 6, 7, 8, 7] {
            s.insert(seq);
        }
        // 2 after 3, 6 after 9; 7 and 8 climb again; the last 7 is a duplicate.
        assert_eq!((s.reordered, s.duplicates), (2, 1));
    }

    fn sub_result(publishers: usize, seen: &[&[u64]]) -> SubscriberResult {
        let mut sets = vec![SeqSet::default(); publishers];
        for (p, seqs) in seen.iter().enumerate() {
            for &seq in *seqs {
                sets[p].insert(seq);
            }
        }
        SubscriberResult {
            delivered_in_window: 0,
            seen: sets,
            foreign: 0,
        }
    }

    fn pub_result(sent: u64, unacked: Vec<u64>) -> PublisherResult {
        PublisherResult {
            sent,
            unacked,
            ..PublisherResult::default()
        }
    }

    #[test]
    fn a_shared_group_is_counted_as_one_receiver() {
        // Publisher 0 sent 0..6 (5 unacknowledged), publisher 1 sent 0..3.
        let published = [pub_result(6, vec![5]), pub_result(3, vec![])];
        let received = [
            sub_result(2, &[&[0, 2, 1], &[0]]),
            sub_result(2, &[&[3, 2], &[1]]),
        ];
        let i = group_integrity(&published, &received);
        // Publisher 0: 0..3 of the acknowledged 0..5 arrived (4 lost), 2 at both members, a
        // step back at each member (1 after 2, 2 after 3); publisher 1: 2 lost.
        assert_eq!(i.expected, 5 + 3);
        assert_eq!(i.lost, 1 + 1);
        assert_eq!(i.duplicated, 1);
        assert_eq!(i.reordered, 1 + 1);
        assert_eq!(i.problems.len(), 2);
        assert!(i.problems.iter().all(|p| p.subscriber.is_none()));
    }

    #[test]
    fn pairs_count_misrouted_messages_as_duplicates() {
        let a = args(1, 2, 2, false);
        let published = [pub_result(2, vec![]), pub_result(2, vec![])];
        // Subscriber 0 should only get publisher 0 and subscriber 1 only publisher 1.
        let received = [
            sub_result(2, &[&[0, 1], &[0]]),
            sub_result(2, &[&[], &[1, 0]]),
        ];
        let i = pair_integrity(&a, &published, &received);
        assert_eq!(
            (i.expected, i.lost, i.duplicated, i.reordered),
            (4, 0, 1, 1)
        );
    }

    #[test]
    fn patterns_choose_filters_and_topics() {
        let mut a = args(0, 8, 1, false);
        a.fan_in = true;
        assert_eq!(a.pattern(), Pattern::FanIn);
        assert_eq!((a.topic_count(), a.filter(0)), (8, "bench/#".to_owned()));
        assert!(a.label().contains("8x1 fan-in"), "{}", a.label());
        let mut a = args(0, 4, 3, false);
        a.shared = Some("g1".into());
        assert_eq!(a.filter(2), "$share/g1/bench/#");
        assert_eq!(a.topic_count(), 4);
        assert!(a.validate().is_ok());
        a.shared = Some("a/b".into());
        assert!(a.validate().is_err());
        let a = args(0, 1, 5, true);
        assert_eq!((a.topic_count(), a.filter(4)), (1, "bench/#".to_owned()));
        assert_eq!(args(0, 4, 4, false).filter(6), "bench/2");
    }

    #[test]
    fn topics_pair_publishers_with_subscribers() {
        let a = args(0, 4, 4, false);
        assert_eq!(a.topic_count(), 4);
        assert!(a.matches(1, 1) && !a.matches(1, 2));
        let a = args(0, 1, 50, false);
        assert_eq!(a.topic_count(), 1);
        assert!((0..50).all(|k| a.matches(0, k)));
        let a = args(0, 2, 3, true);
        assert!(a.matches(1, 2));
    }

    #[test]
    fn invalid_arguments_are_usage_errors() {
        let mut a = args(1, 1, 1, false);
        a.message.payload = 10;
        assert!(a.validate().is_err());
        let mut a = args(1, 1, 1, false);
        a.rate = f64::NAN;
        assert!(a.validate().is_err());
        let mut a = args(1, 1, 1, false);
        a.topics = Some(0);
        assert!(a.validate().is_err());
        assert!(args(1, 1, 1, false).validate().is_ok());
    }

    /// Nothing lost, duplicated or left unacknowledged.
    fn assert_intact(report: &ThroughputReport) {
        assert_eq!(
            (report.lost, report.duplicated, report.unacked),
            (0, 0, 0),
            "{report}"
        );
    }

    async fn run_against_roost(a: ThroughputArgs) -> Result<ThroughputReport> {
        let node = TestNode::start().await?;
        let report = run(&a, &Placement::single(node.addr())).await?;
        node.stop().await;
        Ok(report)
    }

    #[tokio::test]
    async fn qos1_delivers_everything_once() -> Result<()> {
        let report = run_against_roost(args(1, 2, 2, false)).await?;
        assert!(report.sent_total > 100, "{report}");
        assert_eq!(report.expected_deliveries, report.sent_total, "{report}");
        assert_intact(&report);
        assert!(report.latency_us.samples > 0, "{report}");
        assert!(report.latency_us.p999 >= report.latency_us.p99, "{report}");
        assert_eq!((report.foreign, report.reordered), (0, 0));
        // The series covers the run: what it counts adds up to the totals.
        let sent: u64 = report.series.iter().map(|s| s.sent).sum();
        assert_eq!(sent, report.sent_total, "{:?}", report.series);
        let received: u64 = report.series.iter().map(|s| s.received).sum();
        assert_eq!(received, report.sent_total, "{:?}", report.series);
        assert!(report.series.iter().any(|s| s.p99_us.is_some()));
        Ok(())
    }

    #[tokio::test]
    async fn shared_subscribers_get_every_message_once_between_them() -> Result<()> {
        let mut a = args(1, 2, 3, false);
        a.shared = Some("bench".into());
        let report = run_against_roost(a).await?;
        assert_eq!(report.pattern, "shared");
        assert!(report.sent_total > 100, "{report}");
        assert_eq!(report.expected_deliveries, report.sent_total, "{report}");
        assert_intact(&report);
        Ok(())
    }

    #[tokio::test]
    async fn fan_in_delivers_every_publisher_to_one_subscriber() -> Result<()> {
        let mut a = args(1, 4, 1, false);
        a.fan_in = true;
        let dir = tempfile::tempdir()?;
        a.plot = Some(dir.path().to_owned());
        let report = run_against_roost(a).await?;
        assert_eq!(report.topics, 4);
        assert_eq!(report.expected_deliveries, report.sent_total, "{report}");
        assert_eq!((report.lost, report.duplicated), (0, 0), "{report}");
        assert_eq!(report.plots.len(), 2, "{report}");
        for plot in &report.plots {
            let svg = std::fs::read_to_string(plot)?;
            assert!(svg.contains("<svg"), "{plot}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn qos2_fanout_delivers_to_every_subscriber() -> Result<()> {
        let report = run_against_roost(args(2, 1, 3, true)).await?;
        assert_eq!(
            report.expected_deliveries,
            3 * report.sent_total,
            "{report}"
        );
        assert_intact(&report);
        Ok(())
    }

    #[tokio::test]
    async fn qos0_at_a_modest_rate_reports_rates_and_latency() -> Result<()> {
        let mut a = args(0, 2, 2, false);
        a.common.v311 = true;
        let report = run_against_roost(a).await?;
        assert!(report.published_per_sec > 500.0, "{report}");
        assert!(report.delivered_per_sec > 500.0, "{report}");
        assert!(report.latency_us.p50 > 0.0, "{report}");
        Ok(())
    }
}
