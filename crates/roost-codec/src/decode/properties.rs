//! v5 properties: where each identifier may appear and how its value is checked.
//!
//! Every v5 packet parser in `decode` calls [`read_properties`] with the [`PropCtx`] of its
//! packet (or of the will). The block is read through its own [`Reader`], so a property that
//! claims more bytes than its block holds is an overrun, not a read into the next field.
//! Rules enforced here: a property in a packet that may not carry it, a repeated property
//! (v5 §2.2.2.2; User Property and PUBLISH's Subscription Identifier may repeat), a flag that is
//! not 0/1 and a value for which 0 is a protocol error.

use super::reader::Reader;
use super::Result;
use crate::error::DecodeError;
use crate::packet::Properties;

// Where each property may appear (v5 §2.2.2.2, table 2-4).
const P_CONNECT: u16 = 1 << 0;
const P_CONNACK: u16 = 1 << 1;
const P_PUBLISH: u16 = 1 << 2;
const P_WILL: u16 = 1 << 3;
const P_ACK: u16 = 1 << 4;
const P_SUBSCRIBE: u16 = 1 << 5;
const P_SUBACK: u16 = 1 << 6;
const P_UNSUBSCRIBE: u16 = 1 << 7;
const P_UNSUBACK: u16 = 1 << 8;
const P_DISCONNECT: u16 = 1 << 9;
const P_AUTH: u16 = 1 << 10;
const P_ALL: u16 = (1 << 11) - 1;

/// The packets a property identifier may appear in; `None` for an unknown identifier.
fn property_mask(id: u8) -> Option<u16> {
    Some(match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => P_PUBLISH | P_WILL,
        0x0B => P_PUBLISH | P_SUBSCRIBE,
        0x11 => P_CONNECT | P_CONNACK | P_DISCONNECT,
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => P_CONNACK,
        0x15 | 0x16 => P_CONNECT | P_CONNACK | P_AUTH,
        0x17 | 0x19 => P_CONNECT,
        0x18 => P_WILL,
        0x1C => P_CONNACK | P_DISCONNECT,
        0x1F => P_CONNACK | P_ACK | P_SUBACK | P_UNSUBACK | P_DISCONNECT | P_AUTH,
        0x21 | 0x22 | 0x27 => P_CONNECT | P_CONNACK,
        0x23 => P_PUBLISH,
        0x26 => P_ALL,
        _ => return None,
    })
}

/// Which packet a property block belongs to.
#[derive(Clone, Copy)]
pub(super) struct PropCtx {
    mask: u16,
    name: &'static str,
}

impl PropCtx {
    /// The context of PUBACK, PUBREC, PUBREL and PUBCOMP, which share one property set;
    /// `name` is the packet's name for errors.
    pub(super) const fn ack(name: &'static str) -> PropCtx {
        PropCtx { mask: P_ACK, name }
    }
}

pub(super) const CTX_CONNECT: PropCtx = PropCtx {
    mask: P_CONNECT,
    name: "CONNECT",
};
pub(super) const CTX_WILL: PropCtx = PropCtx {
    mask: P_WILL,
    name: "will properties",
};
pub(super) const CTX_CONNACK: PropCtx = PropCtx {
    mask: P_CONNACK,
    name: "CONNACK",
};
pub(super) const CTX_PUBLISH: PropCtx = PropCtx {
    mask: P_PUBLISH,
    name: "PUBLISH",
};
pub(super) const CTX_SUBSCRIBE: PropCtx = PropCtx {
    mask: P_SUBSCRIBE,
    name: "SUBSCRIBE",
};
pub(super) const CTX_SUBACK: PropCtx = PropCtx {
    mask: P_SUBACK,
    name: "SUBACK",
};
pub(super) const CTX_UNSUBSCRIBE: PropCtx = PropCtx {
    mask: P_UNSUBSCRIBE,
    name: "UNSUBSCRIBE",
};
pub(super) const CTX_UNSUBACK: PropCtx = PropCtx {
    mask: P_UNSUBACK,
    name: "UNSUBACK",
};
pub(super) const CTX_DISCONNECT: PropCtx = PropCtx {
    mask: P_DISCONNECT,
    name: "DISCONNECT",
};
pub(super) const CTX_AUTH: PropCtx = PropCtx {
    mask: P_AUTH,
    name: "AUTH",
};

