//! Table-driven tests: one row per malformed-packet / protocol-error rule the decoder enforces,
//! asserting the exact `DecodeError` variant and the v5 reason code it maps to.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use roost_codec::{DecodeError, Decoder, Packet, Protocol};
use test_case::test_case;

use DecodeError::*;
use Protocol::{V311, V5};

const MAX: u32 = 1 << 20;

/// A whole packet: first byte, remaining length, body.
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string / binary field.
fn s(x: &[u8]) -> Vec<u8> {
    let mut out = (x.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(x);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// CONNECT: protocol name, level, flags, keep alive 60, then `rest` verbatim (v5 properties,
/// client id, ...).
fn connect(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    pkt(0x10, &cat(&[&s(name), &[level, flags, 0, 60], rest]))
}

/// A valid minimal CONNECT for `protocol` with client id "c".
fn good_connect(protocol: Protocol) -> Vec<u8> {
    match protocol {
        V5 => connect(b"MQTT", 5, 0x02, &cat(&[&[0], &s(b"c")])),
        V311 => connect(b"MQTT", 4, 0x02, &s(b"c")),
    }
}

/// PUBLISH QoS 0 with v5 properties `props` (already including the property length).
fn publish_v5(topic: &[u8], props: &[u8]) -> Vec<u8> {
    pkt(0x30, &cat(&[&s(topic), props, b"payload"]))
}

/// SUBSCRIBE packet id 1 with the given (filter, options) pairs; v5 adds an empty property block.
fn subscribe(protocol: Protocol, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = vec![0, 1];
    if protocol == V5 {
        body.push(0);
    }
    for (f, o) in filters {
        body.extend_from_slice(&s(f));
        body.push(*o);
    }
    pkt(0x82, &body)
}

fn decode_client(protocol: Protocol, bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let mut decoder = Decoder::client(protocol, MAX);
    let mut buf = BytesMut::from(bytes);
    decoder.decode(&mut buf)
}

/// Decodes with a server decoder that has already accepted a CONNECT for `protocol`.
fn decode_server(protocol: Protocol, bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let mut decoder = Decoder::server(MAX);
    let mut buf = BytesMut::from(&good_connect(protocol)[..]);
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Connect(_)))
    ));
    assert_eq!(decoder.protocol(), Some(protocol));
    buf.extend_from_slice(bytes);
    decoder.decode(&mut buf)
}

fn err(result: Result<Option<Packet>, DecodeError>) -> (DecodeError, u8) {
    match result {
        Err(e) => {
            assert!(e.to_string().starts_with("[MQTT-"), "no citation: {e}");
            let code = e.reason_code().0;
            (e, code)
        }
        Ok(p) => panic!("expected an error, decoded {p:?}"),
    }
}

// ---- fixed header -------------------------------------------------------------------------

