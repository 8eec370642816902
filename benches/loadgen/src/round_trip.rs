//! `round-trip`: the latency of one message through the broker and back, with one message in
//! flight per client (what "ping" benchmarks of other brokers report), and round trips per
//! second.
//!
//! ```text
//!  C clients, each: SUBSCRIBE bench/rt/{run}/{i} at --qos, SUBACK; then until `end`:
//!    PUBLISH bench/rt/{run}/{i} seq n ──▶ broker ──▶ the same client receives seq n
//!       (QoS 1: and PUBACK; QoS 2: PUBREC, PUBREL, PUBCOMP — and it acknowledges what it
//!        receives the same way)                 ─▶ record now − send time, publish seq n+1
//!  t0 ── warm-up ── warm ── --duration-secs ── end (the last round trip finishes) ── DISCONNECT
//! ```
//!
//! The next message leaves only when the previous one came back and its own QoS flow is
//! complete, so each client has exactly one message in flight and the latency is that of an
//! unloaded path (add clients for load). A message not back within `--timeout-ms` counts as
//! lost and the client moves on; if it arrives later it is counted late, not timed.
//!
//! Placement (`--nodes`, `--pub-nodes`, `--sub-nodes`: [`crate::target`]): client i publishes
//! through its publisher node and subscribes through its subscriber node. When both are the
//! same address (the default) that is one connection; otherwise the client has two, and the
//! round trip crosses the cluster.
//!
//! Payloads carry the throughput header (send time, sequence, client, run tag), so latency is
//! one monotonic clock's difference; sequences give duplicates and reordering (a message
//! older than the one before it) per client. Per-second series and `--plot`: as `throughput`.

use crate::client::{Client, ConnectOptions, Event};
use crate::join_all;
use crate::latency::LatencyReport;
use crate::plot;
use crate::procfs;
use crate::progress::{self, RateBar};
use crate::series::{Batch, Recorder, SecondPoint};
use crate::target::{NodeArgs, Placement, UsageError};
use crate::throughput::{parse_header, sample_usage, write_header, SeqSet, Timeline, Usage};
use crate::{Common, MessageArgs};
use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use roost_codec::{Ack, Packet, PacketId, Properties, Publish, QoS};
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keep-alive announced by round-trip clients; PINGREQ every half of it.
const KEEP_ALIVE_SECS: u16 = 30;

/// Arguments of `roost-loadgen round-trip`.
#[derive(Debug, clap::Args)]
pub(crate) struct RoundTripArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) nodes: NodeArgs,
    /// Clients, each with one message in flight on its own topic.
    #[arg(long, default_value_t = 1)]
    pub(crate) clients: usize,
    #[command(flatten)]
    pub(crate) message: MessageArgs,
    /// Warm-up before the window; its round trips are not timed in the report (they are in
    /// the series).
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup_secs: u64,
    /// A message not back this long after it was sent counts as lost, and the next one goes.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) timeout_ms: u64,
    /// Write SVG plots of round trips and latency per second into DIR (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) plot: Option<PathBuf>,
}

impl RoundTripArgs {
    fn validate(&self) -> Result<(), UsageError> {
        let bad = |m: String| Err(UsageError(m));
        if self.clients == 0 {
            return bad("--clients must be at least 1".into());
        }
        self.message.validate()?;
        if !(1..=600_000).contains(&self.timeout_ms) {
            return bad(format!(
                "--timeout-ms {} must be 1..=600000",
                self.timeout_ms
            ));
        }
        procfs::check_open_files(
            2 * self.clients as u64 + 64,
            &format!("{} clients", self.clients),
        )
    }

    fn label(&self) -> String {
        self.common.label.clone().unwrap_or_else(|| {
            format!(
                "round-trip {} qos{} {}B",
                self.clients, self.message.qos, self.message.payload
            )
        })
    }
}

