//! An application message as it travels inside the broker.
//!
//! A PUBLISH is decoded once into a [`Message`] and then shared as `Arc<Message>` by every
//! subscriber it is routed to: the payload is [`Bytes`] and is never copied on fan-out. The
//! per-subscriber parts of a delivery (QoS, packet id, retain flag, subscription identifiers,
//! topic alias) live in the session, not here.
//!
//! A message also remembers where and when it entered this node ([`Entered`]): the `now` the
//! driver read for the PUBLISH it was decoded from, or the moment a peer's Forward batch
//! arrived. roost-node measures each delivery's latency from it
//! (`roost_delivery_latency_seconds`) with no clock reading of its own per message.

use crate::client_id::ClientId;
use crate::topic::{TopicLimits, TopicName};
use bytes::Bytes;
use roost_codec::{LastWill, Properties, Publish, QoS};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The v5 properties a broker passes through unchanged from publisher to subscribers
/// (MQTT 5.0 §3.3.2.3: [MQTT-3.3.2-4], [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17],
/// [MQTT-3.3.2-18], [MQTT-3.3.2-20]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PassThrough {
    /// Payload Format Indicator.
    pub payload_format_indicator: Option<u8>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<String>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User Properties, order preserved.
    pub user_properties: Vec<(String, String)>,
}

impl PassThrough {
    /// Takes the pass-through properties out of a PUBLISH's (or will's) properties.
    pub fn from_properties(p: &mut Properties) -> PassThrough {
        PassThrough {
            payload_format_indicator: p.payload_format_indicator.take(),
            content_type: p.content_type.take(),
            response_topic: p.response_topic.take(),
            correlation_data: p.correlation_data.take(),
            user_properties: std::mem::take(&mut p.user_properties),
        }
    }

    /// Writes the pass-through properties into outgoing PUBLISH properties.
    pub fn write_to(&self, p: &mut Properties) {
        p.payload_format_indicator = self.payload_format_indicator;
        p.content_type.clone_from(&self.content_type);
        p.response_topic.clone_from(&self.response_topic);
        p.correlation_data.clone_from(&self.correlation_data);
        p.user_properties.clone_from(&self.user_properties);
    }

    /// Bytes these properties take on the wire (to size queues by bytes).
    pub fn approx_len(&self) -> usize {
        let mut n = 0;
        n += self.content_type.as_ref().map_or(0, |s| s.len() + 3);
        n += self.response_topic.as_ref().map_or(0, |s| s.len() + 3);
        n += self.correlation_data.as_ref().map_or(0, |s| s.len() + 3);
        for (k, v) in &self.user_properties {
            n += k.len() + v.len() + 5;
        }
        n
    }
}

/// Where a message entered this node, and when: the start of its delivery latency
/// (`roost_delivery_latency_seconds{path}` in roost-node, docs/observability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entered {
    /// Decoded from a client's PUBLISH on one of this node's connections (`path="local"`).
    Local(Instant),
    /// Received from a peer in a Forward batch (`path="forwarded"`).
    Forwarded(Instant),
}

impl Entered {
    /// When it entered.
    pub fn at(self) -> Instant {
        match self {
            Entered::Local(t) | Entered::Forwarded(t) => t,
        }
    }
}

/// An application message, shared by all its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to (after topic-alias resolution).
    pub topic: TopicName,
    /// The payload, shared.
    pub payload: Bytes,
    /// The QoS it was published with; each delivery uses min(this, subscription QoS).
    pub qos: QoS,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// Properties forwarded unchanged.
    pub properties: PassThrough,
    /// When the Message Expiry Interval runs out; `None` = never. An expired message is not
    /// delivered ([MQTT-3.3.2-5]); a delivered one carries the remaining interval ([MQTT-3.3.2-6]).
    pub expires_at: Option<Instant>,
    /// The publishing client's id, for No Local and for logs; `None` for broker-made messages.
    pub publisher: Option<Arc<str>>,
    /// Names this message across the cluster (see [`next_id`]); 0 = unnamed (broker-made,
    /// or from a peer that does not send one). A session that just moved between nodes uses it
    /// to take a message that reaches it twice only once (docs/rfcs/0006).
    pub id: u64,
    /// Where and when it entered this node, for its delivery latency. `None` for what is not
    /// a live publish: broker-made messages and wills, retained messages sent on SUBSCRIBE,
    /// and the messages a session brought with it from another node.
    pub entered: Option<Entered>,
}

