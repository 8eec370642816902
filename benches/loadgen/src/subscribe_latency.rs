//! `subscribe-latency`: how long a SUBSCRIBE waits for its SUBACK when the broker only answers
//! after the route committed cluster-wide (docs/rfcs/0002, "SUBACK after commit"), and whether
//! that wait buys what it promises.
//!
//! ```text
//!  --existing only: C holders on --host SUBSCRIBE (batches of 50) to every filter below, stay
//!                   connected (reading and acknowledging) until the measurement ends
//!  C clients on --host, each alone, one SUBSCRIBE at a time, N times:
//!      SUBSCRIBE lat/{run}/c{k}/{i}  (or lat/{run}/shared/{i}, --shared-filter-fraction)
//!      ── SUBACK ──▶ record SUBACK latency (fresh or shared histogram)
//!      with --publish-host: PUBLISH QoS 1 to that topic on the other node, right away
//!  ── last SUBACK ── then at most 2 s for the last publishes to arrive ── DISCONNECT
//! ```
//!
//! Every fresh filter (`lat/{run}/c{k}/{i}`, `{run}` = our pid) is new to the broker, so its
//! SUBSCRIBE is a route change: one Raft commit plus the wait until every reachable member
//! applied it. With `--existing`, a holder on the same node already subscribes to the same
//! filter, the node already routes it and the SUBACK needs no commit: the difference between
//! the two runs is the cost of the commit. A fraction `F` of each client's subscriptions
//! (spread evenly over its N, [`is_shared`]) go to `lat/{run}/shared/{i}` instead, a filter
//! all C clients subscribe to at about the same time: the first SUBSCRIBE on a node is the route
//! change, the others find it already counted (their latency is in a separate histogram).
//!
//! SUBACK latency runs from queueing the SUBSCRIBE (it is written at once: nothing else is
//! queued on that connection) to decoding the SUBACK, on one monotonic clock. Subscribes per
//! second are all SUBACKs over the time from the first SUBSCRIBE to the last SUBACK of any
//! client.
//!
//! The cross-node check (`--publish-host`): after each SUBACK granting the subscription, the
//! client's own publisher connection on the other node publishes one QoS 1 message to exactly
//! that topic (payload: run, client, subscription index, [`PAYLOAD_LEN`] bytes). The
//! subscriber must receive it within [`DELIVERY_LIMIT`] (2 s) of the send; anything later or
//! never is counted lost, and lost must be 0: that is the guarantee the SUBACK wait buys. A
//! subscriber counts only its own publishes (on a shared filter the other clients' may come
//! before its own SUBSCRIBE); PUBACKs with 0x10 (no matching subscribers: the publishing node
//! did not know the route yet) and error reason codes are counted too.

use crate::client::{Client, ConnectOptions, Event, SETUP_TIMEOUT};
use crate::join_all;
use crate::latency::{Histogram, LatencyReport};
use crate::procfs;
use crate::target::{self, UsageError};
use crate::Common;
use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use roost_codec::{
    Ack, Packet, PacketId, Properties, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A cross-node publish not received this long after it was sent counts as lost.
pub(crate) const DELIVERY_LIMIT: Duration = Duration::from_secs(2);
/// Bytes of a cross-node payload: run tag, client index, subscription index (u32 each).
const PAYLOAD_LEN: usize = 12;
/// Filters per SUBSCRIBE when the holders set up `--existing`.
const HOLDER_BATCH: usize = 50;
/// Keep-alive announced by every connection; PINGREQ every half of it.
const KEEP_ALIVE_SECS: u16 = 30;
/// Lost publishes listed by (client, subscription) in the report (the totals cover all).
const MAX_LISTED_LOST: usize = 20;

/// Arguments of `roost-loadgen subscribe-latency`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubscribeLatencyArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Subscribing clients, each with its own connection (and publisher connection with
    /// --publish-host); they run at the same time.
    #[arg(long, default_value_t = 4)]
    pub(crate) clients: usize,
    /// SUBSCRIBEs per client, one after another (each waits for its SUBACK), one filter each.
    #[arg(long, default_value_t = 250)]
    pub(crate) subscriptions: usize,
    /// Fraction (0..=1) of each client's subscriptions that go to a filter every client
    /// subscribes to (lat/{run}/shared/{i}) instead of one of its own.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) shared_filter_fraction: f64,
    /// Control run: first one holder per client subscribes to the same filters on --host, so
    /// the measured SUBSCRIBEs change no route and wait for no commit.
    #[arg(long)]
    pub(crate) existing: bool,
    /// Another node's MQTT address (loopback): after each SUBACK, publish QoS 1 to that topic
    /// there and check that the subscriber receives it within 2 s. Reached with the same
    /// --transport as --host.
    #[arg(long, value_name = "ADDR")]
    pub(crate) publish_host: Option<String>,
    /// Upper bound on the measurement (set-up excluded); the run fails past it.
    #[arg(long, default_value_t = 120)]
    pub(crate) max_secs: u64,
}

