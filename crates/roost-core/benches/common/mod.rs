//! Set-up the roost-core benches share: the subscription they all subscribe with, topic names
//! and filters, a connected v5 session, a message, and Criterion's short run.
//!
//! Included with `mod common;` by each bench (cargo builds no bench target from a
//! subdirectory). Not every bench uses every item, hence the `dead_code` allowance below.

#![allow(dead_code)]

use bytes::Bytes;
use criterion::Criterion;
use roost_codec::{ConnectVariant, Protocol, QoS, SubscriptionOptions};
use roost_core::index::Subscription;
use roost_core::message::{next_id, Message, PassThrough};
use roost_core::session::{ClientParams, Session, SessionLimits};
use roost_core::topic::{TopicFilter, TopicLimits, TopicName};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Payload bytes of every message and client PUBLISH the benches build.
pub(crate) const PAYLOAD: usize = 256;

/// A QoS 1 subscription with no identifier, as every bench subscribes.
pub(crate) fn subscription() -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        },
        identifier: None,
    }
}

/// `s` as a topic name under the default limits.
pub(crate) fn topic(s: &str) -> TopicName {
    TopicName::new(s, &TopicLimits::default()).expect("the bench's topics are valid")
}

/// `s` as a topic filter under the default limits.
pub(crate) fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s, &TopicLimits::default()).expect("the bench's filters are valid")
}

/// A v5 session for `client_id` with default [`SessionLimits`] (a window of 32), connected at
/// `now` with Receive Maximum 65,535 and no topic aliases.
pub(crate) fn connected(client_id: &str, now: Instant) -> Session {
    let mut s = Session::new(Arc::from(client_id), SessionLimits::default());
    s.connect(
        ClientParams {
            protocol: Protocol::V5,
            receive_maximum: u16::MAX,
            maximum_packet_size: None,
            topic_alias_maximum: 0,
            variant: ConnectVariant::default(),
        },
        now,
    );
    s
}

/// A message on `topic` at `qos` from `publisher`, with a [`PAYLOAD`]-byte payload.
pub(crate) fn message(topic_name: &str, qos: QoS, publisher: &str) -> Arc<Message> {
    Arc::new(Message {
        topic: topic(topic_name),
        payload: Bytes::from(vec![0xA5; PAYLOAD]),
        qos,
        retain: false,
        properties: PassThrough::default(),
        expires_at: None,
        publisher: Some(Arc::from(publisher)),
        id: next_id(),
        entered: None,
    })
}

/// Short runs (0.5 s warm-up, 2 s measured), so the whole `cargo bench -p roost-core` stays
/// within minutes on 2 cores.
pub(crate) fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}
