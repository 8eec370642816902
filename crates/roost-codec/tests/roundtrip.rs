//! Property tests: every packet valid for a protocol version round-trips through `encode` and
//! `Decoder::decode`; every strict prefix of an encoded packet is `Ok(None)` and consumes
//! nothing; two packets in one buffer both decode; `encoded_len` is exact.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use roost_codec::{
    encode, encoded_len, Ack, Auth, ConnAck, Connect, ConnectVariant, Decoder, Disconnect,
    EncodeError, LastWill, Packet, PacketId, Properties, Protocol, Publish, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};

const MAX: u32 = u32::MAX;

// Where each property may appear (MQTT 5.0 §2.2.2.2, written out independently of the decoder).
const CONNECT: u16 = 1 << 0;
const CONNACK: u16 = 1 << 1;
const PUBLISH: u16 = 1 << 2;
const WILL: u16 = 1 << 3;
const ACK: u16 = 1 << 4;
const SUBSCRIBE: u16 = 1 << 5;
const SUBACK: u16 = 1 << 6;
const UNSUBSCRIBE: u16 = 1 << 7;
const UNSUBACK: u16 = 1 << 8;
const DISCONNECT: u16 = 1 << 9;
const AUTH: u16 = 1 << 10;

const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// v3.1.1 CONNACK reasons that survive the return-code mapping unchanged.
const CONNACK_CODES_V311: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_CODES_V311: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,8}"
}

fn topic() -> impl Strategy<Value = String> {
    "[a-z0-9$ é]{1,6}(/[a-z0-9 é]{0,6}){0,3}"
}

fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![3 => "[a-z0-9]{0,5}", 1 => Just("+".to_owned())];
    (
        prop::collection::vec(level, 1..4),
        any::<bool>(),
        prop::option::of("[a-z]{1,5}"),
    )
        .prop_map(|(levels, hash, share)| {
            let mut f = levels.join("/");
            if f.is_empty() {
                f.push('x');
            }
            if hash {
                f.push_str("/#");
            }
            match share {
                Some(group) => format!("$share/{group}/{f}"),
                None => f,
            }
        })
}

fn binary() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    prop::option::of(0u8..=1)
}

fn code(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    prop::sample::select(codes).prop_map(ReasonCode)
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1u16..=u16::MAX).prop_map(|v| PacketId::new(v).unwrap())
}

/// Any properties, every field possibly set, each value in its valid range.
fn any_properties() -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        prop::option::of(any::<u32>()),
        prop::option::of(text()),
        prop::option::of(topic()),
        prop::option::of(binary()),
        prop::collection::vec(1u32..=268_435_455, 0..3),
        prop::option::of(any::<u32>()),
        prop::option::of(text()),
        prop::option::of(any::<u16>()),
        prop::option::of(text()),
    );
    let b = (
        prop::option::of(binary()),
        flag(),
        prop::option::of(any::<u32>()),
        flag(),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(1u16..),
        prop::option::of(any::<u16>()),
        prop::option::of(1u16..),
    );
    let c = (
        flag(),
        flag(),
        prop::collection::vec((text(), text()), 0..3),
        prop::option::of(1u32..),
        flag(),
        flag(),
        flag(),
    );
    (a, b, c).prop_map(|(a, b, c)| Properties {
        payload_format_indicator: a.0,
        message_expiry_interval: a.1,
        content_type: a.2,
        response_topic: a.3,
        correlation_data: a.4,
        subscription_identifiers: a.5,
        session_expiry_interval: a.6,
        assigned_client_identifier: a.7,
        server_keep_alive: a.8,
        authentication_method: a.9,
        authentication_data: b.0,
        request_problem_information: b.1,
        will_delay_interval: b.2,
        request_response_information: b.3,
        response_information: b.4,
        server_reference: b.5,
        reason_string: b.6,
        receive_maximum: b.7,
        topic_alias_maximum: b.8,
        topic_alias: b.9,
        maximum_qos: c.0,
        retain_available: c.1,
        user_properties: c.2,
        maximum_packet_size: c.3,
        wildcard_subscription_available: c.4,
        subscription_identifiers_available: c.5,
        shared_subscription_available: c.6,
    })
}

