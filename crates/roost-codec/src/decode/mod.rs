//! Packet decoding: bytes in a `BytesMut` to [`Packet`]s.
//!
//! Called by the connection driver (one [`Decoder`] per connection, owned by its task; no
//! shared state, no locks). Decoding happens in two steps, as in mini-redis `Frame::check` then
//! `parse`:
//!
//! ```text
//!  first byte ──> packet type / flags / CONNECT-first checks   (1 byte is enough to reject)
//!  remaining length VBI ──> size = header + remaining <= max?  (checked before buffering more)
//!  buf.len() < size ──> Ok(None), nothing consumed
//!  split_to(size).freeze() ──> parse body from a Bytes cursor  (payloads share the buffer)
//! ```
//!
//! A server decoder starts without a protocol: the first packet must be CONNECT, whose protocol
//! name and level select v3.1.1 or v5 for the rest of the connection. On `Err` the connection
//! must be closed: the erroneous packet's bytes may or may not have been consumed.
//!
//! This file holds the framing and one parser per packet type; the body cursor is in
//! `reader.rs` and v5 property blocks (which property may appear where) in `properties.rs`.

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    Ack, Auth, ConnAck, Connect, ConnectVariant, Disconnect, LastWill, Packet, Properties,
    Protocol, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
    UnsubAck, Unsubscribe,
};

mod properties;
mod reader;

use properties::{
    read_properties, PropCtx, CTX_AUTH, CTX_CONNACK, CTX_CONNECT, CTX_DISCONNECT, CTX_PUBLISH,
    CTX_SUBACK, CTX_SUBSCRIBE, CTX_UNSUBACK, CTX_UNSUBSCRIBE, CTX_WILL,
};
use reader::Reader;

type Result<T> = std::result::Result<T, DecodeError>;

/// Decodes the packets of one connection, remembering what the protocol requires across packets
/// (the protocol version, whether CONNECT has been seen).
#[derive(Debug, Clone)]
pub struct Decoder {
    /// `None` on a server decoder until CONNECT has been decoded.
    protocol: Option<Protocol>,
    /// Server side: enforces CONNECT first / only once ([MQTT-3.1.0-1/2]), rejects packets
    /// only a server sends, and Subscription Identifiers in PUBLISH ([MQTT-3.3.4-6]).
    server: bool,
    /// Whether CONNECT has been decoded (server side).
    seen_connect: bool,
    /// Largest whole packet accepted, fixed header included (the Maximum Packet Size this side
    /// announced, v5 §3.1.2.11.4 / §3.2.2.3.6).
    max_packet_size: u32,
}

impl Decoder {
    /// Server side: the first packet must be CONNECT ([MQTT-3.1.0-1]); its protocol name/level
    /// select the version afterwards.
    pub fn server(max_packet_size: u32) -> Decoder {
        Decoder {
            protocol: None,
            server: true,
            seen_connect: false,
            max_packet_size,
        }
    }

    /// Client side (tests, our Rust client): version known up front. Accepts every packet type
    /// so tests can decode client-to-server packets with it too.
    pub fn client(protocol: Protocol, max_packet_size: u32) -> Decoder {
        Decoder {
            protocol: Some(protocol),
            server: false,
            seen_connect: false,
            max_packet_size,
        }
    }

    /// The protocol in use; `None` on a server decoder before CONNECT.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// Changes the largest packet accepted (whole packet, fixed header included).
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Decodes one packet from the front of `buf`.
    ///
    /// `Ok(None)`: incomplete, nothing consumed. `Ok(Some)`: the packet's bytes were consumed
    /// (split off and frozen, so payload `Bytes` share the buffer without copying).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let packet_type = first >> 4;
        let flags = first & 0x0F;
        // The protocol before CONNECT does not matter: only CONNECT passes the checks below.
        let protocol = self.protocol.unwrap_or(Protocol::V5);
        if packet_type == 0 || (packet_type == 15 && protocol == Protocol::V311) {
            return Err(DecodeError::InvalidPacketType(packet_type));
        }
        if self.server {
            if !self.seen_connect && packet_type != 1 {
                return Err(DecodeError::FirstPacketNotConnect(packet_type));
            }
            if self.seen_connect && packet_type == 1 {
                return Err(DecodeError::SecondConnect);
            }
            let server_only = match packet_type {
                2 => Some("CONNACK"),
                9 => Some("SUBACK"),
                11 => Some("UNSUBACK"),
                13 => Some("PINGRESP"),
                _ => None,
            };
            if let Some(name) = server_only {
                return Err(DecodeError::UnexpectedPacket(name));
            }
        }
        check_flags(packet_type, flags)?;

