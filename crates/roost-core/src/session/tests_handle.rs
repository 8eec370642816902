//! `Session::handle` tests: one packet in, the exact `Handled` and outbox out (house style,
//! conventions 1 and 10). Time is `t0 + n seconds`.

#![allow(clippy::unwrap_used)]

use super::test_support::*;
use super::*;
use crate::connect::ServerPolicy;
use crate::message::PassThrough;
use bytes::Bytes;
use roost_codec::{
    Connect, DecodeError, Disconnect, Publish, Subscribe, SubscriptionOptions, Unsubscribe,
};
use test_case::test_case;

fn publish(topic: &str, qos: QoS, id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id.map(pid),
        properties: Properties::default(),
        payload: Bytes::from_static(b"hi"),
    }
}

fn ack(kind: fn(Ack) -> Packet, id: u16, reason: ReasonCode) -> Packet {
    let mut a = Ack::new(pid(id));
    a.reason_code = reason;
    kind(a)
}

/// The message `handle` builds for a PUBLISH "hi" from c1 at `now`.
fn from_c1(topic: &str, qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: name(topic),
        payload: Bytes::from_static(b"hi"),
        qos,
        retain: false,
        properties: PassThrough::default(),
        expires_at: None,
        id: 0,
        publisher: Some("c1".into()),
        entered: None,
    })
}

/// `Session::handle`, with the id of a message it builds set to 0 and its entry time taken
/// out: ids are unique per message (see `message::next_id`), a client's message entered the
/// node at the packet's `now`, and these tests compare what else the message holds.
fn handle(s: &mut Session, packet: Packet, now: Instant) -> Handled {
    match s.handle(packet, now) {
        Handled::Publish(mut inbound) => {
            assert_ne!(inbound.msg.id, 0, "a client's message gets an id");
            assert_eq!(
                inbound.msg.entered,
                Some(crate::message::Entered::Local(now)),
                "a client's message entered the node when its packet was handled"
            );
            let m = Arc::make_mut(&mut inbound.msg);
            m.id = 0;
            m.entered = None;
            Handled::Publish(inbound)
        }
        other => other,
    }
}

fn pending(kind: AckKind, id: u16, protocol: Protocol) -> Option<PendingAck> {
    Some(PendingAck {
        kind,
        packet_id: pid(id),
        protocol,
    })
}

fn close(reason: ReasonCode, why: &'static str) -> Handled {
    Handled::Close(Close::error(reason, why))
}

#[test]
fn qos0_publish_is_routed_without_ack() {
    let t0 = Instant::now();
    let mut s = attached(Protocol::V5, t0);
    let p = publish("a/b", QoS::AtMostOnce, None);
    assert_eq!(
        handle(&mut s, Packet::Publish(p), t0),
        Handled::Publish(Inbound {
            msg: from_c1("a/b", QoS::AtMostOnce),
            ack: None
        })
    );
    assert_eq!(take(&mut s), vec![]);
}

#[test]
fn publish_properties_and_expiry_carry_into_the_message() {
    let t0 = Instant::now();
    let mut s = attached(Protocol::V5, t0);
    let mut p = publish("a/b", QoS::AtLeastOnce, Some(7));
    p.properties.message_expiry_interval = Some(30);
    p.properties.content_type = Some("json".into());
    let Handled::Publish(inbound) = handle(&mut s, Packet::Publish(p), secs(t0, 1)) else {
        panic!("not routed");
    };
    let mut want = (*from_c1("a/b", QoS::AtLeastOnce)).clone();
    want.expires_at = Some(secs(t0, 31));
    want.properties.content_type = Some("json".into());
    assert_eq!(*inbound.msg, want);
    assert_eq!(inbound.ack, pending(AckKind::PubAck, 7, Protocol::V5));
}

// (protocol, retain_failed, matched) -> reason
#[test_case(Protocol::V5, false, true => ReasonCode::SUCCESS; "v5 delivered")]
#[test_case(Protocol::V5, false, false => ReasonCode::NO_MATCHING_SUBSCRIBERS; "v5 nobody")]
#[test_case(Protocol::V5, true, false => ReasonCode::UNSPECIFIED_ERROR; "v5 retain failed wins")]
#[test_case(Protocol::V311, true, false => ReasonCode::SUCCESS; "v3 always success")]
fn ack_reason_for_outcome(protocol: Protocol, retain_failed: bool, matched: bool) -> ReasonCode {
    let a = PendingAck {
        kind: AckKind::PubRec,
        packet_id: pid(3),
        protocol,
    };
    let outcome = PublishOutcome {
        retain_failed,
        matched,
        ..PublishOutcome::default()
    };
    let reason = outcome.reason(protocol);
    assert_eq!(a.packet(outcome), ack(Packet::PubRec, 3, reason));
    reason
}