impl SubscribeLatencyArgs {
    fn validate(&self) -> Result<(), UsageError> {
        let bad = |m: String| Err(UsageError(m));
        if self.clients == 0 || self.subscriptions == 0 {
            return bad("--clients and --subscriptions must be at least 1".into());
        }
        if self.subscriptions > 100_000 {
            return bad(format!(
                "--subscriptions {} is above 100,000",
                self.subscriptions
            ));
        }
        if !(0.0..=1.0).contains(&self.shared_filter_fraction) {
            return bad(format!(
                "--shared-filter-fraction {} must be between 0 and 1",
                self.shared_filter_fraction
            ));
        }
        if self.max_secs == 0 || self.max_secs > 3_600 {
            return bad(format!("--max-secs {} must be 1..=3600", self.max_secs));
        }
        if let Some(limit) = procfs::open_files_limit() {
            let needed = 3 * self.clients as u64 + 64;
            if needed > limit {
                return bad(format!(
                    "{} clients need about {needed} open files; this process may open {limit}",
                    self.clients
                ));
            }
        }
        Ok(())
    }

    /// Subscriptions per client that go to shared filters.
    fn shared_count(&self) -> usize {
        shared_count(self.subscriptions, self.shared_filter_fraction)
    }

    /// Client `k`'s `i`-th filter, and whether it is a shared one.
    fn filter(&self, run_tag: u32, k: usize, i: usize) -> (String, bool) {
        if is_shared(i, self.subscriptions, self.shared_count()) {
            (format!("lat/{run_tag}/shared/{i}"), true)
        } else {
            (format!("lat/{run_tag}/c{k}/{i}"), false)
        }
    }
}

/// round(fraction × n), within 0..=n.
fn shared_count(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).round() as usize).min(n)
}

/// Whether subscription `i` of `n` is one of the `shared` shared ones: exactly `shared` of
/// 0..n are, spread evenly (Bresenham), so shared and fresh SUBSCRIBEs interleave.
fn is_shared(i: usize, n: usize, shared: usize) -> bool {
    n > 0 && (i + 1) * shared / n > i * shared / n
}

/// One cross-node payload.
fn encode_payload(run_tag: u32, client: u32, index: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(PAYLOAD_LEN);
    b.put_u32(run_tag);
    b.put_u32(client);
    b.put_u32(index);
    b.freeze()
}

/// (client, subscription index) when `payload` is one of this run's.
fn decode_payload(run_tag: u32, mut payload: &[u8]) -> Option<(usize, usize)> {
    if payload.len() != PAYLOAD_LEN {
        return None;
    }
    let tag = payload.get_u32();
    let client = payload.get_u32() as usize;
    let index = payload.get_u32() as usize;
    (tag == run_tag).then_some((client, index))
}

/// What the cross-node check found for one client's publishes (or all of them, summed).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Delivery {
    /// Publishes sent (one per granted subscription).
    pub(crate) published: u64,
    /// Received within [`DELIVERY_LIMIT`] of the send.
    pub(crate) on_time: u64,
    /// Received, but later than [`DELIVERY_LIMIT`] (counted in `lost` as well).
    pub(crate) late: u64,
    /// Not received within [`DELIVERY_LIMIT`] (never, or late).
    pub(crate) lost: u64,
    /// Received more than once.
    pub(crate) duplicated: u64,
}

