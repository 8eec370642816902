//! Packets from the client: [`Session::handle`] checks each one against the node's
//! [`ServerPolicy`](crate::connect::ServerPolicy) and the session's state, answers what needs
//! no broker work (into the outbox), and returns the rest as a [`Handled`] for the node to act
//! on (route a PUBLISH, commit a SUBSCRIBE, close the connection).
//!
//! ```text
//!   PUBLISH ── qos/retain/topic/alias checks ──┬─▶ Close (0x9B, 0x9A, 0x90/0x94/0x82, 0x93)
//!                                              ├─▶ Dropped{SystemTopic, ack 0x90 | 0x00}
//!                                              ├─▶ Ack(PUBREC) (QoS 2 repeat: not routed again)
//!                                              └─▶ Publish(Inbound{msg, ack}) ─▶ node routes,
//!                                                    then ack.packet(PublishOutcome{..});
//!                                                    a PUBREC ≥ 0x80 sent ─▶ ack_sent (id freed)
//!   PUBACK/PUBREC/PUBCOMP ─▶ window freed (outbox: next PUBLISHes, PUBREL) ─▶ Done
//!                         ├─▶ UnknownPacketId (nothing in flight with that id: ignored)
//!                         └─▶ Close 0x82 (wrong type for an id in flight [MQTT-4.8.0-1])
//!   PUBREL ─▶ outbox: PUBCOMP ─▶ Done           PINGREQ ─▶ outbox: PINGRESP ─▶ Done
//!   SUBSCRIBE / UNSUBSCRIBE ─▶ per-filter verdicts ─▶ node commits, then suback()/unsuback()
//!   DISCONNECT ─▶ expiry updated ─▶ Close{will: reason == 0x04}
//! ```
//!
//! Metrics stay with the node: it counts every PUBLISH it reads (`msg_received`) before
//! calling `handle`, and what a [`Handled::Dropped`] or a [`Close`] (its `why` and `tally`) says.
//!
//! Acknowledgements of PUBLISHes are returned, never put in the outbox: the node sends them in
//! PUBLISH order behind those still waiting for peers to accept a forwarded message
//! ([MQTT-4.6.0-2], [MQTT-4.6.0-3]), which only it can see.

use super::{Outbound, Session};
use crate::index::Subscription;
use crate::message::Message;
use crate::topic::{TopicFilter, TopicName};
use bytes::Bytes;
use roost_codec::{
    Ack, DecodeError, Disconnect, Packet, PacketId, Properties, Protocol, Publish, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// What the node must do after [`Session::handle`]. Anything to send that needs no broker
/// work is already in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Nothing more: an acknowledgement from the client, PUBREL (PUBCOMP is in the outbox),
    /// PINGREQ (PINGRESP is in the outbox).
    Done,
    /// A valid PUBLISH: route it, then send `ack` (if any) with the reason
    /// [`PendingAck::packet`] gives for the outcome.
    Publish(Inbound),
    /// Send this acknowledgement in PUBLISH order and route nothing: a QoS 2 PUBLISH repeated
    /// before its PUBREL (PUBREC 0x00, exactly once, [MQTT-4.3.3-10]).
    Ack(ReadyAck),
    /// A PUBLISH refused without closing: count it as a drop, send `ack` in PUBLISH order.
    Dropped {
        /// Why (the drop metric's label).
        reason: DropReason,
        /// PUBACK/PUBREC to send, for QoS 1/2.
        ack: Option<ReadyAck>,
    },
    /// SUBSCRIBE: commit the accepted entries, then send [`suback`] (in the outbox through
    /// [`Session::reply`], before any retained message it releases).
    Subscribe(SubscribeRequest),
    /// UNSUBSCRIBE: remove the valid filters, then send [`unsuback`] (0x00 or 0x11 for each).
    Unsubscribe {
        /// Packet identifier to echo.
        packet_id: PacketId,
        /// Each filter, or the reason it is not valid.
        filters: Vec<Result<TopicFilter, ReasonCode>>,
    },
    /// An acknowledgement for a packet id with nothing in flight: ignored (log at DEBUG). An
    /// acknowledgement of the wrong type for an id that *is* in flight is a [`Handled::Close`]
    /// with 0x82 instead ([MQTT-4.8.0-1], [MQTT-4.13.1-1]).
    UnknownPacketId {
        /// `puback`, `pubrec` or `pubcomp`.
        kind: &'static str,
        /// The id it named.
        packet_id: PacketId,
    },
    /// Close the connection.
    Close(Close),
}

