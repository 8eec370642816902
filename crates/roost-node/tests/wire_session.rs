//! Wire tests of sessions that outlive a connection: offline queueing and its bounds, DUP
//! redelivery, QoS 2 resumption, clean start, message and session expiry, keep-alive, wills
//! and takeover.
//!
//! Timer-driven tests run with `start_paused = true`: tokio's clock only moves when every task
//! is idle, and then jumps to the next timer, so "10 s of silence" costs no wall time. The node
//! reads time through tokio (`roost_node::now`), so message and session expiry follow the same
//! clock. This works with real loopback sockets because a write to a loopback socket is
//! readable by the peer as soon as `write` returns, so a runtime waiting on a reply is never
//! "idle" before the reply exists.
#![allow(clippy::unwrap_used)]

use roost_codec::{
    Ack, ConnAck, Connect, Disconnect, Packet, Properties, Protocol, QoS, ReasonCode,
};
use roost_testkit::*;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// --- persistent sessions ------------------------------------------------------------------

#[tokio::test]
async fn offline_messages_are_delivered_in_order_on_resume() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let (mut sub, ack) = connect_persistent(node.addr(), protocol, "ps").await;
        assert!(!ack.session_present);
        sub.subscribe("ps/t", QoS::AtLeastOnce).await.unwrap();
        sub.disconnect().await.unwrap();
        wait_connections(&node, 0).await;

        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        for m in ["m1", "m2", "m3"] {
            // The offline session counts as a subscriber.
            let r = publ
                .publish("ps/t", m.as_bytes(), QoS::AtLeastOnce, false)
                .await
                .unwrap();
            assert_eq!(r, ReasonCode::SUCCESS);
        }
        // QoS 0 is not kept for an offline session.
        publ.publish("ps/t", b"q0", QoS::AtMostOnce, false)
            .await
            .unwrap();

        let (mut sub, ack) = connect_persistent(node.addr(), protocol, "ps").await;
        assert!(ack.session_present, "{protocol:?}");
        let got = collect(&mut sub, SILENCE).await;
        assert_eq!(payloads(&got), ["m1", "m2", "m3"], "{protocol:?}");
        assert!(got
            .iter()
            .all(|p| p.qos == QoS::AtLeastOnce && !p.dup && p.topic == "ps/t"));

        // The subscription survived: live messages flow too.
        publish_ok(&mut publ, "ps/t", b"live").await;
        assert_eq!(payloads(&collect(&mut sub, SILENCE).await), ["live"]);

        // Clean up for the next protocol: end the session.
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
        let _ = connect_clean(node.addr(), protocol, "ps").await;
    }
}

#[tokio::test]
async fn unacked_publish_is_resent_with_dup_after_reconnect() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let id = format!("dup-{protocol:?}");
        let (mut sub, _) = connect_persistent(node.addr(), protocol, &id).await;
        let topic = format!("dup/{protocol:?}");
        sub.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        publish_ok(&mut publ, &topic, b"unacked").await;
        publ.disconnect().await.unwrap();
        let first = recv_publish(&mut sub).await;
        assert!(!first.dup);
        // Drop the socket without PUBACK or DISCONNECT.
        drop(sub);
        wait_connections(&node, 0).await;

        let (mut sub, ack) = connect_persistent(node.addr(), protocol, &id).await;
        assert!(ack.session_present);
        let again = recv_publish(&mut sub).await;
        assert!(again.dup, "{protocol:?}: redelivery must set DUP");
        assert_eq!(again.packet_id, first.packet_id);
        assert_eq!(again.payload, first.payload);
        assert_eq!(again.qos, QoS::AtLeastOnce);
        sub.send(&Packet::PubAck(Ack::new(again.packet_id.unwrap())))
            .await
            .unwrap();
        sub.expect_silence(SILENCE).await.unwrap();
        // Acked now: a further reconnect resends nothing.
        sub.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
        let (mut sub, _) = connect_persistent(node.addr(), protocol, &id).await;
        sub.expect_silence(SILENCE).await.unwrap();
    }
}

#[tokio::test]
async fn qos2_at_pubrel_stage_resumes_with_pubrel() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let id = format!("rel-{protocol:?}");
        let topic = format!("rel/{protocol:?}");
        let (mut sub, _) = connect_persistent(node.addr(), protocol, &id).await;
        sub.subscribe(&topic, QoS::ExactlyOnce).await.unwrap();
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        let r = publ
            .publish(&topic, b"x", QoS::ExactlyOnce, false)
            .await
            .unwrap();
        assert_eq!(r, ReasonCode::SUCCESS);
        publ.disconnect().await.unwrap();

        let p = recv_publish(&mut sub).await;
        let pid = p.packet_id.unwrap();
        sub.send(&Packet::PubRec(Ack::new(pid))).await.unwrap();
        match sub.recv().await.unwrap() {
            Some(Packet::PubRel(a)) => assert_eq!(a.packet_id, pid),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        // Gone before PUBCOMP.
        sub.disconnect().await.unwrap();
        wait_connections(&node, 0).await;

        let (mut sub, ack) = connect_persistent(node.addr(), protocol, &id).await;
        assert!(ack.session_present);
        // [MQTT-4.4.0-1]: the PUBREL is resent, the PUBLISH is not.
        match sub.recv().await.unwrap() {
            Some(Packet::PubRel(a)) => assert_eq!(a.packet_id, pid, "{protocol:?}"),
            other => panic!("{protocol:?}: expected PUBREL, got {other:?}"),
        }
        sub.send(&Packet::PubComp(Ack::new(pid))).await.unwrap();
        sub.expect_silence(SILENCE).await.unwrap();
    }
}

