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
//!
//! Split by concern, all of it `impl Cluster` or owned by it:
//! - this file: [`Cluster`] and [`Cluster::start`], proposals (`propose`, `wait_applied`,
//!   `wait_replicated`), the cache of peer clients, the `forward` and `take_session` entries,
//!   and `shutdown`;
//! - `forwarder`: the per-peer outgoing queue and the task that batches it onto a stream;
//! - `dedup`: what peers' streams delivered here, so a resend is not delivered twice;
//! - `service`: the gRPC `Cluster.*` service peers call;
//! - `membership`: bootstrap on first start, join / leave, status and its health probes.
//!
//! Concurrency: the node holds an `Arc<Cluster>` and calls it from any task. Its maps (peers,
//! slow peers) sit behind `parking_lot` mutexes held for a lookup or an insert, never across an
//! await. `start` spawns the gRPC server, the election driver (`crate::election`: openraft's own
//! election timer is off), a watcher that keeps the member count current and the sampler of
//! the `roost_raft_*` gauges (`crate::raft_metrics`); each peer gets a forwarder task when
//! first needed. `shutdown` ends the server and the forwarders through the `stop` watch, and
//! the watcher and the sampler when Raft's metrics channel closes.
//!
//! With `ClusterConfig::tls` the gRPC server requires a client certificate from the cluster
//! CA and every channel to a peer is mutual TLS (`crate::tls`); each handler that names the
//! calling node checks it against the certificate (`network::RaftService`, `service`).

mod dedup;
mod forwarder;
mod lease;
mod membership;
mod service;

use self::forwarder::{run_forwarder, Forwarder, Outgoing};
use self::service::ClusterService;
use crate::convert::{self, Addressed, SessionTransfer};
use crate::election::{Election, ElectionTiming};
use crate::error::{ClusterError, Refusal, StartError};
use crate::limits::{WireLimits, SNAPSHOT_CHUNK};
use crate::metrics::ClusterStats;
use crate::network::{Dialer, RaftNet, RaftService};
use crate::state::{ClusterState, Event};
use crate::store::{self, StateHooks};
use crate::tls::{ClusterTls, PeerAuth, TlsMaterial};
use crate::types::{Command, CommandResponse, NodeId, TypeConfig};
use openraft::error::{ClientWriteError, RaftError};
use openraft::metrics::WaitError;
use openraft::Raft;
use parking_lot::{Mutex, RwLock};
use roost_core::message::Message;
use roost_core::topic::TopicFilter;
use roost_core::ClientId;
use roost_proto::v1 as pb;
use roost_proto::v1::cluster_client::ClusterClient;
use roost_proto::v1::cluster_server::ClusterServer;
use roost_proto::v1::raft_server::RaftServer;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Request;
use tracing::{debug, warn};

pub use membership::{ClusterStatus, MemberStatus, NotReady, READY_MAX_LAG};

/// Messages waiting for one peer's forwarder. Beyond it QoS 0 is dropped, QoS 1/2 waits.
const FORWARD_QUEUE: usize = 8192;

/// Why a peer did not accept a forwarded QoS 1/2 message: what the publisher's
/// acknowledgement must not hide (docs/architecture.md, "What an acknowledgement promises").
/// Each is counted where it happens (`roost_cluster_forward_given_up_total{reason}`,
/// `roost_cluster_forward_too_large_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotForwarded {
    /// The route names a node that is no longer a member (its routes are being forgotten).
    NotMember,
    /// The peer's forward queue stayed full for the whole `forward_timeout`.
    QueueFull,
    /// Sent, then given up before the peer acknowledged it, to keep the messages kept for
    /// resending within their bound (`MAX_UNACKED` messages, `WireLimits::unacked` bytes).
    ResendBound,
    /// Over `WireLimits::max_message`: no stream could carry it.
    TooLarge,
    /// The forwarder stopped (shutdown, or the peer's address changed) before the peer
    /// acknowledged it.
    Stopped,
    /// The peer refused it: it had to pass part of it on to the node a session moved to, and
    /// that node did not take it in time (docs/rfcs/0006).
    Refused,
}