/// A PUBLISH from the client, ready to route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The message: topic alias resolved, payload copied once out of the read buffer.
    pub msg: Arc<Message>,
    /// The acknowledgement owed (QoS 1: PUBACK, QoS 2: PUBREC).
    pub ack: Option<PendingAck>,
}

/// Which acknowledgement a PUBLISH is owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// QoS 1.
    PubAck,
    /// QoS 2, first half.
    PubRec,
}

/// An acknowledgement owed to the client, whose reason depends on what routing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAck {
    /// PUBACK or PUBREC.
    pub kind: AckKind,
    /// The PUBLISH's packet id.
    pub packet_id: PacketId,
    /// The connection's protocol (v3.1.1 acknowledgements carry no reason).
    pub protocol: Protocol,
}

/// An acknowledgement whose reason is decided: send [`ReadyAck::packet`] in PUBLISH order.
/// (Small on purpose: a [`Packet`] is hundreds of bytes, and [`Handled`] is returned for every
/// packet.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyAck {
    /// Which acknowledgement, for which PUBLISH.
    pub ack: PendingAck,
    /// Its reason code.
    pub reason: ReasonCode,
}

impl ReadyAck {
    /// The packet to send.
    pub fn packet(&self) -> Packet {
        self.ack.with_reason(self.reason)
    }

    /// True for a PUBREC with a failure reason (0x80 or above): sending it ends the QoS 2 flow
    /// ([MQTT-4.3.3-9]), so the node tells the session ([`Session::ack_sent`]) when it sends
    /// it. Every other acknowledgement needs no word back.
    pub fn ends_qos2_flow(&self) -> bool {
        self.ack.kind == AckKind::PubRec && self.reason.is_error()
    }
}

/// What happened to a routed PUBLISH, for its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishOutcome {
    /// The retained copy could not be stored.
    pub retain_failed: bool,
    /// ... because the node's retained caps refused it (v5: 0x97 Quota exceeded).
    pub retain_refused: bool,
    /// At least one subscriber, here or on a peer.
    pub matched: bool,
}

impl PublishOutcome {
    /// The reason code: v5 says 0x80 when the retained copy failed and 0x10 when nobody
    /// subscribed (MQTT 5.0 §3.4.2.1); v3.1.1 always succeeds.
    pub fn reason(self, protocol: Protocol) -> ReasonCode {
        let v5 = protocol == Protocol::V5;
        if self.retain_refused && v5 {
            ReasonCode::QUOTA_EXCEEDED
        } else if self.retain_failed && v5 {
            ReasonCode::UNSPECIFIED_ERROR
        } else if !self.matched && v5 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        }
    }
}

impl PendingAck {
    /// The acknowledgement for this outcome.
    pub fn packet(&self, outcome: PublishOutcome) -> Packet {
        self.with_reason(outcome.reason(self.protocol))
    }

    /// The acknowledgement with a given reason.
    pub fn with_reason(&self, reason: ReasonCode) -> Packet {
        let mut a = Ack::new(self.packet_id);
        a.reason_code = reason;
        match self.kind {
            AckKind::PubAck => Packet::PubAck(a),
            AckKind::PubRec => Packet::PubRec(a),
        }
    }
}

/// Why a PUBLISH was refused without closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Clients may not publish into the `$` namespace (MQTT 5.0 §4.7.2).
    SystemTopic,
}

/// A metric a close implies beyond its `why` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Count as a malformed packet / protocol violation.
    Malformed,
    /// Count a retained message dropped (RETAIN=1 with retain unavailable).
    RetainDropped,
}

/// Why and how a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// DISCONNECT reason to send first (v5 only); `None`: just close.
    pub reason: Option<ReasonCode>,
    /// Metric label (`roost_disconnections_total{why}`).
    pub why: &'static str,
    /// Publish the will: anything but a normal DISCONNECT ([MQTT-3.14.4-3]).
    pub will: bool,
    /// What the DISCONNECT says besides its reason code (v5).
    pub detail: Option<Detail>,
    /// Another counter to bump.
    pub tally: Option<Tally>,
}