#[tokio::test]
async fn clean_start_discards_the_session() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let (mut sub, _) = connect_persistent(node.addr(), protocol, "cs").await;
        sub.subscribe("cs/t", QoS::AtLeastOnce).await.unwrap();
        sub.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        publish_ok(&mut publ, "cs/t", b"lost").await;

        let (mut sub, ack) = RawClient::connect(node.addr(), protocol, "cs", true)
            .await
            .unwrap();
        assert!(!ack.session_present, "{protocol:?}");
        sub.expect_silence(SILENCE).await.unwrap();
        // The subscription went with the session.
        let r = publ
            .publish("cs/t", b"x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if protocol == Protocol::V5 {
            assert_eq!(r, ReasonCode::NO_MATCHING_SUBSCRIBERS);
        }
        sub.expect_silence(SILENCE).await.unwrap();
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
    }
}

#[tokio::test]
async fn v5_session_expiry_zero_ends_the_session_at_disconnect() {
    let node = TestNode::start().await.unwrap();
    // v5 Clean Start 0 but no Session Expiry Interval: the session ends with the connection.
    let (mut sub, _) = RawClient::connect(node.addr(), Protocol::V5, "e0", false)
        .await
        .unwrap();
    sub.subscribe("e0/t", QoS::AtLeastOnce).await.unwrap();
    sub.disconnect().await.unwrap();
    wait_connections(&node, 0).await;
    let (_sub, ack) = RawClient::connect(node.addr(), Protocol::V5, "e0", false)
        .await
        .unwrap();
    assert!(!ack.session_present);
}

#[tokio::test]
async fn v5_disconnect_can_set_session_expiry() {
    let node = TestNode::start().await.unwrap();
    // Connected with expiry 300; DISCONNECT sets it to 0: the session ends.
    let (mut c, _) = connect_persistent(node.addr(), Protocol::V5, "dx").await;
    c.subscribe("dx/t", QoS::AtLeastOnce).await.unwrap();
    let d = Disconnect {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    };
    c.send(&Packet::Disconnect(d)).await.unwrap();
    assert!(c.expect_closed().await.unwrap().is_empty());
    wait_connections(&node, 0).await;
    let (_c, ack) = connect_persistent(node.addr(), Protocol::V5, "dx").await;
    assert!(!ack.session_present);

    // [MQTT-3.14.2-2]: connected with expiry 0, DISCONNECT may not raise it.
    let mut c = connect_clean(node.addr(), Protocol::V5, "dy").await;
    let d = Disconnect {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties {
            session_expiry_interval: Some(60),
            ..Properties::default()
        },
    };
    c.send(&Packet::Disconnect(d)).await.unwrap();
    expect_disconnect(&mut c, ReasonCode::PROTOCOL_ERROR).await;
}

// --- queue bounds ---------------------------------------------------------------------------

async fn queue_bound_case(drop_newest: bool, expected: [&str; 3]) {
    let node = TestNode::start_with(|c| {
        c.mqtt.max_queued_messages = 3;
        if drop_newest {
            c.mqtt.queue_drop = roost_node::config::QueueDrop::Newest;
        }
    })
    .await
    .unwrap();
    for protocol in BOTH {
        let id = format!("qb-{protocol:?}");
        let topic = format!("qb/{protocol:?}");
        let (mut sub, _) = connect_persistent(node.addr(), protocol, &id).await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        sub.disconnect().await.unwrap();
        wait_connections(&node, 0).await;

        let before = metric(&node, "roost_session_queue_dropped_total").await;
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        for i in 1..=6 {
            publish_ok(&mut publ, &topic, format!("m{i}").as_bytes()).await;
        }
        let after = metric(&node, "roost_session_queue_dropped_total").await;
        assert!(after - before >= 3.0, "dropped counter {before} -> {after}");

        let (mut sub, ack) = connect_persistent(node.addr(), protocol, &id).await;
        assert!(ack.session_present);
        assert_eq!(
            payloads(&collect(&mut sub, SILENCE).await),
            expected,
            "{protocol:?}"
        );
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
    }
}

#[tokio::test]
async fn full_queue_drops_oldest() {
    queue_bound_case(false, ["m4", "m5", "m6"]).await;
}

#[tokio::test]
async fn full_queue_drops_newest() {
    queue_bound_case(true, ["m1", "m2", "m3"]).await;
}

#[tokio::test]
async fn queue_bytes_bound() {
    // 3 messages of ~100 bytes fit in 350 bytes, the 4th does not (topic "qb" + payload).
    let node = TestNode::start_with(|c| c.mqtt.max_queued_bytes = 350)
        .await
        .unwrap();
    let (mut sub, _) = connect_persistent(node.addr(), Protocol::V5, "qbytes").await;
    sub.subscribe("qb", QoS::AtLeastOnce).await.unwrap();
    sub.disconnect().await.unwrap();
    wait_connections(&node, 0).await;
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    for i in 1..=4u8 {
        let payload = vec![b'0' + i; 100];
        publish_ok(&mut publ, "qb", &payload).await;
    }
    let (mut sub, _) = connect_persistent(node.addr(), Protocol::V5, "qbytes").await;
    let got = collect(&mut sub, SILENCE).await;
    let firsts: Vec<u8> = got.iter().map(|p| p.payload[0]).collect();
    assert_eq!(firsts, b"234");
}

// --- message and session expiry (paused clock) ----------------------------------------------

#[tokio::test(start_paused = true)]
async fn expired_queued_messages_are_not_delivered() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let id = format!("mx-{protocol:?}");
        let topic = format!("mx/{protocol:?}");
        let (mut sub, _) = connect_persistent(node.addr(), protocol, &id).await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        sub.disconnect().await.unwrap();
        wait_connections(&node, 0).await;

        let before = metric(&node, "roost_session_expired_messages_dropped_total").await;
        let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
        for (payload, expiry) in [("short", 2), ("long", 60)] {
            let props = Properties {
                message_expiry_interval: Some(expiry),
                ..Properties::default()
            };
            let r = publish_with(
                &mut publ,
                &topic,
                payload.as_bytes(),
                QoS::AtLeastOnce,
                false,
                props,
            )
            .await;
            assert_eq!(r, ReasonCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;

        let (mut sub, _) = connect_persistent(node.addr(), protocol, &id).await;
        let got = collect(&mut sub, SILENCE).await;
        assert_eq!(payloads(&got), ["long"], "{protocol:?}");
        let left = got[0].properties.message_expiry_interval;
        match protocol {
            // [MQTT-3.3.2-6]: the remaining interval, 60 - 5 (rounded up).
            Protocol::V5 => assert!(matches!(left, Some(l) if l > 50 && l <= 55), "{left:?}"),
            Protocol::V311 => assert_eq!(left, None),
        }
        assert!(metric(&node, "roost_session_expired_messages_dropped_total").await > before);
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
    }
}

