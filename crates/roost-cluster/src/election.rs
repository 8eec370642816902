//! When this node stands for leader: elections with a pre-vote round, on openraft 0.9
//! (docs/rfcs/0004-pre-vote-and-failover-timing.md).
//!
//! openraft 0.9 has no pre-vote. A follower that stopped hearing from its leader (paused,
//! partitioned) bumps its term when its election timer fires; when it comes back, the leader's
//! next AppendEntries to it is answered with that higher vote and the leader steps down, though
//! the rest of the cluster was healthy. openraft's leader lease stops such a node from *winning*
//! (voters refuse it while they hear from their leader), not from deposing the leader.
//!
//! So openraft's own election timer is off (`Config::enable_elect = false`) and [`Election::run`]
//! decides instead:
//!
//! ```text
//!  every tick (heartbeat / 4, 10..50 ms):
//!    leader, or not a voter ─────────────────────────────▶ nothing
//!    heard from a leader within lease + jitter ──────────▶ nothing     (lease = election max)
//!    (no committed leader: within election min + jitter)
//!    only voter ─────────────────────────────────────────▶ raft.trigger().elect()
//!    else PreVote{term, last log id} ──▶ every other voter
//!          a majority (of each joint config, self included) grants ─▶ raft.trigger().elect()
//!          otherwise: no state changed; ask again after election min + jitter
//! ```
//!
//! A voter grants a pre-vote ([`Election::answer`]) only when it has no live leader itself (a
//! follower: no AppendEntries from a committed leader within the lease; a leader: no quorum
//! acknowledgement within it) and the candidate's last log id is at least its own — the checks
//! openraft's real vote makes, without changing the term or the vote. A node that comes back
//! from a pause therefore asks, is refused by members that still hear from the leader, and
//! follows the leader's next heartbeat at its old term: nothing is deposed.
//!
//! The lease is openraft's own (`leader_lease` = `election_timeout_max`): a real vote is refused
//! within it anyway, so a pre-vote granted past it is one the real vote also grants (unless a
//! heartbeat arrives in between, the usual pre-vote race).
//!
//! **Leader hand-off** (a graceful stop, issue 11; openraft 0.9 has no leader transfer): the
//! stopping leader, after its last proposal, retires from elections here and sends one
//! up-to-date voter Raft's `TimeoutNow` (thesis §3.10) ([`Election::hand_off`]); that voter
//! stands at once, skipping the pre-vote ([`Election::answer_timeout_now`]):
//!
//! ```text
//!  leader L (term T, retired) ── TimeoutNow{L, T, last log id} ──▶ voter V: follows L at T,
//!        log >= L's? ── raft.trigger().elect(): Vote{T+1, V} ──▶ L and the others
//!  L grants (its own vote is not renewed by heartbeats, so past the lease since L was elected
//!  it grants at once; the others refuse, their lease runs) ─▶ V has a majority with L ─▶ V
//!  leads at T+1, L follows it ─▶ L's hand_off sees the new leader and returns
//! ```
//!
//! Every step is a real Raft vote, so nothing is bypassed: a voter that refuses only costs time.
//! openraft refuses any vote within the lease after its own vote was last renewed, and a
//! leader's is renewed only when it is elected: a leader elected less than a lease ago first
//! waits, leading, until its own vote can go to V. Should V still lose (a longer log
//! appeared meanwhile), V's higher term makes L step down on its next AppendEntries reply and
//! V wins the pre-vote round an election timeout later with L's grant (L has no live leader
//! any more). `hand_off` is bounded by its caller.
//!
//! Concurrency: one driver task per node (spawned by `Cluster::start`, ended by the cluster's
//! `stop` watch or when Raft shuts down); [`Election::answer`] is called from the gRPC server's
//! tasks. Both read Raft's state through `Raft::with_raft_state` and the log store; neither
//! holds a lock across an await.

use crate::network::Dialer;
use crate::store::LogStore;
use crate::types::{NodeId, TypeConfig};
use openraft::storage::RaftLogStorage;
use openraft::{LogId, Raft, ServerState};
use parking_lot::Mutex;
use roost_proto::v1::raft_client::RaftClient;
use roost_proto::v1::RaftPayload;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::{debug, info};

/// The timing the election driver uses; the same numbers openraft is configured with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ElectionTiming {
    /// The leader's heartbeat interval (`cluster.heartbeat_ms`); the driver ticks at a quarter
    /// of it (see `tick`).
    pub heartbeat: Duration,
    /// `cluster.election_timeout_ms`: how long a node without a committed leader waits.
    pub min: Duration,
    /// Twice `min`: openraft's leader lease, within which a voter refuses any vote.
    pub max: Duration,
}