/// The property a server DISCONNECT carries besides its reason code. One or the other: no
/// close needs both, and one field of boxed strings keeps [`Close`] (and so [`Handled`]) at
/// 48 bytes (`session_stays_small`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    /// Reason String: what exactly was wrong, with the spec clause.
    ReasonString(Box<str>),
    /// Server Reference (with 0x9C Use another server): the node the client should connect to
    /// instead, `HOST:PORT` (MQTT 5.0 §4.11, "Server redirection").
    ServerReference(Box<str>),
}

impl Close {
    /// Close with a DISCONNECT `reason`, publishing the will.
    pub fn error(reason: ReasonCode, why: &'static str) -> Close {
        Close {
            reason: Some(reason),
            why,
            will: true,
            detail: None,
            tally: None,
        }
    }

    /// Close without a DISCONNECT (the network went away: `eof`, `read_error`, ...),
    /// publishing the will.
    pub fn closed(why: &'static str) -> Close {
        Close {
            reason: None,
            ..Close::error(ReasonCode::SUCCESS, why)
        }
    }

    /// A packet that could not be decoded: its reason code and the error as Reason String.
    pub fn malformed(e: &DecodeError) -> Close {
        Close {
            detail: Some(Detail::ReasonString(e.to_string().into())),
            tally: Some(Tally::Malformed),
            ..Close::error(e.reason_code(), "malformed")
        }
    }

    /// No packet for 1.5 × keep-alive ([MQTT-3.1.2-22]).
    pub fn keep_alive() -> Close {
        Close::error(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep_alive")
    }

    /// The server ends the connection: taken over (0x8E), shutting down (0x8B), kicked by an
    /// administrator (0x98), use another server (0x9C: a node that lost its session lease),
    /// or another reason.
    pub fn server(reason: ReasonCode) -> Close {
        let why = match reason {
            ReasonCode::SESSION_TAKEN_OVER => "taken_over",
            ReasonCode::SERVER_SHUTTING_DOWN => "shutdown",
            ReasonCode::ADMINISTRATIVE_ACTION => "kicked",
            ReasonCode::USE_ANOTHER_SERVER => "use_another_server",
            _ => "server_disconnect",
        };
        Close::error(reason, why)
    }

    /// A graceful stop that names the node to use instead: DISCONNECT 0x9C Use another server
    /// with `reference` as its Server Reference (MQTT 5.0 §4.11, `HOST:PORT`), publishing the
    /// will as any server-side close does. Counted as `shutdown`, like the 0x8B it replaces
    /// (`use_another_server` stays the lease's: a node cut off from the majority).
    pub fn use_another_server(reference: String) -> Close {
        Close {
            detail: Some(Detail::ServerReference(reference.into())),
            ..Close::error(ReasonCode::USE_ANOTHER_SERVER, "shutdown")
        }
    }

    fn tallied(mut self, tally: Tally) -> Close {
        self.tally = Some(tally);
        self
    }

    /// The DISCONNECT to send before closing: v5 only, when there is a reason (a v3.1.1
    /// server has no DISCONNECT: the connection just closes).
    pub fn disconnect_packet(&self, protocol: Protocol) -> Option<Packet> {
        let reason = self.reason.filter(|_| protocol == Protocol::V5)?;
        let mut properties = Properties::default();
        match &self.detail {
            Some(Detail::ReasonString(s)) => properties.reason_string = Some(s.to_string()),
            Some(Detail::ServerReference(s)) => properties.server_reference = Some(s.to_string()),
            None => {}
        }
        Some(Packet::Disconnect(Disconnect {
            reason_code: reason,
            properties,
        }))
    }
}

/// A SUBSCRIBE checked against the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// Packet identifier to echo in SUBACK.
    pub packet_id: PacketId,
    /// The Subscription Identifier (the first, MQTT 5.0 §3.8.2.1.2), given to every entry.
    pub identifier: Option<u32>,
    /// Per filter, in order: the subscription to commit (QoS capped at the policy's maximum),
    /// or the SUBACK reason it is refused with (0x8F invalid, 0x9E shared off, 0xA2 wildcards
    /// off).
    pub entries: Vec<Result<(TopicFilter, Subscription), ReasonCode>>,
}

impl SubscribeRequest {
    /// The SUBACK codes if every accepted entry commits: the granted QoS, or the refusal.
    /// The node replaces a code with 0x80 where committing failed.
    pub fn codes(&self) -> Vec<ReasonCode> {
        let mut codes = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            codes.push(match e {
                Ok((_, sub)) => ReasonCode(sub.options.qos as u8),
                Err(r) => *r,
            });
        }
        codes
    }
}

