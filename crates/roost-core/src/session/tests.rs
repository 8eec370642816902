//! Session state machine tests: feed inputs with an explicit `now`, assert the exact list of
//! outputs (`take_outbox`) and the drop counters (`take_drops`) (house style, conventions 1 and
//! 10). Time is `t0 + n seconds` from one fixed `t0`; nothing sleeps.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::message::PassThrough;
use crate::topic::TopicLimits;
use bytes::Bytes;
use proptest::prelude::*;
use roost_codec::SubscriptionOptions;
use std::time::Duration;
use test_case::test_case;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn name(s: &str) -> TopicName {
    TopicName::new(s, &TopicLimits::default()).unwrap()
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s, &TopicLimits::default()).unwrap()
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

fn secs(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_secs(n)
}

/// A message on `topic` with `payload`, never expiring. Its [`Message::size`] is
/// `topic.len() + payload.len()`.
fn msg(topic: &str, payload: &str) -> Arc<Message> {
    Arc::new(Message {
        topic: name(topic),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: PassThrough::default(),
        expires_at: None,
        publisher: None,
    })
}

fn msg_expiring(topic: &str, payload: &str, expires_at: Instant) -> Arc<Message> {
    let mut m = (*msg(topic, payload)).clone();
    m.expires_at = Some(expires_at);
    Arc::new(m)
}

fn v5(receive_maximum: u16) -> ClientParams {
    ClientParams {
        protocol: Protocol::V5,
        receive_maximum,
        maximum_packet_size: None,
        topic_alias_maximum: 0,
    }
}

fn v5_aliases(topic_alias_maximum: u16) -> ClientParams {
    ClientParams {
        topic_alias_maximum,
        ..v5(u16::MAX)
    }
}

fn session(limits: SessionLimits) -> Session {
    Session::new(Arc::from("client-1"), limits)
}

/// A session with default limits, connected as v5 with the given Receive Maximum.
fn connected(receive_maximum: u16, now: Instant) -> Session {
    let mut s = session(SessionLimits::default());
    s.connect(v5(receive_maximum), now);
    s
}

fn take(s: &mut Session) -> Vec<Outbound> {
    let mut out = Vec::new();
    s.take_outbox(&mut out);
    out
}

/// Delivers without retain, subscription ids or share group.
fn deliver(s: &mut Session, m: &Arc<Message>, qos: QoS, now: Instant) -> Delivered {
    s.deliver(m.clone(), qos, false, Vec::new(), None, now)
}

fn deliver_shared(s: &mut Session, m: &Arc<Message>, qos: QoS, share: &str, now: Instant) {
    s.deliver(m.clone(), qos, false, Vec::new(), Some(filter(share)), now);
}

/// The expected PUBLISH: no retain, no subscription ids.
fn publish(m: &Arc<Message>, qos: QoS, id: Option<u16>, dup: bool) -> Outbound {
    Outbound::Publish(OutPublish {
        msg: m.clone(),
        qos,
        packet_id: id.map(pid),
        dup,
        retain: false,
        subscription_ids: Vec::new(),
    })
}

fn q1(m: &Arc<Message>, id: u16) -> Outbound {
    publish(m, QoS::AtLeastOnce, Some(id), false)
}

fn q2(m: &Arc<Message>, id: u16) -> Outbound {
    publish(m, QoS::ExactlyOnce, Some(id), false)
}

fn pubrel(id: u16, reason: ReasonCode) -> Outbound {
    Outbound::PubRel(pid(id), reason)
}

fn pubcomp(id: u16, reason: ReasonCode) -> Outbound {
    Outbound::PubComp(pid(id), reason)
}

fn no_drops() -> Drops {
    Drops::default()
}

fn inflight_ids(s: &Session) -> Vec<u16> {
    s.inflight.iter().map(|f| f.id.get()).collect()
}

/// (filter, payload) of each orphan, in order.
fn orphans(v: &[Orphan]) -> Vec<(String, Bytes)> {
    v.iter()
        .map(|o| (o.filter.as_str().to_owned(), o.msg.payload.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// QoS 0
// ---------------------------------------------------------------------------------------------

#[test]
fn qos0_while_connected_goes_straight_to_the_outbox() {
    let t0 = Instant::now();
    let mut s = connected(1, t0);
    let m = msg("a", "x");
    // The window is irrelevant for QoS 0: fill it first.
    assert_eq!(
        deliver(&mut s, &msg("b", "1"), QoS::AtLeastOnce, t0),
        Delivered::Sent
    );
    take(&mut s);

    let r = s.deliver(m.clone(), QoS::AtMostOnce, true, vec![3, 7], None, t0);

    assert_eq!(r, Delivered::Sent);
    assert_eq!(
        take(&mut s),
        vec![Outbound::Publish(OutPublish {
            msg: m,
            qos: QoS::AtMostOnce,
            packet_id: None,
            dup: false,
            retain: true,
            subscription_ids: vec![3, 7],
        })]
    );
    assert_eq!(s.inflight_len(), 1);
    assert_eq!(s.queued_len(), 0);
    assert_eq!(s.take_drops(), no_drops());
}

#[test]
fn qos0_while_offline_is_dropped_and_counted() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());

    assert_eq!(
        deliver(&mut s, &msg("a", "x"), QoS::AtMostOnce, t0),
        Delivered::Dropped
    );
    assert_eq!(
        deliver(&mut s, &msg("a", "y"), QoS::AtMostOnce, t0),
        Delivered::Dropped
    );

    assert_eq!(take(&mut s), vec![]);
    assert_eq!(s.queued_len(), 0);
    assert_eq!(
        s.take_drops(),
        Drops {
            offline_qos0: 2,
            ..no_drops()
        }
    );
    // Counters reset when taken.
    assert_eq!(s.take_drops(), no_drops());
    // Not kept for the next connection either.
    s.connect(v5(10), t0);
    assert_eq!(take(&mut s), vec![]);
}

#[test]
fn qos0_outbox_is_bounded_by_max_queued_messages() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_queued_messages: 3,
        ..SessionLimits::default()
    });
    s.connect(v5(10), t0);
    let ms: Vec<_> = (0..5).map(|i| msg("a", &i.to_string())).collect();

    let results: Vec<_> = ms
        .iter()
        .map(|m| deliver(&mut s, m, QoS::AtMostOnce, t0))
        .collect();

    use Delivered::*;
    assert_eq!(results, vec![Sent, Sent, Sent, Dropped, Dropped]);
    assert_eq!(
        take(&mut s),
        vec![
            publish(&ms[0], QoS::AtMostOnce, None, false),
            publish(&ms[1], QoS::AtMostOnce, None, false),
            publish(&ms[2], QoS::AtMostOnce, None, false),
        ]
    );
    assert_eq!(
        s.take_drops(),
        Drops {
            queue_full: 2,
            ..no_drops()
        }
    );
    // Once the driver has drained the outbox there is room again.
    assert_eq!(deliver(&mut s, &ms[4], QoS::AtMostOnce, t0), Sent);
    assert_eq!(
        take(&mut s),
        vec![publish(&ms[4], QoS::AtMostOnce, None, false)]
    );
}

