//! CONNECT negotiation: what the server offers ([`ServerPolicy`]), whether a CONNECT is let in
//! ([`negotiate`]), and the parameters the connection then runs with ([`Negotiated`]), including
//! the v5 CONNACK that tells the client about every difference (MQTT 5.0 §3.2.2.3).
//!
//! ```text
//!   Connect ──negotiate(policy, assign_id)──┬─▶ Err(Refusal)  ──▶ CONNACK with reason (if it
//!                                            │                    fits the client's Maximum
//!                                            │                    Packet Size), close
//!                                            └─▶ Ok(Negotiated) ──▶ node: quota, cluster claim
//!                                                   │                 Session::attach(&n, now)
//!                                                   └─ connack(policy, session_present) ──▶ CONNACK
//! ```
//!
//! Pure functions: no clock, no I/O. The node builds one [`ServerPolicy`] from its config and
//! shares it (`Arc`) with every session, which checks PUBLISH and SUBSCRIBE against it. What
//! needs the whole node stays there: the connection quota (`mqtt.max_connections`, skipped for a
//! takeover) and registering the session in the cluster (0x88 when there is no quorum).

use crate::client_id::ClientId;
use crate::session::ClientParams;
use crate::topic::{TopicLimits, TopicName};
use roost_codec::{
    encoded_len, ConnAck, Connect, DecodeError, LastWill, Packet, Properties, Protocol, QoS,
    ReasonCode,
};

/// What this node offers its clients: limits and optional features, announced in the v5
/// CONNACK and enforced on every packet. Built once from the node's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPolicy {
    /// MQTT 5 enhanced authentication methods the node runs (CONNECT's Authentication
    /// Method); any other is refused with 0x8C Bad authentication method.
    pub auth_methods: Vec<&'static str>,
    /// Longest client id accepted, in bytes (0x85 beyond it).
    pub max_client_id_length: usize,
    /// Highest QoS accepted in PUBLISH, granted in SUBSCRIBE and allowed for a will
    /// ([MQTT-3.2.2-11]; CONNACK Maximum QoS).
    pub max_qos: QoS,
    /// Whether RETAIN=1 is accepted ([MQTT-3.3.1-19]; CONNACK Retain Available).
    pub retain_available: bool,
    /// Whether filters with `+`/`#` are accepted (SUBACK 0xA2 otherwise).
    pub wildcard_subscriptions: bool,
    /// Whether SUBSCRIBE may carry a Subscription Identifier (DISCONNECT 0xA1 otherwise).
    pub subscription_identifiers: bool,
    /// Whether `$share/...` filters are accepted (SUBACK 0x9E otherwise).
    pub shared_subscriptions: bool,
    /// Largest packet accepted; always announced to v5 clients (CONNACK Maximum Packet Size).
    pub max_packet_size: u32,
    /// Inbound QoS 1/2 window announced to v5 clients (CONNACK Receive Maximum).
    pub receive_maximum: u16,
    /// Client-to-server topic aliases accepted (CONNACK Topic Alias Maximum; 0 = none).
    pub topic_alias_maximum: u16,
    /// Longest keep-alive a v5 client is held to; 0 requested is raised to it unless 65,535.
    pub max_keep_alive: u16,
    /// Keep-alive imposed on every v5 client (CONNACK Server Keep Alive).
    pub server_keep_alive: Option<u16>,
    /// Cap on the Session Expiry Interval (u32::MAX: no cap).
    pub max_session_expiry_interval: u32,
    /// Subscriptions one session may hold; a SUBSCRIBE entry for a new filter beyond it is
    /// refused with 0x97 Quota exceeded (v3.1.1: 0x80).
    pub max_subscriptions: usize,
    /// Topic validation limits.
    pub topic: TopicLimits,
}

impl Default for ServerPolicy {
    /// The defaults of roost-node's `MqttConfig`.
    fn default() -> Self {
        ServerPolicy {
            auth_methods: Vec::new(),
            max_client_id_length: 256,
            max_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            shared_subscriptions: true,
            max_packet_size: 1_048_576,
            receive_maximum: 32,
            topic_alias_maximum: 64,
            max_keep_alive: u16::MAX,
            server_keep_alive: None,
            max_session_expiry_interval: u32::MAX,
            max_subscriptions: 10_000,
            topic: TopicLimits::default(),
        }
    }
}

