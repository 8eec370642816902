//! Packet encoding: [`Packet`]s to bytes appended to a `BytesMut`.
//!
//! Called by the connection driver when it flushes a session's outbound packets (many packets
//! may be appended to one buffer before one write). Two passes over the packet, no intermediate
//! allocation: [`encoded_len`] computes the exact size (so the buffer is reserved once and a
//! client's Maximum Packet Size can be checked first), then the fields are written in place.
//!
//! For v3.1.1 the encoder writes no properties and no ack reason codes; CONNACK reasons are
//! mapped onto the six v3.1.1 return codes and SUBACK failures onto 0x80. For v5 the short forms
//! are used where the spec allows them (acks with success and no properties are 2 bytes,
//! v5 §3.4.2.1; DISCONNECT / AUTH with reason 0 and no properties are empty).

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::{
    Ack, Auth, ConnAck, Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode, SubAck,
    Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::MAX_REMAINING_LENGTH;

type Result<T> = std::result::Result<T, EncodeError>;

/// Encodes `packet` for `protocol`, appending it to `buf`. On error nothing is appended.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) -> Result<()> {
    match packet {
        Packet::Auth(_) if protocol == Protocol::V311 => {
            return Err(EncodeError::NotInV311 { packet: "AUTH" })
        }
        Packet::Connect(c) if c.protocol != protocol => {
            return Err(EncodeError::ProtocolMismatch {
                packet: c.protocol,
                encoding: protocol,
            })
        }
        Packet::Publish(p) if (p.qos == QoS::AtMostOnce) != p.packet_id.is_none() => {
            return Err(EncodeError::PacketIdMismatch)
        }
        _ => {}
    }
    let remaining = remaining_len(packet, protocol);
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::RemainingLengthTooLarge(remaining));
    }
    buf.reserve(1 + vbi_len(remaining) + remaining);
    let start = buf.len();
    let result = write_packet(packet, protocol, remaining, buf);
    if result.is_err() {
        buf.truncate(start);
    }
    debug_assert!(result.is_err() || buf.len() - start == 1 + vbi_len(remaining) + remaining);
    result
}

/// Exact number of bytes [`encode`] would write (fixed header included), to check a client's
/// Maximum Packet Size before encoding. For a packet `encode` rejects, the size it would have
/// had (AUTH is sized as v5).
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let remaining = remaining_len(packet, protocol);
    1 + vbi_len(remaining) + remaining
}

/// Bytes a Variable Byte Integer takes (values past the 4-byte maximum count as 4).
fn vbi_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn str_len(s: &str) -> usize {
    2 + s.len()
}

/// Bytes of the properties themselves (without the Property Length prefix).
fn props_len(p: &Properties) -> usize {
    let mut n = 0;
    let byte = 2;
    let two = 3;
    let four = 5;
    if p.payload_format_indicator.is_some() {
        n += byte;
    }
    if p.message_expiry_interval.is_some() {
        n += four;
    }
    if let Some(s) = &p.content_type {
        n += 1 + str_len(s);
    }
    if let Some(s) = &p.response_topic {
        n += 1 + str_len(s);
    }
    if let Some(b) = &p.correlation_data {
        n += 3 + b.len();
    }
    for id in &p.subscription_identifiers {
        n += 1 + vbi_len(*id as usize);
    }
    if p.session_expiry_interval.is_some() {
        n += four;
    }
    if let Some(s) = &p.assigned_client_identifier {
        n += 1 + str_len(s);
    }
    if p.server_keep_alive.is_some() {
        n += two;
    }
    if let Some(s) = &p.authentication_method {
        n += 1 + str_len(s);
    }
    if let Some(b) = &p.authentication_data {
        n += 3 + b.len();
    }
    if p.request_problem_information.is_some() {
        n += byte;
    }
    if p.will_delay_interval.is_some() {
        n += four;
    }
    if p.request_response_information.is_some() {
        n += byte;
    }
    if let Some(s) = &p.response_information {
        n += 1 + str_len(s);
    }
    if let Some(s) = &p.server_reference {
        n += 1 + str_len(s);
    }
    if let Some(s) = &p.reason_string {
        n += 1 + str_len(s);
    }
    if p.receive_maximum.is_some() {
        n += two;
    }
    if p.topic_alias_maximum.is_some() {
        n += two;
    }
    if p.topic_alias.is_some() {
        n += two;
    }
    if p.maximum_qos.is_some() {
        n += byte;
    }
    if p.retain_available.is_some() {
        n += byte;
    }
    for (k, v) in &p.user_properties {
        n += 1 + str_len(k) + str_len(v);
    }
    if p.maximum_packet_size.is_some() {
        n += four;
    }
    if p.wildcard_subscription_available.is_some() {
        n += byte;
    }
    if p.subscription_identifiers_available.is_some() {
        n += byte;
    }
    if p.shared_subscription_available.is_some() {
        n += byte;
    }
    n
}

