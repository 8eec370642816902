//! Roost's cluster layer: the Raft-replicated metadata every node keeps a full copy of, and the
//! gRPC services nodes use to talk to each other (docs/rfcs/0002).
//!
//! ```text
//!   roost-node ──propose(Command)──▶ Cluster ──(follower: Cluster.Propose to leader)──▶ openraft
//!        ▲                              │                                               │
//!        │ reads (routes, sessions,     │ apply committed entries                       │ log +
//!        │ retained) — no network hop   ▼                                               │ snapshot
//!        └──────────────────── Arc<RwLock<ClusterState>> ◀── store::StateMachine ◀──────┘ (redb)
//! ```
//!
//! - [`types`]: the Raft type configuration, node records, commands and their responses.
//! - [`state`]: the replicated state machine's data and its deterministic `apply`.
//! - [`store`]: openraft log storage and state machine on redb (`DATA_DIR/raft.redb`).
//! - [`cluster`]: the running node's Raft, gRPC server, peer clients and publish forwarders.
//! - [`error`]: [`ClusterError`] (a refused request vs. a broken node) and [`StartError`].
//! - [`convert`]: wire (prost) types to ours and back; prost types stop here.
//! - [`limits`]: the byte bounds on every batch and gRPC message, from `mqtt.max_packet_size`.
//! - `network`: Raft RPCs over gRPC, and the channels to peers (plaintext or mutual TLS).
//! - [`tls`]: mutual TLS between nodes: [`ClusterTls`], the `roost-node-<id>` naming convention
//!   ([`node_name`]), and the check that binds the node a request claims to its certificate.
//! - `raft_metrics`: the `roost_raft_*` gauges, sampled from openraft's metrics watch by a task
//!   `Cluster::start` spawns.
//! - `election`: when this node stands for leader — a pre-vote round first (openraft 0.9 has
//!   none), so a node returning from a pause does not depose a healthy leader.
//!
//! Ids and filters are typed across the seam with the node: [`types::NodeId`],
//! `roost_core::ClientId`, `roost_core::topic::TopicFilter`. Strings remain only in the wire
//! (prost) types and in the replicated [`types::Command`]s, whose postcard encoding is the
//! on-disk format. All timing uses tokio's clock, so `tokio::time::pause()` drives it.

pub mod cluster;
pub mod convert;
mod election;
pub mod error;
pub mod limits;
pub mod metrics;
mod network;
mod raft_metrics;
pub mod state;
pub mod store;
pub mod tls;
pub mod types;

pub use cluster::{
    Answer, Cluster, ClusterConfig, ClusterStatus, Delivered, ForwardAck, LocalNode, NotForwarded,
    SessionTaker, Target,
};
pub use convert::{Addressed, SessionTransfer};
pub use error::{ClusterError, Refusal, StartError};
pub use limits::WireLimits;
pub use tls::{node_from_name, node_name, ClusterTls};

/// A random number without a rand crate: std's `RandomState` keys are random per process and
/// differ per instance (stream epochs, backoff jitter, election delays).
pub(crate) fn random_u64(salt: u64) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(salt)
}
