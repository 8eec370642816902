//! A session that outlives its connection: reconnect resends in-flight messages in order (with
//! DUP) then pumps the queue, an old outbox is discarded on disconnect or takeover, and
//! `export` / `import` carry the whole session to another node.

#![allow(clippy::unwrap_used)]

use super::test_support::*;
use super::*;
use crate::topic::TopicLimits;

// ---------------------------------------------------------------------------------------------
// Reconnect
// ---------------------------------------------------------------------------------------------

#[test]
fn reconnect_resends_inflight_in_order_then_pumps_the_queue() {
    let t0 = Instant::now();
    let mut s = connected(3, t0);
    let ms: Vec<_> = (1..=6).map(|i| msg("a", &i.to_string())).collect();
    deliver(&mut s, &ms[0], QoS::AtLeastOnce, t0); // id 1
    s.deliver(ms[1].clone(), QoS::ExactlyOnce, true, vec![5], None, t0); // id 2
    deliver(&mut s, &ms[2], QoS::AtLeastOnce, t0); // id 3
    assert_eq!(
        deliver(&mut s, &ms[3], QoS::ExactlyOnce, t0),
        Delivered::Queued
    );
    take(&mut s);
    // Message 2 gets to the PUBREL stage; 1 and 3 stay unacknowledged.
    s.handle_pubrec(pid(2), ReasonCode::SUCCESS, t0).unwrap();
    take(&mut s);

    s.disconnect();
    assert!(!s.is_connected());
    assert_eq!(
        deliver(&mut s, &ms[4], QoS::AtLeastOnce, secs(t0, 1)),
        Delivered::Queued
    );
    assert_eq!(
        deliver(&mut s, &ms[5], QoS::AtLeastOnce, secs(t0, 1)),
        Delivered::Queued
    );
    assert_eq!(take(&mut s), vec![]);

    // A larger window this time: 3 resent + 2 from the queue, the last one waits.
    s.connect(v5(5), secs(t0, 2));

    assert_eq!(
        take(&mut s),
        vec![
            publish(&ms[0], QoS::AtLeastOnce, Some(1), true),
            pubrel(2, ReasonCode::SUCCESS),
            publish(&ms[2], QoS::AtLeastOnce, Some(3), true),
            q2(&ms[3], 4),
            q1(&ms[4], 5),
        ]
    );
    assert_eq!((s.inflight_len(), s.queued_len()), (5, 1));
    assert_eq!(s.take_drops(), no_drops());

    // Completing the resent flows works as usual and pumps the rest.
    assert_eq!(s.handle_pubcomp(pid(2), secs(t0, 3)), Ok(()));
    assert_eq!(take(&mut s), vec![q1(&ms[5], 6)]);
}

#[test]
fn reconnect_resend_keeps_retain_and_subscription_ids() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let m = msg("a", "1");
    s.deliver(m.clone(), QoS::AtLeastOnce, true, vec![9, 11], None, t0);
    take(&mut s);

    s.disconnect();
    s.connect(v5(10), secs(t0, 1));

    assert_eq!(
        take(&mut s),
        vec![Outbound::Publish(OutPublish {
            msg: m,
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(1)),
            dup: true,
            retain: true,
            subscription_ids: vec![9, 11],
        })]
    );
}

#[test]
fn outbox_from_before_a_disconnect_is_discarded() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let (m0, m1) = (msg("a", "qos0"), msg("a", "qos1"));
    // Never taken by the driver before the connection went away.
    deliver(&mut s, &m0, QoS::AtMostOnce, t0);
    s.inbound_qos2(pid(40)).unwrap();
    s.handle_pubrel(pid(40));
    deliver(&mut s, &m1, QoS::AtLeastOnce, t0);
    assert!(s.has_outbox());

    s.disconnect();
    assert!(!s.has_outbox());
    s.connect(v5(10), secs(t0, 1));

    // Only the QoS 1 message survives, as a redelivery of the same id.
    assert_eq!(
        take(&mut s),
        vec![publish(&m1, QoS::AtLeastOnce, Some(1), true)]
    );
}