impl ElectionTiming {
    /// The leader lease: a follower that heard from its leader within it still follows it.
    pub(crate) fn lease(&self) -> Duration {
        self.max
    }

    /// How often the driver looks: a quarter heartbeat, between 10 and 50 ms (it adds up to
    /// one tick to a failover).
    fn tick(&self) -> Duration {
        (self.heartbeat / 4).clamp(Duration::from_millis(10), Duration::from_millis(50))
    }

    /// A random delay in `[0, (max - min) / 2)`, so that nodes which lost their leader together
    /// do not all stand at once (250 ms of spread by default: two survivors of a 3-node
    /// cluster asking within the same round trip of a few ms is rare, and costs a retry).
    fn jitter(&self) -> Duration {
        let spread = (self.max.saturating_sub(self.min) / 2).as_millis();
        let spread = u64::try_from(spread).unwrap_or(u64::MAX);
        if spread == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(crate::random_u64(0) % spread)
    }
}

/// "Would you vote for me at `term + 1`?" Sent before a candidate bumps its term.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PreVoteRequest {
    /// The node asking.
    pub candidate: NodeId,
    /// Its current term (it would stand at the next one).
    pub term: u64,
    /// Its last log id: a voter with a longer log refuses, as its real vote would.
    pub last_log_id: Option<LogId<NodeId>>,
}

/// The answer to a [`PreVoteRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PreVoteResponse {
    /// True if the voter has no live leader and the candidate's log is at least its own.
    pub granted: bool,
    /// The voter's current term (for logs; a pre-vote never changes anyone's term).
    pub term: u64,
}

/// "Stand now": a leader that is stopping asks an up-to-date voter to stand at once (Raft's
/// TimeoutNow, thesis §3.10), so the cluster is not without a leader for an election timeout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct TimeoutNowRequest {
    /// The leader asking.
    pub leader: NodeId,
    /// Its term: a voter that follows another term's leader (or none) ignores the request.
    pub term: u64,
    /// Its last log id: the voter stands only with a log at least as long (else it would lose).
    pub last_log_id: Option<LogId<NodeId>>,
}

/// The answer to a [`TimeoutNowRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct TimeoutNowResponse {
    /// It stood for election at its next term.
    pub standing: bool,
    /// Its term when asked.
    pub term: u64,
}

/// What a voter knows when a leader asks it to stand now.
#[derive(Debug, Clone, Copy)]
struct FollowerView {
    state: ServerState,
    voter: bool,
    /// Its vote's term, the node the vote names, and whether that node leads (committed).
    term: u64,
    voted_for: Option<NodeId>,
    committed: bool,
    last_log_id: Option<LogId<NodeId>>,
}

/// The rule for a TimeoutNow: a voting follower of exactly that leader at exactly that term
/// (a late or stray request cannot unseat a newer leader), with a log at least as long.
fn stands_now(v: &FollowerView, req: &TimeoutNowRequest) -> bool {
    v.voter
        && v.state == ServerState::Follower
        && v.committed
        && v.term == req.term
        && v.voted_for == Some(req.leader)
        && v.last_log_id.as_ref() >= req.last_log_id.as_ref()
}

/// Which voter a stopping leader hands leadership to: one whose replicated log reaches the
/// leader's last index (`matched`), the `prefer`red first in their order (peers that answer and
/// are not stopping themselves), then the others in id order; one not `tried` yet, else the
/// first again.
fn hand_off_target(
    voters: &[NodeId],
    matched: impl Fn(NodeId) -> Option<u64>,
    last_index: Option<u64>,
    prefer: &[NodeId],
    tried: &[NodeId],
) -> Option<NodeId> {
    let caught_up = |id: &NodeId| last_index.is_some() && matched(*id) == last_index;
    let mut order: Vec<NodeId> = prefer
        .iter()
        .copied()
        .filter(|id| voters.contains(id))
        .collect();
    let mut rest: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|id| !prefer.contains(id))
        .collect();
    rest.sort_unstable();
    order.extend(rest);
    order.retain(caught_up);
    order
        .iter()
        .copied()
        .find(|id| !tried.contains(id))
        .or_else(|| order.first().copied())
}