// ---------------------------------------------------------------------------------------------
// QoS 1 window and packet ids
// ---------------------------------------------------------------------------------------------

#[test]
fn qos1_window_of_two_queues_the_third_until_a_puback() {
    let t0 = Instant::now();
    let mut s = connected(2, t0);
    let (m1, m2, m3) = (msg("a", "1"), msg("a", "2"), msg("a", "3"));

    assert_eq!(deliver(&mut s, &m1, QoS::AtLeastOnce, t0), Delivered::Sent);
    assert_eq!(deliver(&mut s, &m2, QoS::AtLeastOnce, t0), Delivered::Sent);
    assert_eq!(
        deliver(&mut s, &m3, QoS::AtLeastOnce, t0),
        Delivered::Queued
    );
    assert_eq!(take(&mut s), vec![q1(&m1, 1), q1(&m2, 2)]);
    assert_eq!((s.inflight_len(), s.queued_len()), (2, 1));

    assert_eq!(s.handle_puback(pid(1), secs(t0, 1)), Ok(()));
    assert_eq!(take(&mut s), vec![q1(&m3, 3)]);
    assert_eq!((s.inflight_len(), s.queued_len()), (2, 0));

    assert_eq!(s.handle_puback(pid(3), secs(t0, 2)), Ok(()));
    assert_eq!(s.handle_puback(pid(2), secs(t0, 2)), Ok(()));
    assert_eq!(take(&mut s), vec![]);
    assert_eq!(s.inflight_len(), 0);
    assert_eq!(s.take_drops(), no_drops());
}

#[test]
fn qos1_fields_are_carried_per_delivery() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let m = msg("a", "1");

    s.deliver(m.clone(), QoS::AtLeastOnce, true, vec![1, 42], None, t0);

    assert_eq!(
        take(&mut s),
        vec![Outbound::Publish(OutPublish {
            msg: m,
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(1)),
            dup: false,
            retain: true,
            subscription_ids: vec![1, 42],
        })]
    );
}

#[test]
fn puback_for_an_unknown_or_already_acked_id_is_an_error() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    deliver(&mut s, &msg("a", "1"), QoS::AtLeastOnce, t0);
    take(&mut s);

    assert_eq!(
        s.handle_puback(pid(9), t0),
        Err(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
    assert_eq!(s.handle_puback(pid(1), t0), Ok(()));
    assert_eq!(
        s.handle_puback(pid(1), t0),
        Err(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
    assert_eq!(take(&mut s), vec![]);
}

#[test]
fn packet_ids_wrap_after_65535_to_1_skipping_ids_in_use() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let held = msg("held", "1");
    let m = msg("a", "x");

    // Id 1 stays in flight for the whole test.
    deliver(&mut s, &held, QoS::AtLeastOnce, t0);
    assert_eq!(take(&mut s), vec![q1(&held, 1)]);
    // Ids 2..=65535, each acked at once.
    for id in 2..=u16::MAX {
        assert_eq!(deliver(&mut s, &m, QoS::AtLeastOnce, t0), Delivered::Sent);
        assert_eq!(take(&mut s), vec![q1(&m, id)]);
        assert_eq!(s.handle_puback(pid(id), t0), Ok(()));
    }
    // The counter wraps: 0 is never used, 1 is still in flight, so 2 and 3 come next.
    deliver(&mut s, &m, QoS::AtLeastOnce, t0);
    deliver(&mut s, &m, QoS::AtLeastOnce, t0);
    assert_eq!(take(&mut s), vec![q1(&m, 2), q1(&m, 3)]);
    assert_eq!(inflight_ids(&s), vec![1, 2, 3]);
}

#[test]
fn packet_id_allocation_skips_every_id_in_flight_after_a_wrap() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let m = msg("a", "x");
    for _ in 0..3 {
        deliver(&mut s, &m, QoS::AtLeastOnce, t0);
    }
    assert_eq!(take(&mut s), vec![q1(&m, 1), q1(&m, 2), q1(&m, 3)]);
    // Jump the counter to just before the wrap; 1..=3 still in flight, 65535 is free.
    s.next_packet_id = u16::MAX - 1;
    s.handle_puback(pid(2), t0).unwrap();

    for _ in 0..3 {
        deliver(&mut s, &m, QoS::AtLeastOnce, t0);
    }

    // 65535, then (0 is skipped, 1 in use) 2, then (3 in use) 4.
    assert_eq!(take(&mut s), vec![q1(&m, 65535), q1(&m, 2), q1(&m, 4)]);
    assert_eq!(inflight_ids(&s), vec![1, 3, 65535, 2, 4]);
}

/// (client Receive Maximum, limits.max_inflight) -> how many of 10 QoS 1 messages go out at once.
#[test_case(2, 32 => 2 ; "client receive maximum below max_inflight")]
#[test_case(10, 3 => 3 ; "max_inflight below client receive maximum")]
#[test_case(u16::MAX, 5 => 5 ; "v311 default receive maximum is capped by max_inflight")]
#[test_case(4, 4 => 4 ; "equal")]
#[test_case(1, 1 => 1 ; "one at a time")]
#[test_case(0, 32 => 1 ; "a receive maximum of zero still lets one through")]
fn window_is_min_of_client_receive_maximum_and_max_inflight(
    receive_maximum: u16,
    max_inflight: u16,
) -> usize {
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_inflight,
        ..SessionLimits::default()
    });
    s.connect(v5(receive_maximum), t0);
    let m = msg("a", "x");

    for _ in 0..10 {
        deliver(&mut s, &m, QoS::AtLeastOnce, t0);
    }

    let out = take(&mut s);
    let expected: Vec<_> = (1..=out.len() as u16).map(|id| q1(&m, id)).collect();
    assert_eq!(out, expected);
    assert_eq!(s.inflight_len() + s.queued_len(), 10);
    assert!(!s.has_window());
    out.len()
}