/// What `round-trip` measured (one JSON object with `--json`).
#[derive(Debug, Serialize)]
pub(crate) struct RoundTripReport {
    pub(crate) scenario: &'static str,
    pub(crate) label: String,
    pub(crate) protocol: &'static str,
    /// `tcp`, `tls` or `quic`.
    pub(crate) transport: &'static str,
    pub(crate) clients: usize,
    /// Nodes the clients published and subscribed through (round-robin), as given.
    pub(crate) pub_nodes: Vec<String>,
    pub(crate) sub_nodes: Vec<String>,
    pub(crate) qos: u8,
    pub(crate) payload_bytes: usize,
    pub(crate) warmup_secs: u64,
    pub(crate) duration_secs: u64,
    pub(crate) window_secs: f64,
    pub(crate) timeout_ms: u64,
    /// Round trips that started in the window (and came back in time).
    pub(crate) round_trips: u64,
    pub(crate) round_trips_per_sec: f64,
    /// Send to receive of the same message, round trips that started in the window.
    pub(crate) latency_us: LatencyReport,
    /// Whole run: messages sent.
    pub(crate) sent_total: u64,
    /// Not back within the timeout.
    pub(crate) lost: u64,
    /// Came back after their timeout (also counted lost).
    pub(crate) late: u64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
    /// QoS 1/2 publishes whose flow had not completed at the timeout.
    pub(crate) unacked: u64,
    pub(crate) publish_errors: u64,
    pub(crate) foreign: u64,
    /// CPU over the window, broker memory at its end (top-level fields in the JSON).
    #[serde(flatten)]
    pub(crate) usage: Usage,
    /// Per second since the start of the warm-up: sent, received, latency p50/p99.
    pub(crate) series: Vec<SecondPoint>,
    /// SVG files written by `--plot`.
    pub(crate) plots: Vec<String>,
}

/// What one client counted.
#[derive(Debug, Default)]
struct ClientResult {
    sent: u64,
    in_window: u64,
    lost: u64,
    late: u64,
    unacked: u64,
    errors: u64,
    foreign: u64,
    seen: SeqSet,
    per_second: Vec<u64>,
}

/// Runs the scenario with clients placed by `nodes` and returns its report.
pub(crate) async fn run(args: &RoundTripArgs, nodes: &Placement) -> Result<RoundTripReport> {
    args.validate()?;
    let protocol = args.common.protocol();
    let qos = args.message.qos();
    let run_tag = std::process::id();
    let dialer = args.common.transport.dialer()?;
    let options = |role: &str, i: usize| ConnectOptions {
        dialer: dialer.clone(),
        client_id: format!("roost-bench-{run_tag}-rt-{role}-{i}"),
        protocol,
        keep_alive: KEEP_ALIVE_SECS,
        read_chunk: 16 * 1024,
        session_expiry: None,
    };
    let mut connecting = Vec::new();
    for i in 0..args.clients {
        let topic = format!("bench/rt/{run_tag}/{i}");
        let (pub_addr, sub_addr) = (nodes.publisher(i), nodes.subscriber(i));
        let (pub_opts, sub_opts) = (options("pub", i), options("sub", i));
        connecting.push(tokio::spawn(async move {
            let mut subscriber = Client::connect(sub_addr, &sub_opts).await?;
            subscriber
                .subscribe(std::slice::from_ref(&topic), qos)
                .await?;
            let publisher = if pub_addr == sub_addr {
                None
            } else {
                Some(Client::connect(pub_addr, &pub_opts).await?)
            };
            Ok::<_, anyhow::Error>((topic, subscriber, publisher))
        }));
    }
    let connected = join_all(connecting)
        .await
        .context("cannot set up the clients")?;
    eprintln!(
        "round-trip: {} clients connected; running {} s warm-up + {} s",
        args.clients, args.warmup_secs, args.message.duration_secs
    );

    let timeline = Timeline::starting_now(args.warmup_secs, args.message.duration_secs, 0);
    let recorder = Arc::new(Recorder::new(timeline.t0));
    let bar = RateBar::start(
        progress::enabled(args.common.no_progress),
        "round-trip",
        timeline.t0,
        timeline.end - timeline.t0,
        recorder.clone(),
    );
    let usage = tokio::spawn(sample_usage(timeline, args.common.broker_pid));
    let mut tasks = Vec::new();
    for (i, (topic, subscriber, publisher)) in connected.into_iter().enumerate() {
        let client = RoundTripClient {
            index: i as u32,
            topic,
            subscriber,
            publisher,
            qos,
            payload_len: args.message.payload,
            run_tag,
            clients: args.clients,
            timeout: Duration::from_millis(args.timeout_ms),
            timeline,
            recorder: recorder.clone(),
        };
        tasks.push(tokio::spawn(async move {
            client.run().await.with_context(|| format!("client {i}"))
        }));
    }
    let results = join_all(tasks).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    let results = results?;
    let usage = usage.await.context("usage sampler failed")??;
    for r in &results {
        recorder.add_sent(&r.per_second);
    }
    let (latency, series) = recorder.finish();
    let window_secs = timeline.window_secs();
    let sum = |f: fn(&ClientResult) -> u64| results.iter().map(f).sum::<u64>();
    let round_trips = latency.count();
    let mut report = RoundTripReport {
        scenario: "round-trip",
        label: args.label(),
        protocol: args.common.protocol_name(),
        transport: args.common.transport.transport.name(),
        clients: args.clients,
        pub_nodes: nodes.publisher_names(),
        sub_nodes: nodes.subscriber_names(),
        qos: args.message.qos,
        payload_bytes: args.message.payload,
        warmup_secs: args.warmup_secs,
        duration_secs: args.message.duration_secs,
        window_secs,
        timeout_ms: args.timeout_ms,
        round_trips,
        round_trips_per_sec: round_trips as f64 / window_secs.max(1e-9),
        latency_us: latency.report(),
        sent_total: sum(|r| r.sent),
        lost: sum(|r| r.lost),
        late: sum(|r| r.late),
        duplicated: sum(|r| r.seen.duplicates),
        reordered: sum(|r| r.seen.reordered),
        unacked: sum(|r| r.unacked),
        publish_errors: sum(|r| r.errors),
        foreign: sum(|r| r.foreign),
        usage,
        series,
        plots: Vec::new(),
    };
    debug_assert!(sum(|r| r.in_window) >= report.round_trips);
    if let Some(dir) = &args.plot {
        report.plots = plot::write_run(dir, &report.label, &report.series)?;
    }
    Ok(report)
}