        let Some((remaining, vbi_len)) = decode_vbi(&buf[1..])? else {
            return Ok(None);
        };
        let size = 1 + vbi_len + remaining as usize;
        if size > self.max_packet_size as usize {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        if buf.len() < size {
            return Ok(None);
        }

        let mut frame = buf.split_to(size).freeze();
        frame.advance(1 + vbi_len);
        let mut r = Reader::new(frame);
        let packet = match packet_type {
            1 => Packet::Connect(Box::new(connect(&mut r)?)),
            2 => Packet::ConnAck(connack(&mut r, protocol)?),
            3 => Packet::Publish(publish(&mut r, flags, protocol, self.server)?),
            4 => Packet::PubAck(ack(&mut r, protocol, PUBACK_CODES, "PUBACK")?),
            5 => Packet::PubRec(ack(&mut r, protocol, PUBACK_CODES, "PUBREC")?),
            6 => Packet::PubRel(ack(&mut r, protocol, PUBREL_CODES, "PUBREL")?),
            7 => Packet::PubComp(ack(&mut r, protocol, PUBREL_CODES, "PUBCOMP")?),
            8 => Packet::Subscribe(subscribe(&mut r, protocol)?),
            9 => Packet::SubAck(suback(&mut r, protocol)?),
            10 => Packet::Unsubscribe(unsubscribe(&mut r, protocol)?),
            11 => Packet::UnsubAck(unsuback(&mut r, protocol)?),
            12 => Packet::PingReq,
            13 => Packet::PingResp,
            14 => Packet::Disconnect(disconnect(&mut r, protocol)?),
            _ => Packet::Auth(auth(&mut r)?),
        };
        r.finish()?;

        if let Packet::Connect(connect) = &packet {
            if self.server {
                self.protocol = Some(connect.protocol);
                self.seen_connect = true;
            }
        }
        Ok(Some(packet))
    }
}

/// Fixed header flags per packet type ([MQTT-2.1.3-1]; 3.1.1 [MQTT-2.2.2-1/2]) and the
/// PUBLISH flag rules that can be checked from the first byte alone.
fn check_flags(packet_type: u8, flags: u8) -> Result<()> {
    let expected = match packet_type {
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupWithQoS0);
            }
            return Ok(());
        }
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(DecodeError::InvalidFixedHeaderFlags { packet_type, flags });
    }
    Ok(())
}

/// Decodes a Variable Byte Integer: `Ok(None)` when `bytes` ends before the last byte.
/// Rejects a fifth byte and non-minimal encodings ([MQTT-1.5.5-1]).
pub(crate) fn decode_vbi(bytes: &[u8]) -> Result<Option<(u32, usize)>> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = bytes.get(i) else {
            return Ok(None);
        };
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after a continuation byte means a shorter encoding existed.
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedVariableByteInteger);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::MalformedVariableByteInteger)
}

/// A topic name (PUBLISH or will): no wildcards ([MQTT-3.3.2-2]); empty only when allowed.
fn check_topic_name(topic: &str, empty_allowed: bool) -> Result<()> {
    if topic.is_empty() && !empty_allowed {
        return Err(DecodeError::EmptyTopicName);
    }
    if topic.contains(['+', '#']) {
        return Err(DecodeError::TopicNameWildcard);
    }
    Ok(())
}