#[test]
fn qos2_flow_routes_once_and_completes_on_pubrel() {
    let t0 = Instant::now();
    let mut s = attached(Protocol::V5, t0);
    let p = publish("a", QoS::ExactlyOnce, Some(5));
    assert_eq!(
        handle(&mut s, Packet::Publish(p.clone()), t0),
        Handled::Publish(Inbound {
            msg: from_c1("a", QoS::ExactlyOnce),
            ack: pending(AckKind::PubRec, 5, Protocol::V5),
        })
    );
    // The DUP repeat before PUBREL: PUBREC again, nothing routed.
    assert_eq!(
        handle(&mut s, Packet::Publish(p), t0),
        Handled::Ack(ReadyAck {
            ack: pending(AckKind::PubRec, 5, Protocol::V5).unwrap(),
            reason: ReasonCode::SUCCESS
        })
    );
    assert_eq!(
        handle(&mut s, Packet::PubRel(Ack::new(pid(5))), t0),
        Handled::Done
    );
    assert_eq!(
        handle(&mut s, Packet::PubRel(Ack::new(pid(5))), t0),
        Handled::Done
    );
    assert_eq!(
        take(&mut s),
        vec![
            Outbound::PubComp(pid(5), ReasonCode::SUCCESS),
            Outbound::PubComp(pid(5), ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
        ]
    );
}

#[test_case(ServerPolicy { max_qos: QoS::AtLeastOnce, ..ServerPolicy::default() }, publish("a", QoS::ExactlyOnce, Some(1))
    => close(ReasonCode::QOS_NOT_SUPPORTED, "qos_not_supported"); "qos over maximum")]
#[test_case(ServerPolicy { retain_available: false, ..ServerPolicy::default() }, Publish { retain: true, ..publish("a", QoS::AtMostOnce, None) }
    => Handled::Close(Close { tally: Some(Tally::RetainDropped), ..Close::error(ReasonCode::RETAIN_NOT_SUPPORTED, "retain_not_supported") }); "retain unavailable")]
#[test_case(ServerPolicy::default(), publish("a/+", QoS::AtMostOnce, None)
    => close(ReasonCode::TOPIC_NAME_INVALID, "bad_topic"); "wildcard in topic")]
#[test_case(ServerPolicy::default(), { let mut p = publish("a", QoS::AtMostOnce, None); p.properties.topic_alias = Some(65); p }
    => close(ReasonCode::TOPIC_ALIAS_INVALID, "bad_topic"); "alias over maximum")]
#[test_case(ServerPolicy::default(), { let mut p = publish("", QoS::AtMostOnce, None); p.properties.topic_alias = Some(1); p }
    => close(ReasonCode::PROTOCOL_ERROR, "bad_topic"); "unknown alias")]
fn publish_that_closes(policy: ServerPolicy, p: Publish) -> Handled {
    let t0 = Instant::now();
    let mut s = attached_with(policy, &connect_packet(Protocol::V5, true, 0), t0);
    handle(&mut s, Packet::Publish(p), t0)
}

#[test]
fn qos2_beyond_receive_maximum_closes() {
    let t0 = Instant::now();
    let policy = ServerPolicy {
        receive_maximum: 1,
        ..ServerPolicy::default()
    };
    let mut s = attached_with(policy, &connect_packet(Protocol::V5, true, 0), t0);
    let first = handle(
        &mut s,
        Packet::Publish(publish("a", QoS::ExactlyOnce, Some(1))),
        t0,
    );
    assert!(matches!(first, Handled::Publish(_)));
    assert_eq!(
        handle(
            &mut s,
            Packet::Publish(publish("a", QoS::ExactlyOnce, Some(2))),
            t0
        ),
        close(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED, "receive_maximum")
    );
}

#[test]
fn alias_learned_then_applied() {
    let t0 = Instant::now();
    let mut s = attached(Protocol::V5, t0);
    let mut p = publish("a/b", QoS::AtMostOnce, None);
    p.properties.topic_alias = Some(3);
    let mut again = publish("", QoS::AtMostOnce, None);
    again.properties.topic_alias = Some(3);
    let want = Handled::Publish(Inbound {
        msg: from_c1("a/b", QoS::AtMostOnce),
        ack: None,
    });
    assert_eq!(handle(&mut s, Packet::Publish(p), t0), want);
    assert_eq!(handle(&mut s, Packet::Publish(again), t0), want);
}

