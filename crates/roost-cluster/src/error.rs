//! The cluster layer's errors, split the way openraft splits `RaftError { APIError, Fatal }`:
//!
//! - [`ClusterError::Refused`]: *this request* failed ([`Refusal`]): no quorum in time, the
//!   leader refused it, a peer could not be reached. The node is fine; the caller tells its
//!   client (CONNACK 0x88 Server unavailable, SUBACK/PUBACK 0x80) and goes on.
//! - [`ClusterError::Fatal`]: *this node* is broken: its Raft stopped (storage error, panic,
//!   shutdown). Nothing on this node will commit again; the caller logs it at ERROR once where
//!   it handles it ([`ClusterError::is_fatal`]).
//!
//! [`StartError`] is what [`crate::Cluster::start`] returns: which part of starting failed, with
//! the address or path involved.

use crate::store::StoreError;
use crate::types::NodeId;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a cluster operation failed: the request was refused, or this node is broken.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This request failed; the node goes on serving others.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// This node's Raft stopped: nothing will commit here again. (Boxed: openraft's storage
    /// error is large, and every cluster call returns this type.)
    #[error("this node's raft stopped: {0}")]
    Fatal(Box<openraft::error::Fatal<NodeId>>),
}

impl ClusterError {
    /// True when this node is broken (its Raft stopped), not just this request refused.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ClusterError::Fatal(_))
    }

    /// The refusal, if this request was refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            ClusterError::Refused(r) => Some(r),
            ClusterError::Fatal(_) => None,
        }
    }

    pub(crate) fn timeout(limit: Duration) -> ClusterError {
        ClusterError::Refused(Refusal::Timeout(limit))
    }

    pub(crate) fn rejected(reason: impl ToString) -> ClusterError {
        ClusterError::Refused(Refusal::Rejected(reason.to_string()))
    }

    pub(crate) fn peer(node: NodeId, reason: impl ToString) -> ClusterError {
        ClusterError::Refused(Refusal::Peer {
            node,
            reason: reason.to_string(),
        })
    }

    /// An openraft API call's error: its `APIError` refuses this request, its `Fatal` is ours.
    pub(crate) fn from_raft<E: std::fmt::Display>(
        e: openraft::error::RaftError<NodeId, E>,
    ) -> ClusterError {
        match e {
            openraft::error::RaftError::APIError(e) => ClusterError::rejected(e),
            openraft::error::RaftError::Fatal(f) => ClusterError::Fatal(Box::new(f)),
        }
    }
}

/// Why one request was refused. The node itself is healthy.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No quorum answered in time (minority partition, or an election in progress).
    #[error("no commit within {0:?}: the cluster has no reachable quorum or leader")]
    Timeout(Duration),
    /// The proposal or membership change was refused by Raft (or could not be encoded).
    #[error("proposal failed: {0}")]
    Rejected(String),
    /// The command or message is larger than anything nodes may send each other (derived from
    /// `mqtt.max_packet_size`, see [`crate::limits`]); it was not logged or sent.
    #[error("too large for the cluster: {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Its encoded size.
        size: usize,
        /// The limit it is over.
        limit: usize,
    },
    /// This node has not confirmed within its session lease that it is part of the quorum
    /// (cut off, paused, or just started): it serves no session until it has.
    #[error("no session lease: no quorum confirmed this node within {0:?}")]
    NoLease(Duration),
    /// A peer could not be reached or answered with an error.
    #[error("peer {node}: {reason}")]
    Peer {
        /// The peer.
        node: NodeId,
        /// What went wrong.
        reason: String,
    },
}

/// Why [`crate::Cluster::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cluster gRPC listener could not be bound (or its address read).
    #[error("cannot bind cluster.listen {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Raft store (`DATA_DIR/raft.redb`) could not be opened; the message names the path.
    #[error("cannot open the raft store: {0}")]
    Store(#[from] StoreError),
    /// The Raft timing settings were refused by openraft.
    #[error("invalid raft settings (cluster.heartbeat_ms / election_timeout_ms): {0}")]
    Config(#[from] openraft::ConfigError),
    /// A file of `ClusterConfig::tls` (certificate, key or CA bundle) could not be
    /// read, holds no usable PEM, or does not fit the naming convention (this node's
    /// certificate must carry the DNS name `roost-node-<node_id>`, see [`crate::tls`]).
    #[error("cluster TLS file {}: {reason}", path.display())]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Raft did not start, or stopped while the cluster was being initialised (a refused
    /// `initialize`, i.e. already initialised, is not an error).
    #[error("raft of node {node} did not start: {source}")]
    Raft {
        /// This node.
        node: NodeId,
        /// openraft's reason.
        source: Box<openraft::error::Fatal<NodeId>>,
    },
}
