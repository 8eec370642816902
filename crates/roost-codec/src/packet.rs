//! The packet model shared by MQTT 3.1.1 and 5.0.
//!
//! One set of types serves both protocol versions: fields that only exist in v5 (properties,
//! reason codes on acks) are simply left at their defaults for v3.1.1 and are not written by the
//! encoder when it encodes for v3.1.1. Payloads are [`Bytes`] so a message decoded once can be
//! fanned out to many subscribers without copying.

use bytes::Bytes;
use std::num::NonZeroU16;

/// The protocol level carried in CONNECT (3.1.1 is level 4, 5.0 is level 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Protocol {
    /// The protocol level byte written in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// QoS 0: fire and forget.
    #[default]
    AtMostOnce = 0,
    /// QoS 1: PUBLISH / PUBACK.
    AtLeastOnce = 1,
    /// QoS 2: PUBLISH / PUBREC / PUBREL / PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is not a QoS ([MQTT-3.3.1-4]).
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier: never zero ([MQTT-2.2.1-3]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// Builds a packet id; `None` for 0.
    pub fn new(v: u16) -> Option<PacketId> {
        NonZeroU16::new(v).map(PacketId)
    }
    /// The numeric value (1..=65535).
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

/// An MQTT v5 reason code (also used internally for v3.1.1, where the encoder maps CONNACK
/// reasons onto the v3.1.1 return codes and SUBACK reasons onto 0x00..0x02 / 0x80).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReasonCode(pub u8);

#[allow(missing_docs)]
impl ReasonCode {
    pub const SUCCESS: ReasonCode = ReasonCode(0x00);
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_1: ReasonCode = ReasonCode(0x01);
    pub const GRANTED_QOS_2: ReasonCode = ReasonCode(0x02);
    pub const DISCONNECT_WITH_WILL: ReasonCode = ReasonCode(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: ReasonCode = ReasonCode(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: ReasonCode = ReasonCode(0x11);
    pub const CONTINUE_AUTHENTICATION: ReasonCode = ReasonCode(0x18);
    pub const RE_AUTHENTICATE: ReasonCode = ReasonCode(0x19);
    pub const UNSPECIFIED_ERROR: ReasonCode = ReasonCode(0x80);
    pub const MALFORMED_PACKET: ReasonCode = ReasonCode(0x81);
    pub const PROTOCOL_ERROR: ReasonCode = ReasonCode(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: ReasonCode = ReasonCode(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: ReasonCode = ReasonCode(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: ReasonCode = ReasonCode(0x86);
    pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);
    pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x88);
    pub const SERVER_BUSY: ReasonCode = ReasonCode(0x89);
    pub const BANNED: ReasonCode = ReasonCode(0x8A);
    pub const SERVER_SHUTTING_DOWN: ReasonCode = ReasonCode(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: ReasonCode = ReasonCode(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: ReasonCode = ReasonCode(0x8D);
    pub const SESSION_TAKEN_OVER: ReasonCode = ReasonCode(0x8E);
    pub const TOPIC_FILTER_INVALID: ReasonCode = ReasonCode(0x8F);
    pub const TOPIC_NAME_INVALID: ReasonCode = ReasonCode(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: ReasonCode = ReasonCode(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: ReasonCode = ReasonCode(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: ReasonCode = ReasonCode(0x93);
    pub const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
    pub const PACKET_TOO_LARGE: ReasonCode = ReasonCode(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: ReasonCode = ReasonCode(0x96);
    pub const QUOTA_EXCEEDED: ReasonCode = ReasonCode(0x97);
    pub const ADMINISTRATIVE_ACTION: ReasonCode = ReasonCode(0x98);
    pub const PAYLOAD_FORMAT_INVALID: ReasonCode = ReasonCode(0x99);
    pub const RETAIN_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9A);
    pub const QOS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9B);
    pub const USE_ANOTHER_SERVER: ReasonCode = ReasonCode(0x9C);
    pub const SERVER_MOVED: ReasonCode = ReasonCode(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: ReasonCode = ReasonCode(0x9F);
    pub const MAXIMUM_CONNECT_TIME: ReasonCode = ReasonCode(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA2);

    /// True for the error range (0x80 and above).
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }
}

/// The v5 properties of any packet. Each packet type allows a subset (MQTT 5.0 §2.2.2.2); the
/// decoder rejects a property that is not allowed for the packet it is in, and a property other
/// than User Property or Subscription Identifier that appears twice ([MQTT-2.2.2-2]).
/// For v3.1.1 packets this is always `Properties::default()`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01, PUBLISH / will: 0 = unspecified bytes, 1 = UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02, PUBLISH / will: seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH / will.
    pub content_type: Option<String>,
    /// 0x08, PUBLISH / will: must be a topic name (no wildcards).
    pub response_topic: Option<String>,
    /// 0x09, PUBLISH / will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: one in SUBSCRIBE (1..=268,435,455, never 0); several in a server-to-client PUBLISH.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, CONNECT / CONNACK / DISCONNECT: seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK.
    pub assigned_client_identifier: Option<String>,
    /// 0x13, CONNACK: seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT / CONNACK / AUTH.
    pub authentication_method: Option<String>,
    /// 0x16, CONNECT / CONNACK / AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT: 0 or 1.
    pub request_problem_information: Option<u8>,
    /// 0x18, will properties: seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT: 0 or 1.
    pub request_response_information: Option<u8>,
    /// 0x1A, CONNACK.
    pub response_information: Option<String>,
    /// 0x1C, CONNACK / DISCONNECT.
    pub server_reference: Option<String>,
    /// 0x1F, most acks, CONNACK, DISCONNECT, AUTH.
    pub reason_string: Option<String>,
    /// 0x21, CONNECT / CONNACK: never 0.
    pub receive_maximum: Option<u16>,
    /// 0x22, CONNECT / CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH: never 0.
    pub topic_alias: Option<u16>,
    /// 0x24, CONNACK: 0 or 1.
    pub maximum_qos: Option<u8>,
    /// 0x25, CONNACK: 0 or 1.
    pub retain_available: Option<u8>,
    /// 0x26, everywhere: order preserved, repeats allowed.
    pub user_properties: Vec<(String, String)>,
    /// 0x27, CONNECT / CONNACK: never 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28, CONNACK: 0 or 1.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29, CONNACK: 0 or 1.
    pub subscription_identifiers_available: Option<u8>,
    /// 0x2A, CONNACK: 0 or 1.
    pub shared_subscription_available: Option<u8>,
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Sniffed from the protocol name and level.
    pub protocol: Protocol,
    /// Clean Start (v5) / Clean Session (v3.1.1).
    pub clean_start: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    /// May be empty (the server assigns one in v5; v3.1.1 requires clean session for it).
    pub client_id: String,
    /// The will message, if the will flag was set.
    pub will: Option<LastWill>,
    /// User name, if the flag was set.
    pub username: Option<String>,
    /// Password, if the flag was set (binary data).
    pub password: Option<Bytes>,
    /// v5 CONNECT properties.
    pub properties: Properties,
    /// The dialect and kind of client the protocol name and level announced (MQTT 3.1, a
    /// bridge); `Default` for a plain MQTT 3.1.1 or 5.0 client.
    pub variant: ConnectVariant,
}

/// What a CONNECT's protocol name and level say beyond [`Protocol`]: MQTT 3.1 and bridges speak
/// the 3.1.1 wire format ([`Protocol::V311`]) with rules of their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectVariant {
    /// MQTT 3.1: protocol name "MQIsdp", level 3. Its client identifier must be 1 to 23
    /// characters (3.1 §3.1, CONNACK return code 2 otherwise), and its CONNACK has no
    /// session-present flag (the byte is reserved).
    pub mqtt31: bool,
    /// The level's top bit was set (0x83 / 0x84): a bridge (Mosquitto's `try_private`, also
    /// understood by RSMB, VerneMQ, EMQX). It asks the server not to send back what it
    /// published itself and to keep the retain flag as published, the 3.1.1 way of saying
    /// MQTT 5's No Local and Retain As Published. Never set for 5.0 (which has the options).
    pub bridge: bool,
}

/// The will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// A topic name (no wildcards).
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// v5 will properties (will delay, expiry, content type, ...).
    pub properties: Properties,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// v5 reason code; mapped to a v3.1.1 return code when encoded for v3.1.1.
    pub reason_code: ReasonCode,
    /// v5 CONNACK properties.
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag: must be 0 for QoS 0 ([MQTT-3.3.1-2]).
    pub dup: bool,
    /// Delivery QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; may be empty in v5 when a topic alias is used.
    pub topic: String,
    /// Present exactly when qos > 0.
    pub packet_id: Option<PacketId>,
    /// v5 PUBLISH properties.
    pub properties: Properties,
    /// Application payload, shared on fan-out.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The packet id being acknowledged.
    pub packet_id: PacketId,
    /// v5 reason code (0x00 when omitted on the wire).
    pub reason_code: ReasonCode,
    /// v5 properties (reason string, user properties).
    pub properties: Properties,
}

impl Ack {
    /// An ack with success and no properties.
    pub fn new(packet_id: PacketId) -> Ack {
        Ack {
            packet_id,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }
}

/// Retain handling option of a subscription (v5 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// 2: do not send retained messages.
    DoNotSend = 2,
}

impl RetainHandling {
    /// Parses the two Retain Handling bits; 3 is not a value (v5 §3.8.3.1).
    pub fn from_u8(v: u8) -> Option<RetainHandling> {
        match v {
            0 => Some(RetainHandling::SendAtSubscribe),
            1 => Some(RetainHandling::SendIfNew),
            2 => Some(RetainHandling::DoNotSend),
            _ => None,
        }
    }
}

/// Subscription options byte (v3.1.1 only uses `qos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local: not for shared subscriptions ([MQTT-3.8.3-4]).
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet id.
    pub packet_id: PacketId,
    /// v5 properties (subscription identifier, user properties).
    pub properties: Properties,
    /// At least one (filter, options) pair ([MQTT-3.8.3-2]; 3.1.1 [MQTT-3.8.3-3]). The decoder
    /// checks each filter's syntax (wildcard placement, `$share/{group}/{filter}` form).
    pub filters: Vec<(String, SubscriptionOptions)>,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet id of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// v5 properties.
    pub properties: Properties,
    /// One per filter, in order.
    pub reason_codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet id.
    pub packet_id: PacketId,
    /// v5 properties.
    pub properties: Properties,
    /// At least one filter ([MQTT-3.10.3-2]).
    pub filters: Vec<String>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet id of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// v5 properties.
    pub properties: Properties,
    /// v5: one per filter; v3.1.1: empty (not on the wire).
    pub reason_codes: Vec<ReasonCode>,
}

/// DISCONNECT (v3.1.1 has no reason code or properties).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// v5 reason code.
    pub reason_code: ReasonCode,
    /// v5 properties.
    pub properties: Properties,
}

/// AUTH (v5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// 0x00, 0x18 or 0x19.
    pub reason_code: ReasonCode,
    /// Authentication method/data, reason string, user properties.
    pub properties: Properties,
}

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// 1
    Connect(Box<Connect>),
    /// 2
    ConnAck(ConnAck),
    /// 3
    Publish(Publish),
    /// 4
    PubAck(Ack),
    /// 5
    PubRec(Ack),
    /// 6
    PubRel(Ack),
    /// 7
    PubComp(Ack),
    /// 8
    Subscribe(Subscribe),
    /// 9
    SubAck(SubAck),
    /// 10
    Unsubscribe(Unsubscribe),
    /// 11
    UnsubAck(UnsubAck),
    /// 12
    PingReq,
    /// 13
    PingResp,
    /// 14
    Disconnect(Disconnect),
    /// 15
    Auth(Auth),
}

impl Packet {
    /// The packet type's name, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "connect",
            Packet::ConnAck(_) => "connack",
            Packet::Publish(_) => "publish",
            Packet::PubAck(_) => "puback",
            Packet::PubRec(_) => "pubrec",
            Packet::PubRel(_) => "pubrel",
            Packet::PubComp(_) => "pubcomp",
            Packet::Subscribe(_) => "subscribe",
            Packet::SubAck(_) => "suback",
            Packet::Unsubscribe(_) => "unsubscribe",
            Packet::UnsubAck(_) => "unsuback",
            Packet::PingReq => "pingreq",
            Packet::PingResp => "pingresp",
            Packet::Disconnect(_) => "disconnect",
            Packet::Auth(_) => "auth",
        }
    }
}
