//! One node's membership in the cluster: the local `Raft`, the gRPC server for peers, the
//! clients to peers, and the publish forwarders (docs/rfcs/0002).
//!
//! ```text
//!             ┌──────────────────────── Cluster ──────────────────────────┐
//!  node ─────▶│ propose(cmd) ─ leader? client_write : Cluster.Propose(leader) │
//!  node ─────▶│ forward(peer, msg) ─▶ Forwarder task per peer ─▶ Forward stream │──▶ peers
//!  node ─────▶│ take_session(owner, id) ─▶ Cluster.TakeSession              │
//!             │ gRPC server: Raft.* → Raft;  Cluster.* → ClusterService ─▶ LocalNode (node)
//!             └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! The node implements [`LocalNode`]: delivering forwarded messages into its sessions, handing
//! over a session, and reacting to applied events (a claim that fences a local session).

use crate::convert::{self, SessionTransfer};
use crate::error::{ClusterError, StartError};
use crate::metrics::ClusterStats;
use crate::network::{channel, RaftNet, RaftService};
use crate::state::{ClusterState, Event};
use crate::store::{self, StateHooks};
use crate::types::{Command, CommandResponse, NodeId, NodeInfo, TypeConfig};
use openraft::error::{ClientWriteError, RaftError};
use openraft::metrics::WaitError;
use openraft::{ChangeMembers, Raft, ServerState};
use parking_lot::{Mutex, RwLock};
use roost_core::message::Message;
use roost_core::topic::TopicFilter;
use roost_core::ClientId;
use roost_proto::v1 as pb;
use roost_proto::v1::cluster_client::ClusterClient;
use roost_proto::v1::cluster_server::{self, ClusterServer};
use roost_proto::v1::raft_server::RaftServer;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

/// How long `wait_replicated` skips a peer that did not confirm an entry in time.
const SLOW_PEER_BACKOFF: Duration = Duration::from_secs(10);
/// Messages per forwarded batch, at most.
const MAX_BATCH: usize = 256;
/// Messages waiting for one peer's forwarder. Beyond it QoS 0 is dropped, QoS 1/2 waits.
const FORWARD_QUEUE: usize = 8192;
/// QoS 1/2 messages sent to a peer and not yet acknowledged, kept for resending after a
/// reconnect. Beyond it the oldest are given up (and counted).
const MAX_UNACKED: usize = 65_536;

/// Settings of the cluster layer (from `[cluster]` in the node's config).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Address the cluster gRPC server binds.
    pub listen: SocketAddr,
    /// Address peers use to reach it (defaults to `listen`).
    pub advertise: String,
    /// This node's MQTT address, recorded in its membership entry.
    pub mqtt_addr: String,
    /// Initial members (`id`, cluster address); may include this node.
    pub seeds: Vec<(NodeId, String)>,
    /// Where `raft.redb` lives.
    pub data_dir: PathBuf,
    /// Leader heartbeat.
    pub heartbeat: Duration,
    /// Minimum election timeout (the maximum is twice this).
    pub election_timeout: Duration,
    /// Upper bound on waiting for a peer to accept a forwarded message or hand over a session.
    pub forward_timeout: Duration,
    /// Upper bound on waiting for a proposal to commit.
    pub commit_timeout: Duration,
}

/// A boxed future, for [`LocalNode`]'s async method.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the cluster layer needs from the node it runs in.
pub trait LocalNode: Send + Sync + 'static {
    /// Delivers a message forwarded by a peer to local sessions only (never re-forwards):
    /// matching non-shared subscriptions if `direct`, and one local member of each shared
    /// subscription in `shared` (filters from the peer that failed to parse were dropped and
    /// counted before this call).
    fn deliver(&self, msg: Arc<Message>, direct: bool, shared: &[TopicFilter]);
    /// Hands over a local session to the node that now owns `generation` of it: the old
    /// connection is closed with DISCONNECT 0x8E and the session removed here.
    fn take_session(
        &self,
        client_id: ClientId,
        generation: u64,
    ) -> BoxFuture<Option<SessionTransfer>>;
    /// Reacts to an applied entry (called in log order; must not block).
    fn on_event(&self, event: &Event);
}

struct Hooks(Arc<dyn LocalNode>);

impl StateHooks for Hooks {
    fn on_event(&self, event: &Event) {
        self.0.on_event(event);
    }
}

/// A message waiting for a peer's forwarder.
struct Outgoing {
    msg: Arc<Message>,
    direct: bool,
    shared: Vec<TopicFilter>,
    /// Resolved when the peer accepted it into its sessions (QoS 1/2 only).
    ack: Option<oneshot::Sender<()>>,
}