/// A new message id: unique within this process (a counter), and across the cluster's nodes
/// with overwhelming probability (each process starts its counter at a random 64-bit offset:
/// two nodes' ranges of n messages overlap with probability about 2n/2^64). Never 0.
pub fn next_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        // RandomState is seeded from the OS's randomness; mixing in the time keeps two
        // processes that happen to share a seed apart.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    loop {
        let id = base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        if id != 0 {
            return id;
        }
    }
}

impl Message {
    /// Builds a message from a decoded PUBLISH whose topic has already been resolved. `now`,
    /// the time the driver read for the packet, is also when it [entered](Entered::Local).
    pub fn from_publish(
        mut publish: Publish,
        topic: TopicName,
        publisher: Option<Arc<str>>,
        now: Instant,
    ) -> Message {
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s)));
        Message {
            topic,
            properties: PassThrough::from_properties(&mut publish.properties),
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            expires_at,
            publisher,
            id: next_id(),
            entered: Some(Entered::Local(now)),
        }
    }

    /// Builds the message a will becomes when it is published, as if its client had published
    /// it (MQTT 5.0 §3.1.2.5): its Message Expiry Interval counts from `now`, its properties
    /// pass through. `None` if its topic is not valid under `limits` (checked at CONNECT
    /// already; the limits may have changed since).
    pub fn from_will(
        mut will: LastWill,
        publisher: ClientId,
        limits: &TopicLimits,
        now: Instant,
    ) -> Option<Message> {
        let topic = TopicName::new(&will.topic, limits).ok()?;
        Some(Message {
            topic,
            expires_at: will
                .properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            properties: PassThrough::from_properties(&mut will.properties),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            publisher: Some(publisher.as_arc().clone()),
            id: next_id(),
            entered: None,
        })
    }

    /// True if the message expiry interval has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        matches!(self.expires_at, Some(t) if t <= now)
    }

    /// The remaining expiry interval in whole seconds, rounded up, for the outgoing PUBLISH.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// Payload plus topic plus properties: what a queued copy of this message costs a session
    /// in its `max_queued_bytes` budget.
    pub fn size(&self) -> usize {
        self.payload.len() + self.topic.as_str().len() + self.properties.approx_len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn message_ids_are_never_zero_or_repeated() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| next_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn a_will_becomes_a_message_from_its_client() {
        let t0 = Instant::now();
        let will = LastWill {
            topic: "status/c1".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                message_expiry_interval: Some(60),
                will_delay_interval: Some(5),
                content_type: Some("text/plain".into()),
                ..Properties::default()
            },
        };
        let limits = TopicLimits::default();
        let got = Message::from_will(will.clone(), ClientId::from("c1"), &limits, t0).unwrap();
        assert_ne!(got.id, 0, "a will is a message of its own, with an id");
        assert_eq!(
            got,
            Message {
                topic: TopicName::new("status/c1", &limits).unwrap(),
                payload: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: PassThrough {
                    content_type: Some("text/plain".into()),
                    ..PassThrough::default()
                },
                expires_at: Some(t0 + Duration::from_secs(60)),
                publisher: Some("c1".into()),
                id: got.id,
                entered: None,
            }
        );
        let short = TopicLimits {
            max_levels: 1,
            ..TopicLimits::default()
        };
        assert_eq!(
            Message::from_will(will, ClientId::from("c1"), &short, t0),
            None
        );
    }
}
