//! Decode and encode errors.
//!
//! Every [`DecodeError`] names the normative statement it enforces (MQTT 5.0 numbering, with the
//! 3.1.1 number beside it where the two differ, or the section where the rule has no number) and
//! maps to the v5 reason code the connection driver sends before closing
//! ([`DecodeError::reason_code`]). The split follows MQTT 5.0 §4.13: a packet that cannot be
//! parsed is a Malformed Packet (0x81); a packet that parses but carries data the protocol does
//! not allow is a Protocol Error (0x82).
//!
//! A decode error is always "this client sent something wrong": the codec has no fatal errors of
//! its own. An [`EncodeError`] is a bug or a policy slip in the caller (a field too long for the
//! wire, AUTH on a v3.1.1 connection), never a reason to drop other connections.

use crate::packet::ReasonCode;

/// Why an inbound packet was rejected. After any of these the connection is closed; the driver
/// sends DISCONNECT (v5, or CONNACK before the session exists) with [`DecodeError::reason_code`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The remaining length, a property length or a Variable Byte Integer property uses more
    /// than four bytes or is not in its shortest form.
    #[error("[MQTT-1.5.5-1] malformed variable byte integer (more than 4 bytes or not minimal)")]
    MalformedVariableByteInteger,
    /// The whole packet (fixed header included) is larger than the Maximum Packet Size this side
    /// announced. Detected from the fixed header alone, before the body is buffered.
    #[error("[MQTT-5.0 §3.1.2.11.4] packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge {
        /// Total size of the packet as announced by its fixed header.
        size: usize,
        /// The limit in force.
        max: u32,
    },
    /// Packet type 0, or 15 (AUTH) on a v3.1.1 connection.
    #[error("[MQTT-5.0 §2.1.2] reserved or unknown packet type {0}")]
    InvalidPacketType(u8),
    /// The low nibble of the first byte does not have the value the packet type requires.
    #[error(
        "[MQTT-2.1.3-1] (3.1.1: [MQTT-2.2.2-1/2]) invalid fixed header flags {flags:#06b} for packet type {packet_type}"
    )]
    InvalidFixedHeaderFlags {
        /// Packet type (high nibble).
        packet_type: u8,
        /// The flags received (low nibble).
        flags: u8,
    },
    /// A server connection started with something other than CONNECT.
    #[error("[MQTT-3.1.0-1] first packet must be CONNECT, got packet type {0}")]
    FirstPacketNotConnect(u8),
    /// A second CONNECT on the same connection.
    #[error("[MQTT-3.1.0-2] second CONNECT on the same connection")]
    SecondConnect,
    /// A server received a packet only a server may send (CONNACK, SUBACK, UNSUBACK, PINGRESP).
    #[error("[MQTT-5.0 §2.1.2] {0} may only be sent by a server")]
    UnexpectedPacket(&'static str),
    /// CONNECT protocol name is neither "MQTT" nor the 3.1 name "MQIsdp".
    #[error("[MQTT-3.1.2-1] protocol name is not \"MQTT\"")]
    InvalidProtocolName,
    /// CONNECT protocol level this codec does not speak: "MQTT" 4 and 5, "MQIsdp" 3 (MQTT 3.1)
    /// and, for 3.1 and 3.1.1, the same with the bridge bit (0x80). The driver answers CONNACK
    /// 0x84 (v5) / return code 0x01 (v3.1.1).
    #[error("[MQTT-3.1.2-2] unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// CONNECT flags bit 0 is reserved and must be 0.
    #[error("[MQTT-3.1.2-3] CONNECT reserved flag is set")]
    ConnectReservedFlag,
    /// Will QoS is 3.
    #[error("[MQTT-3.1.2-12] (3.1.1: [MQTT-3.1.2-14]) will QoS 3 is not a QoS")]
    InvalidWillQoS,
    /// Will QoS or Will Retain is set while the Will Flag is 0.
    #[error(
        "[MQTT-3.1.2-11/13] (3.1.1: [MQTT-3.1.2-13/15]) will QoS or will retain set without the will flag"
    )]
    WillFlagsWithoutWill,
    /// v3.1.1 only: Password Flag without User Name Flag (allowed in v5).
    #[error("[MQTT-3.1.2-22] (3.1.1) password flag set without user name flag")]
    PasswordWithoutUsername,
    /// CONNACK acknowledge flags bits 7-1 are reserved.
    #[error("[MQTT-3.2.2-1] CONNACK reserved flags are set")]
    ConnAckReservedFlags,
    /// PUBLISH with both QoS bits set.
    #[error("[MQTT-3.3.1-4] PUBLISH QoS 3 is not a QoS")]
    InvalidQoS,
    /// PUBLISH with DUP=1 and QoS 0.
    #[error("[MQTT-3.3.1-2] DUP flag set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    /// A packet identifier of 0.
    #[error("[MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]) packet identifier is 0")]
    ZeroPacketId,
    /// A UTF-8 Encoded String that is not well-formed UTF-8 (surrogates included).
    #[error("[MQTT-1.5.4-1] (3.1.1: [MQTT-1.5.3-1]) string is not well-formed UTF-8")]
    InvalidUtf8,
    /// A UTF-8 Encoded String that contains U+0000.
    #[error("[MQTT-1.5.4-2] (3.1.1: [MQTT-1.5.3-2]) string contains U+0000")]
    NullCharacter,
    /// Empty topic name in PUBLISH (v3.1.1 always; v5 unless a Topic Alias is present), or an
    /// empty will topic.
    #[error("[MQTT-4.7.3-1] / [MQTT-5.0 §3.3.2.3.4] empty topic name without a topic alias")]
    EmptyTopicName,
    /// Topic name (PUBLISH or will) contains `+` or `#`.
    #[error("[MQTT-3.3.2-2] topic name contains a wildcard")]
    TopicNameWildcard,
    /// Response Topic property contains `+` or `#`.
    #[error("[MQTT-3.3.2-14] response topic contains a wildcard")]
    ResponseTopicWildcard,
    /// Empty topic filter in SUBSCRIBE / UNSUBSCRIBE.
    #[error("[MQTT-4.7.3-1] empty topic filter")]
    EmptyTopicFilter,
    /// `#` not alone in its level or not in the last level.
    #[error("[MQTT-4.7.1-1] (3.1.1: [MQTT-4.7.1-2]) '#' must be alone in the last level")]
    MisplacedMultiLevelWildcard,
    /// `+` sharing a level with other characters.
    #[error("[MQTT-4.7.1-2] (3.1.1: [MQTT-4.7.1-3]) '+' must occupy an entire level")]
    MisplacedSingleLevelWildcard,
    /// `$share/` filter whose ShareName is empty, contains `+` or `#`, or is not followed by `/`.
    #[error("[MQTT-4.8.2-1/2] shared subscription has an invalid share name")]
    InvalidShareName,
    /// `$share/{group}/` with nothing after the group.
    #[error("[MQTT-4.8.2-2] shared subscription has no topic filter after the share name")]
    MissingSharedFilter,
    /// No Local set on a shared subscription.
    #[error("[MQTT-3.8.3-4] no local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// SUBSCRIBE with an empty payload.
    #[error("[MQTT-3.8.3-2] (3.1.1: [MQTT-3.8.3-3]) SUBSCRIBE contains no topic filter")]
    SubscribeWithoutFilters,
    /// UNSUBSCRIBE with an empty payload.
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE contains no topic filter")]
    UnsubscribeWithoutFilters,
    /// Reserved bits of a subscription options byte are set (bits 6-7 in v5, 2-7 in v3.1.1).
    #[error(
        "[MQTT-3.8.3-5] (3.1.1: [MQTT-3-8.3-4]) subscription options reserved bits set: {0:#04x}"
    )]
    SubscriptionOptionsReserved(u8),
    /// Subscription maximum QoS of 3.
    #[error("[MQTT-5.0 §3.8.3.1] (3.1.1: [MQTT-3-8.3-4]) subscription QoS 3 is not a QoS")]
    InvalidSubscriptionQoS,
    /// Retain Handling of 3.
    #[error("[MQTT-5.0 §3.8.3.1] retain handling 3 is a protocol error")]
    InvalidRetainHandling,
    /// A property identifier this version does not define.
    #[error("[MQTT-5.0 §2.2.2.2] unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A defined property in a packet that does not allow it.
    #[error("[MQTT-5.0 §2.2.2.2] property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// Property identifier.
        id: u8,
        /// Packet (or "will properties").
        packet: &'static str,
    },
    /// A property other than User Property (or Subscription Identifier in PUBLISH) appears
    /// more than once.
    #[error("[MQTT-5.0 §2.2.2.2] property {0:#04x} included more than once")]
    DuplicateProperty(u8),
    /// A property value outside its range: 0 for receive maximum, maximum packet size, topic
    /// alias or subscription identifier; anything but 0/1 for the flag-like properties.
    #[error("[MQTT-5.0 §2.2.2.2] property {id:#04x} has invalid value {value}")]
    InvalidPropertyValue {
        /// Property identifier.
        id: u8,
        /// Value received.
        value: u32,
    },
    /// A client-to-server PUBLISH carries a Subscription Identifier.
    #[error("[MQTT-3.3.4-6] PUBLISH from a client contains a subscription identifier")]
    SubscriptionIdentifierFromClient,
    /// Authentication Data without Authentication Method.
    #[error("[MQTT-5.0 §3.1.2.11.10] authentication data without authentication method")]
    AuthDataWithoutMethod,
    /// A reason code the packet type does not define.
    #[error("[MQTT-5.0 §2.4] reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode {
        /// Packet name.
        packet: &'static str,
        /// Code received.
        code: u8,
    },
    /// SUBACK (or v5 UNSUBACK) without any reason code.
    #[error("[MQTT-5.0 §3.9.3] {0} contains no reason code")]
    MissingReasonCodes(&'static str),
    /// A field's length runs past the packet's remaining length (or property length).
    #[error("[MQTT-5.0 §4.13] field runs past the end of the packet")]
    LengthOverrun,
    /// Bytes left over inside the remaining length (or property length) after the last field.
    #[error("[MQTT-5.0 §4.13] {0} trailing bytes inside the packet")]
    TrailingBytes(usize),
}

