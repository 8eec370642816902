//! Membership and introspection: bootstrap on first start, `join` and `leave` through the
//! leader, readiness ([`Cluster::readiness`], what `/readyz` answers), and `status` with a
//! short health probe of each member, plus the [`ClusterStatus`] and [`MemberStatus`] it
//! reports.
//!
//! Bootstrap, on a node whose data directory holds no Raft state (`seeds` are `ID@HOST:PORT`,
//! this node may be among them):
//!
//! ```text
//!  lowest id among seeds + self? ──yes──▶ initialise: every seed and self are the voters
//!        │ no
//!  listed in seeds? ──yes──▶ wait: the initialiser's membership names it (or `roost ctl join`)
//!        │ no
//!  self-join: Join(self, advertise, mqtt) to the seeds in turn (a follower passes it on to
//!  the leader: learner, caught up, voter), backoff 200 ms doubling to 5 s, until this node
//!  sees itself a voter or stops
//! ```
//!
//! So the pods of a StatefulSet whose seeds name ordinals 0..2 form the cluster (ordinal 0
//! initialises it), and ordinals 3, 4, ... added later join by themselves. A node with Raft
//! state rejoins as it was and asks nothing; only one left a learner (stopped between the two
//! steps of its join) asks again to be made a voter. `join` is idempotent: a node already a
//! voter at that address is not changed, so a retried self-join and a `roost ctl join` of a
//! node that joined by itself both succeed.
//!
//! Who calls it: `Cluster::start` (bootstrap); the node's admin HTTP API, which `roost ctl`
//! talks to (join, leave, status) and which asks [`Cluster::readiness`] for `/readyz`; the
//! gRPC service for peers' `Join`, `Leave` calls (a follower passes a change on to the leader).
//!
//! Concurrency: plain async methods on `Cluster`, run by whichever task asks, and one self-join
//! task per joining node (spawned by bootstrap; it holds the cluster weakly and ends with the
//! `stop` watch). Membership changes go through openraft, which serialises them (one that
//! finds another in progress waits 50 ms and tries again); each is bounded by a multiple of
//! `commit_timeout`. `status` probes the members one after another, 500 ms each at most.

use super::Cluster;
use crate::error::{ClusterError, StartError};
use crate::types::{Command, NodeId, NodeInfo};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use roost_proto::v1 as pb;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Request;
use tracing::{debug, info, warn};

/// First wait between a joining node's attempts; it doubles after each failure up to
/// [`JOIN_BACKOFF_MAX`].
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait between a joining node's attempts.
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A joining node that is still not a member after this long says so at WARN (once): the
/// seeds are unreachable, or the cluster has no leader.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

/// How far a follower's applied index may be behind its leader's commit index and still be
/// ready: about three full AppendEntries (`max_payload_entries` = 300), what a healthy
/// follower may have accepted and not yet applied at a busy moment. A node back from a restart
/// or replaying a snapshot is usually far more behind, and stays out of the Service until it
/// has caught up.
pub const READY_MAX_LAG: u64 = 1000;