/// What a voter knows when it answers a pre-vote.
#[derive(Debug, Clone, Copy)]
struct VoterView {
    /// It is the leader, and a quorum acknowledged it this long ago (`None`: never).
    leading: Option<Option<Duration>>,
    /// Its vote is committed (it follows an elected leader).
    committed: bool,
    /// How long ago its vote was last granted or renewed by a leader's AppendEntries.
    since_contact: Option<Duration>,
    last_log_id: Option<LogId<NodeId>>,
}

/// The voter's rule: no live leader here, and the candidate's log is at least as long.
fn grants(v: &VoterView, candidate_last_log: Option<&LogId<NodeId>>, lease: Duration) -> bool {
    let live_leader = match v.leading {
        Some(quorum_ack) => quorum_ack.is_some_and(|a| a <= lease),
        None => v.committed && v.since_contact.is_some_and(|d| d <= lease),
    };
    !live_leader && candidate_last_log >= v.last_log_id.as_ref()
}

/// What the driver reads from Raft on each tick.
#[derive(Debug, Clone)]
struct CandidateView {
    state: ServerState,
    voter: bool,
    /// The voter sets (two while a membership change is joint).
    joint: Vec<Vec<NodeId>>,
    /// Other voters and their cluster addresses.
    peers: Vec<(NodeId, String)>,
    committed: bool,
    term: u64,
    since_contact: Option<Duration>,
}

/// What the driver does on a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Wait,
    /// Ask the other voters first.
    PreVote,
    /// The only voter: stand at once.
    Elect,
}

/// The driver's rule. `jitter` is drawn per attempt; `since_attempt` is how long ago the last
/// pre-vote round (that changed nothing) was.
fn decide(
    v: &CandidateView,
    t: &ElectionTiming,
    jitter: Duration,
    since_attempt: Option<Duration>,
) -> Step {
    if v.state == ServerState::Leader || !v.voter {
        return Step::Wait;
    }
    let single = v.joint.iter().all(|set| set.len() <= 1);
    if single {
        return if v.state == ServerState::Candidate {
            Step::Wait
        } else {
            Step::Elect
        };
    }
    let patience = if v.committed { t.lease() } else { t.min } + jitter;
    if v.since_contact.is_some_and(|d| d < patience) {
        return Step::Wait;
    }
    if since_attempt.is_some_and(|d| d < t.min + jitter) {
        return Step::Wait;
    }
    Step::PreVote
}

/// True if `granted` (self included) is a majority of every voter set.
fn won(joint: &[Vec<NodeId>], granted: &[NodeId]) -> bool {
    joint.iter().all(|set| {
        let yes = set.iter().filter(|id| granted.contains(id)).count();
        yes * 2 > set.len()
    })
}

/// This node's elections: the pre-vote driver and the answers to peers' pre-votes.
pub(crate) struct Election {
    me: NodeId,
    raft: Raft<TypeConfig>,
    /// A clone of the log store, for this node's last log id (openraft 0.9 does not expose it).
    /// Taken out by [`Election::close`], so a shut-down node does not hold its data file.
    log: Mutex<Option<LogStore>>,
    timing: ElectionTiming,
    /// gRPC message limit for the Raft service (`WireLimits::raft_grpc`).
    grpc_limit: usize,
    /// Makes the channels to peers (plaintext or mutual TLS).
    dialer: Dialer,
    /// Clients to peers, by id, with the address they were made for.
    clients: Mutex<HashMap<NodeId, (String, RaftClient<Channel>)>>,
    /// When this node last heard from a committed leader: set by the Raft service when openraft
    /// accepts an AppendEntries ([`Election::leader_heard`]) and on every tick from openraft's
    /// vote time. openraft 0.9 keeps naming a silent leader until the vote changes, which
    /// pre-vote prevents on a cut-off follower: readiness reads this instead.
    contact: Mutex<Option<Instant>>,
    /// The highest commit index a leader's accepted AppendEntries (heartbeats included) told
    /// this node ([`Election::leader_committed`]): openraft 0.9's metrics do not show a
    /// follower its leader's commit, and readiness compares the applied index with it.
    leader_commit: AtomicU64,
    /// Set by [`Election::hand_off`] (a graceful stop): this node stands no more, and refuses
    /// a TimeoutNow. It still answers pre-votes: its vote may be the one that makes the new
    /// leader.
    retired: AtomicBool,
}

impl Election {
    pub(crate) fn new(
        me: NodeId,
        raft: Raft<TypeConfig>,
        log: LogStore,
        timing: ElectionTiming,
        grpc_limit: usize,
        dialer: Dialer,
    ) -> Election {
        Election {
            me,
            raft,
            log: Mutex::new(Some(log)),
            timing,
            grpc_limit,
            dialer,
            clients: Mutex::new(HashMap::new()),
            contact: Mutex::new(None),
            leader_commit: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        }
    }