/// Clears every property not allowed in `packet`.
fn restrict(mut p: Properties, packet: u16) -> Properties {
    fn keep<T>(field: &mut Option<T>, allowed: u16, packet: u16) {
        if allowed & packet == 0 {
            *field = None;
        }
    }
    keep(&mut p.payload_format_indicator, PUBLISH | WILL, packet);
    keep(&mut p.message_expiry_interval, PUBLISH | WILL, packet);
    keep(&mut p.content_type, PUBLISH | WILL, packet);
    keep(&mut p.response_topic, PUBLISH | WILL, packet);
    keep(&mut p.correlation_data, PUBLISH | WILL, packet);
    match packet {
        PUBLISH => {}
        SUBSCRIBE => p.subscription_identifiers.truncate(1),
        _ => p.subscription_identifiers.clear(),
    }
    keep(
        &mut p.session_expiry_interval,
        CONNECT | CONNACK | DISCONNECT,
        packet,
    );
    keep(&mut p.assigned_client_identifier, CONNACK, packet);
    keep(&mut p.server_keep_alive, CONNACK, packet);
    keep(
        &mut p.authentication_method,
        CONNECT | CONNACK | AUTH,
        packet,
    );
    keep(&mut p.authentication_data, CONNECT | CONNACK | AUTH, packet);
    if packet == CONNECT && p.authentication_method.is_none() {
        p.authentication_data = None;
    }
    keep(&mut p.request_problem_information, CONNECT, packet);
    keep(&mut p.will_delay_interval, WILL, packet);
    keep(&mut p.request_response_information, CONNECT, packet);
    keep(&mut p.response_information, CONNACK, packet);
    keep(&mut p.server_reference, CONNACK | DISCONNECT, packet);
    let reason_string = CONNACK | ACK | SUBACK | UNSUBACK | DISCONNECT | AUTH;
    keep(&mut p.reason_string, reason_string, packet);
    keep(&mut p.receive_maximum, CONNECT | CONNACK, packet);
    keep(&mut p.topic_alias_maximum, CONNECT | CONNACK, packet);
    keep(&mut p.topic_alias, PUBLISH, packet);
    keep(&mut p.maximum_qos, CONNACK, packet);
    keep(&mut p.retain_available, CONNACK, packet);
    keep(&mut p.maximum_packet_size, CONNECT | CONNACK, packet);
    keep(&mut p.wildcard_subscription_available, CONNACK, packet);
    keep(&mut p.subscription_identifiers_available, CONNACK, packet);
    keep(&mut p.shared_subscription_available, CONNACK, packet);
    p
}

fn props(protocol: Protocol, packet: u16) -> BoxedStrategy<Properties> {
    match protocol {
        Protocol::V311 => Just(Properties::default()).boxed(),
        Protocol::V5 => any_properties()
            .prop_map(move |p| restrict(p, packet))
            .boxed(),
    }
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn connect(protocol: Protocol) -> BoxedStrategy<Packet> {
    let will = (
        topic(),
        binary(),
        qos(),
        any::<bool>(),
        props(protocol, WILL),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        prop::option::of(will),
        prop::option::of(text()),
        prop::option::of(binary()),
        props(protocol, CONNECT),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                client_id,
                will,
                mut username,
                password,
                properties,
                (mqtt31, bridge),
            )| {
                if protocol == Protocol::V311 && password.is_some() && username.is_none() {
                    username = Some("user".to_owned());
                }
                // MQTT 3.1 and the bridge bit exist beside the 3.1.1 format only.
                let variant = match protocol {
                    Protocol::V311 => ConnectVariant { mqtt31, bridge },
                    Protocol::V5 => ConnectVariant::default(),
                };
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                    variant,
                }))
            },
        )
        .boxed()
}