/// One client: its subscribing connection, and a publishing one when its nodes differ.
struct RoundTripClient {
    index: u32,
    topic: String,
    subscriber: Client,
    /// `None`: publish on the subscribing connection.
    publisher: Option<Client>,
    qos: QoS,
    payload_len: usize,
    run_tag: u32,
    clients: usize,
    timeout: Duration,
    timeline: Timeline,
    recorder: Arc<Recorder>,
}

/// Where the current message is.
#[derive(Debug, Default)]
struct InFlight {
    seq: u64,
    /// Packet id of the publish while its QoS 1/2 flow runs.
    packet_id: Option<PacketId>,
    echoed: bool,
}

impl RoundTripClient {
    async fn run(mut self) -> Result<ClientResult> {
        let t = self.timeline;
        let mut result = ClientResult::default();
        let mut batch = Batch::default();
        let mut scratch = BytesMut::new();
        let ping_period = Duration::from_secs(u64::from(KEEP_ALIVE_SECS / 2));
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_period, ping_period);
        let mut seq = 0;
        loop {
            let sent_at = Instant::now();
            if sent_at >= t.end {
                break;
            }
            write_header(
                &mut scratch,
                self.payload_len,
                t.nanos(sent_at),
                seq,
                self.index,
                self.run_tag,
            );
            let mut flight = InFlight {
                seq,
                ..InFlight::default()
            };
            let publisher = self.publisher.as_mut().unwrap_or(&mut self.subscriber);
            if self.qos != QoS::AtMostOnce {
                flight.packet_id = Some(publisher.next_packet_id());
            }
            publisher.queue(&Packet::Publish(Publish {
                dup: false,
                qos: self.qos,
                retain: false,
                topic: self.topic.clone(),
                packet_id: flight.packet_id,
                properties: Properties::default(),
                payload: scratch.split().freeze(),
            }))?;
            result.sent += 1;
            self.recorder.count_sent(&mut result.per_second, sent_at);
            self.recorder.sent.fetch_add(1, Ordering::Relaxed);
            if t.in_window(sent_at) {
                result.in_window += 1;
            }
            let give_up = tokio::time::sleep_until((sent_at + self.timeout).into());
            tokio::pin!(give_up);
            while !(flight.echoed && flight.packet_id.is_none()) {
                tokio::select! {
                    biased;
                    _ = give_up.as_mut() => {
                        if !flight.echoed {
                            result.lost += 1;
                        }
                        if flight.packet_id.is_some() {
                            result.unacked += 1;
                        }
                        break;
                    }
                    event = self.subscriber.next_event() => {
                        let event = event?;
                        self.handle(event, false, &mut flight, &mut result, &mut batch)?;
                    }
                    event = next_event(&mut self.publisher) => {
                        let event = event?;
                        self.handle(event, true, &mut flight, &mut result, &mut batch)?;
                    }
                    _ = ping.tick() => {
                        self.subscriber.queue(&Packet::PingReq)?;
                        if let Some(p) = &mut self.publisher {
                            p.queue(&Packet::PingReq)?;
                        }
                    }
                }
            }
            seq += 1;
        }
        batch.flush(&self.recorder);
        if let Some(p) = self.publisher {
            p.disconnect().await?;
        }
        self.subscriber.disconnect().await?;
        Ok(result)
    }

    /// One event from the subscribing connection, or (`on_publisher`) from the separate
    /// publishing one; acknowledgements go back on the connection the packet came from.
    fn handle(
        &mut self,
        event: Event,
        on_publisher: bool,
        flight: &mut InFlight,
        result: &mut ClientResult,
        batch: &mut Batch,
    ) -> Result<()> {
        let client = match (on_publisher, self.publisher.as_mut()) {
            (true, Some(p)) => p,
            _ => &mut self.subscriber,
        };
        let mut complete = |ack: &Ack, result: &mut ClientResult| {
            if flight.packet_id == Some(ack.packet_id) {
                flight.packet_id = None;
                if ack.reason_code.is_error() {
                    result.errors += 1;
                }
            }
        };
        match event {
            Event::Wrote | Event::Packet(Packet::PingResp) => {}
            Event::Packet(Packet::Publish(p)) => {
                let now = Instant::now();
                match parse_header(self.run_tag, self.clients, &p.payload) {
                    Some((sent_ns, seq, client_index)) if client_index == self.index as usize => {
                        let duplicate = result.seen.contains(seq);
                        result.seen.insert(seq);
                        if seq == flight.seq && !duplicate {
                            flight.echoed = true;
                            let t = self.timeline;
                            let latency = t.nanos(now).saturating_sub(sent_ns);
                            let in_window = sent_ns >= t.nanos(t.warm) && sent_ns < t.nanos(t.end);
                            batch.record(&self.recorder, now, Some((latency, in_window)));
                        } else if seq < flight.seq && !duplicate {
                            result.late += 1;
                        }
                    }
                    _ => result.foreign += 1,
                }
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => client.queue(&Packet::PubAck(Ack::new(id)))?,
                    (QoS::ExactlyOnce, Some(id)) => client.queue(&Packet::PubRec(Ack::new(id)))?,
                    _ => {}
                }
            }
            Event::Packet(Packet::PubRel(rel)) => {
                client.queue(&Packet::PubComp(Ack::new(rel.packet_id)))?
            }
            Event::Packet(Packet::PubAck(ack)) if self.qos == QoS::AtLeastOnce => {
                complete(&ack, result)
            }
            Event::Packet(Packet::PubRec(ack)) if self.qos == QoS::ExactlyOnce => {
                if ack.reason_code.is_error() {
                    complete(&ack, result); // the flow ends at an error PUBREC
                } else {
                    client.queue(&Packet::PubRel(Ack::new(ack.packet_id)))?;
                }
            }
            Event::Packet(Packet::PubComp(ack)) if self.qos == QoS::ExactlyOnce => {
                complete(&ack, result)
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

/// The next event of the separate publishing connection; never ready without one.
///
/// Cancel safety: [`Client::next_event`] is cancel safe, and so is waiting forever.
async fn next_event(publisher: &mut Option<Client>) -> Result<Event> {
    match publisher {
        Some(p) => p.next_event().await,
        None => std::future::pending().await,
    }
}

impl fmt::Display for RoundTripReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "round-trip ({})", self.label)?;
        writeln!(
            f,
            "  setup      {} clients, one message in flight each, QoS {}, {} B payload, {} over \
             {}",
            self.clients, self.qos, self.payload_bytes, self.protocol, self.transport
        )?;
        if self.pub_nodes != self.sub_nodes {
            writeln!(
                f,
                "  nodes      publishing on {}, subscribing on {}",
                self.pub_nodes.join(","),
                self.sub_nodes.join(",")
            )?;
        }
        writeln!(
            f,
            "  rate       {:.0} round trips/s ({} in {:.2} s after {} s warm-up)",
            self.round_trips_per_sec, self.round_trips, self.window_secs, self.warmup_secs
        )?;
        writeln!(f, "  latency    {}", self.latency_us.line())?;
        writeln!(
            f,
            "  integrity  {} sent, {} lost (not back within {} ms; {} of them late), {} \
             duplicated, {} reordered, {} unacked, {} publish errors, {} foreign",
            self.sent_total,
            self.lost,
            self.timeout_ms,
            self.late,
            self.duplicated,
            self.reordered,
            self.unacked,
            self.publish_errors,
            self.foreign
        )?;
        self.usage.write_cpu(f)?;
        for plot in &self.plots {
            write!(f, "\n  plot       {plot}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_testkit::TestNode;

    fn args(qos: u8, clients: usize) -> RoundTripArgs {
        RoundTripArgs {
            common: Common::for_tests(),
            nodes: NodeArgs::default(),
            clients,
            message: MessageArgs::for_tests(qos),
            warmup_secs: 0,
            timeout_ms: 2_000,
            plot: None,
        }
    }

    #[test]
    fn invalid_arguments_are_usage_errors() {
        let mut a = args(0, 1);
        a.message.payload = 8;
        assert!(a.validate().is_err());
        let mut a = args(0, 0);
        assert!(a.validate().is_err());
        a.clients = 1;
        a.timeout_ms = 0;
        assert!(a.validate().is_err());
        assert!(args(2, 3).validate().is_ok());
    }

    #[tokio::test]
    async fn every_qos_comes_back_in_order() -> Result<()> {
        let node = TestNode::start().await?;
        for qos in 0..=2 {
            let report = run(&args(qos, 2), &Placement::single(node.addr())).await?;
            assert!(report.round_trips > 10, "{report}");
            assert_eq!(report.latency_us.samples, report.round_trips);
            assert!(report.latency_us.p50 > 0.0, "{report}");
            assert_eq!(
                (
                    report.lost,
                    report.duplicated,
                    report.reordered,
                    report.unacked
                ),
                (0, 0, 0, 0),
                "{report}"
            );
            assert_eq!(report.foreign, 0, "{report}");
            let sent: u64 = report.series.iter().map(|p| p.sent).sum();
            assert_eq!(sent, report.sent_total);
        }
        node.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn round_trips_and_throughput_cross_a_two_node_cluster() -> Result<()> {
        let (a, b, _) = roost_testkit::two_nodes_with(false, |_| {}).await?;
        let nodes = NodeArgs {
            nodes: vec![a.addr().to_string(), b.addr().to_string()],
            ..NodeArgs::default()
        };
        let placement = Placement::resolve("127.0.0.1:1", &nodes).await?;
        assert_ne!(placement.publisher(0), placement.subscriber(0));

        let report = run(&args(1, 2), &placement).await?;
        assert!(report.round_trips > 10, "{report}");
        assert_eq!((report.lost, report.unacked), (0, 0), "{report}");
        assert_eq!(report.sub_nodes, vec![b.addr().to_string()]);

        let t = crate::throughput::tests::args(1, 2, 2, false);
        let report = crate::throughput::run(&t, &placement).await?;
        assert!(report.sent_total > 100, "{report}");
        assert_eq!(report.expected_deliveries, report.sent_total, "{report}");
        assert_eq!((report.lost, report.duplicated), (0, 0), "{report}");
        assert_eq!(report.pub_nodes, vec![a.addr().to_string()]);
        a.stop().await;
        b.stop().await;
        Ok(())
    }
}
