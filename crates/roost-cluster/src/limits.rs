//! Byte bounds on everything nodes send each other (issue 7: "Acknowledged means delivered").
//!
//! gRPC refuses a message over its decoding limit (tonic's default is 4 MiB) and ends the call.
//! A batch bounded only by count can cross that limit with a few large publishes, and a batch
//! that is refused is sent again, identical, forever. So every batch is bounded by bytes as well
//! as by count, each bound is derived here from the node's `mqtt.max_packet_size` (the largest
//! message a client can hand us; a client cannot raise it), and the gRPC limits on both sides
//! are set from the same numbers:
//!
//! ```text
//!   max_message     = max_packet_size + ENVELOPE_OVERHEAD      one forwarded message, one Raft
//!                                                              command (propose refuses more)
//!   forward_batch   = max(FORWARD_BATCH_TARGET, max_message)   bytes of messages in one
//!                                                              ForwardBatch (and ≤ 256 of them)
//!   raft_payload    = max(RAFT_PAYLOAD_TARGET, max_message)    one encoded AppendEntries (split
//!                     + RAFT_REQUEST_OVERHEAD                  with PayloadTooLarge beyond it)
//!   session_transfer = max(SESSION_TRANSFER_FLOOR,             one TakeSession reply (the newest
//!                          4 × max_message)                    queued messages beyond it are
//!                                                              dropped and counted)
//!   unacked         = max(UNACKED_FLOOR, 4 × max_message)      QoS 1/2 kept for resending to one
//!                                                              peer (the oldest beyond it are
//!                                                              given up and counted)
//! ```
//!
//! Every node of a cluster must run with the same `mqtt.max_packet_size`: a node decodes what
//! its peers send with limits derived from its own value.

/// Room around an MQTT message once it leaves its packet: the publisher's client id (at most
/// 65,535 bytes, not part of a PUBLISH), shared-subscription filters a forwarded message carries,
/// the expiry, and protobuf or postcard framing. A PUBLISH's topic, properties and payload are
/// all within `max_packet_size` already.
pub const ENVELOPE_OVERHEAD: usize = 128 * 1024;

/// Bytes of messages the forwarder puts in one `ForwardBatch` when they are small; a single
/// message up to `max_message` still goes alone. Small enough that one batch does not hold a
/// stream (and the acks behind it) for long, large enough for 256 typical messages.
pub const FORWARD_BATCH_TARGET: usize = 1024 * 1024;

/// Bytes of entries in one Raft AppendEntries when entries are small; openraft's count bound
/// (`max_payload_entries`, 300) applies as well. A larger request is split (see `network`).
/// openraft gives an AppendEntries one heartbeat interval to complete (encode, send, the
/// follower's fsync), so this stays small: 300 typical entries (routes, claims) are far below
/// it, and a large retained message travels alone.
pub const RAFT_PAYLOAD_TARGET: usize = 1024 * 1024;

/// Room in an encoded AppendEntries beyond its entries: the vote, the previous and committed
/// log ids, and per entry its log id and framing (at most 300 entries).
pub const RAFT_REQUEST_OVERHEAD: usize = 64 * 1024;

/// Snapshot bytes per InstallSnapshot request (openraft's `snapshot_max_chunk_size`, set
/// explicitly so it stays under `raft_payload`).
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// Lower bound of the TakeSession reply limit: a session's subscriptions, in-flight and queued
/// messages (the queue is bounded by the node's `mqtt.max_queued_bytes`, 16 MiB by default).
pub const SESSION_TRANSFER_FLOOR: usize = 64 * 1024 * 1024;

/// Lower bound of the bytes of QoS 1/2 messages one forwarder keeps for resending (besides
/// `MAX_UNACKED` messages): what a peer that is down or slow can pin on this node.
pub const UNACKED_FLOOR: usize = 256 * 1024 * 1024;

/// Slack for gRPC and protobuf framing around a bounded body (the 5-byte gRPC header, field
/// tags and lengths, a batch's origin and epoch).
pub const FRAMING: usize = 1024;

/// The byte bounds of one node, derived from its `mqtt.max_packet_size`. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest forwarded message or Raft command (encoded).
    pub max_message: usize,
    /// Most bytes of messages in one ForwardBatch.
    pub forward_batch: usize,
    /// Most bytes in one encoded Raft request.
    pub raft_payload: usize,
    /// Most bytes in one TakeSession reply.
    pub session_transfer: usize,
    /// Most bytes of messages one forwarder keeps for resending to its peer.
    pub unacked: usize,
}

impl WireLimits {
    /// The bounds for a node whose clients may send packets up to `max_packet_size` bytes.
    pub fn new(max_packet_size: u32) -> WireLimits {
        let packet = usize::try_from(max_packet_size).unwrap_or(usize::MAX);
        let max_message = packet.saturating_add(ENVELOPE_OVERHEAD);
        WireLimits {
            max_message,
            forward_batch: FORWARD_BATCH_TARGET.max(max_message),
            raft_payload: RAFT_PAYLOAD_TARGET
                .max(max_message)
                .saturating_add(RAFT_REQUEST_OVERHEAD),
            session_transfer: SESSION_TRANSFER_FLOOR.max(max_message.saturating_mul(4)),
            unacked: UNACKED_FLOOR.max(max_message.saturating_mul(4)),
        }
    }

    /// gRPC limit (both directions) of the Raft service: one request up to `raft_payload`.
    pub fn raft_grpc(&self) -> usize {
        self.raft_payload.saturating_add(FRAMING)
    }

    /// gRPC limit (both directions) of the Cluster service: the largest of a Propose request,
    /// a ForwardBatch and a TakeSession reply.
    pub fn cluster_grpc(&self) -> usize {
        self.max_message
            .max(self.forward_batch)
            .max(self.session_transfer)
            .saturating_add(FRAMING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_from_the_packet_size() {
        // The default 1 MiB packet.
        let l = WireLimits::new(1_048_576);
        assert_eq!(l.max_message, 1_048_576 + 131_072);
        assert_eq!(l.forward_batch, 1_048_576 + 131_072);
        assert_eq!(l.raft_payload, 1_048_576 + 131_072 + 65_536);
        assert_eq!(l.session_transfer, 67_108_864);
        assert_eq!(l.unacked, 268_435_456);
        assert_eq!(l.raft_grpc(), 1_048_576 + 131_072 + 65_536 + 1024);
        assert_eq!(l.cluster_grpc(), 67_108_864 + 1024);
        // Small packets: the targets apply.
        let l = WireLimits::new(1024);
        assert_eq!(l.max_message, 1024 + 131_072);
        assert_eq!(l.forward_batch, FORWARD_BATCH_TARGET);
        assert_eq!(l.raft_payload, RAFT_PAYLOAD_TARGET + RAFT_REQUEST_OVERHEAD);
        // The MQTT maximum (268,435,460): everything grows with one message.
        let l = WireLimits::new(268_435_460);
        assert_eq!(l.max_message, 268_435_460 + 131_072);
        assert_eq!(l.forward_batch, l.max_message);
        assert_eq!(l.raft_payload, l.max_message + RAFT_REQUEST_OVERHEAD);
        assert_eq!(l.session_transfer, 4 * l.max_message);
        assert_eq!(l.unacked, 4 * l.max_message);
        // A snapshot chunk always fits a Raft request.
        assert!(SNAPSHOT_CHUNK + RAFT_REQUEST_OVERHEAD <= WireLimits::new(1).raft_payload);
    }
}
