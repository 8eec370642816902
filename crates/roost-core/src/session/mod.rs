//! The per-client session state machine.
//!
//! A [`Session`] is the part of a client's state that outlives one network connection (MQTT 5.0
//! §4.1): its subscriptions, the outbound QoS 1/2 messages in flight and waiting, the inbound
//! QoS 2 packet ids awaiting PUBREL, and, while a connection is attached, that connection's topic
//! aliases and flow-control parameters. It performs no I/O and reads no clock: callers pass `now`
//! and collect what must be sent with [`Session::take_outbox`].
//!
//! ```text
//!          deliver(msg)                     puback / pubrec / pubcomp
//!               │                                   │ frees a slot
//!               ▼                                   ▼
//!   ┌───────── queue ─────────┐  pump()   ┌──── inflight ────┐
//!   │ waiting for the window  │ ────────▶ │ sent, not acked  │ ──▶ outbox ──▶ driver encodes
//!   │ or for a reconnect      │           │ (resent with DUP │
//!   │ bounded: count + bytes  │           │  on reconnect)   │
//!   └─────────────────────────┘           └──────────────────┘
//! ```
//!
//! Flow control: at most `min(client Receive Maximum, limits.max_inflight)` QoS 1/2 PUBLISHes are
//! unacknowledged at once ([MQTT-3.3.4-7]); QoS 0 messages bypass the window while connected and
//! are not kept for offline sessions (MQTT 5.0 §4.1 lets a server choose; Mosquitto does the same
//! by default). The queue is bounded by message count and payload bytes; when full, the oldest or
//! the newest message is dropped as configured, and every drop is counted in [`Drops`].
//!
//! Concurrency: none inside. `roost-node` keeps each session behind its own mutex; routing locks
//! one session at a time, so there is no lock shared by all messages.
//!
//! ## Packets and time (quinn-proto style)
//!
//! The connection driver only moves bytes: it decodes a packet, hands it to [`Session::handle`],
//! acts on the [`Handled`] it gets back (route a PUBLISH, commit a SUBSCRIBE, close), encodes
//! what [`Session::take_outbox`] gives (PUBLISHes through [`Session::prepare_publish`]), and arms
//! the one timer [`Session::poll_timeout`] names, calling [`Session::handle_timeout`] when it
//! fires.
//!
//! ```text
//!   CONNECT ─▶ connect::negotiate ─▶ Negotiated ─▶ attach(&n, now) ──▶ Option<Ended> (clean start)
//!   packet  ─▶ handle(packet, now) ─▶ Handled::{Done, Publish, Ack, Dropped, Subscribe,
//!                    │                         Unsubscribe, UnknownPacketId, Close}
//!                    └─▶ outbox: PUBREL, PUBCOMP, PINGRESP, SUBACK (reply) ─▶ take_outbox
//!   close   ─▶ detach(now, will) ─▶ Detached { will_now, orphans, ended }
//!   timer   ─▶ poll_timeout() = connected: last packet + 1.5 × keep-alive
//!                               detached:  min(will due, session expiry)
//!              handle_timeout(now) ─▶ Timeout::{KeepAlive, Will, Expired}
//! ```
//!
//! Files: `mod.rs` (state, delivery, outbound QoS flows), `limits.rs` (the node's bounds and
//! the client's CONNECT parameters), `inbound.rs` (`handle`, client packets), `outbound.rs`
//! (PUBLISH encoding policy: aliases, Maximum Packet Size), `timers.rs` (attach/detach,
//! keep-alive, will delay, expiry), `image.rs` (export/import/end), `subscriptions.rs` (the
//! subscriptions' map, small while they are few). Tests: `test_support.rs`
//! (shared fixtures) and one `tests_*.rs` per concern.

mod image;
mod inbound;
mod limits;
mod outbound;
mod subscriptions;
mod timers;

pub use image::{ImageMessage, SessionImage};
pub use inbound::{
    retained_on_subscribe, suback, unsuback, AckKind, Close, Detail, DropReason, Handled, Inbound,
    PendingAck, PublishOutcome, ReadyAck, SubscribeRequest, Tally,
};
pub use limits::{ClientParams, DropPolicy, QueueTotals, SessionLimits};
pub use subscriptions::Subscriptions;
pub use timers::{takeover_will, will_delay, Detached, Ended, Timeout};