// (protocol, qos, id) -> (Handled, PUBCOMP reason for a PUBREL of id 1 afterwards)
#[test_case(Protocol::V5, QoS::AtMostOnce, None => (None, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND); "v5 qos0")]
#[test_case(Protocol::V5, QoS::AtLeastOnce, Some(1) => (Some(ack(Packet::PubAck, 1, ReasonCode::TOPIC_NAME_INVALID)), ReasonCode::PACKET_IDENTIFIER_NOT_FOUND); "v5 qos1")]
#[test_case(Protocol::V5, QoS::ExactlyOnce, Some(1) => (Some(ack(Packet::PubRec, 1, ReasonCode::TOPIC_NAME_INVALID)), ReasonCode::PACKET_IDENTIFIER_NOT_FOUND); "v5 qos2 refused")]
#[test_case(Protocol::V311, QoS::AtLeastOnce, Some(1) => (Some(ack(Packet::PubAck, 1, ReasonCode::SUCCESS)), ReasonCode::SUCCESS); "v3 qos1")]
#[test_case(Protocol::V311, QoS::ExactlyOnce, Some(1) => (Some(ack(Packet::PubRec, 1, ReasonCode::SUCCESS)), ReasonCode::SUCCESS); "v3 qos2 handshake completes")]
fn system_topic_is_dropped(
    protocol: Protocol,
    qos: QoS,
    id: Option<u16>,
) -> (Option<Packet>, ReasonCode) {
    let t0 = Instant::now();
    let mut s = attached(protocol, t0);
    let Handled::Dropped { reason, ack } =
        handle(&mut s, Packet::Publish(publish("$SYS/x", qos, id)), t0)
    else {
        panic!("not dropped");
    };
    assert_eq!(reason, DropReason::SystemTopic);
    let ack = ack.map(|a| a.packet());
    assert_eq!(
        handle(&mut s, Packet::PubRel(Ack::new(pid(1))), t0),
        Handled::Done
    );
    let [Outbound::PubComp(_, comp)] = take(&mut s)[..] else {
        panic!("no PUBCOMP");
    };
    (ack, comp)
}

#[test]
fn pingreq_answers_in_the_outbox() {
    let t0 = Instant::now();
    let mut s = attached(Protocol::V311, t0);
    assert_eq!(handle(&mut s, Packet::PingReq, t0), Handled::Done);
    assert_eq!(
        take(&mut s),
        vec![Outbound::Packet(Box::new(Packet::PingResp))]
    );
}

#[test]
fn acks_free_the_window_and_unknown_ids_are_reported() {
    let t0 = Instant::now();
    let c = Connect {
        properties: Properties {
            receive_maximum: Some(1),
            ..Properties::default()
        },
        ..connect_packet(Protocol::V5, true, 0)
    };
    let mut s = attached_with(ServerPolicy::default(), &c, t0);
    let (m1, m2) = (msg("a", "1"), msg("a", "2"));
    s.deliver(m1.clone(), QoS::AtLeastOnce, false, vec![], None, t0);
    s.deliver(m2.clone(), QoS::AtLeastOnce, false, vec![], None, t0);
    let out = |m: &Arc<Message>, id| {
        Outbound::Publish(OutPublish {
            msg: m.clone(),
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(id)),
            dup: false,
            retain: false,
            subscription_ids: vec![],
        })
    };
    assert_eq!(take(&mut s), vec![out(&m1, 1)]);
    assert_eq!(
        handle(&mut s, Packet::PubAck(Ack::new(pid(9))), t0),
        Handled::UnknownPacketId {
            kind: "puback",
            packet_id: pid(9)
        }
    );
    assert_eq!(
        handle(&mut s, Packet::PubAck(Ack::new(pid(1))), t0),
        Handled::Done
    );
    assert_eq!(take(&mut s), vec![out(&m2, 2)]);
    // A late PUBCOMP for a flow that is over (id 2 is in flight, but as a QoS 1 message: that
    // would be a protocol error, see `item13_...` below).
    assert_eq!(
        handle(&mut s, Packet::PubComp(Ack::new(pid(1))), t0),
        Handled::UnknownPacketId {
            kind: "pubcomp",
            packet_id: pid(1)
        }
    );
    // An unknown PUBREC is answered with PUBREL 0x92 in v5 and reported.
    assert_eq!(
        handle(&mut s, Packet::PubRec(Ack::new(pid(4))), t0),
        Handled::UnknownPacketId {
            kind: "pubrec",
            packet_id: pid(4)
        }
    );
    assert_eq!(
        take(&mut s),
        vec![Outbound::PubRel(
            pid(4),
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        )]
    );
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