#[tokio::test(start_paused = true)]
async fn v5_session_expires_after_its_interval() {
    let node = TestNode::start().await.unwrap();
    let connect = || {
        let props = Properties {
            session_expiry_interval: Some(2),
            ..Properties::default()
        };
        connect_v5("sx", false, props)
    };
    let (mut c, ack) = connect_with(node.addr(), connect()).await;
    assert!(!ack.session_present);
    c.subscribe("sx/t", QoS::AtLeastOnce).await.unwrap();
    c.disconnect().await.unwrap();
    wait_connections(&node, 0).await;

    // Back within the interval: the session is there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c, ack) = connect_with(node.addr(), connect()).await;
    assert!(ack.session_present);
    c.disconnect().await.unwrap();
    wait_connections(&node, 0).await;

    // Away longer than the interval: it is gone, subscription included.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut c, ack) = connect_with(node.addr(), connect()).await;
    assert!(!ack.session_present);
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    let r = publ
        .publish("sx/t", b"x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(r, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    c.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn max_session_expiry_caps_v5_and_v311_sessions() {
    let node = TestNode::start_with(|c| c.mqtt.max_session_expiry_interval = 2)
        .await
        .unwrap();
    for protocol in BOTH {
        let (c, ack) = connect_persistent(node.addr(), protocol, "cap").await;
        if protocol == Protocol::V5 {
            assert_eq!(ack.properties.session_expiry_interval, Some(2));
        }
        c.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (c, ack) = connect_persistent(node.addr(), protocol, "cap").await;
        assert!(!ack.session_present, "{protocol:?}");
        // End it for the next round.
        c.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

// --- keep-alive (paused clock) ----------------------------------------------------------------

fn connect_with_will(
    protocol: Protocol,
    id: &str,
    keep_alive: u16,
    will_props: Properties,
) -> Connect {
    let mut c = connect_packet(protocol, id, true);
    c.keep_alive = keep_alive;
    c.will = Some(will(&format!("will/{id}"), b"gone", will_props));
    c
}

async fn watcher(node: &TestNode, filter: &str) -> RawClient {
    let mut w = connect_clean(node.addr(), Protocol::V5, "watcher").await;
    w.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    w
}

/// The close a keep-alive timeout makes, seen by the client and by a watcher of `will/#`:
/// within `within`, v5 gets DISCONNECT 0x8D and then the end of the stream, v3.1.1 just the
/// end ([MQTT-3.1.2-22]); then the will of `connect_with_will` arrives at the watcher.
async fn expect_keep_alive_close(
    c: &mut RawClient,
    protocol: Protocol,
    within: Duration,
    watcher: &mut RawClient,
    id: &str,
) {
    let got = c.recv_within(within).await.unwrap();
    match protocol {
        Protocol::V5 => {
            assert!(
                matches!(&got, Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT),
                "{got:?}"
            );
            assert!(c.expect_closed().await.unwrap().is_empty());
        }
        Protocol::V311 => assert_eq!(got, None),
    }
    let will = watcher.next_publish().await.unwrap();
    assert_eq!(will.topic, format!("will/{id}"));
    assert_eq!(&will.payload[..], b"gone");
}

/// Connects `id` with [`connect_with_will`]'s will (no will properties).
async fn connect_will(
    node: &TestNode,
    protocol: Protocol,
    id: &str,
    keep_alive: u16,
) -> (RawClient, ConnAck) {
    connect_with(
        node.addr(),
        connect_with_will(protocol, id, keep_alive, Properties::default()),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn keep_alive_timeout_closes_and_publishes_the_will() {
    let node = TestNode::start().await.unwrap();
    let mut w = watcher(&node, "will/#").await;
    for protocol in BOTH {
        let id = format!("ka-{protocol:?}");
        let (mut c, ack) = connect_will(&node, protocol, &id, 2).await;
        assert_eq!(ack.properties.server_keep_alive, None);
        // 1.5 x keep-alive = 3 s of silence is allowed ([MQTT-3.1.2-22]).
        c.expect_silence(ms(2900)).await.unwrap();
        expect_keep_alive_close(&mut c, protocol, ms(200), &mut w, &id).await;
    }
}

#[tokio::test(start_paused = true)]
async fn pingreq_keeps_the_connection_alive() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let mut connect = connect_packet(protocol, "pinger", true);
        connect.keep_alive = 2;
        let (mut c, _) = connect_with(node.addr(), connect).await;
        for _ in 0..5 {
            tokio::time::sleep(ms(2500)).await;
            c.send(&Packet::PingReq).await.unwrap();
            assert_eq!(c.recv().await.unwrap(), Some(Packet::PingResp));
        }
        // 12.5 s later, still up; any packet counts, not only PINGREQ.
        tokio::time::sleep(ms(2500)).await;
        c.subscribe("ka/t", QoS::AtMostOnce).await.unwrap();
        c.expect_silence(ms(2900)).await.unwrap();
        expect_disconnect(&mut c, ReasonCode::KEEP_ALIVE_TIMEOUT).await;
    }
}

#[tokio::test(start_paused = true)]
async fn server_keep_alive_overrides_the_clients() {
    let node = TestNode::start_with(|c| c.mqtt.server_keep_alive = Some(5))
        .await
        .unwrap();
    let (mut c, ack) = RawClient::connect(node.addr(), Protocol::V5, "ska", true)
        .await
        .unwrap();
    assert_eq!(ack.properties.server_keep_alive, Some(5));
    c.expect_silence(ms(7400)).await.unwrap();
    let got = c.recv_within(ms(200)).await.unwrap();
    assert!(
        matches!(&got, Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT),
        "{got:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn keep_alive_zero_and_max_keep_alive() {
    // Default max_keep_alive (65535): keep-alive 0 means none at all.
    let node = TestNode::start().await.unwrap();
    let mut connect = connect_packet(Protocol::V5, "forever", true);
    connect.keep_alive = 0;
    let (mut c, ack) = connect_with(node.addr(), connect).await;
    assert_eq!(ack.properties.server_keep_alive, None);
    c.expect_silence(Duration::from_secs(3600)).await.unwrap();

    // max_keep_alive 10: 0 and 60 are both lowered to 10 and the client is told.
    let node = TestNode::start_with(|c| c.mqtt.max_keep_alive = 10)
        .await
        .unwrap();
    for asked in [0, 60] {
        let mut connect = connect_packet(Protocol::V5, "capped", true);
        connect.keep_alive = asked;
        let (mut c, ack) = connect_with(node.addr(), connect).await;
        assert_eq!(ack.properties.server_keep_alive, Some(10), "asked {asked}");
        c.expect_silence(ms(14_900)).await.unwrap();
        expect_disconnect(&mut c, ReasonCode::KEEP_ALIVE_TIMEOUT).await;
    }
}

// --- wills ----------------------------------------------------------------------------------

#[tokio::test]
async fn will_is_published_on_abrupt_close() {
    let node = TestNode::start().await.unwrap();
    let mut w = watcher(&node, "will/#").await;
    for protocol in BOTH {
        let id = format!("abrupt-{protocol:?}");
        let (c, _) = connect_will(&node, protocol, &id, 60).await;
        drop(c);
        let will = w.next_publish().await.unwrap();
        assert_eq!(will.topic, format!("will/{id}"));
        assert_eq!(will.qos, QoS::AtLeastOnce);
    }
}

#[tokio::test]
async fn will_is_not_published_on_normal_disconnect() {
    let node = TestNode::start().await.unwrap();
    let mut w = watcher(&node, "will/#").await;
    for protocol in BOTH {
        let id = format!("polite-{protocol:?}");
        let (c, _) = connect_will(&node, protocol, &id, 60).await;
        c.disconnect().await.unwrap();
        wait_connections(&node, 1).await;
    }
    w.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn v5_disconnect_with_will_publishes_it() {
    let node = TestNode::start().await.unwrap();
    let mut w = watcher(&node, "will/#").await;
    let (mut c, _) = connect_with(
        node.addr(),
        connect_with_will(Protocol::V5, "w4", 60, Properties::default()),
    )
    .await;
    let d = Disconnect {
        reason_code: ReasonCode::DISCONNECT_WITH_WILL,
        properties: Properties::default(),
    };
    c.send(&Packet::Disconnect(d)).await.unwrap();
    assert!(c.expect_closed().await.unwrap().is_empty());
    let will = w.next_publish().await.unwrap();
    assert_eq!(will.topic, "will/w4");
}

#[tokio::test]
async fn will_properties_are_forwarded() {
    let node = TestNode::start().await.unwrap();
    let mut w = watcher(&node, "will/#").await;
    let props = Properties {
        content_type: Some("text/plain".to_owned()),
        user_properties: vec![("k".to_owned(), "v".to_owned())],
        ..Properties::default()
    };
    let (c, _) = connect_with(
        node.addr(),
        connect_with_will(Protocol::V5, "wp", 60, props),
    )
    .await;
    drop(c);
    let will = w.next_publish().await.unwrap();
    assert_eq!(will.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        will.properties.user_properties,
        [("k".to_owned(), "v".to_owned())]
    );
}

fn delayed_will_connect(id: &str, delay: u32, expiry: u32) -> Connect {
    let will_props = Properties {
        will_delay_interval: Some(delay),
        ..Properties::default()
    };
    let mut c = connect_with_will(Protocol::V5, id, 60, will_props);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(expiry);
    c
}

#[tokio::test(start_paused = true)]
async fn delayed_will_is_cancelled_by_a_reconnect() {
    let node = TestNode::start().await.unwrap();
    let mut w = watcher(&node, "will/#").await;
    let (c, _) = connect_with(node.addr(), delayed_will_connect("wd", 10, 300)).await;
    drop(c);
    wait_connections(&node, 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (mut c, ack) = connect_with(node.addr(), delayed_will_connect("wd", 10, 300)).await;
    assert!(ack.session_present);
    w.expect_silence(Duration::from_secs(30)).await.unwrap();
    c.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn delayed_will_is_published_after_the_delay() {
    let node = TestNode::start().await.unwrap();
    let mut w = watcher(&node, "will/#").await;
    let (c, _) = connect_with(node.addr(), delayed_will_connect("wd", 10, 300)).await;
    drop(c);
    wait_connections(&node, 1).await;
    w.expect_silence(ms(9_500)).await.unwrap();
    let will = tokio::time::timeout(ms(1_000), w.next_publish())
        .await
        .expect("will not published 10 s after the close")
        .unwrap();
    assert_eq!(will.topic, "will/wd");
    // The session is still there (expiry 300): reconnecting finds it.
    let (_c, ack) = connect_with(node.addr(), delayed_will_connect("wd", 10, 300)).await;
    assert!(ack.session_present);
}

#[tokio::test(start_paused = true)]
async fn delayed_will_goes_out_when_the_session_expires_first() {
    let node = TestNode::start().await.unwrap();
    let mut w = watcher(&node, "will/#").await;
    // Will delay 10 s, session expiry 3 s: the will is sent when the session ends (§3.1.3.2.2).
    let (c, _) = connect_with(node.addr(), delayed_will_connect("we", 10, 3)).await;
    drop(c);
    wait_connections(&node, 1).await;
    w.expect_silence(ms(2_500)).await.unwrap();
    let will = tokio::time::timeout(ms(1_000), w.next_publish())
        .await
        .expect("will not published when the session expired")
        .unwrap();
    assert_eq!(will.topic, "will/we");
    w.expect_silence(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn delayed_will_goes_out_when_a_clean_start_ends_the_session() {
    let node = TestNode::start().await.unwrap();
    let mut w = watcher(&node, "will/#").await;
    let (c, _) = connect_with(node.addr(), delayed_will_connect("wc", 10, 300)).await;
    drop(c);
    wait_connections(&node, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_c, ack) = RawClient::connect(node.addr(), Protocol::V5, "wc", true)
        .await
        .unwrap();
    assert!(!ack.session_present);
    let will = tokio::time::timeout(ms(500), w.next_publish())
        .await
        .expect("will not published when clean start ended the session")
        .unwrap();
    assert_eq!(will.topic, "will/wc");
    w.expect_silence(Duration::from_secs(30)).await.unwrap();
}

// --- takeover -------------------------------------------------------------------------------

#[tokio::test]
async fn takeover_disconnects_the_old_connection_and_keeps_the_session() {
    let node = TestNode::start().await.unwrap();
    let mut w = watcher(&node, "will/#").await;
    for protocol in BOTH {
        let id = format!("tk-{protocol:?}");
        let topic = format!("tk/{protocol:?}");
        let mut connect = persistent_packet(protocol, &id);
        connect.will = Some(will(&format!("will/{id}"), b"taken", Properties::default()));
        let (mut old, _) = connect_with(node.addr(), connect).await;
        old.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();

        let (mut new, ack) = connect_persistent(node.addr(), protocol, &id).await;
        assert!(ack.session_present, "{protocol:?}");
        expect_disconnect(&mut old, ReasonCode::SESSION_TAKEN_OVER).await;
        // The old connection's will (no delay) is published ([MQTT-3.1.4-3]).
        let will = w.next_publish().await.unwrap();
        assert_eq!(will.topic, format!("will/{id}"));

        // The subscription moved to the new connection.
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        publish_ok(&mut publ, &topic, b"after").await;
        assert_eq!(payloads(&collect(&mut new, SILENCE).await), ["after"]);
        publ.disconnect().await.unwrap();

        let r = http(&node, "GET", &format!("/api/v1/clients/{id}"), None).await;
        assert_eq!(r.json()["connected"], true);
    }
}

#[tokio::test]
async fn takeover_with_clean_start_gives_a_fresh_session() {
    let node = TestNode::start().await.unwrap();
    let (mut old, _) = connect_persistent(node.addr(), Protocol::V5, "tc").await;
    old.subscribe("tc/t", QoS::AtLeastOnce).await.unwrap();
    let (mut new, ack) = RawClient::connect(node.addr(), Protocol::V5, "tc", true)
        .await
        .unwrap();
    assert!(!ack.session_present);
    expect_disconnect(&mut old, ReasonCode::SESSION_TAKEN_OVER).await;
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    let r = publ
        .publish("tc/t", b"x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(r, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    new.expect_silence(SILENCE).await.unwrap();
}

// --- more: resend window, timer epochs, offline QoS 0 counter ----------------------------------

#[tokio::test]
async fn v5_resend_after_reconnect_respects_the_new_receive_maximum() {
    let node = TestNode::start().await.unwrap();
    let connect = |rm: u16| {
        let mut c = persistent_packet(Protocol::V5, "rs");
        c.properties.receive_maximum = Some(rm);
        c
    };
    let (mut sub, _) = connect_with(node.addr(), connect(10)).await;
    sub.subscribe("rs/t", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    for i in 1..=4 {
        publish_ok(&mut publ, "rs/t", format!("m{i}").as_bytes()).await;
    }
    for _ in 0..4 {
        recv_publish(&mut sub).await;
    }
    drop(sub);
    wait_connections(&node, 1).await;

    // Back with Receive Maximum 2: two DUP resends, the rest as acks free room ([MQTT-4.9.0-2]).
    let (mut sub, ack) = connect_with(node.addr(), connect(2)).await;
    assert!(ack.session_present);
    let a = recv_publish(&mut sub).await;
    let b = recv_publish(&mut sub).await;
    assert_eq!(payloads(&[a.clone(), b.clone()]), ["m1", "m2"]);
    assert!(a.dup && b.dup);
    sub.expect_silence(SILENCE).await.unwrap();
    sub.send(&Packet::PubAck(Ack::new(a.packet_id.unwrap())))
        .await
        .unwrap();
    let c = recv_publish(&mut sub).await;
    assert_eq!(&c.payload[..], b"m3");
    assert!(c.dup);
    sub.expect_silence(SILENCE).await.unwrap();
    let rest = collect(&mut sub, SILENCE).await; // acks nothing new yet
    assert!(rest.is_empty());
    for p in [b, c] {
        sub.send(&Packet::PubAck(Ack::new(p.packet_id.unwrap())))
            .await
            .unwrap();
    }
    assert_eq!(payloads(&collect(&mut sub, SILENCE).await), ["m4"]);
}

#[tokio::test(start_paused = true)]
async fn an_old_expiry_timer_does_not_end_a_resumed_session() {
    let node = TestNode::start().await.unwrap();
    let connect = || {
        let props = Properties {
            session_expiry_interval: Some(2),
            ..Properties::default()
        };
        connect_v5("ep", false, props)
    };
    let (c, _) = connect_with(node.addr(), connect()).await;
    c.disconnect().await.unwrap(); // timer 1: due at ~2 s
    wait_connections(&node, 0).await;
    tokio::time::sleep(ms(1000)).await;
    let (c, ack) = connect_with(node.addr(), connect()).await;
    assert!(ack.session_present);
    c.disconnect().await.unwrap(); // timer 2: due at ~3 s
    wait_connections(&node, 0).await;
    // At 2.5 s timer 1 has fired; it belongs to an earlier disconnect and must not count.
    tokio::time::sleep(ms(1500)).await;
    let (c, ack) = connect_with(node.addr(), connect()).await;
    assert!(
        ack.session_present,
        "a stale expiry timer ended the session"
    );
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn offline_qos0_drops_are_counted() {
    let node = TestNode::start().await.unwrap();
    let (mut sub, _) = connect_persistent(node.addr(), Protocol::V5, "q0").await;
    sub.subscribe("q0/t", QoS::AtMostOnce).await.unwrap();
    sub.disconnect().await.unwrap();
    wait_connections(&node, 0).await;
    let before = metric(&node, "roost_session_offline_qos0_dropped_total").await;
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    publ.publish("q0/t", b"x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(metric(&node, "roost_session_offline_qos0_dropped_total").await - before >= 1.0);
    let (mut sub, _) = connect_persistent(node.addr(), Protocol::V5, "q0").await;
    sub.expect_silence(SILENCE).await.unwrap();
}

// --- issue 7, item 11: sessions a clean start must discard ---------------------------------

/// Issue 7 item 11 (a): a session that ends with its connection (v3.1.1 CleanSession=1, v5
/// Session Expiry 0) ends when a takeover closes that connection, so the CONNECT that takes it
/// over finds no session: Session Present 0 and the old subscription gone ([MQTT-3.1.2-6],
/// [MQTT-3.2.2-2]). Also with v5 Clean Start 0 and no Session Expiry Interval.
#[tokio::test]
async fn item11_takeover_of_a_session_that_ends_with_its_connection_finds_no_session() {
    let node = TestNode::start().await.unwrap();
    // The session ends with this connection: CleanSession=1 (v3.1.1), or v5 without a Session
    // Expiry Interval, with or without Clean Start. (v3.1.1 CleanSession=0 is persistent: not
    // this case.)
    let cases = [
        (Protocol::V311, true),
        (Protocol::V5, true),
        (Protocol::V5, false),
    ];
    for (protocol, old_clean_start) in cases {
        let tag = format!("{protocol:?}-{old_clean_start}");
        let id = format!("i11a-{tag}");
        let topic = format!("i11a/{tag}");
        let (mut old, _) = RawClient::connect(node.addr(), protocol, &id, old_clean_start)
            .await
            .unwrap();
        old.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        let (mut new, ack) = connect_persistent(node.addr(), protocol, &id).await;
        assert!(!ack.session_present, "{tag}: the old session came back");
        let left = old.expect_closed().await.unwrap();
        if protocol == Protocol::V5 {
            assert!(
                matches!(&left[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SESSION_TAKEN_OVER),
                "{tag}: {left:?}"
            );
        }
        let mut publ = connect_clean(node.addr(), protocol, &format!("i11a-pub-{tag}")).await;
        let r = publ
            .publish(&topic, b"x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if protocol == Protocol::V5 {
            assert_eq!(r, ReasonCode::NO_MATCHING_SUBSCRIBERS, "{tag}");
        }
        new.expect_silence(SILENCE).await.unwrap();
        new.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
        // End the persistent session the takeover started.
        connect_clean(node.addr(), protocol, &id)
            .await
            .disconnect()
            .await
            .unwrap();
        wait_connections(&node, 0).await;
    }
}

/// Issue 7 item 11 (b): CleanSession=0 + SUBSCRIBE t/1, socket dropped; at once CleanSession=1
/// + SUBSCRIBE t/2, closed; then CleanSession=0. The clean start discarded the first session
/// for good ([MQTT-3.1.2-4]): Session Present 0 and neither t/1 nor t/2 delivers. The old
/// code brought the first session back (restored from the registry before the release of the
/// clean session committed) in about 8 of 20 rounds; 25 rounds per protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn item11_clean_start_after_a_dropped_persistent_session_discards_it_for_good() {
    let node = TestNode::start().await.unwrap();
    let mut resurrected = Vec::new();
    for protocol in BOTH {
        let mut publ =
            connect_clean(node.addr(), protocol, &format!("i11b-pub-{protocol:?}")).await;
        for round in 0..25 {
            let id = format!("i11b-{protocol:?}-{round}");
            let t1 = format!("i11b/{protocol:?}/{round}/1");
            let t2 = format!("i11b/{protocol:?}/{round}/2");
            let (mut c, ack) = connect_persistent(node.addr(), protocol, &id).await;
            assert!(!ack.session_present);
            c.subscribe(&t1, QoS::AtLeastOnce).await.unwrap();
            drop(c);
            let (mut c, ack) = RawClient::connect(node.addr(), protocol, &id, true)
                .await
                .unwrap();
            assert!(
                !ack.session_present,
                "{protocol:?} round {round}: clean start"
            );
            c.subscribe(&t2, QoS::AtLeastOnce).await.unwrap();
            c.disconnect().await.unwrap();
            let (mut c, ack) = connect_persistent(node.addr(), protocol, &id).await;
            for t in [&t1, &t2] {
                publ.publish(t, b"x", QoS::AtLeastOnce, false)
                    .await
                    .unwrap();
            }
            let got = collect(&mut c, ms(100)).await;
            if ack.session_present || !got.is_empty() {
                resurrected.push(format!(
                    "{protocol:?} round {round}: session present {}, got {:?}",
                    ack.session_present,
                    got.iter().map(|p| p.topic.clone()).collect::<Vec<_>>()
                ));
            }
            c.disconnect().await.unwrap();
            connect_clean(node.addr(), protocol, &id)
                .await
                .disconnect()
                .await
                .unwrap();
        }
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
    }
    assert!(resurrected.is_empty(), "{resurrected:#?}");
}

/// Issue 7 item 7: split brain for sessions. Three nodes; a persistent v5 client `c` on node 3,
/// then node 3 is cut off from its peers (its cluster listener behind a proxy that refuses
/// everything; clients still reach it). The same client id connects to node 1. Node 3 must stop
/// serving `c` (DISCONNECT 0x9C) before node 1 says CONNACK to the new connection, and must
/// refuse CONNECTs (0x88) until the partition heals; after it, node 3 serves again.
///
/// Before the lease, node 3 kept `c` connected for the whole cut while node 1 accepted the
/// same client id at once: two live sessions for one client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_a_cut_off_node_stops_serving_before_its_client_is_served_elsewhere() {
    const LEASE_MS: u64 = 1500;
    let (nodes, proxy) = nodes_with(3, true, |c| {
        // 4 × the testkit's 300 ms election timeout, the least the config accepts.
        c.cluster.session_lease_ms = LEASE_MS;
        c.cluster.forward_timeout_ms = 500;
    })
    .await
    .unwrap();
    let proxy = proxy.unwrap();
    let (n1, n3) = (&nodes[0], &nodes[2]);
    let connect = || persistent_packet(Protocol::V5, "split");
    let mut old = RawClient::open(n3.addr(), Protocol::V5).await.unwrap();
    let ack = old.handshake(connect()).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    old.subscribe("split/t", QoS::AtLeastOnce).await.unwrap();

    proxy.isolate(true);
    let cut = tokio::time::Instant::now();
    // The old connection, watched from now on: when does node 3 let it go, and how?
    let watcher = tokio::spawn(async move {
        let end = loop {
            match old.recv_within(Duration::from_secs(30)).await {
                Ok(Some(Packet::Disconnect(d))) => break Some(d.reason_code),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break None,
            }
        };
        (end, tokio::time::Instant::now())
    });
    // The same client id on the majority side: claimed at once, served only once node 3's
    // lease has surely run out.
    let mut new = RawClient::open(n1.addr(), Protocol::V5).await.unwrap();
    let ack = new.handshake(connect()).await.unwrap();
    let accepted = tokio::time::Instant::now();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (end, left) = watcher.await.unwrap();
    assert_eq!(
        end,
        Some(ReasonCode::USE_ANOTHER_SERVER),
        "node 3 must tell its client to use another server"
    );
    assert!(
        left <= accepted,
        "two live sessions: node 1 accepted the client {:?} after the cut, node 3 let the old \
         connection go only {:?} after it",
        accepted - cut,
        left - cut
    );
    // Without the lease nothing is served on node 3: CONNECTs are refused (after waiting, as
    // for a commit, for a lease that does not come).
    let mut other = RawClient::open(n3.addr(), Protocol::V5).await.unwrap();
    let ack = other
        .handshake(connect_packet(Protocol::V5, "other", true))
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SERVER_UNAVAILABLE);
    // The new session has the subscription from the registry. (QoS 0: node 3 still routes
    // the filter for its offline copy, so a QoS 1 message is refused whole, docs/rfcs/0005.)
    let mut publ = RawClient::connect(n1.addr(), Protocol::V5, "split-pub", true)
        .await
        .unwrap()
        .0;
    publ.publish("split/t", b"to the new owner", QoS::AtMostOnce, false)
        .await
        .unwrap();
    assert_eq!(
        &new.next_publish().await.unwrap().payload[..],
        b"to the new owner"
    );

    // The partition heals: node 3 renews its lease and serves again.
    proxy.isolate(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = RawClient::open(n3.addr(), Protocol::V5).await.unwrap();
        let ack = c
            .handshake(connect_packet(Protocol::V5, "after", true))
            .await
            .unwrap();
        if ack.reason_code == ReasonCode::SUCCESS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 still refuses CONNECTs 15 s after the partition healed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in nodes {
        n.stop().await;
    }
}

/// Issue 8 (chaos `qos2-exactly-once`, seed 21): a TakeSession reply that is lost (the owner
/// handed the session over, the requester timed out waiting: a partition healing, a slow
/// link) left the owner with nothing for the requester's next try, and the session's queued
/// messages were gone. The owner now hands the same over again to the same claim. Node 3 owns
/// an offline session with a queued message; its replies are dropped while node 1 asks for the
/// session, then pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_take_session_reply_loses_no_session() {
    let (nodes, proxy) = nodes_with(3, true, |c| {
        c.cluster.session_lease_ms = 4000;
        c.cluster.forward_timeout_ms = 600;
    })
    .await
    .unwrap();
    let proxy = proxy.unwrap();
    let (n1, n3) = (&nodes[0], &nodes[2]);
    let (mut old, _) = connect_persistent(n3.addr(), Protocol::V5, "lost-reply").await;
    old.subscribe("lr/t", QoS::AtLeastOnce).await.unwrap();
    old.disconnect().await.unwrap();
    let mut publ = connect_clean(n1.addr(), Protocol::V5, "lr-pub").await;
    publish_ok(&mut publ, "lr/t", b"queued").await;

    proxy.drop_replies(true);
    let heal = tokio::spawn(async move {
        // Past the first TakeSession's timeout (600 ms), well within the claimant's retries
        // (until 4.5 s after its claim).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.drop_replies(false);
        proxy
    });
    let (mut new, ack) = connect_persistent(n1.addr(), Protocol::V5, "lost-reply").await;
    assert!(ack.session_present);
    let got = payloads(&collect(&mut new, Duration::from_secs(2)).await);
    assert_eq!(
        got,
        vec!["queued"],
        "the queued message came with the session"
    );
    drop(heal.await.unwrap());
    for n in nodes {
        n.stop().await;
    }
}

// --- parked connections (RFC 0011) --------------------------------------------------------

/// The node's count of parked connections (`GET /api/v1/stats`, per node: the Prometheus
/// gauge is process-wide and other tests' nodes share it).
async fn parked(node: &TestNode) -> u64 {
    let stats = http(node, "GET", "/api/v1/stats", None).await.json();
    stats["connections_parked"]
        .as_u64()
        .unwrap_or_else(|| panic!("no connections_parked in {stats}"))
}

/// Waits (bounded, 5 s of the test's clock) until exactly `n` of the node's connections are
/// parked.
async fn wait_parked(node: &TestNode, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = parked(node).await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} connections parked, expected {n}"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

/// A connection idle for `mqtt.park_after_ms` parks, and a parked connection is woken by each
/// thing it waits for: a delivery to it, a PUBLISH and a PINGREQ from its client, and a
/// takeover (DISCONNECT 0x8E, the session kept). Each step starts from both connections
/// parked, so it is the parked path that is exercised, not the active loop.
#[tokio::test]
async fn a_parked_connection_is_woken_by_each_thing_it_waits_for() {
    let node = TestNode::start_with(|c| c.mqtt.park_after_ms = 100)
        .await
        .unwrap();
    for protocol in BOTH {
        let id = format!("park-{protocol:?}");
        let topic = format!("park/{protocol:?}");
        let (mut sub, _) = connect_persistent(node.addr(), protocol, &id).await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        let mut publ = connect_clean(node.addr(), protocol, &format!("{id}-pub")).await;
        wait_parked(&node, 2).await;

        // A PUBLISH read by a parked publisher, delivered to a parked subscriber, in order.
        for n in 0..3 {
            publish_ok(&mut publ, &topic, format!("m{n}").as_bytes()).await;
        }
        assert_eq!(
            payloads(&collect(&mut sub, SILENCE).await),
            ["m0", "m1", "m2"],
            "{protocol:?}"
        );
        wait_parked(&node, 2).await;

        // A PINGREQ read by a parked connection.
        sub.send(&Packet::PingReq).await.unwrap();
        assert_eq!(sub.recv().await.unwrap(), Some(Packet::PingResp));
        wait_parked(&node, 2).await;

        // A takeover kicks the parked connection and gets its session.
        let (mut new, ack) = connect_persistent(node.addr(), protocol, &id).await;
        assert!(ack.session_present, "{protocol:?}");
        expect_disconnect(&mut sub, ReasonCode::SESSION_TAKEN_OVER).await;
        wait_parked(&node, 2).await;
        publish_ok(&mut publ, &topic, b"after").await;
        assert_eq!(payloads(&collect(&mut new, SILENCE).await), ["after"]);
        new.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
        assert_eq!(parked(&node).await, 0, "{protocol:?}");
    }
}

/// The stretch right after the CONNACK parks sooner than `park_after_ms` (its checks start at
/// 100 ms and double), so a reconnect storm's connections do not all stay active at once; a
/// later stretch, woken by the client, waits the full `park_after_ms`.
#[tokio::test]
async fn a_connection_quiet_after_its_handshake_parks_early_and_later_waits_the_full_time() {
    let node = TestNode::start_with(|c| c.mqtt.park_after_ms = 60_000)
        .await
        .unwrap();
    for protocol in BOTH {
        let (mut c, _) =
            connect_persistent(node.addr(), protocol, &format!("early-{protocol:?}")).await;
        c.subscribe(&format!("early/{protocol:?}"), QoS::AtLeastOnce)
            .await
            .unwrap();
        // Well before the 60 s of `park_after_ms`.
        wait_parked(&node, 1).await;
        c.send(&Packet::PingReq).await.unwrap();
        assert_eq!(c.recv().await.unwrap(), Some(Packet::PingResp));
        tokio::time::sleep(ms(1500)).await;
        assert_eq!(
            parked(&node).await,
            0,
            "{protocol:?}: woken, it waits the full time"
        );
        c.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
    }
}

/// A parked connection still keeps its keep-alive: parked after `park_after_ms`, it is closed
/// (v5: DISCONNECT 0x8D) at 1.5 x its keep-alive, no earlier, and its will goes out.
#[tokio::test(start_paused = true)]
async fn a_parked_connection_keeps_its_keep_alive() {
    let node = TestNode::start_with(|c| c.mqtt.park_after_ms = 100)
        .await
        .unwrap();
    let mut w = watcher(&node, "will/#").await;
    for protocol in BOTH {
        let id = format!("ka-park-{protocol:?}");
        let (mut c, _) = connect_will(&node, protocol, &id, 2).await;
        c.expect_silence(ms(1000)).await.unwrap();
        // The watcher is parked too.
        assert_eq!(parked(&node).await, 2, "{protocol:?}");
        c.expect_silence(ms(1900)).await.unwrap();
        expect_keep_alive_close(&mut c, protocol, ms(200), &mut w, &id).await;
    }
}

/// A keep-alive renewed after the parked connection's deadline was armed (RFC 0013): the old
/// deadline wakes it, it finds the deadline moved and waits on, still parked (it does not go
/// active for a deadline that has not come); it is closed at the new deadline, no earlier.
#[tokio::test(start_paused = true)]
async fn a_renewed_keep_alive_moves_a_parked_connections_deadline() {
    let node = TestNode::start_with(|c| c.mqtt.park_after_ms = 1000)
        .await
        .unwrap();
    let mut w = watcher(&node, "will/#").await;
    for protocol in BOTH {
        let id = format!("ka-moved-{protocol:?}");
        // Keep-alive 4: closed after 6 s of silence.
        let (mut c, _) = connect_will(&node, protocol, &id, 4).await;
        wait_parked(&node, 2).await;
        let start = tokio::time::Instant::now();
        // Parked with its deadline at 6 s; a PINGREQ at 1 s moves it to 7 s.
        tokio::time::sleep(ms(1000)).await;
        c.send(&Packet::PingReq).await.unwrap();
        assert_eq!(c.recv().await.unwrap(), Some(Packet::PingResp));
        // Parked again well before the old deadline.
        tokio::time::sleep_until(start + ms(4000)).await;
        assert_eq!(parked(&node).await, 2, "{protocol:?}");
        // Past the old deadline: woken there, it waited on without going active.
        tokio::time::sleep_until(start + ms(6500)).await;
        assert_eq!(parked(&node).await, 2, "{protocol:?}");
        c.expect_silence(ms(400)).await.unwrap();
        expect_keep_alive_close(&mut c, protocol, ms(300), &mut w, &id).await;
        wait_parked(&node, 1).await;
    }
}
