//! Wire tests of QoS 0/1/2 delivery, exactly-once for inbound QoS 2, and flow control in both
//! directions (the client's Receive Maximum, our receive_maximum).
#![allow(clippy::unwrap_used)]

use roost_codec::{Ack, Packet, Properties, Protocol, QoS, ReasonCode};
use roost_testkit::*;
use std::collections::HashSet;

const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

#[tokio::test]
async fn delivery_qos_is_min_of_publish_and_subscription() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let mut sub = connect_clean(node.addr(), protocol, "sub").await;
        for (i, q) in QOS.iter().enumerate() {
            let (ack, _) = sub.subscribe(&format!("q/{i}"), *q).await.unwrap();
            assert_eq!(ack.reason_codes, [ReasonCode(*q as u8)]);
        }
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        let mut expected = Vec::new();
        for (s, _) in QOS.iter().enumerate() {
            for pq in QOS {
                let payload = format!("s{s}-p{}", pq as u8);
                let r = publ
                    .publish(&format!("q/{s}"), payload.as_bytes(), pq, false)
                    .await
                    .unwrap();
                assert_eq!(r, ReasonCode::SUCCESS);
                expected.push((payload, pq.min(QOS[s])));
            }
        }
        let mut ids = HashSet::new();
        for (payload, qos) in expected {
            let p = sub.next_publish().await.unwrap();
            assert_eq!(String::from_utf8_lossy(&p.payload), payload, "{protocol:?}");
            assert_eq!(p.qos, qos, "{protocol:?} {payload}");
            assert!(!p.dup && !p.retain);
            match p.packet_id {
                Some(id) => {
                    assert_ne!(qos, QoS::AtMostOnce);
                    assert_ne!(id.get(), 0);
                    ids.insert(id.get());
                }
                None => assert_eq!(qos, QoS::AtMostOnce),
            }
        }
        // Four QoS 1/2 deliveries (q/1 <- QoS 1, 2; q/2 <- QoS 1, 2), four distinct packet
        // ids: each was acked before the next, but the broker allocates sequentially.
        assert_eq!(ids.len(), 4);
        assert!(collect(&mut sub, SILENCE).await.is_empty());
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
    }
}