/// Classifies one client's publishes: `sent[i]` is when publish `i` left (None: not
/// published), `received[i]` when it first arrived.
fn classify(
    sent: &[Option<Instant>],
    received: &[Option<Instant>],
    duplicated: u64,
    limit: Duration,
) -> (Delivery, Vec<usize>) {
    let mut d = Delivery {
        duplicated,
        ..Delivery::default()
    };
    let mut lost = Vec::new();
    for (i, sent_at) in sent.iter().enumerate() {
        let Some(sent_at) = sent_at else { continue };
        d.published += 1;
        match received.get(i).copied().flatten() {
            Some(at) if at.saturating_duration_since(*sent_at) <= limit => d.on_time += 1,
            Some(_) => {
                d.late += 1;
                d.lost += 1;
                lost.push(i);
            }
            None => {
                d.lost += 1;
                lost.push(i);
            }
        }
    }
    (d, lost)
}

/// What one measuring client saw.
#[derive(Debug)]
struct ClientResult {
    fresh: Histogram,
    shared: Histogram,
    /// SUBACK reason codes ≥ 0x80 (the route did not commit in time, or a refusal).
    refused: u64,
    finished: Instant,
    delivery: Delivery,
    /// Publish-to-receive latency of publishes that arrived.
    delivery_latency: Histogram,
    /// Indexes of this client's lost publishes.
    lost: Vec<usize>,
    /// PUBACKs with 0x10 (no matching subscribers).
    no_subscribers: u64,
    /// PUBACKs with reason codes ≥ 0x80.
    publish_errors: u64,
    /// Publishes without a PUBACK by the end.
    unacked: u64,
    /// Messages from other clients (shared filters) or not from this run.
    other_messages: u64,
}

/// The cross-node part of the report.
#[derive(Debug, Serialize)]
pub(crate) struct CrossNodeReport {
    pub(crate) publish_host: String,
    #[serde(flatten)]
    pub(crate) delivery: Delivery,
    pub(crate) limit_ms: u64,
    /// Publish-to-receive latency of what arrived.
    pub(crate) delivery_us: LatencyReport,
    pub(crate) puback_no_matching_subscribers: u64,
    pub(crate) publish_errors: u64,
    pub(crate) unacked: u64,
    /// (client, subscription) of lost publishes, at most 20.
    pub(crate) lost_examples: Vec<(usize, usize)>,
    pub(crate) other_messages: u64,
}

/// What `subscribe-latency` measured (one JSON object with `--json`).
#[derive(Debug, Serialize)]
pub(crate) struct SubscribeLatencyReport {
    pub(crate) scenario: &'static str,
    pub(crate) label: String,
    pub(crate) protocol: &'static str,
    /// `tcp`, `tls` or `quic`.
    pub(crate) transport: &'static str,
    pub(crate) host: String,
    pub(crate) clients: usize,
    pub(crate) subscriptions_per_client: usize,
    pub(crate) shared_per_client: usize,
    /// Whether the filters were already routed on the node (the control run).
    pub(crate) existing: bool,
    pub(crate) subscribes: u64,
    pub(crate) refused: u64,
    pub(crate) elapsed_secs: f64,
    pub(crate) subscribes_per_sec: f64,
    /// Every SUBACK.
    pub(crate) suback_us: LatencyReport,
    /// SUBACKs of each client's own filters.
    pub(crate) fresh_suback_us: LatencyReport,
    /// SUBACKs of shared filters (samples 0 without --shared-filter-fraction).
    pub(crate) shared_suback_us: LatencyReport,
    pub(crate) cross_node: Option<CrossNodeReport>,
    pub(crate) broker_cpu_percent: Option<f64>,
    pub(crate) loadgen_cpu_percent: f64,
}

fn latency(h: &Histogram) -> LatencyReport {
    h.report()
}

