//! Wire tests of CONNECT handling: CONNACK fields, refusals (client id, protocol level,
//! connection limit), CONNECT-first and CONNECT-once rules, and the connect timeout.
#![allow(clippy::unwrap_used)]

use roost_codec::{ConnectVariant, Packet, Protocol, QoS, ReasonCode};
use roost_testkit::*;
use std::time::Duration;

#[tokio::test]
async fn v5_connack_announces_limits_and_assigns_a_client_id() {
    let node = TestNode::start_with(|c| {
        c.mqtt.receive_maximum = 10;
        c.mqtt.max_packet_size = 2048;
        c.mqtt.topic_alias_maximum = 5;
    })
    .await
    .unwrap();
    let (_c, ack) = RawClient::connect(node.addr(), Protocol::V5, "", true)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(10));
    assert_eq!(p.maximum_packet_size, Some(2048));
    assert_eq!(p.topic_alias_maximum, Some(5));
    // Nothing is announced that the client did not need to hear.
    assert_eq!(p.server_keep_alive, None);
    assert_eq!(p.session_expiry_interval, None);
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.retain_available, None);
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.shared_subscription_available, None);
    assert_eq!(p.subscription_identifiers_available, None);
    let id = p.assigned_client_identifier.clone().unwrap();
    assert!(!id.is_empty());

    // The assigned id names the session.
    let r = http(&node, "GET", &format!("/api/v1/clients/{id}"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["connected"], true);

    // A second empty-id client gets a different id.
    let (_c2, ack2) = RawClient::connect(node.addr(), Protocol::V5, "", true)
        .await
        .unwrap();
    let id2 = ack2.properties.assigned_client_identifier.unwrap();
    assert_ne!(id, id2);

    // A client that chose its id is not assigned one.
    let (_c3, ack3) = RawClient::connect(node.addr(), Protocol::V5, "chosen", true)
        .await
        .unwrap();
    assert_eq!(ack3.properties.assigned_client_identifier, None);
}

#[tokio::test]
async fn v5_connack_defaults_and_disabled_features() {
    let node = TestNode::start().await.unwrap();
    let (_c, ack) = RawClient::connect(node.addr(), Protocol::V5, "d", true)
        .await
        .unwrap();
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(32));
    assert_eq!(p.maximum_packet_size, Some(1_048_576));
    assert_eq!(p.topic_alias_maximum, Some(64));

    let node = TestNode::start_with(|c| {
        c.mqtt.max_qos = 1;
        c.mqtt.retain_available = false;
        c.mqtt.wildcard_subscriptions = false;
        c.mqtt.shared_subscriptions = false;
        c.mqtt.subscription_identifiers = false;
        c.mqtt.topic_alias_maximum = 0;
        c.mqtt.max_session_expiry_interval = 100;
    })
    .await
    .unwrap();
    let (_c, ack) = connect_with(node.addr(), persistent_packet(Protocol::V5, "d")).await;
    let p = &ack.properties;
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.retain_available, Some(0));
    assert_eq!(p.wildcard_subscription_available, Some(0));
    assert_eq!(p.shared_subscription_available, Some(0));
    assert_eq!(p.subscription_identifiers_available, Some(0));
    assert_eq!(p.topic_alias_maximum, None);
    // Asked for 300, capped to 100 and told so.
    assert_eq!(p.session_expiry_interval, Some(100));
}

#[tokio::test]
async fn v311_empty_client_id_needs_clean_session() {
    let node = TestNode::start().await.unwrap();
    // Raw bytes: CONNACK return code 0x02 (identifier rejected), then close.
    let mut body = s(b"MQTT");
    body.extend_from_slice(&[4, 0x00, 0, 60]); // level 4, clean session 0, keep-alive 60
    body.extend(s(b""));
    let got = raw_exchange(node.addr(), &pkt(0x10, &body)).await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x02]);

    // Through the codec: 0x02 reads back as 0x85 Client Identifier not valid.
    let mut c = RawClient::open(node.addr(), Protocol::V311).await.unwrap();
    let ack = c
        .handshake(connect_packet(Protocol::V311, "", false))
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    assert!(!ack.session_present);
    assert!(c.expect_closed().await.unwrap().is_empty());

    // With clean session 1 an empty id is accepted (and no id is sent back: v3.1.1 cannot).
    let (_c, ack) = RawClient::connect(node.addr(), Protocol::V311, "", true)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn too_long_client_id_is_refused() {
    let node = TestNode::start().await.unwrap();
    let long = "x".repeat(257);
    for protocol in BOTH {
        let mut c = RawClient::open(node.addr(), protocol).await.unwrap();
        let ack = c
            .handshake(connect_packet(protocol, &long, true))
            .await
            .unwrap();
        assert_eq!(
            ack.reason_code,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "{protocol:?}"
        );
        assert!(c.expect_closed().await.unwrap().is_empty());
    }
    // 256 bytes is the default limit and is fine.
    let ok = "y".repeat(256);
    RawClient::connect(node.addr(), Protocol::V5, &ok, true)
        .await
        .unwrap();
}

