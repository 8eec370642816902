//! Fuzz target for `Decoder::decode`: arbitrary bytes must never panic, and every packet that
//! decodes must re-encode to bytes that decode to the same packet.
//!
//! Run with `cargo fuzz run decode` from `crates/roost-codec` (nightly).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use roost_codec::{encode, encoded_len, Decoder, Packet, Protocol};

/// Decodes `data` until the decoder wants more bytes or rejects the input, checking each packet.
fn run(mut decoder: Decoder, data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = decoder.decode(&mut buf) {
        // A server decoder learns the protocol from CONNECT; a CONNECT carries its own.
        let protocol = match &packet {
            Packet::Connect(c) => c.protocol,
            _ => decoder.protocol().unwrap_or(Protocol::V5),
        };
        check_roundtrip(&packet, protocol);
    }
}

fn check_roundtrip(packet: &Packet, protocol: Protocol) {
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, protocol, &mut out) {
        panic!("decoded packet does not encode: {e}: {packet:?}");
    }
    assert_eq!(out.len(), encoded_len(packet, protocol));
    let mut again = match packet {
        Packet::Connect(_) => Decoder::server(u32::MAX),
        _ => Decoder::client(protocol, u32::MAX),
    };
    match again.decode(&mut out) {
        Ok(Some(decoded)) => assert_eq!(&decoded, packet),
        other => panic!("re-encoded packet does not decode: {other:?}: {packet:?}"),
    }
    assert!(out.is_empty());
}

fuzz_target!(|data: &[u8]| {
    run(Decoder::server(1 << 20), data);
    run(Decoder::client(Protocol::V5, 1 << 20), data);
    run(Decoder::client(Protocol::V311, 1 << 20), data);
});