// ---------------------------------------------------------------------------------------------
// QoS 2 outbound
// ---------------------------------------------------------------------------------------------

#[test]
fn qos2_pubrec_answers_pubrel_and_pubcomp_frees_the_slot() {
    let t0 = Instant::now();
    let mut s = connected(1, t0);
    let (m1, m2) = (msg("a", "1"), msg("a", "2"));

    assert_eq!(deliver(&mut s, &m1, QoS::ExactlyOnce, t0), Delivered::Sent);
    assert_eq!(
        deliver(&mut s, &m2, QoS::ExactlyOnce, t0),
        Delivered::Queued
    );
    assert_eq!(take(&mut s), vec![q2(&m1, 1)]);

    // PUBREC: PUBREL goes out, the slot stays taken until PUBCOMP.
    assert_eq!(
        s.handle_pubrec(pid(1), ReasonCode::SUCCESS, secs(t0, 1)),
        Ok(())
    );
    assert_eq!(take(&mut s), vec![pubrel(1, ReasonCode::SUCCESS)]);
    assert_eq!((s.inflight_len(), s.queued_len()), (1, 1));

    assert_eq!(s.handle_pubcomp(pid(1), secs(t0, 2)), Ok(()));
    assert_eq!(take(&mut s), vec![q2(&m2, 2)]);
    assert_eq!((s.inflight_len(), s.queued_len()), (1, 0));

    // A second PUBCOMP for the finished flow is unknown.
    assert_eq!(
        s.handle_pubcomp(pid(1), secs(t0, 3)),
        Err(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
    assert_eq!(take(&mut s), vec![]);
}

/// PUBREC reason codes: below 0x80 continue the flow, 0x80 and above end it (MQTT 5.0 §4.3.3).
#[test_case(ReasonCode::SUCCESS => true ; "success continues")]
#[test_case(ReasonCode::NO_MATCHING_SUBSCRIBERS => true ; "0x10 is not an error")]
#[test_case(ReasonCode::UNSPECIFIED_ERROR => false ; "0x80 ends the flow")]
#[test_case(ReasonCode::NOT_AUTHORIZED => false ; "0x87 ends the flow")]
#[test_case(ReasonCode::QUOTA_EXCEEDED => false ; "0x97 ends the flow")]
fn pubrec_reason_decides_whether_pubrel_follows(reason: ReasonCode) -> bool {
    let t0 = Instant::now();
    let mut s = connected(1, t0);
    let (m1, m2) = (msg("a", "1"), msg("a", "2"));
    deliver(&mut s, &m1, QoS::ExactlyOnce, t0);
    deliver(&mut s, &m2, QoS::ExactlyOnce, t0);
    take(&mut s);

    assert_eq!(s.handle_pubrec(pid(1), reason, t0), Ok(()));

    let out = take(&mut s);
    if reason.is_error() {
        // No PUBREL; the slot is free and the next message goes out.
        assert_eq!(out, vec![q2(&m2, 2)]);
        assert_eq!(
            s.handle_pubcomp(pid(1), t0),
            Err(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
        );
        false
    } else {
        assert_eq!(out, vec![pubrel(1, ReasonCode::SUCCESS)]);
        assert_eq!(s.queued_len(), 1);
        true
    }
}

#[test_case(Protocol::V5 => vec![pubrel(7, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)] ; "v5 answers PUBREL 0x92")]
#[test_case(Protocol::V311 => Vec::<Outbound>::new() ; "v311 answers nothing")]
fn unknown_pubrec(protocol: Protocol) -> Vec<Outbound> {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    s.connect(ClientParams { protocol, ..v5(10) }, t0);

    assert_eq!(
        s.handle_pubrec(pid(7), ReasonCode::SUCCESS, t0),
        Err(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
    take(&mut s)
}

#[test]
fn acks_for_the_wrong_stage_are_errors_and_change_nothing() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let (a, b) = (msg("a", "qos2"), msg("a", "qos1"));
    deliver(&mut s, &a, QoS::ExactlyOnce, t0); // id 1
    deliver(&mut s, &b, QoS::AtLeastOnce, t0); // id 2
    assert_eq!(take(&mut s), vec![q2(&a, 1), q1(&b, 2)]);
    let not_found = Err(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);

    // PUBACK for a QoS 2 id, PUBCOMP before PUBREC.
    assert_eq!(s.handle_puback(pid(1), t0), not_found);
    assert_eq!(s.handle_pubcomp(pid(1), t0), not_found);
    // PUBCOMP for a QoS 1 id.
    assert_eq!(s.handle_pubcomp(pid(2), t0), not_found);
    assert_eq!(take(&mut s), vec![]);
    // PUBREC for a QoS 1 id: treated as unknown (v5: PUBREL 0x92).
    assert_eq!(s.handle_pubrec(pid(2), ReasonCode::SUCCESS, t0), not_found);
    assert_eq!(
        take(&mut s),
        vec![pubrel(2, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)]
    );
    assert_eq!(inflight_ids(&s), vec![1, 2]);

    // Now released: PUBACK for it is still wrong.
    assert_eq!(s.handle_pubrec(pid(1), ReasonCode::SUCCESS, t0), Ok(()));
    assert_eq!(take(&mut s), vec![pubrel(1, ReasonCode::SUCCESS)]);
    assert_eq!(s.handle_puback(pid(1), t0), not_found);
    assert_eq!(inflight_ids(&s), vec![1, 2]);

    // The right acks still work afterwards.
    assert_eq!(s.handle_pubcomp(pid(1), t0), Ok(()));
    assert_eq!(s.handle_puback(pid(2), t0), Ok(()));
    assert_eq!(s.inflight_len(), 0);
    assert_eq!(take(&mut s), vec![]);
}

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

// ---------------------------------------------------------------------------------------------
// Queue bounds
// ---------------------------------------------------------------------------------------------

/// Five messages into an offline session whose queue holds three.
#[test_case(DropPolicy::Oldest, 3, 1000 => (vec!["3", "4", "5"], 2) ; "oldest by count keeps the newest")]
#[test_case(DropPolicy::Newest, 3, 1000 => (vec!["1", "2", "3"], 2) ; "newest by count keeps the oldest")]
// Each message is topic "t" + a 1-byte payload = 2 bytes: 7 bytes hold three.
#[test_case(DropPolicy::Oldest, 1000, 7 => (vec!["3", "4", "5"], 2) ; "oldest by bytes keeps the newest")]
#[test_case(DropPolicy::Newest, 1000, 7 => (vec!["1", "2", "3"], 2) ; "newest by bytes keeps the oldest")]
#[test_case(DropPolicy::Oldest, 1000, 10 => (vec!["1", "2", "3", "4", "5"], 0) ; "exactly at the byte bound")]
fn queue_bounds(
    drop_policy: DropPolicy,
    max_queued_messages: usize,
    max_queued_bytes: usize,
) -> (Vec<&'static str>, u64) {
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_queued_messages,
        max_queued_bytes,
        drop_policy,
        ..SessionLimits::default()
    });
    let payloads = ["1", "2", "3", "4", "5"];

    for p in payloads {
        let r = deliver(&mut s, &msg("t", p), QoS::AtLeastOnce, t0);
        // Oldest always accepts the newcomer; Newest refuses it when full.
        assert_ne!(r, Delivered::Sent);
    }

    assert_eq!(s.queued_bytes, s.queue.iter().map(|p| p.msg.size()).sum());
    let drops = s.take_drops();
    assert_eq!(
        drops,
        Drops {
            queue_full: drops.queue_full,
            ..no_drops()
        }
    );
    s.connect(v5(100), secs(t0, 1));
    let mut kept = Vec::new();
    for (i, o) in take(&mut s).into_iter().enumerate() {
        let Outbound::Publish(p) = o else {
            panic!("not a publish: {o:?}")
        };
        assert_eq!(p.packet_id, Some(pid(i as u16 + 1)));
        assert!(!p.dup);
        let idx = payloads
            .iter()
            .position(|x| x.as_bytes() == p.msg.payload)
            .unwrap();
        kept.push(payloads[idx]);
    }
    assert_eq!(s.queued_bytes, 0);
    (kept, drops.queue_full)
}

#[test]
fn newest_policy_reports_the_refused_message_as_dropped() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_queued_messages: 1,
        drop_policy: DropPolicy::Newest,
        ..SessionLimits::default()
    });
    assert_eq!(
        deliver(&mut s, &msg("t", "1"), QoS::AtLeastOnce, t0),
        Delivered::Queued
    );
    assert_eq!(
        deliver(&mut s, &msg("t", "2"), QoS::AtLeastOnce, t0),
        Delivered::Dropped
    );
    assert_eq!(
        s.take_drops(),
        Drops {
            queue_full: 1,
            ..no_drops()
        }
    );
}