struct Peer {
    addr: String,
    client: ClusterClient<Channel>,
    forward: mpsc::Sender<Outgoing>,
    /// The forwarder's stream to it is established (false while it reconnects).
    up: Arc<std::sync::atomic::AtomicBool>,
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

/// This node's membership in the cluster. See the module docs.
pub struct Cluster {
    cfg: ClusterConfig,
    raft: Raft<TypeConfig>,
    state: Arc<RwLock<ClusterState>>,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
    stats: Arc<ClusterStats>,
    stop: watch::Sender<bool>,
    /// Peers that recently did not confirm an entry in time, until when to stop waiting for
    /// them (`wait_replicated`).
    slow: Arc<Mutex<HashMap<NodeId, Instant>>>,
    /// Members in the current membership, kept up to date by a watcher so the publish path
    /// can ask "any peers?" without touching Raft's metrics.
    members: Arc<std::sync::atomic::AtomicUsize>,
}

impl Cluster {
    /// Opens the Raft store, starts the gRPC server, and joins or bootstraps the cluster.
    pub async fn start(
        mut cfg: ClusterConfig,
        local: Arc<dyn LocalNode>,
    ) -> Result<Arc<Cluster>, StartError> {
        let bind_err = |source| StartError::Bind {
            addr: cfg.listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(bind_err)?;
        if cfg.advertise.is_empty() {
            cfg.advertise = listener.local_addr().map_err(bind_err)?.to_string();
        }
        let (log, sm) = store::open(&cfg.data_dir, Arc::new(Hooks(local.clone()))).await?;
        let state = sm.state();
        let heartbeat = u64::try_from(cfg.heartbeat.as_millis()).unwrap_or(100);
        let election = u64::try_from(cfg.election_timeout.as_millis()).unwrap_or(1000);
        let raft_config = openraft::Config {
            cluster_name: "roost".to_owned(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        }
        .validate()?;
        let raft = Raft::new(cfg.node_id, Arc::new(raft_config), RaftNet, log, sm)
            .await
            .map_err(|source| StartError::Raft {
                node: cfg.node_id,
                source: Box::new(source),
            })?;

        let (stop, mut stop_rx) = watch::channel(false);
        let stats = Arc::new(ClusterStats::default());
        let cluster = Arc::new(Cluster {
            cfg: cfg.clone(),
            raft: raft.clone(),
            state,
            peers: Mutex::new(HashMap::new()),
            slow: Arc::new(Mutex::new(HashMap::new())),
            members: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
            stats: stats.clone(),
            stop,
        });
        let service = ClusterService {
            cluster: Arc::downgrade(&cluster),
            raft: raft.clone(),
            local,
            stats,
            stop: stop_rx.clone(),
        };
        // No Nagle on accepted connections either: forwarded batches, acks and Raft RPCs are
        // small and latency-bound (with Nagle and delayed ACKs a cross-node round trip took
        // ~45 ms on loopback).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(RaftServer::new(RaftService::new(raft)))
                .add_service(ClusterServer::new(service))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop_rx.changed().await;
                })
                .await;
            if let Err(e) = r {
                warn!(error = %e, "cluster gRPC server stopped");
            }
        });
        let members = Arc::clone(&cluster.members);
        let mut metrics = cluster.raft.metrics();
        tokio::spawn(async move {
            loop {
                let n = metrics
                    .borrow()
                    .membership_config
                    .membership()
                    .nodes()
                    .count();
                members.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
        cluster.bootstrap().await?;
        Ok(cluster)
    }

    async fn bootstrap(&self) -> Result<(), StartError> {
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

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// The address peers reach this node at.
    pub fn advertise(&self) -> &str {
        &self.cfg.advertise
    }

    /// The local copy of the replicated state.
    pub fn state(&self) -> &Arc<RwLock<ClusterState>> {
        &self.state
    }

    /// True if this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.cfg.node_id)
    }

    /// True when the cluster has members besides this node (cheap: no Raft call).
    pub fn has_peers(&self) -> bool {
        self.members.load(std::sync::atomic::Ordering::Relaxed) > 1
    }

    /// Number of voting members.
    pub fn voter_count(&self) -> usize {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count()
    }

    /// True if a leader is known and, when that is this node, a quorum acknowledged it
    /// recently: an isolated leader (openraft 0.9 does not step down by itself) is not ready.
    pub fn has_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            None => false,
            Some(l) if l == self.cfg.node_id => {
                let voters = m.membership_config.membership().voter_ids().count();
                let limit =
                    u64::try_from(self.cfg.election_timeout.as_millis()).unwrap_or(1000) * 2;
                voters <= 1 || m.millis_since_quorum_ack.is_some_and(|ms| ms < limit)
            }
            Some(_) => true,
        }
    }