fn subscribe(filters: &[(&str, QoS)], identifier: Option<u32>) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(4),
        properties: Properties {
            subscription_identifiers: identifier.into_iter().collect(),
            ..Properties::default()
        },
        filters: filters
            .iter()
            .map(|(f, q)| ((*f).into(), opts(*q)))
            .collect(),
    })
}

#[test]
fn subscribe_entries_follow_the_policy() {
    let t0 = Instant::now();
    let policy = ServerPolicy {
        max_qos: QoS::AtLeastOnce,
        shared_subscriptions: false,
        wildcard_subscriptions: false,
        ..ServerPolicy::default()
    };
    let mut s = attached_with(policy, &connect_packet(Protocol::V5, true, 0), t0);
    let packet = subscribe(
        &[
            ("a/b", QoS::ExactlyOnce),
            ("a/#/b", QoS::AtMostOnce),
            ("$share/g/a", QoS::AtMostOnce),
            ("a/+", QoS::AtMostOnce),
            ("c", QoS::AtMostOnce),
        ],
        Some(12),
    );
    let sub = |qos| Subscription {
        options: opts(qos),
        identifier: Some(12),
    };
    let want = SubscribeRequest {
        packet_id: pid(4),
        identifier: Some(12),
        entries: vec![
            Ok((filter("a/b"), sub(QoS::AtLeastOnce))),
            Err(ReasonCode::TOPIC_FILTER_INVALID),
            Err(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
            Err(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED),
            Ok((filter("c"), sub(QoS::AtMostOnce))),
        ],
    };
    assert_eq!(handle(&mut s, packet, t0), Handled::Subscribe(want.clone()));
    let codes = want.codes();
    assert_eq!(
        codes,
        vec![
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
            ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            ReasonCode::GRANTED_QOS_0,
        ]
    );
    s.reply(suback(pid(4), codes.clone()));
    assert_eq!(
        take(&mut s),
        vec![Outbound::Packet(Box::new(Packet::SubAck(
            roost_codec::SubAck {
                packet_id: pid(4),
                properties: Properties::default(),
                reason_codes: codes,
            }
        )))]
    );
}

#[test]
fn subscription_identifier_when_off_closes() {
    let t0 = Instant::now();
    let policy = ServerPolicy {
        subscription_identifiers: false,
        ..ServerPolicy::default()
    };
    let mut s = attached_with(policy, &connect_packet(Protocol::V5, true, 0), t0);
    assert_eq!(
        handle(&mut s, subscribe(&[("a", QoS::AtMostOnce)], Some(1)), t0),
        close(
            ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            "subscription_identifiers"
        )
    );
}

#[test]
fn unsubscribe_checks_each_filter() {
    let t0 = Instant::now();
    let mut s = attached(Protocol::V5, t0);
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(8),
        properties: Properties::default(),
        filters: vec!["a/+".into(), "a/#/b".into()],
    });
    assert_eq!(
        handle(&mut s, packet, t0),
        Handled::Unsubscribe {
            packet_id: pid(8),
            filters: vec![Ok(filter("a/+")), Err(ReasonCode::TOPIC_FILTER_INVALID)],
        }
    );
    assert_eq!(
        unsuback(pid(8), vec![ReasonCode::NO_SUBSCRIPTION_EXISTED]),
        Packet::UnsubAck(roost_codec::UnsubAck {
            packet_id: pid(8),
            properties: Properties::default(),
            reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        })
    );
}