#[test]
fn oldest_policy_evicts_as_many_as_needed_for_a_big_message() {
    let t0 = Instant::now();
    // 30 bytes: three 10-byte messages fill it; a 25-byte one needs all three gone.
    let mut s = session(SessionLimits {
        max_queued_bytes: 30,
        drop_policy: DropPolicy::Oldest,
        ..SessionLimits::default()
    });
    for p in ["111111111", "222222222", "333333333"] {
        assert_eq!(
            deliver(&mut s, &msg("t", p), QoS::AtLeastOnce, t0),
            Delivered::Queued
        );
    }
    let big = msg("t", &"x".repeat(24));

    assert_eq!(
        deliver(&mut s, &big, QoS::AtLeastOnce, t0),
        Delivered::Queued
    );

    assert_eq!(s.queued_len(), 1);
    assert_eq!(s.queued_bytes, 25);
    assert_eq!(
        s.take_drops(),
        Drops {
            queue_full: 3,
            ..no_drops()
        }
    );
    s.connect(v5(10), t0);
    assert_eq!(take(&mut s), vec![q1(&big, 1)]);
}

#[test_case(DropPolicy::Oldest ; "oldest")]
#[test_case(DropPolicy::Newest ; "newest")]
fn a_message_larger_than_max_queued_bytes_is_dropped_and_evicts_nothing(policy: DropPolicy) {
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_queued_bytes: 10,
        drop_policy: policy,
        ..SessionLimits::default()
    });
    let small = msg("t", "1");
    deliver(&mut s, &small, QoS::AtLeastOnce, t0);

    let r = deliver(&mut s, &msg("t", "0123456789"), QoS::AtLeastOnce, t0);

    assert_eq!(r, Delivered::Dropped);
    assert_eq!(
        s.take_drops(),
        Drops {
            queue_full: 1,
            ..no_drops()
        }
    );
    assert_eq!(s.queued_bytes, 2);
    s.connect(v5(10), t0);
    assert_eq!(take(&mut s), vec![q1(&small, 1)]);
}

#[test]
fn a_connected_session_with_window_sends_even_oversized_messages() {
    // The queue bounds are for waiting messages; one that goes straight out is not queued.
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_queued_bytes: 4,
        ..SessionLimits::default()
    });
    s.connect(v5(10), t0);
    let m = msg("t", "0123456789");

    assert_eq!(deliver(&mut s, &m, QoS::AtLeastOnce, t0), Delivered::Sent);
    assert_eq!(take(&mut s), vec![q1(&m, 1)]);
    assert_eq!(s.take_drops(), no_drops());
}

// ---------------------------------------------------------------------------------------------
// Message expiry
// ---------------------------------------------------------------------------------------------

/// A message expiring at t0+5s, delivered at t0+`at`s.
#[test_case(4 => Delivered::Sent ; "before expiry")]
#[test_case(5 => Delivered::Dropped ; "exactly at expiry")]
#[test_case(6 => Delivered::Dropped ; "after expiry")]
fn expiry_on_deliver(at: u64) -> Delivered {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let m = msg_expiring("a", "x", secs(t0, 5));

    let r = deliver(&mut s, &m, QoS::AtLeastOnce, secs(t0, at));

    let expected_drops = Drops {
        expired: u64::from(r == Delivered::Dropped),
        ..no_drops()
    };
    assert_eq!(s.take_drops(), expected_drops);
    if r == Delivered::Dropped {
        assert_eq!(take(&mut s), vec![]);
        assert_eq!(s.inflight_len(), 0);
    } else {
        assert_eq!(take(&mut s), vec![q1(&m, 1)]);
    }
    r
}