    /// True if this node, as a follower or learner, heard from a committed leader within the
    /// lease.
    pub(crate) fn follows_live_leader(&self) -> bool {
        self.contact
            .lock()
            .is_some_and(|t| t.elapsed() <= self.timing.lease())
    }

    /// Records that openraft accepted an AppendEntries from its leader just now.
    pub(crate) fn leader_heard(&self) {
        self.heard_at(Instant::now());
    }

    /// Records the commit index of an AppendEntries openraft accepted. Kept as a maximum: the
    /// cluster's commit index never goes back (a new leader may first send a lower one).
    pub(crate) fn leader_committed(&self, index: u64) {
        self.leader_commit.fetch_max(index, Ordering::Relaxed);
    }

    /// The highest commit index heard from a leader (0: none yet).
    pub(crate) fn leader_commit(&self) -> u64 {
        self.leader_commit.load(Ordering::Relaxed)
    }

    fn heard_at(&self, t: Instant) {
        let mut c = self.contact.lock();
        if c.is_none_or(|old| t > old) {
            *c = Some(t);
        }
    }

    /// Lets go of the log store (at shutdown; later pre-votes are refused by a stopped Raft).
    pub(crate) fn close(&self) {
        self.log.lock().take();
    }

    /// This node's last log id (`Some(None)`: an empty log); `None` when it cannot be read
    /// (closed, or a storage error: openraft reports those itself), and then no pre-vote is
    /// granted or asked for.
    async fn last_log_id(&self) -> Option<Option<LogId<NodeId>>> {
        let mut log = self.log.lock().clone()?;
        match log.get_log_state().await {
            Ok(s) => Some(s.last_log_id),
            Err(e) => {
                debug!(error = %e, "cannot read the last log id for a pre-vote");
                None
            }
        }
    }

