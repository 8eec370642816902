//! The connection driver: one tokio task per client connection.
//!
//! ```text
//!            ┌──────────────────────── driver task ───────────────────────────┐
//!  socket ──▶│ readable → try_read → Decoder::decode → handle(packet)          │
//!            │                          PUBLISH → Broker::route (other sessions)│
//!            │                          acks    → Session (window, queue)       │
//!  socket ◀──│ write_all(wbuf) ◀── encode ◀── Session::take_outbox ◀── wake    │
//!            └────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Only this task awaits the socket. It waits on three things in one `select!`: the socket
//! becoming readable, its [`ConnCtl::wake`] (routing put something in the session's outbox, or
//! the broker wants the connection gone), and the keep-alive deadline.
//!
//! Cancel safety: the `select!` arms are `TcpStream::readable` (cancel safe: readiness only, no
//! data is taken), `Notify::notified` (a permit stored by `notify_one` is not lost when the
//! future is dropped) and `sleep_until` (stateless). Reads happen with `try_read_buf` after the
//! `select!` returns, and writes with `write_all` outside it, so no partial read or write is ever
//! dropped.
//!
//! Memory: an idle connection holds no read or write buffer. The read buffer is allocated when
//! the socket becomes readable and released when it has been drained; the write buffer is
//! released after each flush if it grew beyond a few KiB.

use crate::broker::{Broker, ConnCtl, ConnInfo, Origin, SessionRef};
use bytes::{Bytes, BytesMut};
use roost_codec::{
    encode, encoded_len, Ack, ConnAck, Connect, DecodeError, Decoder, Disconnect, LastWill, Packet,
    PacketId, Properties, Protocol, Publish, QoS, ReasonCode, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use roost_core::index::Subscription;
use roost_core::message::Message;
use roost_core::session::{ClientParams, Outbound};
use roost_core::topic::{TopicFilter, TopicName};
use roost_core::ClientId;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info};

/// Read-buffer growth step.
const READ_CHUNK: usize = 4096;
/// A write buffer larger than this is freed after a flush instead of kept.
const KEEP_WBUF: usize = 1024;

/// Why a connection ends.
#[derive(Debug)]
struct Exit {
    /// DISCONNECT reason to send first (v5 only).
    send: Option<ReasonCode>,
    /// Metric label.
    why: &'static str,
    /// Publish the will (anything but a normal DISCONNECT 0x00).
    will: bool,
    /// Reason String for the DISCONNECT (v5): what exactly was wrong, with the spec clause.
    detail: Option<String>,
}

impl Exit {
    fn error(reason: ReasonCode, why: &'static str) -> Exit {
        Exit {
            send: Some(reason),
            why,
            will: true,
            detail: None,
        }
    }
    fn closed(why: &'static str) -> Exit {
        Exit {
            send: None,
            why,
            will: true,
            detail: None,
        }
    }
    fn with_detail(mut self, detail: String) -> Exit {
        self.detail = Some(detail);
        self
    }
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    broker: Arc<Broker>,
}

/// Serves one accepted TCP connection until it closes.
pub(crate) async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        peer,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        decoder: Decoder::server(broker.config.mqtt.max_packet_size),
        broker,
    };
    let timeout = Duration::from_secs(conn.broker.config.mqtt.connect_timeout_secs);
    let connect = match tokio::time::timeout(timeout, conn.read_connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(exit)) => {
            crate::metrics::disconnected(exit.why);
            return;
        }
        Err(_) => {
            debug!(peer = %conn.peer, "no CONNECT in time");
            crate::metrics::disconnected("connect_timeout");
            return;
        }
    };
    conn.run_session(connect).await;
}

impl Conn {
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

