//! Helpers shared by the session tests of `handle`, timers and `prepare_publish`: one fixed
//! `t0`, sessions attached through a [`Negotiated`] built from a CONNECT, exact messages.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::connect::{negotiate, Negotiated, ServerPolicy};
use crate::message::PassThrough;
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
    let mut out = Vec::new();
    s.take_outbox(&mut out);
    out
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

/// A message as a broker would hold it (never expiring, no properties).
pub(super) fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
    Arc::new(Message {
        topic: name(topic),
        payload: Bytes::from_static(payload.as_bytes()),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: PassThrough::default(),
        expires_at: None,
        publisher: None,
    })
}
