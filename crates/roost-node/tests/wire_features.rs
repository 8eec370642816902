//! Wire tests of the routing features: retained messages and the v5 subscription options
//! (retain handling, retain-as-published, no-local), overlapping subscriptions and
//! subscription identifiers, shared subscriptions, topic aliases in both directions, the
//! client's Maximum Packet Size, `$`-topics, and graceful shutdown.
#![allow(clippy::unwrap_used)]

use roost_codec::{
    Packet, Properties, Protocol, QoS, ReasonCode, RetainHandling, SubscriptionOptions,
};
use roost_testkit::*;
use std::collections::BTreeSet;
use std::time::Duration;

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

fn sub_id(id: u32) -> Properties {
    Properties {
        subscription_identifiers: vec![id],
        ..Properties::default()
    }
}

// --- retained messages ------------------------------------------------------------------------

#[tokio::test]
async fn retained_message_is_stored_sent_on_subscribe_and_cleared() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let topic = format!("rt/{protocol:?}/a");
        let filter = format!("rt/{protocol:?}/#");
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        let r = publ
            .publish(&topic, b"v1", QoS::AtLeastOnce, true)
            .await
            .unwrap();
        assert!(r == ReasonCode::SUCCESS || r == ReasonCode::NO_MATCHING_SUBSCRIBERS);

        let mut sub = connect_clean(node.addr(), protocol, "sub").await;
        let (ack, before) = sub.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
        assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
        assert!(before.is_empty(), "SUBACK goes first: {before:?}");
        let got = collect(&mut sub, SILENCE).await;
        assert_eq!(payloads(&got), ["v1"], "{protocol:?}");
        // [MQTT-3.3.1-9]: RETAIN=1 when sent because of a new subscription.
        assert!(got[0].retain);
        assert_eq!(got[0].topic, topic);
        assert_eq!(got[0].qos, QoS::AtLeastOnce);

        // A live retained publish reaches existing subscribers with RETAIN=0 ([MQTT-3.3.1-12]).
        publ.publish(&topic, b"v2", QoS::AtLeastOnce, true)
            .await
            .unwrap();
        let got = collect(&mut sub, SILENCE).await;
        assert_eq!(payloads(&got), ["v2"]);
        assert!(!got[0].retain);

        // Replaced: a new subscriber gets only v2.
        let mut sub2 = connect_clean(node.addr(), protocol, "sub2").await;
        sub2.subscribe(&filter, QoS::AtMostOnce).await.unwrap();
        let got = collect(&mut sub2, SILENCE).await;
        assert_eq!(payloads(&got), ["v2"]);
        assert_eq!(got[0].qos, QoS::AtMostOnce);
        sub2.disconnect().await.unwrap();

        // An empty retained payload clears it ([MQTT-3.3.1-10]) and is itself delivered.
        publ.publish(&topic, b"", QoS::AtLeastOnce, true)
            .await
            .unwrap();
        let got = collect(&mut sub, SILENCE).await;
        assert_eq!(payloads(&got), [""]);
        let mut sub3 = connect_clean(node.addr(), protocol, "sub3").await;
        sub3.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
        sub3.expect_silence(SILENCE).await.unwrap();
        for c in [sub, sub3, publ] {
            c.disconnect().await.unwrap();
        }
        wait_connections(&node, 0).await;
    }
}

#[tokio::test]
async fn retain_not_available_refuses_retained_publish() {
    let node = TestNode::start_with(|c| c.mqtt.retain_available = false)
        .await
        .unwrap();
    let mut c = connect_clean(node.addr(), Protocol::V5, "r").await;
    c.send(&publish_packet(
        "r/t",
        b"x",
        QoS::AtLeastOnce,
        true,
        Some(pid(1)),
        Properties::default(),
    ))
    .await
    .unwrap();
    expect_disconnect(&mut c, ReasonCode::RETAIN_NOT_SUPPORTED).await;
}

