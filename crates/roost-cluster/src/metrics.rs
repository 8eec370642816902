//! The cluster layer's metrics, declared once (house style, convention 7). Handles are resolved
//! once into [`ClusterStats`]; every message a forwarder drops or gives up is counted.

use metrics::{counter, describe_counter, describe_gauge, Counter};

const FORWARDED: &str = "roost_cluster_forwarded_total";
const FORWARD_DROPPED: &str = "roost_cluster_forward_dropped_total";
const FORWARD_GIVEN_UP: &str = "roost_cluster_forward_given_up_total";
const FORWARD_TOO_LARGE: &str = "roost_cluster_forward_too_large_total";
const TRANSFER_DROPPED: &str = "roost_cluster_transfer_dropped_total";
const RECEIVED: &str = "roost_cluster_received_total";
const RECEIVED_INVALID: &str = "roost_cluster_received_invalid_total";
const RECEIVED_DUPLICATE: &str = "roost_cluster_received_duplicate_total";
const RECEIVED_INVALID_FILTERS: &str = "roost_cluster_received_invalid_filters_total";
const FORWARD_HELD_NO_LEASE: &str = "roost_cluster_forward_held_no_lease_total";
const PASSED_ON: &str = "roost_cluster_passed_on_total";
const RECEIVED_NOT_ACCEPTED: &str = "roost_cluster_received_not_accepted_total";
const RECEIVED_STALE: &str = "roost_cluster_received_stale_total";
pub(crate) const PEER_IDENTITY_REFUSED: &str = "roost_cluster_peer_identity_refused_total";
pub(crate) const LEASE_HELD: &str = "roost_cluster_session_lease_held";
pub(crate) const LEASE_LOST: &str = "roost_cluster_session_lease_lost_total";

/// Describes the metrics to the recorder (called once by the node at start-up).
pub fn describe() {
    describe_counter!(FORWARDED, "messages handed to peers' forwarders");
    describe_counter!(
        FORWARD_DROPPED,
        "QoS 0 messages dropped because a peer's forward queue was full"
    );
    describe_counter!(
        FORWARD_GIVEN_UP,
        "QoS 1/2 messages a peer did not accept, by reason: not_member (the route names a \
         node that left), queue_full (the peer's forward queue stayed full for the forward \
         timeout), resend_bound (given up to keep the unacknowledged messages within their \
         bound), stopped (the forwarder stopped first: shutdown or a new peer address), \
         abandoned (not sent again after a reconnect: its publisher's forward timeout had run \
         out and it heard a failure); the publisher hears a failure unless it was \
         acknowledged already"
    );
    describe_counter!(
        FORWARD_TOO_LARGE,
        "messages not forwarded because their encoding is over the per-message byte bound \
         (derived from mqtt.max_packet_size); QoS 1/2 publishers see them refused"
    );
    describe_counter!(
        TRANSFER_DROPPED,
        "queued or in-flight messages left out of a session hand-over (TakeSession) because \
         the whole session was over the transfer byte bound"
    );
    describe_counter!(
        RECEIVED,
        "messages received from peers and delivered locally"
    );
    describe_counter!(
        RECEIVED_INVALID,
        "messages from peers that could not be decoded (dropped)"
    );
    describe_counter!(
        RECEIVED_DUPLICATE,
        "messages from peers not delivered because that stream had delivered them already \
         (a resend after a lost ack; also a late QoS 0 message from a replaced stream)"
    );
    describe_counter!(
        RECEIVED_INVALID_FILTERS,
        "shared-subscription filters from peers that did not parse (the message skipped them)"
    );
    describe_counter!(
        FORWARD_HELD_NO_LEASE,
        "batches from peers held back, unacknowledged, until this node held its session lease \
         again (nothing is dropped; the origin's publishers hear a failure if it takes longer \
         than their forward timeout)"
    );
    describe_counter!(
        PASSED_ON,
        "messages passed on to the node a session had just moved to, for that session alone \
         (they reached the old owner after the hand-over; docs/rfcs/0006)"
    );
    describe_counter!(
        RECEIVED_NOT_ACCEPTED,
        "QoS 1/2 messages from peers left unacknowledged because the node a matching session \
         had moved to did not take them within the forward timeout (the origin's publisher \
         hears a failure)"
    );
    describe_counter!(
        RECEIVED_STALE,
        "QoS 1/2 messages from peers that arrived after their origin stopped waiting for them \
         (its publisher heard a failure): not delivered, not acknowledged. Steady growth means \
         a slow link or clocks apart by about cluster.forward_timeout_ms"
    );
    describe_counter!(
        PEER_IDENTITY_REFUSED,
        "cluster gRPC calls refused with PermissionDenied because the node the request claims \
         to come from (a vote's candidate, a leader's id, a forward's origin, a session \
         requester, a proposed command's node) is not the node the caller's TLS certificate \
         names (roost-node-<id>), the certificate names no node, or a node that is not a \
         member asked to add or remove another; by rpc. Only with cluster TLS"
    );
    describe_gauge!(
        LEASE_HELD,
        "1 while this node holds its session lease (a quorum confirmed it within \
         cluster.session_lease_ms) and serves MQTT clients, 0 while it does not"
    );
    describe_counter!(
        LEASE_LOST,
        "times this node lost its session lease (cut off from the quorum, or paused past the \
         lease); each time its connected clients were disconnected"
    );
}