    /// Answers a peer's pre-vote. Changes nothing here; refuses when Raft is shutting down.
    pub(crate) async fn answer(&self, req: &PreVoteRequest) -> PreVoteResponse {
        let quorum_ack = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader == Some(self.me))
                .then(|| m.millis_since_quorum_ack.map(Duration::from_millis))
        };
        let state = self
            .raft
            .with_raft_state(|s| {
                let now = Instant::now();
                (
                    s.vote_ref().committed,
                    s.vote_ref().leader_id.term,
                    s.vote_last_modified()
                        .map(|t| now.saturating_duration_since(t)),
                    s.server_state == ServerState::Leader,
                )
            })
            .await;
        let refused = PreVoteResponse {
            granted: false,
            term: 0,
        };
        let Ok((committed, term, since_contact, leader)) = state else {
            return refused;
        };
        let Some(last_log_id) = self.last_log_id().await else {
            return PreVoteResponse { term, ..refused };
        };
        let view = VoterView {
            // Raft's state says leader but its metrics do not yet (just elected): live.
            leading: leader.then(|| quorum_ack.unwrap_or(Some(Duration::ZERO))),
            committed,
            since_contact,
            last_log_id,
        };
        let granted = grants(&view, req.last_log_id.as_ref(), self.timing.lease());
        debug!(
            candidate = %req.candidate,
            candidate_term = req.term,
            term,
            granted,
            ?view,
            "pre-vote answered"
        );
        PreVoteResponse { granted, term }
    }

    async fn view(&self) -> Option<CandidateView> {
        let me = self.me;
        self.raft
            .with_raft_state(move |s| {
                let m = s.membership_state.effective();
                let now = Instant::now();
                CandidateView {
                    state: s.server_state,
                    voter: m.voter_ids().any(|v| v == me),
                    joint: m.get_joint_config().clone(),
                    peers: m
                        .voter_ids()
                        .filter(|v| *v != me)
                        .filter_map(|v| m.get_node(&v).map(|n| (v, n.cluster_addr.clone())))
                        .collect(),
                    committed: s.vote_ref().committed,
                    term: s.vote_ref().leader_id.term,
                    since_contact: s
                        .vote_last_modified()
                        .map(|t| now.saturating_duration_since(t)),
                }
            })
            .await
            .ok()
    }

    fn client(&self, id: NodeId, addr: &str) -> Option<RaftClient<Channel>> {
        let mut clients = self.clients.lock();
        if let Some((a, c)) = clients.get(&id) {
            if a == addr {
                return Some(c.clone());
            }
        }
        let c = RaftClient::new(self.dialer.channel(id, addr).ok()?)
            .max_decoding_message_size(self.grpc_limit)
            .max_encoding_message_size(self.grpc_limit);
        clients.insert(id, (addr.to_owned(), c.clone()));
        Some(c)
    }

    /// Asks every other voter; returns the ids that granted (this node included).
    async fn pre_vote(&self, v: &CandidateView) -> Vec<NodeId> {
        let Some(last_log_id) = self.last_log_id().await else {
            return vec![self.me];
        };
        let req = PreVoteRequest {
            candidate: self.me,
            term: v.term,
            last_log_id,
        };
        let Ok(data) = postcard::to_allocvec(&req) else {
            return vec![self.me];
        };
        let mut asks = JoinSet::new();
        for (id, addr) in &v.peers {
            let Some(mut c) = self.client(*id, addr) else {
                continue;
            };
            let mut r = tonic::Request::new(RaftPayload { data: data.clone() });
            r.set_timeout(self.timing.min);
            let id = *id;
            asks.spawn(async move {
                let answer = match c.pre_vote(r).await {
                    Ok(reply) => postcard::from_bytes::<PreVoteResponse>(&reply.into_inner().data)
                        .map_err(|e| e.to_string()),
                    Err(s) => Err(s.to_string()),
                };
                (id, answer)
            });
        }
        let mut granted = vec![self.me];
        while let Some(done) = asks.join_next().await {
            let Ok((id, answer)) = done else { continue };
            match answer {
                Ok(a) if a.granted => granted.push(id),
                Ok(a) => debug!(peer = %id, peer_term = a.term, "pre-vote refused"),
                Err(e) => debug!(peer = %id, error = %e, "pre-vote not answered"),
            }
            if won(&v.joint, &granted) {
                break;
            }
        }
        granted
    }

    /// This node is stopping: it stands no more and refuses a TimeoutNow (it still answers
    /// pre-votes and votes).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Answers a leader's TimeoutNow: stands for election at once ([`stands_now`] decides),
    /// without a pre-vote round (the leader is stepping aside, and its own vote is needed).
    pub(crate) async fn answer_timeout_now(&self, req: &TimeoutNowRequest) -> TimeoutNowResponse {
        let me = self.me;
        let state = self
            .raft
            .with_raft_state(move |s| {
                let vote = s.vote_ref();
                (
                    s.server_state,
                    s.membership_state.effective().voter_ids().any(|v| v == me),
                    vote.leader_id.term,
                    vote.leader_id.voted_for(),
                    vote.committed,
                )
            })
            .await;
        let refused = TimeoutNowResponse {
            standing: false,
            term: 0,
        };
        let Ok((state, voter, term, voted_for, committed)) = state else {
            return refused;
        };
        let refused = TimeoutNowResponse { term, ..refused };
        if self.retired.load(Ordering::Acquire) {
            debug!(leader = %req.leader, "timeout-now refused: this node is stopping");
            return refused;
        }
        let Some(last_log_id) = self.last_log_id().await else {
            return refused;
        };
        let view = FollowerView {
            state,
            voter,
            term,
            voted_for,
            committed,
            last_log_id,
        };
        if !stands_now(&view, req) {
            debug!(leader = %req.leader, leader_term = req.term, ?view, "timeout-now refused");
            return refused;
        }
        info!(
            leader = %req.leader,
            term,
            "the leader is stopping and hands over: standing for election now"
        );
        match self.raft.trigger().elect().await {
            Ok(()) => TimeoutNowResponse {
                standing: true,
                term,
            },
            Err(_) => refused,
        }
    }

    /// On the leader, at a graceful stop after its last proposal: retires this node from
    /// elections and asks an up-to-date voter to stand now (TimeoutNow, module docs), `prefer`
    /// first, another one if it refuses, the same again after an election timeout (max) without
    /// a new leader. Returns the new leader once this node knows it, `None` when this node does
    /// not lead (and no other leader is known) or at `limit`.
    pub(crate) async fn hand_off(&self, prefer: &[NodeId], limit: Duration) -> Option<NodeId> {
        self.retire();
        let deadline = Instant::now() + limit;
        let mut metrics = self.raft.metrics();
        let mut tried: Vec<NodeId> = Vec::new();
        let mut asked_at: Option<Instant> = None;
        loop {
            let m = metrics.borrow_and_update().clone();
            match m.current_leader {
                Some(l) if l != self.me => return Some(l),
                Some(_) => {}
                // Stepped down (a voter's higher term): the election goes on without us.
                None if tried.is_empty() => return None,
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let leading = m.state == ServerState::Leader;
            let due = asked_at.is_none_or(|t| now.duration_since(t) >= self.timing.max);
            if leading && due && self.own_vote_grantable().await {
                let membership = m.membership_config.membership();
                let voters: Vec<NodeId> =
                    membership.voter_ids().filter(|v| *v != self.me).collect();
                let matched = |id: NodeId| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id))
                        .and_then(|l| l.as_ref().map(|l| l.index))
                };
                let target = hand_off_target(&voters, matched, m.last_log_index, prefer, &tried);
                let addr =
                    target.and_then(|t| membership.get_node(&t).map(|n| n.cluster_addr.clone()));
                if let (Some(target), Some(addr)) = (target, addr) {
                    tried.push(target);
                    if self.timeout_now(target, &addr, m.current_term).await {
                        asked_at = Some(Instant::now());
                    }
                }
            }
            let wait = self
                .timing
                .tick()
                .min(deadline.saturating_duration_since(now));
            if let Ok(Err(_)) = tokio::time::timeout(wait, metrics.changed()).await {
                return None;
            }
        }
    }

    /// Whether this node's own vote would go to a candidate now: openraft refuses any vote
    /// within the lease after the vote was last renewed, and a leader's is renewed only when it
    /// is elected. A leader elected less than a lease ago waits (it still leads meanwhile) so
    /// that the voter it asks wins at once with its vote, rather than failing and leaving the
    /// cluster to a pre-vote round an election timeout later. A tick of margin for the
    /// voter's request on its way.
    async fn own_vote_grantable(&self) -> bool {
        let since = self
            .raft
            .with_raft_state(|s| {
                s.vote_last_modified()
                    .map(|t| Instant::now().saturating_duration_since(t))
            })
            .await;
        match since {
            Ok(Some(since)) => since > self.timing.lease() + self.timing.tick(),
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Sends `target` a TimeoutNow for `term`; true if it stood.
    async fn timeout_now(&self, target: NodeId, addr: &str, term: u64) -> bool {
        let Some(last_log_id) = self.last_log_id().await else {
            return false;
        };
        let req = TimeoutNowRequest {
            leader: self.me,
            term,
            last_log_id,
        };
        let Ok(data) = postcard::to_allocvec(&req) else {
            return false;
        };
        let Some(mut c) = self.client(target, addr) else {
            return false;
        };
        let mut r = tonic::Request::new(RaftPayload { data });
        r.set_timeout(self.timing.min);
        let answer = match c.timeout_now(r).await {
            Ok(reply) => postcard::from_bytes::<TimeoutNowResponse>(&reply.into_inner().data)
                .map_err(|e| e.to_string()),
            Err(s) => Err(s.to_string()),
        };
        match answer {
            Ok(a) if a.standing => {
                info!(to = %target, term, "raft leadership: asked an up-to-date voter to stand now");
                true
            }
            Ok(a) => {
                debug!(peer = %target, peer_term = a.term, "timeout-now refused");
                false
            }
            Err(e) => {
                debug!(peer = %target, error = %e, "timeout-now not answered");
                false
            }
        }
    }

    /// The driver: see the module docs. Returns when `stop` turns true or Raft shuts down.
    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let t = self.timing;
        let mut jitter = t.jitter();
        let mut last_attempt: Option<Instant> = None;
        let mut tick = tokio::time::interval(t.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if self.retired.load(Ordering::Acquire) {
                continue;
            }
            let Some(v) = self.view().await else {
                return;
            };
            if v.committed && v.state != ServerState::Leader {
                if let Some(at) = v.since_contact.and_then(|d| Instant::now().checked_sub(d)) {
                    self.heard_at(at);
                }
            }
            let since_attempt = last_attempt.map(|a| a.elapsed());
            match decide(&v, &t, jitter, since_attempt) {
                Step::Wait => continue,
                Step::Elect => {
                    info!(
                        term = v.term,
                        "only voter without a leader: standing for election"
                    );
                    if self.raft.trigger().elect().await.is_err() {
                        return;
                    }
                }
                Step::PreVote => {
                    let granted = self.pre_vote(&v).await;
                    if won(&v.joint, &granted) {
                        info!(
                            term = v.term,
                            ?granted,
                            since_contact = ?v.since_contact,
                            "pre-vote won: standing for election"
                        );
                        if self.raft.trigger().elect().await.is_err() {
                            return;
                        }
                    } else {
                        debug!(term = v.term, ?granted, "pre-vote lost: not standing");
                    }
                }
            }
            last_attempt = Some(Instant::now());
            jitter = t.jitter();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    const T: ElectionTiming = ElectionTiming {
        heartbeat: Duration::from_millis(100),
        min: Duration::from_millis(500),
        max: Duration::from_millis(1000),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn log(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(
            CommittedLeaderId::new(term, NodeId::new(1)),
            index,
        ))
    }

    fn follower(since_contact: Option<u64>) -> VoterView {
        VoterView {
            leading: None,
            committed: true,
            since_contact: since_contact.map(ms),
            last_log_id: log(2, 10),
        }
    }

    #[test]
    fn a_follower_that_hears_its_leader_refuses() {
        assert!(!grants(&follower(Some(50)), log(2, 10).as_ref(), T.lease()));
        assert!(!grants(
            &follower(Some(1000)),
            log(2, 10).as_ref(),
            T.lease()
        ));
        // Past the lease: no live leader.
        assert!(grants(
            &follower(Some(1001)),
            log(2, 10).as_ref(),
            T.lease()
        ));
        // Never heard from one since start (openraft's "no utime").
        assert!(grants(&follower(None), log(2, 10).as_ref(), T.lease()));
    }

    #[test]
    fn a_shorter_log_is_refused_a_longer_one_granted() {
        let v = follower(None);
        assert!(!grants(&v, log(2, 9).as_ref(), T.lease()));
        assert!(!grants(&v, log(1, 20).as_ref(), T.lease()));
        assert!(!grants(&v, None, T.lease()));
        assert!(grants(&v, log(3, 1).as_ref(), T.lease()));
        assert!(grants(&v, log(2, 11).as_ref(), T.lease()));
    }

    #[test]
    fn a_leader_refuses_while_a_quorum_acknowledges_it() {
        let mut v = follower(Some(5000));
        v.leading = Some(Some(ms(20)));
        assert!(!grants(&v, log(2, 10).as_ref(), T.lease()));
        // Cut off from its quorum for longer than the lease: the others may elect.
        v.leading = Some(Some(ms(1500)));
        assert!(grants(&v, log(2, 10).as_ref(), T.lease()));
        v.leading = Some(None);
        assert!(grants(&v, log(2, 10).as_ref(), T.lease()));
    }

    #[test]
    fn an_uncommitted_vote_is_no_leader() {
        let mut v = follower(Some(10));
        v.committed = false;
        assert!(grants(&v, log(2, 10).as_ref(), T.lease()));
    }

    fn candidate(state: ServerState, committed: bool, since_contact: Option<u64>) -> CandidateView {
        let ids = |v: &[u64]| v.iter().copied().map(NodeId::new).collect::<Vec<_>>();
        CandidateView {
            state,
            voter: true,
            joint: vec![ids(&[1, 2, 3])],
            peers: vec![],
            committed,
            term: 3,
            since_contact: since_contact.map(ms),
        }
    }

    #[test]
    fn a_follower_asks_only_after_the_lease_and_its_jitter() {
        let f = |since| candidate(ServerState::Follower, true, since);
        assert_eq!(decide(&f(Some(900)), &T, ms(0), None), Step::Wait);
        assert_eq!(decide(&f(Some(1000)), &T, ms(0), None), Step::PreVote);
        assert_eq!(decide(&f(Some(1200)), &T, ms(300), None), Step::Wait);
        assert_eq!(decide(&f(Some(1300)), &T, ms(300), None), Step::PreVote);
        assert_eq!(decide(&f(None), &T, ms(300), None), Step::PreVote);
        // A failed round changed nothing: wait an election timeout before the next.
        assert_eq!(decide(&f(None), &T, ms(100), Some(ms(550))), Step::Wait);
        assert_eq!(decide(&f(None), &T, ms(100), Some(ms(600))), Step::PreVote);
    }

    #[test]
    fn without_a_committed_leader_the_minimum_timeout_applies() {
        let c = candidate(ServerState::Candidate, false, Some(600));
        assert_eq!(decide(&c, &T, ms(0), None), Step::PreVote);
        assert_eq!(decide(&c, &T, ms(200), None), Step::Wait);
    }

    #[test]
    fn leaders_learners_and_lone_voters() {
        let l = candidate(ServerState::Leader, true, None);
        assert_eq!(decide(&l, &T, ms(0), None), Step::Wait);
        let mut learner = candidate(ServerState::Learner, true, None);
        learner.voter = false;
        assert_eq!(decide(&learner, &T, ms(0), None), Step::Wait);
        let mut lone = candidate(ServerState::Follower, true, Some(1));
        lone.joint = vec![vec![NodeId::new(1)]];
        assert_eq!(decide(&lone, &T, ms(0), None), Step::Elect);
        lone.state = ServerState::Candidate;
        assert_eq!(decide(&lone, &T, ms(0), None), Step::Wait);
    }

    #[test]
    fn a_majority_of_every_joint_config_wins() {
        let n = NodeId::new;
        let one = vec![vec![n(1), n(2), n(3)]];
        assert!(!won(&one, &[n(1)]));
        assert!(won(&one, &[n(1), n(3)]));
        let joint = vec![vec![n(1), n(2), n(3)], vec![n(1), n(4), n(5)]];
        assert!(!won(&joint, &[n(1), n(2)]));
        assert!(won(&joint, &[n(1), n(2), n(4)]));
    }

    fn follower_of(leader: u64, term: u64, last: Option<LogId<NodeId>>) -> FollowerView {
        FollowerView {
            state: ServerState::Follower,
            voter: true,
            term,
            voted_for: Some(NodeId::new(leader)),
            committed: true,
            last_log_id: last,
        }
    }

    fn stand(leader: u64, term: u64, last: Option<LogId<NodeId>>) -> TimeoutNowRequest {
        TimeoutNowRequest {
            leader: NodeId::new(leader),
            term,
            last_log_id: last,
        }
    }

    #[test]
    fn a_follower_stands_now_only_for_its_own_leader_and_term_with_a_full_log() {
        let v = follower_of(1, 2, log(2, 10));
        assert!(stands_now(&v, &stand(1, 2, log(2, 10))));
        assert!(stands_now(&v, &stand(1, 2, log(2, 9))));
        // Behind the leader: it would lose the election.
        assert!(!stands_now(&v, &stand(1, 2, log(2, 11))));
        // Another leader, or a term it has left: a stray or late request.
        assert!(!stands_now(&v, &stand(3, 2, log(2, 10))));
        assert!(!stands_now(&v, &stand(1, 1, log(2, 10))));
        assert!(!stands_now(&v, &stand(1, 3, log(2, 10))));
        let mut candidate = v;
        candidate.committed = false;
        assert!(!stands_now(&candidate, &stand(1, 2, log(2, 10))));
        let mut learner = v;
        learner.voter = false;
        learner.state = ServerState::Learner;
        assert!(!stands_now(&learner, &stand(1, 2, log(2, 10))));
        let mut leader = v;
        leader.state = ServerState::Leader;
        assert!(!stands_now(&leader, &stand(1, 2, log(2, 10))));
    }

    #[test]
    fn the_hand_off_goes_to_a_caught_up_voter_preferred_first() {
        let n = NodeId::new;
        let voters = [n(2), n(3), n(4)];
        let matched = |id: NodeId| match id.get() {
            2 => Some(9),
            3 | 4 => Some(10),
            _ => None,
        };
        // Node 2 lags: never chosen; the lowest caught-up id without a preference.
        assert_eq!(
            hand_off_target(&voters, matched, Some(10), &[], &[]),
            Some(n(3))
        );
        assert_eq!(
            hand_off_target(&voters, matched, Some(10), &[n(2), n(4)], &[]),
            Some(n(4))
        );
        // Refused: the next one; all tried: round again.
        assert_eq!(
            hand_off_target(&voters, matched, Some(10), &[], &[n(3)]),
            Some(n(4))
        );
        assert_eq!(
            hand_off_target(&voters, matched, Some(10), &[], &[n(3), n(4)]),
            Some(n(3))
        );
        assert_eq!(hand_off_target(&voters, matched, Some(11), &[], &[]), None);
        assert_eq!(hand_off_target(&[], matched, Some(10), &[], &[]), None);
        // A preferred node that is not a voter (a learner) is not asked.
        assert_eq!(
            hand_off_target(&[n(3)], matched, Some(10), &[n(4)], &[]),
            Some(n(3))
        );
    }

    #[test]
    fn pre_vote_messages_round_trip() {
        let req = PreVoteRequest {
            candidate: NodeId::new(2),
            term: 7,
            last_log_id: log(7, 42),
        };
        let bytes = postcard::to_allocvec(&req).unwrap_or_default();
        assert_eq!(
            postcard::from_bytes::<PreVoteRequest>(&bytes).ok(),
            Some(req)
        );
    }
}
