//! Shared subscriptions as the session holds them: `take_shared_queued` and `end` hand shared
//! messages back for redelivery to another group member; subscriptions are added, replaced
//! and removed.

#![allow(clippy::unwrap_used)]

use super::test_support::*;
use super::*;
use bytes::Bytes;
use roost_codec::SubscriptionOptions;

// ---------------------------------------------------------------------------------------------
// Shared subscriptions: take_shared_queued and end
// ---------------------------------------------------------------------------------------------

#[test]
fn take_shared_queued_returns_only_shared_queued_messages() {
    let t0 = Instant::now();
    let mut s = connected(1, t0);
    let ms: Vec<_> = (1..=4).map(|i| msg("t", &i.to_string())).collect();
    deliver_shared(&mut s, &ms[0], QoS::AtLeastOnce, "$share/g/t", t0); // in flight
    deliver_shared(&mut s, &ms[1], QoS::AtLeastOnce, "$share/g/t", t0); // queued
    deliver(&mut s, &ms[2], QoS::AtLeastOnce, t0); // queued, not shared
    deliver_shared(&mut s, &ms[3], QoS::ExactlyOnce, "$share/h/#", t0); // queued
    take(&mut s);

    let got = s.take_shared_queued();

    assert_eq!(
        orphans(&got),
        vec![
            ("$share/g/t".to_owned(), Bytes::from_static(b"2")),
            ("$share/h/#".to_owned(), Bytes::from_static(b"4")),
        ]
    );
    assert!(Arc::ptr_eq(&got[0].msg, &ms[1]));
    // The in-flight one and the plain one stay.
    assert_eq!(inflight_ids(&s), vec![1]);
    assert_eq!(s.queued_len(), 1);
    assert_eq!(s.queued_bytes, ms[2].size());
    s.handle_puback(pid(1), t0).unwrap();
    assert_eq!(take(&mut s), vec![q1(&ms[2], 2)]);
    assert_eq!(s.take_shared_queued().len(), 0);
}

#[test]
fn end_returns_shared_messages_and_clears_the_session() {
    let t0 = Instant::now();
    let mut s = connected(3, t0);
    let ms: Vec<_> = (1..=6).map(|i| msg("t", &i.to_string())).collect();
    let opts = Subscription {
        options: SubscriptionOptions::default(),
        identifier: None,
    };
    assert!(s.add_subscription(filter("$share/g/t"), opts.clone()));
    assert!(s.add_subscription(filter("t"), opts.clone()));
    deliver_shared(&mut s, &ms[0], QoS::AtLeastOnce, "$share/g/t", t0); // id 1, published
    deliver_shared(&mut s, &ms[1], QoS::ExactlyOnce, "$share/g/t", t0); // id 2, released
    deliver(&mut s, &ms[2], QoS::AtLeastOnce, t0); // id 3, not shared
    deliver_shared(&mut s, &ms[3], QoS::AtLeastOnce, "$share/g/t", t0); // queued
    deliver(&mut s, &ms[4], QoS::AtLeastOnce, t0); // queued, not shared
    deliver_shared(&mut s, &ms[5], QoS::AtLeastOnce, "$share/k/t", t0); // queued
    s.handle_pubrec(pid(2), ReasonCode::SUCCESS, t0).unwrap();
    s.inbound_qos2(pid(50)).unwrap();
    take(&mut s);

    let got = s.end();

    // Queued shared messages first, then in-flight ones the client has not acknowledged at all.
    // The released one (id 2) reached the client already and is not handed on.
    assert_eq!(
        orphans(&got),
        vec![
            ("$share/g/t".to_owned(), Bytes::from_static(b"4")),
            ("$share/k/t".to_owned(), Bytes::from_static(b"6")),
            ("$share/g/t".to_owned(), Bytes::from_static(b"1")),
        ]
    );
    assert!(!s.is_connected());
    assert!(s.subscriptions().is_empty());
    assert_eq!(
        (s.inflight_len(), s.queued_len(), s.queued_bytes),
        (0, 0, 0)
    );
    assert!(s.inbound_qos2.is_empty());
}

#[test]
fn subscriptions_add_replace_remove() {
    let mut s = session(SessionLimits::default());
    let sub = |id| Subscription {
        options: SubscriptionOptions::default(),
        identifier: Some(id),
    };

    assert!(s.add_subscription(filter("a/+"), sub(1)));
    assert!(!s.add_subscription(filter("a/+"), sub(2)));
    assert_eq!(s.subscriptions()[&filter("a/+")], sub(2));
    assert!(s.remove_subscription(&filter("a/+")));
    assert!(!s.remove_subscription(&filter("a/+")));
    assert!(s.subscriptions().is_empty());
}

/// A session that arrives without a connection (moved here by a stopping node) keeps the
/// shared messages it holds for its client, where a detach hands them to the group.
#[test]
fn park_keeps_shared_messages_that_detach_hands_back() {
    let t0 = Instant::now();
    let mut parked = connected(1, t0);
    let mut detached = connected(1, t0);
    let ms: Vec<_> = (1..=3).map(|i| msg("t", &i.to_string())).collect();
    for s in [&mut parked, &mut detached] {
        deliver_shared(s, &ms[0], QoS::AtLeastOnce, "$share/g/t", t0); // in flight
        deliver_shared(s, &ms[1], QoS::AtLeastOnce, "$share/g/t", t0); // queued
        deliver(s, &ms[2], QoS::AtLeastOnce, t0); // queued, not shared
        take(s);
        s.set_expiry_interval(60);
    }
    let p = parked.park(t0, None);
    let d = detached.detach(t0, None);
    assert!(p.orphans.is_empty() && p.ended.is_none());
    assert_eq!(d.orphans.len(), 1);
    assert_eq!(parked.queued_len(), 2);
    assert_eq!(detached.queued_len(), 1);
    assert_eq!(parked.poll_timeout(), detached.poll_timeout());
}