/// Property Length prefix plus properties.
fn props_block_len(p: &Properties) -> usize {
    let n = props_len(p);
    vbi_len(n) + n
}

/// The remaining length of `packet` encoded for `protocol`.
fn remaining_len(packet: &Packet, protocol: Protocol) -> usize {
    let v5 = protocol == Protocol::V5;
    let props = |p: &Properties| if v5 { props_block_len(p) } else { 0 };
    match packet {
        Packet::Connect(c) => {
            // Protocol name, level, flags, keep alive.
            let (name, _) = protocol_name_and_level(c, v5);
            let mut n = str_len(name) + 1 + 1 + 2 + props(&c.properties) + str_len(&c.client_id);
            if let Some(w) = &c.will {
                n += props(&w.properties) + str_len(&w.topic) + 2 + w.payload.len();
            }
            if let Some(u) = &c.username {
                n += str_len(u);
            }
            if let Some(p) = &c.password {
                n += 2 + p.len();
            }
            n
        }
        Packet::ConnAck(c) => 2 + props(&c.properties),
        Packet::Publish(p) => {
            let id = if p.packet_id.is_some() { 2 } else { 0 };
            str_len(&p.topic) + id + props(&p.properties) + p.payload.len()
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            if !v5 {
                return 2;
            }
            let n = props_len(&a.properties);
            if n == 0 {
                // v5 §3.4.2.1: reason code and property length may be omitted.
                if a.reason_code == ReasonCode::SUCCESS {
                    2
                } else {
                    3
                }
            } else {
                3 + vbi_len(n) + n
            }
        }
        Packet::Subscribe(s) => {
            let mut n = 2 + props(&s.properties);
            for (f, _) in &s.filters {
                n += str_len(f) + 1;
            }
            n
        }
        Packet::SubAck(s) => 2 + props(&s.properties) + s.reason_codes.len(),
        Packet::Unsubscribe(u) => {
            let mut n = 2 + props(&u.properties);
            for f in &u.filters {
                n += str_len(f);
            }
            n
        }
        Packet::UnsubAck(u) => {
            if v5 {
                2 + props_block_len(&u.properties) + u.reason_codes.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if v5 {
                short_reason_len(d.reason_code, &d.properties)
            } else {
                0
            }
        }
        Packet::Auth(a) => short_reason_len(a.reason_code, &a.properties),
    }
}

/// DISCONNECT / AUTH body: empty for success without properties (v5 §3.14.2.1, §3.15.2.1),
/// one byte for a reason without properties.
fn short_reason_len(code: ReasonCode, p: &Properties) -> usize {
    let n = props_len(p);
    if n == 0 {
        if code == ReasonCode::SUCCESS {
            0
        } else {
            1
        }
    } else {
        1 + vbi_len(n) + n
    }
}

fn write_vbi(buf: &mut BytesMut, value: usize) -> Result<()> {
    if value > MAX_REMAINING_LENGTH {
        return Err(EncodeError::VariableByteIntegerTooLarge(
            u32::try_from(value).unwrap_or(u32::MAX),
        ));
    }
    let mut v = value;
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if v == 0 {
            return Ok(());
        }
    }
}

fn write_binary(buf: &mut BytesMut, b: &[u8]) -> Result<()> {
    let len = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong(b.len()))?;
    buf.put_u16(len);
    buf.put_slice(b);
    Ok(())
}

fn write_str(buf: &mut BytesMut, s: &str) -> Result<()> {
    write_binary(buf, s.as_bytes())
}

fn write_props(buf: &mut BytesMut, p: &Properties) -> Result<()> {
    write_vbi(buf, props_len(p))?;
    write_props_body(buf, p)
}