impl DecodeError {
    /// The v5 reason code for the DISCONNECT (or CONNACK) the driver sends before closing.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            InvalidProtocolName | UnsupportedProtocolVersion(_) => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            FirstPacketNotConnect(_)
            | SecondConnect
            | UnexpectedPacket(_)
            | ZeroPacketId
            | EmptyTopicName
            | TopicNameWildcard
            | ResponseTopicWildcard
            | EmptyTopicFilter
            | MisplacedMultiLevelWildcard
            | MisplacedSingleLevelWildcard
            | InvalidShareName
            | MissingSharedFilter
            | NoLocalOnSharedSubscription
            | SubscribeWithoutFilters
            | UnsubscribeWithoutFilters
            | InvalidSubscriptionQoS
            | InvalidRetainHandling
            | DuplicateProperty(_)
            | InvalidPropertyValue { .. }
            | SubscriptionIdentifierFromClient
            | AuthDataWithoutMethod => ReasonCode::PROTOCOL_ERROR,
            MalformedVariableByteInteger
            | InvalidPacketType(_)
            | InvalidFixedHeaderFlags { .. }
            | ConnectReservedFlag
            | InvalidWillQoS
            | WillFlagsWithoutWill
            | PasswordWithoutUsername
            | ConnAckReservedFlags
            | InvalidQoS
            | DupWithQoS0
            | InvalidUtf8
            | NullCharacter
            | SubscriptionOptionsReserved(_)
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | InvalidReasonCode { .. }
            | MissingReasonCodes(_)
            | LengthOverrun
            | TrailingBytes(_) => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// Why a packet could not be encoded. Nothing is written to the buffer when this is returned.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes.
    #[error("remaining length {0} exceeds 268,435,455")]
    RemainingLengthTooLarge(usize),
    /// A string or binary field longer than its 2-byte length prefix can express.
    #[error("field of {0} bytes exceeds 65,535")]
    FieldTooLong(usize),
    /// A Variable Byte Integer value (subscription identifier) above 268,435,455.
    #[error("variable byte integer value {0} exceeds 268,435,455")]
    VariableByteIntegerTooLarge(u32),
    /// A packet type that does not exist in the target version (AUTH in v3.1.1).
    #[error("{packet} does not exist in MQTT 3.1.1")]
    NotInV311 {
        /// Packet name.
        packet: &'static str,
    },
    /// `Connect::protocol` differs from the protocol the packet is encoded for.
    #[error("CONNECT for {packet:?} encoded as {encoding:?}")]
    ProtocolMismatch {
        /// The CONNECT's own protocol.
        packet: crate::packet::Protocol,
        /// The protocol passed to `encode`.
        encoding: crate::packet::Protocol,
    },
    /// PUBLISH whose packet id presence does not match its QoS ([MQTT-2.2.1-2]).
    #[error("[MQTT-2.2.1-2] PUBLISH packet id must be present exactly when QoS > 0")]
    PacketIdMismatch,
}