#[tokio::test]
async fn v5_retain_handling() {
    let node = TestNode::start().await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    publ.publish("rh/a", b"kept", QoS::AtLeastOnce, true)
        .await
        .unwrap();

    let with = |h| SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_handling: h,
        ..SubscriptionOptions::default()
    };
    // 0: on every SUBSCRIBE, new or repeated.
    let mut c0 = connect_clean(node.addr(), Protocol::V5, "c0").await;
    for _ in 0..2 {
        c0.subscribe_with(
            "rh/#",
            with(RetainHandling::SendAtSubscribe),
            Properties::default(),
        )
        .await
        .unwrap();
        assert_eq!(payloads(&collect(&mut c0, SILENCE).await), ["kept"]);
    }
    // 1: only when the subscription is new.
    let mut c1 = connect_clean(node.addr(), Protocol::V5, "c1").await;
    c1.subscribe_with(
        "rh/#",
        with(RetainHandling::SendIfNew),
        Properties::default(),
    )
    .await
    .unwrap();
    let got = collect(&mut c1, SILENCE).await;
    assert_eq!(payloads(&got), ["kept"]);
    assert!(got[0].retain);
    c1.subscribe_with(
        "rh/#",
        with(RetainHandling::SendIfNew),
        Properties::default(),
    )
    .await
    .unwrap();
    c1.expect_silence(SILENCE).await.unwrap();
    // 2: never.
    let mut c2 = connect_clean(node.addr(), Protocol::V5, "c2").await;
    c2.subscribe_with(
        "rh/#",
        with(RetainHandling::DoNotSend),
        Properties::default(),
    )
    .await
    .unwrap();
    c2.expect_silence(SILENCE).await.unwrap();
    // ... but live messages flow to all three.
    publ.publish("rh/a", b"live", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    for c in [&mut c0, &mut c1, &mut c2] {
        assert_eq!(payloads(&collect(c, SILENCE).await), ["live"]);
    }
}