use crate::index::Subscription;
use crate::message::Message;
use crate::topic::{TopicFilter, TopicName};
use roost_codec::{Ack, Packet, PacketId, Properties, Protocol, QoS, ReasonCode};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// A PUBLISH to write: the shared message plus this delivery's own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutPublish {
    /// The message, shared with every other delivery.
    pub msg: Arc<Message>,
    /// Delivery QoS: min(published, granted).
    pub qos: QoS,
    /// Present when qos > 0.
    pub packet_id: Option<PacketId>,
    /// DUP: a redelivery after reconnect ([MQTT-3.3.1-1]).
    pub dup: bool,
    /// RETAIN as sent to this subscriber.
    pub retain: bool,
    /// Identifiers of the matching subscriptions (v5).
    pub subscription_ids: Vec<u32>,
}

/// Something the driver must send, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// An application message.
    Publish(OutPublish),
    /// PUBREL for an outbound QoS 2 message (reason 0x92 when the PUBREC was for an unknown id).
    PubRel(PacketId, ReasonCode),
    /// PUBCOMP for an inbound QoS 2 message (reason 0x92 when the PUBREL was for an unknown id).
    PubComp(PacketId, ReasonCode),
    /// Any other packet, sent as is, in its place: PINGRESP, and SUBACK / UNSUBACK given to
    /// [`Session::reply`] (so a SUBACK leaves before the retained messages it releases).
    /// Boxed: a packet is several times larger than the other variants.
    Packet(Box<Packet>),
}

impl Outbound {
    /// The packet to encode, for everything but PUBLISH (built by
    /// [`Session::prepare_publish`], which applies topic aliases and size limits).
    pub fn ack_packet(&self) -> Option<Packet> {
        let ack = |id: PacketId, reason: ReasonCode| Ack {
            packet_id: id,
            reason_code: reason,
            properties: Properties::default(),
        };
        match *self {
            Outbound::Publish(_) => None,
            Outbound::PubRel(id, r) => Some(Packet::PubRel(ack(id, r))),
            Outbound::PubComp(id, r) => Some(Packet::PubComp(ack(id, r))),
            Outbound::Packet(ref p) => Some((**p).clone()),
        }
    }
}

/// Messages this session dropped since the last [`Session::take_drops`], by cause. The node
/// adds them to its metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Queue bound by count or bytes was hit.
    pub queue_full: u64,
    /// Message expiry interval ran out before delivery started.
    pub expired: u64,
    /// QoS 0 message for a session with no connection.
    pub offline_qos0: u64,
    /// Larger than the client's Maximum Packet Size ([MQTT-3.1.2-25]).
    pub too_large: u64,
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Put in the outbox (the driver must be woken).
    Sent,
    /// Queued until the window opens or the client reconnects.
    Queued,
    /// Dropped (see [`Drops`]).
    Dropped,
}

/// A message waiting in the queue or in flight.
#[derive(Debug, Clone)]
struct Pending {
    msg: Arc<Message>,
    qos: QoS,
    retain: bool,
    subscription_ids: Vec<u32>,
    /// The shared subscription it came through, so it can be handed to another member of the
    /// group when this session goes away.
    shared: Option<TopicFilter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InflightState {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone)]
struct Inflight {
    id: PacketId,
    pending: Pending,
    state: InflightState,
    /// Carried over from an earlier connection and not yet resent on this one, because the
    /// new connection's Receive Maximum is smaller than what was in flight (MQTT 5.0 §4.9:
    /// the send quota starts afresh on every connection, [MQTT-4.9.0-2]).
    awaiting_resend: bool,
}

/// A message taken back from a session that ended, to redistribute to its shared group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The shared subscription it arrived through.
    pub filter: TopicFilter,
    /// The message.
    pub msg: Arc<Message>,
}

/// A set of packet ids, boxed and absent while empty: most sessions never receive QoS 2, and
/// an empty `HashSet` is 48 bytes in every session (issue 10, memory per connection). The
/// table stays once made (bounded by the node's Receive Maximum) until the session is reset.
#[derive(Debug, Default)]
// The box is the point: 8 bytes in the session while there is no table.
#[allow(clippy::box_collection)]
struct PacketIds(Option<Box<HashSet<u16>>>);

impl PacketIds {
    fn contains(&self, id: u16) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(&id))
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.len())
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&mut self, id: u16) {
        self.0.get_or_insert_with(Box::default).insert(id);
    }

    /// Whether it was there.
    fn remove(&mut self, id: u16) -> bool {
        self.0.as_mut().is_some_and(|s| s.remove(&id))
    }

    /// Empties the set and frees its table.
    fn take(&mut self) -> Vec<u16> {
        self.0
            .take()
            .map_or_else(Vec::new, |s| s.into_iter().collect())
    }
}