#[test]
fn expired_qos0_is_dropped_as_expired_even_offline() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    let m = msg_expiring("a", "x", t0);

    assert_eq!(deliver(&mut s, &m, QoS::AtMostOnce, t0), Delivered::Dropped);
    assert_eq!(
        s.take_drops(),
        Drops {
            expired: 1,
            ..no_drops()
        }
    );
}

#[test]
fn message_that_expires_while_queued_offline_is_dropped_on_connect() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    let doomed = msg_expiring("a", "doomed", secs(t0, 10));
    let kept = msg_expiring("a", "kept", secs(t0, 60));
    let forever = msg("a", "forever");
    for m in [&doomed, &kept, &forever] {
        assert_eq!(deliver(&mut s, m, QoS::AtLeastOnce, t0), Delivered::Queued);
    }

    s.connect(v5(10), secs(t0, 10));

    // The expired one used no packet id.
    assert_eq!(take(&mut s), vec![q1(&kept, 1), q1(&forever, 2)]);
    assert_eq!(
        s.take_drops(),
        Drops {
            expired: 1,
            ..no_drops()
        }
    );
    assert_eq!((s.queued_len(), s.queued_bytes), (0, 0));
}

#[test]
fn message_that_expires_while_queued_behind_the_window_is_dropped_on_pump() {
    let t0 = Instant::now();
    let mut s = connected(1, t0);
    let first = msg("a", "1");
    let doomed = msg_expiring("a", "2", secs(t0, 3));
    let last = msg("a", "3");
    deliver(&mut s, &first, QoS::AtLeastOnce, t0);
    deliver(&mut s, &doomed, QoS::AtLeastOnce, t0);
    deliver(&mut s, &last, QoS::AtLeastOnce, t0);
    assert_eq!(take(&mut s), vec![q1(&first, 1)]);

    s.handle_puback(pid(1), secs(t0, 5)).unwrap();

    assert_eq!(take(&mut s), vec![q1(&last, 2)]);
    assert_eq!(
        s.take_drops(),
        Drops {
            expired: 1,
            ..no_drops()
        }
    );
    assert_eq!((s.queued_len(), s.queued_bytes), (0, 0));
}

/// Expiry at t0+10s, asked at t0+`ms` milliseconds.
#[test_case(0 => Some(10) ; "whole interval left")]
#[test_case(2_500 => Some(8) ; "7.5 s rounds up to 8")]
#[test_case(9_999 => Some(1) ; "1 ms rounds up to 1")]
#[test_case(9_000 => Some(1) ; "exactly 1 s")]
#[test_case(10_000 => Some(0) ; "at expiry")]
#[test_case(11_000 => Some(0) ; "past expiry saturates at 0")]
fn remaining_expiry_rounds_up(ms: u64) -> Option<u32> {
    let t0 = Instant::now();
    let m = msg_expiring("a", "x", secs(t0, 10));
    m.remaining_expiry(t0 + Duration::from_millis(ms))
}

#[test]
fn remaining_expiry_is_none_without_an_expiry() {
    let t0 = Instant::now();
    assert_eq!(msg("a", "x").remaining_expiry(t0), None);
}

// ---------------------------------------------------------------------------------------------
// Inbound QoS 2
// ---------------------------------------------------------------------------------------------

#[test]
fn inbound_qos2_first_time_routes_repeat_does_not() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);

    assert_eq!(s.inbound_qos2(pid(5)), Ok(true));
    assert_eq!(s.inbound_qos2(pid(5)), Ok(false));
    assert_eq!(s.inbound_qos2(pid(6)), Ok(true));

    s.handle_pubrel(pid(5));
    assert_eq!(take(&mut s), vec![pubcomp(5, ReasonCode::SUCCESS)]);
    // Released: the id may be reused for a new message.
    assert_eq!(s.inbound_qos2(pid(5)), Ok(true));
}

#[test]
fn inbound_qos2_beyond_our_receive_maximum_is_0x93() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        receive_maximum: 2,
        ..SessionLimits::default()
    });
    s.connect(v5(10), t0);

    assert_eq!(s.inbound_qos2(pid(1)), Ok(true));
    assert_eq!(s.inbound_qos2(pid(2)), Ok(true));
    assert_eq!(
        s.inbound_qos2(pid(3)),
        Err(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
    );
    // A repeat of a held id is still recognised as a repeat when the window is full.
    assert_eq!(s.inbound_qos2(pid(1)), Ok(false));

    s.handle_pubrel(pid(1));
    assert_eq!(s.inbound_qos2(pid(3)), Ok(true));
    assert_eq!(take(&mut s), vec![pubcomp(1, ReasonCode::SUCCESS)]);
}

#[test]
fn inbound_qos2_state_survives_a_reconnect() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    assert_eq!(s.inbound_qos2(pid(9)), Ok(true));

    s.disconnect();
    s.connect(v5(10), secs(t0, 1));

    // The DUP redelivery after reconnect is not routed twice.
    assert_eq!(s.inbound_qos2(pid(9)), Ok(false));
    s.handle_pubrel(pid(9));
    assert_eq!(take(&mut s), vec![pubcomp(9, ReasonCode::SUCCESS)]);
}

#[test_case(Protocol::V5 => vec![pubcomp(4, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)] ; "v5 unknown id is 0x92")]
#[test_case(Protocol::V311 => vec![pubcomp(4, ReasonCode::SUCCESS)] ; "v311 has no reason code")]
fn pubrel_for_an_unknown_id(protocol: Protocol) -> Vec<Outbound> {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    s.connect(ClientParams { protocol, ..v5(10) }, t0);

    s.handle_pubrel(pid(4));
    take(&mut s)
}