// (expiry at CONNECT, DISCONNECT reason, its Session Expiry Interval) -> (close, expiry after)
#[test_case(0, ReasonCode::SUCCESS, None => (Close { reason: None, will: false, ..Close::error(ReasonCode::SUCCESS, "client_disconnect") }, 0); "normal, will discarded")]
#[test_case(0, ReasonCode::DISCONNECT_WITH_WILL, None => (Close { reason: None, will: true, ..Close::error(ReasonCode::SUCCESS, "client_disconnect") }, 0); "with will")]
#[test_case(0, ReasonCode::SUCCESS, Some(60) => (Close::error(ReasonCode::PROTOCOL_ERROR, "protocol_error"), 0); "expiry from zero is a protocol error")]
#[test_case(30, ReasonCode::SUCCESS, Some(0) => (Close { reason: None, will: false, ..Close::error(ReasonCode::SUCCESS, "client_disconnect") }, 0); "expiry set to zero")]
#[test_case(30, ReasonCode::SUCCESS, Some(u32::MAX) => (Close { reason: None, will: false, ..Close::error(ReasonCode::SUCCESS, "client_disconnect") }, 3600); "expiry capped")]
fn disconnect(expiry: u32, reason: ReasonCode, new: Option<u32>) -> (Close, u32) {
    let t0 = Instant::now();
    let policy = ServerPolicy {
        max_session_expiry_interval: 3600,
        ..ServerPolicy::default()
    };
    let mut s = attached_with(policy, &connect_packet(Protocol::V5, true, expiry), t0);
    let d = Disconnect {
        reason_code: reason,
        properties: Properties {
            session_expiry_interval: new,
            ..Properties::default()
        },
    };
    let Handled::Close(c) = handle(&mut s, Packet::Disconnect(d), t0) else {
        panic!("not closed");
    };
    (c, s.expiry_interval())
}

#[test_case(Packet::PingResp; "pingresp")]
#[test_case(Packet::ConnAck(roost_codec::ConnAck::default()); "connack")]
#[test_case(Packet::Auth(roost_codec::Auth::default()); "auth")]
fn packets_a_client_may_not_send_close(p: Packet) {
    let t0 = Instant::now();
    let mut s = attached(Protocol::V5, t0);
    assert_eq!(
        handle(&mut s, p, t0),
        Handled::Close(Close {
            tally: Some(Tally::Malformed),
            ..Close::error(ReasonCode::PROTOCOL_ERROR, "protocol_error")
        })
    );
}

#[test]
fn malformed_close_carries_the_decoder_error() {
    let e = DecodeError::UnsupportedProtocolVersion(9);
    let c = Close::malformed(&e);
    assert_eq!(
        c,
        Close {
            reason: Some(e.reason_code()),
            why: "malformed",
            will: true,
            detail: Some(Detail::ReasonString(e.to_string().into())),
            tally: Some(Tally::Malformed),
        }
    );
    assert_eq!(
        c.disconnect_packet(Protocol::V5),
        Some(Packet::Disconnect(Disconnect {
            reason_code: e.reason_code(),
            properties: Properties {
                reason_string: Some(e.to_string()),
                ..Properties::default()
            },
        }))
    );
    assert_eq!(c.disconnect_packet(Protocol::V311), None);
    assert_eq!(Close::closed("eof").disconnect_packet(Protocol::V5), None);
}

#[test_case(ReasonCode::SESSION_TAKEN_OVER => "taken_over")]
#[test_case(ReasonCode::SERVER_SHUTTING_DOWN => "shutdown")]
#[test_case(ReasonCode::ADMINISTRATIVE_ACTION => "kicked")]
#[test_case(ReasonCode::SERVER_BUSY => "server_disconnect")]
fn server_close_labels(reason: ReasonCode) -> &'static str {
    Close::server(reason).why
}

/// A draining node names the node to use instead (MQTT 5.0 §4.11): v5 gets 0x9C with the
/// Server Reference, v3.1.1 no DISCONNECT at all; counted as a shutdown.
#[test]
fn use_another_server_names_the_node_to_v5_clients_only() {
    let c = Close::use_another_server("roost-1.roost-headless:1883".to_owned());
    assert_eq!(c.why, "shutdown");
    assert!(c.will);
    assert_eq!(
        c.disconnect_packet(Protocol::V5),
        Some(Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::USE_ANOTHER_SERVER,
            properties: Properties {
                server_reference: Some("roost-1.roost-headless:1883".to_owned()),
                ..Properties::default()
            },
        }))
    );
    assert_eq!(c.disconnect_packet(Protocol::V311), None);
    let plain = Close::server(ReasonCode::SERVER_SHUTTING_DOWN);
    assert!(matches!(
        plain.disconnect_packet(Protocol::V5),
        Some(Packet::Disconnect(d)) if d.properties.server_reference.is_none()
    ));
}