    async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.wbuf).await?;
        let n = self.wbuf.len() as u64;
        self.broker.metrics.bytes_sent.increment(n);
        if self.wbuf.capacity() > KEEP_WBUF {
            self.wbuf = BytesMut::new();
        } else {
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Encodes a packet into the write buffer (sent on the next flush).
    fn queue(&mut self, packet: &Packet, protocol: Protocol) {
        if let Err(e) = encode(packet, protocol, &mut self.wbuf) {
            // Only packets we build ourselves get here; a failure is a bug, not client input.
            tracing::error!(error = %e, kind = packet.kind(), "failed to encode packet");
        }
    }

    /// Waits for the first packet, which must be CONNECT.
    async fn read_connect(&mut self) -> Result<Box<Connect>, Exit> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(Packet::Connect(c))) => return Ok(c),
                Ok(Some(_)) => return Err(Exit::closed("protocol_error")),
                Ok(None) => {}
                Err(e) => {
                    crate::metrics::malformed();
                    debug!(peer = %self.peer, error = %e, "bad CONNECT");
                    let reason = e.reason_code();
                    // Answer with CONNACK where the version is known ([MQTT-3.1.2-2]: 0x84 /
                    // return code 0x01 for an unsupported protocol level).
                    let protocol = match (&e, self.decoder.protocol()) {
                        (DecodeError::UnsupportedProtocolVersion(l), _) if *l >= 5 => {
                            Some(Protocol::V5)
                        }
                        (DecodeError::UnsupportedProtocolVersion(_), _) => Some(Protocol::V311),
                        (_, p) => p.filter(|p| *p == Protocol::V5),
                    };
                    if let Some(p) = protocol {
                        let ack = ConnAck {
                            reason_code: reason,
                            ..ConnAck::default()
                        };
                        self.queue(&Packet::ConnAck(ack), p);
                        let _ = self.flush().await;
                    }
                    return Err(Exit::closed("malformed"));
                }
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) | Err(_) => return Err(Exit::closed("eof_before_connect")),
            }
        }
    }

    async fn refuse(&mut self, protocol: Protocol, reason: ReasonCode, why: &'static str) {
        crate::metrics::rejected(why);
        let ack = ConnAck {
            reason_code: reason,
            ..ConnAck::default()
        };
        self.queue(&Packet::ConnAck(ack), protocol);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// Everything after CONNECT. `connect` stays boxed: it lives across awaits, and the future
    /// of every idle connection would otherwise carry its full size.
    async fn run_session(mut self, mut connect: Box<Connect>) {
        let cfg = Arc::clone(&self.broker.config);
        let protocol = connect.protocol;
        let v5 = protocol == Protocol::V5;

        // --- authentication and admission -------------------------------------------------
        if connect.properties.authentication_method.is_some() {
            // Enhanced authentication (AUTH exchange) is not offered.
            return self
                .refuse(
                    protocol,
                    ReasonCode::BAD_AUTHENTICATION_METHOD,
                    "auth_method",
                )
                .await;
        }
        if !cfg.mqtt.allow_anonymous {
            // No credential store exists yet, so with anonymous access off nobody is let in.
            return self
                .refuse(protocol, ReasonCode::NOT_AUTHORIZED, "not_authorized")
                .await;
        }
        let mut assigned = None;
        let client_id: ClientId = if connect.client_id.is_empty() {
            if !v5 && !connect.clean_start {
                // [MQTT-3.1.3-8] (3.1.1): a zero-length id needs CleanSession=1.
                return self
                    .refuse(
                        protocol,
                        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                        "client_id",
                    )
                    .await;
            }
            let id = format!("roost-{:016x}", self.broker.new_conn_id() ^ random_salt());
            assigned = Some(id.clone());
            id.into()
        } else {
            if connect.client_id.len() > cfg.mqtt.max_client_id_length {
                return self
                    .refuse(
                        protocol,
                        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                        "client_id",
                    )
                    .await;
            }
            connect.client_id.as_str().into()
        };
        if let Some(w) = &connect.will {
            if let Err(reason) = self.check_will(w) {
                return self.refuse(protocol, reason, "will").await;
            }
        }
        let current = self.broker.connections.fetch_add(1, Ordering::AcqRel);
        // A takeover replaces a connection rather than adding one: never refuse it for quota.
        let takeover = self
            .broker
            .session(client_id.as_str())
            .is_some_and(|s| s.conn().is_some());
        if current >= cfg.mqtt.max_connections && !takeover {
            self.broker.connections.fetch_sub(1, Ordering::AcqRel);
            info!(peer = %self.peer, max = cfg.mqtt.max_connections, "connection limit reached");
            return self
                .refuse(protocol, ReasonCode::QUOTA_EXCEEDED, "quota")
                .await;
        }

        // --- negotiated parameters --------------------------------------------------------
        let props = &connect.properties;
        let expiry_requested = if v5 {
            props.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = expiry_requested.min(cfg.mqtt.max_session_expiry_interval);
        let keep_alive = effective_keep_alive(connect.keep_alive, &cfg.mqtt, v5);
        let params = ClientParams {
            protocol,
            receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
            maximum_packet_size: props.maximum_packet_size,
            topic_alias_maximum: if v5 {
                props.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
        };
        let ctl = Arc::new(ConnCtl::new(
            self.broker.new_conn_id(),
            ConnInfo {
                peer: self.peer,
                protocol,
                keep_alive,
                connected_at: SystemTime::now(),
                username: connect.username.clone(),
            },
        ));
        // Boxed: the claim/takeover future is large, and the connection's task lives on.
        let attach = Box::pin(self.broker.attach(
            &client_id,
            connect.clean_start,
            expiry,
            Arc::clone(&ctl),
            params,
        ));
        let attached = match attach.await {
            Ok(a) => a,
            Err(e) => {
                // No quorum to register the session: say so instead of hanging.
                self.broker.connections.fetch_sub(1, Ordering::AcqRel);
                info!(client_id = %client_id, error = %e, "cannot register session");
                return self
                    .refuse(
                        protocol,
                        ReasonCode::SERVER_UNAVAILABLE,
                        "cluster_unavailable",
                    )
                    .await;
            }
        };
        let session = attached.session;

        let mut ack = ConnAck {
            session_present: attached.session_present,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        };
        if v5 {
            let p = &mut ack.properties;
            if expiry != expiry_requested {
                p.session_expiry_interval = Some(expiry);
            }
            if cfg.mqtt.receive_maximum != u16::MAX {
                p.receive_maximum = Some(cfg.mqtt.receive_maximum);
            }
            if cfg.mqtt.max_qos < 2 {
                p.maximum_qos = Some(cfg.mqtt.max_qos);
            }
            if !cfg.mqtt.retain_available {
                p.retain_available = Some(0);
            }
            p.maximum_packet_size = Some(cfg.mqtt.max_packet_size);
            p.assigned_client_identifier = assigned;
            if cfg.mqtt.topic_alias_maximum > 0 {
                p.topic_alias_maximum = Some(cfg.mqtt.topic_alias_maximum);
            }
            if !cfg.mqtt.wildcard_subscriptions {
                p.wildcard_subscription_available = Some(0);
            }
            if !cfg.mqtt.subscription_identifiers {
                p.subscription_identifiers_available = Some(0);
            }
            if !cfg.mqtt.shared_subscriptions {
                p.shared_subscription_available = Some(0);
            }
            if keep_alive != connect.keep_alive {
                p.server_keep_alive = Some(keep_alive);
            }
        }
        self.queue(&Packet::ConnAck(ack), protocol);
        self.broker.metrics.accepted.increment(1);
        debug!(client_id = %client_id, peer = %self.peer, ?protocol, "client connected");

        let mut state = Live {
            session: session.clone(),
            ctl: Arc::clone(&ctl),
            protocol,
            client_id: client_id.clone(),
            will: connect.will.take().map(Box::new),
            expiry,
            keep_alive,
            last_packet: tokio::time::Instant::now(),
            outbox: Vec::new(),
            congested: Vec::new(),
            pending_acks: std::collections::VecDeque::new(),
        };
        // Nothing else of the CONNECT is needed: free it rather than keep it for the life of
        // the connection.
        drop(connect);
        let exit = self.session_loop(&mut state).await;
        crate::metrics::disconnected(exit.why);
        if let (Some(reason), true) = (exit.send, v5) {
            let d = Disconnect {
                reason_code: reason,
                properties: Properties {
                    reason_string: exit.detail,
                    ..Properties::default()
                },
            };
            self.queue(&Packet::Disconnect(d), protocol);
        }
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
        let will = if exit.will { state.will.take() } else { None };
        self.broker.detach(&session, &ctl, will, state.expiry);
        self.broker.connections.fetch_sub(1, Ordering::AcqRel);
        debug!(client_id = %client_id, why = exit.why, "client disconnected");
    }

    fn check_will(&self, w: &LastWill) -> Result<(), ReasonCode> {
        let name =
            TopicName::new(&w.topic, &self.broker.topic_limits).map_err(|e| e.reason_code())?;
        if name.is_system() {
            return Err(ReasonCode::TOPIC_NAME_INVALID);
        }
        if w.qos as u8 > self.broker.config.mqtt.max_qos {
            return Err(ReasonCode::QOS_NOT_SUPPORTED);
        }
        if w.retain && !self.broker.config.mqtt.retain_available {
            return Err(ReasonCode::RETAIN_NOT_SUPPORTED);
        }
        Ok(())
    }

    async fn session_loop(&mut self, st: &mut Live) -> Exit {
        loop {
            self.release_acks(st);
            self.encode_outbox(st);
            self.release_rbuf();
            if let Err(e) = self.flush().await {
                debug!(client_id = %st.client_id, error = %e, "write failed");
                return Exit::closed("write_error");
            }
            let deadline = (st.keep_alive > 0)
                .then(|| st.last_packet + Duration::from_millis(u64::from(st.keep_alive) * 1500));
            tokio::select! {
                biased;
                _ = st.ctl.wake.notified() => {
                    if let Some(reason) = st.ctl.take_kick() {
                        return Exit::error(reason, kick_label(reason));
                    }
                }
                r = self.fill() => {
                    match r {
                        Ok(true) => {
                            loop {
                                // Boxed: handling packets nests the futures of every packet
                                // kind (several KiB); an idle connection's task must not
                                // carry that, and one allocation per read batch is cheap.
                                if let Err(exit) = Box::pin(self.drain_packets(st)).await {
                                    return exit;
                                }
                                self.signal_space(st);
                                if st.congested.is_empty() {
                                    break;
                                }
                                // Acks for what was routed go out first; then hold off decoding
                                // until the slow subscribers catch up (bounded), and go on with
                                // what is left in the read buffer.
                                self.encode_outbox(st);
                                if self.flush().await.is_err() {
                                    return Exit::closed("write_error");
                                }
                                let congested = std::mem::take(&mut st.congested);
                                Box::pin(self.broker.wait_for_space(&congested)).await;
                            }
                            // Let the drivers this batch woke run before reading more: a
                            // publisher with a full socket must not starve its subscribers.
                            tokio::task::yield_now().await;
                        }
                        Ok(false) => return Exit::closed("eof"),
                        Err(_) => return Exit::closed("read_error"),
                    }
                }
                _ = front_done(&mut st.pending_acks),
                    if st.pending_acks.front().is_some_and(|p| p.wait.is_some()) => {
                    // Released at the top of the loop.
                }
                _ = sleep_opt(deadline) => {
                    debug!(client_id = %st.client_id, "keep-alive timeout");
                    return Exit::error(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep_alive");
                }
            }
        }
    }

    /// Wakes publishers waiting for this session's queue to drain (backpressure), once it is
    /// down to a quarter of `max_queued_messages`.
    fn signal_space(&self, st: &Live) {
        st.session
            .signal_space(self.broker.config.mqtt.max_queued_messages / 4);
    }

    /// Decodes and handles the packets in the read buffer; stops early (leaving the rest in
    /// the buffer) when routing found a congested subscriber, so backpressure applies per
    /// message, not per read.
    async fn drain_packets(&mut self, st: &mut Live) -> Result<(), Exit> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(p)) => {
                    st.last_packet = tokio::time::Instant::now();
                    self.handle(st, p).await?;
                    if !st.congested.is_empty() {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    crate::metrics::malformed();
                    debug!(client_id = %st.client_id, error = %e, "malformed packet");
                    return Err(
                        Exit::error(e.reason_code(), "malformed").with_detail(e.to_string())
                    );
                }
            }
        }
    }

    async fn handle(&mut self, st: &mut Live, packet: Packet) -> Result<(), Exit> {
        let now = crate::now();
        match packet {
            Packet::Publish(p) => self.on_publish(st, p, now).await,
            Packet::PubAck(a) => {
                let r = st.session.with(|s| s.handle_puback(a.packet_id, now));
                log_unknown_ack(st, "puback", r);
                Ok(())
            }
            Packet::PubRec(a) => {
                let r = st
                    .session
                    .with(|s| s.handle_pubrec(a.packet_id, a.reason_code, now));
                log_unknown_ack(st, "pubrec", r);
                Ok(())
            }
            Packet::PubComp(a) => {
                let r = st.session.with(|s| s.handle_pubcomp(a.packet_id, now));
                log_unknown_ack(st, "pubcomp", r);
                Ok(())
            }
            Packet::PubRel(a) => {
                st.session.with(|s| s.handle_pubrel(a.packet_id));
                Ok(())
            }
            // Boxed: rare next to PUBLISH, and its future (route commits) is large.
            Packet::Subscribe(s) => Box::pin(self.on_subscribe(st, s)).await,
            Packet::Unsubscribe(u) => {
                Box::pin(self.on_unsubscribe(st, u)).await;
                Ok(())
            }
            Packet::PingReq => {
                self.queue(&Packet::PingResp, st.protocol);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(st, d)),
            // The decoder rejects a second CONNECT; AUTH after CONNECT needs an auth method we
            // never accepted; the rest only flow server to client.
            Packet::Auth(_)
            | Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => {
                crate::metrics::malformed();
                Err(Exit::error(ReasonCode::PROTOCOL_ERROR, "protocol_error"))
            }
        }
    }

    /// A PUBLISH from the client. It is acknowledged after it is in every local subscriber's
    /// session, every peer with subscribers accepted it (at most `cluster.forward_timeout_ms`)
    /// and, when retained, the retained copy committed.
    async fn on_publish(
        &mut self,
        st: &mut Live,
        mut p: Publish,
        now: Instant,
    ) -> Result<(), Exit> {
        let cfg = &self.broker.config.mqtt;
        self.broker.metrics.msg_received.increment(1);
        if p.qos as u8 > cfg.max_qos {
            // [MQTT-3.2.2-11]
            return Err(Exit::error(
                ReasonCode::QOS_NOT_SUPPORTED,
                "qos_not_supported",
            ));
        }
        if p.retain && !cfg.retain_available {
            self.broker.metrics.retain_dropped.increment(1);
            // [MQTT-3.3.1-19]
            return Err(Exit::error(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retain_not_supported",
            ));
        }
        let topic = {
            let alias = p.properties.topic_alias.take();
            st.session
                .with(|s| s.resolve_topic(&p.topic, alias))
                .map_err(|r| Exit::error(r, "bad_topic"))?
        };
        let v5 = st.protocol == Protocol::V5;
        if topic.is_system() {
            // Clients may not publish into the `$` namespace; the message is refused and counted.
            self.broker.metrics.dollar_dropped.increment(1);
            let reason = if v5 {
                ReasonCode::TOPIC_NAME_INVALID
            } else {
                ReasonCode::SUCCESS
            };
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => self.ack(st, Packet::PubAck, id, reason),
                (QoS::ExactlyOnce, Some(id)) => {
                    if !v5 {
                        // v3.1.1 has no way to refuse: complete the handshake, route nothing.
                        let _ = st.session.with(|s| s.inbound_qos2(id));
                    }
                    self.ack(st, Packet::PubRec, id, reason);
                }
                _ => {}
            }
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce {
            if let Some(id) = p.packet_id {
                let first = st
                    .session
                    .with(|s| s.inbound_qos2(id))
                    .map_err(|r| Exit::error(r, "receive_maximum"))?;
                if !first {
                    self.ack(st, Packet::PubRec, id, ReasonCode::SUCCESS);
                    return Ok(());
                }
            }
        }
        // One copy at ingress: the payload then stops pinning the connection's read buffer and
        // is shared, never copied, by every delivery.
        p.payload = Bytes::copy_from_slice(&p.payload);
        let qos = p.qos;
        let packet_id = p.packet_id;
        let msg = Arc::new(Message::from_publish(
            p,
            topic,
            Some(st.client_id.as_arc().clone()),
            now,
        ));
        // Boxed: the publish future (retained commit, forwarding) is large; every idle
        // connection's task would otherwise be sized for it.
        let out = Box::pin(self.broker.publish(&msg, Origin::Client(&st.session))).await;
        st.congested.extend(out.congested);
        let (failed, matched, peers_accept) = (out.retain_failed, out.matched, out.peers);
        let reason = if failed && v5 {
            ReasonCode::UNSPECIFIED_ERROR
        } else if !matched && v5 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        let kind: fn(Ack) -> Packet = match qos {
            QoS::ExactlyOnce => Packet::PubRec,
            _ => Packet::PubAck,
        };
        if let (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) = (qos, packet_id) {
            match peers_accept {
                Some(wait) => self.ack_after(st, kind, id, reason, wait).await,
                None => self.ack(st, kind, id, reason),
            }
        }
        Ok(())
    }

    /// Sends an acknowledgement now, or after those still waiting for peers: PUBACKs and
    /// PUBRECs leave in the order the PUBLISHes came ([MQTT-4.6.0-2], [MQTT-4.6.0-3]).
    fn ack(&mut self, st: &mut Live, kind: fn(Ack) -> Packet, id: PacketId, reason: ReasonCode) {
        let mut a = Ack::new(id);
        a.reason_code = reason;
        if st.pending_acks.is_empty() {
            self.queue(&kind(a), st.protocol);
        } else {
            st.pending_acks.push_back(PendingAck {
                wait: None,
                ack: kind(a),
            });
        }
    }

    /// Queues an acknowledgement that waits for peers to accept the message. At most
    /// `mqtt.receive_maximum` wait at once; beyond that the connection stops reading until the
    /// oldest is released (a client that ignores our Receive Maximum is slowed, not buffered).
    async fn ack_after(
        &mut self,
        st: &mut Live,
        kind: fn(Ack) -> Packet,
        id: PacketId,
        reason: ReasonCode,
        wait: tokio::task::JoinHandle<()>,
    ) {
        let max = usize::from(self.broker.config.mqtt.receive_maximum);
        while st.pending_acks.len() >= max {
            front_done(&mut st.pending_acks).await;
            self.release_acks(st);
        }
        let mut a = Ack::new(id);
        a.reason_code = reason;
        st.pending_acks.push_back(PendingAck {
            wait: Some(wait),
            ack: kind(a),
        });
    }

    /// Sends the acknowledgements at the front of the queue whose peers have answered.
    fn release_acks(&mut self, st: &mut Live) {
        while let Some(front) = st.pending_acks.front() {
            if front.wait.as_ref().is_some_and(|h| !h.is_finished()) {
                break;
            }
            if let Some(p) = st.pending_acks.pop_front() {
                self.queue(&p.ack, st.protocol);
            }
        }
    }

    /// SUBSCRIBE. When a filter is this node's first subscriber for it, the SUBACK waits until
    /// the route committed and reached the other members (docs/rfcs/0002), so a message
    /// published anywhere after the SUBACK reaches this subscriber. A route that cannot commit
    /// within `cluster.commit_timeout_ms` gets reason 0x80 and the subscription is undone.
    async fn on_subscribe(&mut self, st: &mut Live, s: Subscribe) -> Result<(), Exit> {
        let cfg = &self.broker.config.mqtt;
        let identifier = s.properties.subscription_identifiers.first().copied();
        if identifier.is_some() && !cfg.subscription_identifiers {
            return Err(Exit::error(
                ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription_identifiers",
            ));
        }
        let max_qos = QoS::from_u8(cfg.max_qos).unwrap_or(QoS::ExactlyOnce);
        let mut codes = Vec::with_capacity(s.filters.len());
        // (index in codes, filter, granted options, new, route commit to wait for)
        let mut accepted = Vec::new();
        for (raw, mut opts) in s.filters {
            let filter = match TopicFilter::new(&raw, &self.broker.topic_limits) {
                Ok(f) => f,
                Err(e) => {
                    codes.push(e.reason_code());
                    continue;
                }
            };
            if filter.share_group().is_some() && !cfg.shared_subscriptions {
                codes.push(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
                continue;
            }
            if filter.has_wildcards() && !cfg.wildcard_subscriptions {
                codes.push(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED);
                continue;
            }
            opts.qos = opts.qos.min(max_qos);
            let sub = Subscription {
                options: opts,
                identifier,
            };
            let mut route = None;
            let new = self.broker.subscribe(&st.session, &filter, sub, &mut route);
            accepted.push((codes.len(), filter, opts, new, route));
            codes.push(ReasonCode(opts.qos as u8));
        }
        // Commit, then every reachable member applying it (bounded by the forward timeout).
        let c = &self.broker.config.cluster;
        let limit = Duration::from_millis(c.commit_timeout_ms + c.forward_timeout_ms);
        let mut retained = Vec::new();
        for (i, filter, opts, new, route) in accepted {
            if let Some(rx) = route {
                let committed = matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(Ok(_))));
                if !committed {
                    self.broker.unsubscribe(&st.session, &filter);
                    codes[i] = ReasonCode::UNSPECIFIED_ERROR;
                    continue;
                }
            }
            // Retained messages are not sent for shared subscriptions (MQTT 5.0 §4.8.2).
            let send_retained = filter.share_group().is_none()
                && match opts.retain_handling {
                    roost_codec::RetainHandling::SendAtSubscribe => true,
                    roost_codec::RetainHandling::SendIfNew => new,
                    roost_codec::RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for m in self.broker.retained_matching(&filter, crate::now()) {
                    retained.push((m, opts.qos));
                }
            }
        }
        let now = crate::now();
        // A persistent session's subscriptions go into the registry before the SUBACK, so
        // they survive a restart of this node (or its loss).
        if !Box::pin(self.broker.persist_subscriptions(&st.session)).await {
            for c in codes.iter_mut().filter(|c| !c.is_error()) {
                *c = ReasonCode::UNSPECIFIED_ERROR;
            }
        }
        let ack = SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        };
        // SUBACK goes out before the retained messages it releases.
        self.queue(&Packet::SubAck(ack), st.protocol);
        if !retained.is_empty() {
            let drops = st.session.with(|session| {
                for (m, granted) in retained {
                    let qos = m.qos.min(granted);
                    // [MQTT-3.3.1-9]: retained messages sent on subscribe carry RETAIN=1.
                    let ids = identifier.into_iter().collect();
                    session.deliver(m, qos, true, ids, None, now);
                }
                session.take_drops()
            });
            self.broker.metrics.record_drops(drops);
        }
        Ok(())
    }

    async fn on_unsubscribe(&mut self, st: &mut Live, u: Unsubscribe) {
        let mut codes = Vec::with_capacity(u.filters.len());
        for raw in u.filters {
            match TopicFilter::new(&raw, &self.broker.topic_limits) {
                Ok(f) => {
                    if self.broker.unsubscribe(&st.session, &f) {
                        codes.push(ReasonCode::SUCCESS);
                    } else {
                        codes.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
                    }
                }
                Err(e) => codes.push(e.reason_code()),
            }
        }
        Box::pin(self.broker.persist_subscriptions(&st.session)).await;
        let ack = UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        };
        self.queue(&Packet::UnsubAck(ack), st.protocol);
    }

    fn on_disconnect(&mut self, st: &mut Live, d: Disconnect) -> Exit {
        if let Some(new) = d.properties.session_expiry_interval {
            if st.expiry == 0 && new != 0 {
                // [MQTT-3.14.2-2]
                return Exit::error(ReasonCode::PROTOCOL_ERROR, "protocol_error");
            }
            st.expiry = new.min(self.broker.config.mqtt.max_session_expiry_interval);
        }
        Exit {
            send: None,
            detail: None,
            why: "client_disconnect",
            // [MQTT-3.14.4-3]: a normal disconnect discards the will; 0x04 asks for it.
            will: d.reason_code == ReasonCode::DISCONNECT_WITH_WILL,
        }
    }

    /// Encodes everything the session has to send into the write buffer.
    fn encode_outbox(&mut self, st: &mut Live) {
        let now = crate::now();
        let wbuf = &mut self.wbuf;
        let protocol = st.protocol;
        let outbox = &mut st.outbox;
        let (sent, more, drops) = st
            .session
            .with(|session| encode_session_outbox(session, outbox, wbuf, protocol, now));
        self.broker.metrics.record_drops(drops);
        if sent > 0 {
            self.broker.metrics.msg_sent.increment(sent);
        }
        if more {
            st.ctl.wake.notify_one();
        }
    }
}