    /// Commits a command (on the leader, or through it) and waits until this node applied it.
    /// Returns the log index and the state machine's response.
    pub async fn propose(&self, cmd: Command) -> Result<(u64, CommandResponse), ClusterError> {
        let limit = self.cfg.commit_timeout;
        let r = tokio::time::timeout(limit, self.propose_inner(cmd)).await;
        let (index, resp) = match r {
            Ok(r) => r?,
            Err(_) => return Err(ClusterError::timeout(limit)),
        };
        self.wait_applied(index, limit).await?;
        Ok((index, resp))
    }

    async fn propose_inner(&self, cmd: Command) -> Result<(u64, CommandResponse), ClusterError> {
        let mut backoff = Duration::from_millis(20);
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            match leader {
                Some(l) if l == self.cfg.node_id => match self.raft.client_write(cmd.clone()).await
                {
                    Ok(r) => return Ok((r.log_id.index, r.data)),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {}
                    Err(e) => return Err(ClusterError::from_raft(e)),
                },
                Some(l) => {
                    if let Some(r) = self.propose_remote(l, &cmd).await? {
                        return Ok(r);
                    }
                }
                None => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// `Ok(None)`: try again (the leader moved or is unreachable right now).
    async fn propose_remote(
        &self,
        leader: NodeId,
        cmd: &Command,
    ) -> Result<Option<(u64, CommandResponse)>, ClusterError> {
        let Some(peer) = self.peer(leader) else {
            return Ok(None);
        };
        let command = postcard::to_allocvec(cmd)
            .map_err(|e| ClusterError::rejected(format!("cannot encode command: {e}")))?;
        let mut client = peer.client.clone();
        let reply = match client.propose(pb::ProposeRequest { command }).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                debug!(leader = %leader, error = %s, "propose to leader failed");
                return Ok(None);
            }
        };
        if !reply.error.is_empty() {
            debug!(leader = %leader, error = %reply.error, "leader refused proposal");
            return Ok(None);
        }
        let resp: CommandResponse = postcard::from_bytes(&reply.response)
            .map_err(|e| ClusterError::peer(leader, format!("undecodable response: {e}")))?;
        Ok(Some((reply.log_index, resp)))
    }