impl NotForwarded {
    /// True when a bound refused the message (MQTT 5 reason 0x97 Quota exceeded); otherwise
    /// the publisher hears 0x80 Unspecified error.
    pub fn is_quota(self) -> bool {
        matches!(self, NotForwarded::QueueFull | NotForwarded::ResendBound)
    }
}

/// Resolves when a peer accepted a forwarded QoS 1/2 message into its sessions (`Ok`), or
/// with why it will not (`Err`). A closed channel (`RecvError`) means the forwarder ended
/// without answering: read it as [`NotForwarded::Stopped`].
pub type ForwardAck = oneshot::Receiver<Result<(), NotForwarded>>;

/// A peer that can take sessions now ([`Cluster::session_takers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTaker {
    /// Its id.
    pub node: NodeId,
    /// The MQTT address it reports for itself (its `mqtt.advertise`, else its bound
    /// listener), else the one recorded in the membership; empty when neither is known.
    pub mqtt_addr: String,
}

/// Settings of the cluster layer (from `[cluster]` in the node's config).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Address the cluster gRPC server binds.
    pub listen: SocketAddr,
    /// Address peers use to reach it (defaults to `listen`).
    pub advertise: String,
    /// This node's MQTT address, recorded in its membership entry and reported in `Status`:
    /// the address clients can reach (roost-node's `mqtt.advertise`, else the bound listener).
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
    /// The node's `mqtt.max_packet_size`: the largest message a client can hand this node.
    /// Every byte bound on what nodes send each other is derived from it ([`WireLimits`]), so
    /// all members must use the same value.
    pub max_packet_size: u32,
    /// The session lease (`cluster.session_lease_ms`): a node that has not confirmed with a
    /// quorum within it serves no MQTT client (see `lease`).
    pub session_lease: Duration,
    /// Mutual TLS between nodes (`crate::tls`). `None`: plaintext, and anyone who reaches
    /// `listen` can act as a member (keep it on a private network). With it, the files are
    /// read once at [`Cluster::start`] and every member must use TLS with the same CA.
    pub tls: Option<ClusterTls>,
}

/// A boxed future, for [`LocalNode`]'s async method.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Who a forwarded message is for on the receiving node.
#[derive(Debug)]
pub enum Target<'a> {
    /// Matching local subscriptions: the non-shared ones if `direct`, and one local member of
    /// each shared subscription in `shared` (filters from the peer that failed to parse were
    /// dropped and counted before the call).
    Subscribers {
        direct: bool,
        shared: &'a [TopicFilter],
    },
    /// One session that moved from the sender to this node while the message was on its way
    /// (docs/rfcs/0006).
    Session(Addressed),
}

/// What [`LocalNode::deliver`] did with a message.
#[derive(Default)]
pub struct Delivered {
    /// Part of it goes on to other nodes (a session that moved on, a shared group no member
    /// here took), in two steps. The outer future hands it on (to the forwarders, or to the
    /// session's queue of pass-ons waiting for it here); the Forward stream runs these one at
    /// a time in the order the messages came, so what goes on keeps its order (docs/rfcs/0006).
    /// The [`Answer`] it yields resolves to whether they took it: the message counts as
    /// accepted only once that is `true`; `false` (not taken within the forward timeout)
    /// leaves it unacknowledged, so the origin's publisher hears a failure. That wait runs on
    /// a task of its own, and the stream goes on with the next message (see `service`).
    pub passed_on: Option<BoxFuture<Answer>>,
    /// A connected local subscriber is backing up: resolves when it has room again (bounded
    /// by the node's backpressure timeout).
    pub space: Option<BoxFuture<()>>,
}

/// The second step of [`Delivered::passed_on`]: whether the nodes the message went on to
/// took it.
pub struct Answer(pub BoxFuture<bool>);