/// Every packet type except CONNECT, valid for `protocol`.
fn other_packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let v5 = protocol == Protocol::V5;
    let connack = (
        any::<bool>(),
        code(if v5 {
            CONNACK_CODES
        } else {
            CONNACK_CODES_V311
        }),
        props(protocol, CONNACK),
    )
        .prop_map(|(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code,
                properties,
            })
        });
    let publish = (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic(),
        packet_id(),
        props(protocol, PUBLISH),
        binary(),
    )
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            let packet_id = (qos != QoS::AtMostOnce).then_some(id);
            Packet::Publish(Publish {
                dup: dup && packet_id.is_some(),
                qos,
                retain,
                topic,
                packet_id,
                properties,
                payload,
            })
        });
    let ack = move |codes: &'static [u8]| {
        (packet_id(), code(codes), props(protocol, ACK)).prop_map(
            move |(packet_id, reason_code, properties)| {
                if v5 {
                    Ack {
                        packet_id,
                        reason_code,
                        properties,
                    }
                } else {
                    Ack::new(packet_id)
                }
            },
        )
    };
    let options =
        (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(q, nl, rap, rh)| {
            if v5 {
                SubscriptionOptions {
                    qos: q,
                    no_local: nl,
                    retain_as_published: rap,
                    retain_handling: match rh {
                        0 => RetainHandling::SendAtSubscribe,
                        1 => RetainHandling::SendIfNew,
                        _ => RetainHandling::DoNotSend,
                    },
                }
            } else {
                SubscriptionOptions {
                    qos: q,
                    ..SubscriptionOptions::default()
                }
            }
        });
    let subscribe = (
        packet_id(),
        props(protocol, SUBSCRIBE),
        prop::collection::vec((filter(), options), 1..4),
    )
        .prop_map(|(packet_id, properties, mut filters)| {
            for (f, o) in &mut filters {
                if f.starts_with("$share/") {
                    o.no_local = false;
                }
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        });
    let suback = (
        packet_id(),
        props(protocol, SUBACK),
        prop::collection::vec(
            code(if v5 { SUBACK_CODES } else { SUBACK_CODES_V311 }),
            1..4,
        ),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        });
    let unsubscribe = (
        packet_id(),
        props(protocol, UNSUBSCRIBE),
        prop::collection::vec(filter(), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        });
    let unsuback = (
        packet_id(),
        props(protocol, UNSUBACK),
        prop::collection::vec(code(UNSUBACK_CODES), 1..4),
    )
        .prop_map(move |(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes: if v5 { reason_codes } else { Vec::new() },
            })
        });
    let disconnect = (code(DISCONNECT_CODES), props(protocol, DISCONNECT)).prop_map(
        move |(reason_code, properties)| {
            if v5 {
                Packet::Disconnect(Disconnect {
                    reason_code,
                    properties,
                })
            } else {
                Packet::Disconnect(Disconnect::default())
            }
        },
    );
    let auth = (code(AUTH_CODES), props(protocol, AUTH)).prop_map(|(reason_code, properties)| {
        Packet::Auth(Auth {
            reason_code,
            properties,
        })
    });
    let common = prop_oneof![
        connack,
        publish,
        ack(PUBACK_CODES).prop_map(Packet::PubAck),
        ack(PUBACK_CODES).prop_map(Packet::PubRec),
        ack(PUBREL_CODES).prop_map(Packet::PubRel),
        ack(PUBREL_CODES).prop_map(Packet::PubComp),
        subscribe,
        suback,
        unsubscribe,
        unsuback,
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect,
    ];
    if v5 {
        prop_oneof![10 => common, 1 => auth].boxed()
    } else {
        common.boxed()
    }
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::V311), Just(Protocol::V5)]
}

fn any_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    protocol().prop_flat_map(|p| {
        prop_oneof![1 => connect(p), 8 => other_packet(p)].prop_map(move |packet| (p, packet))
    })
}

/// The decoder that reads `packet`: a server decoder for CONNECT, a client one otherwise.
fn decoder_for(protocol: Protocol, packet: &Packet) -> Decoder {
    match packet {
        Packet::Connect(_) => Decoder::server(MAX),
        _ => Decoder::client(protocol, MAX),
    }
}

fn encoded(protocol: Protocol, packet: &Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf).unwrap();
    assert_eq!(buf.len(), encoded_len(packet, protocol));
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn roundtrip((protocol, packet) in any_packet()) {
        let mut buf = encoded(protocol, &packet);
        let mut decoder = decoder_for(protocol, &packet);
        let decoded = decoder.decode(&mut buf);
        prop_assert_eq!(decoded, Ok(Some(packet.clone())));
        prop_assert!(buf.is_empty());
        if let Packet::Connect(_) = packet {
            prop_assert_eq!(decoder.protocol(), Some(protocol));
        }
    }

    #[test]
    fn strict_prefixes_are_incomplete((protocol, packet) in any_packet()) {
        let full = encoded(protocol, &packet);
        for len in 0..full.len() {
            let mut buf = BytesMut::from(&full[..len]);
            let mut decoder = decoder_for(protocol, &packet);
            prop_assert_eq!(decoder.decode(&mut buf), Ok(None), "prefix of {} bytes", len);
            prop_assert_eq!(&buf[..], &full[..len]);
        }
    }

    #[test]
    fn back_to_back(
        (protocol, first, second) in protocol()
            .prop_flat_map(|p| (Just(p), other_packet(p), other_packet(p)))
    ) {
        let mut buf = BytesMut::new();
        encode(&first, protocol, &mut buf).unwrap();
        encode(&second, protocol, &mut buf).unwrap();
        let mut decoder = Decoder::client(protocol, MAX);
        prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(first)));
        prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(second)));
        prop_assert_eq!(decoder.decode(&mut buf), Ok(None));
        prop_assert!(buf.is_empty());
    }
}