#[tokio::test]
async fn first_packet_not_connect_closes_without_connack() {
    let node = TestNode::start().await.unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("PINGREQ", vec![0xC0, 0x00]),
        ("PUBLISH", pkt(0x30, &[s(b"t").as_slice(), b"x"].concat())),
        (
            "SUBSCRIBE",
            pkt(0x82, &[&[0, 1][..], &s(b"t"), &[0]].concat()),
        ),
        ("DISCONNECT", vec![0xE0, 0x00]),
    ];
    for (name, bytes) in cases {
        let got = raw_exchange(node.addr(), &bytes).await;
        assert!(got.is_empty(), "{name}: broker sent {got:02x?}");
    }
    assert_eq!(node.node().connection_count(), 0);
    // The node still serves.
    RawClient::connect(node.addr(), Protocol::V5, "ok", true)
        .await
        .unwrap();
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01_or_0x84() {
    let node = TestNode::start().await.unwrap();
    // "MQIsdp" is MQTT 3.1 only at level 3 (which is accepted: below).
    let mut body = s(b"MQIsdp");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    body.extend(s(b"old"));
    let got = raw_exchange(node.addr(), &pkt(0x10, &body)).await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x01]);

    // "MQTT" level 3: the same answer.
    let mut body = s(b"MQTT");
    body.extend_from_slice(&[3, 0x02, 0, 60]);
    body.extend(s(b"old"));
    let got = raw_exchange(node.addr(), &pkt(0x10, &body)).await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x01]);

    // A level above 5: v5-form CONNACK 0x84 Unsupported Protocol Version, no properties.
    let mut body = s(b"MQTT");
    body.extend_from_slice(&[6, 0x02, 0, 60, 0]);
    body.extend(s(b"new"));
    let got = raw_exchange(node.addr(), &pkt(0x10, &body)).await;
    assert_eq!(got, [0x20, 0x03, 0x00, 0x84, 0x00]);
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let id = format!("twice-{protocol:?}");
        let (mut c, _) = RawClient::connect(node.addr(), protocol, &id, true)
            .await
            .unwrap();
        c.send(&Packet::Connect(Box::new(connect_packet(
            protocol, &id, true,
        ))))
        .await
        .unwrap();
        expect_disconnect(&mut c, ReasonCode::PROTOCOL_ERROR).await;
    }
    wait_connections(&node, 0).await;
    RawClient::connect(node.addr(), Protocol::V311, "after", true)
        .await
        .unwrap();
}