/// Why a node is not ready to serve clients ([`Cluster::readiness`]; `/readyz` answers 503
/// with it). The first that holds, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Not a voter of the cluster it knows: waiting for the initialiser or to be added (a
    /// self-join in progress, still a learner), or removed.
    NotMember,
    /// No live leader: none known, or this node leads without a quorum's acknowledgement
    /// within twice the election timeout, or as a follower it has not heard from its leader
    /// within that time ([`Cluster::has_leader`]).
    NoLeader,
    /// Its state machine is more than [`READY_MAX_LAG`] entries behind the leader's commit.
    Behind {
        /// Last log index applied here.
        applied: u64,
        /// The leader's commit index, as its last AppendEntries said.
        committed: u64,
    },
    /// No session lease: no quorum confirmed this node within `session_lease` (it refuses
    /// CONNECTs meanwhile; a node whose state machine stalls loses it too).
    NoLease,
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::NotMember => f.write_str("not a voting member of the cluster (yet)"),
            NotReady::NoLeader => f.write_str("no live raft leader"),
            NotReady::NoLease => f.write_str("no session lease (no quorum confirmed this node)"),
            NotReady::Behind { applied, committed } => write!(
                f,
                "catching up: applied index {applied}, leader's commit index {committed}"
            ),
        }
    }
}

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
    /// First start: initialise, wait, or ask to be added (module docs). Returns at once; a
    /// self-join goes on in a task of its own.
    pub(super) async fn bootstrap(self: &Arc<Self>) -> Result<(), StartError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|source| StartError::Raft {
                node: self.cfg.node_id,
                source: Box::new(source),
            })?;
        let me = self.cfg.node_id;
        if initialized {
            if self.is_learner() {
                info!(node_id = %me, "rejoining as a learner: asking to be made a voter");
                self.spawn_self_join();
            } else {
                info!(node_id = %me, "rejoining the cluster from the data directory");
            }
            return Ok(());
        }
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
        } else if self.cfg.seeds.iter().any(|(id, _)| *id == me) {
            info!(
                node_id = %me,
                initialiser = %lowest,
                "waiting to be added by the cluster (node {lowest} initialises it)"
            );
        } else {
            info!(
                node_id = %me,
                seeds = ?self.cfg.seeds.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                "not among the seeds: asking the cluster to add this node"
            );
            self.spawn_self_join();
        }
        Ok(())
    }

    /// True if this node is in its own view of the membership as a learner, not a voter.
    fn is_learner(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let me = self.cfg.node_id;
        membership.get_node(&me).is_some() && !membership.voter_ids().any(|v| v == me)
    }

    /// True if this node is a voter in its own view of the membership.
    fn is_voter(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let me = self.cfg.node_id;
        m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == me)
    }

    fn spawn_self_join(self: &Arc<Self>) {
        let seeds: Vec<(NodeId, String)> = self
            .cfg
            .seeds
            .iter()
            .filter(|(id, _)| *id != self.cfg.node_id)
            .cloned()
            .collect();
        if seeds.is_empty() {
            warn!(node_id = %self.cfg.node_id, "no seed to ask: add this node with `roost ctl join`");
            return;
        }
        tokio::spawn(self_join(
            Arc::downgrade(self),
            seeds,
            self.stop.subscribe(),
        ));
    }

    /// One `Join` of this node, asked of the seed `seed` at `addr` (a follower passes it on to
    /// its leader). Bounded by the leader's own bound on a join plus a margin.
    async fn ask_to_join(&self, seed: NodeId, addr: &str) -> Result<(), ClusterError> {
        let ch = self
            .dialer
            .channel(seed, addr)
            .map_err(|e| ClusterError::peer(seed, e))?;
        let mut client = self.cluster_client(ch);
        let mut req = Request::new(pb::JoinRequest {
            node_id: self.cfg.node_id.get(),
            cluster_addr: self.cfg.advertise.clone(),
            mqtt_addr: self.cfg.mqtt_addr.clone(),
        });
        req.set_timeout(self.cfg.commit_timeout * 4 + Duration::from_secs(2));
        let reply = client
            .join(req)
            .await
            .map_err(|s| ClusterError::peer(seed, s.message()))?
            .into_inner();
        if reply.error.is_empty() {
            Ok(())
        } else {
            Err(ClusterError::peer(seed, reply.error))
        }
    }

    /// Whether this node can serve clients now, and if not, why (what `/readyz` reports): it
    /// is a voter, a live leader is known ([`has_leader`](Self::has_leader)), on a follower
    /// its applied index is within [`READY_MAX_LAG`] of the leader's commit index (a leader has
    /// every committed entry), and it holds its session lease. Cheap: no Raft call.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let me = self.cfg.node_id;
        let (voter, leading, applied) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == me),
                m.current_leader == Some(me),
                m.last_applied.map_or(0, |l| l.index),
            )
        };
        if !voter {
            return Err(NotReady::NotMember);
        }
        if !self.has_leader() {
            return Err(NotReady::NoLeader);
        }
        let committed = self.election.leader_commit();
        if !leading && committed > applied.saturating_add(READY_MAX_LAG) {
            return Err(NotReady::Behind { applied, committed });
        }
        if !self.holds_lease() {
            return Err(NotReady::NoLease);
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
        if self.is_voter_at(id, &cluster_addr) {
            // Asked again: a self-join retried, or `roost ctl join` of a node that joined by
            // itself. Nothing to change.
            debug!(node = %id, "join: already a voter at that address");
            return Ok(());
        }
        let node = NodeInfo {
            cluster_addr,
            mqtt_addr,
        };
        let limit = self.cfg.commit_timeout * 4;
        let work = async {
            loop {
                match self.add_voter(id, node.clone()).await {
                    // Another change (another node joining) is not committed yet.
                    Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                        ChangeMembershipError::InProgress(_),
                    ))) => tokio::time::sleep(Duration::from_millis(50)).await,
                    r => return r.map_err(ClusterError::from_raft),
                }
            }
        };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => Err(ClusterError::timeout(limit)),
        }
    }

    /// Adds `id` as a learner, waits until it has caught up, then makes it a voter.
    async fn add_voter(
        &self,
        id: NodeId,
        node: NodeInfo,
    ) -> Result<(), RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>> {
        self.raft.add_learner(id, node, true).await?;
        let voters = BTreeSet::from([id]);
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(voters), false)
            .await?;
        Ok(())
    }

    /// True if `id` is a voter recorded at `cluster_addr`.
    fn is_voter_at(&self, id: NodeId, cluster_addr: &str) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        membership.voter_ids().any(|v| v == id)
            && membership
                .get_node(&id)
                .is_some_and(|n| n.cluster_addr == cluster_addr)
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

