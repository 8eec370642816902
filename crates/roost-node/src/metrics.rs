//! Every metric the node exports, declared once (house style, convention 7).
//!
//! Handles are resolved once into [`Metrics`] at start-up, so the hot path increments a counter
//! without looking up a name or labels. The Prometheus text is rendered by the exporter's handle
//! on `GET /metrics`.
//!
//! One source per fact: the counters that `$SYS` and `GET /api/v1/stats` also show (messages,
//! bytes, drops) are [`NodeCounter`]s: the hot path adds to the node's own atomic, and a scrape
//! of `/metrics` first exports what was added since the last scrape to the registry
//! ([`Metrics::export`]), so both views read the same number. The registry is process-wide
//! (several in-process nodes in a test binary add up there); a node's `$SYS` shows its own.
//! Gauges are set at scrape time from their source (registry, index, replicated state).
//!
//! Names follow `roost_<subsystem>_<thing>_<unit>`; every dropped message is counted under
//! `roost_session_*dropped_total` or `roost_mqtt_publish_dropped_total` with a `reason` label.
//!
//! Delivery latency ([`DeliveryLatency`]) is recorded by the connection driver as it encodes
//! a PUBLISH for its socket, from when the message [entered](roost_core::message::Entered)
//! the node (a time read already, see the type's docs), sampled per connection. The queue
//! gauges are read at scrape from the totals every session keeps up to date
//! ([`roost_core::session::QueueTotals`]).

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram,
};
use roost_core::message::Entered;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub(crate) const CONNECTIONS: &str = "roost_mqtt_connections";
pub(crate) const CONNECTIONS_PENDING: &str = "roost_mqtt_connections_pending";
pub(crate) const CONNECTIONS_PARKED: &str = "roost_mqtt_connections_parked";
pub(crate) const CONNECTIONS_ACCEPTED: &str = "roost_mqtt_connections_accepted_total";
pub(crate) const CONNECTIONS_REJECTED: &str = "roost_mqtt_connections_rejected_total";
pub(crate) const DISCONNECTS: &str = "roost_mqtt_disconnects_total";
pub(crate) const SUBSCRIBE_DENIED: &str = "roost_mqtt_subscribe_denied_total";
pub(crate) const RECEIVE_DENIED: &str = "roost_mqtt_receive_denied_total";
pub(crate) const RATE_LIMITED: &str = "roost_mqtt_rate_limited_total";
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
pub(crate) const SESSION_STALE_DROPPED: &str = "roost_session_stale_copy_dropped_total";
pub(crate) const SESSIONS: &str = "roost_sessions";
pub(crate) const SESSIONS_EXPIRED: &str = "roost_sessions_expired_total";
pub(crate) const TAKEOVERS: &str = "roost_sessions_taken_over_total";
pub(crate) const TAKEOVER_UNREACHABLE: &str = "roost_sessions_takeover_unreachable_total";
pub(crate) const HANDOVER_DUPLICATES: &str = "roost_handover_duplicates_total";
pub(crate) const HANDOVER_IDS_FORGOTTEN: &str = "roost_handover_ids_forgotten_total";
pub(crate) const HANDOVER_PASSED_ON_DROPPED: &str = "roost_handover_passed_on_dropped_total";
pub(crate) const SHARED_ELSEWHERE: &str = "roost_shared_served_elsewhere_total";
pub(crate) const LEASE_DISCONNECTS: &str = "roost_session_lease_disconnects_total";
pub(crate) const SESSIONS_MOVED_HERE: &str = "roost_sessions_moved_here_total";
pub(crate) const DRAIN_SESSIONS: &str = "roost_drain_sessions_total";
pub(crate) const SUBSCRIPTIONS: &str = "roost_subscriptions";
pub(crate) const RETAINED: &str = "roost_retained_messages";
pub(crate) const WILLS: &str = "roost_wills_published_total";
pub(crate) const BACKPRESSURE_TIMEOUTS: &str = "roost_mqtt_backpressure_timeouts_total";
pub(crate) const FORWARD_TIMEOUTS: &str = "roost_cluster_forward_timeouts_total";
pub(crate) const FORWARD_DROPPED: &str = "roost_cluster_forward_dropped_total";
pub(crate) const ROUTES_PENDING: &str = "roost_cluster_routes_pending";
pub(crate) const HTTP_REFUSED: &str = "roost_http_requests_refused_total";
pub(crate) const DELIVERY_LATENCY: &str = "roost_delivery_latency_seconds";
pub(crate) const QUEUE_BYTES: &str = "roost_session_queue_bytes";
pub(crate) const QUEUE_MESSAGES: &str = "roost_session_queue_messages";
pub(crate) const SHARD_CONNECTIONS: &str = "roost_shard_connections";