// (filter, retain handling, new) -> sends retained
#[test_case("a", RetainHandlingCase::At, false => true)]
#[test_case("a", RetainHandlingCase::IfNew, true => true)]
#[test_case("a", RetainHandlingCase::IfNew, false => false)]
#[test_case("a", RetainHandlingCase::Never, true => false)]
#[test_case("$share/g/a", RetainHandlingCase::At, true => false)]
fn retained_sent_on_subscribe(f: &str, h: RetainHandlingCase, new: bool) -> bool {
    let retain_handling = match h {
        RetainHandlingCase::At => roost_codec::RetainHandling::SendAtSubscribe,
        RetainHandlingCase::IfNew => roost_codec::RetainHandling::SendIfNew,
        RetainHandlingCase::Never => roost_codec::RetainHandling::DoNotSend,
    };
    let sub = Subscription {
        options: SubscriptionOptions {
            retain_handling,
            ..SubscriptionOptions::default()
        },
        identifier: None,
    };
    retained_on_subscribe(&filter(f), &sub, new)
}

#[derive(Debug)]
enum RetainHandlingCase {
    At,
    IfNew,
    Never,
}

/// The close for an acknowledgement of the wrong type ([MQTT-4.8.0-1], [MQTT-4.13.1-1]).
fn wrong_ack_close() -> Handled {
    Handled::Close(Close {
        tally: Some(Tally::Malformed),
        ..Close::error(ReasonCode::PROTOCOL_ERROR, "protocol_error")
    })
}

/// Issue 7, item 13: an acknowledgement of the wrong type for a packet id that *is* in flight
/// (PUBREC or PUBCOMP for a QoS 1 message, PUBACK or PUBCOMP where a QoS 2 flow waits for
/// PUBREC, PUBACK where it waits for PUBCOMP) is a protocol error: the connection closes with
/// 0x82 and the message stays in flight, untouched. (An id with nothing in flight is only
/// reported, see `acks_free_the_window_and_unknown_ids_are_reported`.)
// (the in-flight message's QoS, whether its PUBREC already came, the ack sent)
#[test_case(QoS::AtLeastOnce, false, Packet::PubComp ; "pubcomp for qos 1")]
#[test_case(QoS::AtLeastOnce, false, Packet::PubRec ; "pubrec for qos 1")]
#[test_case(QoS::ExactlyOnce, false, Packet::PubAck ; "puback for qos 2 awaiting pubrec")]
#[test_case(QoS::ExactlyOnce, false, Packet::PubComp ; "pubcomp for qos 2 awaiting pubrec")]
#[test_case(QoS::ExactlyOnce, true, Packet::PubAck ; "puback for qos 2 awaiting pubcomp")]
fn item13_ack_of_the_wrong_type_for_an_id_in_flight_is_a_protocol_error(
    qos: QoS,
    released: bool,
    kind: fn(Ack) -> Packet,
) {
    let t0 = Instant::now();
    for protocol in [Protocol::V5, Protocol::V311] {
        let mut s = attached(protocol, t0);
        let m = msg("a", "1");
        s.deliver(m.clone(), qos, false, vec![], None, t0);
        take(&mut s);
        if released {
            assert_eq!(
                handle(&mut s, Packet::PubRec(Ack::new(pid(1))), t0),
                Handled::Done
            );
            assert_eq!(take(&mut s), vec![pubrel(1, ReasonCode::SUCCESS)]);
        }
        assert_eq!(
            handle(&mut s, kind(Ack::new(pid(1))), secs(t0, 1)),
            wrong_ack_close(),
            "{protocol:?}"
        );
        // Nothing answered (no PUBREL 0x92 for a PUBREC), nothing freed.
        assert_eq!(take(&mut s), vec![], "{protocol:?}");
        assert_eq!(inflight_ids(&s), vec![1], "{protocol:?}");
    }
}

/// Issue 7, item 13, the lenient side: acknowledgements for an id with nothing in flight (a
/// late repeat after the flow completed, or an id never used) are only reported, as Mosquitto
/// does; the connection stays.
#[test]
fn item13_acks_for_ids_not_in_flight_are_only_reported() {
    let t0 = Instant::now();
    let mut s = attached(Protocol::V5, t0);
    let (m1, m2) = (msg("a", "1"), msg("a", "2"));
    s.deliver(m1, QoS::AtLeastOnce, false, vec![], None, t0); // id 1
    s.deliver(m2, QoS::ExactlyOnce, false, vec![], None, t0); // id 2
    take(&mut s);
    assert_eq!(
        handle(&mut s, Packet::PubAck(Ack::new(pid(1))), t0),
        Handled::Done
    );
    assert_eq!(
        handle(&mut s, Packet::PubRec(Ack::new(pid(2))), t0),
        Handled::Done
    );
    assert_eq!(
        handle(&mut s, Packet::PubComp(Ack::new(pid(2))), t0),
        Handled::Done
    );
    assert_eq!(take(&mut s), vec![pubrel(2, ReasonCode::SUCCESS)]);
    for (packet, kind, id) in [
        (Packet::PubAck(Ack::new(pid(1))), "puback", 1),
        (Packet::PubComp(Ack::new(pid(1))), "pubcomp", 1),
        (Packet::PubAck(Ack::new(pid(2))), "puback", 2),
        (Packet::PubComp(Ack::new(pid(2))), "pubcomp", 2),
        (Packet::PubComp(Ack::new(pid(9))), "pubcomp", 9),
    ] {
        assert_eq!(
            handle(&mut s, packet, t0),
            Handled::UnknownPacketId {
                kind,
                packet_id: pid(id)
            }
        );
    }
    assert_eq!(take(&mut s), vec![]);
    assert_eq!(s.inflight_len(), 0);
}