/// A topic filter: not empty ([MQTT-4.7.3-1]), `#` alone in the last level ([MQTT-4.7.1-1]),
/// `+` alone in its level ([MQTT-4.7.1-2]), `$share/{group}/{filter}` well formed
/// ([MQTT-4.8.2-1/2]). Returns whether it is a shared subscription.
pub(crate) fn check_topic_filter(filter: &str) -> Result<bool> {
    if filter.is_empty() {
        return Err(DecodeError::EmptyTopicFilter);
    }
    let (shared, filter) = match filter.strip_prefix("$share/") {
        Some(rest) => {
            let Some((group, filter)) = rest.split_once('/') else {
                return Err(DecodeError::InvalidShareName);
            };
            if group.is_empty() || group.contains(['+', '#']) {
                return Err(DecodeError::InvalidShareName);
            }
            if filter.is_empty() {
                return Err(DecodeError::MissingSharedFilter);
            }
            (true, filter)
        }
        None => (false, filter),
    };
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(DecodeError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(DecodeError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(shared)
}

fn connect(r: &mut Reader) -> Result<Connect> {
    let name = r.binary()?;
    let level = r.u8()?;
    let bridge = level & 0x80 != 0;
    let (protocol, mqtt31) = match (&name[..], level & 0x7F, bridge) {
        (b"MQTT", 4, _) => (Protocol::V311, false),
        (b"MQTT", 5, false) => (Protocol::V5, false),
        (b"MQIsdp", 3, _) => (Protocol::V311, true),
        (b"MQTT", _, _) | (b"MQIsdp", _, _) => {
            return Err(DecodeError::UnsupportedProtocolVersion(level))
        }
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let variant = ConnectVariant { mqtt31, bridge };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        return Err(DecodeError::InvalidWillQoS);
    };
    if protocol == Protocol::V311 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = match protocol {
        Protocol::V5 => read_properties(r, CTX_CONNECT)?,
        Protocol::V311 => Properties::default(),
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = match protocol {
            Protocol::V5 => read_properties(r, CTX_WILL)?,
            Protocol::V311 => Properties::default(),
        };
        let topic = r.string()?;
        check_topic_name(&topic, false)?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
        variant,
    })
}

/// v5 CONNACK reason codes (§3.2.2.2).
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// v5 PUBACK / PUBREC reason codes (§3.4.2.1, §3.5.2.1).
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// v5 PUBREL / PUBCOMP reason codes (§3.6.2.1, §3.7.2.1).
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
/// v5 SUBACK reason codes (§3.9.3).
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
/// v3.1.1 SUBACK return codes (§3.9.3).
const SUBACK_CODES_V311: &[u8] = &[0x00, 0x01, 0x02, 0x80];
/// v5 UNSUBACK reason codes (§3.11.3).
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
/// v5 DISCONNECT reason codes (§3.14.2.1).
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
/// v5 AUTH reason codes (§3.15.2.1).
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn read_reason_code(r: &mut Reader, allowed: &[u8], packet: &'static str) -> Result<ReasonCode> {
    let code = r.u8()?;
    if !allowed.contains(&code) {
        return Err(DecodeError::InvalidReasonCode { packet, code });
    }
    Ok(ReasonCode(code))
}

fn connack(r: &mut Reader, protocol: Protocol) -> Result<ConnAck> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::ConnAckReservedFlags);
    }
    let session_present = flags & 0x01 != 0;
    match protocol {
        Protocol::V311 => {
            let code = r.u8()?;
            let reason_code = match code {
                0 => ReasonCode::SUCCESS,
                1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                3 => ReasonCode::SERVER_UNAVAILABLE,
                4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                5 => ReasonCode::NOT_AUTHORIZED,
                _ => {
                    return Err(DecodeError::InvalidReasonCode {
                        packet: "CONNACK",
                        code,
                    })
                }
            };
            Ok(ConnAck {
                session_present,
                reason_code,
                properties: Properties::default(),
            })
        }
        Protocol::V5 => {
            let reason_code = read_reason_code(r, CONNACK_CODES, "CONNACK")?;
            let properties = read_properties(r, CTX_CONNACK)?;
            Ok(ConnAck {
                session_present,
                reason_code,
                properties,
            })
        }
    }
}