#[test_case(V5, pkt(0x60, &[0, 1]) => (InvalidFixedHeaderFlags { packet_type: 6, flags: 0 }, 0x81); "pubrel flags 0")]
#[test_case(V311, pkt(0x63, &[0, 1]) => (InvalidFixedHeaderFlags { packet_type: 6, flags: 3 }, 0x81); "pubrel flags 3")]
#[test_case(V5, pkt(0x80, &cat(&[&[0, 1, 0], &s(b"a"), &[0]])) => (InvalidFixedHeaderFlags { packet_type: 8, flags: 0 }, 0x81); "subscribe flags 0")]
#[test_case(V5, pkt(0xA0, &cat(&[&[0, 1, 0], &s(b"a")])) => (InvalidFixedHeaderFlags { packet_type: 10, flags: 0 }, 0x81); "unsubscribe flags 0")]
#[test_case(V5, pkt(0x42, &[0, 1]) => (InvalidFixedHeaderFlags { packet_type: 4, flags: 2 }, 0x81); "puback flags 2")]
#[test_case(V5, pkt(0xC1, &[]) => (InvalidFixedHeaderFlags { packet_type: 12, flags: 1 }, 0x81); "pingreq flags 1")]
#[test_case(V5, pkt(0xE8, &[]) => (InvalidFixedHeaderFlags { packet_type: 14, flags: 8 }, 0x81); "disconnect flags 8")]
#[test_case(V5, vec![0x00, 0x00] => (InvalidPacketType(0), 0x81); "packet type 0")]
#[test_case(V311, vec![0xF0, 0x00] => (InvalidPacketType(15), 0x81); "auth in v311")]
#[test_case(V5, vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01] => (MalformedVariableByteInteger, 0x81); "remaining length 5 bytes")]
#[test_case(V5, vec![0xC0, 0x80, 0x00] => (MalformedVariableByteInteger, 0x81); "remaining length not minimal 2 bytes")]
#[test_case(V5, vec![0xC0, 0x80, 0x80, 0x80, 0x00] => (MalformedVariableByteInteger, 0x81); "remaining length not minimal 4 bytes")]
#[test_case(V311, pkt(0xC0, &[0]) => (TrailingBytes(1), 0x81); "pingreq with a body")]
#[test_case(V311, pkt(0x40, &[0, 1, 0]) => (TrailingBytes(1), 0x81); "v311 puback with trailing byte")]
#[test_case(V311, pkt(0x40, &[0]) => (LengthOverrun, 0x81); "puback shorter than packet id")]
#[test_case(V311, pkt(0xE0, &[0]) => (TrailingBytes(1), 0x81); "v311 disconnect with a body")]
fn fixed_header(protocol: Protocol, bytes: Vec<u8>) -> (DecodeError, u8) {
    err(decode_client(protocol, &bytes))
}

// ---- PUBLISH --------------------------------------------------------------------------------

#[test_case(V5, pkt(0x36, &cat(&[&s(b"a"), &[0, 1, 0]])) => (InvalidQoS, 0x81); "qos 3")]
#[test_case(V311, pkt(0x38, &s(b"a")) => (DupWithQoS0, 0x81); "dup with qos 0")]
#[test_case(V311, pkt(0x32, &cat(&[&s(b"a"), &[0, 0]])) => (ZeroPacketId, 0x82); "publish packet id 0")]
#[test_case(V311, pkt(0x30, &s(b"a/+")) => (TopicNameWildcard, 0x82); "topic with plus")]
#[test_case(V5, publish_v5(b"a/#", &[0]) => (TopicNameWildcard, 0x82); "topic with hash")]
#[test_case(V311, pkt(0x30, &s(b"")) => (EmptyTopicName, 0x82); "v311 empty topic")]
#[test_case(V5, publish_v5(b"", &[0]) => (EmptyTopicName, 0x82); "v5 empty topic without alias")]
#[test_case(V311, pkt(0x30, &s(&[0xED, 0xA0, 0x80])) => (InvalidUtf8, 0x81); "surrogate code point")]
#[test_case(V311, pkt(0x30, &s(&[0xC0, 0x80])) => (InvalidUtf8, 0x81); "overlong encoding")]
#[test_case(V311, pkt(0x30, &s(b"a\0b")) => (NullCharacter, 0x81); "null character")]
#[test_case(V311, pkt(0x30, &[0, 5, b'a']) => (LengthOverrun, 0x81); "topic length overruns packet")]
#[test_case(V5, publish_v5(b"a", &[2, 0x23, 0]) => (LengthOverrun, 0x81); "property overruns property length")]
#[test_case(V5, publish_v5(b"a", &[9]) => (LengthOverrun, 0x81); "property length overruns packet")]
#[test_case(V5, publish_v5(b"a", &[0x80, 0x00]) => (MalformedVariableByteInteger, 0x81); "property length not minimal")]
#[test_case(V5, publish_v5(b"a", &[1, 0x7F]) => (UnknownProperty(0x7F), 0x81); "unknown property")]
#[test_case(V5, publish_v5(b"a", &[5, 0x11, 0, 0, 0, 1]) => (PropertyNotAllowed { id: 0x11, packet: "PUBLISH" }, 0x81); "session expiry in publish")]
#[test_case(V5, publish_v5(b"a", &[8, 0x03, 0, 1, b'x', 0x03, 0, 1, b'y']) => (DuplicateProperty(0x03), 0x82); "content type twice")]
#[test_case(V5, publish_v5(b"a", &[6, 0x23, 0, 1, 0x23, 0, 2]) => (DuplicateProperty(0x23), 0x82); "topic alias twice")]
#[test_case(V5, publish_v5(b"a", &[3, 0x23, 0, 0]) => (InvalidPropertyValue { id: 0x23, value: 0 }, 0x82); "topic alias 0")]
#[test_case(V5, publish_v5(b"a", &[2, 0x01, 2]) => (InvalidPropertyValue { id: 0x01, value: 2 }, 0x82); "payload format indicator 2")]
#[test_case(V5, publish_v5(b"a", &[2, 0x0B, 0]) => (InvalidPropertyValue { id: 0x0B, value: 0 }, 0x82); "subscription identifier 0")]
#[test_case(V5, publish_v5(b"a", &[5, 0x08, 0, 2, b'a', b'#']) => (ResponseTopicWildcard, 0x82); "response topic wildcard")]
fn publish(protocol: Protocol, bytes: Vec<u8>) -> (DecodeError, u8) {
    err(decode_client(protocol, &bytes))
}

