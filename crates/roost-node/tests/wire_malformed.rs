//! Wire tests of malformed and illegal input after CONNECT: each closes only the offending
//! connection (v5: with DISCONNECT and the reason code the codec maps the error to; v3.1.1:
//! closed without a packet, as v3.1.1 has no server DISCONNECT), and the node goes on serving
//! new clients.
#![allow(clippy::unwrap_used)]

use roost_codec::{Protocol, QoS, ReasonCode};
use roost_testkit::*;

const MALFORMED: ReasonCode = ReasonCode::MALFORMED_PACKET;
const PROTOCOL_ERROR: ReasonCode = ReasonCode::PROTOCOL_ERROR;

/// PUBLISH bytes: `flags` is the low nibble; a v5 PUBLISH gets `props` (raw property bytes).
fn publish_bytes(
    protocol: Protocol,
    flags: u8,
    topic: &[u8],
    packet_id: Option<u16>,
    props: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut body = s(topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if protocol == Protocol::V5 {
        body.push(u8::try_from(props.len()).unwrap());
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    pkt(0x30 | flags, &body)
}

/// SUBSCRIBE bytes with one filter.
fn subscribe_bytes(
    protocol: Protocol,
    first: u8,
    packet_id: u16,
    filter: &[u8],
    opts: u8,
) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if protocol == Protocol::V5 {
        body.push(0);
    }
    body.extend(s(filter));
    body.push(opts);
    pkt(first, &body)
}

/// Connects, sends `bytes`, expects the close with `reason`, then checks a new pair of clients
/// can still subscribe and publish on the same node.
async fn assert_rejected(node: &TestNode, protocol: Protocol, bytes: &[u8], reason: ReasonCode) {
    let before = metric(node, "roost_mqtt_malformed_packets_total").await;
    let id = format!("bad-{protocol:?}");
    let (mut c, _) = RawClient::connect(node.addr(), protocol, &id, true)
        .await
        .unwrap();
    c.send_bytes(bytes).await.unwrap();
    expect_disconnect(&mut c, reason).await;
    assert!(metric(node, "roost_mqtt_malformed_packets_total").await > before);
    assert_still_serves(node, protocol).await;
}

async fn assert_still_serves(node: &TestNode, protocol: Protocol) {
    let mut sub = connect_clean(node.addr(), protocol, "after-sub").await;
    sub.subscribe("after/t", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), protocol, "after-pub").await;
    let r = publ
        .publish("after/t", b"still here", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(r, ReasonCode::SUCCESS);
    let p = sub.next_publish().await.unwrap();
    assert_eq!(p.topic, "after/t");
    assert_eq!(&p.payload[..], b"still here");
    sub.disconnect().await.unwrap();
    publ.disconnect().await.unwrap();
    wait_connections(node, 0).await;
}

#[tokio::test]
async fn bad_remaining_length() {
    let node = TestNode::start().await.unwrap();
    for p in BOTH {
        // Five continuation bytes: a Variable Byte Integer has at most four.
        assert_rejected(&node, p, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], MALFORMED).await;
        // Non-minimal encoding of 0.
        assert_rejected(&node, p, &[0xC0, 0x80, 0x00], MALFORMED).await;
    }
}

#[tokio::test]
async fn publish_with_qos_3() {
    let node = TestNode::start().await.unwrap();
    for p in BOTH {
        let bytes = publish_bytes(p, 0b0110, b"t", Some(1), &[], b"x");
        assert_rejected(&node, p, &bytes, MALFORMED).await;
    }
}

#[tokio::test]
async fn publish_with_dup_on_qos_0() {
    let node = TestNode::start().await.unwrap();
    for p in BOTH {
        let bytes = publish_bytes(p, 0b1000, b"t", None, &[], b"x");
        assert_rejected(&node, p, &bytes, MALFORMED).await;
    }
}

#[tokio::test]
async fn wildcard_in_publish_topic() {
    let node = TestNode::start().await.unwrap();
    for p in BOTH {
        for topic in [&b"a/+"[..], b"a/#", b"+"] {
            let bytes = publish_bytes(p, 0, topic, None, &[], b"x");
            assert_rejected(&node, p, &bytes, PROTOCOL_ERROR).await;
        }
    }
}

#[tokio::test]
async fn empty_publish_topic_without_alias() {
    let node = TestNode::start().await.unwrap();
    for p in BOTH {
        let bytes = publish_bytes(p, 0, b"", None, &[], b"x");
        assert_rejected(&node, p, &bytes, PROTOCOL_ERROR).await;
    }
}

#[tokio::test]
async fn null_character_in_topic() {
    let node = TestNode::start().await.unwrap();
    for p in BOTH {
        let bytes = publish_bytes(p, 0, b"a\0b", None, &[], b"x");
        assert_rejected(&node, p, &bytes, MALFORMED).await;
        // Invalid UTF-8 is malformed too.
        let bytes = publish_bytes(p, 0, b"a\xffb", None, &[], b"x");
        assert_rejected(&node, p, &bytes, MALFORMED).await;
    }
}

#[tokio::test]
async fn subscribe_with_reserved_fixed_header_flags() {
    let node = TestNode::start().await.unwrap();
    for p in BOTH {
        // SUBSCRIBE must have flags 0b0010.
        let bytes = subscribe_bytes(p, 0x80, 1, b"t", 0);
        assert_rejected(&node, p, &bytes, MALFORMED).await;
        // Reserved bits of the subscription options byte.
        let bytes = subscribe_bytes(p, 0x82, 1, b"t", 0xC0);
        assert_rejected(&node, p, &bytes, MALFORMED).await;
    }
}