/// What the cluster layer needs from the node it runs in.
pub trait LocalNode: Send + Sync + 'static {
    /// Delivers a message forwarded by a peer to local sessions only (see [`Target`]); never
    /// re-forwards it, except to pass it on to the node a matching session moved to.
    ///
    /// Backpressure: when a connected subscriber's queue is backing up, [`Delivered::space`]
    /// ends when the subscriber has room again. The Forward stream acknowledges what it
    /// delivered, then awaits it before delivering the next message, so the origin's
    /// publisher, whose PUBACK waits for that acknowledgement, is slowed as it would be by a
    /// local subscriber (issue 7 item 4).
    fn deliver(&self, msg: Arc<Message>, target: Target<'_>) -> Delivered;
    /// Hands over a local session to `requester`, the node that now owns `generation` of it:
    /// the old connection is closed with DISCONNECT 0x8E and the session removed here
    /// (messages that still reach it here for a while are passed on to `requester`).
    fn take_session(
        &self,
        client_id: ClientId,
        generation: u64,
        requester: NodeId,
    ) -> BoxFuture<Option<SessionTransfer>>;
    /// Which of `sessions` (client id, the generation a hand-over to this node was for) this
    /// node has not taken in yet: an attach or adoption of the client still runs here, or
    /// this node has not applied that generation. Indices into `sessions`. A session taken
    /// in, moved on since, or found with nothing to hold is not pending. Asked by a stopping
    /// node before it takes its routes away ([`Cluster::sessions_pending`]); must not block.
    fn sessions_pending(&self, sessions: &[(ClientId, u64)]) -> Vec<usize>;
    /// Reacts to an applied entry (called in log order; must not block).
    fn on_event(&self, event: &Event);
    /// A graceful stop is under way here (reported to peers in `Status`: they move no
    /// sessions to this node).
    fn draining(&self) -> bool {
        false
    }
}

struct Hooks(Arc<dyn LocalNode>);

impl StateHooks for Hooks {
    fn on_event(&self, event: &Event) {
        self.0.on_event(event);
    }
}

struct Peer {
    addr: String,
    client: ClusterClient<Channel>,
    forward: mpsc::Sender<Outgoing>,
    /// The forwarder's stream to it is established and the peer is acknowledging: false
    /// while it reconnects, and while a message has waited `forward_timeout` for an
    /// acknowledgement with none coming (a peer cut off without the connection breaking).
    up: Arc<std::sync::atomic::AtomicBool>,
}

/// This node's membership in the cluster. See the module docs.
pub struct Cluster {
    cfg: ClusterConfig,
    /// Byte bounds derived from `cfg.max_packet_size`.
    limits: WireLimits,
    raft: Raft<TypeConfig>,
    state: Arc<RwLock<ClusterState>>,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
    stats: Arc<ClusterStats>,
    stop: watch::Sender<bool>,
    /// Members in the current membership, kept up to date by a watcher so the publish path
    /// can ask "any peers?" without touching Raft's metrics.
    members: Arc<std::sync::atomic::AtomicUsize>,
    /// When to stand for leader (pre-vote first), and whether a follower's leader is live.
    election: Arc<Election>,
    /// Whether this node may serve MQTT clients (see `lease`).
    lease: Arc<lease::Lease>,
    /// Makes the channels to peers (plaintext or mutual TLS).
    dialer: Dialer,
}