/// Whether subscribing sends the retained messages matching `filter`: never for a shared
/// subscription (MQTT 5.0 §4.8.2), else as its Retain Handling says (`new`: the subscription
/// did not exist before).
pub fn retained_on_subscribe(filter: &TopicFilter, sub: &Subscription, new: bool) -> bool {
    filter.share_group().is_none()
        && match sub.options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendIfNew => new,
            RetainHandling::DoNotSend => false,
        }
}

/// SUBACK with the final per-filter codes.
pub fn suback(packet_id: PacketId, reason_codes: Vec<ReasonCode>) -> Packet {
    Packet::SubAck(SubAck {
        packet_id,
        properties: Properties::default(),
        reason_codes,
    })
}

/// UNSUBACK with the per-filter codes.
pub fn unsuback(packet_id: PacketId, reason_codes: Vec<ReasonCode>) -> Packet {
    Packet::UnsubAck(UnsubAck {
        packet_id,
        properties: Properties::default(),
        reason_codes,
    })
}

impl Session {
    /// Handles one packet from the attached client, received at `now` (which also resets the
    /// keep-alive). See the module docs for what each packet gives.
    pub fn handle(&mut self, packet: Packet, now: Instant) -> Handled {
        self.touch(now);
        match packet {
            Packet::Publish(p) => self.on_publish(p, now),
            Packet::PubAck(a) => {
                let r = self.handle_puback(a.packet_id, now);
                known(r, "puback", a.packet_id)
            }
            Packet::PubRec(a) => {
                let r = self.handle_pubrec(a.packet_id, a.reason_code, now);
                known(r, "pubrec", a.packet_id)
            }
            Packet::PubComp(a) => {
                let r = self.handle_pubcomp(a.packet_id, now);
                known(r, "pubcomp", a.packet_id)
            }
            Packet::PubRel(a) => {
                self.handle_pubrel(a.packet_id);
                Handled::Done
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                self.outbox
                    .push(Outbound::Packet(Box::new(Packet::PingResp)));
                Handled::Done
            }
            Packet::Disconnect(d) => Handled::Close(self.on_disconnect(&d)),
            // The decoder rejects a second CONNECT; AUTH after CONNECT needs an auth method we
            // never accepted; the rest only flow server to client.
            Packet::Auth(_)
            | Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => Handled::Close(
                Close::error(ReasonCode::PROTOCOL_ERROR, "protocol_error")
                    .tallied(Tally::Malformed),
            ),
        }
    }

    /// Puts a packet the node decided (SUBACK, UNSUBACK) in the outbox, after everything
    /// already there and before anything delivered later.
    pub fn reply(&mut self, packet: Packet) {
        self.outbox.push(Outbound::Packet(Box::new(packet)));
    }

    /// The attached connection's protocol (v3.1.1 rules when none is attached).
    pub(super) fn protocol(&self) -> Protocol {
        self.client.map_or(Protocol::V311, |c| c.protocol)
    }