#[test]
fn v5_empty_topic_with_alias_is_accepted() {
    let bytes = publish_v5(b"", &[3, 0x23, 0, 7]);
    let Ok(Some(Packet::Publish(p))) = decode_client(V5, &bytes) else {
        panic!("not decoded");
    };
    assert_eq!(p.topic, "");
    assert_eq!(p.properties.topic_alias, Some(7));
}

#[test]
fn repeatable_properties_are_accepted() {
    // Two user properties and two subscription identifiers in a server-to-client PUBLISH.
    let props = cat(&[
        &[0x26],
        &s(b"k"),
        &s(b"v"),
        &[0x26],
        &s(b"k"),
        &s(b"w"),
        &[0x0B, 1, 0x0B, 0x80, 0x01],
    ]);
    let bytes = publish_v5(b"a", &cat(&[&[props.len() as u8], &props]));
    let Ok(Some(Packet::Publish(p))) = decode_client(V5, &bytes) else {
        panic!("not decoded");
    };
    assert_eq!(p.properties.user_properties.len(), 2);
    assert_eq!(p.properties.subscription_identifiers, vec![1, 128]);
}

#[test]
fn server_rejects_subscription_identifier_in_publish() {
    let bytes = publish_v5(b"a", &[2, 0x0B, 1]);
    assert_eq!(
        err(decode_server(V5, &bytes)),
        (SubscriptionIdentifierFromClient, 0x82)
    );
}

// ---- acks -----------------------------------------------------------------------------------

#[test_case(V5, pkt(0x40, &[0, 1, 0x05]) => (InvalidReasonCode { packet: "PUBACK", code: 0x05 }, 0x81); "puback bad reason")]
#[test_case(V5, pkt(0x62, &[0, 1, 0x10]) => (InvalidReasonCode { packet: "PUBREL", code: 0x10 }, 0x81); "pubrel bad reason")]
#[test_case(V5, pkt(0x40, &[0, 0]) => (ZeroPacketId, 0x82); "puback packet id 0")]
#[test_case(V5, pkt(0x50, &[0, 1, 0x00, 5]) => (LengthOverrun, 0x81); "pubrec property length overruns")]
#[test_case(V5, pkt(0x70, &[0, 1, 0x00, 2, 0x21, 0]) => (PropertyNotAllowed { id: 0x21, packet: "PUBCOMP" }, 0x81); "pubcomp receive maximum")]
#[test_case(V5, pkt(0x20, &[0x02, 0x00, 0]) => (ConnAckReservedFlags, 0x81); "connack reserved flags")]
#[test_case(V311, pkt(0x20, &[0x00, 0x06]) => (InvalidReasonCode { packet: "CONNACK", code: 6 }, 0x81); "v311 connack return code 6")]
#[test_case(V5, pkt(0x20, &[0x00, 0x00, 2, 0x24, 0x02]) => (InvalidPropertyValue { id: 0x24, value: 2 }, 0x82); "connack maximum qos 2")]
#[test_case(V311, pkt(0x90, &[0, 1]) => (MissingReasonCodes("SUBACK"), 0x81); "suback without codes")]
#[test_case(V311, pkt(0x90, &[0, 1, 0x87]) => (InvalidReasonCode { packet: "SUBACK", code: 0x87 }, 0x81); "v311 suback v5 code")]
#[test_case(V5, pkt(0xB0, &[0, 1, 0]) => (MissingReasonCodes("UNSUBACK"), 0x81); "v5 unsuback without codes")]
#[test_case(V5, pkt(0xE0, &[0x05]) => (InvalidReasonCode { packet: "DISCONNECT", code: 0x05 }, 0x81); "disconnect bad reason")]
#[test_case(V5, pkt(0xE0, &[0x00, 2, 0x01, 0]) => (PropertyNotAllowed { id: 0x01, packet: "DISCONNECT" }, 0x81); "disconnect payload format")]
#[test_case(V5, pkt(0xF0, &[0x01]) => (InvalidReasonCode { packet: "AUTH", code: 0x01 }, 0x81); "auth bad reason")]
fn acks(protocol: Protocol, bytes: Vec<u8>) -> (DecodeError, u8) {
    err(decode_client(protocol, &bytes))
}

