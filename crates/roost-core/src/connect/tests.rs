//! Negotiation tests: one CONNECT in, the exact `Negotiated`, `Refusal` or CONNACK out.

#![allow(clippy::unwrap_used)]

use super::*;
use bytes::Bytes;
use roost_codec::Packet;
use test_case::test_case;

fn connect(protocol: Protocol, client_id: &str) -> Connect {
    Connect {
        variant: Default::default(),
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn will(topic: &str, qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: topic.to_owned(),
        payload: Bytes::from_static(b"gone"),
        qos,
        retain,
        properties: Properties::default(),
    }
}

fn assign() -> String {
    "roost-0000000000000001".to_owned()
}

fn refusal(c: &Connect, policy: &ServerPolicy) -> Refusal {
    negotiate(c, policy, assign).unwrap_err()
}

fn ok(c: &Connect, policy: &ServerPolicy) -> Negotiated {
    negotiate(c, policy, assign).unwrap()
}

#[test]
fn an_authentication_method_the_node_runs_is_not_refused() {
    let mut c = connect(Protocol::V5, "c");
    c.properties.authentication_method = Some("SCRAM-SHA-256".into());
    let policy = ServerPolicy {
        auth_methods: vec!["SCRAM-SHA-256"],
        ..ServerPolicy::default()
    };
    assert!(negotiate(&c, &policy, assign).is_ok());
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    assert_eq!(
        refusal(&c, &policy).reason,
        ReasonCode::BAD_AUTHENTICATION_METHOD
    );
}

#[test]
fn authentication_method_is_refused_first() {
    let mut c = connect(Protocol::V5, "c");
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let policy = ServerPolicy::default();
    assert_eq!(
        refusal(&c, &policy),
        Refusal {
            reason: ReasonCode::BAD_AUTHENTICATION_METHOD,
            why: "auth_method"
        }
    );
}

#[test]
fn empty_id_with_persistent_v311_session_is_refused() {
    let mut c = connect(Protocol::V311, "");
    c.clean_start = false;
    assert_eq!(
        refusal(&c, &ServerPolicy::default()),
        Refusal {
            reason: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            why: "client_id"
        }
    );
}

#[test]
fn too_long_id_is_refused() {
    let policy = ServerPolicy {
        max_client_id_length: 3,
        ..ServerPolicy::default()
    };
    assert!(negotiate(&connect(Protocol::V5, "abc"), &policy, assign).is_ok());
    assert_eq!(
        refusal(&connect(Protocol::V5, "abcd"), &policy),
        Refusal {
            reason: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            why: "client_id"
        }
    );
}

#[test_case("a/+", QoS::AtMostOnce, false, ServerPolicy::default(), ReasonCode::TOPIC_NAME_INVALID; "wildcard topic")]
#[test_case("$SYS/x", QoS::AtMostOnce, false, ServerPolicy::default(), ReasonCode::TOPIC_NAME_INVALID; "system topic")]
#[test_case("a", QoS::ExactlyOnce, false, ServerPolicy { max_qos: QoS::AtLeastOnce, ..ServerPolicy::default() }, ReasonCode::QOS_NOT_SUPPORTED; "qos")]
#[test_case("a", QoS::AtMostOnce, true, ServerPolicy { retain_available: false, ..ServerPolicy::default() }, ReasonCode::RETAIN_NOT_SUPPORTED; "retain")]
fn bad_will_is_refused(
    topic: &str,
    qos: QoS,
    retain: bool,
    policy: ServerPolicy,
    reason: ReasonCode,
) {
    let mut c = connect(Protocol::V5, "c");
    c.will = Some(will(topic, qos, retain));
    assert_eq!(
        refusal(&c, &policy),
        Refusal {
            reason,
            why: "will"
        }
    );
}

#[test]
fn empty_id_is_assigned_and_everything_else_copied() {
    let mut c = connect(Protocol::V5, "");
    c.username = Some("u".into());
    c.will = Some(will("w", QoS::AtLeastOnce, true));
    c.properties.receive_maximum = Some(10);
    c.properties.maximum_packet_size = Some(2000);
    c.properties.topic_alias_maximum = Some(5);
    c.properties.session_expiry_interval = Some(30);
    assert_eq!(
        ok(&c, &ServerPolicy::default()),
        Negotiated {
            client_id: ClientId::from("roost-0000000000000001"),
            assigned: true,
            protocol: Protocol::V5,
            clean_start: true,
            expiry_interval: 30,
            expiry_requested: 30,
            keep_alive: 60,
            keep_alive_requested: 60,
            params: ClientParams {
                variant: Default::default(),
                protocol: Protocol::V5,
                receive_maximum: 10,
                maximum_packet_size: Some(2000),
                topic_alias_maximum: 5,
            },
            will: Some(Box::new(will("w", QoS::AtLeastOnce, true))),
            username: Some("u".into()),
        }
    );
}

#[test]
fn v311_params_ignore_v5_properties() {
    let mut c = connect(Protocol::V311, "c");
    c.properties.topic_alias_maximum = Some(5);
    assert_eq!(
        ok(&c, &ServerPolicy::default()).params,
        ClientParams::v311()
    );
}

// (protocol, requested, server_keep_alive, max_keep_alive) -> effective
#[test_case(Protocol::V311, 60, Some(10), 30 => 60; "v3 keeps what it asked for")]
#[test_case(Protocol::V311, 0, None, 30 => 0; "v3 zero stays zero")]
#[test_case(Protocol::V5, 60, Some(10), 30 => 10; "v5 server keep alive wins")]
#[test_case(Protocol::V5, 60, None, 30 => 30; "v5 over max is capped")]
#[test_case(Protocol::V5, 0, None, 30 => 30; "v5 zero raised to max")]
#[test_case(Protocol::V5, 0, None, u16::MAX => 0; "v5 zero kept without a max")]
#[test_case(Protocol::V5, 20, None, 30 => 20; "v5 within max kept")]
fn keep_alive(protocol: Protocol, requested: u16, server: Option<u16>, max: u16) -> u16 {
    let mut c = connect(protocol, "c");
    c.keep_alive = requested;
    let policy = ServerPolicy {
        server_keep_alive: server,
        max_keep_alive: max,
        ..ServerPolicy::default()
    };
    let n = ok(&c, &policy);
    assert_eq!(n.keep_alive_requested, requested);
    n.keep_alive
}

// (protocol, clean, property, cap) -> (effective, requested)
#[test_case(Protocol::V5, true, Some(100), u32::MAX => (100, 100); "v5 property")]
#[test_case(Protocol::V5, false, None, u32::MAX => (0, 0); "v5 absent is zero")]
#[test_case(Protocol::V5, true, Some(u32::MAX), 3600 => (3600, u32::MAX); "v5 capped")]
#[test_case(Protocol::V311, true, Some(100), u32::MAX => (0, 0); "v3 clean ends with the connection")]
#[test_case(Protocol::V311, false, None, u32::MAX => (u32::MAX, u32::MAX); "v3 persistent never expires")]
#[test_case(Protocol::V311, false, None, 3600 => (3600, u32::MAX); "v3 persistent capped")]
fn expiry(protocol: Protocol, clean: bool, property: Option<u32>, cap: u32) -> (u32, u32) {
    let mut c = connect(protocol, "c");
    c.clean_start = clean;
    c.properties.session_expiry_interval = property;
    let policy = ServerPolicy {
        max_session_expiry_interval: cap,
        ..ServerPolicy::default()
    };
    let n = ok(&c, &policy);
    (n.expiry_interval, n.expiry_requested)
}

#[test]
fn v5_connack_with_defaults_announces_size_window_and_aliases() {
    let n = ok(&connect(Protocol::V5, "c"), &ServerPolicy::default());
    assert_eq!(
        n.connack(&ServerPolicy::default(), true),
        ConnAck {
            session_present: true,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties {
                receive_maximum: Some(32),
                maximum_packet_size: Some(1_048_576),
                topic_alias_maximum: Some(64),
                ..Properties::default()
            },
        }
    );
}

#[test]
fn v5_connack_announces_every_difference() {
    let policy = every_difference_policy();
    let mut c = connect(Protocol::V5, "");
    c.properties.session_expiry_interval = Some(7200);
    let n = ok(&c, &policy);
    assert_eq!(
        n.connack(&policy, false),
        ConnAck {
            session_present: false,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties {
                session_expiry_interval: Some(600),
                maximum_qos: Some(1),
                retain_available: Some(0),
                maximum_packet_size: Some(4096),
                assigned_client_identifier: Some("roost-0000000000000001".into()),
                wildcard_subscription_available: Some(0),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: Some(15),
                ..Properties::default()
            },
        }
    );
}

#[test]
fn v311_connack_has_no_properties() {
    let policy = ServerPolicy {
        max_qos: QoS::AtMostOnce,
        max_session_expiry_interval: 600,
        ..ServerPolicy::default()
    };
    let mut c = connect(Protocol::V311, "");
    c.clean_start = true;
    let n = ok(&c, &policy);
    assert_eq!(
        n.connack(&policy, false),
        ConnAck {
            session_present: false,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    );
}

#[test]
fn refusal_connack_carries_only_the_reason() {
    let r = Refusal::new(ReasonCode::NOT_AUTHORIZED, "not_authorized");
    assert_eq!(
        r.connack(),
        ConnAck {
            session_present: false,
            reason_code: ReasonCode::NOT_AUTHORIZED,
            properties: Properties::default(),
        }
    );
}

// (error, protocol the decoder sniffed) -> protocol of the CONNACK, if any
#[test_case(DecodeError::UnsupportedProtocolVersion(6), None => Some(Protocol::V5); "future level answered as v5")]
#[test_case(DecodeError::UnsupportedProtocolVersion(3), None => Some(Protocol::V311); "old level answered as v3")]
#[test_case(DecodeError::SecondConnect, Some(Protocol::V5) => Some(Protocol::V5); "v5 malformed")]
#[test_case(DecodeError::SecondConnect, Some(Protocol::V311) => None; "v3 malformed not answered")]
#[test_case(DecodeError::SecondConnect, None => None; "unknown protocol not answered")]
fn connect_decode_error_reply(e: DecodeError, sniffed: Option<Protocol>) -> Option<Protocol> {
    let reply = connect_error_reply(&e, sniffed);
    if let Some((_, ack)) = &reply {
        assert_eq!(
            *ack,
            ConnAck {
                reason_code: e.reason_code(),
                ..ConnAck::default()
            }
        );
    }
    reply.map(|(p, _)| p)
}

/// Bytes the CONNACK takes on the wire (v5).
fn connack_len(ack: &ConnAck) -> usize {
    roost_codec::encoded_len(&Packet::ConnAck(ack.clone()), Protocol::V5)
}

fn with_maximum_packet_size(client_id: &str, max: Option<u32>) -> Connect {
    let mut c = connect(Protocol::V5, client_id);
    c.properties.maximum_packet_size = max;
    c
}

/// Issue 7, item 12, with the default policy (a full CONNACK of 16 bytes: Receive Maximum 3,
/// Maximum Packet Size 5, Topic Alias Maximum 3): properties are left out, in a fixed order,
/// until the CONNACK fits the client's Maximum Packet Size [MQTT-3.1.2-24]; 5 bytes (no
/// properties) is the smallest.
// (client's Maximum Packet Size) -> (CONNACK size, properties kept)
#[test_case(None => (16, Properties { receive_maximum: Some(32), maximum_packet_size: Some(1_048_576), topic_alias_maximum: Some(64), ..Properties::default() }) ; "no limit: everything")]
#[test_case(Some(16) => (16, Properties { receive_maximum: Some(32), maximum_packet_size: Some(1_048_576), topic_alias_maximum: Some(64), ..Properties::default() }) ; "16 fits everything")]
#[test_case(Some(15) => (13, Properties { receive_maximum: Some(32), maximum_packet_size: Some(1_048_576), ..Properties::default() }) ; "15 leaves out topic alias maximum")]
#[test_case(Some(10) => (8, Properties { receive_maximum: Some(32), ..Properties::default() }) ; "10 leaves out maximum packet size too")]
#[test_case(Some(7) => (5, Properties::default()) ; "7 leaves out receive maximum too")]
#[test_case(Some(5) => (5, Properties::default()) ; "5 is the smallest")]
fn item12_connack_fits_the_client_maximum_packet_size(max: Option<u32>) -> (usize, Properties) {
    let policy = ServerPolicy::default();
    let n = ok(&with_maximum_packet_size("c", max), &policy);
    let ack = n.connack(&policy, true);
    assert!(ack.session_present);
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    (connack_len(&ack), ack.properties)
}

/// Issue 7, item 12: the order in which properties are left out, with a policy that
/// announces every restriction (a full CONNACK of 28 bytes): first what only informs or
/// grants (Session Expiry Interval), then the limits and unavailable features, Server Keep
/// Alive last.
// (client's Maximum Packet Size) -> (CONNACK size, properties kept)
#[test_case(28 => (28, every_difference(&[])) ; "28 fits everything")]
#[test_case(27 => (23, every_difference(&["session_expiry_interval"])) ; "session expiry first")]
#[test_case(22 => (18, every_difference(&["session_expiry_interval", "maximum_packet_size"])) ; "then maximum packet size")]
#[test_case(17 => (16, every_difference(&["session_expiry_interval", "maximum_packet_size", "shared"])) ; "then shared")]
#[test_case(12 => (12, every_difference(&["session_expiry_interval", "maximum_packet_size", "shared", "wildcard", "subscription_identifiers"])) ; "then wildcard and identifiers")]
#[test_case(9 => (8, every_difference(&["session_expiry_interval", "maximum_packet_size", "shared", "wildcard", "subscription_identifiers", "retain", "maximum_qos"])) ; "then retain and qos")]
#[test_case(7 => (5, Properties::default()) ; "server keep alive last")]
fn item12_connack_leaves_out_properties_in_order(max: u32) -> (usize, Properties) {
    let policy = every_difference_policy();
    let mut c = with_maximum_packet_size("c", Some(max));
    c.properties.session_expiry_interval = Some(7200);
    let ack = ok(&c, &policy).connack(&policy, false);
    (connack_len(&ack), ack.properties)
}

fn every_difference_policy() -> ServerPolicy {
    ServerPolicy {
        auth_methods: Vec::new(),
        max_qos: QoS::AtLeastOnce,
        retain_available: false,
        wildcard_subscriptions: false,
        subscription_identifiers: false,
        shared_subscriptions: false,
        max_packet_size: 4096,
        receive_maximum: u16::MAX,
        topic_alias_maximum: 0,
        server_keep_alive: Some(15),
        max_session_expiry_interval: 600,
        ..ServerPolicy::default()
    }
}

/// The CONNACK properties of [`every_difference_policy`] without those named.
fn every_difference(without: &[&str]) -> Properties {
    let keep = |name: &str| !without.contains(&name);
    Properties {
        session_expiry_interval: keep("session_expiry_interval").then_some(600),
        maximum_qos: keep("maximum_qos").then_some(1),
        retain_available: keep("retain").then_some(0),
        maximum_packet_size: keep("maximum_packet_size").then_some(4096),
        wildcard_subscription_available: keep("wildcard").then_some(0),
        subscription_identifiers_available: keep("subscription_identifiers").then_some(0),
        shared_subscription_available: keep("shared").then_some(0),
        server_keep_alive: keep("server_keep_alive").then_some(15),
        ..Properties::default()
    }
}

/// Issue 7, item 12: a client whose Maximum Packet Size is below the smallest CONNACK (5
/// bytes; more when the server assigned the client id, which the CONNACK must carry,
/// [MQTT-3.2.2-16]) is refused before anything is registered: 0x95, counted as
/// `connack_too_large`. (The node sends that refusal's CONNACK only where it fits.)
// (client id, client's Maximum Packet Size) -> refused
#[test_case("c", 2 => true ; "2")]
#[test_case("c", 4 => true ; "4")]
#[test_case("c", 5 => false ; "5 fits")]
#[test_case("", 29 => true ; "assigned id does not fit in 29")]
#[test_case("", 30 => false ; "assigned id alone fits in 30")]
fn item12_client_too_small_for_any_connack_is_refused(client_id: &str, max: u32) -> bool {
    let policy = ServerPolicy::default();
    let c = with_maximum_packet_size(client_id, Some(max));
    match negotiate(&c, &policy, assign) {
        Err(r) => {
            assert_eq!(
                r,
                Refusal {
                    reason: ReasonCode::PACKET_TOO_LARGE,
                    why: "connack_too_large"
                }
            );
            true
        }
        Ok(n) => {
            let ack = n.connack(&policy, false);
            assert!(connack_len(&ack) <= max as usize, "{ack:?}");
            if client_id.is_empty() {
                assert_eq!(
                    ack.properties,
                    Properties {
                        assigned_client_identifier: Some(assign()),
                        ..Properties::default()
                    }
                );
            }
            false
        }
    }
}

/// Issue 9: MQTT 3.1 takes client ids of 1 to 23 characters (3.1 §3.1: return code 2,
/// Identifier Rejected, otherwise; it has no assigned ids), and its CONNACK never says
/// session present (the byte is reserved in 3.1).
#[test_case("", false; "empty")]
#[test_case("a", true; "one character")]
#[test_case("abcdefghijklmnopqrstuvw", true; "23 characters")]
#[test_case("abcdefghijklmnopqrstuvwx", false; "24 characters")]
#[test_case("ééééééééééééééééééééééé", true; "23 characters of 2 bytes")]
fn mqtt31_client_ids_are_1_to_23_characters(id: &str, allowed: bool) {
    let mut c = connect(Protocol::V311, id);
    c.variant.mqtt31 = true;
    match negotiate(&c, &ServerPolicy::default(), assign) {
        Ok(n) => {
            assert!(allowed, "{id:?} let in");
            assert!(n.params.variant.mqtt31);
            let ack = n.connack(&ServerPolicy::default(), true);
            assert!(!ack.session_present, "3.1 has no session-present flag");
        }
        Err(r) => {
            assert!(!allowed, "{id:?} refused: {r:?}");
            assert_eq!(r.reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
    }
}

/// A 3.1.1 client keeps its session-present flag; a bridge is a 3.1.1 client too.
#[test]
fn a_bridge_is_negotiated_as_311_and_marked() {
    let mut c = connect(Protocol::V311, "b");
    c.variant.bridge = true;
    let n = ok(&c, &ServerPolicy::default());
    assert!(n.params.variant.bridge && !n.params.variant.mqtt31);
    assert!(n.connack(&ServerPolicy::default(), true).session_present);
}
