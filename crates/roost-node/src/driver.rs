//! The connection driver: one tokio task per client connection. It does I/O and nothing else:
//! every protocol decision is the core session's ([`roost_core::session::Session::handle`],
//! [`roost_core::connect::negotiate`]), every routing decision the broker's.
//!
//! ```text
//!            ┌──────────────────────────── driver task ─────────────────────────────┐
//!  socket ──▶│ readable → try_read → decode → session.handle(packet, now) ─▶ Handled   │
//!            │   Publish ─▶ Broker::publish ─▶ ack (in PUBLISH order, after peers)     │
//!            │   Subscribe/Unsubscribe ─▶ Broker ─▶ SUBACK/UNSUBACK via the outbox      │
//!            │   Close ─▶ DISCONNECT (v5) ─▶ Broker::detach                             │
//!  socket ◀──│ try_write(wbuf) ◀── encode ≤ 64 KiB ◀── prepare_publish ◀── outbox ◀── wake│
//!            │ timer: session.poll_timeout() ─▶ handle_timeout (keep-alive)            │
//!            └──────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Only this task awaits the socket. It waits on four things in one `select!`: the socket
//! becoming readable, its [`ConnCtl::wake`] (routing put something in the session's outbox, or
//! the broker wants the connection gone), the peers' answers for the oldest acknowledgement
//! waiting for them, and one timer: the session's next deadline, the credentials' expiry or
//! that oldest acknowledgement's forward timeout, whichever comes first.
//!
//! The socket is any [`ByteStream`] (TCP, TLS, WebSocket: roost-transport, RFC 0007); the
//! task is generic over it, so plain TCP pays nothing for the others.
//!
//! Cancel safety: the `select!` arms are `ByteStream::readable` (cancel safe: readiness only, no
//! data is taken), `Wake::notified` (a permit stored by `notify_one` is not lost when the
//! future is dropped), awaiting the peers' answers by reference ([`PeerWait::answered`] keeps
//! what it took), and the connection's one timer
//! polled by reference (its deadline is moved with `Sleep::reset`; dropping the poll takes
//! nothing from it).
//! Reads happen with `try_read_buf` after the `select!` returns, and writes with `try_write`
//! (a blocked write waits on writability, the connection's wake and a stall timeout, see
//! `Conn::flush_until`), so no partial read or write is ever dropped.
//!
//! A client that stops reading: at most [`WRITE_BATCH`] bytes are encoded at a time; its
//! session's outbox keeps the rest under the queue's count and byte limits (what no longer
//! fits is dropped and counted); a takeover, shutdown or kick ends the blocked writer at once,
//! and `mqtt.write_timeout_secs` without progress closes it (`write_timeout`).
//!
//! Parked (RFC 0011): a connection with nothing in flight and no event for
//! `mqtt.park_after_ms` leaves the loop above, whose state is boxed, and waits small
//! ([`ParkedWait`]) on the socket and its wake-up only: its keep-alive deadline is armed in
//! the node's deadlines table (RFC 0013), which notifies the wake-up when it comes. Any of
//! them starts the loop again; the client sees no difference. While parked the task holds `Conn`,
//! `Idle` (the session, its control block, keep-alive and policy state) and that wait, not the
//! loop's `select!` state nor `Live`'s queues; the write buffer and the session's outbox
//! buffer are freed when it parks.
//!
//! Memory: an idle connection holds no read or write buffer. The read buffer is allocated when
//! the socket becomes readable and released when it has been drained; the write buffer is
//! released after each flush if it grew beyond a few KiB.

use crate::broker::{Attached, Broker, ConnCtl, ConnInfo, Origin, PeerWait, SessionRef, WallMs};
use bytes::BytesMut;
use roost_codec::{encode, Connect, Decoder, LastWill, Packet, Protocol, ReasonCode};
use roost_core::connect::{connect_error_reply, negotiate, within_maximum_packet_size, Negotiated};
use roost_core::policy::{Action, Resource};
use roost_core::session::{
    retained_on_subscribe, suback, unsuback, Close, DropReason, Handled, Inbound, Outbound,
    PublishOutcome, ReadyAck, SubscribeRequest, Tally, Timeout,
};
use roost_core::topic::TopicFilter;
use roost_transport::ByteStream;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tracing::{debug, info};

/// Read-buffer growth step.
const READ_CHUNK: usize = 4096;
/// A write buffer larger than this is freed after a flush instead of kept.
const KEEP_WBUF: usize = 1024;
/// Encoding stops once the write buffer holds this much; the rest of the outbox waits for the
/// next round. A client that does not read holds at most this (plus one packet) in the node's
/// write buffer; its session's outbox stays bounded by the queue limits.
const WRITE_BATCH: usize = 64 * 1024;
/// The last flush before the socket closes (a DISCONNECT) gives up after this without progress.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
/// The first park check after the CONNACK (then doubling up to `mqtt.park_after_ms`): see
/// `Conn::session_loop`.
const FIRST_PARK_CHECK: Duration = Duration::from_millis(100);

/// Why a flush stopped before the write buffer was empty.
#[derive(Debug, Clone)]
enum FlushStop {
    /// The socket failed or closed.
    Io,
    /// The client took no bytes for the stall timeout.
    Stalled,
    /// The broker told the connection to leave (takeover, shutdown, an administrator).
    Kicked(crate::broker::Kick),
}

impl FlushStop {
    fn close(self) -> Close {
        match self {
            FlushStop::Io => Close::closed("write_error"),
            FlushStop::Stalled => Close::closed("write_timeout"),
            FlushStop::Kicked(kick) => kick.close(),
        }
    }
}

/// What [`Conn::flush_ready`] got done.
enum Flushed {
    /// Everything written, or the socket failed.
    Done(Result<(), FlushStop>),
    /// The socket would block; `progressed` if some bytes went first.
    Blocked { progressed: bool },
}

struct Conn<S> {
    stream: S,
    peer: SocketAddr,
    /// Which listener accepted it, and what its transport proved (a client certificate).
    via: crate::listener::Accepted,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    broker: Arc<Broker>,
    /// A write was left blocked on a client that does not read: no goodbye is attempted.
    blocked: bool,
    /// It runs on a single-threaded runtime (a connection shard): one yield before routing
    /// is enough there (see `handle`).
    single_threaded: bool,
}

/// A socket's place among those that have not sent CONNECT yet, and the read-buffer bytes it
/// is charged for; both are given back when it is dropped (CONNECT read, or the socket closed).
pub(crate) struct Pending {
    broker: Arc<Broker>,
    bytes: usize,
}

impl Pending {
    /// Takes a place for a socket just accepted; `None` when `mqtt.max_pending_connections`
    /// are already waiting for their CONNECT (the caller closes the socket, counted).
    pub(crate) fn admit(broker: &Arc<Broker>) -> Option<Pending> {
        let max = broker.config.mqtt.max_pending_connections;
        let took = broker
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        took.then(|| Pending {
            broker: Arc::clone(broker),
            bytes: 0,
        })
    }

