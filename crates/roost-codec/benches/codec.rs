//! Micro-benchmarks of the packet codec: one decode and one encode per packet type.
//!
//! Ids carry the parameters (house style, convention 12): `decode/v5/publish/qos=1/payload=4096`
//! is one [`Decoder::decode`] of a v5 PUBLISH at QoS 1 with a 4 KiB payload. Throughput is the
//! packet's encoded size in bytes, fixed header included.
//!
//! - decode: a fresh `BytesMut` holding exactly one packet (filled outside the timed region,
//!   `iter_batched_ref`) and a decoder in the state the connection driver's would be in: a
//!   server decoder that has seen CONNECT for client packets (a new one for CONNECT itself),
//!   a client decoder for SUBACK. The decoded packet is dropped outside the timed region.
//!   A fresh buffer is a plain `Vec`-backed `BytesMut`, so the decoder's `split_to(..).freeze()`
//!   also pays the buffer's one-time switch to a shared (reference-counted) buffer, as the
//!   driver's does for a read that brings a single packet; packets later in the same read
//!   would not.
//! - encode: [`encode`] appending to one `BytesMut` cleared before each call, as the driver
//!   appends packets to its write buffer (capacity kept from one packet to the next).
//!
//! PUBLISH is measured for v5 only: the v3.1.1 form differs by the one-byte empty property
//! length. Its topic is `devices/000042/telemetry` and it carries no properties.

#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use roost_codec::{
    encode, Ack, Connect, ConnectVariant, Decoder, Disconnect, LastWill, Packet, PacketId,
    Properties, Protocol, Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions,
};
use std::hint::black_box;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// roost-node's default Maximum Packet Size (1 MiB), the largest packet a decoder accepts.
const MAX_PACKET_SIZE: u32 = 1 << 20;

/// Inputs built per batch for the decode benches: small enough that a batch of 64 KiB
/// PUBLISHes stays at a few MB, large enough that the timer's cost is spread thin.
const DECODE_BATCH: u64 = 256;

const PAYLOAD_SIZES: [usize; 4] = [16, 256, 4 << 10, 64 << 10];

fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("packet ids in the benches are not zero")
}

fn connect(protocol: Protocol) -> Packet {
    let v5 = protocol == Protocol::V5;
    let properties = if v5 {
        Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(64),
            maximum_packet_size: Some(MAX_PACKET_SIZE),
            topic_alias_maximum: Some(16),
            request_problem_information: Some(1),
            user_properties: vec![("fw".into(), "1.4.2".into())],
            ..Properties::default()
        }
    } else {
        Properties::default()
    };
    // v5: a will with properties too, so the will property block is part of the measure.
    let will = v5.then(|| LastWill {
        topic: "devices/000042/status".into(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties {
            will_delay_interval: Some(5),
            message_expiry_interval: Some(3600),
            content_type: Some("text/plain".into()),
            ..Properties::default()
        },
    });
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "device-000042".into(),
        will,
        username: Some("device-000042".into()),
        password: Some(Bytes::from_static(b"s3cret-token-000042")),
        properties,
        variant: ConnectVariant::default(),
    }))
}

fn publish(qos: QoS, payload_len: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: "devices/000042/telemetry".into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(1)),
        properties: Properties::default(),
        payload: Bytes::from(vec![0xA5; payload_len]),
    })
}

fn subscribe(filters: usize) -> Packet {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    };
    Packet::Subscribe(Subscribe {
        packet_id: pid(7),
        properties: Properties {
            subscription_identifiers: vec![7],
            ..Properties::default()
        },
        filters: (0..filters)
            .map(|i| (format!("devices/{:06}/commands/#", 42 + i), options))
            .collect(),
    })
}

fn suback(codes: usize) -> Packet {
    Packet::SubAck(SubAck {
        packet_id: pid(7),
        properties: Properties::default(),
        reason_codes: vec![ReasonCode::GRANTED_QOS_1; codes],
    })
}

fn disconnect() -> Packet {
    Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::DISCONNECT_WITH_WILL,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    })
}

fn encoded(packet: &Packet, protocol: Protocol) -> Bytes {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf).expect("every bench packet is valid for its protocol");
    buf.freeze()
}

/// A server decoder past CONNECT for `protocol`, as the driver's is for every later packet.
fn server_after_connect(protocol: Protocol) -> Decoder {
    let mut decoder = Decoder::server(MAX_PACKET_SIZE);
    let mut buf = BytesMut::from(&encoded(&connect(protocol), protocol)[..]);
    decoder
        .decode(&mut buf)
        .expect("the bench CONNECT decodes")
        .expect("the bench CONNECT is complete");
    decoder
}

/// Every (id, packet, protocol, decoder) measured, in report order.
fn cases() -> Vec<(String, Packet, Protocol, Decoder)> {
    let mut cases = Vec::new();
    for (name, protocol) in [("v311", Protocol::V311), ("v5", Protocol::V5)] {
        let decoder = Decoder::server(MAX_PACKET_SIZE);
        cases.push((
            format!("{name}/connect"),
            connect(protocol),
            protocol,
            decoder,
        ));
    }
    let v5 = server_after_connect(Protocol::V5);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for size in PAYLOAD_SIZES {
            let id = format!("v5/publish/qos={}/payload={size}", qos as u8);
            cases.push((id, publish(qos, size), Protocol::V5, v5.clone()));
        }
    }
    cases.push((
        "v5/puback".into(),
        Packet::PubAck(Ack::new(pid(1))),
        Protocol::V5,
        v5.clone(),
    ));
    for n in [1, 10] {
        let id = format!("v5/subscribe/filters={n}");
        cases.push((id, subscribe(n), Protocol::V5, v5.clone()));
    }
    let client = Decoder::client(Protocol::V5, MAX_PACKET_SIZE);
    for n in [1, 10] {
        let id = format!("v5/suback/codes={n}");
        cases.push((id, suback(n), Protocol::V5, client.clone()));
    }
    cases.push((
        "v5/pingreq".into(),
        Packet::PingReq,
        Protocol::V5,
        v5.clone(),
    ));
    cases.push((
        "v5/disconnect/reason=0x04".into(),
        disconnect(),
        Protocol::V5,
        v5,
    ));
    cases
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (id, packet, protocol, decoder) in cases() {
        let bytes = encoded(&packet, protocol);
        // Checked once outside the measure: the bench decodes what it encoded.
        let mut check = BytesMut::from(&bytes[..]);
        let decoded = decoder
            .clone()
            .decode(&mut check)
            .expect("the bench packet decodes");
        assert_eq!(decoded.as_ref(), Some(&packet), "{id}: round trip");

        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(id.as_str(), |b| {
            b.iter_batched_ref(
                || (decoder.clone(), BytesMut::from(&bytes[..])),
                |(decoder, buf)| decoder.decode(buf),
                BatchSize::NumIterations(DECODE_BATCH),
            )
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (id, packet, protocol, _) in cases() {
        let len = encoded(&packet, protocol).len();
        let mut buf = BytesMut::with_capacity(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(id.as_str(), |b| {
            b.iter(|| {
                buf.clear();
                let result = encode(black_box(&packet), protocol, &mut buf);
                black_box(&buf);
                result
            })
        });
    }
    group.finish();
}

/// Short runs: 42 packets each way, and the whole suite on a 2-core machine in minutes.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_decode, bench_encode
}
criterion_main!(benches);