// ---- CONNECT and connection order -----------------------------------------------------------

#[test_case(connect(b"MQIsdp", 4, 0x02, &s(b"c")) => (UnsupportedProtocolVersion(4), 0x84); "mqtt 3.1 name level 4")]
#[test_case(connect(b"MQTT", 0x85, 0x02, &cat(&[&[0], &s(b"c")])) => (UnsupportedProtocolVersion(0x85), 0x84); "bridge bit on 5.0")]
#[test_case(connect(b"MQTT", 6, 0x02, &s(b"c")) => (UnsupportedProtocolVersion(6), 0x84); "level 6")]
#[test_case(connect(b"MQTT", 3, 0x02, &s(b"c")) => (UnsupportedProtocolVersion(3), 0x84); "mqtt name level 3")]
#[test_case(connect(b"MQTX", 4, 0x02, &s(b"c")) => (InvalidProtocolName, 0x84); "bad protocol name")]
#[test_case(connect(b"MQTT", 4, 0x03, &s(b"c")) => (ConnectReservedFlag, 0x81); "reserved flag")]
#[test_case(connect(b"MQTT", 4, 0x1C, &cat(&[&s(b"c"), &s(b"t"), &s(b"p")])) => (InvalidWillQoS, 0x81); "will qos 3")]
#[test_case(connect(b"MQTT", 4, 0x08, &s(b"c")) => (WillFlagsWithoutWill, 0x81); "will qos without will flag")]
#[test_case(connect(b"MQTT", 5, 0x20, &cat(&[&[0], &s(b"c")])) => (WillFlagsWithoutWill, 0x81); "will retain without will flag")]
#[test_case(connect(b"MQTT", 4, 0x40, &cat(&[&s(b"c"), &s(b"pw")])) => (PasswordWithoutUsername, 0x81); "v311 password without username")]
#[test_case(connect(b"MQTT", 4, 0x04, &cat(&[&s(b"c"), &s(b"a/#"), &s(b"p")])) => (TopicNameWildcard, 0x82); "will topic wildcard")]
#[test_case(connect(b"MQTT", 4, 0x04, &cat(&[&s(b"c"), &s(b""), &s(b"p")])) => (EmptyTopicName, 0x82); "will topic empty")]
#[test_case(connect(b"MQTT", 5, 0x02, &cat(&[&[3, 0x21, 0, 0], &s(b"c")])) => (InvalidPropertyValue { id: 0x21, value: 0 }, 0x82); "receive maximum 0")]
#[test_case(connect(b"MQTT", 5, 0x02, &cat(&[&[5, 0x27, 0, 0, 0, 0], &s(b"c")])) => (InvalidPropertyValue { id: 0x27, value: 0 }, 0x82); "maximum packet size 0")]
#[test_case(connect(b"MQTT", 5, 0x02, &cat(&[&[2, 0x17, 2], &s(b"c")])) => (InvalidPropertyValue { id: 0x17, value: 2 }, 0x82); "request problem information 2")]
#[test_case(connect(b"MQTT", 5, 0x02, &cat(&[&[2, 0x19, 7], &s(b"c")])) => (InvalidPropertyValue { id: 0x19, value: 7 }, 0x82); "request response information 7")]
#[test_case(connect(b"MQTT", 5, 0x02, &cat(&[&[4, 0x16, 0, 1, 9], &s(b"c")])) => (AuthDataWithoutMethod, 0x82); "auth data without method")]
#[test_case(connect(b"MQTT", 5, 0x02, &cat(&[&[2, 0x23, 1], &s(b"c")])) => (PropertyNotAllowed { id: 0x23, packet: "CONNECT" }, 0x81); "topic alias in connect")]
#[test_case(connect(b"MQTT", 5, 0x06, &cat(&[&[0], &s(b"c"), &[5, 0x11, 0, 0, 0, 1], &s(b"t"), &s(b"p")])) => (PropertyNotAllowed { id: 0x11, packet: "will properties" }, 0x81); "session expiry in will properties")]
#[test_case(connect(b"MQTT", 5, 0x02, &cat(&[&[0], &s(b"c"), &[0]])) => (TrailingBytes(1), 0x81); "connect trailing byte")]
#[test_case(pkt(0xC0, &[]) => (FirstPacketNotConnect(12), 0x82); "pingreq first")]
#[test_case(pkt(0x30, &s(b"a")) => (FirstPacketNotConnect(3), 0x82); "publish first")]
fn first_packet(bytes: Vec<u8>) -> (DecodeError, u8) {
    let mut decoder = Decoder::server(MAX);
    err(decoder.decode(&mut BytesMut::from(&bytes[..])))
}