#[test]
fn acks_and_publishes_keep_their_order_in_the_outbox() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let (a, b, c) = (msg("a", "1"), msg("a", "2"), msg("a", "3"));
    s.inbound_qos2(pid(100)).unwrap();

    deliver(&mut s, &a, QoS::AtLeastOnce, t0);
    s.handle_pubrel(pid(100));
    deliver(&mut s, &b, QoS::ExactlyOnce, t0);
    s.handle_pubrec(pid(2), ReasonCode::SUCCESS, t0).unwrap();
    deliver(&mut s, &c, QoS::AtMostOnce, t0);

    assert_eq!(
        take(&mut s),
        vec![
            q1(&a, 1),
            pubcomp(100, ReasonCode::SUCCESS),
            q2(&b, 2),
            pubrel(2, ReasonCode::SUCCESS),
            publish(&c, QoS::AtMostOnce, None, false),
        ]
    );
}

#[test]
fn take_outbox_appends_to_a_non_empty_vec() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let m = msg("a", "1");
    let mut out = vec![pubcomp(1, ReasonCode::SUCCESS)];
    deliver(&mut s, &m, QoS::AtMostOnce, t0);

    s.take_outbox(&mut out);

    assert_eq!(
        out,
        vec![
            pubcomp(1, ReasonCode::SUCCESS),
            publish(&m, QoS::AtMostOnce, None, false),
        ]
    );
    assert!(!s.has_outbox());
}

#[test]
fn ack_packet_builds_the_wire_packet_for_acks_only() {
    let m = msg("a", "1");
    let expected = |id: u16, reason: ReasonCode| Ack {
        packet_id: pid(id),
        reason_code: reason,
        properties: Properties::default(),
    };

    assert_eq!(publish(&m, QoS::AtMostOnce, None, false).ack_packet(), None);
    assert_eq!(
        pubrel(3, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND).ack_packet(),
        Some(Packet::PubRel(expected(
            3,
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        )))
    );
    assert_eq!(
        pubcomp(4, ReasonCode::SUCCESS).ack_packet(),
        Some(Packet::PubComp(expected(4, ReasonCode::SUCCESS)))
    );
}

// ---------------------------------------------------------------------------------------------
// Topic aliases
// ---------------------------------------------------------------------------------------------

fn alias_session(topic_alias_maximum: u16, t0: Instant) -> Session {
    let mut s = session(SessionLimits {
        topic_alias_maximum,
        ..SessionLimits::default()
    });
    s.connect(v5(10), t0);
    s
}

#[test]
fn inbound_alias_is_learned_used_and_rebound() {
    let t0 = Instant::now();
    let mut s = alias_session(3, t0);

    assert_eq!(s.resolve_topic("a/b", Some(1)), Ok(name("a/b")));
    assert_eq!(s.resolve_topic("", Some(1)), Ok(name("a/b")));
    assert_eq!(s.resolve_topic("c", Some(3)), Ok(name("c")));
    assert_eq!(s.resolve_topic("", Some(3)), Ok(name("c")));
    // A topic with an alias already in use rebinds it.
    assert_eq!(s.resolve_topic("d", Some(1)), Ok(name("d")));
    assert_eq!(s.resolve_topic("", Some(1)), Ok(name("d")));
    // No alias: the topic as is, aliases untouched.
    assert_eq!(s.resolve_topic("e", None), Ok(name("e")));
    assert_eq!(s.resolve_topic("", Some(3)), Ok(name("c")));
    assert_eq!(take(&mut s), vec![]);
}

/// Alias maximum 3; alias 1 is bound to "a" before each case.
#[test_case("x", Some(0) => ReasonCode::TOPIC_ALIAS_INVALID ; "alias 0")]
#[test_case("x", Some(4) => ReasonCode::TOPIC_ALIAS_INVALID ; "alias above our maximum")]
#[test_case("", Some(0) => ReasonCode::TOPIC_ALIAS_INVALID ; "alias 0 with empty topic")]
#[test_case("", Some(2) => ReasonCode::PROTOCOL_ERROR ; "unknown alias with empty topic")]
#[test_case("", None => ReasonCode::TOPIC_NAME_INVALID ; "empty topic without alias")]
#[test_case("a/+", None => ReasonCode::TOPIC_NAME_INVALID ; "wildcard without alias")]
#[test_case("a/#", Some(1) => ReasonCode::TOPIC_NAME_INVALID ; "wildcard with alias")]
fn inbound_alias_errors(topic: &str, alias: Option<u16>) -> ReasonCode {
    let t0 = Instant::now();
    let mut s = alias_session(3, t0);
    s.resolve_topic("a", Some(1)).unwrap();

    let err = s.resolve_topic(topic, alias).unwrap_err();

    // A failed resolution never changes an existing binding.
    assert_eq!(s.resolve_topic("", Some(1)), Ok(name("a")));
    err
}

#[test]
fn inbound_aliases_are_refused_when_our_maximum_is_zero() {
    let t0 = Instant::now();
    let mut s = alias_session(0, t0);
    assert_eq!(
        s.resolve_topic("a", Some(1)),
        Err(ReasonCode::TOPIC_ALIAS_INVALID)
    );
}

#[test]
fn inbound_aliases_reset_on_reconnect() {
    let t0 = Instant::now();
    let mut s = alias_session(3, t0);
    s.resolve_topic("a", Some(1)).unwrap();

    s.disconnect();
    s.connect(v5(10), secs(t0, 1));

    assert_eq!(
        s.resolve_topic("", Some(1)),
        Err(ReasonCode::PROTOCOL_ERROR)
    );

    // Also on a takeover that skips disconnect().
    s.resolve_topic("b", Some(2)).unwrap();
    s.connect(v5(10), secs(t0, 2));
    assert_eq!(
        s.resolve_topic("", Some(2)),
        Err(ReasonCode::PROTOCOL_ERROR)
    );
}

#[test]
fn outbound_aliases_up_to_the_client_maximum() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    s.connect(v5_aliases(2), t0);
    let (a, b, c) = (name("A"), name("B"), name("C"));

    let got = [
        s.outbound_alias(&a),
        s.outbound_alias(&b),
        s.outbound_alias(&a),
        s.outbound_alias(&c),
        s.outbound_alias(&b),
        s.outbound_alias(&c),
    ];

    assert_eq!(
        got,
        [
            Some((1, true)),
            Some((2, true)),
            Some((1, false)),
            None,
            Some((2, false)),
            None,
        ]
    );
}

