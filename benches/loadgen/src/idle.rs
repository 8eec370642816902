//! `idle`: how much broker memory one idle connection (with one subscription) costs, and how
//! fast connections are accepted.
//!
//! ```text
//!  read broker VmRSS ─▶ open N connections, at most --concurrency handshakes in flight
//!     (and, with --connect-rate R, connection i started no earlier than i / R s in)
//!     (CONNECT/CONNACK, then SUBSCRIBE idle/{i} / SUBACK with --subscribe)
//!  ─▶ all established: settle 2 s ─▶ read broker VmRSS
//!  ─▶ hold --hold-secs (each connection pings at keep-alive / 2) ─▶ DISCONNECT all
//! ```
//!
//! With `--marginal` the ramp runs in two halves, each followed by the settle and an RSS
//! reading, and the report adds the second half's KiB per connection: what more
//! connections cost once the broker holds many, without the fixed costs the first ones
//! pay. Unpaced, the second half also reuses the high-water mark the first half's ramp left
//! (memory freed when a connection goes idle stays resident), so it reads low; paced with
//! `--connect-rate`, few connections are mid-handshake at once and it is close to the
//! steady cost of one more idle connection.
//!
//! Memory per connection = (RSS after − RSS before) / connections established, in KiB. It
//! includes everything the broker allocates for a connection: socket buffers it owns, the
//! driver task, the session, the subscription index entry. Kernel socket memory is not in RSS.
//!
//! Each connection needs one file descriptor here and one in the broker; the machine caps a
//! process at 20,000 open files, hence the default of 5,000 connections and the check against
//! our own limit before starting. Over QUIC (`--transport quic`) a run opens at most 5,000:
//! see [`MAX_QUIC_CONNECTIONS`].

use crate::client::{Client, ConnectOptions, Event, SETUP_TIMEOUT};
use crate::procfs;
use crate::progress;
use crate::target::UsageError;
use crate::transport::TransportKind;
use crate::Common;
use anyhow::{anyhow, bail, Result};
use roost_codec::{Packet, QoS};
use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

/// Pause between the last connection established and the second RSS reading, so the broker's
/// allocator and lazily allocated buffers settle.
const SETTLE: Duration = Duration::from_secs(2);

/// File descriptors kept free for everything that is not a benchmark connection.
const SPARE_FDS: u64 = 64;

/// Most connections one run opens over QUIC. Each QUIC connection has its own quinn endpoint
/// in this process ([`crate::transport`]), and an endpoint costs about 1.3 MiB here (5,000
/// of them: 6.2 GiB peak RSS and 41 s of system CPU, benches/results/2026-12-01-transports.md);
/// this bound keeps a run well inside the machine's memory.
const MAX_QUIC_CONNECTIONS: usize = 5000;

/// Arguments of `roost-loadgen idle`.
#[derive(Debug, clap::Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections to open (each needs a file descriptor here and in the broker; the machine
    /// caps a process at 20,000).
    #[arg(long, default_value_t = 5000)]
    pub(crate) connections: usize,
    /// Subscribe each connection to its own topic `idle/{i}` (QoS 0).
    #[arg(long)]
    pub(crate) subscribe: bool,
    /// Seconds to keep the connections open once all are established.
    #[arg(long, default_value_t = 10)]
    pub(crate) hold_secs: u64,
    /// Most connection handshakes in flight at once during the ramp.
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    /// Keep-alive announced in CONNECT; a PINGREQ goes out every half of it.
    #[arg(long, default_value_t = 30)]
    pub(crate) keep_alive_secs: u16,
    /// Offered connect rate (connections started per second, open loop: connection i starts
    /// `i / rate` seconds in, or as soon as a handshake slot frees up after that). 0: as fast
    /// as `--concurrency` allows.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) connect_rate: f64,
    /// Open the connections in two halves, with an RSS reading after each (needs
    /// `--broker-pid`), and report the second half's KiB per connection as well.
    #[arg(long)]
    pub(crate) marginal: bool,
    /// Persistent sessions: each connection asks the broker to keep its session this many
    /// seconds past the connection (v5 Session Expiry Interval; v3.1.1: clean session 0), so
    /// the figure includes what a persistent session costs beyond the connection (in Roost, its
    /// entry in the replicated session registry). v5 sessions are ended at DISCONNECT.
    #[arg(long, value_name = "SECS")]
    pub(crate) session_expiry_secs: Option<u32>,
}