/// Counter handles used by the forwarders and the Forward service.
#[derive(Debug, Clone)]
pub struct ClusterStats {
    /// Messages handed to peers' forwarders.
    pub forwarded: Counter,
    /// QoS 0 dropped on a full peer queue.
    pub forward_dropped: Counter,
    /// QoS 1/2 a peer did not accept, by reason.
    pub forward_given_up: GivenUp,
    /// Not forwarded: over the per-message byte bound.
    pub forward_too_large: Counter,
    /// Left out of a session hand-over: over the transfer byte bound.
    pub transfer_dropped: Counter,
    /// Received from peers.
    pub received: Counter,
    /// Undecodable messages from peers.
    pub received_invalid: Counter,
    /// Resends from peers not delivered again.
    pub received_duplicate: Counter,
    /// Shared filters from peers that did not parse (left out of the delivery).
    pub received_invalid_filters: Counter,
    /// Forwarded batches held back until this node held its session lease.
    pub forward_held_no_lease: Counter,
    /// Messages passed on to the node a session moved to.
    pub passed_on: Counter,
    /// QoS 1/2 from peers left unacknowledged: their pass-on was not taken.
    pub received_not_accepted: Counter,
    /// QoS 1/2 from peers that arrived after their origin gave up on them.
    pub received_stale: Counter,
}

impl Default for ClusterStats {
    fn default() -> Self {
        ClusterStats {
            forwarded: counter!(FORWARDED),
            forward_dropped: counter!(FORWARD_DROPPED),
            forward_given_up: GivenUp {
                not_member: counter!(FORWARD_GIVEN_UP, "reason" => "not_member"),
                queue_full: counter!(FORWARD_GIVEN_UP, "reason" => "queue_full"),
                resend_bound: counter!(FORWARD_GIVEN_UP, "reason" => "resend_bound"),
                stopped: counter!(FORWARD_GIVEN_UP, "reason" => "stopped"),
                abandoned: counter!(FORWARD_GIVEN_UP, "reason" => "abandoned"),
            },
            forward_too_large: counter!(FORWARD_TOO_LARGE),
            transfer_dropped: counter!(TRANSFER_DROPPED),
            received: counter!(RECEIVED),
            received_invalid: counter!(RECEIVED_INVALID),
            received_duplicate: counter!(RECEIVED_DUPLICATE),
            received_invalid_filters: counter!(RECEIVED_INVALID_FILTERS),
            forward_held_no_lease: counter!(FORWARD_HELD_NO_LEASE),
            passed_on: counter!(PASSED_ON),
            received_not_accepted: counter!(RECEIVED_NOT_ACCEPTED),
            received_stale: counter!(RECEIVED_STALE),
        }
    }
}

/// `roost_cluster_forward_given_up_total` by reason (see [`crate::cluster::NotForwarded`];
/// `too_large` has its own counter).
#[derive(Debug, Clone)]
pub struct GivenUp {
    /// The route names a node that is no longer a member.
    pub not_member: Counter,
    /// The peer's forward queue stayed full for the forward timeout.
    pub queue_full: Counter,
    /// Given up to keep the unacknowledged messages within their bound.
    pub resend_bound: Counter,
    /// The forwarder stopped before the peer acknowledged them.
    pub stopped: Counter,
    /// Not sent again after a reconnect: nobody waits for them any more.
    pub abandoned: Counter,
}