#[test]
fn outbound_aliases_reset_on_reconnect() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    s.connect(v5_aliases(1), t0);
    assert_eq!(s.outbound_alias(&name("A")), Some((1, true)));

    s.disconnect();
    assert_eq!(s.outbound_alias(&name("A")), None);
    s.connect(v5_aliases(1), secs(t0, 1));

    assert_eq!(s.outbound_alias(&name("B")), Some((1, true)));
    assert_eq!(s.outbound_alias(&name("A")), None);
}

#[test_case(v5_aliases(0) ; "v5 client maximum 0")]
#[test_case(ClientParams::v311() ; "v311")]
fn outbound_aliases_not_used_when_client_allows_none(params: ClientParams) {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    s.connect(params, t0);
    assert_eq!(s.outbound_alias(&name("A")), None);
    assert_eq!(s.outbound_alias(&name("A")), None);
}

// ---------------------------------------------------------------------------------------------
// abandon
// ---------------------------------------------------------------------------------------------

#[test]
fn abandon_frees_the_window_and_counts_too_large() {
    let t0 = Instant::now();
    let mut s = connected(1, t0);
    let (big, next) = (msg("a", "big"), msg("a", "next"));
    deliver(&mut s, &big, QoS::AtLeastOnce, t0);
    deliver(&mut s, &next, QoS::AtLeastOnce, t0);
    assert_eq!(take(&mut s), vec![q1(&big, 1)]);

    s.abandon(Some(pid(1)), secs(t0, 1));

    assert_eq!(take(&mut s), vec![q1(&next, 2)]);
    assert_eq!(inflight_ids(&s), vec![2]);
    assert_eq!(
        s.take_drops(),
        Drops {
            too_large: 1,
            ..no_drops()
        }
    );
    // The client never saw it: an ack for it is unknown.
    assert_eq!(
        s.handle_puback(pid(1), secs(t0, 1)),
        Err(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
}

#[test]
fn abandon_qos0_or_unknown_id_only_counts() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    deliver(&mut s, &msg("a", "1"), QoS::AtLeastOnce, t0);
    take(&mut s);

    s.abandon(None, t0);
    s.abandon(Some(pid(77)), t0);

    assert_eq!(inflight_ids(&s), vec![1]);
    assert_eq!(take(&mut s), vec![]);
    assert_eq!(
        s.take_drops(),
        Drops {
            too_large: 2,
            ..no_drops()
        }
    );
}

#[test]
fn abandon_does_not_touch_a_released_flow() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    deliver(&mut s, &msg("a", "1"), QoS::ExactlyOnce, t0);
    s.handle_pubrec(pid(1), ReasonCode::SUCCESS, t0).unwrap();
    take(&mut s);

    s.abandon(Some(pid(1)), t0);

    assert_eq!(inflight_ids(&s), vec![1]);
    assert_eq!(s.handle_pubcomp(pid(1), t0), Ok(()));
}

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

// ---------------------------------------------------------------------------------------------
// has_window
// ---------------------------------------------------------------------------------------------

/// (connected, client receive maximum, QoS 1 messages delivered) -> has_window.
#[test_case(false, 10, 0 => false ; "offline")]
#[test_case(true, 10, 0 => true ; "connected and empty")]
#[test_case(true, 2, 1 => true ; "room left")]
#[test_case(true, 2, 2 => false ; "window full")]
#[test_case(true, 2, 3 => false ; "window full and queue non-empty")]
fn has_window(connect: bool, receive_maximum: u16, delivered: usize) -> bool {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    if connect {
        s.connect(v5(receive_maximum), t0);
    }
    for _ in 0..delivered {
        deliver(&mut s, &msg("a", "x"), QoS::AtLeastOnce, t0);
    }
    // QoS 0 traffic never affects it.
    if connect {
        deliver(&mut s, &msg("a", "0"), QoS::AtMostOnce, t0);
    }
    s.has_window()
}

#[test]
fn has_window_follows_acks_and_disconnects() {
    let t0 = Instant::now();
    let mut s = connected(1, t0);
    deliver(&mut s, &msg("a", "1"), QoS::AtLeastOnce, t0);
    assert!(!s.has_window());
    s.handle_puback(pid(1), t0).unwrap();
    assert!(s.has_window());
    s.disconnect();
    assert!(!s.has_window());
    s.connect(v5(1), t0);
    assert!(s.has_window());
}

#[test]
fn has_window_is_false_while_anything_is_queued() {
    // Even with free slots, queued messages go first: a new one must not overtake them.
    let t0 = Instant::now();
    let mut s = connected(3, t0);
    s.queue.push_back(Pending {
        msg: msg("a", "1"),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        shared: None,
    });
    assert_eq!(s.inflight_len(), 0);
    assert!(!s.has_window());
}

// ---------------------------------------------------------------------------------------------
// Property test: random flows keep ids unique, respect the window and lose nothing silently
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Deliver {
        qos: u8,
        shared: bool,
    },
    /// Ack the in-flight entry at `pick % len` (or a random id when `stray`).
    PubAck {
        pick: usize,
        stray: bool,
    },
    PubRec {
        pick: usize,
        stray: bool,
        error: bool,
    },
    PubComp {
        pick: usize,
        stray: bool,
    },
    Abandon {
        pick: usize,
    },
    TakeOutbox,
    Disconnect,
    Connect,
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, any::<bool>()).prop_map(|(qos, shared)| Op::Deliver { qos, shared }),
        3 => (any::<usize>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, stray)| Op::PubAck { pick, stray }),
        3 => (any::<usize>(), prop::bool::weighted(0.1), prop::bool::weighted(0.2))
            .prop_map(|(pick, stray, error)| Op::PubRec { pick, stray, error }),
        3 => (any::<usize>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, stray)| Op::PubComp { pick, stray }),
        1 => any::<usize>().prop_map(|pick| Op::Abandon { pick }),
        2 => Just(Op::TakeOutbox),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Connect),
        1 => Just(Op::Tick),
    ]
}

/// Picks an in-flight id (or a stray one) for an ack.
fn pick_id(s: &Session, pick: usize, stray: bool) -> Option<PacketId> {
    if stray {
        return PacketId::new(u16::try_from(pick % 65_535).unwrap() + 1);
    }
    if s.inflight.is_empty() {
        return None;
    }
    Some(s.inflight[pick % s.inflight.len()].id)
}