/// What `idle` measured (one JSON object with `--json`).
#[derive(Debug, Serialize)]
pub(crate) struct IdleReport {
    pub(crate) scenario: &'static str,
    pub(crate) label: String,
    pub(crate) protocol: &'static str,
    /// `tcp`, `tls` or `quic`.
    pub(crate) transport: &'static str,
    pub(crate) connections_requested: usize,
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) subscribe: bool,
    /// `--session-expiry-secs`: persistent sessions, kept this long past their connection.
    pub(crate) session_expiry_secs: Option<u32>,
    /// `--connect-rate` (connections offered per second), if one was set.
    pub(crate) connect_rate_offered: Option<f64>,
    /// Most handshakes in flight (`--concurrency`).
    pub(crate) concurrency: usize,
    /// Seconds from the first connect to the last established connection.
    pub(crate) ramp_secs: f64,
    pub(crate) connections_per_sec: f64,
    pub(crate) broker_rss_before_kib: Option<u64>,
    pub(crate) broker_rss_after_kib: Option<u64>,
    /// (after − before) / connected.
    pub(crate) broker_kib_per_connection: Option<f64>,
    /// With `--marginal`: RSS after the first half (and its settle), and the second half's
    /// (after − half) / its connections.
    pub(crate) broker_rss_half_kib: Option<u64>,
    pub(crate) broker_kib_per_connection_marginal: Option<f64>,
    /// Broker RSS at the end of the hold, before disconnecting.
    pub(crate) broker_rss_end_kib: Option<u64>,
    pub(crate) hold_secs: u64,
    /// Connections the broker closed during the hold (should be 0).
    pub(crate) dropped_during_hold: usize,
}

