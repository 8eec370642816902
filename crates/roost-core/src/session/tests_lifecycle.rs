//! One client's whole life through the sans-IO API, as the node driver will run it: negotiate,
//! attach, SUBSCRIBE, a delivery encoded with an alias, a PUBLISH routed and acknowledged,
//! keep-alive timeout, detach with a delayed will, will, expiry. Every output is compared whole.

#![allow(clippy::unwrap_used)]

use super::test_support::*;
use super::*;
use crate::connect::{negotiate, ServerPolicy};
use bytes::Bytes;
use roost_codec::{ConnAck, Connect, Publish, Subscribe, SubscriptionOptions};

#[test]
fn a_v5_client_from_connect_to_expiry() {
    let t0 = Instant::now();
    let policy = Arc::new(ServerPolicy::default());
    let connect = Connect {
        will: Some(will("status/c1", Some(5))),
        properties: Properties {
            session_expiry_interval: Some(60),
            topic_alias_maximum: Some(2),
            ..Properties::default()
        },
        ..connect_packet(Protocol::V5, false, 60)
    };

    // CONNECT -> CONNACK.
    let n = negotiate(&connect, &policy, || unreachable!()).unwrap();
    assert_eq!(
        n.connack(&policy, false),
        ConnAck {
            session_present: false,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties {
                receive_maximum: Some(32),
                maximum_packet_size: Some(1_048_576),
                topic_alias_maximum: Some(64),
                ..Properties::default()
            },
        }
    );
    let mut s = Session::new(Arc::from("c1"), SessionLimits::new(Arc::clone(&policy)));
    assert_eq!(s.attach(&n, t0), None);

    // SUBSCRIBE -> the node commits, then SUBACK through the outbox.
    let sub = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        filters: vec![(
            "a/#".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
        )],
    });
    let Handled::Subscribe(req) = s.handle(sub, t0) else {
        panic!("not a subscribe");
    };
    for (f, sub) in req.entries.iter().flatten() {
        assert!(s.add_subscription(f.clone(), sub.clone()));
    }
    s.reply(suback(req.packet_id, req.codes()));

    // A message routed to it: SUBACK first, then the PUBLISH, encoded with a new alias.
    let m = msg("a/b", "21.5");
    s.deliver(
        m.clone(),
        QoS::AtLeastOnce,
        false,
        vec![],
        None,
        secs(t0, 1),
    );
    let mut out = take(&mut s);
    let Some(Outbound::Publish(o)) = out.pop() else {
        panic!("no publish");
    };
    assert_eq!(
        out,
        vec![Outbound::Packet(Box::new(suback(
            pid(1),
            vec![ReasonCode::GRANTED_QOS_1]
        )))]
    );
    assert_eq!(
        s.prepare_publish(o, secs(t0, 1)),
        Some(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: Some(pid(1)),
            properties: Properties {
                topic_alias: Some(1),
                ..Properties::default()
            },
            payload: Bytes::from_static(b"21.5"),
        })
    );
    assert_eq!(
        s.handle(Packet::PubAck(Ack::new(pid(1))), secs(t0, 2)),
        Handled::Done
    );

    // The client publishes: routed (one subscriber matched), then acknowledged.
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "b".into(),
        packet_id: Some(pid(7)),
        properties: Properties::default(),
        payload: Bytes::from_static(b"x"),
    };
    let Handled::Publish(inbound) = s.handle(Packet::Publish(p), secs(t0, 3)) else {
        panic!("not routed");
    };
    let matched = PublishOutcome {
        matched: true,
        ..PublishOutcome::default()
    };
    let mut puback = Ack::new(pid(7));
    puback.reason_code = ReasonCode::SUCCESS;
    assert_eq!(inbound.ack.unwrap().packet(matched), Packet::PubAck(puback));

    // Silence: keep-alive 10 s runs out 15 s after the last packet.
    assert_eq!(s.poll_timeout(), Some(secs(t0, 18)));
    assert_eq!(s.handle_timeout(secs(t0, 18)), Some(Timeout::KeepAlive));
    let close = Close::keep_alive();
    assert!(close.will);

    // Detach: the will waits 5 s, the session 60 s.
    let d = s.detach(secs(t0, 18), n.will.clone().map(|w| *w));
    assert_eq!(d, Detached::default());
    assert_eq!(s.poll_timeout(), Some(secs(t0, 23)));
    let Some(Timeout::Will(w)) = s.handle_timeout(secs(t0, 23)) else {
        panic!("no will");
    };
    let published = Message::from_will(w, "c1".into(), &policy.topic, secs(t0, 23)).unwrap();
    assert_eq!(published.topic, name("status/c1"));
    assert_eq!(published.publisher.as_deref(), Some("c1"));

    assert_eq!(s.poll_timeout(), Some(secs(t0, 78)));
    assert_eq!(
        s.handle_timeout(secs(t0, 78)),
        Some(Timeout::Expired(Ended {
            will: None,
            orphans: vec![],
            filters: vec![filter("a/#")],
        }))
    );
    assert_eq!(s.poll_timeout(), None);
}
