//! Membership and introspection: bootstrap on first start (the lowest seed initialises the
//! cluster, the others wait to be added), `join` and `leave` through the leader, and `status`
//! with a short health probe of each member, plus the [`ClusterStatus`] and [`MemberStatus`]
//! it reports.
//!
//! Who calls it: `Cluster::start` (bootstrap); the node's admin HTTP API, which `roost ctl`
//! talks to (join, leave, status); the gRPC service for peers' `Join`, `Leave` calls (a
//! follower passes a change on to the leader).
//!
//! Concurrency: plain async methods on `Cluster`, run by whichever task asks. Membership changes
//! go through openraft, which serialises them; each is bounded by a multiple of
//! `commit_timeout`. `status` probes the members one after another, 500 ms each at most.

use super::Cluster;
use crate::error::{ClusterError, StartError};
use crate::types::{Command, NodeId, NodeInfo};
use openraft::error::RaftError;
use openraft::{ChangeMembers, ServerState};
use roost_proto::v1 as pb;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tonic::Request;
use tracing::{debug, info};

/// One member's view for `roost ctl status` and `/api/v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    /// Id.
    pub node_id: NodeId,
    /// Cluster address.
    pub cluster_addr: String,
    /// MQTT address (as it last reported it).
    pub mqtt_addr: String,
    /// Voter (false: learner).
    pub voter: bool,
    /// Answered a status call just now.
    pub healthy: bool,
    /// Last log index the leader knows it has (only on the leader).
    pub matched_index: Option<u64>,
}

/// This node's view of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: NodeId,
    /// The leader, if known.
    pub leader_id: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last log index held.
    pub last_log_index: u64,
    /// Last log index applied to the state machine.
    pub applied_index: u64,
    /// Leader, Follower, Candidate or Learner.
    pub state: String,
    /// Members.
    pub members: Vec<MemberStatus>,
    /// Route entries (filter, node) in the replicated table.
    pub routes: usize,
    /// Sessions in the registry.
    pub sessions: usize,
    /// Retained messages.
    pub retained: usize,
}