/// Encodes what the session has to send into `wbuf`; returns (PUBLISHes encoded, more to send,
/// drops). Runs under the session's lock.
fn encode_session_outbox(
    session: &mut roost_core::session::Session,
    outbox: &mut Vec<Outbound>,
    wbuf: &mut BytesMut,
    protocol: Protocol,
    now: Instant,
) -> (u64, bool, roost_core::session::Drops) {
    if !session.has_outbox() {
        return (0, false, Default::default());
    }
    session.take_outbox(outbox);
    let max_size = session
        .client()
        .and_then(|c| c.maximum_packet_size)
        .map_or(usize::MAX, |m| m as usize);
    let v5 = protocol == Protocol::V5;
    let mut sent = 0u64;
    for item in outbox.drain(..) {
        match item {
            Outbound::PubRel(..) | Outbound::PubComp(..) | Outbound::Packet(_) => {
                if let Some(p) = item.ack_packet() {
                    if let Err(e) = encode(&p, protocol, wbuf) {
                        tracing::error!(error = %e, "failed to encode packet");
                    }
                }
            }
            Outbound::Publish(o) => {
                let mut properties = Properties::default();
                if v5 {
                    o.msg.properties.write_to(&mut properties);
                    properties.message_expiry_interval = o.msg.remaining_expiry(now);
                    properties.subscription_identifiers = o.subscription_ids;
                }
                let mut publish = Publish {
                    dup: o.dup,
                    qos: o.qos,
                    retain: o.retain,
                    topic: o.msg.topic.as_str().to_owned(),
                    packet_id: o.packet_id,
                    properties,
                    payload: o.msg.payload.clone(),
                };
                let mut packet = Packet::Publish(publish);
                if v5 {
                    // The alias changes the size, so it is chosen before the size check: a
                    // known alias replaces the topic, a new one adds 3 bytes. A new alias
                    // that would push the packet over the client's Maximum Packet Size
                    // ([MQTT-3.1.2-24]) is not defined; the topic goes out in full.
                    let alias = session.peek_outbound_alias(&o.msg.topic);
                    if let (Some((alias, first)), Packet::Publish(p)) = (alias, &mut packet) {
                        p.properties.topic_alias = Some(alias);
                        if !first {
                            p.topic.clear();
                        }
                    }
                    if matches!(alias, Some((_, true))) {
                        if encoded_len(&packet, protocol) <= max_size {
                            session.outbound_alias(&o.msg.topic);
                        } else if let Packet::Publish(p) = &mut packet {
                            p.properties.topic_alias = None;
                        }
                    }
                }
                if encoded_len(&packet, protocol) > max_size {
                    // [MQTT-3.1.2-25]: drop it for this client, and count it.
                    session.abandon(o.packet_id, now);
                    continue;
                }
                if let Err(e) = encode(&packet, protocol, wbuf) {
                    tracing::error!(error = %e, "failed to encode publish");
                    continue;
                }
                if let Packet::Publish(p) = packet {
                    publish = p;
                    drop(publish);
                }
                sent += 1;
            }
        }
    }
    // `abandon` may have opened the window: anything it released goes out next round.
    (sent, session.has_outbox(), session.take_drops())
}