/// Runs the scenario against `addr` and returns its report.
pub(crate) async fn run(
    args: &SubscribeLatencyArgs,
    addr: SocketAddr,
) -> Result<SubscribeLatencyReport> {
    args.validate()?;
    let publish_addr = match &args.publish_host {
        Some(h) => Some(
            target::resolve_loopback(h)
                .await
                .map_err(|e| UsageError(format!("--publish-host: {e}")))?,
        ),
        None => None,
    };
    let protocol = args.common.protocol();
    let run_tag = std::process::id();
    let dialer = args.common.transport.dialer()?;
    let options = |role: &str, k: usize| ConnectOptions {
        dialer: dialer.clone(),
        client_id: format!("roost-bench-{run_tag}-{role}-{k}"),
        protocol,
        keep_alive: KEEP_ALIVE_SECS,
        read_chunk: 4 * 1024,
        session_expiry: None,
    };

    let mut holders = Vec::new();
    if args.existing {
        let mut connecting = Vec::new();
        for k in 0..args.clients {
            let opts = options("holder", k);
            let filters: Vec<String> = (0..args.subscriptions)
                .map(|i| args.filter(run_tag, k, i).0)
                .collect();
            connecting.push(tokio::spawn(async move {
                let mut client = Client::connect(addr, &opts).await?;
                for batch in filters.chunks(HOLDER_BATCH) {
                    client.subscribe(batch, QoS::AtLeastOnce).await?;
                }
                Ok::<_, anyhow::Error>(client)
            }));
        }
        for client in join_all(connecting)
            .await
            .context("cannot set up the holders")?
        {
            let (stop, stopped) = oneshot::channel();
            holders.push((stop, tokio::spawn(hold(client, stopped))));
        }
    }

    let mut connecting = Vec::new();
    for k in 0..args.clients {
        let sub_opts = options("sub", k);
        let pub_opts = options("pub", k);
        connecting.push(tokio::spawn(async move {
            let sub = Client::connect(addr, &sub_opts).await?;
            let publisher = match publish_addr {
                Some(a) => Some(Client::connect(a, &pub_opts).await?),
                None => None,
            };
            Ok::<_, anyhow::Error>((sub, publisher))
        }));
    }
    let connected = join_all(connecting)
        .await
        .context("cannot connect the clients")?;
    eprintln!(
        "subscribe-latency: {} clients x {} SUBSCRIBEs ({} shared each){}{}",
        args.clients,
        args.subscriptions,
        args.shared_count(),
        if args.existing {
            ", filters already routed by holders"
        } else {
            ", every filter new"
        },
        match &args.publish_host {
            Some(h) => format!(", publishing each on {h}"),
            None => String::new(),
        }
    );

    let broker = args.common.broker_pid.map(|p| p.to_string());
    let broker_cpu_start = broker.as_deref().map(procfs::cpu_secs).transpose()?;
    let self_cpu_start = procfs::cpu_secs("self")?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.max_secs);
    let mut tasks = Vec::new();
    for (k, (sub, publisher)) in connected.into_iter().enumerate() {
        let measurer = Measurer {
            index: k,
            run_tag,
            filters: (0..args.subscriptions)
                .map(|i| args.filter(run_tag, k, i))
                .collect(),
            sub,
            publisher,
            deadline,
        };
        tasks.push(tokio::spawn(async move {
            measurer.run().await.with_context(|| format!("client {k}"))
        }));
    }
    let results = join_all(tasks).await;
    let broker_cpu_end = broker.as_deref().map(procfs::cpu_secs).transpose()?;
    let self_cpu_end = procfs::cpu_secs("self")?;
    let cpu_secs = start.elapsed().as_secs_f64().max(1e-9);
    for (stop, task) in holders {
        let _ = stop.send(());
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("subscribe-latency: holder: {e:#}"),
            Err(e) => eprintln!("subscribe-latency: holder panicked: {e}"),
        }
    }
    let results = results?;
    let percent = |a: f64, b: f64| (b - a) / cpu_secs * 100.0;
    Ok(summarize(
        args,
        start,
        &results,
        broker_cpu_start
            .zip(broker_cpu_end)
            .map(|(a, b)| percent(a, b)),
        percent(self_cpu_start, self_cpu_end),
    ))
}

/// A holder (`--existing`): keeps its subscriptions, acknowledges what it receives and pings
/// until told to stop, then disconnects.
async fn hold(mut client: Client, mut stop: oneshot::Receiver<()>) -> Result<()> {
    let period = Duration::from_secs(u64::from(KEEP_ALIVE_SECS / 2));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ping.tick() => client.queue(&Packet::PingReq)?,
            event = client.next_event() => match event? {
                Event::Packet(Packet::Publish(p)) => {
                    if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                        client.queue(&Packet::PubAck(Ack::new(id)))?;
                    }
                }
                Event::Packet(Packet::PingResp) | Event::Wrote => {}
                Event::Packet(other) => bail!("unexpected {} from the broker", other.kind()),
                Event::Closed => bail!("broker closed the connection"),
            },
        }
    }
    client.disconnect().await
}

/// Which connection an event came from.
enum Side {
    Sub,
    Pub,
}

