//! The cluster layer's metrics, declared once (house style, convention 7). Handles are resolved
//! once into [`ClusterStats`]; every message a forwarder drops or gives up is counted.
//!
//! Three groups, each resolved once where it is used:
//! - [`ClusterStats`]: node-wide forwarding and receiving counters (the forwarders and the
//!   Forward service share one copy);
//! - [`ForwardStreamStats`]: one peer's forward stream (`peer` label = its node id), resolved
//!   when that peer's forwarder starts, so the hot path does no label lookup;
//! - [`RaftStats`]: gauges sampled from openraft's metrics watch (`crate::raft_metrics`), plus
//!   the snapshot build histogram ([`snapshot_built`]).
//!
//! The histograms are rendered as the Prometheus exporter is configured by the node: as
//! Prometheus histograms with the buckets roost-node's `telemetry.rs` sets for each name (a
//! name it sets none for would render as a summary), see docs/observability.md.

use crate::types::NodeId;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram,
};
use std::time::Duration;

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

// One peer's forward stream, by `peer` (its node id).
const FORWARD_BATCHES: &str = "roost_cluster_forward_batches_total";
const FORWARD_BYTES: &str = "roost_cluster_forward_bytes_total";
/// Histogram: messages per Forward batch (the node's exporter gives it buckets 1..256).
pub const FORWARD_BATCH_MESSAGES: &str = "roost_cluster_forward_batch_messages";
const FORWARD_ACK_LATENCY: &str = "roost_cluster_forward_ack_latency_seconds";
const FORWARD_RESENT: &str = "roost_cluster_forward_resent_total";
const FORWARD_STREAM_ERRORS: &str = "roost_cluster_forward_stream_errors_total";

// Raft, sampled from openraft's metrics watch (`crate::raft_metrics`).
const RAFT_TERM: &str = "roost_raft_term";
const RAFT_LAST_LOG_INDEX: &str = "roost_raft_last_log_index";
const RAFT_COMMIT_INDEX: &str = "roost_raft_commit_index";
const RAFT_APPLIED_INDEX: &str = "roost_raft_applied_index";
const RAFT_APPLY_LAG: &str = "roost_raft_apply_lag";
const RAFT_IS_LEADER: &str = "roost_raft_is_leader";
const RAFT_MEMBERS: &str = "roost_raft_members";
const RAFT_VOTERS: &str = "roost_raft_voters";
const RAFT_LEADER_CHANGES: &str = "roost_raft_leader_changes_total";
const RAFT_LEADER_HANDOFFS: &str = "roost_raft_leader_handoffs_total";
/// Histogram: seconds to build a snapshot (the node's exporter gives it buckets up to minutes).
pub const RAFT_SNAPSHOT_DURATION: &str = "roost_raft_snapshot_duration_seconds";

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
         out and it heard a failure), refused (the peer said it did not take it: part of it \
         had to go on to the node a session moved to, which did not take it in time); the \
         publisher hears a failure unless it was acknowledged already"
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
    describe_forward_streams();
    describe_raft();
}

fn describe_forward_streams() {
    describe_counter!(
        FORWARD_BATCHES,
        "ForwardBatch messages handed to a peer's Forward stream, by peer (node id); resends \
         after a reconnect included"
    );
    describe_counter!(
        FORWARD_BYTES,
        "bytes of forwarded messages (their protobuf encoding in the batch, before gRPC \
         framing and TLS) handed to a peer's Forward stream, by peer; resends included"
    );
    describe_histogram!(
        FORWARD_BATCH_MESSAGES,
        "messages per ForwardBatch sent to a peer, by peer (at most 256)"
    );
    describe_histogram!(
        FORWARD_ACK_LATENCY,
        "seconds from a QoS 1/2 message entering a peer's forward queue to the peer's \
         acknowledgement (it accepted the message into its sessions), by peer; includes the \
         queue wait, resends and the peer's backpressure"
    );
    describe_counter!(
        FORWARD_RESENT,
        "QoS 1/2 messages sent to a peer again on a new stream because the previous stream \
         ended before the peer acknowledged them, by peer"
    );
    describe_counter!(
        FORWARD_STREAM_ERRORS,
        "failures of a peer's Forward stream, by peer and reason: connect (the stream could \
         not be opened), error (it ended with a gRPC error), closed (the peer ended it), \
         send (gRPC stopped taking batches: the connection went away), stalled (messages \
         waited cluster.forward_timeout_ms for an acknowledgement and none came; the peer \
         counts as unreachable until one does)"
    );
}

fn describe_raft() {
    describe_gauge!(RAFT_TERM, "this node's current Raft term");
    describe_gauge!(
        RAFT_LAST_LOG_INDEX,
        "index of the last entry in this node's Raft log (committed or not)"
    );
    describe_gauge!(
        RAFT_COMMIT_INDEX,
        "index of the last Raft entry this node knows is committed (accepted by a quorum)"
    );
    describe_gauge!(
        RAFT_APPLIED_INDEX,
        "index of the last Raft entry applied to this node's replicated state"
    );
    describe_gauge!(
        RAFT_APPLY_LAG,
        "Raft entries in this node's log not applied yet (last log index minus applied index)"
    );
    describe_gauge!(
        RAFT_IS_LEADER,
        "1 while this node is the Raft leader, 0 otherwise"
    );
    describe_gauge!(
        RAFT_MEMBERS,
        "nodes in the Raft membership this node knows of (voters and learners)"
    );
    describe_gauge!(RAFT_VOTERS, "voting nodes in the Raft membership");
    describe_counter!(
        RAFT_LEADER_CHANGES,
        "leaders this node has seen take office: a different leader, or the same node elected \
         again in a new term (the first leader seen after start counts)"
    );
    describe_histogram!(
        RAFT_SNAPSHOT_DURATION,
        "seconds this node took to build a Raft snapshot (copy, serialise, write and fsync)"
    );
    describe_counter!(
        RAFT_LEADER_HANDOFFS,
        "graceful stops of this node while it led, by outcome: handed_over (another voter \
         took over before Raft stopped, docs/rfcs/0008), timed_out (none did within the \
         bound: the others elect a leader when this node's lease runs out), no_peer (no live \
         voting peer to hand over to)"
    );
}

