//! `throughput`: messages per second through the broker, publish-to-delivery latency, and
//! whether QoS 1/2 lost or duplicated anything.
//!
//! ```text
//!  S subscribers: SUBSCRIBE bench/{k % T} (or bench/# with --fanout) at --qos, SUBACK
//!  P publishers:  PUBLISH bench/{p % T} at --qos, as fast as the window / TCP allow
//!                 (QoS 0: keep the socket full; QoS 1/2: at most --window unacknowledged)
//!  t0 ── warm-up (1 s) ── warm ── --duration-secs ── end ── drain (≤ --drain-secs) ── DISCONNECT
//!                           └──── rates, latency, CPU ────┘
//! ```
//!
//! Everything runs in this one process, so a publisher stamps each payload with the
//! monotonic time since the shared start `t0` and the subscriber subtracts it from its own
//! reading of the same clock: no clock skew. Payload layout (big-endian), padded to
//! `--payload` bytes:
//!
//! ```text
//!  0..8 send time (ns since t0) | 8..16 sequence (per publisher, from 0)
//!  16..20 publisher index       | 20..24 run tag (our pid; other runs' messages are ignored)
//! ```
//!
//! Counted over the measurement window [warm, end): messages published (queued for QoS 0,
//! sent for QoS 1/2) and delivered (received by any subscriber), each divided by the window.
//! Latency covers every message *sent* in the window, including those that arrive during the
//! drain, so a backlog shows up in the tail instead of disappearing. Loss and duplication are
//! counted over the whole run per (publisher, subscriber) pair from the sequence numbers: every
//! message a publisher sent (and, for QoS 1/2, had acknowledged) must reach every subscriber
//! whose filter matches its topic exactly once. At QoS 0 the broker may drop (its queues are
//! bounded), so "lost" there is reported but is not a fault.
//!
//! The load generator competes with the broker for the same cores; the report includes both
//! processes' CPU use over the window (the broker's with `--broker-pid`).

use crate::client::{Client, ConnectOptions, Event};
use crate::histogram::Histogram;
use crate::join_all;
use crate::procfs;
use crate::target::UsageError;
use crate::Common;
use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use roost_codec::{Ack, Packet, PacketId, Properties, Publish, QoS};
use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;
use std::pin::pin;
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
    /// QoS of every publish and subscription (0, 1 or 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) qos: u8,
    /// Payload bytes per message (at least 24: the timestamp/sequence header).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// Length of the measurement window, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration_secs: u64,
    /// Warm-up before the window; its messages count for loss but not for rates or latency.
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup_secs: u64,
    /// Number of topics bench/0..T-1: publisher p publishes to bench/{p % T} and subscriber k
    /// subscribes to bench/{k % T}. Default min(publishers, subscribers), so every publisher
    /// has a subscriber.
    #[arg(long)]
    pub(crate) topics: Option<usize>,
    /// Every subscriber subscribes to bench/# and receives every message.
    #[arg(long)]
    pub(crate) fanout: bool,
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

impl ThroughputArgs {
    fn topic_count(&self) -> usize {
        self.topics
            .unwrap_or(self.publishers.min(self.subscribers))
            .max(1)
    }

    fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or_default()
    }

    /// Whether publisher `p`'s messages reach subscriber `k`.
    fn matches(&self, p: usize, k: usize) -> bool {
        self.fanout || p % self.topic_count() == k % self.topic_count()
    }

    fn validate(&self) -> Result<(), UsageError> {
        let bad = |m: String| Err(UsageError(m));
        if self.publishers == 0 || self.subscribers == 0 {
            return bad("--publishers and --subscribers must be at least 1".into());
        }
        if self.payload < HEADER_LEN {
            return bad(format!(
                "--payload {} is too small: the header (time, sequence, publisher, run) takes \
                 {HEADER_LEN} bytes",
                self.payload
            ));
        }
        if self.payload > 1024 * 1024 {
            return bad(format!("--payload {} is above 1 MiB", self.payload));
        }
        if self.duration_secs == 0 {
            return bad("--duration-secs must be at least 1".into());
        }
        if self.topics == Some(0) {
            return bad("--topics must be at least 1".into());
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
        if let Some(limit) = procfs::open_files_limit() {
            let needed = (self.publishers + self.subscribers) as u64 + 64;
            if needed > limit {
                return bad(format!(
                    "{} connections need about {needed} open files; this process may open {limit}",
                    self.publishers + self.subscribers
                ));
            }
        }
        Ok(())
    }
}

/// The shared clock of one run.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    t0: Instant,
    warm: Instant,
    end: Instant,
    /// Longest wait after `end` for acks and deliveries (`--drain-secs`).
    drain: Duration,
}