/// The state of a connection after CONNACK.
struct Live {
    session: SessionRef,
    ctl: Arc<ConnCtl>,
    protocol: Protocol,
    client_id: ClientId,
    /// Boxed: most connections have none, and this lives in every connection's future.
    will: Option<Box<LastWill>>,
    expiry: u32,
    keep_alive: u16,
    last_packet: tokio::time::Instant,
    /// Reused scratch vector for the outbox.
    outbox: Vec<Outbound>,
    /// Subscribers found congested while routing the current read batch.
    congested: Vec<SessionRef>,
    /// PUBACK/PUBREC waiting for peers to accept forwarded messages, in PUBLISH order.
    pending_acks: std::collections::VecDeque<PendingAck>,
}

/// An acknowledgement held back until peers accepted the message (see `Conn::ack_after`).
struct PendingAck {
    /// Ends when the peers answered (or timed out); `None`: ready, waiting only for its turn.
    wait: Option<tokio::task::JoinHandle<()>>,
    ack: Packet,
}

/// Waits for the oldest held acknowledgement's peers.
///
/// Cancel safety: awaiting a `JoinHandle` by reference takes nothing from it.
async fn front_done(q: &mut std::collections::VecDeque<PendingAck>) {
    if let Some(PendingAck { wait: Some(h), .. }) = q.front_mut() {
        if !h.is_finished() {
            let _ = h.await;
        }
    }
}

