//! What the client sends us, as the state machine sees it: inbound QoS 2 packet ids
//! (exactly-once routing, our Receive Maximum), the order of acks in the outbox, and topic
//! aliases in both directions. Whole outboxes are compared.

#![allow(clippy::unwrap_used)]

use super::test_support::*;
use super::*;
use test_case::test_case;

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
    let mut out = std::collections::VecDeque::from([pubcomp(1, ReasonCode::SUCCESS)]);
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
