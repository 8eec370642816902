//! Conversions between the wire types of `roost.cluster.v1` and Roost's own types. prost types
//! stop here: nothing outside roost-cluster sees them (house style).
//!
//! Decoding is defensive: a peer is trusted to run the same version, but a bad field still gives
//! an error (and the message is dropped and counted), never a panic.

use crate::metrics::ClusterStats;
use bytes::Bytes;
use roost_codec::{LastWill, PacketId, Properties, QoS, SubscriptionOptions};
use roost_core::index::Subscription;
use roost_core::message::{Message, PassThrough};
use roost_core::session::{ImageMessage, SessionImage};
use roost_core::topic::{TopicFilter, TopicLimits, TopicName};
use roost_core::ClientId;
use roost_proto::v1 as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a peer sent that cannot be turned into our types.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {field} from peer: {reason}")]
pub struct WireError {
    /// Which field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl ToString) -> WireError {
    WireError {
        field,
        reason: reason.to_string(),
    }
}

/// Topic limits for data from peers: they validated it against their own limits already.
fn limits() -> TopicLimits {
    TopicLimits {
        max_levels: usize::MAX,
        max_length: 65_535,
    }
}

fn qos(v: u32) -> Result<QoS, WireError> {
    u8::try_from(v)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| bad("qos", v))
}