    /// Charges the socket for a read buffer of `capacity` bytes; false when all pending sockets
    /// together would pass `mqtt.pending_connect_bytes` (nothing is charged then).
    fn charge(&mut self, capacity: usize) -> bool {
        let Some(more) = capacity.checked_sub(self.bytes).filter(|m| *m > 0) else {
            return true;
        };
        let max = self.broker.config.mqtt.pending_connect_bytes;
        let ok = self
            .broker
            .pending_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_add(more).filter(|t| *t <= max)
            })
            .is_ok();
        if ok {
            self.bytes = capacity;
        }
        ok
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.broker.pending.fetch_sub(1, Ordering::AcqRel);
        self.broker
            .pending_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Serves one accepted connection (its transport's handshake done) until it closes.
/// `pending` is its place among the sockets that have not sent CONNECT yet, given back once
/// the CONNECT is read.
///
/// A plain function that builds the connection and returns its future: as an `async fn` its
/// arguments would keep their slots (about 100 B) in the task for the connection's whole life,
/// beside the `Conn` they were moved into. The future is an `async move` block that uses
/// `conn` and `pending` where they were captured: a `let mut` (or a `mut self` argument)
/// inside it would be a second slot of the same size (issue 10, memory per connection).
pub(crate) fn serve<S: ByteStream>(
    broker: Arc<Broker>,
    stream: S,
    peer: SocketAddr,
    via: crate::listener::Accepted,
    pending: Pending,
) -> impl std::future::Future<Output = ()> {
    let mut conn = Conn {
        stream,
        peer,
        via,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        decoder: Decoder::server(broker.config.mqtt.max_packet_size),
        broker,
        blocked: false,
        // Set where the task runs, below.
        single_threaded: false,
    };
    let mut pending = pending;
    async move {
        conn.single_threaded = matches!(
            tokio::runtime::Handle::current().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let timeout = Duration::from_secs(conn.broker.config.mqtt.connect_timeout_secs);
        // Boxed with its timer, as everything before and after the session loop is (see
        // below): the timer inline (120 B) made this wait the future's largest state.
        let read = Box::pin(tokio::time::timeout(
            timeout,
            conn.read_connect(&mut pending),
        ));
        let connect = match read.await {
            Ok(Ok(c)) => c,
            Ok(Err(why)) => {
                crate::metrics::disconnected(why);
                return;
            }
            Err(_) => {
                debug!(peer = %conn.peer, "no CONNECT in time");
                crate::metrics::disconnected("connect_timeout");
                return;
            }
        };
        // Everything after CONNECT: establishing the session, serving it, the goodbye. A
        // connection's task is as large as its future's largest state, and an idle connection
        // spends its life parked. So what comes before (negotiation, authentication, the
        // registry, CONNACK), the active loop, and what comes after (the goodbye, detach) run
        // in boxed futures that exist only while they run: the task keeps `Conn`, `Idle` and
        // the parked wait (issue 10, memory per connection; RFC 0011).
        let mut idle = Box::pin(conn.establish(connect, pending)).await;
        conn.serve_session(&mut idle).await;
    }
}

/// Why [`Conn::read_packet`] returned no packet.
enum ReadStop {
    /// The bytes are not a packet; the error says why.
    Malformed(roost_codec::DecodeError),
    /// The client closed (or the socket failed) first.
    Eof,
    /// Buffering more would take all pending sockets past `mqtt.pending_connect_bytes`.
    PendingBytes,
}

impl<S: ByteStream> Conn<S> {
    /// Reads more bytes. `Ok(false)` on EOF.
    ///
    /// Cancel safety: `readable()` takes no data; the read itself is not awaited.
    async fn fill(&mut self) -> io::Result<bool> {
        loop {
            self.stream.readable().await?;
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.broker.metrics.bytes_received.increment(n as u64);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Stale readiness: give the buffer back before waiting again, or every idle
                    // connection would sit on a read buffer.
                    self.release_rbuf();
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Frees the read buffer once drained so an idle connection holds none.
    fn release_rbuf(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    /// Writes the write buffer out (before the session: CONNACK refusals, bad CONNECTs),
    /// giving up when the client takes no bytes for `mqtt.write_timeout_secs`.
    async fn flush(&mut self) -> Result<(), FlushStop> {
        self.flush_until(None, self.write_timeout()).await
    }

    /// Writes the write buffer out. The common case (the socket has room) needs no timer:
    /// only a write that would block waits, on the socket becoming writable, on `ctl`'s wake
    /// (a kick ends the connection even while the client is not reading) and on `stall` without
    /// progress. Unwritten bytes stay at the front of the buffer, so the framing of what is
    /// sent next (a DISCONNECT) stays intact.
    ///
    /// Cancel safety: `try_write` is not awaited; the `select!` arms are readiness, a
    /// `Wake` permit and a sleep, none of which takes data.
    async fn flush_until(
        &mut self,
        ctl: Option<&ConnCtl>,
        stall: Duration,
    ) -> Result<(), FlushStop> {
        let mut deadline = None;
        // A wake-up taken below that was not a kick: more in the outbox. It is given back once
        // the flush is done, or the session loop would wait in its `select!` with the outbox
        // full until the next wake-up.
        let mut woken = false;
        loop {
            match self.flush_ready() {
                Flushed::Done(r) => {
                    if let (true, Some(c), Ok(())) = (woken, ctl, &r) {
                        c.wake.notify_one();
                    }
                    return r;
                }
                Flushed::Blocked { progressed } => {
                    if progressed {
                        deadline = None;
                    }
                }
            }
            let at = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + stall);
            let kicked = async {
                match ctl {
                    Some(c) => c.wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            // Inline: the session loop awaits this boxed, and only when a write would block
            // (`flush_live`); the other callers run before or after the loop, boxed too.
            let stalled = tokio::time::sleep_until(at);
            tokio::select! {
                biased;
                _ = kicked => {
                    // Any other wake-up (more in the outbox) is handed back when this flush is
                    // done (`woken`), for the loop that encodes it.
                    if let Some(kick) = ctl.and_then(|c| c.take_kick()) {
                        self.blocked = true;
                        return Err(FlushStop::Kicked(kick));
                    }
                    woken = true;
                }
                r = self.stream.writable() => {
                    if r.is_err() {
                        return Err(FlushStop::Io);
                    }
                }
                _ = stalled => {
                    self.blocked = true;
                    return Err(FlushStop::Stalled);
                }
            }
        }
    }

    /// As much of a flush as needs no waiting: everything written (or a write error), or
    /// [`Flushed::Blocked`] once the socket would block.
    fn flush_ready(&mut self) -> Flushed {
        let mut progressed = false;
        loop {
            if !self.wbuf.is_empty() {
                match self.stream.try_write(&self.wbuf) {
                    Ok(0) => return Flushed::Done(Err(FlushStop::Io)),
                    Ok(n) => {
                        bytes::Buf::advance(&mut self.wbuf, n);
                        self.broker.metrics.bytes_sent.increment(n as u64);
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Flushed::Blocked { progressed };
                    }
                    Err(_) => return Flushed::Done(Err(FlushStop::Io)),
                }
            } else if self.stream.pending_output() {
                // TLS records or WebSocket frames the transport still holds.
                match self.stream.try_flush() {
                    Ok(()) => progressed = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Flushed::Blocked { progressed };
                    }
                    Err(_) => return Flushed::Done(Err(FlushStop::Io)),
                }
            } else {
                break;
            }
        }
        if self.wbuf.capacity() > KEEP_WBUF {
            self.wbuf = BytesMut::new();
        } else {
            self.wbuf.clear();
        }
        Flushed::Done(Ok(()))
    }

    /// [`flush_until`](Self::flush_until) for the session loop: without a future when the
    /// socket takes everything (the common case); only a write that would block waits, in a
    /// boxed future. Inline, the wait's state (about 460 B) would sit in every connection's
    /// task for its whole life (docs/performance.md, "Memory per idle connection").
    async fn flush_live(&mut self, ctl: &ConnCtl) -> Result<(), FlushStop> {
        match self.flush_ready() {
            Flushed::Done(r) => r,
            Flushed::Blocked { .. } => {
                let stall = self.write_timeout();
                Box::pin(self.flush_until(Some(ctl), stall)).await
            }
        }
    }

    /// Encodes a packet into the write buffer (sent on the next flush).
    fn queue(&mut self, packet: &Packet, protocol: Protocol) {
        encode_into(&mut self.wbuf, packet, protocol);
    }

    /// Reads one whole packet before the session exists (CONNECT, the AUTH of an exchange),
    /// charging the read buffer to the socket's pending place.
    async fn read_packet(&mut self, pending: &mut Pending) -> Result<Packet, ReadStop> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(ReadStop::Malformed(e)),
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) | Err(_) => return Err(ReadStop::Eof),
            }
            if !pending.charge(self.rbuf.capacity()) {
                debug!(peer = %self.peer, "pending CONNECT bytes exhausted");
                return Err(ReadStop::PendingBytes);
            }
        }
    }

    /// Waits for the first packet, which must be CONNECT. `Err`: the metric label of why the
    /// connection closed instead.
    async fn read_connect(&mut self, pending: &mut Pending) -> Result<Box<Connect>, &'static str> {
        match self.read_packet(pending).await {
            Ok(Packet::Connect(c)) => Ok(c),
            Ok(_) => Err("protocol_error"),
            Err(ReadStop::Eof) => Err("eof_before_connect"),
            Err(ReadStop::PendingBytes) => {
                crate::metrics::rejected("pending_bytes");
                Err("pending_bytes")
            }
            Err(ReadStop::Malformed(e)) => {
                crate::metrics::malformed();
                debug!(peer = %self.peer, error = %e, "bad CONNECT");
                if let Some((protocol, ack)) = connect_error_reply(&e, self.decoder.protocol()) {
                    self.queue(&Packet::ConnAck(ack), protocol);
                    let _ = self.flush().await;
                }
                Err("malformed")
            }
        }
    }

    /// SCRAM-SHA-256 (`crate::scram`): the CONNECT's data is the client-first message; the
    /// server-first goes out in AUTH 0x18, the client-final must come back in AUTH 0x18 within
    /// the connect timeout. Returns the user and the server-final message for the CONNACK.
    async fn scram_exchange(
        &mut self,
        connect: &Connect,
        pending: &mut Pending,
    ) -> Result<(String, Vec<u8>), roost_core::connect::Refusal> {
        use crate::scram::{ScramError, ScramServer, METHOD};
        use roost_core::connect::Refusal;
        let malformed = |_| Refusal::new(ReasonCode::NOT_AUTHORIZED, "scram_malformed");
        let first = connect
            .properties
            .authentication_data
            .as_deref()
            .unwrap_or_default();
        let auth = &self.broker.auth;
        let (server, server_first) =
            ScramServer::start(first, |u| auth.scram(u), |u| auth.scram_decoy(u)).map_err(|e| {
                match e {
                    ScramError::Failed => {
                        Refusal::new(ReasonCode::BAD_USER_NAME_OR_PASSWORD, "bad_credentials")
                    }
                    ScramError::Malformed(_) => malformed(()),
                }
            })?;
        let challenge = roost_codec::Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: roost_codec::Properties {
                authentication_method: Some(METHOD.to_owned()),
                authentication_data: Some(server_first.into()),
                ..roost_codec::Properties::default()
            },
        };
        self.queue(&Packet::Auth(challenge), Protocol::V5);
        if self.flush().await.is_err() {
            return Err(Refusal::new(ReasonCode::NOT_AUTHORIZED, "scram_io"));
        }
        let timeout = Duration::from_secs(self.broker.config.mqtt.connect_timeout_secs);
        let reply = tokio::time::timeout(timeout, self.read_packet(pending)).await;
        let a = match reply {
            Ok(Ok(Packet::Auth(a))) => a,
            Ok(Err(ReadStop::PendingBytes)) => {
                return Err(Refusal::new(ReasonCode::NOT_AUTHORIZED, "pending_bytes"))
            }
            _ => return Err(malformed(())),
        };
        if a.reason_code != ReasonCode::CONTINUE_AUTHENTICATION
            || a.properties.authentication_method.as_deref() != Some(METHOD)
        {
            return Err(malformed(()));
        }
        let client_final = a
            .properties
            .authentication_data
            .as_deref()
            .unwrap_or_default();
        match server.finish(client_final) {
            Ok(server_final) => Ok((server.user().to_owned(), server_final)),
            Err(ScramError::Failed) => {
                debug!(peer = %self.peer, user = server.user(), "SCRAM proof refused");
                Err(Refusal::new(
                    ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                    "bad_credentials",
                ))
            }
            Err(ScramError::Malformed(_)) => Err(malformed(())),
        }
    }

    /// Refuses the CONNECT: counts it, sends a CONNACK with `reason` unless even that exceeds
    /// the client's Maximum Packet Size `max` (then the connection just closes,
    /// [MQTT-3.1.2-24]), and closes.
    async fn refuse(
        &mut self,
        protocol: Protocol,
        max: Option<u32>,
        reason: ReasonCode,
        why: &'static str,
    ) {
        crate::metrics::rejected(why);
        let ack = Packet::ConnAck(roost_codec::ConnAck {
            reason_code: reason,
            ..roost_codec::ConnAck::default()
        });
        if within_maximum_packet_size(&ack, protocol, max) {
            self.queue(&ack, protocol);
            let _ = self.flush().await;
        } else {
            debug!(peer = %self.peer, ?max, why, "refused without CONNACK: larger than the client's maximum packet size");
        }
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.stream.shutdown()).await;
    }

    /// The connected session until it closes: the active loop (boxed: its state, with
    /// [`Live`]'s queues, exists only while the connection is active) and, between its
    /// rounds, the parked wait (RFC 0011), which keeps only the [`Idle`] in `slot`. Ends with
    /// the goodbye said.
    ///
    /// The `Idle` stays in the caller's one slot, taken by the active loop and put back when
    /// it parks: passed by value, it would have a second slot in this future (and a third for
    /// a `while let` on the loop's result), each for the connection's whole life.
    async fn serve_session(&mut self, slot: &mut Option<Idle>) {
        let mut first = true;
        loop {
            if !Box::pin(self.active(slot, first)).await {
                return;
            }
            first = false;
            let Some(idle) = slot.as_mut() else {
                return;
            };
            if !self.arm_deadline(idle) {
                // Due already: the active loop closes it (or finds it moved).
                continue;
            }
            // The goodbye's future is made in the `match` and awaited after it: awaited inside
            // `if let Err(close) = ParkedWait::new(..).await`, the wait's result (48 B) kept a
            // slot in this future for the connection's whole life.
            let goodbye = match ParkedWait::new(self, idle).await {
                Ok(()) => continue,
                Err(close) => Box::pin(self.finish(idle, close)),
            };
            goodbye.await;
            return;
        }
    }

    /// Arms the parked connection's deadline (its keep-alive or credentials, whichever is
    /// first) in the node's deadlines table (RFC 0013); false when it is due already.
    fn arm_deadline(&self, st: &mut Idle) -> bool {
        let Some(at) = [st.deadline, st.credentials_expire]
            .into_iter()
            .flatten()
            .min()
        else {
            // No keep-alive and no expiry: nothing to wake it for. An entry still pending
            // (for a deadline since gone) wakes it once, and it waits again.
            return true;
        };
        if at <= tokio::time::Instant::now() {
            return false;
        }
        self.broker.deadlines.arm(&st.ctl, at, &mut st.armed);
        true
    }

    /// One active stretch: the session loop over the connection's state taken from `slot`,
    /// until it parks (`true`: its [`Idle`] back in `slot`, the buffers freed) or closes
    /// (`false`: the goodbye said). `first`: the stretch right after the CONNACK.
    ///
    /// This future is the active loop's box (736 B, mimalloc's 768 B class). The goodbye is
    /// made in the `match` and awaited boxed after it, so neither it (544 B) nor the loop's
    /// end (48 B) has a place beside the session loop: at 848 B the box shared the 896 B
    /// class with the replicated route table's B-tree nodes, and the boxes a connect storm
    /// freed left that class's pages half empty, held by the nodes (about 105 B per
    /// connection at 19,000; benches/results/2026-12-03-active-box-class.md). Check the size
    /// with `-Zprint-type-sizes` (docs/performance.md) before adding state that lives across
    /// the session loop's await.
    async fn active(&mut self, slot: &mut Option<Idle>, first: bool) -> bool {
        let Some(idle) = slot.take() else {
            return false;
        };
        let mut live = Live::from(idle);
        let goodbye = match self.session_loop(&mut live, first).await {
            LoopEnd::Close(close) => Box::pin(self.finish(&mut live, close)),
            LoopEnd::Park => {
                self.release_buffers(&mut live);
                *slot = Some(live.base);
                return true;
            }
        };
        goodbye.await;
        false
    }

    /// Whether the connection holds nothing in flight: no bytes read and not handled, none
    /// encoded and not written, nothing taken from the outbox and not encoded, no
    /// acknowledgement held for peers, no cluster operation or packet waiting for one, no
    /// congested subscriber to wait for. Only then may it park.
    fn parkable(&self, st: &Live) -> bool {
        self.rbuf.is_empty()
            && self.wbuf.is_empty()
            && !self.stream.pending_output()
            && st.outbox.is_empty()
            && st.pending_acks.is_empty()
            && st.op.is_none()
            && st.deferred.is_none()
            && st.congested.is_empty()
    }

    /// Frees the buffers a connection about to park keeps empty (it is [`parkable`]: all of
    /// them are): the read and write buffers and the session's outbox (the loop's own queues
    /// go with its [`Live`]). An active connection keeps them, so a busy one allocates nothing
    /// per round; a parked one holds none, and its next round allocates what it needs.
    ///
    /// [`parkable`]: Conn::parkable
    fn release_buffers(&mut self, st: &mut Live) {
        self.release_rbuf();
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
        st.session.with(|s| s.release_outbox_buffer());
    }

    /// From CONNECT to CONNACK: `None` if the client was refused (and told so). `connect` stays
    /// boxed: it lives across awaits. `pending`: the socket's place among those not yet past
    /// CONNECT, held until the client is authenticated (a SCRAM exchange reads a second packet)
    /// or refused.
    async fn establish(&mut self, connect: Box<Connect>, mut pending: Pending) -> Option<Idle> {
        let protocol = connect.protocol;
        let policy = Arc::clone(&self.broker.limits.policy);
        let conn_id = self.broker.new_conn_id();
        let mut n = match negotiate(&connect, &policy, || {
            format!("roost-{:016x}", conn_id ^ random_salt())
        }) {
            Ok(n) => n,
            Err(r) => {
                let max = connect.properties.maximum_packet_size;
                self.refuse(protocol, max, r.reason, r.why).await;
                return None;
            }
        };
        if !self.via.listener.connect_allowed() {
            debug!(peer = %self.peer, listener = %self.via.listener.name, "connect rate exceeded");
            let max = connect.properties.maximum_packet_size;
            self.refuse(
                protocol,
                max,
                ReasonCode::CONNECTION_RATE_EXCEEDED,
                "connect_rate",
            )
            .await;
            return None;
        }
        // MQTT 5 enhanced authentication (negotiate only lets through the methods the node
        // runs): the AUTH exchange happens here, before CONNACK.
        let mut auth_reply = None;
        let authenticated = match connect.properties.authentication_method.as_deref() {
            // Boxed (both arms): the exchange and the credential checks live only until
            // CONNACK, and the future of every connection would otherwise carry their size
            // for its whole life.
            Some(crate::scram::METHOD) => {
                match Box::pin(self.scram_exchange(&connect, &mut pending)).await {
                    Ok((user, server_final)) => {
                        auth_reply = Some(server_final);
                        Ok(crate::auth::Identity {
                            username: Some(user),
                            method: crate::auth::Method::Scram,
                            expires_at: None,
                        })
                    }
                    Err(r) => Err(r),
                }
            }
            _ => {
                Box::pin(
                    self.broker
                        .auth
                        .authenticate(&self.via, &connect, n.client_id.as_str()),
                )
                .await
            }
        };
        drop(pending);
        let mut identity = match authenticated {
            Ok(i) => i,
            Err(r) => {
                debug!(peer = %self.peer, listener = %self.via.listener.name, why = r.why, "authentication failed");
                let max = connect.properties.maximum_packet_size;
                self.refuse(protocol, max, r.reason, r.why).await;
                return None;
            }
        };
        let mut authz = crate::policy::ConnPolicy::new();
        let who = crate::policy::Who::new(identity.username.take(), self.via.cert.as_deref());
        let allowed = authz.check(
            &self.broker.policies,
            &crate::policy::principal(n.client_id.as_str(), who.as_deref()),
            Action::Connect,
            Resource::Client(n.client_id.as_str()),
        );
        if !allowed.is_allowed() {
            debug!(client_id = %n.client_id, decision = %allowed, "CONNECT denied by policy");
            let max = connect.properties.maximum_packet_size;
            self.refuse(protocol, max, ReasonCode::NOT_AUTHORIZED, "policy_denied")
                .await;
            return None;
        }
        // Nothing else of the CONNECT is needed: free it rather than keep it for the life of
        // the connection.
        drop(connect);
        let Some(slot) = self.via.listener.slot() else {
            info!(peer = %self.peer, listener = %self.via.listener.name, "listener connection limit reached");
            let max = n.params.maximum_packet_size;
            self.refuse(protocol, max, ReasonCode::QUOTA_EXCEEDED, "listener_quota")
                .await;
            return None;
        };
        // A token's expiry: the connection is closed when it passes.
        let credentials_expire = identity.expires_at.map(|at| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + left
        });
        let (attached, ctl) = self.admit(&n, conn_id, identity, who).await?;
        let mut ack = n.connack(&policy, attached.session_present);
        if let Some(data) = auth_reply {
            ack.properties.authentication_method = Some(crate::scram::METHOD.to_owned());
            ack.properties.authentication_data = Some(data.into());
        }
        let session = attached.session;
        session.set_principal(
            ctl.info.who.clone(),
            self.broker.policies.current().as_deref(),
        );
        self.queue(&Packet::ConnAck(ack), protocol);
        self.broker.metrics.accepted.increment(1);
        debug!(client_id = %n.client_id, peer = %self.peer, ?protocol, "client connected");

        let mut idle = Idle {
            session: session.clone(),
            ctl: Arc::clone(&ctl),
            protocol,
            latency_tick: 0,
            will: n.will.take(),
            deadline: None,
            authz,
            rate: PublishRate::new(&self.broker.config.mqtt),
            credentials_expire,
            armed: 0,
            _slot: slot,
        };
        idle.refresh_deadline();
        Some(idle)
    }

    /// After the session loop: the goodbye (DISCONNECT where the protocol has one, bounded),
    /// the will if the close calls for it, and the session detached from this connection.
    async fn finish(&mut self, live: &mut Idle, close: Close) {
        let protocol = live.protocol;
        crate::metrics::disconnected(close.why);
        match close.tally {
            Some(Tally::Malformed) => crate::metrics::malformed(),
            Some(Tally::RetainDropped) => self.broker.metrics.retain_dropped.increment(1),
            None => {}
        }
        if let Some(d) = close.disconnect_packet(protocol) {
            self.queue(&d, protocol);
        }
        // Bounded: a client that stopped reading must not hold its detach (and a takeover
        // waiting for it) for long; one whose last write was blocked gets no goodbye at all.
        if !self.blocked {
            let _ = self.flush_until(None, GOODBYE_TIMEOUT).await;
        }
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.stream.shutdown()).await;
        let will = if close.will { live.will.take() } else { None };
        self.broker.deadlines.disarm(&live.ctl, &mut live.armed);
        self.broker.detach(&live.session, &live.ctl, will);
        self.broker.connections.fetch_sub(1, Ordering::AcqRel);
        debug!(client_id = %live.session.client_id(), why = close.why, "client disconnected");
    }

    /// The connection quota and the session registry: `None` if the client was refused (the
    /// CONNACK is sent). Returns the attached session and the connection's control block.
    async fn admit(
        &mut self,
        n: &Negotiated,
        conn_id: u64,
        identity: crate::auth::Identity,
        who: Option<Arc<crate::policy::Who>>,
    ) -> Option<(Attached, Arc<ConnCtl>)> {
        if self.broker.draining() {
            // A graceful stop hands sessions on; it takes no new ones (v3.1.1: 0x03).
            let max = n.params.maximum_packet_size;
            self.refuse(
                n.protocol,
                max,
                ReasonCode::SERVER_SHUTTING_DOWN,
                "shutting_down",
            )
            .await;
            return None;
        }
        let cfg = &self.broker.config.mqtt;
        let current = self.broker.connections.fetch_add(1, Ordering::AcqRel);
        // A takeover replaces a connection rather than adding one: never refuse it for quota.
        let takeover = self
            .broker
            .session(n.client_id.as_str())
            .is_some_and(|s| s.conn().is_some());
        if current >= cfg.max_connections && !takeover {
            self.broker.connections.fetch_sub(1, Ordering::AcqRel);
            info!(peer = %self.peer, max = cfg.max_connections, "connection limit reached");
            let max = n.params.maximum_packet_size;
            self.refuse(n.protocol, max, ReasonCode::QUOTA_EXCEEDED, "quota")
                .await;
            return None;
        }
        let ctl = Arc::new(ConnCtl::new(
            conn_id,
            ConnInfo {
                peer_ip: self.peer.ip(),
                peer_port: self.peer.port(),
                protocol: n.protocol,
                variant: n.params.variant,
                keep_alive: n.keep_alive,
                connected_at: WallMs::now(),
                who,
                auth: identity.method,
                listener: Arc::clone(&self.via.listener),
            },
        ));
        // Boxed: the claim/takeover future is large, and the connection's task lives on.
        match Box::pin(self.broker.attach(n, Arc::clone(&ctl))).await {
            Ok(attached) => Some((attached, ctl)),
            Err(e) => {
                // No quorum to register the session: say so instead of hanging. A fatal error
                // (this node's Raft stopped) needs a human; a refusal is the cluster's state.
                self.broker.connections.fetch_sub(1, Ordering::AcqRel);
                if e.is_fatal() {
                    tracing::error!(client_id = %n.client_id, error = %e, "cannot register session");
                } else {
                    info!(client_id = %n.client_id, error = %e, "cannot register session");
                }
                let why = match e.refusal() {
                    Some(roost_cluster::Refusal::NoLease(_)) => "no_lease",
                    _ => "cluster_unavailable",
                };
                self.refuse(
                    n.protocol,
                    n.params.maximum_packet_size,
                    ReasonCode::SERVER_UNAVAILABLE,
                    why,
                )
                .await;
                None
            }
        }
    }

    /// The active part of a connection (RFC 0011): reads, handles, delivers and writes until
    /// the connection closes, or parks once it had nothing to do for `mqtt.park_after_ms`
    /// (see [`ParkedWait`]). Its state lives in a box that exists only while it runs.
    ///
    /// The `first` stretch, right after the CONNACK, checks sooner: most devices connect,
    /// subscribe and then go quiet, and waiting the full `park_after` for each of them keeps
    /// every connection of a reconnect storm active at once (at 10k connections/s and the
    /// default second, 10-20k loops of about 1.9 KiB). Parking them sooner lowers the storm's
    /// peak RSS; the settled figure does not move, since mimalloc 2 returns what they free
    /// (docs/performance.md, "By count and by ramp").
    async fn session_loop(&mut self, st: &mut Live, first: bool) -> LoopEnd {
        // The keep-alive and credentials timer, one for the whole loop: its deadline is moved
        // with `reset` (a later deadline is an atomic update, no lock). A `Sleep` made inside the
        // `select!` joined the runtime's timer wheel when first polled and left it when dropped,
        // each under the wheel's lock, on every wake-up: in a fan-out, on every delivery
        // (docs/performance.md, "Where the round trip's time goes"). Its initial deadline is never
        // used: the arm is only polled after a `reset` to the deadline of the moment.
        let mut timer = std::pin::pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
        // Parking is checked on the same timer, once per `park_after` (no clock read per
        // event): the loop parks when the check finds no event since the one before and
        // nothing pending, so between one and two `park_after` after the last event. The first
        // stretch starts at `FIRST_PARK_CHECK` and doubles its interval up to `park_after`, so
        // a connection quiet after its handshake parks within a few hundred milliseconds,
        // while one that keeps talking reaches the full interval after a few checks. Later
        // stretches (woken by traffic) use `park_after` throughout: a device that talks every
        // few hundred milliseconds does not park and wake on each message.
        let park_after = Duration::from_millis(self.broker.config.mqtt.park_after_ms);
        let mut park_every = if first {
            park_after.min(FIRST_PARK_CHECK)
        } else {
            park_after
        };
        let mut park_at = (!park_after.is_zero()).then(|| tokio::time::Instant::now() + park_every);
        let mut active = false;
        loop {
            if let Err(close) = self.release_acks(st) {
                return LoopEnd::Close(close);
            }
            self.encode_outbox(st);
            self.release_rbuf();
            if let Err(stop) = self.flush_live(&st.ctl).await {
                let close = stop.close();
                debug!(client_id = %st.session.client_id(), why = close.why, "write stopped");
                return LoopEnd::Close(close);
            }
            let deadline = [
                st.deadline,
                st.credentials_expire,
                st.peers_deadline(),
                park_at,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(at) = deadline {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            // The select only says what happened; the work is done after it, when its
            // futures are gone: awaited inside an arm, `process` would sit beside them in this
            // loop's state, which every idle connection carries (docs/performance.md).
            let Live {
                base,
                op,
                deferred,
                pending_acks,
                ..
            } = &mut *st;
            let event = tokio::select! {
                biased;
                _ = base.ctl.wake.notified() => Event::Woken,
                r = self.fill(), if deferred.is_none() => Event::Read(r),
                done = run_op(op), if op.is_some() => Event::OpDone(done),
                _ = front_answered(pending_acks),
                    if pending_acks.front().is_some_and(|p| p.wait.is_some()) => Event::PeersDone,
                _ = timer.as_mut(), if deadline.is_some() => Event::Timer,
            };
            if !matches!(event, Event::Timer) {
                active = true;
            }
            match event {
                Event::Woken => {
                    if let Some(kick) = st.ctl.take_kick() {
                        return LoopEnd::Close(kick.close());
                    }
                }
                Event::Read(Ok(true)) => {
                    st.yielded = false;
                    if let Err(close) = Box::pin(self.process(st)).await {
                        return LoopEnd::Close(close);
                    }
                }
                Event::Read(Ok(false)) => return LoopEnd::Close(Close::closed("eof")),
                Event::Read(Err(_)) => return LoopEnd::Close(Close::closed("read_error")),
                Event::OpDone(done) => {
                    st.op = None;
                    // Boxed: rare, and its future nests the acknowledgement path.
                    if let Err(close) = Box::pin(self.op_done(st, done)).await {
                        return LoopEnd::Close(close);
                    }
                    // Go on with what waited for it: the held-back packet, then the buffer.
                    if let Err(close) = Box::pin(self.process(st)).await {
                        return LoopEnd::Close(close);
                    }
                }
                // Released at the top of the loop.
                Event::PeersDone => {}
                Event::Timer => {
                    if st
                        .credentials_expire
                        .is_some_and(|at| at <= tokio::time::Instant::now())
                    {
                        debug!(client_id = %st.session.client_id(), "credentials expired");
                        return LoopEnd::Close(Close::error(
                            ReasonCode::NOT_AUTHORIZED,
                            "credentials_expired",
                        ));
                    }
                    let now = crate::now();
                    if let Some(Timeout::KeepAlive) = st.session.with(|s| s.handle_timeout(now)) {
                        debug!(client_id = %st.session.client_id(), "keep-alive timeout");
                        return LoopEnd::Close(Close::keep_alive());
                    }
                    st.refresh_deadline();
                    let now = tokio::time::Instant::now();
                    if park_at.is_some_and(|at| at <= now) {
                        if !active && self.parkable(st) {
                            return LoopEnd::Park;
                        }
                        active = false;
                        park_every = (park_every * 2).min(park_after);
                        park_at = Some(now + park_every);
                    }
                }
            }
        }
    }

    /// Handles what was read: the packet held back behind a finished cluster operation, then
    /// the read buffer; with backpressure on congested subscribers between packets.
    ///
    /// The session loop awaits it boxed: handling packets nests the futures of every packet
    /// kind (several KiB); an idle connection's task must not carry that, and one allocation
    /// per read batch is cheap.
    async fn process(&mut self, st: &mut Live) -> Result<(), Close> {
        loop {
            self.drain_packets(st).await?;
            st.session.signal_space(self.broker.low_watermark());
            if st.congested.is_empty() {
                break;
            }
            // Acks for what was routed go out first; then hold off decoding until the slow
            // subscribers catch up (bounded), and go on with what is left in the read buffer.
            self.encode_outbox(st);
            let stall = self.write_timeout();
            if let Err(stop) = self.flush_until(Some(&st.ctl), stall).await {
                return Err(stop.close());
            }
            let congested = std::mem::take(&mut st.congested);
            Box::pin(self.broker.wait_for_space(&congested)).await;
        }
        // Packets moved the keep-alive deadline.
        st.refresh_deadline();
        Ok(())
    }

    /// Decodes and handles the packets in the read buffer; stops early (leaving the rest in
    /// the buffer) when routing found a congested subscriber, so backpressure applies per
    /// message, not per read, and when a packet has to wait for a cluster operation.
    async fn drain_packets(&mut self, st: &mut Live) -> Result<(), Close> {
        if st.op.is_none() {
            if let Some(p) = st.deferred.take() {
                self.handle(st, *p).await?;
            }
        }
        loop {
            if st.deferred.is_some() || !st.congested.is_empty() {
                return Ok(());
            }
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(p)) => {
                    self.handle(st, p).await?;
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    debug!(client_id = %st.session.client_id(), error = %e, "malformed packet");
                    return Err(Close::malformed(&e));
                }
            }
        }
    }

    /// Before a read batch's first PUBLISH is routed, the connections whose bytes arrived with
    /// or before it run first, so a SUBSCRIBE read on another connection just before this
    /// PUBLISH is indexed before it is routed (a SUBSCRIBE never yields before it is indexed).
    /// The same yield lets the drivers the previous batch woke run before we route more: a
    /// publisher must not starve its subscribers. (Measured with
    /// `benches/subscribe-publish-race.py`.)
    ///
    /// On the work-stealing runtime (`node.shards = 0`) twice: a yielded task resumes right
    /// after its worker polled the I/O driver, but that scheduler runs the last task woken
    /// (this one) first; the second yield lets the others run. Each of those yields also wakes
    /// an idle worker that finds nothing to do (docs/performance.md). On a single-threaded
    /// runtime (a shard) once: a yielded task waits until the runtime has polled the I/O
    /// driver, and the tasks that poll woke are queued ahead of it (FIFO). With several
    /// shards, a SUBSCRIBE may be read by another shard's thread at the same time: the shards
    /// that are awake get a marker, and this waits until they have polled their sockets and
    /// run what that woke (`Shards::send_markers`). That wait is boxed: it happens only while
    /// another shard is busy, and inline its state would sit in every connection's loop.
    async fn let_readers_run_first(&self) {
        if !self.single_threaded {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            return;
        }
        let markers = self
            .broker
            .shards
            .get()
            .and_then(Weak::upgrade)
            .map(|s| s.send_markers())
            .unwrap_or_default();
        tokio::task::yield_now().await;
        if !markers.is_empty() {
            Box::pin(crate::shard::caught_up(markers)).await;
        }
    }

    /// One packet: the session decides, the driver carries it out.
    async fn handle(&mut self, st: &mut Live, packet: Packet) -> Result<(), Close> {
        if st.op.is_some() && !independent(&packet) {
            // Behind the operation in flight, in order; reading pauses until it is done.
            st.deferred = Some(Box::new(packet));
            return Ok(());
        }
        let now = crate::now();
        if matches!(packet, Packet::Publish(_)) {
            self.broker.metrics.msg_received.increment(1);
        }
        match st.session.with(|s| s.handle(packet, now)) {
            Handled::Done => Ok(()),
            Handled::Publish(inbound) => {
                let max = usize::from(self.broker.config.mqtt.receive_maximum);
                if inbound.ack.is_some()
                    && st.protocol == Protocol::V5
                    && st.pending_acks.len() >= max
                {
                    // Every held acknowledgement is a QoS 1/2 PUBLISH the client has not had
                    // a PUBACK/PUBREC for: one more exceeds the Receive Maximum our CONNACK
                    // announced ([MQTT-3.3.4-9]).
                    return Err(Close::error(
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                        "receive_maximum",
                    ));
                }
                if !st.yielded {
                    self.let_readers_run_first().await;
                    st.yielded = true;
                }
                self.on_publish(st, inbound).await
            }
            Handled::Ack(ack) => self.hold(st, ack, None).await,
            Handled::Dropped { reason, ack } => {
                match reason {
                    // Clients may not publish into the `$` namespace: refused and counted.
                    DropReason::SystemTopic => self.broker.metrics.dollar_dropped.increment(1),
                }
                match ack {
                    Some(ack) => self.hold(st, ack, None).await,
                    None => Ok(()),
                }
            }
            Handled::Subscribe(req) => {
                self.on_subscribe(st, req);
                Ok(())
            }
            Handled::Unsubscribe { packet_id, filters } => {
                self.on_unsubscribe(st, packet_id, filters);
                Ok(())
            }
            Handled::UnknownPacketId { kind, packet_id } => {
                debug!(client_id = %st.session.client_id(), kind, packet_id = packet_id.get(), "ack for unknown packet id");
                Ok(())
            }
            Handled::Close(close) => Err(close),
        }
    }

    /// A PUBLISH from the client, through the broker's one publish path. It is acknowledged
    /// after it is in every local subscriber's session, every peer with subscribers accepted
    /// it (at most `cluster.forward_timeout_ms`) and, when retained, the retained copy
    /// committed. When one of those failed it is not acknowledged as delivered
    /// (docs/architecture.md, "What an acknowledgement promises"): v5 hears 0x80 (0x97 when a
    /// bound refused it), v3.1.1, which has no failure code, is closed unacknowledged.
    async fn on_publish(&mut self, st: &mut Live, inbound: Inbound) -> Result<(), Close> {
        if let Some(limit) = st.rate.exceeded(inbound.msg.payload.len(), crate::now()) {
            // Over the connection's rate: neither routed nor acknowledged (a QoS 2 id is
            // released first, so the client's resend after it reconnects is a new message).
            debug!(client_id = %st.session.client_id(), limit, "publish rate exceeded");
            crate::metrics::rate_limited(limit);
            if let Some(pending) = inbound.ack {
                let ack = ReadyAck {
                    ack: pending,
                    reason: ReasonCode::MESSAGE_RATE_TOO_HIGH,
                };
                st.session.with(|s| s.not_taken(&ack));
            }
            return Err(Close::error(
                ReasonCode::MESSAGE_RATE_TOO_HIGH,
                "rate_limited",
            ));
        }
        let topic = inbound.msg.topic.as_str();
        let b = &mut st.base;
        let who =
            crate::policy::principal(b.session.client_id().as_str(), b.ctl.info.who.as_deref());
        let decision = b
            .authz
            .publish(&self.broker.policies, &who, topic, inbound.msg.retain);
        if !decision.is_allowed() {
            // Denied by policy: delivered nowhere, counted. v5 QoS 1/2 hear 0x87; 3.1.1 has
            // no failure code, and [MQTT-3.3.5-2] lets the server acknowledge it as usual (or
            // close): it is acknowledged, so the client does not resend it forever.
            debug!(client_id = %st.session.client_id(), topic, %decision, "PUBLISH denied by policy");
            crate::metrics::publish_denied();
            let Some(pending) = inbound.ack else {
                return Ok(());
            };
            let reason = if st.protocol == Protocol::V5 {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::SUCCESS
            };
            let ack = ReadyAck {
                ack: pending,
                reason,
            };
            return self.hold(st, ack, None).await;
        }
        if inbound.msg.retain {
            // The retained copy waits for a commit: the connection goes on reading (PINGREQ,
            // acknowledgements) while it is in flight; the PUBLISH is routed and acknowledged
            // once it is done (`op_done`).
            let broker = Arc::clone(&self.broker);
            let session = st.session.clone();
            st.op = Some(Box::pin(async move {
                let out = broker.publish(&inbound.msg, Origin::Client(&session)).await;
                OpDone::Publish {
                    ack: inbound.ack,
                    out,
                }
            }));
            return Ok(());
        }
        let out = Box::pin(
            self.broker
                .publish(&inbound.msg, Origin::Client(&st.session)),
        )
        .await;
        self.finish_publish(st, inbound.ack, out).await
    }

    /// What follows routing a client's PUBLISH: backpressure and its acknowledgement.
    async fn finish_publish(
        &mut self,
        st: &mut Live,
        ack: Option<roost_core::session::PendingAck>,
        out: crate::broker::PublishOutcome,
    ) -> Result<(), Close> {
        st.congested.extend(out.congested);
        let Some(pending) = ack else {
            return Ok(());
        };
        let mut ack = ReadyAck {
            ack: pending,
            reason: PublishOutcome {
                retain_failed: out.retain_failed,
                retain_refused: out.retain_refused,
                matched: out.matched,
            }
            .reason(st.protocol),
        };
        if out.peer_unreachable {
            // A peer that must get it is known unreachable: it went nowhere (docs/rfcs/0005).
            ack.reason = ReasonCode::UNSPECIFIED_ERROR;
        }
        if out.retain_failed || out.peer_unreachable {
            let reason = if out.retain_failed {
                "retain_not_stored"
            } else {
                "peer_unreachable"
            };
            if st.protocol == Protocol::V311 {
                return Err(Self::not_taken(st, &ack, reason));
            }
        }
        self.hold(st, ack, out.peers).await
    }

    /// A v3.1.1 QoS 1/2 PUBLISH that was not taken where it must go: 3.1.1 has no failure
    /// code in PUBACK/PUBREC, so it is not acknowledged; the connection closes and the client
    /// sends it again when it reconnects. A QoS 2 id is released first, so that resend is a
    /// new message.
    fn not_taken(st: &Live, ack: &ReadyAck, reason: &'static str) -> Close {
        st.session.with(|s| s.not_taken(ack));
        Close::error(ReasonCode::UNSPECIFIED_ERROR, reason)
    }

    /// A cluster operation finished: carries out what it decided.
    async fn op_done(&mut self, st: &mut Live, done: OpDone) -> Result<(), Close> {
        match done {
            OpDone::Publish { ack, out } => self.finish_publish(st, ack, out).await,
            // The reply is in the session's outbox (encoded at the top of the loop).
            OpDone::Replied => Ok(()),
        }
    }

    /// Sends an acknowledgement now, or queues it behind those still held: PUBACKs and PUBRECs
    /// leave in the order the PUBLISHes came ([MQTT-4.6.0-2], [MQTT-4.6.0-3]). `wait` holds it
    /// until peers accepted the message. At most `mqtt.receive_maximum` are held at once;
    /// beyond that the connection stops reading until the oldest is released, so a client that
    /// ignores our Receive Maximum (v3.1.1 has none), or sends PUBRELs for ids it never used,
    /// is slowed instead of buffered. Fails (the connection closes) when a released v3.1.1
    /// acknowledgement turned out not accepted by a peer, see [`Conn::release_acks`].
    async fn hold(
        &mut self,
        st: &mut Live,
        ack: ReadyAck,
        wait: Option<PeerWait>,
    ) -> Result<(), Close> {
        if wait.is_none() && st.pending_acks.is_empty() {
            self.send_ack(st, &ack);
            return Ok(());
        }
        let max = usize::from(self.broker.config.mqtt.receive_maximum).max(1);
        while st.pending_acks.len() >= max {
            if let Some(PendingAck { wait: Some(w), .. }) = st.pending_acks.front_mut() {
                w.done().await;
            }
            self.release_acks(st)?;
        }
        if wait.is_none() && st.pending_acks.is_empty() {
            self.send_ack(st, &ack);
        } else {
            st.pending_acks.push_back(PendingAck { wait, ack });
        }
        Ok(())
    }

    /// Sends the acknowledgements at the front of the queue whose peers have answered. One
    /// whose message a peer did not accept carries the failure (v5: 0x80 or 0x97); in v3.1.1,
    /// which has no failure code, the connection closes instead, leaving it and those behind
    /// it unacknowledged so the client sends them again.
    fn release_acks(&mut self, st: &mut Live) -> Result<(), Close> {
        while let Some(front) = st.pending_acks.front_mut() {
            if front.wait.as_mut().is_some_and(|w| !w.is_finished()) {
                break;
            }
            let Some(mut p) = st.pending_acks.pop_front() else {
                break;
            };
            if let Some(code) = p.wait.as_ref().and_then(PeerWait::failure) {
                if st.protocol == Protocol::V311 {
                    return Err(Self::not_taken(st, &p.ack, "forward_not_accepted"));
                }
                p.ack.reason = code;
            }
            self.send_ack(st, &p.ack);
        }
        Ok(())
    }

    /// Encodes an acknowledgement; a PUBREC with a failure reason ends its QoS 2 flow, which
    /// the session must learn so the packet id is free again ([MQTT-4.3.3-9]).
    fn send_ack(&mut self, st: &Live, ack: &ReadyAck) {
        if ack.ends_qos2_flow() {
            st.session.with(|s| s.ack_sent(ack));
        }
        self.queue(&ack.packet(), st.protocol);
    }

    /// SUBSCRIBE, checked by the session. The subscriptions are in the index now, before
    /// anything is awaited, so a PUBLISH read after it on any connection of this node reaches
    /// them; the route commits (a filter this node's first subscriber for is acknowledged only
    /// once its route committed and every reachable member applied it, docs/rfcs/0002), the
    /// registry update and the SUBACK follow as an operation in flight ([`subscribed`]).
    fn on_subscribe(&mut self, st: &mut Live, mut req: SubscribeRequest) {
        for entry in &mut req.entries {
            let Ok((filter, _)) = entry else { continue };
            let b = &mut st.base;
            let who =
                crate::policy::principal(b.session.client_id().as_str(), b.ctl.info.who.as_deref());
            let decision = b.authz.check(
                &self.broker.policies,
                &who,
                Action::Subscribe,
                Resource::TopicFilter(filter.as_str()),
            );
            if !decision.is_allowed() {
                debug!(client_id = %st.session.client_id(), filter = filter.as_str(), %decision, "SUBSCRIBE denied by policy");
                crate::metrics::subscribe_denied();
                // SUBACK 0x87 (v5); the 3.1.1 encoding turns it into 0x80 Failure.
                *entry = Err(ReasonCode::NOT_AUTHORIZED);
            }
        }
        let codes = req.codes();
        // (index in codes, filter, subscription, new, route commit to wait for)
        let mut accepted = Vec::new();
        for (i, entry) in req.entries.into_iter().enumerate() {
            if let Ok((filter, sub)) = entry {
                let mut route = None;
                let new = self
                    .broker
                    .subscribe(&st.session, &filter, sub.clone(), &mut route);
                accepted.push((i, filter, sub, new, route));
            }
        }
        let broker = Arc::clone(&self.broker);
        let session = st.session.clone();
        let (packet_id, identifier) = (req.packet_id, req.identifier);
        st.op = Some(Box::pin(async move {
            subscribed(broker, session, packet_id, identifier, codes, accepted).await;
            OpDone::Replied
        }));
    }

    /// An UNSUBSCRIBE: out of the index now; the registry update and the UNSUBACK follow as an
    /// operation in flight.
    fn on_unsubscribe(
        &mut self,
        st: &mut Live,
        packet_id: roost_codec::PacketId,
        filters: Vec<Result<TopicFilter, ReasonCode>>,
    ) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut removed = Vec::new();
        for f in filters {
            codes.push(match f {
                Ok(f) if self.broker.unsubscribe(&st.session, &f) => {
                    removed.push(f);
                    ReasonCode::SUCCESS
                }
                Ok(_) => ReasonCode::NO_SUBSCRIPTION_EXISTED,
                Err(reason) => reason,
            });
        }
        let broker = Arc::clone(&self.broker);
        let session = st.session.clone();
        st.op = Some(Box::pin(async move {
            broker
                .persist_subscription_change(&session, &[], &removed)
                .await;
            session.with(|s| s.reply(unsuback(packet_id, codes)));
            OpDone::Replied
        }));
    }

    /// Encodes what the session has to send into the write buffer, up to [`WRITE_BATCH`]
    /// bytes: the rest stays in the connection's outbox for the next round (after the flush).
    /// The session's outbox is taken only once the previous batch is all encoded, so a client
    /// that does not read keeps its session's outbox full and its QoS 0 bounds apply.
    ///
    /// Encoding a PUBLISH is its delivery for `roost_delivery_latency_seconds`: measured from
    /// when the message entered the node to this round's `now` (no clock reading per
    /// message), for the first delivery of a message to this client (not a DUP resend), one
    /// in [`LATENCY_SAMPLE_EVERY`](crate::metrics::LATENCY_SAMPLE_EVERY).
    fn encode_outbox(&mut self, st: &mut Live) {
        let now = crate::now();
        let wbuf = &mut self.wbuf;
        let latency = &self.broker.metrics.delivery_latency;
        let protocol = st.protocol;
        let Live { base, outbox, .. } = &mut *st;
        let tick = &mut base.latency_tick;
        let (sent, more, drops) = base.session.with(|session| {
            if outbox.is_empty() {
                if !session.has_outbox() {
                    return (0, false, Default::default());
                }
                session.take_outbox(outbox);
            }
            let mut sent = 0u64;
            while wbuf.len() < WRITE_BATCH {
                let Some(item) = outbox.pop_front() else {
                    break;
                };
                match item {
                    Outbound::Publish(o) => {
                        let entered = if o.dup { None } else { o.msg.entered };
                        if let Some(p) = session.prepare_publish_packet(o, now) {
                            encode_into(wbuf, &p, protocol);
                            sent += 1;
                            if let Some(entered) = entered {
                                if *tick == 0 {
                                    latency.record(entered, now);
                                }
                                *tick = (*tick + 1) % crate::metrics::LATENCY_SAMPLE_EVERY;
                            }
                        }
                    }
                    Outbound::Packet(p) => encode_into(wbuf, &p, protocol),
                    other => {
                        if let Some(p) = other.ack_packet() {
                            encode_into(wbuf, &p, protocol);
                        }
                    }
                }
            }
            // Left for the next round: the rest of this batch, or what `prepare_publish` released
            // by freeing window slots.
            let more = !outbox.is_empty() || session.has_outbox();
            (sent, more, session.take_drops())
        });
        self.broker.metrics.record_drops(drops);
        if sent > 0 {
            self.broker.metrics.msg_sent.increment(sent);
        }
        if more {
            st.ctl.wake.notify_one();
        }
    }

    /// `mqtt.write_timeout_secs`: how long a client may take no bytes before it is dropped.
    fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.broker.config.mqtt.write_timeout_secs)
    }
}