impl Cluster {
    /// Opens the Raft store, starts the gRPC server, and joins or bootstraps the cluster.
    ///
    /// With `cfg.tls`, its files are read and checked first, before the port is bound: one
    /// that cannot be read or used is a [`StartError::Tls`] naming it.
    pub async fn start(
        mut cfg: ClusterConfig,
        local: Arc<dyn LocalNode>,
    ) -> Result<Arc<Cluster>, StartError> {
        let tls = match &cfg.tls {
            Some(files) => Some(Arc::new(TlsMaterial::load(files, cfg.node_id)?)),
            None => None,
        };
        let mut server = tonic::transport::Server::builder();
        if let (Some(tls), Some(files)) = (&tls, &cfg.tls) {
            // `load` built this configuration once already: this does not fail in practice.
            server = server
                .tls_config(tls.server_config())
                .map_err(|e| StartError::Tls {
                    path: files.key.clone(),
                    reason: crate::tls::chain_text(&e),
                })?;
        }
        let auth = PeerAuth::new(tls.is_some());
        let dialer = Dialer::new(tls);
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
        let (log, sm) =
            store::open(&cfg.data_dir, cfg.node_id, Arc::new(Hooks(local.clone()))).await?;
        let state = sm.state();
        let heartbeat = u64::try_from(cfg.heartbeat.as_millis()).unwrap_or(100);
        let election = u64::try_from(cfg.election_timeout.as_millis()).unwrap_or(1000);
        let limits = WireLimits::new(cfg.max_packet_size);
        let raft_config = openraft::Config {
            cluster_name: "roost".to_owned(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            // openraft 0.9 has no pre-vote: `election::Election` decides when to stand.
            enable_elect: false,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
            max_in_snapshot_log_to_keep: 1_000,
            // Entries per AppendEntries by count (openraft's default, written down); by bytes
            // the network splits a request over `limits.raft_payload` (PayloadTooLarge).
            max_payload_entries: 300,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK as u64,
            ..Default::default()
        }
        .validate()?;
        let log_reader = log.clone();
        let raft = Raft::new(
            cfg.node_id,
            Arc::new(raft_config),
            RaftNet::new(limits, dialer.clone()),
            log,
            sm,
        )
        .await
        .map_err(|source| StartError::Raft {
            node: cfg.node_id,
            source: Box::new(source),
        })?;

        let (stop, mut stop_rx) = watch::channel(false);
        let elector = Arc::new(Election::new(
            cfg.node_id,
            raft.clone(),
            log_reader,
            ElectionTiming {
                heartbeat: Duration::from_millis(heartbeat),
                min: Duration::from_millis(election),
                max: Duration::from_millis(election * 2),
            },
            limits.raft_grpc(),
            dialer.clone(),
        ));
        tokio::spawn(Arc::clone(&elector).run(stop_rx.clone()));
        let lease = Arc::new(lease::Lease::new(
            cfg.node_id,
            raft.clone(),
            cfg.session_lease,
        ));
        let stats = Arc::new(ClusterStats::default());
        let cluster = Arc::new(Cluster {
            cfg: cfg.clone(),
            limits,
            raft: raft.clone(),
            state,
            peers: Mutex::new(HashMap::new()),
            members: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
            election: Arc::clone(&elector),
            lease: Arc::clone(&lease),
            stats: stats.clone(),
            stop,
            dialer,
        });
        tokio::spawn(Arc::clone(&lease).renew(Arc::downgrade(&cluster), stop_rx.clone()));
        tokio::spawn(Arc::clone(&lease).watch(stop_rx.clone()));
        let service = ClusterService {
            cluster: Arc::downgrade(&cluster),
            raft: raft.clone(),
            local,
            stats,
            limits,
            dedup: Arc::new(Mutex::new(dedup::Dedup::default())),
            lease,
            stop: stop_rx.clone(),
            auth: auth.clone(),
        };
        // No Nagle on accepted connections either: forwarded batches, acks and Raft RPCs are
        // small and latency-bound (with Nagle and delayed ACKs a cross-node round trip took
        // ~45 ms on loopback).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(async move {
            let r = server
                .add_service(
                    RaftServer::new(RaftService::new(raft, elector, auth))
                        .max_decoding_message_size(limits.raft_grpc())
                        .max_encoding_message_size(limits.raft_grpc()),
                )
                .add_service(
                    ClusterServer::new(service)
                        .max_decoding_message_size(limits.cluster_grpc())
                        .max_encoding_message_size(limits.cluster_grpc()),
                )
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
        // The `roost_raft_*` gauges; ends with Raft, as the watcher above.
        tokio::spawn(crate::raft_metrics::run(cluster.raft.clone()));
        cluster.bootstrap().await?;
        Ok(cluster)
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

    /// The current Raft term and the leader this node knows of in it, if any (cheap: no Raft
    /// call). A change means an election happened: what was proposed around it may or may not
    /// have committed.
    pub fn leadership(&self) -> (u64, Option<NodeId>) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_term, m.current_leader)
    }