#[tokio::test]
async fn packet_id_zero() {
    let node = TestNode::start().await.unwrap();
    for p in BOTH {
        let bytes = subscribe_bytes(p, 0x82, 0, b"t", 0);
        assert_rejected(&node, p, &bytes, PROTOCOL_ERROR).await;
        let bytes = publish_bytes(p, 0b0010, b"t", Some(0), &[], b"x");
        assert_rejected(&node, p, &bytes, PROTOCOL_ERROR).await;
        // PUBACK for id 0.
        assert_rejected(&node, p, &[0x40, 0x02, 0x00, 0x00], PROTOCOL_ERROR).await;
    }
}

#[tokio::test]
async fn v5_duplicate_property() {
    let node = TestNode::start().await.unwrap();
    // Payload Format Indicator (0x01) twice.
    let bytes = publish_bytes(Protocol::V5, 0, b"t", None, &[0x01, 0x00, 0x01, 0x01], b"x");
    assert_rejected(&node, Protocol::V5, &bytes, PROTOCOL_ERROR).await;
    // Message Expiry Interval (0x02) twice.
    let props = [0x02, 0, 0, 0, 9, 0x02, 0, 0, 0, 9];
    let bytes = publish_bytes(Protocol::V5, 0, b"t", None, &props, b"x");
    assert_rejected(&node, Protocol::V5, &bytes, PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn v5_unknown_property_and_subscription_identifier_from_client() {
    let node = TestNode::start().await.unwrap();
    let bytes = publish_bytes(Protocol::V5, 0, b"t", None, &[0x7F, 0x00], b"x");
    assert_rejected(&node, Protocol::V5, &bytes, MALFORMED).await;
    // [MQTT-3.3.4-6]: Subscription Identifier (0x0B) in a client's PUBLISH.
    let bytes = publish_bytes(Protocol::V5, 0, b"t", None, &[0x0B, 0x01], b"x");
    assert_rejected(&node, Protocol::V5, &bytes, PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn oversize_packet() {
    let node = TestNode::start_with(|c| c.mqtt.max_packet_size = 1024)
        .await
        .unwrap();
    for p in BOTH {
        // The fixed header announces 2000 bytes: refused before the body is read.
        let mut bytes = vec![0x30, 0xD0, 0x0F];
        bytes.extend_from_slice(&s(b"big"));
        assert_rejected(&node, p, &bytes, ReasonCode::PACKET_TOO_LARGE).await;
    }
    // Exactly at the limit is accepted: 1 + 2 (remaining length) + 1021 = 1024 bytes.
    let mut sub = connect_clean(node.addr(), Protocol::V5, "sub").await;
    sub.subscribe("big", QoS::AtMostOnce).await.unwrap();
    let mut c = connect_clean(node.addr(), Protocol::V5, "edge").await;
    let payload = vec![b'x'; 1021 - 2 - 3 - 1];
    let bytes = publish_bytes(Protocol::V5, 0, b"big", None, &[], &payload);
    assert_eq!(bytes.len(), 1024);
    c.send_bytes(&bytes).await.unwrap();
    let got = sub.next_publish().await.unwrap();
    assert_eq!(got.payload.len(), payload.len());
}

#[tokio::test]
async fn client_sending_server_only_packets() {
    let node = TestNode::start().await.unwrap();
    for p in BOTH {
        let connack: &[u8] = match p {
            Protocol::V311 => &[0x20, 0x02, 0x00, 0x00],
            Protocol::V5 => &[0x20, 0x03, 0x00, 0x00, 0x00],
        };
        assert_rejected(&node, p, connack, PROTOCOL_ERROR).await;
        let suback: &[u8] = match p {
            Protocol::V311 => &[0x90, 0x03, 0x00, 0x01, 0x00],
            Protocol::V5 => &[0x90, 0x04, 0x00, 0x01, 0x00, 0x00],
        };
        assert_rejected(&node, p, suback, PROTOCOL_ERROR).await;
        assert_rejected(&node, p, &[0xD0, 0x00], PROTOCOL_ERROR).await; // PINGRESP
    }
}

#[tokio::test]
async fn reserved_packet_type_zero() {
    let node = TestNode::start().await.unwrap();
    for p in BOTH {
        assert_rejected(&node, p, &[0x00, 0x00], MALFORMED).await;
    }
    // AUTH does not exist in v3.1.1.
    assert_rejected(&node, Protocol::V311, &[0xF0, 0x00], MALFORMED).await;
}

#[tokio::test]
async fn malformed_input_leaves_other_connections_alone() {
    let node = TestNode::start().await.unwrap();
    let mut sub = connect_clean(node.addr(), Protocol::V5, "bystander").await;
    sub.subscribe("by/t", QoS::AtLeastOnce).await.unwrap();
    let (mut bad, _) = RawClient::connect(node.addr(), Protocol::V5, "bad", true)
        .await
        .unwrap();
    bad.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
        .await
        .unwrap();
    expect_disconnect(&mut bad, MALFORMED).await;
    let mut publ = connect_clean(node.addr(), Protocol::V311, "pub").await;
    publish_ok(&mut publ, "by/t", b"hi").await;
    assert_eq!(&sub.next_publish().await.unwrap().payload[..], b"hi");
}