impl Timeline {
    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_nanos() as u64
    }

    fn in_window(&self, at: Instant) -> bool {
        at >= self.warm && at < self.end
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
}

/// Which sequence numbers of one publisher a subscriber has seen: a growable bitmap.
#[derive(Debug, Default, Clone)]
struct SeqSet {
    words: Vec<u64>,
    duplicates: u64,
}

impl SeqSet {
    /// Marks `seq` seen; counts a duplicate if it already was.
    fn insert(&mut self, seq: u64) {
        let word = (seq / 64) as usize;
        if word >= self.words.len() {
            self.words.resize((word + 1).next_power_of_two(), 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.words[word] & bit != 0 {
            self.duplicates += 1;
        }
        self.words[word] |= bit;
    }

    fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// How many of 0..n were seen.
    fn count_below(&self, n: u64) -> u64 {
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

/// What one subscriber saw.
#[derive(Debug)]
struct SubscriberResult {
    latency: Histogram,
    delivered_in_window: u64,
    /// One per publisher.
    seen: Vec<SeqSet>,
    /// Messages that were not from this run's publishers.
    foreign: u64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub(crate) struct LatencyReport {
    pub(crate) samples: u64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

/// Loss or duplication between one publisher and one subscriber.
#[derive(Debug, Serialize)]
pub(crate) struct PairReport {
    pub(crate) publisher: usize,
    pub(crate) subscriber: usize,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
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
    pub(crate) fanout: bool,
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
    pub(crate) unacked: u64,
    pub(crate) publish_errors: u64,
    pub(crate) foreign: u64,
    /// Pairs with loss or duplicates (at most 100 listed).
    pub(crate) problem_pairs: Vec<PairReport>,
    pub(crate) problem_pair_count: usize,
    pub(crate) broker_cpu_percent: Option<f64>,
    pub(crate) loadgen_cpu_percent: Option<f64>,
    pub(crate) broker_rss_kib: Option<u64>,
    pub(crate) broker_peak_rss_kib: Option<u64>,
}

/// CPU and memory sampled around the window.
#[derive(Debug, Default)]
struct Usage {
    broker_cpu_percent: Option<f64>,
    loadgen_cpu_percent: Option<f64>,
    broker_rss_kib: Option<u64>,
    broker_peak_rss_kib: Option<u64>,
}

/// Runs the scenario against `addr` and returns its report.
pub(crate) async fn run(args: &ThroughputArgs, addr: SocketAddr) -> Result<ThroughputReport> {
    args.validate()?;
    let protocol = args.common.protocol();
    let qos = args.qos();
    let topics = args.topic_count();
    let run_tag = std::process::id();
    let dialer = args.common.transport.dialer()?;
    let options = |role: &str, i: usize| ConnectOptions {
        dialer: dialer.clone(),
        client_id: format!("roost-bench-{run_tag}-{role}-{i}"),
        protocol,
        keep_alive: KEEP_ALIVE_SECS,
        read_chunk: 64 * 1024,
    };

    // Subscribers first, so nothing published is missed.
    let mut connecting = Vec::new();
    for k in 0..args.subscribers {
        let filter = if args.fanout {
            "bench/#".to_owned()
        } else {
            format!("bench/{}", k % topics)
        };
        let opts = options("sub", k);
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
        "throughput: {} publishers, {} subscribers connected; running {} s warm-up + {} s",
        args.publishers, args.subscribers, args.warmup_secs, args.duration_secs
    );

    let t0 = Instant::now();
    let warm = t0 + Duration::from_secs(args.warmup_secs);
    let timeline = Timeline {
        t0,
        warm,
        end: warm + Duration::from_secs(args.duration_secs),
        drain: Duration::from_secs(args.drain_secs),
    };
    let usage = tokio::spawn(sample_usage(timeline, args.common.broker_pid));
    let mut sub_tasks = Vec::new();
    for (k, client) in subscribers.into_iter().enumerate() {
        let sub = Subscriber {
            client,
            publishers: args.publishers,
            run_tag,
            timeline,
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
            payload_len: args.payload,
            window: usize::from(window),
            interval,
            timeline,
        };
        pub_tasks.push(tokio::spawn(async move {
            publisher
                .run()
                .await
                .with_context(|| format!("publisher {p}"))
        }));
    }
    let published = join_all(pub_tasks).await?;
    let received = join_all(sub_tasks).await?;
    let usage = usage.await.context("usage sampler failed")??;
    let window_secs = timeline
        .end
        .saturating_duration_since(timeline.warm)
        .as_secs_f64();
    Ok(summarize(
        args,
        window,
        window_secs,
        &published,
        &received,
        usage,
    ))
}

/// Reads CPU time at `warm` and at `end`, and memory at `end`.
async fn sample_usage(timeline: Timeline, broker_pid: Option<u32>) -> Result<Usage> {
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
                scratch.reserve(self.payload_len);
                scratch.put_u64(t.nanos(now));
                scratch.put_u64(seq);
                scratch.put_u32(self.index);
                scratch.put_u32(self.run_tag);
                scratch.resize(self.payload_len, 0);
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
                if t.in_window(now) {
                    result.sent_in_window += 1;
                }
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
}

impl Subscriber {
    /// Receives (and acknowledges) until `end`, then until nothing arrives for [`QUIET`]
    /// (at most `--drain-secs` more), then disconnects.
    async fn run(mut self) -> Result<SubscriberResult> {
        let t = self.timeline;
        let mut result = SubscriberResult {
            latency: Histogram::default(),
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
                                if sent_ns >= warm_ns && sent_ns < end_ns {
                                    result.latency.record(t.nanos(now).saturating_sub(sent_ns));
                                }
                                result.seen[publisher].insert(seq);
                            }
                            None => result.foreign += 1,
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
        self.client.disconnect().await?;
        Ok(result)
    }

    /// (send time ns, sequence, publisher index) if the payload comes from this run.
    fn parse_header(&self, payload: &[u8]) -> Option<(u64, u64, usize)> {
        let mut header = payload.get(..HEADER_LEN)?;
        let sent_ns = header.get_u64();
        let seq = header.get_u64();
        let publisher = header.get_u32() as usize;
        let tag = header.get_u32();
        (tag == self.run_tag && publisher < self.publishers && seq < MAX_TRACKED_SEQ)
            .then_some((sent_ns, seq, publisher))
    }
}

fn summarize(
    args: &ThroughputArgs,
    window: u16,
    window_secs: f64,
    published: &[PublisherResult],
    received: &[SubscriberResult],
    usage: Usage,
) -> ThroughputReport {
    let mut latency = Histogram::default();
    let mut delivered = 0;
    let mut foreign = 0;
    for sub in received {
        latency.merge(&sub.latency);
        delivered += sub.delivered_in_window;
        foreign += sub.foreign;
    }
    let (mut expected_deliveries, mut lost, mut duplicated) = (0, 0, 0);
    let mut problem_pairs = Vec::new();
    let mut problem_pair_count = 0;
    for (k, sub) in received.iter().enumerate() {
        for (p, publisher) in published.iter().enumerate() {
            let seen = &sub.seen[p];
            if !args.matches(p, k) {
                // Anything seen here was misrouted: count it as duplicated delivery.
                let stray = seen.count_below(MAX_TRACKED_SEQ) + seen.duplicates;
                duplicated += stray;
                continue;
            }
            let unacked_seen = publisher
                .unacked
                .iter()
                .filter(|&&s| seen.contains(s))
                .count() as u64;
            let expected = publisher.sent - publisher.unacked.len() as u64;
            let got = seen.count_below(publisher.sent) - unacked_seen;
            let pair_lost = expected - got.min(expected);
            expected_deliveries += expected;
            lost += pair_lost;
            duplicated += seen.duplicates;
            if pair_lost > 0 || seen.duplicates > 0 {
                problem_pair_count += 1;
                if problem_pairs.len() < MAX_LISTED_PAIRS {
                    problem_pairs.push(PairReport {
                        publisher: p,
                        subscriber: k,
                        expected,
                        received: got,
                        lost: pair_lost,
                        duplicated: seen.duplicates,
                    });
                }
            }
        }
    }
    let published_in_window: u64 = published.iter().map(|p| p.sent_in_window).sum();
    let us = |ns: u64| ns as f64 / 1_000.0;
    ThroughputReport {
        scenario: "throughput",
        label: args.common.label.clone().unwrap_or_else(|| {
            format!(
                "throughput {}x{}{} qos{} {}B",
                args.publishers,
                args.subscribers,
                if args.fanout { " fanout" } else { "" },
                args.qos,
                args.payload
            )
        }),
        protocol: args.common.protocol_name(),
        transport: args.common.transport.transport.name(),
        publishers: args.publishers,
        subscribers: args.subscribers,
        topics: args.topic_count(),
        fanout: args.fanout,
        qos: args.qos,
        payload_bytes: args.payload,
        window,
        rate_per_publisher: (args.rate > 0.0).then_some(args.rate),
        warmup_secs: args.warmup_secs,
        duration_secs: args.duration_secs,
        window_secs,
        published: published_in_window,
        published_per_sec: published_in_window as f64 / window_secs.max(1e-9),
        delivered,
        delivered_per_sec: delivered as f64 / window_secs.max(1e-9),
        latency_us: LatencyReport {
            samples: latency.count(),
            p50: us(latency.quantile(0.50)),
            p90: us(latency.quantile(0.90)),
            p99: us(latency.quantile(0.99)),
            max: us(latency.max()),
        },
        sent_total: published.iter().map(|p| p.sent).sum(),
        expected_deliveries,
        lost,
        duplicated,
        unacked: published.iter().map(|p| p.unacked.len() as u64).sum(),
        publish_errors: published.iter().map(|p| p.errors).sum(),
        foreign,
        problem_pairs,
        problem_pair_count,
        broker_cpu_percent: usage.broker_cpu_percent,
        loadgen_cpu_percent: usage.loadgen_cpu_percent,
        broker_rss_kib: usage.broker_rss_kib,
        broker_peak_rss_kib: usage.broker_peak_rss_kib,
    }
}

/// Formats microseconds as µs or ms.
pub(crate) fn duration_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1_000.0)
    }
}

impl fmt::Display for ThroughputReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "throughput ({})", self.label)?;
        writeln!(
            f,
            "  setup      {} publishers -> {} subscribers, {} topics{}, QoS {}, {} B payload, {} \
             over {}",
            self.publishers,
            self.subscribers,
            self.topics,
            if self.fanout { ", fan-out bench/#" } else { "" },
            self.qos,
            self.payload_bytes,
            self.protocol,
            self.transport
        )?;
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
        let l = &self.latency_us;
        writeln!(
            f,
            "  latency    p50 {}  p90 {}  p99 {}  max {}  ({} samples)",
            duration_us(l.p50),
            duration_us(l.p90),
            duration_us(l.p99),
            duration_us(l.max),
            l.samples
        )?;
        let note = if self.qos == 0 {
            " (QoS 0: the broker may drop)"
        } else {
            ""
        };
        writeln!(
            f,
            "  integrity  {} expected deliveries, {} lost{note}, {} duplicated, {} unacked, \
             {} publish errors, {} foreign",
            self.expected_deliveries,
            self.lost,
            self.duplicated,
            self.unacked,
            self.publish_errors,
            self.foreign
        )?;
        for pair in self.problem_pairs.iter().take(10) {
            writeln!(
                f,
                "    publisher {} -> subscriber {}: {} of {} received, {} lost, {} duplicated",
                pair.publisher,
                pair.subscriber,
                pair.received,
                pair.expected,
                pair.lost,
                pair.duplicated
            )?;
        }
        if self.problem_pair_count > 10 {
            writeln!(f, "    ... {} pairs in all", self.problem_pair_count)?;
        }
        let cpu = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} %"));
        write!(
            f,
            "  cpu        broker {}, load generator {} (100 % = one core)",
            cpu(self.broker_cpu_percent),
            cpu(self.loadgen_cpu_percent)
        )?;
        if let (Some(rss), Some(peak)) = (self.broker_rss_kib, self.broker_peak_rss_kib) {
            write!(f, "\n  broker RSS {rss} KiB at end, peak {peak} KiB")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_testkit::TestNode;

    fn args(qos: u8, publishers: usize, subscribers: usize, fanout: bool) -> ThroughputArgs {
        ThroughputArgs {
            common: Common::for_tests(),
            publishers,
            subscribers,
            qos,
            payload: 64,
            duration_secs: 1,
            warmup_secs: 0,
            topics: None,
            fanout,
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
        a.payload = 10;
        assert!(a.validate().is_err());
        let mut a = args(1, 1, 1, false);
        a.rate = f64::NAN;
        assert!(a.validate().is_err());
        let mut a = args(1, 1, 1, false);
        a.topics = Some(0);
        assert!(a.validate().is_err());
        assert!(args(1, 1, 1, false).validate().is_ok());
    }

    async fn run_against_roost(a: ThroughputArgs) -> Result<ThroughputReport> {
        let node = TestNode::start().await?;
        let report = run(&a, node.addr()).await?;
        node.stop().await;
        Ok(report)
    }

    #[tokio::test]
    async fn qos1_delivers_everything_once() -> Result<()> {
        let report = run_against_roost(args(1, 2, 2, false)).await?;
        assert!(report.sent_total > 100, "{report}");
        assert_eq!(report.expected_deliveries, report.sent_total, "{report}");
        assert_eq!(
            (report.lost, report.duplicated, report.unacked),
            (0, 0, 0),
            "{report}"
        );
        assert!(report.latency_us.samples > 0, "{report}");
        assert_eq!(report.foreign, 0);
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
        assert_eq!(
            (report.lost, report.duplicated, report.unacked),
            (0, 0, 0),
            "{report}"
        );
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