/// A SUBSCRIBE's route commits waited for, bounded (then every reachable member applying
/// them), a persistent session's subscriptions recorded, and the SUBACK and the retained
/// messages it releases put in the session's outbox. An entry whose route did not commit is
/// taken back out of the index and answered 0x80.
async fn subscribed(
    broker: Arc<Broker>,
    session: SessionRef,
    packet_id: roost_codec::PacketId,
    identifier: Option<u32>,
    mut codes: Vec<ReasonCode>,
    accepted: Vec<Accepted>,
) {
    let c = &broker.config.cluster;
    let limit = Duration::from_millis(c.commit_timeout_ms + c.forward_timeout_ms);
    let mut retained = Vec::new();
    let mut added = Vec::new();
    let mut budget = crate::broker::RetainedBudget::for_session(
        &broker.limits,
        broker.config.mqtt.max_packet_size,
    );
    for (i, filter, sub, new, route) in accepted {
        if let Some(rx) = route {
            let committed = matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(Ok(_))));
            if !committed {
                broker.unsubscribe(&session, &filter);
                codes[i] = ReasonCode::UNSPECIFIED_ERROR;
                continue;
            }
        }
        if retained_on_subscribe(&filter, &sub, new) {
            for m in broker.retained_matching(&filter, crate::now(), &mut budget) {
                if session.may_receive(m.topic.as_str()) {
                    retained.push((m, sub.options.qos));
                } else {
                    crate::metrics::receive_denied();
                }
            }
        }
        added.push((filter, sub));
    }
    // A persistent session's new subscriptions go into the registry before the SUBACK, so
    // they survive a restart of this node (or its loss).
    if !broker
        .persist_subscription_change(&session, &added, &[])
        .await
    {
        for c in codes.iter_mut().filter(|c| !c.is_error()) {
            *c = ReasonCode::UNSPECIFIED_ERROR;
        }
    }
    let now = crate::now();
    let drops = session.with(|s| {
        // SUBACK goes out before the retained messages it releases.
        s.reply(suback(packet_id, codes));
        for (m, granted) in retained {
            let qos = m.qos.min(granted);
            // [MQTT-3.3.1-9]: retained messages sent on subscribe carry RETAIN=1.
            let ids = identifier.into_iter().collect();
            s.deliver(m, qos, true, ids, None, now);
        }
        s.take_drops()
    });
    broker.metrics.record_drops(drops);
    broker.metrics.queue_dropped.increment(budget.skipped);
    // The driver is woken by the operation's end and encodes the reply then.
}