proptest! {
    #[test]
    fn random_flows_keep_ids_unique_window_bounded_and_messages_accounted(
        receive_maximum in 1u16..6,
        max_inflight in 1u16..6,
        max_queued_messages in 1usize..6,
        oldest in any::<bool>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let t0 = Instant::now();
        let mut s = session(SessionLimits {
            max_inflight,
            max_queued_messages,
            drop_policy: if oldest { DropPolicy::Oldest } else { DropPolicy::Newest },
            ..SessionLimits::default()
        });
        let window = usize::from(receive_maximum.min(max_inflight));
        let mut now = t0;
        s.connect(v5(receive_maximum), now);

        // Conservation bookkeeping for QoS 1/2 deliveries.
        let mut delivered = 0u64; // deliver() calls with QoS > 0
        let mut completed = 0u64; // PUBACK, PUBCOMP, PUBREC with an error: Ok(())
        let mut abandoned = 0u64; // abandon() that removed an in-flight entry
        let mut queue_full = 0u64; // of QoS > 0 messages
        let mut seq = 0u32; // makes every payload distinct

        for op in ops {
            let before = s.inflight_len();
            let drops_before = s.drops;
            match op {
                Op::Deliver { qos, shared } => {
                    seq += 1;
                    let m = msg("t", &seq.to_string());
                    let qos = QoS::from_u8(qos).unwrap();
                    let share = shared.then(|| filter("$share/g/t"));
                    let r = s.deliver(m, qos, false, Vec::new(), share, now);
                    if qos == QoS::AtMostOnce {
                        // QoS 0 never touches the window or the queue.
                        prop_assert_eq!(s.inflight_len(), before);
                        if !s.is_connected() {
                            prop_assert_eq!(r, Delivered::Dropped);
                        }
                    } else {
                        delivered += 1;
                        queue_full += s.drops.queue_full - drops_before.queue_full;
                        if r == Delivered::Sent {
                            prop_assert_eq!(s.inflight_len(), before + 1);
                        }
                    }
                }
                Op::PubAck { pick, stray } => {
                    if let Some(id) = pick_id(&s, pick, stray) {
                        if s.handle_puback(id, now).is_ok() {
                            completed += 1;
                        }
                    }
                }
                Op::PubRec { pick, stray, error } => {
                    if let Some(id) = pick_id(&s, pick, stray) {
                        let reason = if error {
                            ReasonCode::UNSPECIFIED_ERROR
                        } else {
                            ReasonCode::SUCCESS
                        };
                        // An error PUBREC ends only a flow still at the PUBLISH stage; a
                        // repeated PUBREC at the PUBREL stage just gets the PUBREL again.
                        let was_published = s
                            .inflight
                            .iter()
                            .any(|f| f.id == id && f.state == InflightState::Published);
                        if s.handle_pubrec(id, reason, now).is_ok() && error && was_published {
                            completed += 1;
                        }
                    }
                }
                Op::PubComp { pick, stray } => {
                    if let Some(id) = pick_id(&s, pick, stray) {
                        if s.handle_pubcomp(id, now).is_ok() {
                            completed += 1;
                        }
                    }
                }
                Op::Abandon { pick } => {
                    // The freed slot may be refilled from the queue at once, so count what
                    // left the session as a whole.
                    let held_before = s.inflight_len() + s.queued_len();
                    let id = pick_id(&s, pick, false);
                    s.abandon(id, now);
                    abandoned += (held_before - s.inflight_len() - s.queued_len()) as u64;
                }
                Op::TakeOutbox => {
                    let out = take(&mut s);
                    // Every PUBLISH with an id names an entry in flight, at most once each.
                    let mut seen = HashSet::new();
                    for o in &out {
                        if let Outbound::Publish(p) = o {
                            prop_assert_eq!(p.packet_id.is_some(), p.qos != QoS::AtMostOnce);
                            if let Some(id) = p.packet_id {
                                prop_assert!(seen.insert(id), "{:?} twice in one outbox", id);
                            }
                        }
                    }
                }
                Op::Disconnect => s.disconnect(),
                Op::Connect => s.connect(v5(receive_maximum), now),
                Op::Tick => now += Duration::from_secs(1),
            }

            // Ids in flight are unique (and non-zero by construction of PacketId).
            let ids: HashSet<u16> = s.inflight.iter().map(|f| f.id.get()).collect();
            prop_assert_eq!(ids.len(), s.inflight_len(), "duplicate ids: {:?}", inflight_ids(&s));
            // The window is never exceeded.
            prop_assert!(s.inflight_len() <= window, "{} in flight > {}", s.inflight_len(), window);
            // A connected session leaves nothing queued while it has room.
            if s.is_connected() {
                prop_assert!(s.queued_len() == 0 || s.inflight_len() == window);
            }
            // Queue bounds and byte accounting.
            prop_assert!(s.queued_len() <= max_queued_messages);
            prop_assert_eq!(s.queued_bytes, s.queue.iter().map(|p| p.msg.size()).sum::<usize>());
            // No expiry in this test, so nothing is dropped as expired.
            prop_assert_eq!(s.drops.expired, 0);
            // Conservation: every QoS 1/2 message is completed, abandoned, in flight, queued or
            // counted as dropped.
            let held = (s.inflight_len() + s.queued_len()) as u64;
            prop_assert_eq!(
                delivered,
                completed + abandoned + held + queue_full,
                "completed {} abandoned {} held {} queue_full {}",
                completed, abandoned, held, queue_full
            );
        }
    }
}

/// A repeated PUBREC for a message already at the PUBREL stage is answered with PUBREL again
/// (our PUBREL may have been lost or crossed it), not treated as unknown.
#[test]
fn repeated_pubrec_resends_pubrel() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let m = msg("a", "x");
    deliver(&mut s, &m, QoS::ExactlyOnce, t0);
    take(&mut s);
    s.handle_pubrec(pid(1), ReasonCode::SUCCESS, t0).unwrap();
    assert_eq!(
        take(&mut s),
        vec![Outbound::PubRel(pid(1), ReasonCode::SUCCESS)]
    );
    s.handle_pubrec(pid(1), ReasonCode::SUCCESS, t0).unwrap();
    assert_eq!(
        take(&mut s),
        vec![Outbound::PubRel(pid(1), ReasonCode::SUCCESS)]
    );
    s.handle_pubcomp(pid(1), t0).unwrap();
    assert_eq!(s.inflight_len(), 0);
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