#[tokio::test]
async fn v5_retain_as_published() {
    let node = TestNode::start().await.unwrap();
    let mut rap = connect_clean(node.addr(), Protocol::V5, "rap").await;
    let o = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_as_published: true,
        ..SubscriptionOptions::default()
    };
    rap.subscribe_with("rap/t", o, Properties::default())
        .await
        .unwrap();
    let mut plain = connect_clean(node.addr(), Protocol::V5, "plain").await;
    plain.subscribe("rap/t", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    publ.publish("rap/t", b"r", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    publ.publish("rap/t", b"n", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let got = collect(&mut rap, SILENCE).await;
    let flags: Vec<_> = got.iter().map(|p| (p.payload.to_vec(), p.retain)).collect();
    assert_eq!(flags, [(b"r".to_vec(), true), (b"n".to_vec(), false)]);
    let got = collect(&mut plain, SILENCE).await;
    let flags: Vec<_> = got.iter().map(|p| (p.payload.to_vec(), p.retain)).collect();
    assert_eq!(flags, [(b"r".to_vec(), false), (b"n".to_vec(), false)]);
}

#[tokio::test]
async fn v5_no_local() {
    let node = TestNode::start().await.unwrap();
    let mut me = connect_clean(node.addr(), Protocol::V5, "me").await;
    let o = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        ..SubscriptionOptions::default()
    };
    me.subscribe_with("nl/t", o, Properties::default())
        .await
        .unwrap();
    me.subscribe("echo/t", QoS::AtLeastOnce).await.unwrap();
    let mut other = connect_clean(node.addr(), Protocol::V5, "other").await;
    other.subscribe("nl/t", QoS::AtLeastOnce).await.unwrap();

    // Own message on a no-local subscription: not echoed; others get it.
    let r = me
        .publish("nl/t", b"mine", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(r, ReasonCode::SUCCESS);
    assert_eq!(payloads(&collect(&mut other, SILENCE).await), ["mine"]);
    me.expect_silence(SILENCE).await.unwrap();
    // Someone else's message on it: delivered.
    other
        .publish("nl/t", b"theirs", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(payloads(&collect(&mut me, SILENCE).await), ["theirs"]);
    // Own message on a normal subscription: echoed.
    me.publish("echo/t", b"echo", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(payloads(&collect(&mut me, SILENCE).await), ["echo"]);
}

// --- overlapping subscriptions ------------------------------------------------------------

#[tokio::test]
async fn v5_overlapping_subscriptions_deliver_once_with_all_identifiers() {
    let node = TestNode::start().await.unwrap();
    let mut c = connect_clean(node.addr(), Protocol::V5, "ov").await;
    c.subscribe_with("a/+", opts(QoS::AtLeastOnce), sub_id(1))
        .await
        .unwrap();
    c.subscribe_with("a/#", opts(QoS::ExactlyOnce), sub_id(2))
        .await
        .unwrap();
    c.subscribe("a/b", QoS::AtMostOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    publ.publish("a/b", b"x", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    let got = collect(&mut c, SILENCE).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
    assert_eq!(got[0].properties.subscription_identifiers, [1, 2]);

    // Only `a/#` matches `a`: one id.
    publ.publish("a", b"y", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let got = collect(&mut c, SILENCE).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert_eq!(got[0].properties.subscription_identifiers, [2]);
}

#[tokio::test]
async fn v311_overlapping_subscriptions_deliver_once_at_max_qos() {
    let node = TestNode::start().await.unwrap();
    let mut c = connect_clean(node.addr(), Protocol::V311, "ov").await;
    c.subscribe("a/+", QoS::AtLeastOnce).await.unwrap();
    c.subscribe("a/#", QoS::ExactlyOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V311, "pub").await;
    publ.publish("a/b", b"x", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    let got = collect(&mut c, SILENCE).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
}

#[tokio::test]
async fn subscription_identifiers_can_be_disabled() {
    let node = TestNode::start_with(|c| c.mqtt.subscription_identifiers = false)
        .await
        .unwrap();
    let mut c = connect_clean(node.addr(), Protocol::V5, "c").await;
    let packet_id = c.next_packet_id();
    c.send(&Packet::Subscribe(roost_codec::Subscribe {
        packet_id,
        properties: sub_id(1),
        filters: vec![("t".to_owned(), opts(QoS::AtMostOnce))],
    }))
    .await
    .unwrap();
    expect_disconnect(&mut c, ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED).await;
}

#[tokio::test]
async fn disabled_wildcards_and_shared_subscriptions_are_refused_in_suback() {
    let node = TestNode::start_with(|c| {
        c.mqtt.wildcard_subscriptions = false;
        c.mqtt.shared_subscriptions = false;
    })
    .await
    .unwrap();
    let mut c = connect_clean(node.addr(), Protocol::V5, "c").await;
    let (ack, _) = c.subscribe("a/+", QoS::AtMostOnce).await.unwrap();
    assert_eq!(
        ack.reason_codes,
        [ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED]
    );
    let (ack, _) = c.subscribe("$share/g/a", QoS::AtMostOnce).await.unwrap();
    assert_eq!(
        ack.reason_codes,
        [ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED]
    );
    let (ack, _) = c.subscribe("a/b", QoS::AtMostOnce).await.unwrap();
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_0]);
}

// --- shared subscriptions -------------------------------------------------------------------

fn numbers(ps: &[roost_codec::Publish]) -> Vec<u32> {
    payloads(ps).iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test]
async fn shared_subscription_splits_messages_without_duplicates() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let topic = format!("sh/{protocol:?}");
        let filter = format!("$share/g/{topic}");
        let mut m1 = connect_clean(node.addr(), protocol, "m1").await;
        let mut m2 = connect_clean(node.addr(), protocol, "m2").await;
        for m in [&mut m1, &mut m2] {
            let (ack, _) = m.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
            assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
        }
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        for i in 0..10 {
            publish_ok(&mut publ, &topic, i.to_string().as_bytes()).await;
        }
        let a = numbers(&collect(&mut m1, SILENCE).await);
        let b = numbers(&collect(&mut m2, SILENCE).await);
        assert_eq!(a.len() + b.len(), 10, "{protocol:?}: {a:?} {b:?}");
        let all: BTreeSet<u32> = a.iter().chain(&b).copied().collect();
        assert_eq!(all, (0..10).collect(), "{a:?} {b:?}");
        assert!(!a.is_empty() && !b.is_empty(), "{a:?} {b:?}");
        // Each member sees its share in publish order.
        assert!(a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]));

        // One member leaves (its session ends with the connection): the other gets everything.
        m1.disconnect().await.unwrap();
        wait_connections(&node, 2).await;
        for i in 10..20 {
            publish_ok(&mut publ, &topic, i.to_string().as_bytes()).await;
        }
        assert_eq!(
            numbers(&collect(&mut m2, SILENCE).await),
            (10..20).collect::<Vec<_>>()
        );
        for c in [m2, publ] {
            c.disconnect().await.unwrap();
        }
        wait_connections(&node, 0).await;
    }
}

#[tokio::test]
async fn shared_subscription_and_plain_subscription_both_receive() {
    let node = TestNode::start().await.unwrap();
    let mut shared = connect_clean(node.addr(), Protocol::V5, "shared").await;
    shared
        .subscribe("$share/g/sp/t", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut plain = connect_clean(node.addr(), Protocol::V5, "plain").await;
    plain.subscribe("sp/t", QoS::AtLeastOnce).await.unwrap();
    // A retained message is not sent on a shared subscription (MQTT 5.0 §4.8.2).
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    publ.publish("sp/t", b"1", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    assert_eq!(payloads(&collect(&mut shared, SILENCE).await), ["1"]);
    assert_eq!(payloads(&collect(&mut plain, SILENCE).await), ["1"]);
    let mut late = connect_clean(node.addr(), Protocol::V5, "late").await;
    late.subscribe("$share/h/sp/t", QoS::AtLeastOnce)
        .await
        .unwrap();
    late.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn queued_shared_messages_are_redistributed_when_a_member_session_ends() {
    let node = TestNode::start().await.unwrap();
    let filter = "$share/g/rd/t";
    for id in ["a", "b"] {
        let (mut m, _) = connect_persistent(node.addr(), Protocol::V5, id).await;
        m.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        m.disconnect().await.unwrap();
    }
    wait_connections(&node, 0).await;
    // Both members offline: the messages are queued, round-robin, in their sessions.
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    for i in 0..6 {
        publish_ok(&mut publ, "rd/t", i.to_string().as_bytes()).await;
    }
    let queued_a = http(&node, "GET", "/api/v1/clients/a", None).await.json()["queued"]
        .as_u64()
        .unwrap();
    assert!(
        queued_a > 0,
        "member a holds nothing: the test would prove nothing"
    );

    let (mut b, ack) = connect_persistent(node.addr(), Protocol::V5, "b").await;
    assert!(ack.session_present);
    let mut got = numbers(&collect(&mut b, SILENCE).await);
    assert_eq!(got.len() as u64, 6 - queued_a);

    // a comes back with Clean Start: its old session ends, and what it held goes to b.
    let (mut a, ack) = RawClient::connect(node.addr(), Protocol::V5, "a", true)
        .await
        .unwrap();
    assert!(!ack.session_present);
    got.extend(numbers(&collect(&mut b, SILENCE).await));
    got.sort_unstable();
    assert_eq!(got, (0..6).collect::<Vec<_>>());
    a.expect_silence(SILENCE).await.unwrap();
}

// --- topic aliases --------------------------------------------------------------------------

fn alias(a: u16) -> Properties {
    Properties {
        topic_alias: Some(a),
        ..Properties::default()
    }
}

#[tokio::test]
async fn inbound_topic_alias_is_set_then_used() {
    let node = TestNode::start().await.unwrap();
    let mut sub = connect_clean(node.addr(), Protocol::V5, "sub").await;
    sub.subscribe("al/#", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    let r = publish_with(&mut publ, "al/one", b"1", QoS::AtLeastOnce, false, alias(1)).await;
    assert_eq!(r, ReasonCode::SUCCESS);
    let r = publish_with(&mut publ, "", b"2", QoS::AtLeastOnce, false, alias(1)).await;
    assert_eq!(r, ReasonCode::SUCCESS);
    // Re-pointing alias 1 at another topic.
    publish_with(&mut publ, "al/two", b"3", QoS::AtLeastOnce, false, alias(1)).await;
    publish_with(&mut publ, "", b"4", QoS::AtLeastOnce, false, alias(1)).await;
    let got = collect(&mut sub, SILENCE).await;
    let seen: Vec<_> = got
        .iter()
        .map(|p| (p.topic.as_str(), &p.payload[..]))
        .collect();
    assert_eq!(
        seen,
        [
            ("al/one", &b"1"[..]),
            ("al/one", b"2"),
            ("al/two", b"3"),
            ("al/two", b"4")
        ]
    );
    // The subscriber asked for no aliases, so none are sent to it.
    assert!(got.iter().all(|p| p.properties.topic_alias.is_none()));
}

#[tokio::test]
async fn inbound_topic_alias_errors() {
    let node = TestNode::start_with(|c| c.mqtt.topic_alias_maximum = 4)
        .await
        .unwrap();
    // Above our Topic Alias Maximum: 0x94.
    let mut c = connect_clean(node.addr(), Protocol::V5, "c").await;
    c.send(&publish_packet(
        "t",
        b"x",
        QoS::AtMostOnce,
        false,
        None,
        alias(5),
    ))
    .await
    .unwrap();
    expect_disconnect(&mut c, ReasonCode::TOPIC_ALIAS_INVALID).await;
    // An alias that was never set, with an empty topic: protocol error.
    let mut c = connect_clean(node.addr(), Protocol::V5, "c").await;
    c.send(&publish_packet(
        "",
        b"x",
        QoS::AtMostOnce,
        false,
        None,
        alias(2),
    ))
    .await
    .unwrap();
    expect_disconnect(&mut c, ReasonCode::PROTOCOL_ERROR).await;
    // Aliases are per connection: a new connection does not inherit them.
    let mut c = connect_clean(node.addr(), Protocol::V5, "c").await;
    publish_with(&mut c, "t", b"x", QoS::AtLeastOnce, false, alias(1)).await;
    c.disconnect().await.unwrap();
    let mut c = connect_clean(node.addr(), Protocol::V5, "c").await;
    c.send(&publish_packet(
        "",
        b"x",
        QoS::AtMostOnce,
        false,
        None,
        alias(1),
    ))
    .await
    .unwrap();
    expect_disconnect(&mut c, ReasonCode::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn outbound_topic_aliases_when_the_client_accepts_them() {
    let node = TestNode::start().await.unwrap();
    let props = Properties {
        topic_alias_maximum: Some(1),
        ..Properties::default()
    };
    let (mut sub, _) = connect_with(node.addr(), connect_v5("sub", true, props)).await;
    sub.subscribe("oa/#", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    for (topic, payload) in [("oa/t", "1"), ("oa/t", "2"), ("oa/u", "3"), ("oa/t", "4")] {
        publ.publish(topic, payload.as_bytes(), QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    let got = collect(&mut sub, SILENCE).await;
    let seen: Vec<_> = got
        .iter()
        .map(|p| (p.topic.as_str(), p.properties.topic_alias))
        .collect();
    // First use: topic + alias; then the alias alone. With the maximum of 1 used up, another
    // topic goes out in full without an alias.
    assert_eq!(
        seen,
        [
            ("oa/t", Some(1)),
            ("", Some(1)),
            ("oa/u", None),
            ("", Some(1))
        ]
    );
    assert_eq!(payloads(&got), ["1", "2", "3", "4"]);
}

// --- the client's Maximum Packet Size ------------------------------------------------------

#[tokio::test]
async fn messages_larger_than_the_clients_maximum_packet_size_are_dropped_for_it() {
    let node = TestNode::start().await.unwrap();
    let props = Properties {
        maximum_packet_size: Some(100),
        ..Properties::default()
    };
    let (mut small, _) = connect_with(node.addr(), connect_v5("small", true, props)).await;
    small.subscribe("mp/t", QoS::AtLeastOnce).await.unwrap();
    let mut big = connect_clean(node.addr(), Protocol::V5, "big").await;
    big.subscribe("mp/t", QoS::AtLeastOnce).await.unwrap();
    let before = metric(&node, "roost_session_too_large_dropped_total").await;

    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    let large = vec![b'L'; 500];
    publ.publish("mp/t", &large, QoS::AtLeastOnce, false)
        .await
        .unwrap();
    publ.publish("mp/t", &large, QoS::AtMostOnce, false)
        .await
        .unwrap();
    publ.publish("mp/t", b"ok", QoS::AtLeastOnce, false)
        .await
        .unwrap();

    let got = collect(&mut small, SILENCE).await;
    assert_eq!(payloads(&got), ["ok"]);
    // The QoS 1 message that was dropped released its window slot: more still flow.
    publ.publish("mp/t", b"ok2", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(payloads(&collect(&mut small, SILENCE).await), ["ok2"]);
    // Other subscribers get everything.
    assert_eq!(collect(&mut big, SILENCE).await.len(), 4);
    let after = metric(&node, "roost_session_too_large_dropped_total").await;
    assert!(after - before >= 2.0, "{before} -> {after}");
}

// --- $-topics -------------------------------------------------------------------------------

/// Uses the paused clock so the 1 s `$SYS` interval ticks without waiting.
#[tokio::test(start_paused = true)]
async fn dollar_topics_are_not_publishable_and_not_matched_by_wildcards() {
    let node = TestNode::start_with(|c| c.node.sys_interval_secs = 1)
        .await
        .unwrap();
    let mut all = connect_clean(node.addr(), Protocol::V5, "all").await;
    all.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let mut plus = connect_clean(node.addr(), Protocol::V5, "plus").await;
    plus.subscribe("+/broker/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut sys = connect_clean(node.addr(), Protocol::V5, "sys").await;
    sys.subscribe("$SYS/#", QoS::AtLeastOnce).await.unwrap();

    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    let r = publ
        .publish("$SYS/x", b"fake", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(r, ReasonCode::TOPIC_NAME_INVALID);
    publ.send(&publish_packet(
        "$SYS/x",
        b"fake",
        QoS::ExactlyOnce,
        false,
        Some(pid(9)),
        Properties::default(),
    ))
    .await
    .unwrap();
    match publ.recv().await.unwrap() {
        Some(Packet::PubRec(a)) => assert_eq!(a.reason_code, ReasonCode::TOPIC_NAME_INVALID),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    let mut publ3 = connect_clean(node.addr(), Protocol::V311, "pub3").await;
    let r = publ3
        .publish("$SYS/x", b"fake", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(r, ReasonCode::SUCCESS);
    let r = publ3
        .publish("$SYS/x", b"fake", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    assert_eq!(r, ReasonCode::SUCCESS);
    publ.publish("normal/t", b"n", QoS::AtLeastOnce, false)
        .await
        .unwrap();

    // Several $SYS intervals pass ($SYS is QoS 0: nothing to acknowledge).
    let mut got = Vec::new();
    let window = tokio::time::timeout(Duration::from_millis(2500), async {
        loop {
            match sys.recv().await.unwrap() {
                Some(Packet::Publish(p)) => got.push(p),
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    });
    let _ = window.await;
    assert!(
        got.iter().any(|p| p.topic == "$SYS/broker/version"),
        "{got:?}"
    );
    assert!(
        got.iter().all(|p| p.topic.starts_with("$SYS/broker/")),
        "{got:?}"
    );
    let got = collect(&mut all, Duration::from_millis(2500)).await;
    assert_eq!(
        got.iter().map(|p| p.topic.as_str()).collect::<Vec<_>>(),
        ["normal/t"]
    );
    plus.expect_silence(Duration::from_millis(2500))
        .await
        .unwrap();
}

// --- shutdown ---------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_disconnects_every_client() {
    let node = TestNode::start().await.unwrap();
    let mut v5 = connect_clean(node.addr(), Protocol::V5, "v5").await;
    let mut v3 = connect_clean(node.addr(), Protocol::V311, "v3").await;
    let addr = node.addr();
    node.stop().await;
    expect_disconnect(&mut v5, ReasonCode::SERVER_SHUTTING_DOWN).await;
    expect_disconnect(&mut v3, ReasonCode::SERVER_SHUTTING_DOWN).await;
    // The listener is gone.
    assert!(RawClient::open(addr, Protocol::V5).await.is_err());
}

// --- more: unsubscribe, limits, properties, shared details, aliases vs. packet size -----------

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let mut c = connect_clean(node.addr(), protocol, "u").await;
        c.subscribe("un/t", QoS::AtLeastOnce).await.unwrap();
        let packet_id = c.next_packet_id();
        c.send(&Packet::Unsubscribe(roost_codec::Unsubscribe {
            packet_id,
            properties: Properties::default(),
            filters: vec!["un/t".to_owned(), "never/subscribed".to_owned()],
        }))
        .await
        .unwrap();
        match c.recv().await.unwrap() {
            Some(Packet::UnsubAck(a)) => {
                assert_eq!(a.packet_id, packet_id);
                match protocol {
                    Protocol::V5 => assert_eq!(
                        a.reason_codes,
                        [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
                    ),
                    Protocol::V311 => assert!(a.reason_codes.is_empty()),
                }
            }
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        publish_ok(&mut publ, "un/t", b"x").await;
        c.expect_silence(SILENCE).await.unwrap();
        let r = http(&node, "GET", "/api/v1/subscriptions", None).await;
        assert_eq!(r.json().as_array().unwrap().len(), 0);
        c.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
    }
}

#[tokio::test]
async fn topic_limits_refuse_filters_in_suback_and_names_with_disconnect() {
    let node = TestNode::start_with(|c| c.mqtt.max_topic_levels = 3)
        .await
        .unwrap();
    for protocol in BOTH {
        let mut c = connect_clean(node.addr(), protocol, "lim").await;
        let (ack, _) = c.subscribe("a/b/c/d", QoS::AtLeastOnce).await.unwrap();
        let refused = match protocol {
            Protocol::V5 => ReasonCode::TOPIC_FILTER_INVALID,
            Protocol::V311 => ReasonCode::UNSPECIFIED_ERROR,
        };
        assert_eq!(ack.reason_codes, [refused], "{protocol:?}");
        let (ack, _) = c.subscribe("a/b/c", QoS::AtLeastOnce).await.unwrap();
        assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
        c.send(&publish_packet(
            "a/b/c/d",
            b"x",
            QoS::AtMostOnce,
            false,
            None,
            Properties::default(),
        ))
        .await
        .unwrap();
        expect_disconnect(&mut c, ReasonCode::TOPIC_NAME_INVALID).await;
    }
}

#[tokio::test]
async fn v5_publish_properties_are_forwarded() {
    let node = TestNode::start().await.unwrap();
    let mut sub5 = connect_clean(node.addr(), Protocol::V5, "sub5").await;
    sub5.subscribe("pp/t", QoS::AtLeastOnce).await.unwrap();
    let mut sub3 = connect_clean(node.addr(), Protocol::V311, "sub3").await;
    sub3.subscribe("pp/t", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    let props = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".to_owned()),
        response_topic: Some("pp/reply".to_owned()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        user_properties: vec![
            ("a".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned()),
        ],
        ..Properties::default()
    };
    publish_with(
        &mut publ,
        "pp/t",
        b"{}",
        QoS::AtLeastOnce,
        false,
        props.clone(),
    )
    .await;
    let got = collect(&mut sub5, SILENCE).await;
    assert_eq!(got.len(), 1);
    let p = &got[0].properties;
    assert_eq!(p.payload_format_indicator, props.payload_format_indicator);
    assert_eq!(p.content_type, props.content_type);
    assert_eq!(p.response_topic, props.response_topic);
    assert_eq!(p.correlation_data, props.correlation_data);
    assert_eq!(p.user_properties, props.user_properties);
    assert_eq!(p.topic_alias, None);
    assert_eq!(p.message_expiry_interval, None);
    let got = collect(&mut sub3, SILENCE).await;
    assert_eq!(got[0].properties, Properties::default());
}

#[tokio::test]
async fn shared_subscription_prefers_a_member_with_room() {
    let node = TestNode::start().await.unwrap();
    let props = Properties {
        receive_maximum: Some(1),
        ..Properties::default()
    };
    let (mut slow, _) = connect_with(node.addr(), connect_v5("slow", true, props)).await;
    slow.subscribe("$share/g/pr/t", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut fast = connect_clean(node.addr(), Protocol::V5, "fast").await;
    fast.subscribe("$share/g/pr/t", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    for i in 0..6 {
        publish_ok(&mut publ, "pr/t", i.to_string().as_bytes()).await;
    }
    // The slow member never acks: it holds exactly one message, the other five go elsewhere.
    let first = recv_publish(&mut slow).await;
    slow.expect_silence(SILENCE).await.unwrap();
    let mut all = numbers(&collect(&mut fast, SILENCE).await);
    assert_eq!(all.len(), 5, "{all:?}");
    all.extend(numbers(&[first]));
    all.sort_unstable();
    assert_eq!(all, (0..6).collect::<Vec<_>>());
}

#[tokio::test]
async fn unacked_shared_message_goes_to_another_member_when_the_session_ends() {
    let node = TestNode::start().await.unwrap();
    let mut m1 = connect_clean(node.addr(), Protocol::V5, "m1").await;
    m1.subscribe("$share/g/ia/t", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    publish_ok(&mut publ, "ia/t", b"orphan").await;
    let p = recv_publish(&mut m1).await;
    assert_eq!(&p.payload[..], b"orphan");
    let mut m2 = connect_clean(node.addr(), Protocol::V5, "m2").await;
    m2.subscribe("$share/g/ia/t", QoS::AtLeastOnce)
        .await
        .unwrap();
    // m1 goes away without PUBACK; its session (expiry 0) ends: MQTT 5.0 §4.8.2 says the message
    // SHOULD go to another member.
    drop(m1);
    let got = collect(&mut m2, SILENCE).await;
    assert_eq!(payloads(&got), ["orphan"]);
}

#[tokio::test]
async fn outbound_topic_alias_never_exceeds_the_clients_maximum_packet_size() {
    let node = TestNode::start().await.unwrap();
    let props = Properties {
        maximum_packet_size: Some(100),
        topic_alias_maximum: Some(5),
        ..Properties::default()
    };
    let (mut sub, _) = connect_with(node.addr(), connect_v5("sub", true, props)).await;
    sub.subscribe("sz/t", QoS::AtMostOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    // A QoS 0 PUBLISH to "sz/t" without properties: 1 + 1 + (2 + 4) + 1 + payload bytes. With
    // 91 bytes of payload it is exactly 100 bytes; the Topic Alias property (3 more bytes) must
    // not push it over the client's limit ([MQTT-3.1.2-24]).
    let payload = vec![b'p'; 91];
    let plain = publish_packet(
        "sz/t",
        &payload,
        QoS::AtMostOnce,
        false,
        None,
        Properties::default(),
    );
    assert_eq!(roost_codec::encoded_len(&plain, Protocol::V5), 100);
    for _ in 0..2 {
        publ.publish("sz/t", &payload, QoS::AtMostOnce, false)
            .await
            .unwrap();
    }
    publ.publish("sz/t", b"small", QoS::AtMostOnce, false)
        .await
        .unwrap();
    let got = collect(&mut sub, SILENCE).await;
    for p in &got {
        let size = roost_codec::encoded_len(&Packet::Publish(p.clone()), Protocol::V5);
        assert!(
            size <= 100,
            "sent a {size}-byte PUBLISH to a client with maximum 100: {p:?}"
        );
    }
    // Whatever was sent must be decodable by the client: an alias without a topic only after
    // the alias was defined.
    let mut known = std::collections::HashMap::new();
    for p in &got {
        match (p.topic.as_str(), p.properties.topic_alias) {
            ("", Some(a)) => assert!(known.contains_key(&a), "alias {a} used before defined"),
            (t, Some(a)) => {
                known.insert(a, t.to_owned());
            }
            (_, None) => {}
        }
    }
    assert_eq!(got.last().map(|p| &p.payload[..]), Some(&b"small"[..]));
}

/// Paused clock: retained messages expire too, and carry their remaining interval.
#[tokio::test(start_paused = true)]
async fn retained_message_expiry() {
    let node = TestNode::start().await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    let props = Properties {
        message_expiry_interval: Some(10),
        ..Properties::default()
    };
    publish_with(&mut publ, "rx/t", b"fresh", QoS::AtLeastOnce, true, props).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut a = connect_clean(node.addr(), Protocol::V5, "a").await;
    a.subscribe("rx/t", QoS::AtLeastOnce).await.unwrap();
    let got = collect(&mut a, SILENCE).await;
    assert_eq!(payloads(&got), ["fresh"]);
    assert_eq!(got[0].properties.message_expiry_interval, Some(6));
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut b = connect_clean(node.addr(), Protocol::V5, "b").await;
    b.subscribe("rx/t", QoS::AtLeastOnce).await.unwrap();
    b.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn retained_will_is_stored() {
    let node = TestNode::start().await.unwrap();
    let mut connect = roost_testkit::connect_packet(Protocol::V311, "rw", true);
    let mut w = will("rw/status", b"offline", Properties::default());
    w.retain = true;
    connect.will = Some(w);
    let (c, _) = connect_with(node.addr(), connect).await;
    drop(c);
    wait_connections(&node, 0).await;
    let mut late = connect_clean(node.addr(), Protocol::V5, "late").await;
    late.subscribe("rw/#", QoS::AtLeastOnce).await.unwrap();
    let got = collect(&mut late, SILENCE).await;
    assert_eq!(payloads(&got), ["offline"]);
    assert!(got[0].retain);
}

#[tokio::test]
async fn resubscribing_replaces_the_subscription() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let mut c = connect_clean(node.addr(), protocol, "re").await;
        c.subscribe("re/t", QoS::AtMostOnce).await.unwrap();
        let (ack, _) = c.subscribe("re/t", QoS::ExactlyOnce).await.unwrap();
        assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_2]);
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        publ.publish("re/t", b"x", QoS::ExactlyOnce, false)
            .await
            .unwrap();
        let got = collect(&mut c, SILENCE).await;
        assert_eq!(got.len(), 1, "{protocol:?}");
        assert_eq!(got[0].qos, QoS::ExactlyOnce);
        let r = http(&node, "GET", "/api/v1/subscriptions", None).await;
        assert_eq!(r.json().as_array().unwrap().len(), 1);
        c.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
    }
}

/// Paused clock: the leader removes expired retained messages from the replicated state (they
/// were already hidden from subscribers); a retained message without expiry stays.
#[tokio::test(start_paused = true)]
async fn expired_retained_messages_are_purged_from_the_replicated_state() {
    let node = TestNode::start().await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    let props = Properties {
        message_expiry_interval: Some(2),
        ..Properties::default()
    };
    publish_with(
        &mut publ,
        "purge/short",
        b"x",
        QoS::AtLeastOnce,
        true,
        props,
    )
    .await;
    publish_with(
        &mut publ,
        "purge/keep",
        b"y",
        QoS::AtLeastOnce,
        true,
        Properties::default(),
    )
    .await;
    let retained = |v: serde_json::Value| v["retained"].as_u64().unwrap();
    let r = http(&node, "GET", "/api/v1/cluster", None).await;
    assert_eq!(retained(r.json()), 2);
    // The purge runs every 30 s on the leader.
    tokio::time::sleep(Duration::from_secs(65)).await;
    let r = http(&node, "GET", "/api/v1/cluster", None).await;
    assert_eq!(retained(r.json()), 1);
}