/// One accepted SUBSCRIBE entry: (index in the codes, filter, subscription, new for the
/// session, route commit to wait for).
type Accepted = (
    usize,
    TopicFilter,
    roost_core::index::Subscription,
    bool,
    Option<tokio::sync::oneshot::Receiver<crate::routes::RouteResult>>,
);

/// Work a packet started that waits on the cluster (a retained copy's commit, route commits,
/// the session registry). The connection keeps reading while it is in flight: PINGREQ and
/// acknowledgements of our PUBLISHes are answered at once; any other packet waits behind it,
/// in order (one held back, reading paused meanwhile). One at a time: what follows it is
/// routed after it, as it was sent.
type Op = std::pin::Pin<Box<dyn std::future::Future<Output = OpDone> + Send>>;

/// What a finished [`Op`] leaves for the driver.
enum OpDone {
    /// A retained PUBLISH was stored (or not) and routed: acknowledge it.
    Publish {
        ack: Option<roost_core::session::PendingAck>,
        out: crate::broker::PublishOutcome,
    },
    /// A SUBACK or UNSUBACK is in the session's outbox.
    Replied,
}

/// What woke the session loop (`Conn::session_loop`).
enum Event {
    /// `ConnCtl::wake`: a kick, or more in the outbox.
    Woken,
    /// Bytes read (`Ok(true)`), end of stream (`Ok(false)`), or a read error.
    Read(io::Result<bool>),
    /// The cluster operation in flight finished.
    OpDone(OpDone),
    /// The peers of the oldest held acknowledgement answered.
    PeersDone,
    /// The keep-alive or credentials deadline, or the oldest held acknowledgement's forward
    /// timeout.
    Timer,
}