fn log_unknown_ack(st: &Live, kind: &'static str, r: Result<(), ReasonCode>) {
    if r.is_err() {
        debug!(client_id = %st.client_id, kind, "ack for unknown packet id");
    }
}

fn kick_label(reason: ReasonCode) -> &'static str {
    match reason {
        ReasonCode::SESSION_TAKEN_OVER => "taken_over",
        ReasonCode::SERVER_SHUTTING_DOWN => "shutdown",
        ReasonCode::ADMINISTRATIVE_ACTION => "kicked",
        _ => "server_disconnect",
    }
}

async fn sleep_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The keep-alive the connection is held to (MQTT 5.0 §3.1.2.10, §3.2.2.3.14). v5 clients are
/// told about an override through Server Keep Alive; v3.1.1 has no way to tell a client, so a
/// v3.1.1 client is held to what it asked for.
fn effective_keep_alive(requested: u16, cfg: &crate::config::MqttConfig, v5: bool) -> u16 {
    if !v5 {
        return requested;
    }
    if let Some(k) = cfg.server_keep_alive {
        return k;
    }
    if requested > cfg.max_keep_alive || (requested == 0 && cfg.max_keep_alive < u16::MAX) {
        return cfg.max_keep_alive;
    }
    requested
}

/// Varies assigned client ids between runs of the process.
fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}
