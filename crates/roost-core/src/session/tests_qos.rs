//! Outbound QoS flows of the session state machine: QoS 0 straight to the outbox (or dropped
//! and counted), the QoS 1 window and packet id allocation, the QoS 2 PUBREC/PUBREL/PUBCOMP
//! exchange, and `abandon`. Each test feeds inputs with an explicit `now` and compares the whole
//! outbox (`take_outbox`) and the drop counters (house style, conventions 1 and 10).

#![allow(clippy::unwrap_used)]

use super::test_support::*;
use super::*;
use test_case::test_case;

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

/// Acknowledgements of the wrong type for an id in flight are protocol errors (0x82, issue 7
/// item 13: the driver closes the connection) and change nothing; see `tests_handle` for
/// `handle`'s side.
#[test]
fn acks_for_the_wrong_stage_are_errors_and_change_nothing() {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let (a, b) = (msg("a", "qos2"), msg("a", "qos1"));
    deliver(&mut s, &a, QoS::ExactlyOnce, t0); // id 1
    deliver(&mut s, &b, QoS::AtLeastOnce, t0); // id 2
    assert_eq!(take(&mut s), vec![q2(&a, 1), q1(&b, 2)]);
    let wrong = Err(ReasonCode::PROTOCOL_ERROR);

    // PUBACK for a QoS 2 id, PUBCOMP before PUBREC.
    assert_eq!(s.handle_puback(pid(1), t0), wrong);
    assert_eq!(s.handle_pubcomp(pid(1), t0), wrong);
    // PUBCOMP or PUBREC for a QoS 1 id (no PUBREL 0x92: the id is known).
    assert_eq!(s.handle_pubcomp(pid(2), t0), wrong);
    assert_eq!(s.handle_pubrec(pid(2), ReasonCode::SUCCESS, t0), wrong);
    assert_eq!(take(&mut s), vec![]);
    assert_eq!(inflight_ids(&s), vec![1, 2]);

    // Now released: PUBACK for it is still wrong.
    assert_eq!(s.handle_pubrec(pid(1), ReasonCode::SUCCESS, t0), Ok(()));
    assert_eq!(take(&mut s), vec![pubrel(1, ReasonCode::SUCCESS)]);
    assert_eq!(s.handle_puback(pid(1), t0), wrong);
    assert_eq!(inflight_ids(&s), vec![1, 2]);

    // The right acks still work afterwards.
    assert_eq!(s.handle_pubcomp(pid(1), t0), Ok(()));
    assert_eq!(s.handle_puback(pid(2), t0), Ok(()));
    assert_eq!(s.inflight_len(), 0);
    assert_eq!(take(&mut s), vec![]);
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
