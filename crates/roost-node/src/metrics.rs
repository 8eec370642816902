//! Every metric the node exports, declared once (house style, convention 7).
//!
//! Handles are resolved once into [`Metrics`] at start-up, so the hot path increments a counter
//! without looking up a name or labels. The Prometheus text is rendered by the exporter's handle
//! on `GET /metrics`.
//!
//! Names follow `roost_<subsystem>_<thing>_<unit>`; every dropped message is counted under
//! `roost_session_*dropped_total` or `roost_mqtt_publish_dropped_total` with a `reason` label.

use metrics::{counter, describe_counter, describe_gauge, gauge, Counter, Gauge};

pub(crate) const CONNECTIONS: &str = "roost_mqtt_connections";
pub(crate) const CONNECTIONS_ACCEPTED: &str = "roost_mqtt_connections_accepted_total";
pub(crate) const CONNECTIONS_REJECTED: &str = "roost_mqtt_connections_rejected_total";
pub(crate) const DISCONNECTS: &str = "roost_mqtt_disconnects_total";
pub(crate) const MALFORMED: &str = "roost_mqtt_malformed_packets_total";
pub(crate) const MSG_RECEIVED: &str = "roost_mqtt_messages_received_total";
pub(crate) const MSG_SENT: &str = "roost_mqtt_messages_sent_total";
pub(crate) const BYTES_RECEIVED: &str = "roost_mqtt_bytes_received_total";
pub(crate) const BYTES_SENT: &str = "roost_mqtt_bytes_sent_total";
pub(crate) const PUBLISH_DROPPED: &str = "roost_mqtt_publish_dropped_total";
pub(crate) const SESSION_DROPPED: &str = "roost_session_queue_dropped_total";
pub(crate) const SESSION_EXPIRED_MSGS: &str = "roost_session_expired_messages_dropped_total";
pub(crate) const SESSION_OFFLINE_QOS0: &str = "roost_session_offline_qos0_dropped_total";
pub(crate) const SESSION_TOO_LARGE: &str = "roost_session_too_large_dropped_total";
pub(crate) const SESSIONS: &str = "roost_sessions";
pub(crate) const SESSIONS_EXPIRED: &str = "roost_sessions_expired_total";
pub(crate) const TAKEOVERS: &str = "roost_sessions_taken_over_total";
pub(crate) const SUBSCRIPTIONS: &str = "roost_subscriptions";
pub(crate) const RETAINED: &str = "roost_retained_messages";
pub(crate) const WILLS: &str = "roost_wills_published_total";
pub(crate) const BACKPRESSURE_TIMEOUTS: &str = "roost_mqtt_backpressure_timeouts_total";
pub(crate) const FORWARD_TIMEOUTS: &str = "roost_cluster_forward_timeouts_total";

/// Describes all metrics to the recorder. Called once at start-up.
pub(crate) fn describe() {
    describe_gauge!(
        CONNECTIONS,
        "MQTT connections currently open (after CONNACK)"
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        "MQTT connections accepted (CONNACK 0x00)"
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        "CONNECTs refused, by reason (quota, not_authorized, client_id, protocol)"
    );
    describe_counter!(DISCONNECTS, "connections closed, by reason");
    describe_counter!(
        MALFORMED,
        "connections closed for a malformed or illegal packet"
    );
    describe_counter!(MSG_RECEIVED, "PUBLISH packets received from clients");
    describe_counter!(MSG_SENT, "PUBLISH packets sent to clients");
    describe_counter!(BYTES_RECEIVED, "bytes read from client sockets");
    describe_counter!(BYTES_SENT, "bytes written to client sockets");
    describe_counter!(
        PUBLISH_DROPPED,
        "inbound PUBLISHes not routed, by reason (dollar_topic, retain_unavailable)"
    );
    describe_counter!(
        SESSION_DROPPED,
        "messages dropped because a session queue was full (count or bytes)"
    );
    describe_counter!(
        SESSION_EXPIRED_MSGS,
        "messages dropped because their message expiry interval ran out before delivery"
    );
    describe_counter!(
        SESSION_OFFLINE_QOS0,
        "QoS 0 messages not kept for sessions with no connection"
    );
    describe_counter!(
        SESSION_TOO_LARGE,
        "messages dropped for a client because they exceed its maximum packet size"
    );
    describe_gauge!(SESSIONS, "sessions held (connected and offline)");
    describe_counter!(
        SESSIONS_EXPIRED,
        "sessions ended by their session expiry interval"
    );
    describe_counter!(TAKEOVERS, "sessions taken over by a new connection");
    describe_gauge!(SUBSCRIPTIONS, "subscriptions in the index");
    describe_gauge!(
        RETAINED,
        "retained messages held (replicated, plus this node's $SYS); refreshed when scraped"
    );
    describe_counter!(WILLS, "will messages published");
    describe_counter!(
        FORWARD_TIMEOUTS,
        "publishes acknowledged before every peer accepted the forwarded message (timeout)"
    );
    describe_counter!(
        BACKPRESSURE_TIMEOUTS,
        "publisher waits for a congested subscriber that ran out their timeout"
    );
}