fn write_props_body(buf: &mut BytesMut, p: &Properties) -> Result<()> {
    fn u8_prop(buf: &mut BytesMut, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            buf.put_u8(id);
            buf.put_u8(v);
        }
    }
    fn u16_prop(buf: &mut BytesMut, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            buf.put_u8(id);
            buf.put_u16(v);
        }
    }
    fn u32_prop(buf: &mut BytesMut, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            buf.put_u8(id);
            buf.put_u32(v);
        }
    }
    fn str_prop(buf: &mut BytesMut, id: u8, v: &Option<String>) -> Result<()> {
        if let Some(v) = v {
            buf.put_u8(id);
            write_str(buf, v)?;
        }
        Ok(())
    }
    fn bin_prop(buf: &mut BytesMut, id: u8, v: &Option<bytes::Bytes>) -> Result<()> {
        if let Some(v) = v {
            buf.put_u8(id);
            write_binary(buf, v)?;
        }
        Ok(())
    }
    u8_prop(buf, 0x01, p.payload_format_indicator);
    u32_prop(buf, 0x02, p.message_expiry_interval);
    str_prop(buf, 0x03, &p.content_type)?;
    str_prop(buf, 0x08, &p.response_topic)?;
    bin_prop(buf, 0x09, &p.correlation_data)?;
    for id in &p.subscription_identifiers {
        buf.put_u8(0x0B);
        write_vbi(buf, *id as usize)?;
    }
    u32_prop(buf, 0x11, p.session_expiry_interval);
    str_prop(buf, 0x12, &p.assigned_client_identifier)?;
    u16_prop(buf, 0x13, p.server_keep_alive);
    str_prop(buf, 0x15, &p.authentication_method)?;
    bin_prop(buf, 0x16, &p.authentication_data)?;
    u8_prop(buf, 0x17, p.request_problem_information);
    u32_prop(buf, 0x18, p.will_delay_interval);
    u8_prop(buf, 0x19, p.request_response_information);
    str_prop(buf, 0x1A, &p.response_information)?;
    str_prop(buf, 0x1C, &p.server_reference)?;
    str_prop(buf, 0x1F, &p.reason_string)?;
    u16_prop(buf, 0x21, p.receive_maximum);
    u16_prop(buf, 0x22, p.topic_alias_maximum);
    u16_prop(buf, 0x23, p.topic_alias);
    u8_prop(buf, 0x24, p.maximum_qos);
    u8_prop(buf, 0x25, p.retain_available);
    for (k, v) in &p.user_properties {
        buf.put_u8(0x26);
        write_str(buf, k)?;
        write_str(buf, v)?;
    }
    u32_prop(buf, 0x27, p.maximum_packet_size);
    u8_prop(buf, 0x28, p.wildcard_subscription_available);
    u8_prop(buf, 0x29, p.subscription_identifiers_available);
    u8_prop(buf, 0x2A, p.shared_subscription_available);
    Ok(())
}

fn write_packet(
    packet: &Packet,
    protocol: Protocol,
    remaining: usize,
    buf: &mut BytesMut,
) -> Result<()> {
    let v5 = protocol == Protocol::V5;
    let first = match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    };
    buf.put_u8(first);
    write_vbi(buf, remaining)?;
    match packet {
        Packet::Connect(c) => write_connect(buf, c, v5),
        Packet::ConnAck(c) => write_connack(buf, c, v5),
        Packet::Publish(p) => write_publish(buf, p, v5),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            write_ack(buf, a, v5)
        }
        Packet::Subscribe(s) => write_subscribe(buf, s, v5),
        Packet::SubAck(s) => write_suback(buf, s, v5),
        Packet::Unsubscribe(u) => write_unsubscribe(buf, u, v5),
        Packet::UnsubAck(u) => write_unsuback(buf, u, v5),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => {
            if v5 {
                write_short_reason(buf, d.reason_code, &d.properties)
            } else {
                Ok(())
            }
        }
        Packet::Auth(a) => write_auth(buf, a),
    }
}

/// The CONNECT's protocol name and level byte. MQTT 3.1 ("MQIsdp", 3) and the bridge bit
/// (0x80) exist beside the 3.1.1 format only: a 5.0 CONNECT is "MQTT" 5 whatever its variant.
fn protocol_name_and_level(c: &Connect, v5: bool) -> (&'static str, u8) {
    if v5 {
        return ("MQTT", c.protocol.level());
    }
    let (name, level) = if c.variant.mqtt31 {
        ("MQIsdp", 3)
    } else {
        ("MQTT", c.protocol.level())
    };
    let bridge = if c.variant.bridge { 0x80 } else { 0 };
    (name, level | bridge)
}

fn write_connect(buf: &mut BytesMut, c: &Connect, v5: bool) -> Result<()> {
    let (name, level) = protocol_name_and_level(c, v5);
    write_str(buf, name)?;
    buf.put_u8(level);
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    if v5 {
        write_props(buf, &c.properties)?;
    }
    write_str(buf, &c.client_id)?;
    if let Some(w) = &c.will {
        if v5 {
            write_props(buf, &w.properties)?;
        }
        write_str(buf, &w.topic)?;
        write_binary(buf, &w.payload)?;
    }
    if let Some(u) = &c.username {
        write_str(buf, u)?;
    }
    if let Some(p) = &c.password {
        write_binary(buf, p)?;
    }
    Ok(())
}

/// v5 CONNACK reason code to v3.1.1 return code (3.1.1 §3.2.2.3).
fn v311_connack_code(code: ReasonCode) -> u8 {
    match code.0 {
        0x00 => 0,
        0x84 => 1,
        0x85 => 2,
        0x86 => 4,
        0x87 | 0x8A | 0x8C => 5,
        _ => 3,
    }
}