fn bytes_of(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    encoded(protocol, packet).to_vec()
}

fn id(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

#[test]
fn v311_connack_return_codes() {
    let cases: &[(u8, u8)] = &[
        (0x00, 0),
        (0x84, 1),
        (0x85, 2),
        (0x88, 3),
        (0x89, 3),
        (0x97, 3),
        (0x9F, 3),
        (0x80, 3),
        (0x86, 4),
        (0x87, 5),
        (0x8A, 5),
        (0x8C, 5),
    ];
    for &(reason, rc) in cases {
        let packet = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode(reason),
            properties: Properties::default(),
        });
        assert_eq!(
            bytes_of(&packet, Protocol::V311),
            vec![0x20, 2, 0, rc],
            "{reason:#x}"
        );
    }
}

#[test]
fn v311_suback_maps_errors_to_0x80() {
    let packet = Packet::SubAck(SubAck {
        packet_id: id(1),
        properties: Properties::default(),
        reason_codes: vec![
            ReasonCode(0),
            ReasonCode(1),
            ReasonCode(2),
            ReasonCode(0x87),
        ],
    });
    assert_eq!(
        bytes_of(&packet, Protocol::V311),
        vec![0x90, 6, 0, 1, 0, 1, 2, 0x80]
    );
}

#[test]
fn v311_writes_no_v5_fields() {
    let props = Properties {
        reason_string: Some("why".to_owned()),
        ..Properties::default()
    };
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: id(7),
        properties: props.clone(),
        reason_codes: vec![ReasonCode(0x11)],
    });
    assert_eq!(bytes_of(&unsuback, Protocol::V311), vec![0xB0, 2, 0, 7]);
    let disconnect = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode(0x8B),
        properties: props.clone(),
    });
    assert_eq!(bytes_of(&disconnect, Protocol::V311), vec![0xE0, 0]);
    let puback = Packet::PubAck(Ack {
        packet_id: id(7),
        reason_code: ReasonCode(0x10),
        properties: props,
    });
    assert_eq!(bytes_of(&puback, Protocol::V311), vec![0x40, 2, 0, 7]);
}

#[test]
fn v5_short_forms() {
    assert_eq!(
        bytes_of(&Packet::PubRel(Ack::new(id(5))), Protocol::V5),
        vec![0x62, 2, 0, 5]
    );
    let with_reason = Packet::PubAck(Ack {
        packet_id: id(5),
        reason_code: ReasonCode(0x10),
        properties: Properties::default(),
    });
    assert_eq!(
        bytes_of(&with_reason, Protocol::V5),
        vec![0x40, 3, 0, 5, 0x10]
    );
    assert_eq!(
        bytes_of(&Packet::Disconnect(Disconnect::default()), Protocol::V5),
        vec![0xE0, 0]
    );
    assert_eq!(
        bytes_of(&Packet::Auth(Auth::default()), Protocol::V5),
        vec![0xF0, 0]
    );
    let with_props = Packet::PubComp(Ack {
        packet_id: id(5),
        reason_code: ReasonCode::SUCCESS,
        properties: Properties {
            reason_string: Some("r".to_owned()),
            ..Properties::default()
        },
    });
    assert_eq!(
        bytes_of(&with_props, Protocol::V5),
        vec![0x70, 8, 0, 5, 0, 4, 0x1F, 0, 1, b'r']
    );
}

#[test]
fn encode_errors_write_nothing() {
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert_eq!(
        encode(&Packet::Auth(Auth::default()), Protocol::V311, &mut buf),
        Err(EncodeError::NotInV311 { packet: "AUTH" })
    );
    let long = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".repeat(70_000),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    assert_eq!(
        encode(&long, Protocol::V5, &mut buf),
        Err(EncodeError::FieldTooLong(70_000))
    );
    let huge = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".to_owned(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from(vec![0u8; 268_435_455]),
    });
    assert!(matches!(
        encode(&huge, Protocol::V311, &mut buf),
        Err(EncodeError::RemainingLengthTooLarge(_))
    ));
    let no_id = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".to_owned(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    assert_eq!(
        encode(&no_id, Protocol::V5, &mut buf),
        Err(EncodeError::PacketIdMismatch)
    );
    assert_eq!(&buf[..], b"kept");
}