#[tokio::test]
async fn v5_ack_reports_no_matching_subscribers() {
    let node = TestNode::start().await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    let r = publ
        .publish("nobody/here", b"x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(r, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    // QoS 2: the PUBREC says so; the PUBCOMP that ends the flow is a plain success.
    publ.send(&publish_packet(
        "nobody/here",
        b"x",
        QoS::ExactlyOnce,
        false,
        Some(pid(5)),
        Properties::default(),
    ))
    .await
    .unwrap();
    match publ.recv().await.unwrap() {
        Some(Packet::PubRec(a)) => assert_eq!(a.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publ.send(&Packet::PubRel(Ack::new(pid(5)))).await.unwrap();
    match publ.recv().await.unwrap() {
        Some(Packet::PubComp(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // v3.1.1 acks carry no reason.
    let mut publ = connect_clean(node.addr(), Protocol::V311, "pub3").await;
    let r = publ
        .publish("nobody/here", b"x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(r, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn qos2_resent_before_pubrel_is_delivered_once() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let mut sub = connect_clean(node.addr(), protocol, "sub").await;
        sub.subscribe("eo/t", QoS::ExactlyOnce).await.unwrap();
        let mut publ = connect_clean(node.addr(), protocol, "pub").await;
        let id = pid(7);
        let first = publish_packet(
            "eo/t",
            b"once",
            QoS::ExactlyOnce,
            false,
            Some(id),
            Properties::default(),
        );
        publ.send(&first).await.unwrap();
        let rec = publ.recv().await.unwrap();
        assert!(
            matches!(&rec, Some(Packet::PubRec(a)) if a.packet_id == id && a.reason_code == ReasonCode::SUCCESS),
            "{rec:?}"
        );
        // The client did not see the PUBREC (say) and resends with DUP.
        let Packet::Publish(mut again) = first.clone() else {
            unreachable!()
        };
        again.dup = true;
        publ.send(&Packet::Publish(again)).await.unwrap();
        let rec = publ.recv().await.unwrap();
        assert!(
            matches!(&rec, Some(Packet::PubRec(a)) if a.packet_id == id && a.reason_code == ReasonCode::SUCCESS),
            "{rec:?}"
        );
        publ.send(&Packet::PubRel(Ack::new(id))).await.unwrap();
        let comp = publ.recv().await.unwrap();
        assert!(
            matches!(&comp, Some(Packet::PubComp(a)) if a.packet_id == id && a.reason_code == ReasonCode::SUCCESS),
            "{comp:?}"
        );

        let got = collect(&mut sub, SILENCE).await;
        assert_eq!(payloads(&got), ["once"], "{protocol:?}");
        assert_eq!(got[0].qos, QoS::ExactlyOnce);

        // After PUBREL the id is free again: the same id now carries a new message.
        let next = publish_packet(
            "eo/t",
            b"twice",
            QoS::ExactlyOnce,
            false,
            Some(id),
            Properties::default(),
        );
        publ.send(&next).await.unwrap();
        assert!(matches!(publ.recv().await.unwrap(), Some(Packet::PubRec(a)) if a.packet_id == id));
        publ.send(&Packet::PubRel(Ack::new(id))).await.unwrap();
        assert!(
            matches!(publ.recv().await.unwrap(), Some(Packet::PubComp(a)) if a.packet_id == id)
        );
        assert_eq!(payloads(&collect(&mut sub, SILENCE).await), ["twice"]);

        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
    }
}

#[tokio::test]
async fn pubrel_for_unknown_id_gets_pubcomp() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let mut c = connect_clean(node.addr(), protocol, "c").await;
        c.send(&Packet::PubRel(Ack::new(pid(42)))).await.unwrap();
        let expected = match protocol {
            Protocol::V5 => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            Protocol::V311 => ReasonCode::SUCCESS,
        };
        match c.recv().await.unwrap() {
            Some(Packet::PubComp(a)) => {
                assert_eq!(a.packet_id, pid(42));
                assert_eq!(a.reason_code, expected, "{protocol:?}");
            }
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        // The connection stays up.
        c.send(&Packet::PingReq).await.unwrap();
        assert_eq!(c.recv().await.unwrap(), Some(Packet::PingResp));
    }
}

#[tokio::test]
async fn unknown_acks_are_ignored() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let mut c = connect_clean(node.addr(), protocol, "c").await;
        c.send(&Packet::PubAck(Ack::new(pid(9)))).await.unwrap();
        c.send(&Packet::PubComp(Ack::new(pid(9)))).await.unwrap();
        c.send(&Packet::PingReq).await.unwrap();
        assert_eq!(
            c.recv().await.unwrap(),
            Some(Packet::PingResp),
            "{protocol:?}"
        );
        // An unknown PUBREC is answered with PUBREL 0x92 in v5 (§4.3.3), ignored in v3.1.1.
        c.send(&Packet::PubRec(Ack::new(pid(9)))).await.unwrap();
        if protocol == Protocol::V5 {
            match c.recv().await.unwrap() {
                Some(Packet::PubRel(a)) => {
                    assert_eq!(a.packet_id, pid(9));
                    assert_eq!(a.reason_code, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
                }
                other => panic!("expected PUBREL, got {other:?}"),
            }
        }
        c.send(&Packet::PingReq).await.unwrap();
        assert_eq!(c.recv().await.unwrap(), Some(Packet::PingResp));
    }
}

/// Publishes `n` QoS 1 messages `m1..mn` to `topic`.
async fn publish_n(c: &mut RawClient, topic: &str, n: usize) {
    for i in 1..=n {
        publish_ok(c, topic, format!("m{i}").as_bytes()).await;
    }
}

#[tokio::test]
async fn client_receive_maximum_bounds_messages_in_flight() {
    // v5: the client's Receive Maximum 2; v3.1.1: the node's max_inflight 2.
    let node = TestNode::start_with(|c| c.mqtt.max_inflight = 2)
        .await
        .unwrap();
    let node_v5 = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let (addr, connect) = match protocol {
            Protocol::V5 => {
                let props = Properties {
                    receive_maximum: Some(2),
                    ..Properties::default()
                };
                (node_v5.addr(), connect_v5("slow", true, props))
            }
            Protocol::V311 => (
                node.addr(),
                roost_testkit::connect_packet(protocol, "slow", true),
            ),
        };
        let (mut sub, _) = connect_with(addr, connect).await;
        sub.subscribe("fc/t", QoS::AtLeastOnce).await.unwrap();
        let mut publ = connect_clean(addr, protocol, "pub").await;
        publish_n(&mut publ, "fc/t", 3).await;

        let a = recv_publish(&mut sub).await;
        let b = recv_publish(&mut sub).await;
        assert_eq!(
            payloads(&[a.clone(), b.clone()]),
            ["m1", "m2"],
            "{protocol:?}"
        );
        sub.expect_silence(SILENCE).await.unwrap();
        // One PUBACK opens one slot: exactly one more PUBLISH.
        sub.send(&Packet::PubAck(Ack::new(a.packet_id.unwrap())))
            .await
            .unwrap();
        let c = recv_publish(&mut sub).await;
        assert_eq!(&c.payload[..], b"m3");
        assert!(!c.dup);
        sub.expect_silence(SILENCE).await.unwrap();
        for p in [b, c] {
            sub.send(&Packet::PubAck(Ack::new(p.packet_id.unwrap())))
                .await
                .unwrap();
        }
        sub.expect_silence(SILENCE).await.unwrap();
    }
}

#[tokio::test]
async fn qos0_bypasses_a_full_window() {
    let node = TestNode::start().await.unwrap();
    let props = Properties {
        receive_maximum: Some(1),
        ..Properties::default()
    };
    let (mut sub, _) = connect_with(node.addr(), connect_v5("slow", true, props)).await;
    sub.subscribe("w/#", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    publish_ok(&mut publ, "w/1", b"q1").await;
    publish_ok(&mut publ, "w/2", b"q1-queued").await;
    publ.publish("w/3", b"q0", QoS::AtMostOnce, false)
        .await
        .unwrap();
    let first = recv_publish(&mut sub).await;
    assert_eq!(&first.payload[..], b"q1");
    let second = recv_publish(&mut sub).await;
    assert_eq!(&second.payload[..], b"q0");
    assert_eq!(second.qos, QoS::AtMostOnce);
    sub.expect_silence(SILENCE).await.unwrap();
    sub.send(&Packet::PubAck(Ack::new(first.packet_id.unwrap())))
        .await
        .unwrap();
    assert_eq!(&recv_publish(&mut sub).await.payload[..], b"q1-queued");
}

#[tokio::test]
async fn v5_client_exceeding_our_receive_maximum_is_disconnected() {
    let node = TestNode::start_with(|c| c.mqtt.receive_maximum = 2)
        .await
        .unwrap();
    let (mut c, ack) = RawClient::connect(node.addr(), Protocol::V5, "greedy", true)
        .await
        .unwrap();
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for id in [1, 2] {
        c.send(&publish_packet(
            "rm/t",
            b"x",
            QoS::ExactlyOnce,
            false,
            Some(pid(id)),
            Properties::default(),
        ))
        .await
        .unwrap();
        assert!(
            matches!(c.recv().await.unwrap(), Some(Packet::PubRec(a)) if a.packet_id == pid(id))
        );
    }
    // A resend of an unreleased id does not use a new slot.
    let mut dup = publish_packet(
        "rm/t",
        b"x",
        QoS::ExactlyOnce,
        false,
        Some(pid(1)),
        Properties::default(),
    );
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    c.send(&dup).await.unwrap();
    assert!(matches!(c.recv().await.unwrap(), Some(Packet::PubRec(a)) if a.packet_id == pid(1)));
    // A third unreleased QoS 2 PUBLISH exceeds the window.
    c.send(&publish_packet(
        "rm/t",
        b"x",
        QoS::ExactlyOnce,
        false,
        Some(pid(3)),
        Properties::default(),
    ))
    .await
    .unwrap();
    expect_disconnect(&mut c, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED).await;
}

#[tokio::test]
async fn released_qos2_ids_free_the_inbound_window() {
    let node = TestNode::start_with(|c| c.mqtt.receive_maximum = 2)
        .await
        .unwrap();
    let mut c = connect_clean(node.addr(), Protocol::V5, "steady").await;
    // Ten QoS 2 publishes, each released: never more than one unreleased.
    for _ in 0..10 {
        let r = c
            .publish("rm/t", b"x", QoS::ExactlyOnce, false)
            .await
            .unwrap();
        assert_eq!(r, ReasonCode::SUCCESS);
    }
}

#[tokio::test]
async fn max_qos_downgrades_subscriptions_and_refuses_higher_publishes() {
    let node = TestNode::start_with(|c| c.mqtt.max_qos = 1).await.unwrap();
    let mut sub = connect_clean(node.addr(), Protocol::V5, "sub").await;
    let (ack, _) = sub.subscribe("mq/t", QoS::ExactlyOnce).await.unwrap();
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    publ.send(&publish_packet(
        "mq/t",
        b"x",
        QoS::ExactlyOnce,
        false,
        Some(pid(1)),
        Properties::default(),
    ))
    .await
    .unwrap();
    expect_disconnect(&mut publ, ReasonCode::QOS_NOT_SUPPORTED).await;
}

/// Sends `n` QoS 1 PUBLISHes in one burst (one write), without waiting for acks.
async fn burst_qos1(c: &mut RawClient, topic: &str, n: u16) {
    let mut bytes = bytes::BytesMut::new();
    for i in 1..=n {
        let p = Packet::Publish(roost_codec::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.to_owned(),
            packet_id: roost_codec::PacketId::new(i),
            properties: Properties::default(),
            payload: bytes::Bytes::from(format!("m{i}")),
        });
        roost_codec::encode(&p, c.protocol(), &mut bytes).unwrap();
    }
    c.send_bytes(&bytes).await.unwrap();
}

/// A publisher faster than a connected subscriber is slowed down (its PUBACKs wait) instead of
/// having its messages dropped: the subscriber's queue holds 4, yet all 12 arrive, in order.
#[tokio::test]
async fn backpressure_slows_the_publisher_instead_of_dropping() {
    let node = TestNode::start_with(|c| {
        c.mqtt.max_queued_messages = 4;
        c.mqtt.backpressure_timeout_ms = 30_000;
    })
    .await
    .unwrap();
    let props = Properties {
        receive_maximum: Some(1),
        ..Properties::default()
    };
    let (mut sub, _) = connect_with(node.addr(), connect_v5("slow", true, props)).await;
    sub.subscribe("bp/t", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "fast").await;
    burst_qos1(&mut publ, "bp/t", 12).await;

    // The subscriber has not acked anything: one in flight, the queue at its high watermark,
    // and the publisher held back: it has not got all its PUBACKs.
    let first = recv_publish(&mut sub).await;
    let mut acks = 0;
    while let Ok(Some(Packet::PubAck(_))) = publ
        .recv_within(std::time::Duration::from_millis(300))
        .await
    {
        acks += 1;
    }
    assert!(acks < 12, "publisher was not held back ({acks} PUBACKs)");

    // Acking drains the queue, which releases the publisher, until everything has arrived.
    let mut got = vec![first];
    while got.len() < 12 {
        let last = got.last().unwrap().packet_id.unwrap();
        sub.send(&Packet::PubAck(Ack::new(last))).await.unwrap();
        got.push(recv_publish(&mut sub).await);
    }
    let want: Vec<String> = (1..=12).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads(&got), want);
    sub.send(&Packet::PubAck(Ack::new(got[11].packet_id.unwrap())))
        .await
        .unwrap();
    while acks < 12 {
        match publ.recv().await.unwrap() {
            Some(Packet::PubAck(_)) => acks += 1,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // All 12 arrived through a queue that holds 4: nothing was dropped. (The drop counter is
    // process-wide and other tests in this binary drop on purpose, so it is not compared.)
}

/// A subscriber that never acks holds a publisher back only for backpressure_timeout_ms; then
/// the publisher goes on and what does not fit is dropped and counted.
#[tokio::test(start_paused = true)]
async fn backpressure_wait_is_bounded() {
    let node = TestNode::start_with(|c| {
        c.mqtt.max_queued_messages = 4;
        c.mqtt.backpressure_timeout_ms = 2_000;
    })
    .await
    .unwrap();
    let timeouts_before = metric(&node, "roost_mqtt_backpressure_timeouts_total").await;
    let dropped_before = metric(&node, "roost_session_queue_dropped_total").await;
    let props = Properties {
        receive_maximum: Some(1),
        ..Properties::default()
    };
    let (mut sub, _) = connect_with(node.addr(), connect_v5("stuck", true, props)).await;
    sub.subscribe("bp/t", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "fast").await;
    burst_qos1(&mut publ, "bp/t", 12).await;
    let mut acks = 0;
    while acks < 12 {
        match publ.recv().await.unwrap() {
            Some(Packet::PubAck(_)) => acks += 1,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    assert!(metric(&node, "roost_mqtt_backpressure_timeouts_total").await > timeouts_before);
    assert!(metric(&node, "roost_session_queue_dropped_total").await > dropped_before);
    drop(sub);
}

/// Issue 7, item 13: an acknowledgement of the wrong type for a message in flight closes the
/// connection as a protocol error (v5: DISCONNECT 0x82; v3.1.1: a bare close)
/// ([MQTT-4.8.0-1], [MQTT-4.13.1-1]); the message stays in flight and is resent with DUP when
/// the client comes back. A late ack for a finished flow is ignored (see
/// `unknown_acks_are_ignored`).
#[tokio::test]
async fn item13_ack_of_the_wrong_type_closes_the_connection() {
    type Wrong = fn(Ack) -> Packet;
    // (delivery QoS, PUBREC first, the wrong ack)
    let cases: [(QoS, bool, Wrong); 5] = [
        (QoS::AtLeastOnce, false, Packet::PubComp),
        (QoS::AtLeastOnce, false, Packet::PubRec),
        (QoS::ExactlyOnce, false, Packet::PubAck),
        (QoS::ExactlyOnce, false, Packet::PubComp),
        (QoS::ExactlyOnce, true, Packet::PubAck),
    ];
    let node = TestNode::start().await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    for protocol in BOTH {
        for (i, (qos, released, wrong)) in cases.into_iter().enumerate() {
            let id = format!("wrong-{i}");
            let (mut sub, _) = connect_persistent(node.addr(), protocol, &id).await;
            sub.subscribe("wrong/t", qos).await.unwrap();
            let r = publish_with(
                &mut publ,
                "wrong/t",
                b"m",
                qos,
                false,
                Properties::default(),
            )
            .await;
            assert_eq!(r, ReasonCode::SUCCESS);
            let p = recv_publish(&mut sub).await;
            let packet_id = p.packet_id.unwrap();
            if released {
                sub.send(&Packet::PubRec(Ack::new(packet_id)))
                    .await
                    .unwrap();
                match sub.recv().await.unwrap() {
                    Some(Packet::PubRel(a)) => assert_eq!(a.packet_id, packet_id),
                    other => panic!("expected PUBREL, got {other:?}"),
                }
            }
            let ack = wrong(Ack::new(packet_id));
            let what = format!("{protocol:?} case {i}: {ack:?}");
            sub.send(&ack).await.unwrap();
            expect_disconnect(&mut sub, ReasonCode::PROTOCOL_ERROR).await;

            // Still in flight: resent on reconnect (PUBLISH with DUP, or the PUBREL).
            let (mut sub, ack) = connect_persistent(node.addr(), protocol, &id).await;
            assert!(ack.session_present, "{what}");
            match sub.recv().await.unwrap() {
                Some(Packet::Publish(again)) if !released => {
                    assert!(again.dup, "{what}");
                    assert_eq!(again.packet_id, Some(packet_id), "{what}");
                }
                Some(Packet::PubRel(a)) if released => assert_eq!(a.packet_id, packet_id),
                other => panic!("{what}: expected the flow resent, got {other:?}"),
            }
            // Clean up: the session ends with this clean connection.
            sub.disconnect().await.unwrap();
            connect_clean(node.addr(), protocol, &id)
                .await
                .disconnect()
                .await
                .unwrap();
        }
    }
    publ.disconnect().await.unwrap();
    wait_connections(&node, 0).await;
}

/// Two in-process nodes forming one cluster, without a proxy (see [`two_nodes_with`]).
async fn two_nodes(
    tweak: impl Fn(&mut roost_node::Config) + Copy + Send + 'static,
) -> (TestNode, TestNode) {
    let (a, b, _) = two_nodes_with(false, tweak).await.unwrap();
    (a, b)
}

/// Issue 7, item 5: a PUBREC with reason 0x80 ends the QoS 2 flow ([MQTT-4.3.3-9]), so the
/// client may reuse the packet id at once and the next PUBLISH with it is a new message,
/// routed. The 0x80 comes from a retained copy that cannot commit: a cluster of two whose
/// other member is stopped has no quorum.
#[tokio::test]
async fn item5_pubrec_0x80_releases_the_packet_id() {
    let (a, b) = two_nodes(|_| {}).await;
    let mut sub = connect_clean(a.addr(), Protocol::V5, "sub").await;
    sub.subscribe("r/t", QoS::ExactlyOnce).await.unwrap();
    let mut publ = connect_clean(a.addr(), Protocol::V5, "pub").await;
    b.stop().await;

    let id = pid(7);
    let first = publish_packet(
        "r/t",
        b"first",
        QoS::ExactlyOnce,
        true,
        Some(id),
        Properties::default(),
    );
    publ.send(&first).await.unwrap();
    match publ.recv().await.unwrap() {
        Some(Packet::PubRec(r)) => {
            assert_eq!(r.packet_id, id);
            assert_eq!(
                r.reason_code,
                ReasonCode::UNSPECIFIED_ERROR,
                "retained copy stored?"
            );
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // The flow is over: the same id, no DUP, carries a new message.
    let second = publish_packet(
        "r/t",
        b"second",
        QoS::ExactlyOnce,
        false,
        Some(id),
        Properties::default(),
    );
    publ.send(&second).await.unwrap();
    match publ.recv().await.unwrap() {
        Some(Packet::PubRec(r)) => {
            assert_eq!(r.packet_id, id);
            assert_eq!(r.reason_code, ReasonCode::SUCCESS);
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publ.send(&Packet::PubRel(Ack::new(id))).await.unwrap();
    match publ.recv().await.unwrap() {
        Some(Packet::PubComp(c)) => {
            assert_eq!(c.packet_id, id);
            assert_eq!(c.reason_code, ReasonCode::SUCCESS);
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // Only the second was delivered: 0x80 means not accepted, so the first, whose retained
    // copy failed, was not routed either (issue 7 item 9).
    assert_eq!(payloads(&collect(&mut sub, SILENCE).await), ["second"]);
    a.stop().await;
}

/// Issue 7 item 9: a v3.1.1 retained QoS 1/2 PUBLISH whose retained copy cannot commit is not
/// acknowledged (3.1.1 has no failure code): the connection closes without PUBACK/PUBREC and
/// the message is not delivered, so the client's resend is neither lost nor a duplicate.
#[tokio::test]
async fn item9_v3_retained_publish_not_stored_is_not_acknowledged() {
    let (a, b) = two_nodes(|_| {}).await;
    let mut sub = connect_clean(a.addr(), Protocol::V311, "sub").await;
    sub.subscribe("r/t", QoS::ExactlyOnce).await.unwrap();
    // Connected while the cluster has a quorum (a CONNECT needs one).
    let mut pubs = Vec::new();
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let c = connect_clean(a.addr(), Protocol::V311, &format!("pub{}", qos as u8)).await;
        pubs.push((qos, c));
    }
    b.stop().await;
    for (qos, mut publ) in pubs {
        let p = publish_packet(
            "r/t",
            b"kept?",
            qos,
            true,
            Some(pid(3)),
            Properties::default(),
        );
        publ.send(&p).await.unwrap();
        // Closed without any acknowledgement.
        assert!(publ.expect_closed().await.unwrap().is_empty(), "{qos:?}");
    }
    assert!(collect(&mut sub, SILENCE).await.is_empty());
    a.stop().await;
}

/// Issue 7 item 17: acknowledgements held behind one that waits for a peer are bounded by
/// `mqtt.receive_maximum`. A v5 client sending one QoS 1 PUBLISH more than that while they are
/// held is disconnected with 0x93 ([MQTT-3.3.4-9]); a v3.1.1 client (no Receive Maximum in its
/// protocol) is no longer read until the oldest is released, so nothing overtakes the held
/// one, which closes the connection when it fails (issue 7 item 3).
///
/// The peer is cut off, not stopped: a stopped peer is known unreachable and its messages are
/// refused at once instead of held (docs/rfcs/0005). Each protocol gets its own pair of nodes,
/// since the first case leaves the peer known unreachable.
#[tokio::test]
async fn item17_held_acknowledgements_are_bounded() {
    for protocol in BOTH {
        let (a, b, proxy) = two_nodes_with(true, |c| {
            c.mqtt.receive_maximum = 4;
            c.cluster.forward_timeout_ms = 1500;
        })
        .await
        .unwrap();
        let proxy = proxy.unwrap();
        // A subscriber on b: a's PUBLISHes to far/t wait for b, which is cut off below.
        let mut far = connect_clean(b.addr(), Protocol::V5, "far").await;
        far.subscribe("far/t", QoS::AtLeastOnce).await.unwrap();
        let mut publ = connect_clean(a.addr(), protocol, &format!("pub{protocol:?}")).await;
        proxy.drop_replies(true);
        let held = publish_packet(
            "far/t",
            b"h",
            QoS::AtLeastOnce,
            false,
            Some(pid(1)),
            Properties::default(),
        );
        publ.send(&held).await.unwrap();
        for id in 2..=5 {
            let p = publish_packet(
                "near/t",
                b"n",
                QoS::AtLeastOnce,
                false,
                Some(pid(id)),
                Properties::default(),
            );
            publ.send(&p).await.unwrap();
        }
        publ.send(&Packet::PingReq).await.unwrap();
        // Until a PINGRESP or DISCONNECT, or the connection closed (`Ok(None)`); a receive
        // that timed out (`Err`) is a failure, not a close.
        let mut got = Vec::new();
        let end = loop {
            match publ.recv().await {
                Ok(Some(p)) => {
                    let done = matches!(p, Packet::PingResp | Packet::Disconnect(_));
                    got.push(p);
                    if done {
                        break Ok(None);
                    }
                }
                other => break other,
            }
        };
        assert!(
            end.is_ok(),
            "{protocol:?}: neither answered nor closed: {end:?}"
        );
        match protocol {
            Protocol::V5 => {
                // The fifth arrived while four were unacknowledged.
                let Some(Packet::Disconnect(d)) = got.last() else {
                    panic!("expected DISCONNECT 0x93, got {got:?}");
                };
                assert_eq!(d.reason_code, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
            }
            Protocol::V311 => {
                // Reading stopped behind the held one: no PINGRESP (nor any PUBACK) overtook
                // it. The cut-off peer never accepted it, and v3.1.1 has no failure code, so
                // the connection closed with it and everything behind it unacknowledged; the
                // client sends them again (issue 7 item 3).
                let order: Vec<String> = got
                    .iter()
                    .map(|p| match p {
                        Packet::PubAck(a) => format!("puback {}", a.packet_id.get()),
                        other => other.kind().to_string(),
                    })
                    .collect();
                assert_eq!(order, Vec::<String>::new());
            }
        }
        drop(far);
        proxy.drop_replies(false);
        a.stop().await;
        b.stop().await;
    }
}

/// Issue 7 item 15: while a packet waits for a commit (a retained copy, a route), the
/// connection goes on reading: a PINGREQ sent after it is answered at once, not after the
/// commit timeout (a client with a short keep-alive would otherwise give up on us).
#[tokio::test]
async fn item15_pingreq_is_answered_while_a_commit_is_in_flight() {
    let (a, b) = two_nodes(|c| {
        c.cluster.commit_timeout_ms = 3000;
        c.cluster.forward_timeout_ms = 500;
        // Two commit timeouts without quorum: the session lease (which would disconnect the
        // client once it runs out) must outlast them.
        c.cluster.session_lease_ms = 20_000;
    })
    .await;
    let mut publ = connect_clean(a.addr(), Protocol::V5, "pub").await;
    b.stop().await;
    // No quorum: the retained copy's commit waits the 3 s commit timeout.
    let retained = publish_packet(
        "r/t",
        b"r",
        QoS::AtLeastOnce,
        true,
        Some(pid(1)),
        Properties::default(),
    );
    publ.send(&retained).await.unwrap();
    publ.send(&Packet::PingReq).await.unwrap();
    // A new filter's route commit waits too.
    let subscribe = Packet::Subscribe(roost_codec::Subscribe {
        packet_id: pid(2),
        properties: Properties::default(),
        filters: vec![(
            "new/filter".to_string(),
            roost_codec::SubscriptionOptions::default(),
        )],
    });
    publ.send(&subscribe).await.unwrap();
    publ.send(&Packet::PingReq).await.unwrap();
    let mut order = Vec::new();
    while order.len() < 4 {
        match publ.recv().await.unwrap() {
            Some(p) => order.push(p.kind().to_string()),
            None => break,
        }
    }
    // Each PINGRESP before the answer its commit held back; the SUBSCRIBE waited behind the
    // PUBLISH (in order), the second PINGREQ behind the SUBSCRIBE it followed.
    assert_eq!(order, ["pingresp", "puback", "pingresp", "suback"]);
    a.stop().await;
}

/// Issue 7 item 18: the retained store is capped (`mqtt.max_retained_messages`,
/// `max_retained_bytes`): a retained QoS 1 PUBLISH for a new topic beyond it is refused (v5
/// 0x97, v3.1.1 closed unacknowledged) and not delivered; replacing or clearing a topic's
/// message still works, and clearing makes room.
#[tokio::test]
async fn item18_retained_messages_are_capped() {
    let node = TestNode::start_with(|c| {
        c.mqtt.max_retained_messages = 2;
        c.mqtt.max_retained_bytes = 1024 * 1024;
    })
    .await
    .unwrap();
    let mut sub = connect_clean(node.addr(), Protocol::V5, "sub").await;
    sub.subscribe("cap/#", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    let q1 = QoS::AtLeastOnce;
    assert_eq!(
        publ.publish("cap/a", b"1", q1, true).await.unwrap(),
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publ.publish("cap/b", b"2", q1, true).await.unwrap(),
        ReasonCode::SUCCESS
    );
    // A third topic is over the cap: refused, and not delivered either.
    let r = publ.publish("cap/c", b"3", q1, true).await.unwrap();
    assert_eq!(r, ReasonCode::QUOTA_EXCEEDED);
    // Replacing a topic's message is not a new one.
    assert_eq!(
        publ.publish("cap/a", b"1b", q1, true).await.unwrap(),
        ReasonCode::SUCCESS
    );
    // Clearing one makes room for another.
    assert_eq!(
        publ.publish("cap/b", b"", q1, true).await.unwrap(),
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publ.publish("cap/c", b"3b", q1, true).await.unwrap(),
        ReasonCode::SUCCESS
    );
    assert_eq!(
        payloads(&collect(&mut sub, SILENCE).await),
        ["1", "2", "1b", "", "3b"]
    );
    // v3.1.1 has no failure code: the connection closes without PUBACK.
    let mut v3 = connect_clean(node.addr(), Protocol::V311, "v3").await;
    let p = publish_packet("cap/d", b"4", q1, true, Some(pid(9)), Properties::default());
    v3.send(&p).await.unwrap();
    assert!(v3.expect_closed().await.unwrap().is_empty());
    node.stop().await;
}

/// Issue 7 item 9: messages of a shared-subscription member that leaves go to the rest of its
/// group on other nodes too, not only on its own node (where nobody else may be left).
#[tokio::test]
async fn item9_departed_shared_members_messages_reach_members_on_other_nodes() {
    let (a, b) = two_nodes(|_| {}).await;
    // On a: a member that takes one message at a time and never acknowledges it.
    let props = Properties {
        receive_maximum: Some(1),
        ..Properties::default()
    };
    let (mut ma, _) = connect_with(a.addr(), connect_v5("ma", true, props)).await;
    ma.subscribe("$share/g/sh/t", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut mb = connect_clean(b.addr(), Protocol::V5, "mb").await;
    mb.subscribe("$share/g/sh/t", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut publ = connect_clean(a.addr(), Protocol::V5, "pub").await;
    for i in 0..10 {
        publ.publish("sh/t", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    // ma holds its share (one in flight, the rest queued); it leaves without acknowledging,
    // and its session ends with the connection.
    drop(ma);
    let mut got: Vec<String> = Vec::new();
    for _ in 0..20 {
        for p in collect(&mut mb, SILENCE).await {
            if let Some(id) = p.packet_id {
                mb.send(&Packet::PubAck(Ack::new(id))).await.unwrap();
            }
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
        got.sort();
        got.dedup();
        if got.len() == 10 {
            break;
        }
    }
    let want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    a.stop().await;
    b.stop().await;
}

/// A subscriber that stops reading while a backlog larger than one write batch (64 KiB) waits
/// for it gets all of it once it reads again, with nothing else happening on the node. The
/// driver's blocked flush waits on the connection's wake (so a kick can end it); that wake was
/// also the one the encoder had set for "more in the outbox", and once the flush finished the
/// connection slept with the rest of the backlog until the next delivery or the keep-alive.
#[tokio::test]
async fn a_backlog_behind_a_blocked_write_is_all_sent_once_the_client_reads() {
    const MESSAGES: usize = 200;
    const PAYLOAD: usize = 32 * 1024;
    let node = TestNode::start().await.unwrap();
    let mut sub = connect_clean(node.addr(), Protocol::V5, "slow").await;
    sub.subscribe("backlog/t", QoS::AtMostOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    // 6.4 MB: more than the loopback socket buffers take from a client that does not read
    // (the send buffer grows to 4 MiB; the receive window stays near its initial size).
    for i in 0..MESSAGES {
        let mut payload = vec![b'x'; PAYLOAD];
        payload[..8].copy_from_slice(format!("{i:08}").as_bytes());
        let r = publ
            .publish("backlog/t", &payload, QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_eq!(r, ReasonCode::SUCCESS);
    }
    // Let the node fill the socket and block on it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut got = 0;
    while got < MESSAGES {
        match sub
            .recv_within(std::time::Duration::from_secs(10))
            .await
            .unwrap()
        {
            Some(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..8], format!("{got:08}").as_bytes(), "in order");
                got += 1;
            }
            other => panic!("after {got} of {MESSAGES}: {other:?}"),
        }
    }
    node.stop().await;
}

/// A client subscribed to its own topic gets every one of its pipelined publishes back, in
/// order, with every acknowledgement. A delivery to one's own session wakes the connection
/// that is routing it (the loop encodes it at its next turn); a change to that wake-up
/// (docs/performance.md, "The empty round") must not lose or reorder a delivery.
#[tokio::test]
async fn pipelined_publishes_to_ones_own_subscription_all_come_back_in_order() {
    // Bursts below the Receive Maximum the node announces (32).
    const BURST: usize = 16;
    const BURSTS: usize = 12;
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let mut c = connect_clean(node.addr(), protocol, "self").await;
        c.subscribe("self/t", QoS::AtLeastOnce).await.unwrap();
        let mut back = Vec::new();
        for burst in 0..BURSTS {
            for i in burst * BURST..(burst + 1) * BURST {
                let id = c.next_packet_id();
                c.send(&Packet::Publish(roost_codec::Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: "self/t".into(),
                    packet_id: Some(id),
                    properties: Properties::default(),
                    payload: i.to_string().into_bytes().into(),
                }))
                .await
                .unwrap();
            }
            // Each burst's acknowledgements and deliveries, whatever their interleaving.
            let mut acks = 0;
            while acks < BURST || back.len() < (burst + 1) * BURST {
                match c.recv().await.unwrap() {
                    Some(Packet::PubAck(a)) => {
                        assert_eq!(a.reason_code, ReasonCode::SUCCESS, "{protocol:?}");
                        acks += 1;
                    }
                    Some(Packet::Publish(p)) => {
                        let id = p.packet_id.expect("QoS 1 has a packet id");
                        c.send(&Packet::PubAck(Ack::new(id))).await.unwrap();
                        back.push(String::from_utf8_lossy(&p.payload).into_owned());
                    }
                    other => panic!("{protocol:?}: unexpected {other:?}"),
                }
            }
        }
        let sent: Vec<String> = (0..BURST * BURSTS).map(|i| i.to_string()).collect();
        assert_eq!(back, sent, "{protocol:?}");
        assert!(collect(&mut c, SILENCE).await.is_empty());
        c.disconnect().await.unwrap();
        wait_connections(&node, 0).await;
    }
}
