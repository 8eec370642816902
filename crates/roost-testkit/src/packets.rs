//! Packet builders for wire tests: CONNECTs (persistent, with v5 properties), wills, PUBLISHes
//! with properties, and hand-assembled bytes ([`pkt`], [`s`]) for malformed-input tests.
//! Plain functions, no I/O.

use bytes::Bytes;
use roost_codec::{Connect, LastWill, Packet, PacketId, Properties, Protocol, Publish, QoS};

use crate::connect_packet;

/// Both protocol versions, for tests that hold for each.
pub const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

/// Session expiry (seconds) used for v5 persistent sessions.
pub const EXPIRY: u32 = 300;

/// Packet id `v`; panics on 0, which is not a packet id.
pub fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("packet id 0 is not a packet id")
}

/// A v5 CONNECT with keep-alive 60, no will and the given properties.
pub fn connect_v5(client_id: &str, clean_start: bool, properties: Properties) -> Connect {
    Connect {
        properties,
        ..connect_packet(Protocol::V5, client_id, clean_start)
    }
}

/// A will message (QoS 1, not retained) with the given v5 will properties.
pub fn will(topic: &str, payload: &[u8], properties: Properties) -> LastWill {
    LastWill {
        topic: topic.to_owned(),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
    }
}

/// A CONNECT for a session that outlives the connection: Clean Start / Clean Session 0, and in
/// v5 a Session Expiry Interval of [`EXPIRY`].
pub fn persistent_packet(protocol: Protocol, client_id: &str) -> Connect {
    let mut c = connect_packet(protocol, client_id, false);
    if protocol == Protocol::V5 {
        c.properties.session_expiry_interval = Some(EXPIRY);
    }
    c
}

/// A PUBLISH packet.
pub fn publish_packet(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    packet_id: Option<PacketId>,
    properties: Properties,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id,
        properties,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// A whole packet as bytes: first byte, remaining length (variable byte integer), body.
pub fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
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

/// A length-prefixed string / binary field (two-byte big-endian length, then the bytes).
pub fn s(x: &[u8]) -> Vec<u8> {
    let len = u16::try_from(x.len()).expect("a string field holds at most 65535 bytes");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(x);
    out
}

#[cfg(test)]
mod tests {
    use super::{pkt, s};

    #[test]
    fn remaining_length_is_a_variable_byte_integer() {
        assert_eq!(pkt(0xC0, &[]), [0xC0, 0x00]);
        assert_eq!(pkt(0x30, &[7; 127])[..2], [0x30, 0x7F]);
        assert_eq!(pkt(0x30, &[7; 128])[..3], [0x30, 0x80, 0x01]);
        assert_eq!(pkt(0x30, &[7; 16_384])[..4], [0x30, 0x80, 0x80, 0x01]);
    }

    #[test]
    fn string_fields_are_length_prefixed() {
        assert_eq!(s(b"ab"), [0, 2, b'a', b'b']);
        assert_eq!(s(b""), [0, 0]);
    }
}