/// How the active part of a connection ended.
enum LoopEnd {
    /// The connection closes, for this reason.
    Close(Close),
    /// Nothing happened for `mqtt.park_after_ms` and nothing is in flight: park.
    Park,
}

/// A parked connection's wait (RFC 0011): on two things only, the socket becoming readable
/// and its [`ConnCtl::wake`] (a delivery in the outbox, a kick, or its deadline, armed in the
/// node's deadlines table by [`Conn::arm_deadline`] before the wait). Any of them returns it
/// to the active loop, which reads, delivers or checks the deadline as it would have; a
/// wake-up from the deadline alone, when the deadline has moved on since it was armed (a
/// keep-alive renewed while active), arms it again and waits on. A kick is taken here (the
/// wake-up that carried it is consumed): `Err` with its close. Nothing is lost across the
/// switch: readiness and a `Wake` permit stay until taken, and the loop's first round
/// encodes the outbox before it waits.
///
/// Polled by hand: two references, no timer (the deadlines table holds the connection's
/// deadline: a tokio `Sleep` here was 112 B of every parked task). Counted in
/// `roost_mqtt_connections_parked` while it exists (also when the parked task is dropped, at
/// a runtime's shutdown). (`&mut Idle`: `Idle` is `Send` but not `Sync`, and the task must
/// be `Send`.) Size budget: with this wait the plain-TCP task's future
/// is 352 B (`-Zprint-type-sizes`; 360 B in the `Either` the listener spawns), 48 B under
/// what keeps the task in mimalloc's 512 B class (issue 10, docs/performance.md). Check
/// before adding to it or to `Idle`.
struct ParkedWait<'a, S> {
    conn: &'a mut Conn<S>,
    st: &'a mut Idle,
}