/// The next event of either connection.
///
/// Cancel safety: safe, as [`Client::next_event`] is.
async fn next_event(sub: &mut Client, publisher: &mut Option<Client>) -> Result<(Side, Event)> {
    match publisher {
        Some(p) => tokio::select! {
            e = sub.next_event() => Ok((Side::Sub, e?)),
            e = p.next_event() => Ok((Side::Pub, e?)),
        },
        None => Ok((Side::Sub, sub.next_event().await?)),
    }
}

/// One measuring client: its subscriber connection on --host and, with --publish-host, its
/// publisher connection on the other node.
struct Measurer {
    index: usize,
    run_tag: u32,
    /// (filter, shared) per subscription.
    filters: Vec<(String, bool)>,
    sub: Client,
    publisher: Option<Client>,
    deadline: Instant,
}

/// Bookkeeping of one [`Measurer`] while it runs.
struct Tracking {
    result: ClientResult,
    /// Send time per subscription's publish.
    sent: Vec<Option<Instant>>,
    /// First receipt per subscription's publish.
    received: Vec<Option<Instant>>,
    duplicated: u64,
    /// Publishes awaiting PUBACK.
    inflight: Vec<PacketId>,
    /// The SUBSCRIBE awaiting its SUBACK: packet id and when it was queued.
    waiting: Option<(PacketId, Instant)>,
}

impl Measurer {
    async fn run(mut self) -> Result<ClientResult> {
        let n = self.filters.len();
        let mut t = Tracking {
            result: ClientResult {
                fresh: Histogram::default(),
                shared: Histogram::default(),
                refused: 0,
                finished: Instant::now(),
                delivery: Delivery::default(),
                delivery_latency: Histogram::default(),
                lost: Vec::new(),
                no_subscribers: 0,
                publish_errors: 0,
                unacked: 0,
                other_messages: 0,
            },
            sent: vec![None; n],
            received: vec![None; n],
            duplicated: 0,
            inflight: Vec::new(),
            waiting: None,
        };
        let period = Duration::from_secs(u64::from(KEEP_ALIVE_SECS / 2));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        for i in 0..n {
            let packet_id = self.sub.next_packet_id();
            self.sub.queue(&Packet::Subscribe(Subscribe {
                packet_id,
                properties: Properties::default(),
                filters: vec![(
                    self.filters[i].0.clone(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..SubscriptionOptions::default()
                    },
                )],
            }))?;
            t.waiting = Some((packet_id, Instant::now()));
            let suback_by = Instant::now() + SETUP_TIMEOUT;
            while t.waiting.is_some() {
                let limit = suback_by.min(self.deadline);
                tokio::select! {
                    _ = tokio::time::sleep_until(limit.into()) => {
                        bail!("no SUBACK for {} in time (at most {SETUP_TIMEOUT:?} each, \
                               --max-secs in all)", self.filters[i].0);
                    }
                    _ = ping.tick() => self.ping()?,
                    event = next_event(&mut self.sub, &mut self.publisher) => {
                        let (side, event) = event?;
                        self.handle(side, event, i, &mut t)?;
                    }
                }
            }
        }
        t.result.finished = Instant::now();
        // The last publishes get DELIVERY_LIMIT to arrive (and be acknowledged).
        let drain_until = (t.result.finished + DELIVERY_LIMIT).min(self.deadline);
        while self.publisher.is_some()
            && (!t.inflight.is_empty()
                || t.sent
                    .iter()
                    .zip(&t.received)
                    .any(|(s, r)| s.is_some() && r.is_none()))
        {
            tokio::select! {
                _ = tokio::time::sleep_until(drain_until.into()) => break,
                _ = ping.tick() => self.ping()?,
                event = next_event(&mut self.sub, &mut self.publisher) => {
                    let (side, event) = event?;
                    self.handle(side, event, n, &mut t)?;
                }
            }
        }
        let (delivery, lost) = classify(&t.sent, &t.received, t.duplicated, DELIVERY_LIMIT);
        t.result.delivery = delivery;
        t.result.lost = lost;
        t.result.unacked = t.inflight.len() as u64;
        self.sub.disconnect().await?;
        if let Some(p) = self.publisher {
            p.disconnect().await?;
        }
        Ok(t.result)
    }

    fn ping(&mut self) -> Result<()> {
        self.sub.queue(&Packet::PingReq)?;
        if let Some(p) = &mut self.publisher {
            p.queue(&Packet::PingReq)?;
        }
        Ok(())
    }