/// Handles used on hot paths, resolved once.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) connections: Gauge,
    pub(crate) accepted: Counter,
    pub(crate) msg_received: Counter,
    pub(crate) msg_sent: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) queue_dropped: Counter,
    pub(crate) expired_dropped: Counter,
    pub(crate) offline_qos0_dropped: Counter,
    pub(crate) too_large_dropped: Counter,
    pub(crate) dollar_dropped: Counter,
    pub(crate) retain_dropped: Counter,
    pub(crate) sessions: Gauge,
    pub(crate) sessions_expired: Counter,
    pub(crate) takeovers: Counter,
    pub(crate) subscriptions: Gauge,
    pub(crate) retained: Gauge,
    pub(crate) wills: Counter,
    pub(crate) backpressure_timeouts: Counter,
    pub(crate) forward_timeouts: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            connections: gauge!(CONNECTIONS),
            accepted: counter!(CONNECTIONS_ACCEPTED),
            msg_received: counter!(MSG_RECEIVED),
            msg_sent: counter!(MSG_SENT),
            bytes_received: counter!(BYTES_RECEIVED),
            bytes_sent: counter!(BYTES_SENT),
            queue_dropped: counter!(SESSION_DROPPED),
            expired_dropped: counter!(SESSION_EXPIRED_MSGS),
            offline_qos0_dropped: counter!(SESSION_OFFLINE_QOS0),
            too_large_dropped: counter!(SESSION_TOO_LARGE),
            dollar_dropped: counter!(PUBLISH_DROPPED, "reason" => "dollar_topic"),
            retain_dropped: counter!(PUBLISH_DROPPED, "reason" => "retain_unavailable"),
            sessions: gauge!(SESSIONS),
            sessions_expired: counter!(SESSIONS_EXPIRED),
            takeovers: counter!(TAKEOVERS),
            subscriptions: gauge!(SUBSCRIPTIONS),
            retained: gauge!(RETAINED),
            wills: counter!(WILLS),
            backpressure_timeouts: counter!(BACKPRESSURE_TIMEOUTS),
            forward_timeouts: counter!(FORWARD_TIMEOUTS),
        }
    }

    /// Adds a session's drop counters.
    pub(crate) fn record_drops(&self, d: roost_core::session::Drops) {
        if d.queue_full > 0 {
            self.queue_dropped.increment(d.queue_full);
        }
        if d.expired > 0 {
            self.expired_dropped.increment(d.expired);
        }
        if d.offline_qos0 > 0 {
            self.offline_qos0_dropped.increment(d.offline_qos0);
        }
        if d.too_large > 0 {
            self.too_large_dropped.increment(d.too_large);
        }
    }
}

/// Counts a connection refused at CONNECT.
pub(crate) fn rejected(reason: &'static str) {
    counter!(CONNECTIONS_REJECTED, "reason" => reason).increment(1);
}

/// Counts a closed connection by why it closed.
pub(crate) fn disconnected(reason: &'static str) {
    counter!(DISCONNECTS, "reason" => reason).increment(1);
}

/// Counts a connection closed for a malformed packet.
pub(crate) fn malformed() {
    counter!(MALFORMED).increment(1);
}
