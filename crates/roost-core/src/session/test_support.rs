//! Helpers shared by every session test file: sessions attached through a [`Negotiated`] built
//! from a CONNECT (for `handle`, timers and `prepare_publish`), sessions connected directly with
//! [`ClientParams`] (for the state machine tests), exact messages and the exact [`Outbound`]
//! entries the tests compare whole outboxes against. Time is always `t0 + n` from one `t0`
//! taken at the top of each test.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::connect::{negotiate, Negotiated, ServerPolicy};
use crate::message::PassThrough;
use crate::topic::TopicLimits;
use bytes::Bytes;
use roost_codec::{Connect, LastWill};
use std::time::Duration;

pub(super) fn name(s: &str) -> TopicName {
    TopicName::new(s, &TopicLimits::default()).unwrap()
}

pub(super) fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s, &TopicLimits::default()).unwrap()
}

pub(super) fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

pub(super) fn secs(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_secs(n)
}

/// A CONNECT from "c1", clean, keep-alive 10 s, with the given Session Expiry Interval (v5).
pub(super) fn connect_packet(protocol: Protocol, clean: bool, expiry: u32) -> Connect {
    Connect {
        variant: Default::default(),
        protocol,
        clean_start: clean,
        keep_alive: 10,
        client_id: "c1".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval: (protocol == Protocol::V5).then_some(expiry),
            ..Properties::default()
        },
    }
}

pub(super) fn negotiated(c: &Connect, policy: &ServerPolicy) -> Negotiated {
    negotiate(c, policy, || "assigned".into()).unwrap()
}

/// A session under `policy` (its limits from [`SessionLimits::new`]), attached at `now`.
pub(super) fn attached_with(policy: ServerPolicy, c: &Connect, now: Instant) -> Session {
    let n = negotiated(c, &policy);
    let mut s = Session::new(Arc::from("c1"), SessionLimits::new(Arc::new(policy)));
    assert_eq!(
        s.attach(&n, now),
        if c.clean_start {
            Some(Ended::default())
        } else {
            None
        }
    );
    s
}

/// Default policy, clean v5 or v3.1.1 session with expiry 0, attached at `now`.
pub(super) fn attached(protocol: Protocol, now: Instant) -> Session {
    attached_with(
        ServerPolicy::default(),
        &connect_packet(protocol, true, 0),
        now,
    )
}

pub(super) fn take(s: &mut Session) -> Vec<Outbound> {
    let mut out = std::collections::VecDeque::new();
    s.take_outbox(&mut out);
    out.into()
}

pub(super) fn will(topic: &str, delay: Option<u32>) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: delay,
            ..Properties::default()
        },
    }
}

/// A message on `topic` with `payload`, never expiring. Its [`Message::size`] is
/// `topic.len() + payload.len()`.
pub(super) fn msg(topic: &str, payload: &str) -> Arc<Message> {
    Arc::new(Message {
        topic: name(topic),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: PassThrough::default(),
        expires_at: None,
        id: crate::message::next_id(),
        publisher: None,
        entered: None,
    })
}

// Fixtures of the state machine tests (qos, queue, inbound, takeover, shared, proptest), which
// drive `Session` directly through `connect` / `deliver` / `handle_*` instead of `handle`.

pub(super) fn msg_expiring(topic: &str, payload: &str, expires_at: Instant) -> Arc<Message> {
    let mut m = (*msg(topic, payload)).clone();
    m.expires_at = Some(expires_at);
    Arc::new(m)
}

pub(super) fn v5(receive_maximum: u16) -> ClientParams {
    ClientParams {
        variant: Default::default(),
        protocol: Protocol::V5,
        receive_maximum,
        maximum_packet_size: None,
        topic_alias_maximum: 0,
    }
}

pub(super) fn v5_aliases(topic_alias_maximum: u16) -> ClientParams {
    ClientParams {
        topic_alias_maximum,
        ..v5(u16::MAX)
    }
}

pub(super) fn session(limits: SessionLimits) -> Session {
    Session::new(Arc::from("client-1"), limits)
}

/// A session with default limits, connected as v5 with the given Receive Maximum.
pub(super) fn connected(receive_maximum: u16, now: Instant) -> Session {
    let mut s = session(SessionLimits::default());
    s.connect(v5(receive_maximum), now);
    s
}

/// Delivers without retain, subscription ids or share group.
pub(super) fn deliver(s: &mut Session, m: &Arc<Message>, qos: QoS, now: Instant) -> Delivered {
    s.deliver(m.clone(), qos, false, Vec::new(), None, now)
}

pub(super) fn deliver_shared(
    s: &mut Session,
    m: &Arc<Message>,
    qos: QoS,
    share: &str,
    now: Instant,
) {
    s.deliver(m.clone(), qos, false, Vec::new(), Some(filter(share)), now);
}

/// The expected PUBLISH: no retain, no subscription ids.
pub(super) fn publish(m: &Arc<Message>, qos: QoS, id: Option<u16>, dup: bool) -> Outbound {
    Outbound::Publish(OutPublish {
        msg: m.clone(),
        qos,
        packet_id: id.map(pid),
        dup,
        retain: false,
        subscription_ids: Vec::new(),
    })
}

pub(super) fn q1(m: &Arc<Message>, id: u16) -> Outbound {
    publish(m, QoS::AtLeastOnce, Some(id), false)
}

pub(super) fn q2(m: &Arc<Message>, id: u16) -> Outbound {
    publish(m, QoS::ExactlyOnce, Some(id), false)
}

pub(super) fn pubrel(id: u16, reason: ReasonCode) -> Outbound {
    Outbound::PubRel(pid(id), reason)
}

pub(super) fn pubcomp(id: u16, reason: ReasonCode) -> Outbound {
    Outbound::PubComp(pid(id), reason)
}

pub(super) fn no_drops() -> Drops {
    Drops::default()
}

pub(super) fn inflight_ids(s: &Session) -> Vec<u16> {
    s.inflight.iter().map(|f| f.id.get()).collect()
}

/// (filter, payload) of each orphan, in order.
pub(super) fn orphans(v: &[Orphan]) -> Vec<(String, Bytes)> {
    v.iter()
        .map(|o| (o.filter.as_str().to_owned(), o.msg.payload.clone()))
        .collect()
}