#[test]
fn takeover_without_disconnect_also_discards_the_old_outbox() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let (m0, m1) = (msg("a", "qos0"), msg("a", "qos1"));
    deliver(&mut s, &m0, QoS::AtMostOnce, t0);
    deliver(&mut s, &m1, QoS::AtLeastOnce, t0);

    s.connect(v5(10), secs(t0, 1));

    assert_eq!(
        take(&mut s),
        vec![publish(&m1, QoS::AtLeastOnce, Some(1), true)]
    );
}

/// MQTT 5.0 §4.9: the send quota starts afresh with each connection, so a reconnect with a
/// smaller Receive Maximum resends only what fits; the rest follows, in order, as acks come.
#[test]
fn reconnect_with_a_smaller_window_resends_within_it() {
    let t0 = Instant::now();
    let mut s = connected(3, t0);
    let ms: Vec<_> = (1..=4).map(|i| msg("a", &i.to_string())).collect();
    for m in &ms {
        deliver(&mut s, m, QoS::AtLeastOnce, t0);
    }
    take(&mut s);
    s.disconnect();

    s.connect(v5(1), secs(t0, 1));

    assert_eq!(
        take(&mut s),
        vec![publish(&ms[0], QoS::AtLeastOnce, Some(1), true)]
    );
    assert!(!s.has_window());
    s.handle_puback(pid(1), secs(t0, 2)).unwrap();
    assert_eq!(
        take(&mut s),
        vec![publish(&ms[1], QoS::AtLeastOnce, Some(2), true)]
    );
    s.handle_puback(pid(2), secs(t0, 2)).unwrap();
    assert_eq!(
        take(&mut s),
        vec![publish(&ms[2], QoS::AtLeastOnce, Some(3), true)]
    );
    s.handle_puback(pid(3), secs(t0, 2)).unwrap();
    assert_eq!(take(&mut s), vec![q1(&ms[3], 4)]);
}

/// export() then import() on another node gives the same subscriptions, in-flight messages
/// (same packet ids, resent with DUP in order on connect) and queue.
#[test]
fn export_import_round_trip() {
    let t0 = Instant::now();
    let mut s = connected(2, t0);
    let f = TopicFilter::new("a/#", &TopicLimits::default()).unwrap();
    s.add_subscription(
        f.clone(),
        Subscription {
            options: Default::default(),
            identifier: Some(7),
        },
    );
    let ms: Vec<_> = (1..=4).map(|i| msg("a/b", &i.to_string())).collect();
    deliver(&mut s, &ms[0], QoS::ExactlyOnce, t0);
    for m in &ms[1..] {
        deliver(&mut s, m, QoS::AtLeastOnce, t0);
    }
    take(&mut s);
    s.handle_pubrec(pid(1), ReasonCode::SUCCESS, t0).unwrap();
    take(&mut s);
    s.inbound_qos2(pid(9)).unwrap();
    s.disconnect();

    let image = s.export();
    assert_eq!(image.subscriptions.len(), 1);
    assert_eq!(image.inflight.len(), 2);
    assert_eq!(image.queued.len(), 2);
    assert_eq!(image.inbound_qos2, vec![9]);
    assert_eq!(s.inflight_len(), 0);
    assert!(s.subscriptions().is_empty());

    let mut t = Session::import("c".into(), SessionLimits::default(), image);
    assert_eq!(t.subscriptions().get(&f).unwrap().identifier, Some(7));
    assert_eq!(
        t.inbound_qos2(pid(9)),
        Ok(false),
        "inbound QoS 2 id moved along"
    );
    t.connect(v5(10), t0);
    assert_eq!(
        take(&mut t),
        vec![
            Outbound::PubRel(pid(1), ReasonCode::SUCCESS),
            publish(&ms[1], QoS::AtLeastOnce, Some(2), true),
            q1(&ms[2], 3),
            q1(&ms[3], 4),
        ]
    );
}