/// Issue 7, item 5: a PUBREC with a failure reason (here 0x80: the retained copy could not be
/// stored) ends the QoS 2 flow ([MQTT-4.3.3-9]): once the node has sent it, the packet id is
/// released, the next PUBLISH with that id is a new message (routed), and a PUBREL for it is
/// unknown. A PUBREC below 0x80 (0x00, 0x10) keeps the id until the PUBREL.
// (PUBREC reason) -> the id is released
#[test_case(ReasonCode::UNSPECIFIED_ERROR => true ; "0x80 releases")]
#[test_case(ReasonCode::TOPIC_NAME_INVALID => true ; "0x90 releases")]
#[test_case(ReasonCode::SUCCESS => false ; "0x00 keeps")]
#[test_case(ReasonCode::NO_MATCHING_SUBSCRIBERS => false ; "0x10 keeps")]
fn item5_pubrec_with_a_failure_reason_releases_the_packet_id(reason: ReasonCode) -> bool {
    let t0 = Instant::now();
    let policy = ServerPolicy {
        receive_maximum: 1,
        ..ServerPolicy::default()
    };
    let mut s = attached_with(policy, &connect_packet(Protocol::V5, true, 0), t0);
    let p = publish("a", QoS::ExactlyOnce, Some(5));
    let routed = Handled::Publish(Inbound {
        msg: from_c1("a", QoS::ExactlyOnce),
        ack: pending(AckKind::PubRec, 5, Protocol::V5),
    });
    assert_eq!(handle(&mut s, Packet::Publish(p.clone()), t0), routed);
    let sent = ReadyAck {
        ack: pending(AckKind::PubRec, 5, Protocol::V5).unwrap(),
        reason,
    };
    s.ack_sent(&sent);

    let again = handle(&mut s, Packet::Publish(p), t0);
    let released = again == routed;
    if !released {
        // Still registered: the repeat gets PUBREC 0x00 and is not routed.
        assert_eq!(
            again,
            Handled::Ack(ReadyAck {
                ack: sent.ack,
                reason: ReasonCode::SUCCESS
            })
        );
    }
    // The inbound window (Receive Maximum 1) holds only the new flow: another id is refused,
    // and the PUBREL of the new flow completes it.
    assert_eq!(
        handle(
            &mut s,
            Packet::Publish(publish("a", QoS::ExactlyOnce, Some(6))),
            t0
        ),
        close(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED, "receive_maximum")
    );
    assert_eq!(
        handle(&mut s, Packet::PubRel(Ack::new(pid(5))), t0),
        Handled::Done
    );
    assert_eq!(take(&mut s), vec![pubcomp(5, ReasonCode::SUCCESS)]);
    // The node asks the session only about the acks that end a flow.
    assert_eq!(sent.ends_qos2_flow(), released);
    released
}

/// Issue 7, item 5: only a failed PUBREC ends a flow; PUBACKs (QoS 1 keeps no id) and a
/// PUBREC for an id the session does not hold change nothing.
#[test]
fn item5_other_acks_sent_release_nothing() {
    let t0 = Instant::now();
    let mut s = attached(Protocol::V5, t0);
    let p = publish("a", QoS::ExactlyOnce, Some(5));
    assert!(matches!(
        handle(&mut s, Packet::Publish(p.clone()), t0),
        Handled::Publish(_)
    ));
    for (kind, id, reason) in [
        (AckKind::PubAck, 5, ReasonCode::UNSPECIFIED_ERROR),
        (AckKind::PubRec, 5, ReasonCode::SUCCESS),
        (AckKind::PubRec, 6, ReasonCode::UNSPECIFIED_ERROR),
    ] {
        let ack = ReadyAck {
            ack: pending(kind, id, Protocol::V5).unwrap(),
            reason,
        };
        assert!(!ack.ends_qos2_flow() || id == 6);
        s.ack_sent(&ack);
    }
    assert!(matches!(
        handle(&mut s, Packet::Publish(p), t0),
        Handled::Ack(_)
    ));
}