/// Runs the scenario against `addr` and returns its report.
pub(crate) async fn run(args: &IdleArgs, addr: SocketAddr) -> Result<IdleReport> {
    if args.connections == 0 || args.concurrency == 0 {
        return Err(UsageError("--connections and --concurrency must be at least 1".into()).into());
    }
    if !args.connect_rate.is_finite() || args.connect_rate < 0.0 {
        return Err(UsageError(format!(
            "--connect-rate {} must be 0 (unpaced) or a positive number of connections per \
             second",
            args.connect_rate
        ))
        .into());
    }
    if args.common.transport.transport == TransportKind::Quic
        && args.connections > MAX_QUIC_CONNECTIONS
    {
        return Err(UsageError(format!(
            "--connections {} over QUIC: at most {MAX_QUIC_CONNECTIONS} (each QUIC connection \
             has its own endpoint here, about 1.3 MiB of this process's memory)",
            args.connections
        ))
        .into());
    }
    if let Some(limit) = procfs::open_files_limit() {
        if args.connections as u64 + SPARE_FDS > limit {
            return Err(UsageError(format!(
                "--connections {} needs about {} open files but this process may open {limit} \
                 (ulimit -n); lower --connections or raise the limit",
                args.connections,
                args.connections as u64 + SPARE_FDS
            ))
            .into());
        }
    }
    let protocol = args.common.protocol();
    let dialer = args.common.transport.dialer()?;
    let broker_pid = args.common.broker_pid;
    let rss_before = broker_pid.map(procfs::rss_kib).transpose()?;

    if args.marginal && broker_pid.is_none() {
        return Err(
            UsageError("--marginal reads the broker's RSS: give --broker-pid".into()).into(),
        );
    }
    if args.marginal && args.connections < 2 {
        return Err(UsageError("--marginal needs at least 2 --connections".into()).into());
    }

    let permits = Arc::new(Semaphore::new(args.concurrency));
    let (established_tx, mut established_rx) = mpsc::channel::<Result<()>>(args.concurrency);
    let (stop_tx, stop_rx) = watch::channel(false);
    let dropped = Arc::new(AtomicUsize::new(0));
    let run_tag = std::process::id();
    let mut tasks = JoinSet::new();
    // The halves of `--marginal`; without it the first is empty and skipped.
    let half = if args.marginal {
        args.connections / 2
    } else {
        0
    };
    let mut connected = 0;
    let mut failed = 0;
    let mut first_error = None;
    let mut ramp_secs = 0.0;
    let mut rss_half = None;
    let mut connected_half = 0;
    let show = progress::enabled(args.common.no_progress);
    let bar = progress::counter(show, "idle: connecting", args.connections as u64);
    for range in [0..half, half..args.connections] {
        if range.is_empty() {
            continue;
        }
        let stage_start = Instant::now();
        let start_of = |i: usize| {
            (args.connect_rate > 0.0).then(|| {
                tokio::time::Instant::from_std(stage_start)
                    + Duration::from_secs_f64((i - range.start) as f64 / args.connect_rate)
            })
        };
        for i in range.clone() {
            let connection = IdleConnection {
                start_at: start_of(i),
                addr,
                options: ConnectOptions {
                    dialer: dialer.clone(),
                    client_id: format!("roost-bench-{run_tag}-idle-{i}"),
                    protocol,
                    keep_alive: args.keep_alive_secs,
                    read_chunk: 256,
                    session_expiry: args.session_expiry_secs,
                },
                topic: args.subscribe.then(|| format!("idle/{i}")),
                permits: permits.clone(),
                established: Some(established_tx.clone()),
                stop: stop_rx.clone(),
                dropped: dropped.clone(),
            };
            tasks.spawn(connection.run());
        }

        // Every handshake is bounded by SETUP_TIMEOUT (twice: connect, then subscribe) and at
        // most `concurrency` run at once, so the ramp is bounded too (plus the pacing's own
        // length).
        let waves = range.len().div_ceil(args.concurrency) as u32;
        let paced = start_of(range.end)
            .map_or(Duration::ZERO, |t| t.into_std().duration_since(stage_start));
        let ramp_limit = 2 * SETUP_TIMEOUT * waves + paced + Duration::from_secs(10);
        let ramp = async {
            while let Some(result) = established_rx.recv().await {
                match result {
                    Ok(()) => connected += 1,
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                let done = connected + failed;
                bar.set_position(done as u64);
                if failed > 0 {
                    bar.set_message(format!("({failed} failed)"));
                }
                if !show && done % 1000 == 0 && done < args.connections {
                    eprintln!("idle: {connected} connected, {failed} failed");
                }
                if done == range.end {
                    break;
                }
            }
        };
        let ramped = tokio::time::timeout(ramp_limit, ramp).await;
        ramp_secs += stage_start.elapsed().as_secs_f64();
        if ramped.is_err() {
            bar.finish_and_clear();
            let _ = stop_tx.send(true);
            bail!("ramp did not finish within {ramp_limit:?}");
        }
        if range.end == half {
            if let Some(pid) = broker_pid {
                tokio::time::sleep(SETTLE).await;
                rss_half = Some(procfs::rss_kib(pid)?);
                connected_half = connected;
            }
        }
    }
    drop(established_tx);
    bar.finish_and_clear();
    eprintln!("idle: {connected} connected, {failed} failed in {ramp_secs:.2} s");
    if connected == 0 {
        let _ = stop_tx.send(true);
        bail!(
            "no connection succeeded: {}",
            first_error.unwrap_or_default()
        );
    }

    let hold_start = Instant::now();
    let mut rss_after = None;
    if let Some(pid) = broker_pid {
        tokio::time::sleep(SETTLE).await;
        rss_after = Some(procfs::rss_kib(pid)?);
    }
    let hold = Duration::from_secs(args.hold_secs);
    tokio::time::sleep(hold.saturating_sub(hold_start.elapsed())).await;
    let rss_end = broker_pid.map(procfs::rss_kib).transpose()?;
    let dropped_during_hold = dropped.load(Ordering::Relaxed);

    let _ = stop_tx.send(true);
    let close = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SETUP_TIMEOUT * 2, close)
        .await
        .is_err()
    {
        eprintln!(
            "idle: some connections did not close within {:?}",
            SETUP_TIMEOUT * 2
        );
        tasks.abort_all();
    }

    let per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) => Some((after as f64 - before as f64) / connected as f64),
        _ => None,
    };
    let marginal = match (rss_half, rss_after) {
        (Some(half), Some(after)) if connected > connected_half => {
            Some((after as f64 - half as f64) / (connected - connected_half) as f64)
        }
        _ => None,
    };
    Ok(IdleReport {
        scenario: "idle",
        label: args
            .common
            .label
            .clone()
            .unwrap_or_else(|| format!("idle {}", args.connections)),
        protocol: args.common.protocol_name(),
        transport: dialer.kind().name(),
        connections_requested: args.connections,
        connected,
        failed,
        first_error,
        subscribe: args.subscribe,
        session_expiry_secs: args.session_expiry_secs,
        connect_rate_offered: (args.connect_rate > 0.0).then_some(args.connect_rate),
        concurrency: args.concurrency,
        ramp_secs,
        connections_per_sec: connected as f64 / ramp_secs.max(1e-9),
        broker_rss_before_kib: rss_before,
        broker_rss_after_kib: rss_after,
        broker_kib_per_connection: per_connection,
        broker_rss_half_kib: rss_half,
        broker_kib_per_connection_marginal: marginal,
        broker_rss_end_kib: rss_end,
        hold_secs: args.hold_secs,
        dropped_during_hold,
    })
}