/// A node not among the seeds asks them, in turn, to add it (module docs), until it sees itself
/// a voter or the cluster stops. Each failure doubles the wait (200 ms to 5 s); one accepted
/// join resets it and waits (a commit timeout at most) for the membership to reach this node.
async fn self_join(
    cluster: Weak<Cluster>,
    seeds: Vec<(NodeId, String)>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut backoff = JOIN_BACKOFF_MIN;
    let mut warned = false;
    let mut attempt = 0usize;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(c) = cluster.upgrade() else { return };
        let me = c.cfg.node_id;
        if c.is_voter() {
            info!(node_id = %me, after = ?started.elapsed(), "added to the cluster as a voter");
            return;
        }
        let (seed, addr) = &seeds[attempt % seeds.len()];
        attempt += 1;
        // Cancel safety: a join dropped at shutdown may still complete on the leader, which
        // is harmless (the node is a member that is not running, as after any stop).
        let asked = tokio::select! {
            r = c.ask_to_join(*seed, addr) => r,
            _ = stop.changed() => return,
        };
        match asked {
            Ok(()) => {
                backoff = JOIN_BACKOFF_MIN;
                let wait = c.raft.wait(Some(c.cfg.commit_timeout));
                let added = wait.metrics(
                    |m| {
                        m.membership_config
                            .membership()
                            .voter_ids()
                            .any(|v| v == me)
                    },
                    "this node is a voter",
                );
                let voter = tokio::select! {
                    r = added => r.is_ok(),
                    _ = stop.changed() => return,
                };
                if voter {
                    info!(node_id = %me, via = %seed, after = ?started.elapsed(), "added to the cluster as a voter");
                    return;
                }
                debug!(node_id = %me, via = %seed, "join accepted, membership not here yet");
            }
            Err(e) => {
                if !warned && started.elapsed() > JOIN_PATIENCE {
                    warned = true;
                    warn!(node_id = %me, seed = %seed, addr, error = %e, after = ?started.elapsed(), "still not a member of the cluster: retrying");
                } else {
                    debug!(node_id = %me, seed = %seed, addr, error = %e, "join not accepted: retrying");
                }
                backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
            }
        }
        drop(c);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
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