/// Issue 7 item 9: a v3.1.1 QoS 2 PUBLISH the node did not take (its retained copy failed) is
/// not acknowledged; its id is released, so the client's resend after reconnecting is routed.
#[test]
fn item9_v3_publish_not_taken_releases_its_qos2_id() {
    let t0 = Instant::now();
    let mut s = attached_with(
        ServerPolicy::default(),
        &connect_packet(Protocol::V311, false, 0),
        t0,
    );
    let p = publish("a", QoS::ExactlyOnce, Some(5));
    let routed = Handled::Publish(Inbound {
        msg: from_c1("a", QoS::ExactlyOnce),
        ack: pending(AckKind::PubRec, 5, Protocol::V311),
    });
    assert_eq!(handle(&mut s, Packet::Publish(p.clone()), t0), routed);
    let Handled::Publish(Inbound { ack: Some(ack), .. }) = routed.clone() else {
        unreachable!()
    };
    s.not_taken(&ReadyAck {
        ack,
        reason: ReasonCode::SUCCESS,
    });
    let mut resend = p;
    resend.dup = true;
    assert_eq!(handle(&mut s, Packet::Publish(resend), t0), routed);
}

/// Issue 7 item 18: subscriptions per session are capped (`max_subscriptions`): a new filter
/// beyond the cap gets 0x97; a filter the session has, or one repeated in the same SUBSCRIBE,
/// does not count twice.
#[test]
fn item18_subscriptions_per_session_are_capped() {
    let t0 = Instant::now();
    let policy = ServerPolicy {
        max_subscriptions: 2,
        ..ServerPolicy::default()
    };
    let mut s = attached_with(policy, &connect_packet(Protocol::V5, true, 0), t0);
    s.add_subscription(
        filter("have"),
        Subscription {
            options: opts(QoS::AtMostOnce),
            identifier: None,
        },
    );
    let packet = subscribe(
        &[
            ("a", QoS::AtMostOnce),
            ("a", QoS::AtLeastOnce),
            ("have", QoS::AtMostOnce),
            ("b", QoS::AtMostOnce),
        ],
        None,
    );
    let Handled::Subscribe(req) = handle(&mut s, packet, t0) else {
        panic!("not a subscribe");
    };
    assert_eq!(
        req.codes(),
        vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::QUOTA_EXCEEDED,
        ]
    );
}

/// Issue 9: a bridge's 3.1.1 SUBSCRIBE gets No Local and Retain As Published (its CONNECT
/// asked for them with the level's top bit); a shared one only Retain As Published (No Local
/// is not for shared subscriptions, [MQTT-3.8.3-4]). A plain 3.1.1 client gets neither.
#[test]
fn a_bridge_subscribes_with_no_local_and_retain_as_published() {
    let t0 = Instant::now();
    let mut c = connect_packet(Protocol::V311, true, 0);
    c.variant.bridge = true;
    let mut s = attached_with(ServerPolicy::default(), &c, t0);
    let packet = subscribe(
        &[("a/#", QoS::AtLeastOnce), ("$share/g/b", QoS::AtLeastOnce)],
        None,
    );
    let Handled::Subscribe(req) = handle(&mut s, packet, t0) else {
        panic!("not a subscribe");
    };
    let options: Vec<_> = req
        .entries
        .iter()
        .map(|e| {
            e.as_ref()
                .map(|(_, sub)| (sub.options.no_local, sub.options.retain_as_published))
        })
        .collect();
    assert_eq!(options, [Ok((true, true)), Ok((false, true))]);

    let mut plain = attached_with(
        ServerPolicy::default(),
        &connect_packet(Protocol::V311, true, 0),
        t0,
    );
    let packet = subscribe(&[("a/#", QoS::AtLeastOnce)], None);
    let Handled::Subscribe(req) = handle(&mut plain, packet, t0) else {
        panic!("not a subscribe");
    };
    let (_, sub) = req.entries[0].as_ref().unwrap();
    assert!(!sub.options.no_local && !sub.options.retain_as_published);
}