    /// Waits until this node's state machine applied `index`.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> Result<(), ClusterError> {
        self.raft
            .wait(Some(limit))
            .applied_index_at_least(Some(index), "proposal applied locally")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                WaitError::Timeout(..) => ClusterError::timeout(limit),
                WaitError::ShuttingDown => {
                    ClusterError::Fatal(Box::new(openraft::error::Fatal::Stopped))
                }
            })
    }

    /// Waits until every reachable member has applied `index`, so a SUBACK is sent only when
    /// a publish on any node will see the route. Each peer is asked once (`Cluster.Applied`,
    /// the peer waits on its side); a peer that cannot be reached or does not catch up within
    /// `forward_timeout` is skipped: it is down or partitioned, and applies the entry when it
    /// returns.
    pub async fn wait_replicated(&self, index: u64) {
        let members: Vec<NodeId> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| *id != self.cfg.node_id)
                .collect()
        };
        // A healthy peer applies a committed entry within about a heartbeat; one that has not
        // within an election timeout is down or cut off.
        let wait = self.cfg.forward_timeout.min(self.cfg.election_timeout);
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(1_000);
        let mut calls = Vec::new();
        for id in members {
            if self
                .slow
                .lock()
                .get(&id)
                .is_some_and(|until| Instant::now() < *until)
            {
                // It recently failed to confirm: do not make every SUBACK wait for it again.
                continue;
            }
            let Some(peer) = self.peer(id) else { continue };
            let mut client = peer.client.clone();
            let slow = Arc::clone(&self.slow);
            calls.push(async move {
                let mut req = Request::new(pb::AppliedRequest {
                    min_index: index,
                    wait_ms,
                });
                req.set_timeout(Duration::from_millis(wait_ms + 250));
                let caught_up = match client.applied(req).await {
                    Ok(r) => r.into_inner().applied_index >= index,
                    Err(e) => {
                        debug!(peer = %id, error = %e, "peer did not confirm a route entry");
                        false
                    }
                };
                let mut slow = slow.lock();
                if caught_up {
                    slow.remove(&id);
                } else {
                    slow.insert(id, Instant::now() + SLOW_PEER_BACKOFF);
                }
            });
        }
        let handles: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
        for h in handles {
            let _ = h.await;
        }
    }

    fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
        let addr = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.cluster_addr.clone())
        }?;
        let mut peers = self.peers.lock();
        if let Some(p) = peers.get(&id) {
            if p.addr == addr {
                return Some(p.clone());
            }
        }
        let ch = match channel(&addr) {
            Ok(c) => c,
            Err(e) => {
                warn!(peer = %id, addr, error = %e, "bad peer address");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let peer = Arc::new(Peer {
            addr: addr.clone(),
            client: ClusterClient::new(ch.clone()),
            forward: tx,
            up: up.clone(),
        });
        tokio::spawn(run_forwarder(
            self.cfg.node_id,
            id,
            ClusterClient::new(ch),
            rx,
            self.stats.clone(),
            self.stop.subscribe(),
            up,
        ));
        peers.insert(id, peer.clone());
        Some(peer)
    }

    /// False while this node's forwarder cannot reach `node` (shared groups skip it). A peer
    /// never forwarded to is presumed up.
    pub fn peer_up(&self, node: NodeId) -> bool {
        self.peers
            .lock()
            .get(&node)
            .is_none_or(|p| p.up.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Hands a message to `node`'s forwarder. For QoS 1/2 the returned receiver resolves when
    /// the peer accepted it into its sessions. When the peer's queue is full, QoS 0 is dropped
    /// (counted) and QoS 1/2 waits for room, at most `forward_timeout`.
    pub async fn forward(
        &self,
        node: NodeId,
        msg: Arc<Message>,
        direct: bool,
        shared: Vec<TopicFilter>,
    ) -> Option<oneshot::Receiver<()>> {
        let qos0 = msg.qos == roost_codec::QoS::AtMostOnce;
        let Some(peer) = self.peer(node) else {
            // The route names a node that is no longer a member (its routes are being
            // forgotten): the message cannot go there. Counted, never silent.
            if qos0 {
                self.stats.forward_dropped.increment(1);
            } else {
                self.stats.forward_given_up.increment(1);
            }
            return None;
        };
        let (ack, rx) = if qos0 {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let item = Outgoing {
            msg,
            direct,
            shared,
            ack,
        };
        self.stats.forwarded.increment(1);
        if qos0 {
            if peer.forward.try_send(item).is_err() {
                self.stats.forward_dropped.increment(1);
            }
            return None;
        }
        match tokio::time::timeout(self.cfg.forward_timeout, peer.forward.send(item)).await {
            Ok(Ok(())) => rx,
            _ => {
                // The peer's queue stayed full for the whole forward timeout: this message is
                // not kept for it. Counted, never silent.
                self.stats.forward_given_up.increment(1);
                None
            }
        }
    }

    /// Asks `owner` for a session it held (after this node claimed it).
    pub async fn take_session(
        &self,
        owner: NodeId,
        client_id: &ClientId,
        generation: u64,
    ) -> Result<Option<SessionTransfer>, ClusterError> {
        let peer = self
            .peer(owner)
            .ok_or_else(|| ClusterError::peer(owner, "not a member"))?;
        let mut client = peer.client.clone();
        let mut req = Request::new(pb::TakeSessionRequest {
            client_id: client_id.as_str().to_owned(),
            generation,
            requester: self.cfg.node_id.get(),
        });
        req.set_timeout(self.cfg.forward_timeout);
        let reply = client
            .take_session(req)
            .await
            .map_err(|s| ClusterError::peer(owner, s.message()))?
            .into_inner();
        if !reply.found {
            return Ok(None);
        }
        let state = reply.session.unwrap_or_default();
        convert::transfer_from_wire(state, Instant::now().into_std())
            .map(Some)
            .map_err(|e| ClusterError::peer(owner, e))
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

    async fn leave_local(&self, id: NodeId) -> Result<(), ClusterError> {
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

    /// Stops the gRPC server, the forwarders and Raft.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
    }
}

fn server_state(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    }
}

/// Sends one peer its forwarded messages: batches on one long-lived stream, resends what was not
/// acknowledged after a reconnect.
async fn run_forwarder(
    origin: NodeId,
    peer: NodeId,
    client: ClusterClient<Channel>,
    mut rx: mpsc::Receiver<Outgoing>,
    stats: Arc<ClusterStats>,
    mut stop: watch::Receiver<bool>,
    up: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut unacked: BTreeMap<u64, Outgoing> = BTreeMap::new();
    let mut seq: u64 = 0;
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return;
        }
        let (btx, brx) = mpsc::channel::<pb::ForwardBatch>(16);
        let mut c = client.clone();
        let mut acks = match c.forward(ReceiverStream::new(brx)).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                up.store(false, Relaxed);
                debug!(peer = %peer, error = %e, "forward stream not established");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        up.store(true, Relaxed);
        // Resend what the previous stream left unacknowledged, in order.
        if !unacked.is_empty() {
            let now = Instant::now();
            let messages = unacked
                .iter()
                .map(|(s, o)| forwarded(*s, o, now))
                .collect::<Vec<_>>();
            for chunk in messages.chunks(MAX_BATCH) {
                let batch = pb::ForwardBatch {
                    origin_node: origin.get(),
                    messages: chunk.to_vec(),
                };
                if btx.send(batch).await.is_err() {
                    break;
                }
            }
        }
        loop {
            tokio::select! {
                item = rx.recv() => {
                    let Some(first) = item else { return };
                    let now = Instant::now();
                    let mut messages = Vec::with_capacity(8);
                    let mut next = Some(first);
                    while let Some(o) = next.take() {
                        seq += 1;
                        messages.push(forwarded(seq, &o, now));
                        if o.ack.is_some() {
                            unacked.insert(seq, o);
                            if unacked.len() > MAX_UNACKED {
                                unacked.pop_first();
                                stats.forward_given_up.increment(1);
                            }
                        }
                        if messages.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    let batch = pb::ForwardBatch { origin_node: origin.get(), messages };
                    if btx.send(batch).await.is_err() {
                        break;
                    }
                }
                ack = acks.message() => {
                    match ack {
                        Ok(Some(a)) => {
                            for s in a.seqs {
                                if let Some(o) = unacked.remove(&s) {
                                    if let Some(tx) = o.ack {
                                        let _ = tx.send(());
                                    }
                                }
                            }
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                _ = stop.changed() => return,
            }
        }
        debug!(
            peer = %peer,
            unacked = unacked.len(),
            "forward stream closed; reconnecting"
        );
        up.store(false, Relaxed);
    }
}

fn forwarded(seq: u64, o: &Outgoing, now: Instant) -> pb::ForwardedMessage {
    pb::ForwardedMessage {
        seq,
        message: Some(convert::message_to_wire(&o.msg, now.into_std())),
        direct: o.direct,
        shared_filters: convert::shared_filters_to_wire(&o.shared),
    }
}

/// Serves peers' `Cluster.*` calls.
struct ClusterService {
    cluster: std::sync::Weak<Cluster>,
    raft: Raft<TypeConfig>,
    local: Arc<dyn LocalNode>,
    stats: Arc<ClusterStats>,
    /// Set by [`Cluster::shutdown`]. The gRPC server's graceful shutdown waits for open streams
    /// instead of ending them, so each Forward stream watches this itself: a stopped node must
    /// not go on delivering and acknowledging, or the origin would never resend to its
    /// successor (a restart in the same process).
    stop: watch::Receiver<bool>,
}

impl ClusterService {
    /// A membership change's outcome, with the leader as this node knows it.
    fn membership_reply(&self, result: Result<(), ClusterError>) -> Response<pb::MembershipReply> {
        Response::new(pb::MembershipReply {
            error: result.err().map(|e| e.to_string()).unwrap_or_default(),
            leader_id: self
                .raft
                .metrics()
                .borrow()
                .current_leader
                .map_or(0, NodeId::get),
        })
    }
}

type AckStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ForwardAck, Status>> + Send>>;

#[tonic::async_trait]
impl cluster_server::Cluster for ClusterService {
    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeReply>, Status> {
        let cmd: Command = postcard::from_bytes(&request.into_inner().command)
            .map_err(|e| Status::invalid_argument(format!("undecodable command: {e}")))?;
        let reply = match self.raft.client_write(cmd).await {
            Ok(r) => pb::ProposeReply {
                log_index: r.log_id.index,
                response: postcard::to_allocvec(&r.data)
                    .map_err(|e| Status::internal(e.to_string()))?,
                error: String::new(),
                leader_id: self
                    .raft
                    .metrics()
                    .borrow()
                    .current_leader
                    .map_or(0, NodeId::get),
            },
            Err(e) => pb::ProposeReply {
                log_index: 0,
                response: Vec::new(),
                error: e.to_string(),
                leader_id: self
                    .raft
                    .metrics()
                    .borrow()
                    .current_leader
                    .map_or(0, NodeId::get),
            },
        };
        Ok(Response::new(reply))
    }

    type ForwardStream = AckStream;

    async fn forward(
        &self,
        request: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let mut stop = self.stop.clone();
        if *stop.borrow_and_update() {
            return Err(Status::unavailable("shutting down"));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let local = self.local.clone();
        let stats = self.stats.clone();
        tokio::spawn(async move {
            loop {
                // Cancel safety: `Streaming::message` keeps a partly read batch in `inbound`;
                // on stop the stream is dropped anyway and the origin resends what it lacks.
                let batch = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(batch)) => batch,
                        Ok(None) | Err(_) => break,
                    },
                    _ = stop.changed() => break,
                };
                let now = Instant::now();
                let mut seqs = Vec::new();
                for fm in batch.messages {
                    let Some(m) = fm.message else {
                        stats.received_invalid.increment(1);
                        continue;
                    };
                    let qos = m.qos;
                    match convert::message_from_wire(m, now.into_std()) {
                        Ok(msg) => {
                            stats.received.increment(1);
                            let shared =
                                convert::shared_filters_from_wire(fm.shared_filters, &stats);
                            local.deliver(Arc::new(msg), fm.direct, &shared);
                        }
                        Err(e) => {
                            stats.received_invalid.increment(1);
                            warn!(origin = batch.origin_node, error = %e, "dropping forwarded message");
                        }
                    }
                    // Acknowledge even an undecodable QoS 1/2 message: it will never decode,
                    // and the origin must not resend it forever (it is counted here).
                    if qos > 0 {
                        seqs.push(fm.seq);
                    }
                }
                if !seqs.is_empty() && tx.send(Ok(pb::ForwardAck { seqs })).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn take_session(
        &self,
        request: Request<pb::TakeSessionRequest>,
    ) -> Result<Response<pb::TakeSessionReply>, Status> {
        let r = request.into_inner();
        let t = self
            .local
            .take_session(ClientId::from(r.client_id), r.generation)
            .await;
        Ok(Response::new(match t {
            Some(t) => pb::TakeSessionReply {
                found: true,
                session: Some(convert::transfer_to_wire(&t, Instant::now().into_std())),
            },
            None => pb::TakeSessionReply {
                found: false,
                session: None,
            },
        }))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let r = request.into_inner();
        let Some(c) = self.cluster.upgrade() else {
            return Err(Status::unavailable("shutting down"));
        };
        let result = c
            .join(NodeId::new(r.node_id), r.cluster_addr, r.mqtt_addr)
            .await;
        Ok(self.membership_reply(result))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let r = request.into_inner();
        let Some(c) = self.cluster.upgrade() else {
            return Err(Status::unavailable("shutting down"));
        };
        let result = c.leave_local(NodeId::new(r.node_id)).await;
        Ok(self.membership_reply(result))
    }

    async fn applied(
        &self,
        request: Request<pb::AppliedRequest>,
    ) -> Result<Response<pb::AppliedReply>, Status> {
        let r = request.into_inner();
        let limit = Duration::from_millis(r.wait_ms.min(60_000));
        let _ = self
            .raft
            .wait(Some(limit))
            .applied_index_at_least(Some(r.min_index), "peer asked")
            .await;
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        Ok(Response::new(pb::AppliedReply {
            applied_index: applied,
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let Some(c) = self.cluster.upgrade() else {
            return Err(Status::unavailable("shutting down"));
        };
        let m = self.raft.metrics().borrow().clone();
        let (routes, sessions, retained) = {
            let s = c.state.read();
            let snap = s.snapshot();
            (
                snap.routes.values().map(|n| n.len() as u64).sum(),
                snap.sessions.len() as u64,
                snap.retained.len() as u64,
            )
        };
        Ok(Response::new(pb::StatusReply {
            node_id: c.cfg.node_id.get(),
            leader_id: m.current_leader.map(NodeId::get),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members: vec![pb::Member {
                node_id: c.cfg.node_id.get(),
                cluster_addr: c.cfg.advertise.clone(),
                mqtt_addr: c.cfg.mqtt_addr.clone(),
                voter: true,
                matched_index: None,
            }],
            routes,
            sessions,
            retained,
            state: server_state(m.state).to_owned(),
        }))
    }
}