#[test]
fn first_packet_not_connect_detected_from_first_byte() {
    let mut decoder = Decoder::server(MAX);
    let mut buf = BytesMut::from(&[0x82u8][..]);
    assert_eq!(decoder.decode(&mut buf), Err(FirstPacketNotConnect(8)));
}

#[test]
fn v5_password_without_username_is_accepted() {
    let bytes = connect(b"MQTT", 5, 0x42, &cat(&[&[0], &s(b"c"), &s(b"pw")]));
    let mut decoder = Decoder::server(MAX);
    let Ok(Some(Packet::Connect(c))) = decoder.decode(&mut BytesMut::from(&bytes[..])) else {
        panic!("not decoded");
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test_case(V5, good_connect(V5) => (SecondConnect, 0x82); "second connect v5")]
#[test_case(V311, good_connect(V311) => (SecondConnect, 0x82); "second connect v311")]
#[test_case(V5, pkt(0x20, &[0, 0, 0]) => (UnexpectedPacket("CONNACK"), 0x82); "server receives connack")]
#[test_case(V5, pkt(0xD0, &[]) => (UnexpectedPacket("PINGRESP"), 0x82); "server receives pingresp")]
#[test_case(V311, vec![0xF0, 0x00] => (InvalidPacketType(15), 0x81); "server v311 receives auth")]
fn after_connect(protocol: Protocol, bytes: Vec<u8>) -> (DecodeError, u8) {
    err(decode_server(protocol, &bytes))
}

// ---- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------------------

#[test_case(V5, pkt(0x82, &[0, 1, 0]) => (SubscribeWithoutFilters, 0x82); "v5 subscribe no filters")]
#[test_case(V311, pkt(0x82, &[0, 1]) => (SubscribeWithoutFilters, 0x82); "v311 subscribe no filters")]
#[test_case(V5, pkt(0xA2, &[0, 1, 0]) => (UnsubscribeWithoutFilters, 0x82); "v5 unsubscribe no filters")]
#[test_case(V311, pkt(0xA2, &[0, 1]) => (UnsubscribeWithoutFilters, 0x82); "v311 unsubscribe no filters")]
#[test_case(V311, pkt(0x82, &cat(&[&[0, 0], &s(b"a"), &[0]])) => (ZeroPacketId, 0x82); "subscribe packet id 0")]
#[test_case(V5, subscribe(V5, &[(b"a", 0x40)]) => (SubscriptionOptionsReserved(0x40), 0x81); "v5 options bit 6")]
#[test_case(V5, subscribe(V5, &[(b"a", 0x80)]) => (SubscriptionOptionsReserved(0x80), 0x81); "v5 options bit 7")]
#[test_case(V311, subscribe(V311, &[(b"a", 0x04)]) => (SubscriptionOptionsReserved(0x04), 0x81); "v311 options bit 2")]
#[test_case(V311, subscribe(V311, &[(b"a", 0x03)]) => (InvalidSubscriptionQoS, 0x82); "v311 subscribe qos 3")]
#[test_case(V5, subscribe(V5, &[(b"a", 0x03)]) => (InvalidSubscriptionQoS, 0x82); "v5 subscribe qos 3")]
#[test_case(V5, subscribe(V5, &[(b"a", 0x30)]) => (InvalidRetainHandling, 0x82); "retain handling 3")]
#[test_case(V5, subscribe(V5, &[(b"$share/g/a", 0x04)]) => (NoLocalOnSharedSubscription, 0x82); "no local on shared")]
#[test_case(V5, subscribe(V5, &[(b"", 0)]) => (EmptyTopicFilter, 0x82); "empty filter")]
#[test_case(V5, subscribe(V5, &[(b"a/#/b", 0)]) => (MisplacedMultiLevelWildcard, 0x82); "hash not last")]
#[test_case(V5, subscribe(V5, &[(b"a#", 0)]) => (MisplacedMultiLevelWildcard, 0x82); "hash not alone")]
#[test_case(V5, subscribe(V5, &[(b"a/b#", 0)]) => (MisplacedMultiLevelWildcard, 0x82); "hash after text")]
#[test_case(V5, subscribe(V5, &[(b"a/b+", 0)]) => (MisplacedSingleLevelWildcard, 0x82); "plus after text")]
#[test_case(V5, subscribe(V5, &[(b"+a", 0)]) => (MisplacedSingleLevelWildcard, 0x82); "plus before text")]
#[test_case(V5, subscribe(V5, &[(b"$share//a", 0)]) => (InvalidShareName, 0x82); "empty share name")]
#[test_case(V5, subscribe(V5, &[(b"$share/g+/a", 0)]) => (InvalidShareName, 0x82); "share name with plus")]
#[test_case(V5, subscribe(V5, &[(b"$share/#/a", 0)]) => (InvalidShareName, 0x82); "share name hash")]
#[test_case(V5, subscribe(V5, &[(b"$share/g", 0)]) => (InvalidShareName, 0x82); "share name without filter")]
#[test_case(V5, subscribe(V5, &[(b"$share/g/", 0)]) => (MissingSharedFilter, 0x82); "share with empty filter")]
#[test_case(V5, subscribe(V5, &[(b"$share/g/a/#/b", 0)]) => (MisplacedMultiLevelWildcard, 0x82); "share with bad filter")]
#[test_case(V5, subscribe(V5, &[(b"ok", 0), (&[0xED, 0xA0, 0x80], 0)]) => (InvalidUtf8, 0x81); "subscribe surrogate")]
#[test_case(V5, pkt(0x82, &cat(&[&[0, 1, 2, 0x0B, 0], &s(b"a"), &[0]])) => (InvalidPropertyValue { id: 0x0B, value: 0 }, 0x82); "subscription identifier 0")]
#[test_case(V5, pkt(0x82, &cat(&[&[0, 1, 4, 0x0B, 1, 0x0B, 2], &s(b"a"), &[0]])) => (DuplicateProperty(0x0B), 0x82); "two subscription identifiers")]
#[test_case(V5, pkt(0x82, &cat(&[&[0, 1, 5, 0x0B, 0xFF, 0xFF, 0xFF, 0xFF], &s(b"a"), &[0]])) => (MalformedVariableByteInteger, 0x81); "subscription identifier 5 bytes")]
#[test_case(V5, pkt(0x82, &cat(&[&[0, 1, 0], &s(b"a")])) => (LengthOverrun, 0x81); "filter without options byte")]
#[test_case(V5, pkt(0xA2, &cat(&[&[0, 1, 0], &s(b"a/+b")])) => (MisplacedSingleLevelWildcard, 0x82); "unsubscribe bad filter")]
#[test_case(V5, pkt(0xA2, &cat(&[&[0, 1, 0], &s(b"")])) => (EmptyTopicFilter, 0x82); "unsubscribe empty filter")]
fn subscriptions(protocol: Protocol, bytes: Vec<u8>) -> (DecodeError, u8) {
    err(decode_client(protocol, &bytes))
}

#[test_case(b"#"; "hash alone")]
#[test_case(b"+"; "plus alone")]
#[test_case(b"a/+/b"; "plus in middle")]
#[test_case(b"+/+/#"; "all wildcards")]
#[test_case(b"/"; "only separator")]
#[test_case(b"a//b"; "empty level")]
#[test_case(b"$SYS/#"; "dollar topic")]
#[test_case(b"$share/g/#"; "shared hash")]
#[test_case(b"$share/g/a/+"; "shared plus")]
#[test_case(b"$share"; "share without slash is a plain filter")]
fn valid_filters(filter: &[u8]) {
    let bytes = subscribe(V5, &[(filter, 0x2A)]);
    assert!(matches!(
        decode_client(V5, &bytes),
        Ok(Some(Packet::Subscribe(_)))
    ));
}

// ---- sizes and incomplete input ---------------------------------------------------------------

#[test]
fn packet_too_large_from_fixed_header_alone() {
    let mut decoder = Decoder::client(V5, 100);
    // PUBLISH with remaining length 200 (0xC8 0x01): only the fixed header has arrived.
    let mut buf = BytesMut::from(&[0x30u8, 0xC8, 0x01][..]);
    let e = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(
        e,
        PacketTooLarge {
            size: 203,
            max: 100
        }
    );
    assert_eq!(e.reason_code().0, 0x95);
}

#[test]
fn packet_too_large_on_server_connect() {
    let mut decoder = Decoder::server(10);
    let mut buf = BytesMut::from(&good_connect(V5)[..]);
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(PacketTooLarge { size: 16, max: 10 })
    ));
}