impl Cluster {
    pub(super) async fn bootstrap(&self) -> Result<(), StartError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|source| StartError::Raft {
                node: self.cfg.node_id,
                source: Box::new(source),
            })?;
        if initialized {
            info!(
                node_id = %self.cfg.node_id,
                "rejoining the cluster from the data directory"
            );
            return Ok(());
        }
        let me = self.cfg.node_id;
        let mut members = BTreeMap::new();
        members.insert(
            me,
            NodeInfo {
                cluster_addr: self.cfg.advertise.clone(),
                mqtt_addr: self.cfg.mqtt_addr.clone(),
            },
        );
        for (id, addr) in &self.cfg.seeds {
            members.entry(*id).or_insert_with(|| NodeInfo {
                cluster_addr: addr.clone(),
                mqtt_addr: String::new(),
            });
        }
        let lowest = members.keys().next().copied().unwrap_or(me);
        if lowest == me {
            info!(node_id = %me, members = ?members.keys().collect::<Vec<_>>(), "initialising a new cluster");
            match self.raft.initialize(members).await {
                Ok(()) => {}
                Err(RaftError::APIError(e)) => debug!(error = %e, "already initialised"),
                Err(RaftError::Fatal(source)) => {
                    return Err(StartError::Raft {
                        node: me,
                        source: Box::new(source),
                    })
                }
            }
        } else {
            info!(
                node_id = %me,
                initialiser = %lowest,
                "waiting to be added by the cluster (node {lowest} initialises it)"
            );
        }
        Ok(())
    }

    /// Adds a node as a voter (through the leader).
    pub async fn join(
        &self,
        id: NodeId,
        cluster_addr: String,
        mqtt_addr: String,
    ) -> Result<(), ClusterError> {
        let leader = self.leader_or_err()?;
        if leader == self.cfg.node_id {
            return self.join_local(id, cluster_addr, mqtt_addr).await;
        }
        let peer = self
            .peer(leader)
            .ok_or_else(|| ClusterError::peer(leader, "leader unknown"))?;
        let mut client = peer.client.clone();
        let reply = client
            .join(pb::JoinRequest {
                node_id: id.get(),
                cluster_addr,
                mqtt_addr,
            })
            .await
            .map_err(|s| ClusterError::peer(leader, s.message()))?
            .into_inner();
        if reply.error.is_empty() {
            Ok(())
        } else {
            Err(ClusterError::rejected(reply.error))
        }
    }

    async fn join_local(
        &self,
        id: NodeId,
        cluster_addr: String,
        mqtt_addr: String,
    ) -> Result<(), ClusterError> {
        let node = NodeInfo {
            cluster_addr,
            mqtt_addr,
        };
        let limit = self.cfg.commit_timeout * 4;
        let work = async {
            self.raft
                .add_learner(id, node, true)
                .await
                .map_err(ClusterError::from_raft)?;
            let voters = BTreeSet::from([id]);
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(voters), false)
                .await
                .map_err(ClusterError::from_raft)?;
            Ok(())
        };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => Err(ClusterError::timeout(limit)),
        }
    }

    /// Removes a node (through the leader) and forgets its routes and sessions.
    pub async fn leave(&self, id: NodeId) -> Result<(), ClusterError> {
        let leader = self.leader_or_err()?;
        if leader == self.cfg.node_id {
            self.leave_local(id).await?;
        } else {
            let peer = self
                .peer(leader)
                .ok_or_else(|| ClusterError::peer(leader, "leader unknown"))?;
            let mut client = peer.client.clone();
            let reply = client
                .leave(pb::LeaveRequest { node_id: id.get() })
                .await
                .map_err(|s| ClusterError::peer(leader, s.message()))?
                .into_inner();
            if !reply.error.is_empty() {
                return Err(ClusterError::rejected(reply.error));
            }
        }
        self.propose(Command::ForgetNode { node: id }).await?;
        self.peers.lock().remove(&id);
        Ok(())
    }

    pub(super) async fn leave_local(&self, id: NodeId) -> Result<(), ClusterError> {
        let voters = BTreeSet::from([id]);
        let limit = self.cfg.commit_timeout * 2;
        match tokio::time::timeout(
            limit,
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(voters), false),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ClusterError::from_raft(e)),
            Err(_) => Err(ClusterError::timeout(limit)),
        }
    }

    fn leader_or_err(&self) -> Result<NodeId, ClusterError> {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .ok_or(ClusterError::timeout(Duration::ZERO))
    }

    /// This node's view, with each member's health checked by a short status call.
    pub async fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut members = Vec::new();
        for (id, node) in membership.nodes() {
            let (healthy, mqtt_addr) = if *id == self.cfg.node_id {
                (true, self.cfg.mqtt_addr.clone())
            } else {
                self.probe(*id).await
            };
            let mqtt_addr = if mqtt_addr.is_empty() {
                node.mqtt_addr.clone()
            } else {
                mqtt_addr
            };
            members.push(MemberStatus {
                node_id: *id,
                cluster_addr: node.cluster_addr.clone(),
                mqtt_addr,
                voter: voters.contains(id),
                healthy,
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .and_then(|l| l.as_ref().map(|l| l.index)),
            });
        }
        let (routes, sessions, retained) = {
            let s = self.state.read();
            let snap = s.snapshot();
            (
                snap.routes.values().map(|n| n.len()).sum(),
                snap.sessions.len(),
                snap.retained.len(),
            )
        };
        ClusterStatus {
            node_id: self.cfg.node_id,
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            state: server_state(m.state).to_owned(),
            members,
            routes,
            sessions,
            retained,
        }
    }

    async fn probe(&self, id: NodeId) -> (bool, String) {
        let Some(peer) = self.peer(id) else {
            return (false, String::new());
        };
        let mut client = peer.client.clone();
        let mut req = Request::new(pb::StatusRequest {});
        req.set_timeout(Duration::from_millis(500));
        match client.status(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let mqtt = r
                    .members
                    .iter()
                    .find(|m| m.node_id == id.get())
                    .map(|m| m.mqtt_addr.clone())
                    .unwrap_or_default();
                (true, mqtt)
            }
            Err(_) => (false, String::new()),
        }
    }
}

pub(super) fn server_state(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    }
}