fn publish(r: &mut Reader, flags: u8, protocol: Protocol, server: bool) -> Result<Publish> {
    let dup = flags & 0b1000 != 0;
    let retain = flags & 0b0001 != 0;
    // QoS 3 was rejected by check_flags.
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    let properties = match protocol {
        Protocol::V5 => read_properties(r, CTX_PUBLISH)?,
        Protocol::V311 => Properties::default(),
    };
    if server && !properties.subscription_identifiers.is_empty() {
        return Err(DecodeError::SubscriptionIdentifierFromClient);
    }
    let empty_allowed = protocol == Protocol::V5 && properties.topic_alias.is_some();
    check_topic_name(&topic, empty_allowed)?;
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP; `codes` are the v5 reason codes the type defines.
fn ack(r: &mut Reader, protocol: Protocol, codes: &[u8], name: &'static str) -> Result<Ack> {
    let packet_id = r.packet_id()?;
    if protocol == Protocol::V311 || r.is_empty() {
        return Ok(Ack::new(packet_id));
    }
    let reason_code = read_reason_code(r, codes, name)?;
    // v5 §3.4.2.2.1: a remaining length below 4 means no Property Length.
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        read_properties(r, PropCtx::ack(name))?
    };
    Ok(Ack {
        packet_id,
        reason_code,
        properties,
    })
}

fn subscription_options(byte: u8, protocol: Protocol) -> Result<SubscriptionOptions> {
    let reserved = match protocol {
        Protocol::V311 => 0b1111_1100,
        Protocol::V5 => 0b1100_0000,
    };
    if byte & reserved != 0 {
        return Err(DecodeError::SubscriptionOptionsReserved(byte));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidSubscriptionQoS)?;
    let retain_handling =
        RetainHandling::from_u8((byte >> 4) & 0b11).ok_or(DecodeError::InvalidRetainHandling)?;
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn subscribe(r: &mut Reader, protocol: Protocol) -> Result<Subscribe> {
    let packet_id = r.packet_id()?;
    let properties = match protocol {
        Protocol::V5 => read_properties(r, CTX_SUBSCRIBE)?,
        Protocol::V311 => Properties::default(),
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = subscription_options(r.u8()?, protocol)?;
        let shared = check_topic_filter(&filter)?;
        if shared && options.no_local {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::SubscribeWithoutFilters);
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

fn suback(r: &mut Reader, protocol: Protocol) -> Result<SubAck> {
    let packet_id = r.packet_id()?;
    let (properties, codes) = match protocol {
        Protocol::V5 => (read_properties(r, CTX_SUBACK)?, SUBACK_CODES),
        Protocol::V311 => (Properties::default(), SUBACK_CODES_V311),
    };
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reason_codes.push(read_reason_code(r, codes, "SUBACK")?);
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::MissingReasonCodes("SUBACK"));
    }
    Ok(SubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

fn unsubscribe(r: &mut Reader, protocol: Protocol) -> Result<Unsubscribe> {
    let packet_id = r.packet_id()?;
    let properties = match protocol {
        Protocol::V5 => read_properties(r, CTX_UNSUBSCRIBE)?,
        Protocol::V311 => Properties::default(),
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        check_topic_filter(&filter)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::UnsubscribeWithoutFilters);
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn unsuback(r: &mut Reader, protocol: Protocol) -> Result<UnsubAck> {
    let packet_id = r.packet_id()?;
    if protocol == Protocol::V311 {
        return Ok(UnsubAck {
            packet_id,
            properties: Properties::default(),
            reason_codes: Vec::new(),
        });
    }
    let properties = read_properties(r, CTX_UNSUBACK)?;
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reason_codes.push(read_reason_code(r, UNSUBACK_CODES, "UNSUBACK")?);
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::MissingReasonCodes("UNSUBACK"));
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

fn disconnect(r: &mut Reader, protocol: Protocol) -> Result<Disconnect> {
    if protocol == Protocol::V311 || r.is_empty() {
        return Ok(Disconnect::default());
    }
    let reason_code = read_reason_code(r, DISCONNECT_CODES, "DISCONNECT")?;
    // v5 §3.14.2.2.1: a remaining length below 2 means no Property Length.
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        read_properties(r, CTX_DISCONNECT)?
    };
    Ok(Disconnect {
        reason_code,
        properties,
    })
}

fn auth(r: &mut Reader) -> Result<Auth> {
    if r.is_empty() {
        return Ok(Auth::default());
    }
    let reason_code = read_reason_code(r, AUTH_CODES, "AUTH")?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        read_properties(r, CTX_AUTH)?
    };
    Ok(Auth {
        reason_code,
        properties,
    })
}

#[cfg(test)]
mod tests;