    /// Handles one event; `i` is the subscription whose SUBACK is awaited.
    fn handle(&mut self, side: Side, event: Event, i: usize, t: &mut Tracking) -> Result<()> {
        let now = Instant::now();
        match (side, event) {
            (_, Event::Wrote | Event::Packet(Packet::PingResp)) => {}
            (Side::Sub, Event::Packet(Packet::SubAck(ack))) => {
                let Some((id, at)) = t.waiting else {
                    bail!(
                        "SUBACK for packet id {} while none is awaited",
                        ack.packet_id.get()
                    );
                };
                if ack.packet_id != id {
                    bail!(
                        "SUBACK for packet id {}, expected {}",
                        ack.packet_id.get(),
                        id.get()
                    );
                }
                t.waiting = None;
                let (filter, shared) = &self.filters[i];
                let elapsed = now.saturating_duration_since(at).as_nanos() as u64;
                if *shared {
                    t.result.shared.record(elapsed);
                } else {
                    t.result.fresh.record(elapsed);
                }
                let code = ack
                    .reason_codes
                    .first()
                    .copied()
                    .unwrap_or(ReasonCode(0x80));
                if code.is_error() {
                    t.result.refused += 1;
                    return Ok(());
                }
                if let Some(p) = &mut self.publisher {
                    let packet_id = p.next_packet_id();
                    p.queue(&Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: filter.clone(),
                        packet_id: Some(packet_id),
                        properties: Properties::default(),
                        payload: encode_payload(self.run_tag, self.index as u32, i as u32),
                    }))?;
                    t.inflight.push(packet_id);
                    t.sent[i] = Some(Instant::now());
                }
            }
            (Side::Sub, Event::Packet(Packet::Publish(p))) => {
                if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                    self.sub.queue(&Packet::PubAck(Ack::new(id)))?;
                }
                match decode_payload(self.run_tag, &p.payload) {
                    Some((client, j)) if client == self.index && j < t.received.len() => {
                        match (t.received[j], t.sent[j]) {
                            (Some(_), _) => t.duplicated += 1,
                            (None, sent) => {
                                t.received[j] = Some(now);
                                if let Some(sent) = sent {
                                    let ns = now.saturating_duration_since(sent).as_nanos();
                                    t.result.delivery_latency.record(ns as u64);
                                }
                            }
                        }
                    }
                    _ => t.result.other_messages += 1,
                }
            }
            (Side::Pub, Event::Packet(Packet::PubAck(ack))) => {
                let Some(pos) = t.inflight.iter().position(|&id| id == ack.packet_id) else {
                    bail!(
                        "PUBACK for packet id {} that is not in flight",
                        ack.packet_id.get()
                    );
                };
                t.inflight.swap_remove(pos);
                if ack.reason_code == ReasonCode::NO_MATCHING_SUBSCRIBERS {
                    t.result.no_subscribers += 1;
                } else if ack.reason_code.is_error() {
                    t.result.publish_errors += 1;
                }
            }
            (_, Event::Packet(Packet::Disconnect(d))) => {
                bail!("broker sent DISCONNECT 0x{:02X}", d.reason_code.0)
            }
            (_, Event::Packet(other)) => bail!("unexpected {} from the broker", other.kind()),
            (_, Event::Closed) => bail!("broker closed the connection"),
        }
        Ok(())
    }
}