    /// True if this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.cfg.node_id)
    }

    /// True when the cluster has members besides this node (cheap: no Raft call).
    pub fn has_peers(&self) -> bool {
        self.members.load(std::sync::atomic::Ordering::Relaxed) > 1
    }

    /// Whether `id` is a member of the cluster now (a voter or a learner, as this node has
    /// applied the membership): a node that left is not.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
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

    /// The voting members other than this node, in id order.
    pub fn voter_peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.cfg.node_id)
            .collect();
        v.sort_unstable();
        v
    }

    /// The voting peers that can take sessions now: each is asked for its status (at most
    /// `limit`), and those that answer, follow a leader and are not stopping themselves are
    /// returned, in id order, with the MQTT address each reports for itself. For a graceful
    /// stop choosing where its sessions and its clients go.
    pub async fn session_takers(&self, limit: Duration) -> Vec<SessionTaker> {
        let mut asks = tokio::task::JoinSet::new();
        for id in self.voter_peers() {
            let Some(peer) = self.peer(id) else { continue };
            let mut client = peer.client.clone();
            asks.spawn(async move {
                let mut req = Request::new(pb::StatusRequest {});
                req.set_timeout(limit);
                let reply = tokio::time::timeout(limit, client.status(req)).await;
                match reply {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        let mqtt_addr = r
                            .members
                            .iter()
                            .find(|m| m.node_id == id.get())
                            .map(|m| m.mqtt_addr.clone())
                            .unwrap_or_default();
                        (r.leader_id.is_some() && !r.draining).then_some(SessionTaker {
                            node: id,
                            mqtt_addr,
                        })
                    }
                    _ => None,
                }
            });
        }
        let mut takers: Vec<SessionTaker> = asks.join_all().await.into_iter().flatten().collect();
        // A peer that reports none: the membership's record (empty for a member that was
        // added as a seed, by its id and cluster address only).
        let recorded = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            takers
                .iter()
                .map(|t| {
                    membership
                        .get_node(&t.node)
                        .map(|n| n.mqtt_addr.clone())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
        };
        for (t, recorded) in takers.iter_mut().zip(recorded) {
            if t.mqtt_addr.is_empty() {
                t.mqtt_addr = recorded;
            }
        }
        takers.sort_unstable_by_key(|t| t.node);
        takers
    }

    /// At a graceful stop, after this node's last proposal: from now on this node never
    /// stands for election, and if it leads it hands Raft leadership to an up-to-date voter
    /// (TimeoutNow, the `election` module docs) among the peers that answer `Status` (at most
    /// a quarter of `limit`, 500 ms), follow a leader and are not stopping themselves, then
    /// waits until another node leads, at most `limit`. A leader elected less than the leader
    /// lease (2 × the election timeout) ago waits for that first, still leading. Returns the
    /// new leader; `None` when this node does not lead, no voting peer is live, or no new
    /// leader was known within `limit` (the others then elect one when this node's lease runs
    /// out, as after a crash: docs/rfcs/0004). This node stays a member.
    pub async fn hand_off_leadership(&self, limit: Duration) -> Option<NodeId> {
        let started = Instant::now();
        self.election.retire();
        if !self.is_leader() || self.voter_peers().is_empty() {
            return None;
        }
        let ask = (limit / 4).min(Duration::from_millis(500));
        let prefer: Vec<NodeId> = self
            .session_takers(ask)
            .await
            .into_iter()
            .map(|t| t.node)
            .collect();
        if prefer.is_empty() {
            // No voting peer answers with a leader (the others are gone or stopping too): no
            // one to hand over to.
            debug!("raft leadership not handed over: no live voting peer");
            crate::metrics::leader_handoff("no_peer");
            return None;
        }
        let left = limit.saturating_sub(started.elapsed());
        let to = self.election.hand_off(&prefer, left).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match to {
            Some(leader) => {
                tracing::info!(%leader, elapsed_ms, "raft leadership handed over");
                crate::metrics::leader_handoff("handed_over");
            }
            None => {
                warn!(
                    elapsed_ms,
                    "raft leadership not handed over in time: the others elect a leader when this node's lease runs out"
                );
                crate::metrics::leader_handoff("timed_out");
            }
        }
        to
    }

    /// True if a leader is known and, when that is this node, a quorum acknowledged it
    /// recently: an isolated leader (openraft 0.9 does not step down by itself) is not ready.
    /// A follower needs to have heard from its leader within the lease (twice the election
    /// timeout): with pre-vote a cut-off follower keeps its vote, so openraft keeps naming the
    /// silent leader.
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
            Some(_) => self.election.follows_live_leader(),
        }
    }

    /// True while this node holds its session lease and may serve MQTT clients (a lone voter
    /// always; otherwise a quorum confirmed this node within `cluster.session_lease_ms`).
    pub fn holds_lease(&self) -> bool {
        self.lease.holds()
    }

    /// Waits (at most `limit`) for the session lease; refuses with [`Refusal::NoLease`] if it
    /// is not held by then. A node that just started or healed gets it within a round trip.
    pub async fn await_lease(&self, limit: Duration) -> Result<(), ClusterError> {
        tokio::time::timeout(limit, self.lease.wait_held())
            .await
            .map_err(|_| ClusterError::Refused(Refusal::NoLease(self.lease.duration())))
    }

    /// Whether this node serves MQTT clients now: a leader is known ([`has_leader`]) and this
    /// node holds its session lease. `/readyz` and `Node::is_ready` ask more of it
    /// ([`readiness`](Self::readiness): a voter, caught up with the leader's commit).
    ///
    /// [`has_leader`]: Self::has_leader
    pub fn serving(&self) -> bool {
        self.has_leader() && self.holds_lease()
    }

    /// Changes of [`holds_lease`](Self::holds_lease): the node disconnects its clients when it
    /// turns false.
    pub fn lease_changes(&self) -> watch::Receiver<bool> {
        self.lease.changes()
    }

    /// How long a node that claimed a session waits, after the claim applied, before serving
    /// it when the previous owner could not be reached to hand it over: by then that owner's
    /// lease has run out and it serves the session no more.
    pub fn takeover_wait(&self) -> Duration {
        self.lease.takeover_wait()
    }

    /// Commits a command (on the leader, or through it) and waits until this node applied it.
    /// Returns the log index and the state machine's response.
    ///
    /// A command whose encoding is over [`WireLimits::max_message`] is refused
    /// ([`Refusal::TooLarge`]) before it enters the log: no AppendEntries could carry it.
    pub async fn propose(&self, cmd: Command) -> Result<(u64, CommandResponse), ClusterError> {
        check_command_size(&cmd, &self.limits)?;
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
            // The leader refused the command itself (too large for it, undecodable): trying
            // again cannot help.
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                return Err(ClusterError::rejected(s.message()));
            }
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
    /// the peer waits on its side), at most the smaller of `forward_timeout` and the election
    /// timeout. Only a peer known unreachable at the time of the call is skipped: its
    /// forwarder's stream is down or its acknowledgements stopped ([`Cluster::peer_up`]); it
    /// applies the entry when it returns, and a publish meanwhile is refused rather than
    /// acknowledged for it (docs/rfcs/0005). A peer that merely missed one earlier call is
    /// asked again: a miss is not remembered.
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
            let Some(peer) = self.peer(id) else { continue };
            if !peer.up.load(std::sync::atomic::Ordering::Relaxed) {
                // Known unreachable now: do not make every SUBACK wait for it.
                debug!(peer = %id, "peer unreachable: not waiting for it to apply a route");
                continue;
            }
            let mut client = peer.client.clone();
            calls.push(async move {
                let mut req = Request::new(pb::AppliedRequest {
                    min_index: index,
                    wait_ms,
                });
                req.set_timeout(Duration::from_millis(wait_ms + 250));
                match client.applied(req).await {
                    Ok(r) if r.get_ref().applied_index >= index => {}
                    Ok(r) => {
                        let applied = r.into_inner().applied_index;
                        debug!(
                            peer = %id,
                            applied,
                            index,
                            "peer did not apply a route entry in time"
                        );
                    }
                    Err(e) => {
                        debug!(peer = %id, error = %e, "peer did not confirm a route entry");
                    }
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
        let ch = match self.dialer.channel(id, &addr) {
            Ok(c) => c,
            Err(e) => {
                warn!(peer = %id, addr, error = %e, "bad peer address");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let client = self.cluster_client(ch);
        let peer = Arc::new(Peer {
            addr: addr.clone(),
            client: client.clone(),
            forward: tx,
            up: up.clone(),
        });
        tokio::spawn(run_forwarder(
            Forwarder::new(
                self.cfg.node_id,
                id,
                self.limits,
                self.cfg.forward_timeout,
                self.stats.clone(),
            ),
            client,
            rx,
            self.stop.subscribe(),
            up,
        ));
        peers.insert(id, peer.clone());
        Some(peer)
    }

    /// False while `node` is known unreachable: this node's forwarder has no stream to it, or
    /// a message has waited `forward_timeout` for its acknowledgement and none came since.
    /// Shared groups skip it, a client's QoS 1/2 publish that must reach it is refused at once
    /// (docs/rfcs/0005), `wait_replicated` does not wait for it. A peer never forwarded to is
    /// presumed up.
    pub fn peer_up(&self, node: NodeId) -> bool {
        self.peers
            .lock()
            .get(&node)
            .is_none_or(|p| p.up.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Hands a message to `node`'s forwarder. QoS 0 returns `None`: when the peer's queue is
    /// full it is dropped (counted). QoS 1/2 returns a [`ForwardAck`] that resolves `Ok` when
    /// the peer accepted the message into its sessions, or `Err` with why it did not: the
    /// peer is not a member, or its queue stayed full for `forward_timeout` (both answered at
    /// once), the message is over [`WireLimits::max_message`], or it was given up to keep
    /// the resend buffer within its bound. Every refusal is counted where it happens. The
    /// peer does not deliver a QoS 1/2 message that reaches it more than `forward_timeout`
    /// after this call (the caller is expected to have stopped waiting and told its
    /// publisher the message failed; `ForwardedMessage.give_up_at_ms`).
    pub async fn forward(
        &self,
        node: NodeId,
        msg: Arc<Message>,
        direct: bool,
        shared: Vec<TopicFilter>,
    ) -> Option<ForwardAck> {
        self.send(node, msg, direct, shared, None).await
    }

    /// Passes a message on to the node a local session moved to, for that session alone
    /// (docs/rfcs/0006); answered as [`forward`](Self::forward).
    pub async fn pass_on(
        &self,
        node: NodeId,
        msg: Arc<Message>,
        to: Addressed,
    ) -> Option<ForwardAck> {
        self.stats.passed_on.increment(1);
        self.send(node, msg, false, Vec::new(), Some(to)).await
    }

    async fn send(
        &self,
        node: NodeId,
        msg: Arc<Message>,
        direct: bool,
        shared: Vec<TopicFilter>,
        to: Option<Addressed>,
    ) -> Option<ForwardAck> {
        let qos0 = msg.qos == roost_codec::QoS::AtMostOnce;
        let refused = |why: NotForwarded| {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err(why));
            Some(rx)
        };
        let Some(peer) = self.peer(node) else {
            // The route names a node that is no longer a member (its routes are being
            // forgotten): the message cannot go there. Counted, never silent.
            if qos0 {
                self.stats.forward_dropped.increment(1);
                return None;
            }
            self.stats.forward_given_up.not_member.increment(1);
            return refused(NotForwarded::NotMember);
        };
        let (ack, rx) = if qos0 {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        // The sender's waiter gives up `forward_timeout` from now (`Broker::forward_all`, the
        // publisher's wait): the peer is told, so it does not deliver the message after that.
        let give_up_at_ms = if qos0 {
            0
        } else {
            unix_ms(SystemTime::now() + self.cfg.forward_timeout)
        };
        let item = Outgoing {
            msg,
            direct,
            shared,
            to,
            ack,
            give_up_at_ms,
            queued_at: Instant::now(),
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
            Ok(Err(_)) => {
                // The forwarder ended (shutdown): nothing will send it.
                self.stats.forward_given_up.stopped.increment(1);
                refused(NotForwarded::Stopped)
            }
            Err(_) => {
                // The peer's queue stayed full for the whole forward timeout: this message is
                // not kept for it. Counted, never silent.
                self.stats.forward_given_up.queue_full.increment(1);
                refused(NotForwarded::QueueFull)
            }
        }
    }

    /// A `Cluster` service client on `ch`, with the byte bounds between nodes.
    fn cluster_client(&self, ch: Channel) -> ClusterClient<Channel> {
        ClusterClient::new(ch)
            .max_decoding_message_size(self.limits.cluster_grpc())
            .max_encoding_message_size(self.limits.cluster_grpc())
    }

    /// Asks `owner` for a session it held (after this node claimed it). With `fresh`, on a
    /// connection of its own: an attempt that timed out may have been on a connection that a
    /// partition left dead (HTTP/2 keep-alive takes up to 10 s to notice), and the owner may
    /// be reachable again on a new one.
    pub async fn take_session(
        &self,
        owner: NodeId,
        client_id: &ClientId,
        generation: u64,
        fresh: bool,
    ) -> Result<Option<SessionTransfer>, ClusterError> {
        let peer = self
            .peer(owner)
            .ok_or_else(|| ClusterError::peer(owner, "not a member"))?;
        let mut client = if fresh {
            let ch = self
                .dialer
                .channel(owner, &peer.addr)
                .map_err(|e| ClusterError::peer(owner, e))?;
            self.cluster_client(ch)
        } else {
            peer.client.clone()
        };
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

    /// Asks `peer` which of `sessions` (client id, the generation this node handed each over
    /// for) it has not taken in yet (see [`LocalNode::sessions_pending`]): indices into
    /// `sessions`. In requests within the cluster's message bound, each within the forward
    /// timeout. `Ok(None)`: the peer runs a version without this question.
    pub async fn sessions_pending(
        &self,
        peer: NodeId,
        sessions: &[(ClientId, u64)],
    ) -> Result<Option<Vec<usize>>, ClusterError> {
        let node = self
            .peer(peer)
            .ok_or_else(|| ClusterError::peer(peer, "not a member"))?;
        // Client id bytes plus the other fields' framing, per entry.
        const PER_ENTRY: usize = 16;
        let bound = self.limits.max_message.max(PER_ENTRY + 1);
        let mut pending = Vec::new();
        let mut start = 0;
        while start < sessions.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < sessions.len()
                && (end == start || bytes + sessions[end].0.as_str().len() + PER_ENTRY <= bound)
            {
                bytes += sessions[end].0.as_str().len() + PER_ENTRY;
                end += 1;
            }
            let mut req = Request::new(pb::PlacedRequest {
                sessions: sessions[start..end]
                    .iter()
                    .map(|(c, g)| pb::PlacedSession {
                        client_id: c.as_str().to_owned(),
                        generation: *g,
                    })
                    .collect(),
            });
            req.set_timeout(self.cfg.forward_timeout);
            let reply = match node.client.clone().placed(req).await {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(None),
                Err(s) => return Err(ClusterError::peer(peer, s.message())),
            };
            let len = end - start;
            pending.extend(
                reply
                    .pending
                    .into_iter()
                    .map(|i| i as usize)
                    .filter(|i| *i < len)
                    .map(|i| start + i),
            );
            start = end;
        }
        Ok(Some(pending))
    }

    /// Stops the gRPC server, the forwarders and Raft.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.election.close();
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
    }
}

/// Refuses a command no Raft entry may carry: its encoding is over `limits.max_message`.
pub(crate) fn check_command_size(cmd: &Command, limits: &WireLimits) -> Result<(), ClusterError> {
    let size = postcard::experimental::serialized_size(cmd)
        .map_err(|e| ClusterError::rejected(format!("cannot encode command: {e}")))?;
    if size > limits.max_message {
        return Err(ClusterError::Refused(Refusal::TooLarge {
            size,
            limit: limits.max_message,
        }));
    }
    Ok(())
}

/// `t` as Unix time in milliseconds (0 before 1970: "none" on the wire).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