/// A property that may only be 0 or 1.
fn flag_property(id: u8, value: u8) -> Result<u8> {
    if value > 1 {
        return Err(DecodeError::InvalidPropertyValue {
            id,
            value: u32::from(value),
        });
    }
    Ok(value)
}

/// A property for which 0 is a protocol error.
fn nonzero_property<T: Into<u32> + Copy>(id: u8, value: T) -> Result<T> {
    if value.into() == 0 {
        return Err(DecodeError::InvalidPropertyValue { id, value: 0 });
    }
    Ok(value)
}

/// Reads a v5 property block: Property Length (VBI) then properties, each allowed in `ctx`
/// and, except User Property (and Subscription Identifier in PUBLISH), present at most once.
pub(super) fn read_properties(r: &mut Reader, ctx: PropCtx) -> Result<Properties> {
    let len = r.vbi()? as usize;
    let mut p = Reader::new(r.bytes(len)?);
    let mut props = Properties::default();
    let mut seen: u64 = 0;
    while !p.is_empty() {
        let id = p.u8()?;
        let mask = property_mask(id).ok_or(DecodeError::UnknownProperty(id))?;
        if mask & ctx.mask == 0 {
            return Err(DecodeError::PropertyNotAllowed {
                id,
                packet: ctx.name,
            });
        }
        let repeatable = id == 0x26 || (id == 0x0B && ctx.mask == P_PUBLISH);
        if !repeatable {
            // Known ids are all below 64.
            let bit = 1u64 << id;
            if seen & bit != 0 {
                return Err(DecodeError::DuplicateProperty(id));
            }
            seen |= bit;
        }
        match id {
            0x01 => props.payload_format_indicator = Some(flag_property(id, p.u8()?)?),
            0x02 => props.message_expiry_interval = Some(p.u32()?),
            0x03 => props.content_type = Some(p.string()?),
            0x08 => {
                let topic = p.string()?;
                if topic.contains(['+', '#']) {
                    return Err(DecodeError::ResponseTopicWildcard);
                }
                props.response_topic = Some(topic);
            }
            0x09 => props.correlation_data = Some(p.binary()?),
            0x0B => {
                let v = nonzero_property(id, p.vbi()?)?;
                props.subscription_identifiers.push(v);
            }
            0x11 => props.session_expiry_interval = Some(p.u32()?),
            0x12 => props.assigned_client_identifier = Some(p.string()?),
            0x13 => props.server_keep_alive = Some(p.u16()?),
            0x15 => props.authentication_method = Some(p.string()?),
            0x16 => props.authentication_data = Some(p.binary()?),
            0x17 => props.request_problem_information = Some(flag_property(id, p.u8()?)?),
            0x18 => props.will_delay_interval = Some(p.u32()?),
            0x19 => props.request_response_information = Some(flag_property(id, p.u8()?)?),
            0x1A => props.response_information = Some(p.string()?),
            0x1C => props.server_reference = Some(p.string()?),
            0x1F => props.reason_string = Some(p.string()?),
            0x21 => props.receive_maximum = Some(nonzero_property(id, p.u16()?)?),
            0x22 => props.topic_alias_maximum = Some(p.u16()?),
            0x23 => props.topic_alias = Some(nonzero_property(id, p.u16()?)?),
            0x24 => props.maximum_qos = Some(flag_property(id, p.u8()?)?),
            0x25 => props.retain_available = Some(flag_property(id, p.u8()?)?),
            0x26 => {
                let key = p.string()?;
                let value = p.string()?;
                props.user_properties.push((key, value));
            }
            0x27 => props.maximum_packet_size = Some(nonzero_property(id, p.u32()?)?),
            0x28 => props.wildcard_subscription_available = Some(flag_property(id, p.u8()?)?),
            0x29 => props.subscription_identifiers_available = Some(flag_property(id, p.u8()?)?),
            0x2A => props.shared_subscription_available = Some(flag_property(id, p.u8()?)?),
            _ => return Err(DecodeError::UnknownProperty(id)),
        }
    }
    Ok(props)
}