/// A CONNECT that is not let in: the CONNACK reason code and the metric label
/// (`roost_connections_rejected_total{why}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// CONNACK reason code (v3.1.1 return codes are mapped by the encoder).
    pub reason: ReasonCode,
    /// Metric label.
    pub why: &'static str,
}

impl Refusal {
    /// A refusal with `reason`, counted under `why`.
    pub fn new(reason: ReasonCode, why: &'static str) -> Refusal {
        Refusal { reason, why }
    }

    /// The CONNACK to send before closing.
    pub fn connack(&self) -> ConnAck {
        ConnAck {
            reason_code: self.reason,
            ..ConnAck::default()
        }
    }
}

/// The CONNACK answering a CONNECT that could not be decoded, and the protocol to encode it
/// in, where the client can understand one: an unsupported protocol level gets 0x84 (v5) /
/// return code 0x01 (v3.1.1) ([MQTT-3.1.2-2]); any other error is answered only when the
/// decoder already knew the client speaks v5 (`sniffed`); v3.1.1 has no return code for it.
pub fn connect_error_reply(
    e: &DecodeError,
    sniffed: Option<Protocol>,
) -> Option<(Protocol, ConnAck)> {
    let protocol = match e {
        DecodeError::UnsupportedProtocolVersion(level) if *level & 0x7F >= 5 => Protocol::V5,
        DecodeError::UnsupportedProtocolVersion(_) => Protocol::V311,
        _ => sniffed.filter(|p| *p == Protocol::V5)?,
    };
    let ack = ConnAck {
        reason_code: e.reason_code(),
        ..ConnAck::default()
    };
    Some((protocol, ack))
}

/// The longest client identifier MQTT 3.1 allows (3.1 §3.1), in characters.
pub const MQTT31_MAX_CLIENT_ID: usize = 23;

/// What a CONNECT that was let in runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The client id: the one given, or the assigned one.
    pub client_id: ClientId,
    /// True if the server assigned the id (CONNACK Assigned Client Identifier, v5).
    pub assigned: bool,
    /// Protocol of the connection.
    pub protocol: Protocol,
    /// Clean Start / CleanSession.
    pub clean_start: bool,
    /// Session Expiry Interval in effect: requested, capped by the policy. Seconds;
    /// u32::MAX = never.
    pub expiry_interval: u32,
    /// What the client asked for (v5 property; v3.1.1: 0 when clean, u32::MAX when not).
    pub expiry_requested: u32,
    /// Keep-alive the connection is held to, seconds (0 = none).
    pub keep_alive: u16,
    /// Keep-alive the client asked for.
    pub keep_alive_requested: u16,
    /// What the client said that shapes what we send it.
    pub params: ClientParams,
    /// The will, already checked against the policy. Boxed: most clients have none.
    pub will: Option<Box<LastWill>>,
    /// User Name, for the admin API.
    pub username: Option<String>,
}