fn user_properties_to_wire(props: &[(String, String)]) -> Vec<pb::UserProperty> {
    props
        .iter()
        .map(|(k, v)| pb::UserProperty {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

fn user_properties_from_wire(props: Vec<pb::UserProperty>) -> Vec<(String, String)> {
    props.into_iter().map(|p| (p.key, p.value)).collect()
}

fn payload_format_from_wire(v: Option<u32>) -> Result<Option<u8>, WireError> {
    v.map(|v| u8::try_from(v).map_err(|_| bad("payload_format_indicator", v)))
        .transpose()
}

/// Our message to the wire; the expiry becomes the time remaining now.
pub fn message_to_wire(m: &Message, now: Instant) -> pb::Message {
    pb::Message {
        topic: m.topic.as_str().to_owned(),
        payload: m.payload.to_vec(),
        qos: m.qos as u32,
        retain: m.retain,
        payload_format_indicator: m.properties.payload_format_indicator.map(u32::from),
        content_type: m.properties.content_type.clone(),
        response_topic: m.properties.response_topic.clone(),
        correlation_data: m.properties.correlation_data.as_ref().map(|b| b.to_vec()),
        user_properties: user_properties_to_wire(&m.properties.user_properties),
        expiry_ms: m.expires_at.map(|t| {
            u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        }),
        publisher: m.publisher.as_deref().unwrap_or_default().to_owned(),
        id: m.id,
    }
}

/// A wire message to ours. It has not [entered](Message::entered) this node yet: the Forward
/// receiver says when it did; a session's messages brought from another node never do.
pub fn message_from_wire(m: pb::Message, now: Instant) -> Result<Message, WireError> {
    let topic = TopicName::new(&m.topic, &limits()).map_err(|e| bad("topic", e))?;
    let payload_format_indicator = payload_format_from_wire(m.payload_format_indicator)?;
    Ok(Message {
        topic,
        payload: Bytes::from(m.payload),
        qos: qos(m.qos)?,
        retain: m.retain,
        properties: PassThrough {
            payload_format_indicator,
            content_type: m.content_type,
            response_topic: m.response_topic,
            correlation_data: m.correlation_data.map(Bytes::from),
            user_properties: user_properties_from_wire(m.user_properties),
        },
        expires_at: m.expiry_ms.map(|ms| now + Duration::from_millis(ms)),
        publisher: (!m.publisher.is_empty()).then(|| Arc::from(m.publisher.as_str())),
        id: m.id,
        entered: None,
    })
}

/// The shared-subscription filters a forwarded message is for, to the wire.
pub fn shared_filters_to_wire(filters: &[TopicFilter]) -> Vec<String> {
    filters.iter().map(|f| f.as_str().to_owned()).collect()
}

/// One shared-subscription filter from a peer: it must parse and be a `$share/…` filter.
pub fn shared_filter_from_wire(f: &str) -> Result<TopicFilter, WireError> {
    let filter = TopicFilter::new(f, &limits()).map_err(|e| bad("shared_filters", e))?;
    if filter.share_group().is_none() {
        return Err(bad(
            "shared_filters",
            format!("{f:?} is not a $share filter"),
        ));
    }
    Ok(filter)
}

/// A forwarded message's shared filters from a peer. One that does not parse is left out,
/// counted and logged: the message still reaches the other groups and direct subscribers.
pub(crate) fn shared_filters_from_wire(
    filters: Vec<String>,
    stats: &ClusterStats,
) -> Vec<TopicFilter> {
    let mut out = Vec::with_capacity(filters.len());
    for f in filters {
        match shared_filter_from_wire(&f) {
            Ok(filter) => out.push(filter),
            Err(e) => {
                stats.received_invalid_filters.increment(1);
                tracing::warn!(error = %e, "skipping an invalid shared filter from a peer");
            }
        }
    }
    out
}

/// A will to the wire (its delay travels beside it).
pub fn will_to_wire(w: &LastWill) -> pb::Will {
    let p = &w.properties;
    pb::Will {
        message: Some(pb::Message {
            topic: w.topic.clone(),
            payload: w.payload.to_vec(),
            qos: w.qos as u32,
            retain: w.retain,
            payload_format_indicator: p.payload_format_indicator.map(u32::from),
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
            user_properties: user_properties_to_wire(&p.user_properties),
            expiry_ms: p.message_expiry_interval.map(|s| u64::from(s) * 1000),
            publisher: String::new(),
            // A will gets its id when it is published.
            id: 0,
        }),
        delay_secs: p.will_delay_interval.unwrap_or(0),
    }
}

/// A wire will to ours.
pub fn will_from_wire(w: pb::Will) -> Result<LastWill, WireError> {
    let m = w.message.ok_or_else(|| bad("will.message", "missing"))?;
    let payload_format_indicator = payload_format_from_wire(m.payload_format_indicator)?;
    Ok(LastWill {
        topic: m.topic,
        payload: Bytes::from(m.payload),
        qos: qos(m.qos)?,
        retain: m.retain,
        properties: Properties {
            payload_format_indicator,
            content_type: m.content_type,
            response_topic: m.response_topic,
            correlation_data: m.correlation_data.map(Bytes::from),
            user_properties: user_properties_from_wire(m.user_properties),
            message_expiry_interval: m
                .expiry_ms
                .map(|ms| u32::try_from(ms / 1000).unwrap_or(u32::MAX)),
            will_delay_interval: (w.delay_secs > 0).then_some(w.delay_secs),
            ..Properties::default()
        },
    })
}

/// A message for one session that moved from the sending node to the receiving one while it
/// was on its way (docs/rfcs/0006): what the subscription that matched it on the sender
/// granted, and which session gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressed {
    /// The client whose session gets it.
    pub client_id: ClientId,
    /// The generation of that session the receiver claimed: a receiver whose copy moved on
    /// since passes it on again, to the newer one.
    pub generation: u64,
    /// Delivery QoS (min of published and granted).
    pub qos: QoS,
    /// RETAIN as the subscriber gets it.
    pub retain: bool,
    /// Identifiers of the matching subscriptions (v5).
    pub subscription_ids: Vec<u32>,
    /// The shared subscription it came through, if any.
    pub shared: Option<TopicFilter>,
}

/// An addressed delivery to the wire.
pub fn addressed_to_wire(a: &Addressed) -> pb::Addressed {
    pb::Addressed {
        client_id: a.client_id.to_string(),
        generation: a.generation,
        qos: a.qos as u32,
        retain: a.retain,
        subscription_ids: a.subscription_ids.clone(),
        shared_filter: a.shared.as_ref().map(|f| f.as_str().to_owned()),
    }
}

/// An addressed delivery from a peer.
pub fn addressed_from_wire(a: pb::Addressed) -> Result<Addressed, WireError> {
    if a.client_id.is_empty() {
        return Err(bad("to.client_id", "empty"));
    }
    let shared = match a.shared_filter {
        None => None,
        Some(f) => Some(shared_filter_from_wire(&f)?),
    };
    Ok(Addressed {
        client_id: ClientId::from(a.client_id),
        generation: a.generation,
        qos: qos(a.qos)?,
        retain: a.retain,
        subscription_ids: a.subscription_ids,
        shared,
    })
}

/// A session handed from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionTransfer {
    /// Subscriptions, in-flight and queued messages, inbound QoS 2 ids.
    pub image: SessionImage,
    /// A will waiting for its delay when the session moved.
    pub pending_will: Option<LastWill>,
    /// Session expiry interval in seconds.
    pub expiry_interval: u32,
}

fn image_message_to_wire(m: &ImageMessage, now: Instant) -> pb::PendingMessage {
    pb::PendingMessage {
        message: Some(message_to_wire(&m.msg, now)),
        qos: m.qos as u32,
        retain: m.retain,
        subscription_ids: m.subscription_ids.clone(),
        shared_filter: m.shared.as_ref().map(|f| f.as_str().to_owned()),
        packet_id: m.packet_id.map_or(0, |p| u32::from(p.get())),
        released: m.released,
    }
}

fn image_message_from_wire(m: pb::PendingMessage, now: Instant) -> Result<ImageMessage, WireError> {
    let msg = message_from_wire(m.message.ok_or_else(|| bad("message", "missing"))?, now)?;
    let shared = match m.shared_filter {
        None => None,
        Some(f) => Some(TopicFilter::new(&f, &limits()).map_err(|e| bad("shared_filter", e))?),
    };
    let packet_id = if m.packet_id == 0 {
        None
    } else {
        let id = u16::try_from(m.packet_id).map_err(|_| bad("packet_id", m.packet_id))?;
        Some(PacketId::new(id).ok_or_else(|| bad("packet_id", 0))?)
    };
    Ok(ImageMessage {
        msg: Arc::new(msg),
        qos: qos(m.qos)?,
        retain: m.retain,
        subscription_ids: m.subscription_ids,
        shared,
        packet_id,
        released: m.released,
    })
}

/// A session transfer to the wire.
pub fn transfer_to_wire(t: &SessionTransfer, now: Instant) -> pb::SessionState {
    pb::SessionState {
        subscriptions: t
            .image
            .subscriptions
            .iter()
            .map(|(f, s)| pb::Subscription {
                filter: f.as_str().to_owned(),
                qos: s.options.qos as u32,
                no_local: s.options.no_local,
                retain_as_published: s.options.retain_as_published,
                retain_handling: s.options.retain_handling as u32,
                identifier: s.identifier,
            })
            .collect(),
        inflight: t
            .image
            .inflight
            .iter()
            .map(|m| image_message_to_wire(m, now))
            .collect(),
        queued: t
            .image
            .queued
            .iter()
            .map(|m| image_message_to_wire(m, now))
            .collect(),
        inbound_qos2: t.image.inbound_qos2.iter().map(|&i| u32::from(i)).collect(),
        pending_will: t.pending_will.as_ref().map(will_to_wire),
        expiry_interval: t.expiry_interval,
    }
}

/// Makes a session's wire form fit in `limit` bytes (the TakeSession reply bound): leaves out
/// queued messages, newest first, then in-flight ones, newest first, until it fits. Returns
/// how many were left out (the caller counts them), or `Err` with the size when even the
/// subscriptions, QoS 2 ids and will alone are over the limit.
pub fn fit_transfer(s: &mut pb::SessionState, limit: usize) -> Result<usize, usize> {
    use prost::Message as _;
    let mut size = s.encoded_len();
    let mut dropped = 0;
    while size > limit {
        let Some(m) = s.queued.pop().or_else(|| s.inflight.pop()) else {
            return Err(size);
        };
        dropped += 1;
        // A repeated field's element costs its tag (1 byte), its length and itself.
        let len = m.encoded_len();
        size = size.saturating_sub(1 + prost::encoding::encoded_len_varint(len as u64) + len);
    }
    Ok(dropped)
}

/// A wire session transfer to ours.
pub fn transfer_from_wire(s: pb::SessionState, now: Instant) -> Result<SessionTransfer, WireError> {
    let mut subscriptions = Vec::with_capacity(s.subscriptions.len());
    for sub in s.subscriptions {
        let filter = TopicFilter::new(&sub.filter, &limits()).map_err(|e| bad("filter", e))?;
        let retain_handling = u8::try_from(sub.retain_handling)
            .ok()
            .and_then(roost_codec::RetainHandling::from_u8)
            .ok_or_else(|| bad("retain_handling", sub.retain_handling))?;
        subscriptions.push((
            filter,
            Subscription {
                options: SubscriptionOptions {
                    qos: qos(sub.qos)?,
                    no_local: sub.no_local,
                    retain_as_published: sub.retain_as_published,
                    retain_handling,
                },
                identifier: sub.identifier,
            },
        ));
    }
    let mut inflight = Vec::with_capacity(s.inflight.len());
    for m in s.inflight {
        inflight.push(image_message_from_wire(m, now)?);
    }
    let mut queued = Vec::with_capacity(s.queued.len());
    for m in s.queued {
        queued.push(image_message_from_wire(m, now)?);
    }
    let mut inbound_qos2 = Vec::with_capacity(s.inbound_qos2.len());
    for id in s.inbound_qos2 {
        inbound_qos2.push(u16::try_from(id).map_err(|_| bad("inbound_qos2", id))?);
    }
    Ok(SessionTransfer {
        image: SessionImage {
            subscriptions,
            inflight,
            queued,
            inbound_qos2,
        },
        pending_will: match s.pending_will {
            Some(w) => Some(will_from_wire(w)?),
            None => None,
        },
        expiry_interval: s.expiry_interval,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg() -> Message {
        let now = Instant::now();
        Message {
            topic: TopicName::new("a/b", &TopicLimits::default()).unwrap(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PassThrough {
                payload_format_indicator: Some(1),
                content_type: Some("text/plain".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".into(), "v".into())],
            },
            expires_at: Some(now + Duration::from_secs(30)),
            publisher: Some("pub".into()),
            id: 42,
            entered: None,
        }
    }

    #[test]
    fn addressed_round_trip_and_bad_fields() {
        let lim = TopicLimits::default();
        let a = Addressed {
            client_id: ClientId::from("dev-1"),
            generation: 7,
            qos: QoS::ExactlyOnce,
            retain: true,
            subscription_ids: vec![3, 9],
            shared: Some(TopicFilter::new("$share/g/a/#", &lim).unwrap()),
        };
        assert_eq!(addressed_from_wire(addressed_to_wire(&a)), Ok(a.clone()));
        let mut w = addressed_to_wire(&a);
        w.qos = 3;
        assert_eq!(addressed_from_wire(w).unwrap_err().field, "qos");
        let mut w = addressed_to_wire(&a);
        w.client_id.clear();
        assert_eq!(addressed_from_wire(w).unwrap_err().field, "to.client_id");
        let mut w = addressed_to_wire(&a);
        w.shared_filter = Some("a/#".into());
        assert_eq!(addressed_from_wire(w).unwrap_err().field, "shared_filters");
    }

    #[test]
    fn message_round_trip_keeps_everything_and_the_remaining_expiry() {
        let now = Instant::now();
        let m = msg();
        let back = message_from_wire(message_to_wire(&m, now), now).unwrap();
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.properties, m.properties);
        assert_eq!(back.publisher, m.publisher);
        let left = back.expires_at.unwrap().duration_since(now);
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(29));
    }

    #[test]
    fn bad_fields_are_errors_not_panics() {
        let now = Instant::now();
        let mut w = message_to_wire(&msg(), now);
        w.qos = 3;
        assert_eq!(message_from_wire(w.clone(), now).unwrap_err().field, "qos");
        w.qos = 1;
        w.topic = "a/+".into();
        assert_eq!(message_from_wire(w, now).unwrap_err().field, "topic");
    }

    #[test]
    fn shared_filters_round_trip_and_bad_ones_are_left_out() {
        let good = TopicFilter::new("$share/g/a/+", &TopicLimits::default()).unwrap();
        let wire = shared_filters_to_wire(std::slice::from_ref(&good));
        assert_eq!(wire, vec!["$share/g/a/+".to_owned()]);
        assert_eq!(shared_filter_from_wire(&wire[0]).unwrap(), good);
        for bad in ["a/#/b", "a/+", "$share/g", ""] {
            assert_eq!(
                shared_filter_from_wire(bad).unwrap_err().field,
                "shared_filters",
                "{bad:?}"
            );
        }
        let stats = ClusterStats::default();
        let mut input = wire;
        input.push("a/#/b".to_owned());
        assert_eq!(shared_filters_from_wire(input, &stats), vec![good]);
    }

    #[test]
    fn transfer_round_trip() {
        let now = Instant::now();
        let m = Arc::new(msg());
        let t = SessionTransfer {
            image: SessionImage {
                subscriptions: vec![(
                    TopicFilter::new("$share/g/a/#", &TopicLimits::default()).unwrap(),
                    Subscription {
                        options: SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: false,
                            retain_as_published: true,
                            retain_handling: roost_codec::RetainHandling::SendIfNew,
                        },
                        identifier: Some(5),
                    },
                )],
                inflight: vec![ImageMessage {
                    msg: m.clone(),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    subscription_ids: vec![5],
                    shared: None,
                    packet_id: PacketId::new(7),
                    released: true,
                }],
                queued: vec![ImageMessage {
                    msg: m,
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    subscription_ids: vec![],
                    shared: Some(
                        TopicFilter::new("$share/g/a/#", &TopicLimits::default()).unwrap(),
                    ),
                    packet_id: None,
                    released: false,
                }],
                inbound_qos2: vec![3, 9],
            },
            pending_will: Some(LastWill {
                topic: "w".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties {
                    will_delay_interval: Some(30),
                    ..Properties::default()
                },
            }),
            expiry_interval: 300,
        };
        let back = transfer_from_wire(transfer_to_wire(&t, now), now).unwrap();
        assert_eq!(back.image.subscriptions, t.image.subscriptions);
        assert_eq!(back.image.inbound_qos2, t.image.inbound_qos2);
        assert_eq!(back.image.inflight[0].packet_id, PacketId::new(7));
        assert!(back.image.inflight[0].released);
        assert_eq!(back.image.queued[0].shared, t.image.queued[0].shared);
        assert_eq!(back.pending_will, t.pending_will);
        assert_eq!(back.expiry_interval, 300);
    }

    #[test]
    fn fit_transfer_leaves_out_the_newest_queued_then_in_flight() {
        use prost::Message as _;
        let pending = |n: u8| pb::PendingMessage {
            message: Some(pb::Message {
                topic: "t".into(),
                payload: vec![n; 1000],
                ..pb::Message::default()
            }),
            qos: 1,
            ..pb::PendingMessage::default()
        };
        let session = pb::SessionState {
            subscriptions: vec![pb::Subscription {
                filter: "a/#".into(),
                qos: 1,
                ..pb::Subscription::default()
            }],
            inflight: vec![pending(1), pending(2)],
            queued: vec![pending(3), pending(4), pending(5)],
            ..pb::SessionState::default()
        };
        let full = session.encoded_len();
        let payloads = |s: &pb::SessionState| -> (Vec<u8>, Vec<u8>) {
            let first = |m: &pb::PendingMessage| m.message.as_ref().unwrap().payload[0];
            (
                s.inflight.iter().map(first).collect(),
                s.queued.iter().map(first).collect(),
            )
        };
        // Fits: untouched.
        let mut s = session.clone();
        assert_eq!(fit_transfer(&mut s, full), Ok(0));
        assert_eq!(s, session);
        // One byte over: the newest queued message goes.
        let mut s = session.clone();
        assert_eq!(fit_transfer(&mut s, full - 1), Ok(1));
        assert_eq!(payloads(&s), (vec![1, 2], vec![3, 4]));
        assert!(s.encoded_len() < full);
        // Room for about two messages: the queue, then the newest in-flight one go.
        let mut s = session.clone();
        let one = pending(1).encoded_len();
        let per = 1 + prost::encoding::encoded_len_varint(one as u64) + one;
        let limit = full - 3 * per - 1;
        assert_eq!(fit_transfer(&mut s, limit), Ok(4));
        assert_eq!(payloads(&s), (vec![1], vec![]));
        assert_eq!(s.encoded_len(), full - 4 * per);
        assert!(s.encoded_len() <= limit);
        // The subscriptions alone are over: refused with the size left.
        let mut s = session.clone();
        let bare = pb::SessionState {
            inflight: vec![],
            queued: vec![],
            ..session.clone()
        }
        .encoded_len();
        assert_eq!(fit_transfer(&mut s, bare - 1), Err(bare));
    }
}