impl<'a, S: ByteStream> ParkedWait<'a, S> {
    fn new(conn: &'a mut Conn<S>, st: &'a mut Idle) -> Self {
        conn.broker.parked.fetch_add(1, Ordering::Relaxed);
        ParkedWait { conn, st }
    }
}

impl<S: ByteStream> Future for ParkedWait<'_, S> {
    type Output = Result<(), Close>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        while let Poll::Ready(bits) = this.st.ctl.wake.poll_take(cx) {
            if let Some(kick) = this.st.ctl.take_kick() {
                return Poll::Ready(Err(kick.close()));
            }
            // Only the deadline, and it has moved on: arm it again (the loop registers the
            // waker again). Anything else goes to the active loop.
            if bits != crate::broker::WOKEN_DEADLINE || !this.conn.arm_deadline(this.st) {
                return Poll::Ready(Ok(()));
            }
        }
        this.conn
            .stream
            .poll_readable(cx)
            .map(|r| r.map_err(|_| Close::closed("read_error")))
    }
}

impl<S> Drop for ParkedWait<'_, S> {
    fn drop(&mut self) {
        self.st.ctl.wake.unregister();
        self.conn.broker.parked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits for the operation in flight (never ends when there is none).
///
/// Cancel safety: the future stays in `op` when another `select!` arm wins.
async fn run_op(op: &mut Option<Op>) -> OpDone {
    match op {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Packets handled while an operation is in flight: they neither route nor change
/// subscriptions, so answering them early reorders nothing the client can see.
fn independent(p: &Packet) -> bool {
    matches!(
        p,
        Packet::PingReq
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
    )
}

/// Encodes a packet the node built itself; a failure is a bug, not client input.
fn encode_into(wbuf: &mut BytesMut, packet: &Packet, protocol: Protocol) {
    if let Err(e) = encode(packet, protocol, wbuf) {
        tracing::error!(error = %e, kind = packet.kind(), "failed to encode packet");
    }
}

/// The state of a connected session that lives as long as the connection: all that a parked
/// connection keeps (RFC 0011). The active loop adds [`Live`]'s queues around it.
struct Idle {
    session: SessionRef,
    ctl: Arc<ConnCtl>,
    protocol: Protocol,
    /// Deliveries encoded since the last one whose latency was recorded, modulo
    /// [`LATENCY_SAMPLE_EVERY`](crate::metrics::LATENCY_SAMPLE_EVERY): 0 records (so a
    /// connection's first delivery always does).
    latency_tick: u16,
    /// Boxed: most connections have none, and this lives in every connection's future.
    will: Option<Box<LastWill>>,
    /// The session's timer while connected (keep-alive): it only moves when packets arrive,
    /// so it is asked for after reading, not on every wake-up.
    deadline: Option<tokio::time::Instant>,
    /// The client's policies (re-resolved when the node's change) and publish decisions.
    /// Nothing allocated while the node has no policies.
    authz: crate::policy::ConnPolicy,
    /// `mqtt.max_publish_rate` and `max_publish_bytes_rate` for this connection (`None`:
    /// neither is set).
    rate: PublishRate,
    /// When the client's credentials (a token) expire: the connection is closed then.
    credentials_expire: Option<tokio::time::Instant>,
    /// The connection's entry in the node's deadlines table, woken there while parked at
    /// the earlier of `deadline` and `credentials_expire` (RFC 0013).
    armed: crate::broker::deadlines::Armed,
    /// The connection's place in its listener's `max_connections`, given back on drop.
    _slot: crate::listener::Slot,
}

/// The state of an active connection: [`Idle`] and what is in flight. It lives in the active
/// loop's box, so a parked connection's task does not carry these queues (about 100 B; issue
/// 10, memory per connection). They are all empty when it parks ([`Conn::parkable`]).
struct Live {
    base: Idle,
    /// What was taken from the session's outbox and not yet encoded (at most one
    /// [`WRITE_BATCH`] is encoded per round); its buffer is reused while active.
    outbox: VecDeque<Outbound>,
    /// Subscribers found congested while routing the current read batch.
    congested: Vec<SessionRef>,
    /// True once this read batch yielded before routing its first PUBLISH.
    yielded: bool,
    /// The cluster operation in flight, if any (see [`Op`]).
    op: Option<Op>,
    /// The packet read while `op` was in flight that must wait for it.
    /// Boxed: a `Packet` is hundreds of bytes, needed only while an operation is in flight.
    deferred: Option<Box<Packet>>,
    /// PUBACK/PUBREC waiting for peers to accept forwarded messages, in PUBLISH order.
    pending_acks: VecDeque<PendingAck>,
}

impl From<Idle> for Live {
    /// Waking: nothing in flight yet, and no buffer until one is needed.
    fn from(base: Idle) -> Live {
        Live {
            base,
            outbox: VecDeque::new(),
            congested: Vec::new(),
            yielded: false,
            op: None,
            deferred: None,
            pending_acks: VecDeque::new(),
        }
    }
}

impl std::ops::Deref for Live {
    type Target = Idle;
    fn deref(&self) -> &Idle {
        &self.base
    }
}

impl std::ops::DerefMut for Live {
    fn deref_mut(&mut self) -> &mut Idle {
        &mut self.base
    }
}

/// A connection's publish rate limits (token buckets, `roost_core::rate`).
#[derive(Debug)]
struct PublishRate(Option<Box<(roost_core::rate::TokenBucket, roost_core::rate::TokenBucket)>>);

impl PublishRate {
    fn new(m: &crate::config::MqttConfig) -> PublishRate {
        use roost_core::rate::TokenBucket;
        if m.max_publish_rate == 0 && m.max_publish_bytes_rate == 0 {
            return PublishRate(None);
        }
        let burst = m.rate_burst_secs;
        PublishRate(Some(Box::new((
            TokenBucket::new(m.max_publish_rate, m.max_publish_rate.saturating_mul(burst)),
            TokenBucket::new(
                m.max_publish_bytes_rate,
                m.max_publish_bytes_rate.saturating_mul(burst),
            ),
        ))))
    }

    /// Takes one PUBLISH of `bytes`; the limit it exceeds, if any.
    fn exceeded(&mut self, bytes: usize, now: std::time::Instant) -> Option<&'static str> {
        let (messages, volume) = self.0.as_deref_mut()?;
        if !messages.take(1, now) {
            return Some("messages");
        }
        if !volume.take(bytes as u64, now) {
            return Some("bytes");
        }
        None
    }
}

impl Idle {
    fn refresh_deadline(&mut self) {
        self.deadline = self
            .session
            .with(|s| s.poll_timeout())
            .map(tokio::time::Instant::from_std);
    }
}

impl Live {
    /// The forward timeout of the oldest acknowledgement held for peers. Only the oldest's:
    /// acknowledgements go out in order, and each later one was held later, so its deadline
    /// is no earlier.
    fn peers_deadline(&self) -> Option<tokio::time::Instant> {
        self.pending_acks
            .front()
            .and_then(|p| p.wait.as_ref())
            .map(PeerWait::deadline)
    }
}

/// An acknowledgement held back until peers accepted the message (see `Conn::hold`).
struct PendingAck {
    /// Ends when the peers answered (or timed out), and says whether they all accepted it;
    /// `None`: ready, waiting only for its turn.
    wait: Option<PeerWait>,
    ack: ReadyAck,
}

/// Waits for the answers of the oldest held acknowledgement's peers (its forward timeout is
/// the connection timer's: [`Live::peers_deadline`]).
///
/// Cancel safety: [`PeerWait::answered`] keeps what it took.
async fn front_answered(q: &mut VecDeque<PendingAck>) {
    if let Some(PendingAck { wait: Some(w), .. }) = q.front_mut() {
        w.answered().await;
    }
}

/// Varies assigned client ids between runs of the process.
fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}