fn write_connack(buf: &mut BytesMut, c: &ConnAck, v5: bool) -> Result<()> {
    buf.put_u8(u8::from(c.session_present));
    if v5 {
        buf.put_u8(c.reason_code.0);
        write_props(buf, &c.properties)
    } else {
        buf.put_u8(v311_connack_code(c.reason_code));
        Ok(())
    }
}

fn write_publish(buf: &mut BytesMut, p: &Publish, v5: bool) -> Result<()> {
    write_str(buf, &p.topic)?;
    if let Some(id) = p.packet_id {
        buf.put_u16(id.get());
    }
    if v5 {
        write_props(buf, &p.properties)?;
    }
    buf.put_slice(&p.payload);
    Ok(())
}

fn write_ack(buf: &mut BytesMut, a: &Ack, v5: bool) -> Result<()> {
    buf.put_u16(a.packet_id.get());
    if !v5 {
        return Ok(());
    }
    let n = props_len(&a.properties);
    if n == 0 {
        if a.reason_code != ReasonCode::SUCCESS {
            buf.put_u8(a.reason_code.0);
        }
        return Ok(());
    }
    buf.put_u8(a.reason_code.0);
    write_vbi(buf, n)?;
    write_props_body(buf, &a.properties)
}

fn options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    let mut b = o.qos as u8;
    if v5 {
        if o.no_local {
            b |= 0x04;
        }
        if o.retain_as_published {
            b |= 0x08;
        }
        b |= (o.retain_handling as u8) << 4;
    }
    b
}

fn write_subscribe(buf: &mut BytesMut, s: &Subscribe, v5: bool) -> Result<()> {
    buf.put_u16(s.packet_id.get());
    if v5 {
        write_props(buf, &s.properties)?;
    }
    for (f, o) in &s.filters {
        write_str(buf, f)?;
        buf.put_u8(options_byte(o, v5));
    }
    Ok(())
}

fn write_suback(buf: &mut BytesMut, s: &SubAck, v5: bool) -> Result<()> {
    buf.put_u16(s.packet_id.get());
    if v5 {
        write_props(buf, &s.properties)?;
        for c in &s.reason_codes {
            buf.put_u8(c.0);
        }
    } else {
        for c in &s.reason_codes {
            // 3.1.1 §3.9.3: granted QoS 0..=2, or 0x80 for failure.
            buf.put_u8(if c.0 <= 2 { c.0 } else { 0x80 });
        }
    }
    Ok(())
}

fn write_unsubscribe(buf: &mut BytesMut, u: &Unsubscribe, v5: bool) -> Result<()> {
    buf.put_u16(u.packet_id.get());
    if v5 {
        write_props(buf, &u.properties)?;
    }
    for f in &u.filters {
        write_str(buf, f)?;
    }
    Ok(())
}

fn write_unsuback(buf: &mut BytesMut, u: &UnsubAck, v5: bool) -> Result<()> {
    buf.put_u16(u.packet_id.get());
    if v5 {
        write_props(buf, &u.properties)?;
        for c in &u.reason_codes {
            buf.put_u8(c.0);
        }
    }
    Ok(())
}

fn write_short_reason(buf: &mut BytesMut, code: ReasonCode, p: &Properties) -> Result<()> {
    let n = props_len(p);
    if n == 0 {
        if code != ReasonCode::SUCCESS {
            buf.put_u8(code.0);
        }
        return Ok(());
    }
    buf.put_u8(code.0);
    write_vbi(buf, n)?;
    write_props_body(buf, p)
}

fn write_auth(buf: &mut BytesMut, a: &Auth) -> Result<()> {
    write_short_reason(buf, a.reason_code, &a.properties)
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case(0 => 1; "zero")]
    #[test_case(127 => 1; "one byte max")]
    #[test_case(128 => 2; "two bytes min")]
    #[test_case(16_383 => 2; "two bytes max")]
    #[test_case(16_384 => 3; "three bytes min")]
    #[test_case(2_097_151 => 3; "three bytes max")]
    #[test_case(2_097_152 => 4; "four bytes min")]
    #[test_case(MAX_REMAINING_LENGTH => 4; "four bytes max")]
    fn vbi_len_matches_written_bytes(value: usize) -> usize {
        let mut buf = BytesMut::new();
        assert!(write_vbi(&mut buf, value).is_ok());
        assert_eq!(buf.len(), vbi_len(value));
        assert_eq!(
            crate::decode::decode_vbi(&buf),
            Ok(Some((value as u32, buf.len())))
        );
        buf.len()
    }

    #[test]
    fn vbi_above_max_is_an_error() {
        let mut buf = BytesMut::new();
        assert_eq!(
            write_vbi(&mut buf, MAX_REMAINING_LENGTH + 1),
            Err(EncodeError::VariableByteIntegerTooLarge(268_435_456))
        );
    }
}