/// A connection records the latency of its first delivery, then of one in this many
/// (`roost_delivery_latency_seconds`). One recording costs about 140 ns (the exporter reads
/// its clock and keeps the value until its upkeep folds it into the buckets): on every
/// delivery it made the in-core work of a QoS 1 fan-out about 70 % slower; one in 16 adds
/// about 9 ns, within the noise (docs/observability.md, "Latency and queues").
pub(crate) const LATENCY_SAMPLE_EVERY: u16 = 16;

/// Describes all metrics to the recorder. Called once at start-up.
pub(crate) fn describe() {
    describe_gauge!(
        SHARD_CONNECTIONS,
        "Sockets each connection shard runs (label shard: 0..node.shards), from accept to close"
    );
    describe_gauge!(
        CONNECTIONS,
        "MQTT connections currently open (after CONNACK)"
    );
    describe_gauge!(
        CONNECTIONS_PENDING,
        "sockets accepted whose CONNECT has not arrived yet"
    );
    describe_gauge!(
        CONNECTIONS_PARKED,
        "MQTT connections parked: idle for mqtt.park_after_ms, their read/write loop freed"
    );
    describe_counter!(
        HTTP_REFUSED,
        "admin HTTP requests refused, by reason (host: foreign Host, no_host: missing or \
         malformed Host, token: missing or wrong admin token)"
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        "MQTT connections accepted (CONNACK 0x00)"
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        "CONNECTs refused, by reason (quota, listener_quota, connect_rate, not_authorized, bad_credentials, cert_no_identity, cert_client_id_mismatch, policy_denied, client_id, will, auth_method, cluster_unavailable, no_lease, connack_too_large, pending_limit, pending_bytes)"
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
        "inbound PUBLISHes not routed, by reason (dollar_topic, retain_unavailable, \
         retain_not_stored, retain_quota, peer_unreachable: a QoS 1/2 message for a peer known \
         unreachable; shared_no_member: picked for a shared group by a peer, and no node has a \
         member of it any more; not_authorized: denied by the authorization policies)"
    );
    describe_counter!(
        RATE_LIMITED,
        "connections closed for passing mqtt.max_publish_rate (limit=messages) or \
         mqtt.max_publish_bytes_rate (limit=bytes): DISCONNECT 0x96"
    );
    describe_counter!(
        RECEIVE_DENIED,
        "messages not delivered to a subscriber the authorization policies do not let receive \
         the topic (mqtt:Receive)"
    );
    describe_counter!(
        SUBSCRIBE_DENIED,
        "SUBSCRIBE filters refused by the authorization policies (SUBACK 0x87 / 0x80)"
    );
    describe_counter!(
        crate::listener::HANDSHAKE_FAILED,
        "TLS and WebSocket handshakes that failed, by listener and reason (timeout, tls, ws, io)"
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
    describe_counter!(
        SESSION_STALE_DROPPED,
        "messages a session copy still held when it was dropped as stale: this node was cut \
         off longer than the session lease while the client connected elsewhere, and its new \
         owner rebuilt the session from the registry (the loss of an unreachable owner, \
         docs/architecture.md)"
    );
    describe_gauge!(SESSIONS, "sessions held (connected and offline)");
    describe_counter!(
        SESSIONS_EXPIRED,
        "sessions ended by their session expiry interval"
    );
    describe_counter!(TAKEOVERS, "sessions taken over by a new connection");
    describe_counter!(
        SHARED_ELSEWHERE,
        "messages a peer picked this node to serve a shared group with, that no member here \
         took (the last one had left), handed to another node with members of the group"
    );
    describe_counter!(
        HANDOVER_DUPLICATES,
        "messages not given twice to a session that just moved between nodes (they reached it \
         directly and passed on from its old owner; docs/rfcs/0006)"
    );
    describe_counter!(
        HANDOVER_IDS_FORGOTTEN,
        "message ids a session that just moved forgot to stay within its bound (16384): a \
         second copy of one of them would be delivered again"
    );
    describe_counter!(
        HANDOVER_PASSED_ON_DROPPED,
        "messages passed on from a session's old owner that were dropped, by reason: \
         session_gone (on the new owner: the session ended or lost its subscription \
         meanwhile, e.g. a clean start), owner_left (on the old owner: the node the session \
         had moved to left the cluster, and its sessions with it); QoS 1/2 ones the new owner \
         could not place in time are not acknowledged instead, see \
         roost_cluster_received_not_accepted_total"
    );
    describe_counter!(
        SESSIONS_MOVED_HERE,
        "persistent sessions another node moved to this one (a graceful stop hands its \
         sessions on), taken with their queued and in-flight messages"
    );
    describe_counter!(
        DRAIN_SESSIONS,
        "persistent sessions of this node at a graceful stop, by outcome: handed (to another \
         node, with their messages) or left (the drain ran out of time or found no node to \
         take them: their queued messages are lost with this process)"
    );
    describe_counter!(
        TAKEOVER_UNREACHABLE,
        "sessions claimed from a node that did not hand them over within the session lease \
         (cut off or dead): rebuilt from the registry's subscriptions; the messages queued on \
         that node are lost"
    );
    describe_counter!(
        LEASE_DISCONNECTS,
        "connected clients disconnected because this node lost its session lease (v5: \
         DISCONNECT 0x9C); their sessions stay on this node"
    );
    describe_gauge!(SUBSCRIPTIONS, "subscriptions in the index");
    describe_gauge!(
        ROUTES_PENDING,
        "route changes of this node (adds and removes) not committed to the replicated route \
         table yet; retried until they are; refreshed when scraped"
    );
    describe_gauge!(
        RETAINED,
        "retained messages held (replicated, plus this node's $SYS); refreshed when scraped"
    );
    describe_counter!(WILLS, "will messages published");
    describe_counter!(
        FORWARD_TIMEOUTS,
        "QoS 1/2 publishes whose forward to a peer was not accepted within \
         cluster.forward_timeout_ms; the publisher heard a failure (v5 0x80, v3.1.1 closed)"
    );
    describe_counter!(
        FORWARD_DROPPED,
        "messages forwarded by a peer that this node could not take, by reason (not_started)"
    );
    describe_counter!(
        BACKPRESSURE_TIMEOUTS,
        "publisher waits for a congested subscriber that ran out their timeout"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        metrics::Unit::Seconds,
        "seconds from a PUBLISH entering this node (decoded on the publisher's connection: \
         path=local; read from a peer's Forward batch: path=forwarded) to a delivery of it \
         being encoded for a subscriber's socket; includes the time it waited in the \
         subscriber's queue (offline or behind its window); resends and retained messages \
         are not measured; sampled: each connection's first delivery and then one in 16"
    );
    describe_gauge!(
        QUEUE_MESSAGES,
        "messages waiting in the queues of this node's sessions (offline, or behind the \
         client's window), all sessions together; not the ones in flight; refreshed when \
         scraped"
    );
    describe_gauge!(
        QUEUE_BYTES,
        "bytes (payload + topic + properties) waiting in the queues of this node's sessions, \
         all sessions together; the sum of what max_queued_bytes bounds per session; \
         refreshed when scraped"
    );
}

/// `roost_delivery_latency_seconds`, by the path the message entered by.
pub(crate) struct DeliveryLatency {
    local: Histogram,
    forwarded: Histogram,
}

impl DeliveryLatency {
    fn new() -> DeliveryLatency {
        DeliveryLatency {
            local: histogram!(DELIVERY_LATENCY, "path" => "local"),
            forwarded: histogram!(DELIVERY_LATENCY, "path" => "forwarded"),
        }
    }

    /// Records one delivery, encoded `now`, of a message that entered the node as `entered`.
    pub(crate) fn record(&self, entered: Entered, now: Instant) {
        let (histogram, at) = match entered {
            Entered::Local(at) => (&self.local, at),
            Entered::Forwarded(at) => (&self.forwarded, at),
        };
        histogram.record(now.saturating_duration_since(at));
    }
}

/// A counter the node reads back (for `$SYS` and the stats API) as well as exports: see the
/// module docs.
pub(crate) struct NodeCounter {
    value: AtomicU64,
    /// What [`NodeCounter::export`] already added to the registry.
    exported: AtomicU64,
    handle: Counter,
}

impl NodeCounter {
    fn new(handle: Counter) -> NodeCounter {
        NodeCounter {
            value: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            handle,
        }
    }

    pub(crate) fn increment(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    /// Adds what was counted since the last export to the registry.
    fn export(&self) {
        let now = self.get();
        let before = self.exported.swap(now, Ordering::Relaxed);
        self.handle.increment(now.saturating_sub(before));
    }
}

/// Handles used on hot paths, resolved once.
pub(crate) struct Metrics {
    pub(crate) connections: Gauge,
    pub(crate) pending: Gauge,
    pub(crate) parked: Gauge,
    pub(crate) accepted: Counter,
    pub(crate) msg_received: NodeCounter,
    pub(crate) msg_sent: NodeCounter,
    pub(crate) bytes_received: NodeCounter,
    pub(crate) bytes_sent: NodeCounter,
    pub(crate) queue_dropped: NodeCounter,
    pub(crate) expired_dropped: NodeCounter,
    pub(crate) offline_qos0_dropped: NodeCounter,
    pub(crate) too_large_dropped: NodeCounter,
    pub(crate) dollar_dropped: NodeCounter,
    pub(crate) retain_dropped: NodeCounter,
    pub(crate) retain_not_stored: NodeCounter,
    pub(crate) retain_quota: NodeCounter,
    pub(crate) peer_unreachable: NodeCounter,
    pub(crate) sessions: Gauge,
    pub(crate) sessions_expired: Counter,
    pub(crate) takeovers: Counter,
    pub(crate) takeover_unreachable: Counter,
    pub(crate) lease_disconnects: Counter,
    pub(crate) sessions_adopted: Counter,
    pub(crate) drain_handed: Counter,
    pub(crate) drain_left: Counter,
    pub(crate) handover_duplicates: Counter,
    pub(crate) shared_served_elsewhere: Counter,
    pub(crate) shared_no_member: NodeCounter,
    pub(crate) passed_on_gone: Counter,
    pub(crate) passed_on_owner_left: Counter,
    pub(crate) stale_copy_dropped: Counter,
    pub(crate) subscriptions: Gauge,
    /// Route changes not committed yet (`RouteTable::pending`).
    pub(crate) routes_pending: Gauge,
    pub(crate) retained: Gauge,
    pub(crate) wills: Counter,
    pub(crate) backpressure_timeouts: Counter,
    pub(crate) forward_timeouts: Counter,
    pub(crate) delivery_latency: DeliveryLatency,
    /// Set at scrape from the sessions' `QueueTotals`.
    pub(crate) queue_messages: Gauge,
    pub(crate) queue_bytes: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            connections: gauge!(CONNECTIONS),
            pending: gauge!(CONNECTIONS_PENDING),
            parked: gauge!(CONNECTIONS_PARKED),
            accepted: counter!(CONNECTIONS_ACCEPTED),
            msg_received: NodeCounter::new(counter!(MSG_RECEIVED)),
            msg_sent: NodeCounter::new(counter!(MSG_SENT)),
            bytes_received: NodeCounter::new(counter!(BYTES_RECEIVED)),
            bytes_sent: NodeCounter::new(counter!(BYTES_SENT)),
            queue_dropped: NodeCounter::new(counter!(SESSION_DROPPED)),
            expired_dropped: NodeCounter::new(counter!(SESSION_EXPIRED_MSGS)),
            offline_qos0_dropped: NodeCounter::new(counter!(SESSION_OFFLINE_QOS0)),
            too_large_dropped: NodeCounter::new(counter!(SESSION_TOO_LARGE)),
            dollar_dropped: NodeCounter::new(counter!(PUBLISH_DROPPED, "reason" => "dollar_topic")),
            retain_dropped: NodeCounter::new(
                counter!(PUBLISH_DROPPED, "reason" => "retain_unavailable"),
            ),
            retain_not_stored: NodeCounter::new(
                counter!(PUBLISH_DROPPED, "reason" => "retain_not_stored"),
            ),
            retain_quota: NodeCounter::new(counter!(PUBLISH_DROPPED, "reason" => "retain_quota")),
            peer_unreachable: NodeCounter::new(
                counter!(PUBLISH_DROPPED, "reason" => "peer_unreachable"),
            ),
            sessions: gauge!(SESSIONS),
            sessions_expired: counter!(SESSIONS_EXPIRED),
            takeovers: counter!(TAKEOVERS),
            takeover_unreachable: counter!(TAKEOVER_UNREACHABLE),
            lease_disconnects: counter!(LEASE_DISCONNECTS),
            sessions_adopted: counter!(SESSIONS_MOVED_HERE),
            drain_handed: counter!(DRAIN_SESSIONS, "outcome" => "handed"),
            drain_left: counter!(DRAIN_SESSIONS, "outcome" => "left"),
            handover_duplicates: counter!(HANDOVER_DUPLICATES),
            shared_served_elsewhere: counter!(SHARED_ELSEWHERE),
            shared_no_member: NodeCounter::new(
                counter!(PUBLISH_DROPPED, "reason" => "shared_no_member"),
            ),
            passed_on_gone: counter!(HANDOVER_PASSED_ON_DROPPED, "reason" => "session_gone"),
            passed_on_owner_left: counter!(HANDOVER_PASSED_ON_DROPPED, "reason" => "owner_left"),
            stale_copy_dropped: counter!(SESSION_STALE_DROPPED),
            subscriptions: gauge!(SUBSCRIPTIONS),
            routes_pending: gauge!(ROUTES_PENDING),
            retained: gauge!(RETAINED),
            wills: counter!(WILLS),
            backpressure_timeouts: counter!(BACKPRESSURE_TIMEOUTS),
            forward_timeouts: counter!(FORWARD_TIMEOUTS),
            delivery_latency: DeliveryLatency::new(),
            queue_messages: gauge!(QUEUE_MESSAGES),
            queue_bytes: gauge!(QUEUE_BYTES),
        }
    }

    /// The counters shared with `$SYS`, exported to the registry (called on scrape).
    pub(crate) fn export(&self) {
        let traffic = [
            &self.msg_received,
            &self.msg_sent,
            &self.bytes_received,
            &self.bytes_sent,
        ];
        for c in traffic.into_iter().chain(self.drop_counters()) {
            c.export();
        }
    }

    /// Every counter of a dropped message, by reason.
    fn drop_counters(&self) -> [&NodeCounter; 10] {
        [
            &self.queue_dropped,
            &self.expired_dropped,
            &self.offline_qos0_dropped,
            &self.too_large_dropped,
            &self.dollar_dropped,
            &self.retain_dropped,
            &self.retain_not_stored,
            &self.retain_quota,
            &self.peer_unreachable,
            &self.shared_no_member,
        ]
    }

    /// Every message this node dropped, all causes (`$SYS/broker/messages/dropped`): the sum of
    /// the drop counters exported by reason.
    pub(crate) fn dropped_total(&self) -> u64 {
        self.drop_counters().iter().map(|c| c.get()).sum()
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

/// Sets one shard's live connection count (at scrape).
pub(crate) fn shard_connections(shard: usize, live: usize) {
    gauge!(SHARD_CONNECTIONS, "shard" => shard.to_string()).set(live as f64);
}

/// Counts a closed connection by why it closed.
pub(crate) fn disconnected(reason: &'static str) {
    counter!(DISCONNECTS, "reason" => reason).increment(1);
}

/// Counts a message forwarded by a peer before this node's broker was up.
pub(crate) fn forward_dropped_not_started() {
    counter!(FORWARD_DROPPED, "reason" => "not_started").increment(1);
}

/// Counts a message id a session that just moved forgot (see `RECENT_IDS_MAX`).
pub(crate) fn handover_ids_forgotten() {
    counter!(HANDOVER_IDS_FORGOTTEN).increment(1);
}

/// Counts a connection closed for a malformed packet.
/// Counts a PUBLISH denied by the authorization policies (delivered nowhere).
pub(crate) fn publish_denied() {
    counter!(PUBLISH_DROPPED, "reason" => "not_authorized").increment(1);
}

/// Counts a connection closed for passing its publish rate (`limit`: messages or bytes).
pub(crate) fn rate_limited(limit: &'static str) {
    counter!(RATE_LIMITED, "limit" => limit).increment(1);
}

/// Counts a message not delivered to a subscriber the policies do not let receive it.
pub(crate) fn receive_denied() {
    counter!(RECEIVE_DENIED).increment(1);
}

/// Counts a SUBSCRIBE filter denied by the authorization policies.
pub(crate) fn subscribe_denied() {
    counter!(SUBSCRIBE_DENIED).increment(1);
}

pub(crate) fn malformed() {
    counter!(MALFORMED).increment(1);
}
