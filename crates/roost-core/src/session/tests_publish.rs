//! `prepare_publish` tests: one outbound delivery in, the exact PUBLISH (or `None`) out, with
//! the topic alias and Maximum Packet Size rules ([MQTT-3.1.2-24], [MQTT-3.1.2-25]).

#![allow(clippy::unwrap_used)]

use super::test_support::*;
use super::*;
use bytes::Bytes;
use roost_codec::{encoded_len, Publish};
use std::time::Duration;

fn client(protocol: Protocol, maximum_packet_size: Option<u32>, aliases: u16) -> ClientParams {
    ClientParams {
        variant: Default::default(),
        protocol,
        receive_maximum: u16::MAX,
        maximum_packet_size,
        topic_alias_maximum: aliases,
    }
}

fn session(c: ClientParams, now: Instant) -> Session {
    let mut s = Session::new(Arc::from("c1"), SessionLimits::default());
    s.connect(c, now);
    s
}

fn out(m: &Arc<Message>, id: Option<u16>, ids: Vec<u32>) -> OutPublish {
    OutPublish {
        msg: m.clone(),
        qos: if id.is_some() {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        },
        packet_id: id.map(pid),
        dup: false,
        retain: false,
        subscription_ids: ids,
    }
}

/// The PUBLISH for `m` with no properties.
fn plain(m: &Arc<Message>, id: Option<u16>) -> Publish {
    let o = out(m, id, vec![]);
    Publish {
        dup: false,
        qos: o.qos,
        retain: false,
        topic: m.topic.as_str().into(),
        packet_id: o.packet_id,
        properties: Properties::default(),
        payload: m.payload.clone(),
    }
}

#[test]
fn v5_carries_properties_remaining_expiry_and_subscription_ids() {
    let t0 = Instant::now();
    let mut s = session(client(Protocol::V5, None, 0), t0);
    let mut m = (*msg("a/b", "x")).clone();
    m.expires_at = Some(t0 + Duration::from_millis(10_500));
    m.properties.user_properties = vec![("k".into(), "v".into())];
    let m = Arc::new(m);
    let mut want = plain(&m, None);
    want.properties = Properties {
        message_expiry_interval: Some(10),
        user_properties: vec![("k".into(), "v".into())],
        subscription_identifiers: vec![3, 9],
        ..Properties::default()
    };
    assert_eq!(
        s.prepare_publish(out(&m, None, vec![3, 9]), secs(t0, 1)),
        Some(want)
    );
}

#[test]
fn v311_has_no_properties() {
    let t0 = Instant::now();
    let mut s = session(ClientParams::v311(), t0);
    let mut m = (*msg("a/b", "x")).clone();
    m.expires_at = Some(secs(t0, 60));
    let m = Arc::new(m);
    assert_eq!(
        s.prepare_publish(out(&m, None, vec![3]), t0),
        Some(plain(&m, None))
    );
}

#[test]
fn alias_defined_once_then_replaces_the_topic() {
    let t0 = Instant::now();
    let mut s = session(client(Protocol::V5, None, 1), t0);
    let (a, b) = (msg("a/b", "x"), msg("c", "y"));
    let with_alias = |m: &Arc<Message>, topic: &str| {
        let mut p = plain(m, None);
        p.topic = topic.into();
        p.properties.topic_alias = Some(1);
        p
    };
    assert_eq!(
        s.prepare_publish(out(&a, None, vec![]), t0),
        Some(with_alias(&a, "a/b"))
    );
    assert_eq!(
        s.prepare_publish(out(&a, None, vec![]), t0),
        Some(with_alias(&a, ""))
    );
    // The client's one alias is taken: other topics go out in full.
    assert_eq!(
        s.prepare_publish(out(&b, None, vec![]), t0),
        Some(plain(&b, None))
    );
}

#[test]
fn new_alias_that_would_not_fit_is_not_defined() {
    let t0 = Instant::now();
    let m = msg("a/b", "x");
    let exact =
        u32::try_from(encoded_len(&Packet::Publish(plain(&m, None)), Protocol::V5)).unwrap();
    let mut s = session(client(Protocol::V5, Some(exact), 4), t0);
    assert_eq!(
        s.prepare_publish(out(&m, None, vec![]), t0),
        Some(plain(&m, None))
    );
    // Not defined: still a first use.
    assert_eq!(s.peek_outbound_alias(&m.topic), Some((1, true)));
}

#[test]
fn too_large_is_abandoned_and_frees_its_slot() {
    let t0 = Instant::now();
    let c = ClientParams {
        receive_maximum: 1,
        ..client(Protocol::V5, Some(20), 0)
    };
    let mut s = session(c, t0);
    let big = Arc::new(Message {
        payload: Bytes::from(vec![0u8; 64]),
        ..(*msg("a", "")).clone()
    });
    let small = msg("a", "s");
    s.deliver(big.clone(), QoS::AtLeastOnce, false, vec![], None, t0);
    s.deliver(small.clone(), QoS::AtLeastOnce, false, vec![], None, t0);
    let [Outbound::Publish(first)] = &take(&mut s)[..] else {
        panic!("one publish expected");
    };
    assert_eq!(s.prepare_publish(first.clone(), t0), None);
    assert_eq!(
        s.take_drops(),
        Drops {
            too_large: 1,
            ..Drops::default()
        }
    );
    assert_eq!(
        take(&mut s),
        vec![Outbound::Publish(OutPublish {
            qos: QoS::AtLeastOnce,
            ..out(&small, Some(2), vec![])
        })]
    );
}