/// Decides whether `connect` is let in and with what parameters, in this order: enhanced
/// authentication (not offered: 0x8C), anonymous access (0x87), the client id (empty: assigned
/// with `assign_id`, except a v3.1.1 CleanSession=0 client [MQTT-3.1.3-8]; too long: 0x85), the
/// will (topic valid and not `$`: 0x90, QoS: 0x9B, retain: 0x9A), and last the client's
/// Maximum Packet Size: when even the smallest CONNACK we may send exceeds it
/// ([`Negotiated::connack`]), 0x95 `connack_too_large` ([MQTT-3.1.2-24]; the node sends the
/// refusal's CONNACK only if that fits, see [`within_maximum_packet_size`]).
pub fn negotiate(
    connect: &Connect,
    policy: &ServerPolicy,
    assign_id: impl FnOnce() -> String,
) -> Result<Negotiated, Refusal> {
    let v5 = connect.protocol == Protocol::V5;
    let props = &connect.properties;
    if let Some(method) = &props.authentication_method {
        // Enhanced authentication: only the methods the node runs (the node runs the AUTH
        // exchange itself, before CONNACK).
        if !policy.auth_methods.iter().any(|m| m == method) {
            return Err(Refusal::new(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "auth_method",
            ));
        }
    }
    let bad_id = Refusal::new(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "client_id");
    let (client_id, assigned) = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            // [MQTT-3.1.3-8] (3.1.1): a zero-length id needs CleanSession=1.
            return Err(bad_id);
        }
        (ClientId::from(assign_id()), true)
    } else {
        if connect.client_id.len() > policy.max_client_id_length {
            return Err(bad_id);
        }
        (ClientId::from(connect.client_id.as_str()), false)
    };
    if connect.variant.mqtt31
        && !(1..=MQTT31_MAX_CLIENT_ID).contains(&connect.client_id.chars().count())
    {
        // MQTT 3.1 §3.1: 1 to 23 characters, CONNACK return code 2 (Identifier Rejected)
        // otherwise; 3.1 has no assigned identifiers.
        return Err(bad_id);
    }
    if let Some(w) = &connect.will {
        check_will(w, policy).map_err(|reason| Refusal::new(reason, "will"))?;
    }
    let expiry_requested = if v5 {
        props.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let n = Negotiated {
        client_id,
        assigned,
        protocol: connect.protocol,
        clean_start: connect.clean_start,
        expiry_interval: expiry_requested.min(policy.max_session_expiry_interval),
        expiry_requested,
        keep_alive: effective_keep_alive(connect.keep_alive, policy, v5),
        keep_alive_requested: connect.keep_alive,
        params: ClientParams {
            protocol: connect.protocol,
            receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
            maximum_packet_size: props.maximum_packet_size,
            topic_alias_maximum: if v5 {
                props.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
            variant: connect.variant,
        },
        will: connect.will.clone().map(Box::new),
        username: connect.username.clone(),
    };
    if let Some(max) = n.params.maximum_packet_size {
        if !connack_fits(&n.connack(policy, false), n.protocol, max) {
            return Err(Refusal::new(
                ReasonCode::PACKET_TOO_LARGE,
                "connack_too_large",
            ));
        }
    }
    Ok(n)
}

/// True if `packet`, encoded for `protocol`, is within a client's Maximum Packet Size
/// (`None`: the client set none). The server must not send a larger packet
/// ([MQTT-3.1.2-24]).
pub fn within_maximum_packet_size(packet: &Packet, protocol: Protocol, max: Option<u32>) -> bool {
    max.is_none_or(|max| encoded_len(packet, protocol) <= max as usize)
}

/// The CONNACK properties [`Negotiated::connack`] leaves out, one at a time and in this
/// order, while the CONNACK exceeds the client's Maximum Packet Size ([MQTT-3.1.2-24]).
/// First what the spec itself says to leave out (Reason String, User Properties:
/// [MQTT-3.2.2-19], [MQTT-3.2.2-20]) and what only informs or grants (Response Information,
/// Server Reference, Topic Alias Maximum: without it the client uses no aliases; Session
/// Expiry Interval); then the limits and unavailable features, roughly from the gentlest
/// consequence of a client not knowing them (it sends a packet that is too large: 0x95;
/// too many QoS 2: 0x93; a refused filter in SUBACK) to the harshest (DISCONNECT for a
/// Subscription Identifier, RETAIN or QoS); Server Keep Alive last, as a client that does
/// not know it may be disconnected while doing nothing wrong. The Assigned Client Identifier
/// is never left out: a client that connected with an empty id must get it
/// ([MQTT-3.2.2-16]).
const LEAVE_OUT: [fn(&mut Properties); 14] = [
    |p| p.reason_string = None,
    |p| p.user_properties.clear(),
    |p| p.response_information = None,
    |p| p.server_reference = None,
    |p| p.topic_alias_maximum = None,
    |p| p.session_expiry_interval = None,
    |p| p.maximum_packet_size = None,
    |p| p.receive_maximum = None,
    |p| p.shared_subscription_available = None,
    |p| p.wildcard_subscription_available = None,
    |p| p.subscription_identifiers_available = None,
    |p| p.retain_available = None,
    |p| p.maximum_qos = None,
    |p| p.server_keep_alive = None,
];

/// Whether a CONNACK is within `max` bytes. (A clone to measure it: only for clients that set
/// a Maximum Packet Size, once per connection.)
fn connack_fits(ack: &ConnAck, protocol: Protocol, max: u32) -> bool {
    within_maximum_packet_size(&Packet::ConnAck(ack.clone()), protocol, Some(max))
}

/// A will must be publishable by this client under this policy (MQTT 5.0 §3.1.2.5-§3.1.2.7).
fn check_will(w: &LastWill, policy: &ServerPolicy) -> Result<(), ReasonCode> {
    let name = TopicName::new(&w.topic, &policy.topic).map_err(|e| e.reason_code())?;
    if name.is_system() {
        return Err(ReasonCode::TOPIC_NAME_INVALID);
    }
    if w.qos > policy.max_qos {
        return Err(ReasonCode::QOS_NOT_SUPPORTED);
    }
    if w.retain && !policy.retain_available {
        return Err(ReasonCode::RETAIN_NOT_SUPPORTED);
    }
    Ok(())
}

/// The keep-alive the connection is held to (MQTT 5.0 §3.1.2.10, §3.2.2.3.14). v5 clients are
/// told about an override through Server Keep Alive; v3.1.1 has no way to tell a client, so a
/// v3.1.1 client is held to what it asked for.
fn effective_keep_alive(requested: u16, policy: &ServerPolicy, v5: bool) -> u16 {
    if !v5 {
        return requested;
    }
    if let Some(k) = policy.server_keep_alive {
        return k;
    }
    if requested > policy.max_keep_alive || (requested == 0 && policy.max_keep_alive < u16::MAX) {
        return policy.max_keep_alive;
    }
    requested
}

impl Negotiated {
    /// The CONNACK accepting this connection. v5 carries every property that differs from
    /// what the client would otherwise assume (MQTT 5.0 §3.2.2.3); v3.1.1 has none. When that
    /// exceeds the client's Maximum Packet Size, properties are left out in the order of
    /// `LEAVE_OUT` (in this module) until it fits ([MQTT-3.1.2-24]); [`negotiate`] already
    /// refused a client for which even the smallest (5 bytes, plus the Assigned Client
    /// Identifier) does not.
    pub fn connack(&self, policy: &ServerPolicy, session_present: bool) -> ConnAck {
        let mut ack = self.full_connack(policy, session_present);
        let Some(max) = self.params.maximum_packet_size else {
            return ack;
        };
        for leave_out in LEAVE_OUT {
            if connack_fits(&ack, self.protocol, max) {
                break;
            }
            leave_out(&mut ack.properties);
        }
        ack
    }

    /// The CONNACK with every property that applies.
    fn full_connack(&self, policy: &ServerPolicy, session_present: bool) -> ConnAck {
        let mut ack = ConnAck {
            // MQTT 3.1's CONNACK has no session-present flag: its byte is reserved.
            session_present: session_present && !self.params.variant.mqtt31,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        };
        if self.protocol != Protocol::V5 {
            return ack;
        }
        let p = &mut ack.properties;
        if self.expiry_interval != self.expiry_requested {
            p.session_expiry_interval = Some(self.expiry_interval);
        }
        if policy.receive_maximum != u16::MAX {
            p.receive_maximum = Some(policy.receive_maximum);
        }
        if policy.max_qos < QoS::ExactlyOnce {
            p.maximum_qos = Some(policy.max_qos as u8);
        }
        if !policy.retain_available {
            p.retain_available = Some(0);
        }
        p.maximum_packet_size = Some(policy.max_packet_size);
        if self.assigned {
            p.assigned_client_identifier = Some(self.client_id.as_str().to_owned());
        }
        if policy.topic_alias_maximum > 0 {
            p.topic_alias_maximum = Some(policy.topic_alias_maximum);
        }
        if !policy.wildcard_subscriptions {
            p.wildcard_subscription_available = Some(0);
        }
        if !policy.subscription_identifiers {
            p.subscription_identifiers_available = Some(0);
        }
        if !policy.shared_subscriptions {
            p.shared_subscription_available = Some(0);
        }
        if self.keep_alive != self.keep_alive_requested {
            p.server_keep_alive = Some(self.keep_alive);
        }
        ack
    }
}

#[cfg(test)]
mod tests;