/// Counts one leader hand-off at a graceful stop (rare: resolved per call); `outcome` is
/// `handed_over`, `timed_out` or `no_peer`.
pub(crate) fn leader_handoff(outcome: &'static str) {
    counter!(RAFT_LEADER_HANDOFFS, "outcome" => outcome).increment(1);
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
                refused: counter!(FORWARD_GIVEN_UP, "reason" => "refused"),
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
    /// The peer refused them (`ForwardAck.refused`: a session it had to pass them on to did
    /// not take them).
    pub refused: Counter,
}

/// One peer's forward stream: handles resolved once, when its forwarder starts (labels
/// `peer` = the peer's node id), so sending a batch or taking an ack looks nothing up.
#[derive(Debug, Clone)]
pub(crate) struct ForwardStreamStats {
    /// Batches handed to the stream (resends included).
    pub(crate) batches: Counter,
    /// Bytes of the forwarded messages in those batches.
    pub(crate) bytes: Counter,
    /// Messages per batch.
    pub(crate) batch_messages: Histogram,
    /// Enqueue to the peer's acknowledgement, per QoS 1/2 message.
    pub(crate) ack_latency: Histogram,
    /// Messages sent again on a new stream.
    pub(crate) resent: Counter,
    /// Why streams failed.
    pub(crate) errors: StreamErrors,
}

/// `roost_cluster_forward_stream_errors_total{peer, reason}` handles.
#[derive(Debug, Clone)]
pub(crate) struct StreamErrors {
    /// The stream could not be opened.
    pub(crate) connect: Counter,
    /// The stream ended with a gRPC error.
    pub(crate) error: Counter,
    /// The peer ended the stream.
    pub(crate) closed: Counter,
    /// gRPC stopped taking batches (the request side closed).
    pub(crate) send: Counter,
    /// No acknowledgement for the forward timeout while messages waited for one.
    pub(crate) stalled: Counter,
}

impl ForwardStreamStats {
    pub(crate) fn new(peer: NodeId) -> ForwardStreamStats {
        let peer = peer.to_string();
        let error = |reason: &'static str| stream_error(&peer, reason);
        ForwardStreamStats {
            batches: counter!(FORWARD_BATCHES, "peer" => peer.clone()),
            bytes: counter!(FORWARD_BYTES, "peer" => peer.clone()),
            batch_messages: histogram!(FORWARD_BATCH_MESSAGES, "peer" => peer.clone()),
            ack_latency: histogram!(FORWARD_ACK_LATENCY, "peer" => peer.clone()),
            resent: counter!(FORWARD_RESENT, "peer" => peer.clone()),
            errors: StreamErrors {
                connect: error("connect"),
                error: error("error"),
                closed: error("closed"),
                send: error("send"),
                stalled: error("stalled"),
            },
        }
    }

    /// A batch of `messages` messages, `bytes` bytes, was handed to the stream.
    pub(crate) fn sent(&self, messages: usize, bytes: usize) {
        self.batches.increment(1);
        self.bytes.increment(bytes as u64);
        self.batch_messages.record(messages as f64);
    }
}

fn stream_error(peer: &str, reason: &'static str) -> Counter {
    let peer = peer.to_owned();
    counter!(FORWARD_STREAM_ERRORS, "peer" => peer, "reason" => reason)
}

/// The Raft gauges and the leader-change counter, resolved once by the sampler.
#[derive(Debug, Clone)]
pub(crate) struct RaftStats {
    pub(crate) term: Gauge,
    pub(crate) last_log_index: Gauge,
    pub(crate) commit_index: Gauge,
    pub(crate) applied_index: Gauge,
    pub(crate) apply_lag: Gauge,
    pub(crate) is_leader: Gauge,
    pub(crate) members: Gauge,
    pub(crate) voters: Gauge,
    pub(crate) leader_changes: Counter,
}

impl Default for RaftStats {
    fn default() -> Self {
        RaftStats {
            term: gauge!(RAFT_TERM),
            last_log_index: gauge!(RAFT_LAST_LOG_INDEX),
            commit_index: gauge!(RAFT_COMMIT_INDEX),
            applied_index: gauge!(RAFT_APPLIED_INDEX),
            apply_lag: gauge!(RAFT_APPLY_LAG),
            is_leader: gauge!(RAFT_IS_LEADER),
            members: gauge!(RAFT_MEMBERS),
            voters: gauge!(RAFT_VOTERS),
            leader_changes: counter!(RAFT_LEADER_CHANGES),
        }
    }
}

/// Records how long building a Raft snapshot took (rare: resolved per call).
pub(crate) fn snapshot_built(took: Duration) {
    histogram!(RAFT_SNAPSHOT_DURATION).record(took);
}