#[test]
fn packet_at_max_size_is_accepted() {
    let bytes = pkt(0x30, &cat(&[&s(b"a"), b"xyz"]));
    let mut decoder = Decoder::client(V311, bytes.len() as u32);
    assert!(decoder
        .decode(&mut BytesMut::from(&bytes[..]))
        .unwrap()
        .is_some());
    decoder.set_max_packet_size(bytes.len() as u32 - 1);
    assert!(matches!(
        decoder.decode(&mut BytesMut::from(&bytes[..])),
        Err(PacketTooLarge { .. })
    ));
}

#[test]
fn incomplete_remaining_length_is_none() {
    let mut decoder = Decoder::client(V5, MAX);
    for bytes in [
        &[][..],
        &[0x30],
        &[0x30, 0x80],
        &[0x30, 0x80, 0x80],
        &[0x30, 0x80, 0x80, 0x80],
    ] {
        let mut buf = BytesMut::from(bytes);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(buf.len(), bytes.len());
    }
}

#[test]
fn payload_shares_the_read_buffer() {
    let bytes = pkt(0x30, &cat(&[&s(b"t"), &[7u8; 100]]));
    let mut buf = BytesMut::from(&bytes[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Ok(Some(Packet::Publish(p))) = Decoder::client(V311, MAX).decode(&mut buf) else {
        panic!("not decoded");
    };
    assert_eq!(p.payload.len(), 100);
    assert!(range.contains(&(p.payload.as_ptr() as usize)));
}

#[test]
fn connect_then_publish_back_to_back_on_server() {
    let mut bytes = good_connect(V311);
    bytes.extend(pkt(0x30, &cat(&[&s(b"a/b"), b"hi"])));
    let mut buf = BytesMut::from(&bytes[..]);
    let mut decoder = Decoder::server(MAX);
    assert_eq!(decoder.protocol(), None);
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Connect(_)))
    ));
    assert_eq!(decoder.protocol(), Some(V311));
    let Ok(Some(Packet::Publish(p))) = decoder.decode(&mut buf) else {
        panic!("publish not decoded");
    };
    assert_eq!(p.topic, "a/b");
    assert_eq!(&p.payload[..], b"hi");
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(buf.is_empty());
}