    fn on_publish(&mut self, mut p: Publish, now: Instant) -> Handled {
        let policy = &self.limits.policy;
        if p.qos > policy.max_qos {
            // [MQTT-3.2.2-11]
            return Handled::Close(Close::error(
                ReasonCode::QOS_NOT_SUPPORTED,
                "qos_not_supported",
            ));
        }
        if p.retain && !policy.retain_available {
            // [MQTT-3.3.1-19]
            return Handled::Close(
                Close::error(ReasonCode::RETAIN_NOT_SUPPORTED, "retain_not_supported")
                    .tallied(Tally::RetainDropped),
            );
        }
        let alias = p.properties.topic_alias.take();
        let topic: TopicName = match self.resolve_topic(&p.topic, alias) {
            Ok(t) => t,
            Err(r) => return Handled::Close(Close::error(r, "bad_topic")),
        };
        let protocol = self.protocol();
        let v5 = protocol == Protocol::V5;
        let ack = match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(packet_id)) => Some(PendingAck {
                kind: AckKind::PubAck,
                packet_id,
                protocol,
            }),
            (QoS::ExactlyOnce, Some(packet_id)) => Some(PendingAck {
                kind: AckKind::PubRec,
                packet_id,
                protocol,
            }),
            _ => None,
        };
        if topic.is_system() {
            // Clients may not publish into the `$` namespace; the message is refused, counted.
            let reason = if v5 {
                ReasonCode::TOPIC_NAME_INVALID
            } else {
                // v3.1.1 has no way to refuse: complete the handshake, route nothing.
                if let Some(a) = ack.filter(|a| a.kind == AckKind::PubRec) {
                    let _ = self.inbound_qos2(a.packet_id);
                }
                ReasonCode::SUCCESS
            };
            return Handled::Dropped {
                reason: DropReason::SystemTopic,
                ack: ack.map(|ack| ReadyAck { ack, reason }),
            };
        }
        if let Some(a) = ack.filter(|a| a.kind == AckKind::PubRec) {
            match self.inbound_qos2(a.packet_id) {
                Err(r) => return Handled::Close(Close::error(r, "receive_maximum")),
                Ok(false) => {
                    return Handled::Ack(ReadyAck {
                        ack: a,
                        reason: ReasonCode::SUCCESS,
                    })
                }
                Ok(true) => {}
            }
        }
        // One copy at ingress: the payload then stops pinning the connection's read buffer and
        // is shared, never copied, by every delivery.
        p.payload = Bytes::copy_from_slice(&p.payload);
        let publisher = Some(self.client_id.clone());
        let msg = Arc::new(Message::from_publish(p, topic, publisher, now));
        Handled::Publish(Inbound { msg, ack })
    }

    fn on_subscribe(&self, s: Subscribe) -> Handled {
        let policy = &self.limits.policy;
        let identifier = s.properties.subscription_identifiers.first().copied();
        if identifier.is_some() && !policy.subscription_identifiers {
            return Handled::Close(Close::error(
                ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription_identifiers",
            ));
        }
        let mut entries = Vec::with_capacity(s.filters.len());
        // Filters this SUBSCRIBE adds (not yet in the session), for the per-session cap. A set:
        // one SUBSCRIBE may carry tens of thousands of filters.
        let mut added: HashSet<TopicFilter> = HashSet::new();
        for (raw, mut options) in s.filters {
            let filter = match TopicFilter::new(&raw, &self.limits.topic) {
                Ok(f) => f,
                Err(e) => {
                    entries.push(Err(e.reason_code()));
                    continue;
                }
            };
            if filter.share_group().is_some() && !policy.shared_subscriptions {
                entries.push(Err(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED));
                continue;
            }
            if filter.has_wildcards() && !policy.wildcard_subscriptions {
                entries.push(Err(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED));
                continue;
            }
            if !self.subscriptions.contains_key(&filter) && !added.contains(&filter) {
                if self.subscriptions.len() + added.len() >= policy.max_subscriptions {
                    entries.push(Err(ReasonCode::QUOTA_EXCEEDED));
                    continue;
                }
                added.insert(filter.clone());
            }
            options.qos = options.qos.min(policy.max_qos);
            if self.client.is_some_and(|c| c.variant.bridge) {
                // A bridge's 3.1.1 SUBSCRIBE cannot say it; its CONNECT did. No Local is not
                // for shared subscriptions ([MQTT-3.8.3-4]).
                options.no_local = filter.share_group().is_none();
                options.retain_as_published = true;
            }
            entries.push(Ok((
                filter,
                Subscription {
                    options,
                    identifier,
                },
            )));
        }
        Handled::Subscribe(SubscribeRequest {
            packet_id: s.packet_id,
            identifier,
            entries,
        })
    }

    fn on_unsubscribe(&self, u: Unsubscribe) -> Handled {
        let mut filters = Vec::with_capacity(u.filters.len());
        for raw in u.filters {
            filters.push(TopicFilter::new(&raw, &self.limits.topic).map_err(|e| e.reason_code()));
        }
        Handled::Unsubscribe {
            packet_id: u.packet_id,
            filters,
        }
    }

    fn on_disconnect(&mut self, d: &Disconnect) -> Close {
        if let Some(new) = d.properties.session_expiry_interval {
            if self.expiry_interval == 0 && new != 0 {
                // [MQTT-3.14.2-2]
                return Close::error(ReasonCode::PROTOCOL_ERROR, "protocol_error");
            }
            self.expiry_interval = new.min(self.limits.policy.max_session_expiry_interval);
        }
        Close {
            reason: None,
            why: "client_disconnect",
            // [MQTT-3.14.4-3]: a normal disconnect discards the will; 0x04 asks for it.
            will: d.reason_code == ReasonCode::DISCONNECT_WITH_WILL,
            detail: None,
            tally: None,
        }
    }
    /// A QoS 2 PUBLISH from the client. `Ok(true)`: new, route it; `Ok(false)`: a repeat of one
    /// already received (DUP redelivery), do not route again. Either way the caller sends PUBREC.
    /// `Err(0x93)` when the client exceeds our Receive Maximum ([MQTT-3.3.4-9]).
    pub fn inbound_qos2(&mut self, id: PacketId) -> Result<bool, ReasonCode> {
        if self.inbound_qos2.contains(id.get()) {
            return Ok(false);
        }
        if self.inbound_qos2.len() >= usize::from(self.limits.receive_maximum) {
            return Err(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
        }
        self.inbound_qos2.insert(id.get());
        Ok(true)
    }

    /// The node sent `ack` to the client. A PUBREC with a failure reason (0x80 or above, e.g.
    /// the retained copy could not be stored) ends the QoS 2 flow: the packet id is released,
    /// and the next PUBLISH with it is a new message, routed ([MQTT-4.3.3-9]). Without this
    /// the id would stay registered until a PUBREL that never comes, and every later message
    /// with that id would be taken for a repeat and never routed. Other acknowledgements
    /// change nothing (see [`ReadyAck::ends_qos2_flow`]).
    pub fn ack_sent(&mut self, ack: &ReadyAck) {
        if ack.ends_qos2_flow() {
            self.not_taken(ack);
        }
    }

    /// The node did not take the PUBLISH `ack` belongs to and will not acknowledge it (v3.1.1
    /// has no failure code: the connection closes instead). A QoS 2 id is released, so the
    /// client's resend after reconnecting is a new message, routed, not taken for a repeat.
    pub fn not_taken(&mut self, ack: &ReadyAck) {
        if ack.ack.kind == AckKind::PubRec {
            self.inbound_qos2.remove(ack.ack.packet_id.get());
        }
    }

    /// PUBREL from the client: release the id and answer PUBCOMP (0x92 in v5 if unknown).
    pub fn handle_pubrel(&mut self, id: PacketId) {
        let known = self.inbound_qos2.remove(id.get());
        let reason = if !known && self.client.is_some_and(|c| c.protocol == Protocol::V5) {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        } else {
            ReasonCode::SUCCESS
        };
        self.outbox.push(Outbound::PubComp(id, reason));
    }

    /// Resolves the topic of an inbound PUBLISH, learning or applying a topic alias
    /// (MQTT 5.0 §3.3.2.3.4). Errors are the reason code to disconnect with.
    pub fn resolve_topic(
        &mut self,
        topic: &str,
        alias: Option<u16>,
    ) -> Result<TopicName, ReasonCode> {
        match alias {
            None => TopicName::new(topic, &self.limits.topic).map_err(|e| e.reason_code()),
            Some(a) => {
                if a == 0 || a > self.limits.topic_alias_maximum {
                    // [MQTT-3.3.2-8], [MQTT-3.3.2-9]
                    return Err(ReasonCode::TOPIC_ALIAS_INVALID);
                }
                if topic.is_empty() {
                    self.aliases
                        .as_ref()
                        .and_then(|x| x.inbound.get(&a))
                        .cloned()
                        .ok_or(ReasonCode::PROTOCOL_ERROR)
                } else {
                    let name =
                        TopicName::new(topic, &self.limits.topic).map_err(|e| e.reason_code())?;
                    self.aliases
                        .get_or_insert_with(Box::default)
                        .inbound
                        .insert(a, name.clone());
                    Ok(name)
                }
            }
        }
    }
}

/// What an acknowledgement from the client comes to: done; an id with nothing in flight,
/// reported and ignored; or, for an id in flight at another stage, a protocol error
/// ([MQTT-4.8.0-1], [MQTT-4.13.1-1]).
fn known(r: Result<(), ReasonCode>, kind: &'static str, packet_id: PacketId) -> Handled {
    match r {
        Ok(()) => Handled::Done,
        Err(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND) => {
            Handled::UnknownPacketId { kind, packet_id }
        }
        Err(reason) => {
            Handled::Close(Close::error(reason, "protocol_error").tallied(Tally::Malformed))
        }
    }
}