#[tokio::test]
async fn connection_limit_refuses_with_quota_exceeded() {
    let node = TestNode::start_with(|c| c.mqtt.max_connections = 1)
        .await
        .unwrap();
    let (first, _) = RawClient::connect(node.addr(), Protocol::V5, "first", true)
        .await
        .unwrap();

    let mut c = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    let ack = c
        .handshake(connect_packet(Protocol::V5, "second", true))
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    assert!(c.expect_closed().await.unwrap().is_empty());

    // v3.1.1 has no quota code: return code 0x03 Server unavailable.
    let mut body = s(b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    body.extend(s(b"third"));
    let got = raw_exchange(node.addr(), &pkt(0x10, &body)).await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x03]);

    // A refused CONNECT does not hold the slot; a freed slot can be used again.
    assert_eq!(node.node().connection_count(), 1);
    first.disconnect().await.unwrap();
    wait_connections(&node, 0).await;
    RawClient::connect(node.addr(), Protocol::V311, "fourth", true)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_closes_a_silent_socket() {
    let node = TestNode::start_with(|c| c.mqtt.connect_timeout_secs = 4)
        .await
        .unwrap();
    // Nothing sent at all.
    let mut idle = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    // Half a CONNECT: the timeout covers the whole packet, not its first byte.
    let mut partial = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    partial.send_bytes(&[0x10, 0x20, 0x00]).await.unwrap();

    idle.expect_silence(Duration::from_millis(3900))
        .await
        .unwrap();
    assert!(idle
        .recv_within(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    assert!(partial
        .recv_within(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    // A client that connects in time is not affected by the timer.
    let (mut ok, _) = RawClient::connect(node.addr(), Protocol::V5, "ok", true)
        .await
        .unwrap();
    ok.expect_silence(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn refusals_for_auth_and_will() {
    let node = TestNode::start_with(|c| c.mqtt.allow_anonymous = false)
        .await
        .unwrap();
    for protocol in BOTH {
        let mut c = RawClient::open(node.addr(), protocol).await.unwrap();
        let ack = c
            .handshake(connect_packet(protocol, "anon", true))
            .await
            .unwrap();
        assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED, "{protocol:?}");
        assert!(c.expect_closed().await.unwrap().is_empty());
    }

    let node = TestNode::start().await.unwrap();
    // Enhanced authentication is not offered.
    let props = roost_codec::Properties {
        authentication_method: Some("SCRAM-SHA-1".to_owned()),
        ..roost_codec::Properties::default()
    };
    let mut c = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    let ack = c.handshake(connect_v5("auth", true, props)).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert!(c.expect_closed().await.unwrap().is_empty());

    // A will into `$SYS` is refused.
    let mut connect = connect_packet(Protocol::V5, "w", true);
    connect.will = Some(will("$SYS/fake", b"x", roost_codec::Properties::default()));
    let mut c = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    let ack = c.handshake(connect).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::TOPIC_NAME_INVALID);
    assert!(c.expect_closed().await.unwrap().is_empty());
    assert_eq!(node.node().connection_count(), 0);
}

/// A takeover replaces a connection, so it is allowed even when the node is at its limit.
#[tokio::test]
async fn takeover_is_allowed_at_the_connection_limit() {
    let node = TestNode::start_with(|c| c.mqtt.max_connections = 1)
        .await
        .unwrap();
    // A persistent session (v5: with a Session Expiry Interval), so the takeover continues
    // it; one that ends with its connection would end with the takeover (issue 7 item 11).
    let (mut first, _) = connect_persistent(node.addr(), Protocol::V5, "same").await;
    let (_second, ack) = connect_persistent(node.addr(), Protocol::V5, "same").await;
    assert!(ack.session_present);
    let got = first.expect_closed().await.unwrap();
    assert!(matches!(
        got.as_slice(),
        [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SESSION_TAKEN_OVER
    ));
    wait_connections(&node, 1).await;
}

/// A v5 CONNECT (clean start, keep-alive 60) announcing Maximum Packet Size `max`, as bytes.
fn connect_with_maximum_packet_size(client_id: &str, max: u32) -> Vec<u8> {
    let c = connect_v5(
        client_id,
        true,
        roost_codec::Properties {
            maximum_packet_size: Some(max),
            ..roost_codec::Properties::default()
        },
    );
    let mut buf = bytes::BytesMut::new();
    roost_codec::encode(&Packet::Connect(Box::new(c)), Protocol::V5, &mut buf).unwrap();
    buf.to_vec()
}

/// Sends a CONNECT and reads exactly `expect.len()` bytes back; then checks the connection
/// is open (PINGREQ answered) with nothing else sent before the PINGRESP.
async fn connack_bytes_then_ping(node: &TestNode, connect: &[u8], expect: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    stream.write_all(connect).await.unwrap();
    let mut got = vec![0; expect.len()];
    tokio::time::timeout(RECV_TIMEOUT, stream.read_exact(&mut got))
        .await
        .expect("CONNACK in time")
        .unwrap();
    assert_eq!(got, expect);
    stream.write_all(&[0xC0, 0x00]).await.unwrap();
    let mut pong = [0; 2];
    tokio::time::timeout(RECV_TIMEOUT, stream.read_exact(&mut pong))
        .await
        .expect("PINGRESP in time")
        .unwrap();
    assert_eq!(pong, [0xD0, 0x00], "connection not open, or more was sent");
}

/// Issue 7, item 12: the CONNACK never exceeds the client's Maximum Packet Size
/// [MQTT-3.1.2-24]. Properties are left out until it fits (the default full CONNACK is 16
/// bytes); a client for which even the smallest does not fit is refused: 0x95 when that
/// CONNACK fits (an assigned client id that does not), else closed without a byte; each
/// refusal counted as `connack_too_large`.
#[tokio::test]
async fn item12_connack_never_exceeds_the_client_maximum_packet_size() {
    let node = TestNode::start().await.unwrap();
    let counted = r#"roost_mqtt_connections_rejected_total{reason="connack_too_large"}"#;
    let before = metric(&node, counted).await;

    // Below 5 bytes nothing fits: closed without a CONNACK.
    for max in [2, 3, 4] {
        let got = raw_exchange(node.addr(), &connect_with_maximum_packet_size("tiny", max)).await;
        assert!(got.is_empty(), "max {max}: broker sent {got:02x?}");
    }
    // 5: the bare CONNACK (flags 0, reason 0, no properties), and the connection is open.
    let bare = connect_with_maximum_packet_size("five", 5);
    connack_bytes_then_ping(&node, &bare, &[0x20, 0x03, 0x00, 0x00, 0x00]).await;
    // 10: Topic Alias Maximum and Maximum Packet Size left out, Receive Maximum 32 kept.
    let ten = connect_with_maximum_packet_size("ten", 10);
    let rm = [0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x20];
    connack_bytes_then_ping(&node, &ten, &rm).await;
    // An assigned client id must be in the CONNACK: with 20 bytes it cannot be, so 0x95.
    let got = raw_exchange(node.addr(), &connect_with_maximum_packet_size("", 20)).await;
    assert_eq!(got, [0x20, 0x03, 0x00, 0x95, 0x00]);

    assert_eq!(metric(&node, counted).await - before, 4.0);
}

/// Issue 7 item 19: sockets that have not sent CONNECT are bounded in number
/// (`mqtt.max_pending_connections`: one more is closed at accept) and in the bytes their
/// partial CONNECTs may buffer (`mqtt.pending_connect_bytes`), not only by the connect timeout.
#[tokio::test]
async fn item19_sockets_without_connect_are_bounded() {
    let node = TestNode::start_with(|c| {
        c.mqtt.max_pending_connections = 2;
        // The smallest allowed: one largest CONNECT (max_packet_size, 1 MiB).
        c.mqtt.pending_connect_bytes = 1024 * 1024;
        c.mqtt.connect_timeout_secs = 60;
    })
    .await
    .unwrap();
    // Two silent sockets take both places; the third is closed at once.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(RawClient::open(node.addr(), Protocol::V5).await.unwrap());
    }
    let mut third = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    assert!(third.expect_closed().await.unwrap().is_empty());
    // A place given back (the socket closed) can be used again, and a CONNECT frees its place.
    drop(silent.pop());
    let mut ok = None;
    for _ in 0..50 {
        match RawClient::connect(node.addr(), Protocol::V5, "fits", true).await {
            Ok((c, _)) => {
                ok = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    assert!(ok.is_some(), "no place freed");
    drop(silent);

    // Two CONNECTs announcing ~1,000,000 bytes each, sent slowly side by side: together their
    // partial CONNECTs pass 1 MiB, and one of them is closed long before the connect timeout.
    let mut big = Vec::new();
    for _ in 0..2 {
        let mut c = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
        // Remaining length 1,000,000 as a variable byte integer.
        c.send_bytes(&[0x10, 0xC0, 0x84, 0x3D]).await.unwrap();
        big.push(c);
    }
    let chunk = vec![0u8; 8192];
    for _ in 0..75 {
        for c in &mut big {
            // A write to a socket the node closed may fail: the close is checked below.
            let _ = c.send_bytes(&chunk).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let mut closed = 0;
    for c in &mut big {
        closed += usize::from(c.expect_closed().await.is_ok());
    }
    assert!(
        closed >= 1,
        "1.2 MB of partial CONNECTs buffered past the 1 MiB cap"
    );
    let metrics = http(&node, "GET", "/metrics", None).await.body;
    for reason in ["pending_limit", "pending_bytes"] {
        let prefix = format!("roost_mqtt_connections_rejected_total{{reason=\"{reason}\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(n >= 1, "{reason} not counted:\n{metrics}");
    }
}

/// A CONNECT in the 3.1.1 format announcing MQTT 3.1 and/or a bridge.
fn variant_connect(id: &str, clean: bool, variant: ConnectVariant) -> roost_codec::Connect {
    roost_codec::Connect {
        variant,
        ..connect_packet(Protocol::V311, id, clean)
    }
}

const MQTT31: ConnectVariant = ConnectVariant {
    mqtt31: true,
    bridge: false,
};

/// Issue 9 "Protocol breadth": MQTT 3.1 ("MQIsdp", level 3), still spoken by older devices, is
/// accepted on the same listener with its own rules: a client id of 1 to 23 characters (else
/// CONNACK return code 2, Identifier Rejected), and a CONNACK whose session-present bit (a
/// reserved byte in 3.1) stays 0 even when the session was kept. Before, every 3.1 CONNECT
/// got return code 1 (unacceptable protocol version).
#[tokio::test]
async fn mqtt31_clients_are_served_with_their_rules() {
    let node = TestNode::start().await.unwrap();
    // Return code 2 for an id 3.1 does not allow; the exact bytes, as a 3.1 client reads them.
    for id in ["", "abcdefghijklmnopqrstuvwx"] {
        let mut body = s(b"MQIsdp");
        body.extend_from_slice(&[3, 0x02, 0, 60]);
        body.extend(s(id.as_bytes()));
        let got = raw_exchange(node.addr(), &pkt(0x10, &body)).await;
        assert_eq!(got, [0x20, 0x02, 0x00, 0x02], "client id {id:?}");
    }
    // 23 characters: served. A persistent session is kept, but 3.1 is not told so.
    let id = "abcdefghijklmnopqrstuvw";
    let connect31 = || async {
        let mut c = RawClient::open(node.addr(), Protocol::V311).await.unwrap();
        let ack = c
            .handshake(variant_connect(id, false, MQTT31))
            .await
            .unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        (c, ack.session_present)
    };
    let (mut c, present) = connect31().await;
    assert!(!present);
    c.subscribe("old/t", QoS::AtLeastOnce).await.unwrap();
    c.disconnect().await.unwrap();
    let mut p = connect_clean(node.addr(), Protocol::V311, "p").await;
    p.publish("old/t", b"kept", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let (mut c, present) = connect31().await;
    assert!(!present, "3.1's CONNACK has no session-present flag");
    assert_eq!(payloads(&[recv_publish(&mut c).await]), ["kept"]);
}

/// Issue 9: a Mosquitto bridge connects with the level's top bit set (0x84 here, 0x83 for
/// 3.1) and expects what MQTT 5 calls No Local and Retain As Published on its subscriptions:
/// what it publishes does not come back to it (else two bridged brokers loop a message
/// forever), and a retained flag crosses as published. A plain 3.1.1 subscriber on the same
/// filter still gets both as 3.1.1 says.
#[tokio::test]
async fn a_bridge_gets_no_local_and_retain_as_published() {
    let node = TestNode::start().await.unwrap();
    let bridge_variant = ConnectVariant {
        mqtt31: false,
        bridge: true,
    };
    let mut bridge = RawClient::open(node.addr(), Protocol::V311).await.unwrap();
    let ack = bridge
        .handshake(variant_connect("bridge", true, bridge_variant))
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    bridge.subscribe("br/#", QoS::AtLeastOnce).await.unwrap();
    let mut plain = connect_clean(node.addr(), Protocol::V311, "plain").await;
    plain.subscribe("br/#", QoS::AtLeastOnce).await.unwrap();

    bridge
        .publish("br/from-bridge", b"1", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let mut other = connect_clean(node.addr(), Protocol::V311, "other").await;
    other
        .publish("br/live", b"2", QoS::AtLeastOnce, true)
        .await
        .unwrap();

    // The bridge gets only the other client's message, its retain flag kept.
    let got = recv_publish(&mut bridge).await;
    assert_eq!((got.topic.as_str(), got.retain), ("br/live", true));
    bridge
        .expect_silence(Duration::from_millis(300))
        .await
        .unwrap();
    // The plain subscriber gets both, as live messages (retain 0, [MQTT-3.3.1-9]).
    let a = recv_publish(&mut plain).await;
    let b = recv_publish(&mut plain).await;
    assert_eq!(
        [(a.topic.as_str(), a.retain), (b.topic.as_str(), b.retain)],
        [("br/from-bridge", false), ("br/live", false)]
    );
}