fn summarize(
    args: &SubscribeLatencyArgs,
    start: Instant,
    results: &[ClientResult],
    broker_cpu_percent: Option<f64>,
    loadgen_cpu_percent: f64,
) -> SubscribeLatencyReport {
    let mut fresh = Histogram::default();
    let mut shared = Histogram::default();
    let mut delivery_latency = Histogram::default();
    let mut delivery = Delivery::default();
    let (mut refused, mut no_subscribers, mut publish_errors, mut unacked, mut other) =
        (0, 0, 0, 0, 0);
    let mut lost_examples = Vec::new();
    let mut last = start;
    for (k, r) in results.iter().enumerate() {
        fresh.merge(&r.fresh);
        shared.merge(&r.shared);
        delivery_latency.merge(&r.delivery_latency);
        delivery.published += r.delivery.published;
        delivery.on_time += r.delivery.on_time;
        delivery.late += r.delivery.late;
        delivery.lost += r.delivery.lost;
        delivery.duplicated += r.delivery.duplicated;
        refused += r.refused;
        no_subscribers += r.no_subscribers;
        publish_errors += r.publish_errors;
        unacked += r.unacked;
        other += r.other_messages;
        for &i in &r.lost {
            if lost_examples.len() < MAX_LISTED_LOST {
                lost_examples.push((k, i));
            }
        }
        last = last.max(r.finished);
    }
    let mut all = fresh.clone();
    all.merge(&shared);
    let elapsed_secs = last.saturating_duration_since(start).as_secs_f64();
    let cross_node = args.publish_host.as_ref().map(|h| CrossNodeReport {
        publish_host: h.clone(),
        delivery,
        limit_ms: DELIVERY_LIMIT.as_millis() as u64,
        delivery_us: latency(&delivery_latency),
        puback_no_matching_subscribers: no_subscribers,
        publish_errors,
        unacked,
        lost_examples,
        other_messages: other,
    });
    SubscribeLatencyReport {
        scenario: "subscribe-latency",
        label: args.common.label.clone().unwrap_or_else(|| {
            format!(
                "subscribe-latency {}x{}{}{}",
                args.clients,
                args.subscriptions,
                if args.existing { " existing" } else { " new" },
                if args.shared_count() > 0 {
                    format!(" shared={}", args.shared_filter_fraction)
                } else {
                    String::new()
                }
            )
        }),
        protocol: args.common.protocol_name(),
        transport: args.common.transport.transport.name(),
        host: args.common.host.clone(),
        clients: args.clients,
        subscriptions_per_client: args.subscriptions,
        shared_per_client: args.shared_count(),
        existing: args.existing,
        subscribes: all.count(),
        refused,
        elapsed_secs,
        subscribes_per_sec: all.count() as f64 / elapsed_secs.max(1e-9),
        suback_us: latency(&all),
        fresh_suback_us: latency(&fresh),
        shared_suback_us: latency(&shared),
        cross_node,
        broker_cpu_percent,
        loadgen_cpu_percent,
    }
}

fn latency_line(f: &mut fmt::Formatter<'_>, name: &str, l: &LatencyReport) -> fmt::Result {
    writeln!(f, "  {name:<10} {}", l.line())
}