impl FromIterator<u16> for PacketIds {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> PacketIds {
        let set: HashSet<u16> = iter.into_iter().collect();
        PacketIds((!set.is_empty()).then(|| Box::new(set)))
    }
}

/// The topic aliases of one connection ([MQTT-3.3.2-7]: they do not outlive it).
#[derive(Debug, Default)]
struct Aliases {
    /// Client-to-server.
    inbound: HashMap<u16, TopicName>,
    /// Server-to-client.
    outbound: HashMap<TopicName, u16>,
}

/// One client's session. See the module docs.
#[derive(Debug)]
pub struct Session {
    client_id: Arc<str>,
    /// Shared by the sessions of a node (issue 10: a copy was 64 bytes in every session).
    limits: Arc<SessionLimits>,
    subscriptions: Subscriptions,
    /// `Some` while a connection is attached.
    client: Option<ClientParams>,
    next_packet_id: u16,
    inflight: VecDeque<Inflight>,
    /// Waiting for the window or a reconnect. Every change to it and to `queued_bytes` is
    /// also made to `limits.queue_totals` (see [`Session::queue_added`]), and what is left
    /// when the session is dropped is taken away there ([`Drop`]).
    queue: VecDeque<Pending>,
    queued_bytes: usize,
    outbox: Vec<Outbound>,
    /// Bytes of the QoS 0 PUBLISHes in `outbox` (saturating): with its length, what bounds a
    /// connected client that does not read (QoS 1/2 are bounded by the window).
    outbox_bytes: u32,
    /// Client packet ids of QoS 2 PUBLISHes received and acknowledged with PUBREC, not yet
    /// released: a repeat is not routed again (exactly once, [MQTT-4.3.3-10]).
    inbound_qos2: PacketIds,
    /// The topic aliases of the current connection (v5 only). Boxed, and `None` until the
    /// first alias: most clients use none, and two empty maps cost 96 bytes in every session
    /// (issue 10).
    aliases: Option<Box<Aliases>>,
    drops: Drops,
    /// Session Expiry Interval in seconds (u32::MAX = never): set at attach, changed by a v5
    /// DISCONNECT ([MQTT-3.14.2-2]); decides what happens at detach.
    expiry_interval: u32,
    /// The one timer's base (see `timers.rs`). Connected: when the last packet arrived (the
    /// keep-alive deadline is 1.5 × `keep_alive` later). Detached: when the session expires.
    /// `None`: no timer (never attached, attached with the older `connect`/`disconnect`, a
    /// session that never expires, or one that ended). One field for both: 16 bytes per
    /// session instead of an enum's 24.
    clock: Option<Instant>,
    /// Keep-alive of the attached connection, seconds (0 = none, [MQTT-3.1.2-22]).
    keep_alive: u16,
    /// A will waiting for its delay while detached (MQTT 5.0 §3.1.3.2.2). Boxed: rare.
    pending_will: Option<Box<timers::PendingWill>>,
}