/// One idle connection's task state.
struct IdleConnection {
    /// When to start connecting (`--connect-rate`), if paced.
    start_at: Option<tokio::time::Instant>,
    addr: SocketAddr,
    options: ConnectOptions,
    topic: Option<String>,
    permits: Arc<Semaphore>,
    /// Told once: established (connected and subscribed) or failed; then dropped, so the
    /// ramp sees the channel close if every task has reported or ended.
    established: Option<mpsc::Sender<Result<()>>>,
    stop: watch::Receiver<bool>,
    dropped: Arc<AtomicUsize>,
}

impl IdleConnection {
    async fn run(mut self) {
        if let Some(at) = self.start_at {
            tokio::time::sleep_until(at).await;
        }
        let client = {
            let Ok(_permit) = self.permits.acquire().await else {
                return;
            };
            self.establish().await
        };
        let Some(established) = self.established.take() else {
            return;
        };
        let client = match client {
            Ok(c) => {
                let _ = established.send(Ok(())).await;
                c
            }
            Err(e) => {
                let _ = established.send(Err(e)).await;
                return;
            }
        };
        drop(established);
        if self.hold(client).await.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn establish(&self) -> Result<Client> {
        let mut client = Client::connect(self.addr, &self.options).await?;
        if let Some(topic) = &self.topic {
            client
                .subscribe(std::slice::from_ref(topic), QoS::AtMostOnce)
                .await?;
        }
        Ok(client)
    }

    /// Pings until told to stop, then disconnects. An error means the connection was lost.
    async fn hold(&mut self, mut client: Client) -> Result<()> {
        let period = Duration::from_secs(u64::from(self.options.keep_alive.max(2)) / 2);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            if *self.stop.borrow() {
                return client.disconnect().await;
            }
            tokio::select! {
                event = client.next_event() => match event? {
                    Event::Packet(Packet::PingResp) | Event::Wrote => {}
                    // QoS 0 messages on our topic (nobody publishes there in this scenario).
                    Event::Packet(Packet::Publish(_)) => {}
                    Event::Packet(Packet::Disconnect(d)) => {
                        bail!("broker sent DISCONNECT 0x{:02X}", d.reason_code.0)
                    }
                    Event::Packet(other) => bail!("unexpected {}", other.kind()),
                    Event::Closed => return Err(anyhow!("broker closed the connection")),
                },
                _ = ping.tick() => client.queue(&Packet::PingReq)?,
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        return client.disconnect().await;
                    }
                }
            }
        }
    }
}

impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "idle connections ({})", self.label)?;
        writeln!(
            f,
            "  connections    {} of {} ({} over {}, subscribe: {}, sessions: {}), {} failed",
            self.connected,
            self.connections_requested,
            self.protocol,
            self.transport,
            self.subscribe,
            match self.session_expiry_secs {
                Some(secs) => format!("persistent, expiry {secs} s"),
                None => "clean".to_owned(),
            },
            self.failed
        )?;
        if let Some(e) = &self.first_error {
            writeln!(f, "  first error    {e}")?;
        }
        let offered = match self.connect_rate_offered {
            Some(rate) => format!("{rate:.0}/s offered"),
            None => "unpaced".to_owned(),
        };
        writeln!(
            f,
            "  ramp           {:.2} s ({:.0} connections/s; {offered}, at most {} handshakes in \
             flight)",
            self.ramp_secs, self.connections_per_sec, self.concurrency
        )?;
        match (
            self.broker_rss_before_kib,
            self.broker_rss_after_kib,
            self.broker_kib_per_connection,
        ) {
            (Some(before), Some(after), Some(per)) => {
                writeln!(f, "  broker RSS     {before} KiB before, {after} KiB after")?;
                writeln!(f, "  per connection {per:.2} KiB")?;
                if let (Some(half), Some(marginal)) = (
                    self.broker_rss_half_kib,
                    self.broker_kib_per_connection_marginal,
                ) {
                    writeln!(
                        f,
                        "  marginal       {marginal:.2} KiB per connection of the second half \
                         ({half} KiB after the first)"
                    )?;
                }
            }
            _ => writeln!(f, "  broker RSS     not measured (no --broker-pid)")?,
        }
        if let Some(end) = self.broker_rss_end_kib {
            writeln!(
                f,
                "  broker RSS end {end} KiB after {} s hold",
                self.hold_secs
            )?;
        }
        write!(
            f,
            "  dropped        {} during the hold",
            self.dropped_during_hold
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_codec::Protocol;
    use roost_testkit::TestNode;

    /// `connections` connections, all handshakes at once, no subscription, no hold; a test
    /// changes what it is about with struct-update syntax.
    fn idle_args(connections: usize) -> IdleArgs {
        IdleArgs {
            common: Common::for_tests(),
            connections,
            subscribe: false,
            hold_secs: 0,
            concurrency: connections,
            keep_alive_secs: 30,
            connect_rate: 0.0,
            marginal: false,
            session_expiry_secs: None,
        }
    }

    #[tokio::test]
    async fn opens_holds_and_closes_connections() -> Result<()> {
        let node = TestNode::start().await?;
        let args = IdleArgs {
            subscribe: true,
            hold_secs: 1,
            concurrency: 8,
            keep_alive_secs: 2,
            ..idle_args(50)
        };
        let report = run(&args, node.addr()).await?;
        assert_eq!(report.connected, 50);
        assert_eq!(report.failed, 0);
        assert_eq!(report.dropped_during_hold, 0);
        // The same with persistent sessions, ended at DISCONNECT: the next connection with one
        // of their ids finds no session.
        let args = IdleArgs {
            session_expiry_secs: Some(60),
            ..args
        };
        let report = run(&args, node.addr()).await?;
        assert_eq!(report.connected, 50);
        assert_eq!(report.failed, 0);
        assert_eq!(report.dropped_during_hold, 0);
        assert_eq!(report.session_expiry_secs, Some(60));
        let id = format!("roost-bench-{}-idle-0", std::process::id());
        let mut c = roost_testkit::RawClient::open(node.addr(), Protocol::V5).await?;
        let ack = c
            .handshake(roost_testkit::connect_packet(Protocol::V5, &id, false))
            .await?;
        assert!(!ack.session_present, "{id}: ended at DISCONNECT");
        node.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn idle_connections_over_quic_are_held_and_closed() -> Result<()> {
        let node = crate::transport::test_node::SecureNode::start().await?;
        let kind = crate::transport::TransportKind::Quic;
        let mut common = Common::for_tests();
        common.transport = node.args(kind);
        let args = IdleArgs {
            common,
            subscribe: true,
            hold_secs: 1,
            concurrency: 4,
            keep_alive_secs: 2,
            ..idle_args(10)
        };
        let report = run(&args, node.addr(kind)).await?;
        assert_eq!((report.connected, report.failed), (10, 0));
        assert_eq!(report.dropped_during_hold, 0);
        assert_eq!(report.transport, "quic");
        node.node.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn more_quic_connections_than_the_bound_are_refused() {
        let mut common = Common::for_tests();
        common.transport.transport = TransportKind::Quic;
        let args = IdleArgs {
            common,
            concurrency: 1,
            ..idle_args(MAX_QUIC_CONNECTIONS + 1)
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let e = run(&args, addr).await.expect_err("refused");
        assert!(e.downcast_ref::<UsageError>().is_some(), "{e:#}");
        assert!(format!("{e}").contains("over QUIC"), "{e}");
    }

    #[tokio::test]
    async fn a_connect_rate_paces_the_ramp_and_a_bad_one_is_refused() -> Result<()> {
        let node = TestNode::start().await?;
        let mut args = IdleArgs {
            connect_rate: 40.0,
            ..idle_args(20)
        };
        let report = run(&args, node.addr()).await?;
        assert_eq!((report.connected, report.failed), (20, 0));
        assert_eq!(report.connect_rate_offered, Some(40.0));
        // The last of 20 starts 19/40 s in: pacing, not speed, sets this lower bound.
        assert!(report.ramp_secs >= 0.47, "ramp {} s", report.ramp_secs);
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            args.connect_rate = bad;
            let e = run(&args, node.addr()).await.expect_err("refused");
            assert!(e.downcast_ref::<UsageError>().is_some(), "{e:#}");
        }
        node.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn measures_the_rss_of_a_pid() -> Result<()> {
        let node = TestNode::start().await?;
        let mut common = Common::for_tests();
        // The broker runs in this process; the number is meaningless but must be present.
        common.broker_pid = Some(std::process::id());
        let args = IdleArgs {
            common,
            ..idle_args(5)
        };
        let report = run(&args, node.addr()).await?;
        assert!(report.broker_kib_per_connection.is_some());
        assert!(report.broker_rss_end_kib.is_some());
        assert!(report.broker_kib_per_connection_marginal.is_none());
        node.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn marginal_opens_two_halves_with_a_reading_between() -> Result<()> {
        let node = TestNode::start().await?;
        let mut common = Common::for_tests();
        common.broker_pid = Some(std::process::id());
        let mut args = IdleArgs {
            common,
            subscribe: true,
            marginal: true,
            ..idle_args(7)
        };
        let report = run(&args, node.addr()).await?;
        assert_eq!((report.connected, report.failed), (7, 0));
        assert!(report.broker_rss_half_kib.is_some());
        assert!(report.broker_kib_per_connection_marginal.is_some());
        assert!(report.to_string().contains("marginal"), "{report}");
        // Without a pid there is nothing to read between the halves.
        args.common.broker_pid = None;
        let e = run(&args, node.addr()).await.expect_err("refused");
        assert!(e.downcast_ref::<UsageError>().is_some(), "{e:#}");
        node.stop().await;
        Ok(())
    }
}