#[test]
fn encoded_len_of_large_publish_uses_four_byte_length() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".to_owned(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from(vec![0u8; 2_097_152]),
    });
    assert_eq!(encoded_len(&packet, Protocol::V311), 1 + 4 + 3 + 2_097_152);
    let buf = encoded(Protocol::V311, &packet);
    let mut decoder = Decoder::client(Protocol::V311, MAX);
    assert_eq!(decoder.decode(&mut buf.clone()), Ok(Some(packet)));
}

/// What the fuzz target checks, on stable: whatever decodes re-encodes to the same packet.
fn decode_all_and_reencode(mut decoder: Decoder, data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = decoder.decode(&mut buf) {
        let protocol = match &packet {
            Packet::Connect(c) => c.protocol,
            _ => decoder.protocol().unwrap_or(Protocol::V5),
        };
        let mut out = encoded(protocol, &packet);
        let mut again = decoder_for(protocol, &packet);
        assert_eq!(again.decode(&mut out), Ok(Some(packet)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_packets_never_panic(
        (protocol, packet) in any_packet(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encoded(protocol, &packet).to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        decode_all_and_reencode(Decoder::server(1 << 20), &bytes);
        decode_all_and_reencode(Decoder::client(Protocol::V5, 1 << 20), &bytes);
        decode_all_and_reencode(Decoder::client(Protocol::V311, 1 << 20), &bytes);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        decode_all_and_reencode(Decoder::server(1 << 20), &bytes);
        decode_all_and_reencode(Decoder::client(Protocol::V5, 1 << 20), &bytes);
        decode_all_and_reencode(Decoder::client(Protocol::V311, 1 << 20), &bytes);
    }
}

/// Issue 9 "Protocol breadth": MQTT 3.1 ("MQIsdp", level 3) and the bridge bit (level | 0x80,
/// as a Mosquitto bridge sends it) are accepted in the 3.1.1 format, and said so in
/// `Connect::variant`.
#[test]
fn mqtt31_and_bridge_connects_decode_as_their_variant() {
    let cases: [(&[u8], u8, ConnectVariant); 4] = [
        (
            b"MQIsdp",
            3,
            ConnectVariant {
                mqtt31: true,
                bridge: false,
            },
        ),
        (
            b"MQIsdp",
            0x83,
            ConnectVariant {
                mqtt31: true,
                bridge: true,
            },
        ),
        (
            b"MQTT",
            0x84,
            ConnectVariant {
                mqtt31: false,
                bridge: true,
            },
        ),
        (b"MQTT", 4, ConnectVariant::default()),
    ];
    for (name, level, variant) in cases {
        let mut body = (name.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 0x02, 0, 60, 0, 3]);
        body.extend_from_slice(b"old");
        let mut bytes = BytesMut::from(&[0x10, body.len() as u8][..]);
        bytes.extend_from_slice(&body);
        let mut decoder = Decoder::server(1 << 20);
        let Ok(Some(Packet::Connect(c))) = decoder.decode(&mut bytes) else {
            panic!("{name:?} level {level:#x} did not decode");
        };
        assert_eq!(c.protocol, Protocol::V311);
        assert_eq!(c.variant, variant, "{name:?} level {level:#x}");
        assert_eq!(c.client_id, "old");
        // Encoded again, it says the same.
        assert_eq!(
            &encoded(Protocol::V311, &Packet::Connect(c))[..],
            &[&[0x10, body.len() as u8][..], &body].concat()[..]
        );
    }
}

/// MQTT 3.1 and the bridge bit exist beside the 3.1.1 format only: a 5.0 CONNECT that carries
/// a variant is written as plain "MQTT" level 5, and `encoded_len` agrees with what is written
/// (it counted the 3.1 name's 8 bytes while 6 were written).
#[test]
fn a_v5_connect_ignores_the_311_variants() {
    let c = Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
        variant: ConnectVariant {
            mqtt31: true,
            bridge: true,
        },
    };
    let bytes = encoded(Protocol::V5, &Packet::Connect(Box::new(c)));
    assert_eq!(&bytes[2..9], &[0, 4, b'M', b'Q', b'T', b'T', 5]);
}