impl Session {
    /// A new, empty session. A node passes one `Arc` of its limits to all its sessions.
    pub fn new(client_id: Arc<str>, limits: impl Into<Arc<SessionLimits>>) -> Session {
        Session {
            client_id,
            limits: limits.into(),
            subscriptions: Subscriptions::new(),
            client: None,
            next_packet_id: 0,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            outbox: Vec::new(),
            outbox_bytes: 0,
            inbound_qos2: PacketIds::default(),
            aliases: None,
            drops: Drops::default(),
            expiry_interval: 0,
            clock: None,
            keep_alive: 0,
            pending_will: None,
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// The limits this session was created with.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Attaches a connection: resends every unacknowledged PUBLISH with DUP set and every
    /// unacknowledged PUBREL, in their original order ([MQTT-4.4.0-1], [MQTT-4.6.0-1]), then
    /// fills the window from the queue. PUBLISHes beyond the new connection's window wait
    /// (marked `awaiting_resend`) and go out, still in order, as acknowledgements free room.
    ///
    /// A will still waiting for its delay is cancelled: the client is back in time
    /// (MQTT 5.0 §3.1.3.2.2). The keep-alive is 0 (none) until [`attach`](Self::attach) sets it.
    pub fn connect(&mut self, client: ClientParams, now: Instant) {
        self.client = Some(client);
        self.clock = Some(now);
        self.keep_alive = 0;
        self.pending_will = None;
        self.aliases = None;
        self.clear_outbox();
        for f in &mut self.inflight {
            f.awaiting_resend = true;
        }
        self.pump(now);
    }

    /// In-flight entries this connection has actually sent (they use its send quota).
    fn on_wire(&self) -> usize {
        self.inflight.iter().filter(|f| !f.awaiting_resend).count()
    }

    /// Resends carried-over in-flight messages, oldest first, while the window allows.
    fn resend_carried_over(&mut self) {
        let quota = self.send_quota();
        let mut on_wire = self.on_wire();
        for f in &mut self.inflight {
            if !f.awaiting_resend {
                continue;
            }
            let out = match f.state {
                InflightState::Published => {
                    if on_wire >= quota {
                        break;
                    }
                    on_wire += 1;
                    Outbound::Publish(OutPublish {
                        msg: f.pending.msg.clone(),
                        qos: f.pending.qos,
                        packet_id: Some(f.id),
                        dup: true,
                        retain: f.pending.retain,
                        subscription_ids: f.pending.subscription_ids.clone(),
                    })
                }
                // A PUBREL carries no message: it is always sent, and the flow it completes
                // already counted against the quota when its PUBLISH went out.
                InflightState::Released => {
                    on_wire += 1;
                    Outbound::PubRel(f.id, ReasonCode::SUCCESS)
                }
            };
            f.awaiting_resend = false;
            self.outbox.push(out);
        }
    }

    /// Detaches the connection. Unsent QoS 0 messages are discarded; QoS 1/2 state stays.
    /// No timer is armed (see [`detach`](Self::detach) for the one that applies the will and
    /// expiry rules).
    pub fn disconnect(&mut self) {
        self.client = None;
        self.clock = None;
        self.clear_outbox();
        self.aliases = None;
    }

    /// True while a connection is attached.
    pub fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// The attached connection's parameters.
    pub fn client(&self) -> Option<&ClientParams> {
        self.client.as_ref()
    }

    /// True if a QoS 1/2 message would be sent now rather than queued.
    pub fn has_window(&self) -> bool {
        self.client.is_some() && self.inflight.len() < self.send_quota() && self.queue.is_empty()
    }

    fn send_quota(&self) -> usize {
        let client_max = self.client.map_or(u16::MAX, |c| c.receive_maximum);
        // One id is kept free so allocation always finds one.
        usize::from(
            client_max
                .min(self.limits.max_inflight)
                .clamp(1, u16::MAX - 1),
        )
    }

    /// Number of QoS 1/2 messages sent and not yet fully acknowledged.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Number of messages waiting.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Routes one message to this session. `qos` is the delivery QoS (already min'ed with the
    /// subscription), `retain` the RETAIN flag to send, `shared` the shared subscription it came
    /// through, if any.
    pub fn deliver(
        &mut self,
        msg: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        shared: Option<TopicFilter>,
        now: Instant,
    ) -> Delivered {
        if msg.is_expired(now) {
            self.drops.expired += 1;
            return Delivered::Dropped;
        }
        let pending = Pending {
            msg,
            qos,
            retain,
            subscription_ids,
            shared,
        };
        if qos == QoS::AtMostOnce {
            if self.client.is_none() {
                self.drops.offline_qos0 += 1;
                return Delivered::Dropped;
            }
            // A connected but slow reader: QoS 0 bypasses the window, so the outbox itself is
            // bounded by the queue's limits, in messages and in bytes.
            let size = u32::try_from(pending.msg.size()).unwrap_or(u32::MAX);
            let bytes = self.outbox_bytes.saturating_add(size);
            if self.outbox.len() >= self.limits.max_queued_messages
                || usize::try_from(bytes).map_or(true, |b| b > self.limits.max_queued_bytes)
            {
                self.drops.queue_full += 1;
                return Delivered::Dropped;
            }
            self.outbox_bytes = bytes;
            self.outbox.push(Outbound::Publish(OutPublish {
                msg: pending.msg,
                qos,
                packet_id: None,
                dup: false,
                retain,
                subscription_ids: pending.subscription_ids,
            }));
            return Delivered::Sent;
        }
        if self.has_window() {
            self.send_pending(pending);
            return Delivered::Sent;
        }
        if self.enqueue(pending) {
            Delivered::Queued
        } else {
            Delivered::Dropped
        }
    }

    /// Appends to the queue, applying the bounds; false if the new message was the one dropped.
    fn enqueue(&mut self, pending: Pending) -> bool {
        let size = pending.msg.size();
        let fits = |s: &Session| {
            s.queue.len() < s.limits.max_queued_messages
                && s.queued_bytes + size <= s.limits.max_queued_bytes
        };
        if size > self.limits.max_queued_bytes {
            self.drops.queue_full += 1;
            return false;
        }
        match self.limits.drop_policy {
            DropPolicy::Newest => {
                if !fits(self) {
                    self.drops.queue_full += 1;
                    return false;
                }
            }
            DropPolicy::Oldest => {
                while !fits(self) {
                    match self.queue.pop_front() {
                        Some(old) => {
                            self.queue_removed(1, old.msg.size());
                            self.drops.queue_full += 1;
                        }
                        None => break,
                    }
                }
            }
        }
        self.queue.push_back(pending);
        self.queue_added(size);
        true
    }

    /// One message of `size` bytes was put in the queue.
    fn queue_added(&mut self, size: usize) {
        self.queued_bytes += size;
        self.limits.queue_totals.add(1, size);
    }

    /// `messages` messages of `bytes` bytes in all left the queue.
    fn queue_removed(&mut self, messages: usize, bytes: usize) {
        self.queued_bytes -= bytes;
        self.limits.queue_totals.sub(messages, bytes);
    }

    fn allocate_packet_id(&mut self) -> PacketId {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if let Some(id) = PacketId::new(self.next_packet_id) {
                if !self.inflight.iter().any(|f| f.id == id) {
                    return id;
                }
            }
        }
    }

    fn send_pending(&mut self, pending: Pending) {
        let id = self.allocate_packet_id();
        self.outbox.push(Outbound::Publish(OutPublish {
            msg: pending.msg.clone(),
            qos: pending.qos,
            packet_id: Some(id),
            dup: false,
            retain: pending.retain,
            subscription_ids: pending.subscription_ids.clone(),
        }));
        self.inflight.push_back(Inflight {
            id,
            pending,
            state: InflightState::Published,
            awaiting_resend: false,
        });
    }

    /// Moves queued messages into the window while there is room. Messages that expired while
    /// waiting are dropped here ([MQTT-3.3.2-5]).
    pub fn pump(&mut self, now: Instant) {
        if self.client.is_none() {
            return;
        }
        self.resend_carried_over();
        while self.inflight.len() < self.send_quota() {
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            self.queue_removed(1, p.msg.size());
            if p.msg.is_expired(now) {
                self.drops.expired += 1;
                continue;
            }
            self.send_pending(p);
        }
    }

    fn position(&self, id: PacketId, state: InflightState) -> Option<usize> {
        self.inflight
            .iter()
            .position(|f| f.id == id && f.state == state)
    }

    /// Where the flow with packet id `id` is, if one is in flight: `Ok(position)` when it is
    /// of `qos` and at `state`. An id with nothing in flight is `Err(0x92)`, which the caller
    /// may ignore (a late repeat after a reconnect, as Mosquitto does); an id in flight at
    /// another stage or of the other QoS is `Err(0x82)`: an acknowledgement of the wrong type,
    /// a protocol error ([MQTT-4.8.0-1], [MQTT-4.13.1-1]).
    fn expect_stage(
        &self,
        id: PacketId,
        qos: QoS,
        state: InflightState,
    ) -> Result<usize, ReasonCode> {
        let pos = self
            .inflight
            .iter()
            .position(|f| f.id == id)
            .ok_or(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)?;
        let f = &self.inflight[pos];
        if f.pending.qos == qos && f.state == state {
            Ok(pos)
        } else {
            Err(ReasonCode::PROTOCOL_ERROR)
        }
    }

    /// PUBACK from the client. `Err(0x92)`: nothing in flight with that id (ignorable);
    /// `Err(0x82)`: the id is a QoS 2 flow (a protocol error, see `expect_stage`).
    pub fn handle_puback(&mut self, id: PacketId, now: Instant) -> Result<(), ReasonCode> {
        let pos = self.expect_stage(id, QoS::AtLeastOnce, InflightState::Published)?;
        self.inflight.remove(pos);
        self.pump(now);
        Ok(())
    }

    /// PUBREC from the client: answer PUBREL, or end the flow if the reason is an error
    /// (MQTT 5.0 §4.3.3). A repeated PUBREC for a flow already released gets its PUBREL again;
    /// one for an unknown id `Err(0x92)` (and PUBREL 0x92 in v5); one for a QoS 1 message in
    /// flight `Err(0x82)`, a protocol error.
    pub fn handle_pubrec(
        &mut self,
        id: PacketId,
        reason: ReasonCode,
        now: Instant,
    ) -> Result<(), ReasonCode> {
        if self.position(id, InflightState::Released).is_some() {
            // A repeated PUBREC (our PUBREL crossed it, or was lost): answer it again.
            self.outbox.push(Outbound::PubRel(id, ReasonCode::SUCCESS));
            return Ok(());
        }
        let pos = match self.expect_stage(id, QoS::ExactlyOnce, InflightState::Published) {
            Ok(pos) => pos,
            Err(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND) => {
                // MQTT 5.0 §4.3.3: answer a PUBREC we do not know with PUBREL 0x92 in v5.
                if self.client.is_some_and(|c| c.protocol == Protocol::V5) {
                    self.outbox.push(Outbound::PubRel(
                        id,
                        ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                    ));
                }
                return Err(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
            }
            Err(e) => return Err(e),
        };
        if reason.is_error() {
            self.inflight.remove(pos);
            self.pump(now);
            return Ok(());
        }
        self.inflight[pos].state = InflightState::Released;
        self.outbox.push(Outbound::PubRel(id, ReasonCode::SUCCESS));
        Ok(())
    }

    /// PUBCOMP from the client. `Err(0x92)`: nothing in flight with that id (ignorable);
    /// `Err(0x82)`: the id is a QoS 1 message or a QoS 2 flow still waiting for PUBREC.
    pub fn handle_pubcomp(&mut self, id: PacketId, now: Instant) -> Result<(), ReasonCode> {
        let pos = self.expect_stage(id, QoS::ExactlyOnce, InflightState::Released)?;
        self.inflight.remove(pos);
        self.pump(now);
        Ok(())
    }

    /// Takes everything to be sent, in order, appending it to `into`. Into an empty queue this
    /// is a swap of buffers, no copy.
    pub fn take_outbox(&mut self, into: &mut VecDeque<Outbound>) {
        self.outbox_bytes = 0;
        if into.is_empty() {
            let spare = Vec::from(std::mem::take(into));
            *into = VecDeque::from(std::mem::replace(&mut self.outbox, spare));
        } else {
            into.extend(self.outbox.drain(..));
        }
    }

    /// Discards what was not sent yet (the connection went away), and the buffer with it.
    fn clear_outbox(&mut self) {
        self.outbox = Vec::new();
        self.outbox_bytes = 0;
    }

    /// Frees the outbox's buffer if the outbox is empty: for a connection that parks (it
    /// had nothing to do for a while), so an idle session holds no buffer. The next delivery
    /// allocates one again.
    pub fn release_outbox_buffer(&mut self) {
        if self.outbox.is_empty() {
            self.outbox = Vec::new();
        }
    }

    /// True if there is something to send.
    pub fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Returns and resets the drop counters.
    pub fn take_drops(&mut self) -> Drops {
        std::mem::take(&mut self.drops)
    }

    /// Records a subscription; true if it is new for this session.
    pub fn add_subscription(&mut self, filter: TopicFilter, sub: Subscription) -> bool {
        self.subscriptions.insert(filter, sub).is_none()
    }

    /// Forgets a subscription; true if it existed.
    pub fn remove_subscription(&mut self, filter: &TopicFilter) -> bool {
        self.subscriptions.remove(filter).is_some()
    }

    /// The session's subscriptions.
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }
}

impl Drop for Session {
    /// What is still queued leaves the node's totals with the session.
    fn drop(&mut self) {
        let (messages, bytes) = (self.queue.len(), self.queued_bytes);
        self.limits.queue_totals.sub(messages, bytes);
    }
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests_handle;
#[cfg(test)]
mod tests_inbound;
#[cfg(test)]
mod tests_lifecycle;
#[cfg(test)]
mod tests_proptest;
#[cfg(test)]
mod tests_publish;
#[cfg(test)]
mod tests_qos;
#[cfg(test)]
mod tests_queue;
#[cfg(test)]
mod tests_shared;
#[cfg(test)]
mod tests_takeover;
#[cfg(test)]
mod tests_timers;