impl fmt::Display for SubscribeLatencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "subscribe-latency ({})", self.label)?;
        writeln!(
            f,
            "  setup      {} clients x {} SUBSCRIBEs on {} ({} shared each), {}, {} over {}",
            self.clients,
            self.subscriptions_per_client,
            self.host,
            self.shared_per_client,
            if self.existing {
                "filters already routed (no commit)"
            } else {
                "every filter a route change"
            },
            self.protocol,
            self.transport
        )?;
        writeln!(
            f,
            "  rate       {:.0} subscribes/s ({} in {:.2} s, {} refused)",
            self.subscribes_per_sec, self.subscribes, self.elapsed_secs, self.refused
        )?;
        latency_line(f, "SUBACK", &self.suback_us)?;
        if self.shared_suback_us.samples > 0 {
            latency_line(f, " fresh", &self.fresh_suback_us)?;
            latency_line(f, " shared", &self.shared_suback_us)?;
        }
        if let Some(c) = &self.cross_node {
            writeln!(
                f,
                "  cross-node {} published on {}: {} on time (≤ {} ms), {} lost ({} late), \
                 {} duplicated; PUBACK 0x10 {}, errors {}, unacked {}",
                c.delivery.published,
                c.publish_host,
                c.delivery.on_time,
                c.limit_ms,
                c.delivery.lost,
                c.delivery.late,
                c.delivery.duplicated,
                c.puback_no_matching_subscribers,
                c.publish_errors,
                c.unacked
            )?;
            latency_line(f, "delivery", &c.delivery_us)?;
            if !c.lost_examples.is_empty() {
                writeln!(f, "  lost (client, subscription): {:?}", c.lost_examples)?;
            }
        }
        let cpu = self
            .broker_cpu_percent
            .map_or("-".to_owned(), |v| format!("{v:.0} %"));
        write!(
            f,
            "  cpu        broker {cpu}, load generator {:.0} % (100 % = one core)",
            self.loadgen_cpu_percent
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_testkit::TestNode;

    fn args(clients: usize, subscriptions: usize) -> SubscribeLatencyArgs {
        SubscribeLatencyArgs {
            common: Common::for_tests(),
            clients,
            subscriptions,
            shared_filter_fraction: 0.0,
            existing: false,
            publish_host: None,
            max_secs: 60,
        }
    }

    #[test]
    fn shared_subscriptions_are_exactly_the_fraction_and_spread_evenly() {
        for (n, f, want) in [
            (10, 0.0, 0),
            (10, 1.0, 10),
            (10, 0.25, 3), // 2.5 rounds away from zero
            (250, 0.1, 25),
            (3, 0.5, 2),
            (1, 0.4, 0),
        ] {
            assert_eq!(shared_count(n, f), want, "{n} {f}");
            let shared = (0..n).filter(|&i| is_shared(i, n, want)).count();
            assert_eq!(shared, want, "{n} {f}");
        }
        let picked: Vec<bool> = (0..10).map(|i| is_shared(i, 10, 5)).collect();
        assert_eq!(
            picked,
            [false, true, false, true, false, true, false, true, false, true]
        );
        let a = SubscribeLatencyArgs {
            shared_filter_fraction: 0.5,
            ..args(2, 4)
        };
        assert_eq!(a.filter(7, 1, 0), ("lat/7/c1/0".to_owned(), false));
        assert_eq!(a.filter(7, 1, 1), ("lat/7/shared/1".to_owned(), true));
        assert_eq!(a.filter(7, 0, 1), a.filter(7, 1, 1));
    }

    #[test]
    fn payload_round_trips_and_foreign_payloads_are_ignored() {
        let p = encode_payload(42, 3, 249);
        assert_eq!(p.len(), PAYLOAD_LEN);
        assert_eq!(decode_payload(42, &p), Some((3, 249)));
        assert_eq!(decode_payload(43, &p), None);
        assert_eq!(decode_payload(42, &p[..11]), None);
        assert_eq!(decode_payload(42, b""), None);
    }

    #[test]
    fn late_and_missing_deliveries_are_lost_and_unpublished_ones_do_not_count() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let sent = [Some(t0), Some(t0), Some(t0), None, Some(ms(10))];
        let received = [Some(ms(5)), Some(ms(2_001)), None, None, Some(ms(2_010))];
        let (d, lost) = classify(&sent, &received, 4, Duration::from_secs(2));
        assert_eq!(
            d,
            Delivery {
                published: 4,
                on_time: 2,
                late: 1,
                lost: 2,
                duplicated: 4,
            }
        );
        assert_eq!(lost, [1, 2]);
    }

    #[test]
    fn invalid_arguments_are_usage_errors() {
        assert!(args(0, 1).validate().is_err());
        assert!(args(1, 0).validate().is_err());
        for f in [-0.1, 1.5, f64::NAN] {
            let a = SubscribeLatencyArgs {
                shared_filter_fraction: f,
                ..args(1, 1)
            };
            assert!(a.validate().is_err(), "{f}");
        }
        let a = SubscribeLatencyArgs {
            max_secs: 0,
            ..args(1, 1)
        };
        assert!(a.validate().is_err());
        assert!(args(4, 250).validate().is_ok());
    }

    #[tokio::test]
    async fn a_non_loopback_publish_host_is_refused() {
        let node = TestNode::start().await.expect("node");
        let a = SubscribeLatencyArgs {
            publish_host: Some("10.0.0.1:1883".to_owned()),
            ..args(1, 1)
        };
        let err = run(&a, node.addr()).await.expect_err("refused");
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err:#}");
        node.stop().await;
    }

    #[tokio::test]
    async fn new_existing_and_shared_runs_deliver_every_check_publish() -> Result<()> {
        let node = TestNode::start().await?;
        let host = node.addr().to_string();
        for existing in [false, true] {
            let a = SubscribeLatencyArgs {
                existing,
                shared_filter_fraction: 0.3,
                publish_host: Some(host.clone()),
                ..args(3, 20)
            };
            let report = run(&a, node.addr()).await?;
            assert_eq!(report.subscribes, 60, "{report}");
            assert_eq!(report.shared_suback_us.samples, 18, "{report}");
            assert_eq!(report.refused, 0, "{report}");
            let c = report.cross_node.as_ref().expect("cross-node report");
            assert_eq!(c.delivery.published, 60, "{report}");
            assert_eq!((c.delivery.lost, c.unacked), (0, 0), "{report}");
            assert_eq!(c.puback_no_matching_subscribers, 0, "{report}");
            assert!(report.subscribes_per_sec > 0.0, "{report}");
        }
        node.stop().await;
        Ok(())
    }
}
