//! The node's broker: everything shared between the connection drivers, split by concern.
//!
//! ```text
//!                       ┌──────────────────────────── Broker ─────────────────────────────┐
//!  driver ─ publish ───▶│ publish(msg, origin) ─▶ retained::store ─▶ routing::route ──────▶│─ local sessions
//!  will / expiry ──────▶│      (one path for clients, wills; peers enter at route)  └─ forward ─▶ cluster
//!  cluster hooks ──────▶│ routing::route (Origin::Peer: local only, never re-forwarded)    │
//!  driver ─ CONNECT ───▶│ registry::attach / detach / hand_over ─▶ timers (one task)        │
//!  driver ─ SUBSCRIBE ─▶│ subscriptions::subscribe ─▶ index + RouteTable (batched to Raft)  │
//!                       └──────────────────────────────────────────────────────────────────┘
//! ```
//!
//! - [`session`]: [`SessionRef`], the opaque handle on one session, and [`ConnCtl`].
//! - [`registry`]: the session registry: attach, resume, takeover (local and across nodes),
//!   detach, expiry, restore after a restart. The one place that builds a session.
//! - [`timers`]: the one task that owns every session timer (will delay, expiry, stale copies).
//! - [`deadlines`]: the table and task that wake parked connections at their keep-alive or
//!   credentials deadline (RFC 0013).
//! - [`routing`]: where a message goes: local sessions, shared groups, peers; backpressure.
//! - [`retained`]: retained messages (replicated; this node's `$SYS` ones kept locally).
//! - [`subscriptions`]: the subscription index and this node's routes in the cluster.
//! - [`drain`]: a graceful stop hands the sessions to other nodes, then removes the routes.
//!
//! Locks and their order (never two at once except as listed):
//! - the registry map may be held while taking one session's state lock (attach, expiry).
//!   Never the other way round. The maps of `ownership` (registry.rs) are leaves: taken last,
//!   and never held while another lock is taken.
//! - `index` is a read lock on the publish path, released before any session is locked; the
//!   matches hold [`SessionRef`]s, so no registry lookup happens per message.
//! - `retained` (local) and the cluster's state lock are taken alone.
//!
//! Overflow policy (house style, convention 2): delivery never drops a QoS 1/2 message to a
//! connected subscriber to make room: a congested subscriber holds its publisher back
//! (backpressure, bounded by `mqtt.backpressure_timeout_ms`); each session's queue is bounded
//! by count and bytes and drops per its policy, counting every drop.

pub(crate) mod deadlines;
mod drain;
mod registry;
mod retained;
mod routing;
mod session;
mod subscriptions;
mod timers;

pub(crate) use registry::Attached;
use retained::RetainError;
pub(crate) use retained::{unix_millis, RetainedBudget};
pub(crate) use routing::{PassOn, PeerWait, RemoteSend};
pub(crate) use session::{ConnCtl, ConnInfo, Kick, SessionRef, WallMs, WOKEN_DEADLINE};

use crate::config::{Config, QueueDrop};
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use parking_lot::{Mutex, RwLock};
use roost_cluster::Cluster;
use roost_codec::ReasonCode;
use roost_core::index::SubscriptionIndex;
use roost_core::message::Message;
use roost_core::retained::RetainedStore;
use roost_core::session::{DropPolicy, SessionLimits};
use roost_core::topic::{TopicFilter, TopicLimits};
use roost_core::ClientId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;
use tracing::info;

/// Where a message comes from: decides what [`Broker::publish`] does with it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin<'a> {
    /// A client's PUBLISH, through its session (never delivered back to it with No Local).
    Client(&'a SessionRef),
    /// A will, published on behalf of a client that is gone.
    Will,
    /// Forwarded by a peer: delivered to local subscribers only (never re-forwarded, never
    /// retained again: the publisher's node did that), the non-shared ones if `direct`, and the
    /// shared groups in `shared` (this node was picked to serve them).
    Peer {
        direct: bool,
        shared: &'a [TopicFilter],
    },
    /// Made by this node (`$SYS`): retained locally, delivered to local subscribers only.
    System,
}

/// What [`Broker::publish`] did with a message.
#[derive(Debug, Default)]
pub(crate) struct PublishOutcome {
    /// Some subscriber, here or on a peer, matched.
    pub(crate) matched: bool,
    /// The retained copy could not be stored (no quorum): a client's QoS 1/2 PUBLISH was not
    /// delivered either; the client hears 0x80 (v5) or the connection closes (v3.1.1).
    pub(crate) retain_failed: bool,
    /// ... because it was over the retained caps (v5: 0x97 instead of 0x80).
    pub(crate) retain_refused: bool,
    /// A client's QoS 1/2 PUBLISH that must reach a peer known unreachable: delivered
    /// nowhere (counted `peer_unreachable`); the client hears 0x80 (v5) or the connection
    /// closes (v3.1.1), see docs/rfcs/0005.
    pub(crate) peer_unreachable: bool,
    /// For QoS 1/2 forwarded to peers: ends when every peer accepted it, one refused it or the
    /// forward timeout ran out, and then says which. The publisher's acknowledgement waits
    /// for it.
    pub(crate) peers: Option<PeerWait>,
    /// Connected local subscribers whose queue is backing up (backpressure on the publisher).
    pub(crate) congested: Vec<SessionRef>,
}

pub(crate) struct Broker {
    pub(crate) config: Arc<Config>,
    /// One copy for every session of this node.
    pub(crate) limits: Arc<SessionLimits>,
    pub(crate) topic_limits: TopicLimits,
    index: RwLock<SubscriptionIndex<SessionRef>>,
    /// This node's own retained messages (`$SYS`); client ones are in the replicated state.
    local_retained: RwLock<RetainedStore<Arc<Message>>>,
    sessions: Mutex<HashMap<ClientId, SessionRef>>,
    /// What orders the registry's changes for one client id: attach lanes, generations this
    /// node ended, claims it gave up on (see [`registry::Ownership`]).
    ownership: registry::Ownership,
    timers: timers::Timers,
    /// The deadlines of parked connections (keep-alive, credentials), one task for all.
    pub(crate) deadlines: Arc<deadlines::Deadlines>,
    /// Background work the broker starts (will publishes, registry updates, route waits):
    /// shutdown waits for it, bounded.
    tasks: TaskTracker,
    pub(crate) metrics: Metrics,
    next_conn_id: AtomicU64,
    /// Connections past CONNACK.
    pub(crate) connections: AtomicUsize,
    /// Sockets accepted whose CONNECT has not arrived yet (`mqtt.max_pending_connections`).
    pub(crate) pending: AtomicUsize,
    /// Bytes those sockets' read buffers hold (`mqtt.pending_connect_bytes`).
    pub(crate) pending_bytes: AtomicUsize,
    /// Connections whose task is parked (`mqtt.park_after_ms`, RFC 0011).
    pub(crate) parked: AtomicUsize,
    pub(crate) started: Instant,
    cluster: Arc<Cluster>,
    /// Local subscriber counts per filter and the route changes not committed yet.
    routes: Arc<RouteTable>,
    /// A graceful stop began (see [`drain`]): CONNECTs are refused.
    draining: std::sync::atomic::AtomicBool,
    /// Credential stores (password file).
    pub(crate) auth: crate::auth::Auth,
    /// Authorization policies enforced here.
    pub(crate) policies: crate::policy::NodePolicies,
    /// Every MQTT listener, for certificate reloads.
    pub(crate) listeners: parking_lot::RwLock<Vec<Arc<crate::listener::Listener>>>,
    /// The admin listener's certificate when it serves HTTPS (`http.tls_cert`), set at start,
    /// for certificate reloads.
    pub(crate) admin_tls: std::sync::OnceLock<Arc<crate::https::AdminTls>>,
    /// The connection shards, set at start when `node.shards` > 0 (`roost_shard_connections`).
    /// Weak: the node owns them, and their connections hold the broker.
    pub(crate) shards: std::sync::OnceLock<std::sync::Weak<crate::shard::Shards>>,
}

impl Broker {
    /// A broker for one node, on its cluster layer (a lone node is a cluster of one).
    pub(crate) fn new(
        config: Arc<Config>,
        cluster: Arc<Cluster>,
        auth: crate::auth::Auth,
        policies: crate::policy::NodePolicies,
    ) -> Arc<Broker> {
        let mut policy = config.mqtt.server_policy();
        if config.auth.password_file.is_some() {
            // SCRAM-SHA-256 for users whose entry has SCRAM credentials (`roost passwd --scram`).
            policy.auth_methods.push(crate::scram::METHOD);
        }
        let policy = Arc::new(policy);
        let topic_limits = policy.topic;
        let limits = Arc::new(SessionLimits {
            max_inflight: config.mqtt.max_inflight,
            max_queued_messages: config.mqtt.max_queued_messages,
            max_queued_bytes: config.mqtt.max_queued_bytes,
            drop_policy: match config.mqtt.queue_drop {
                QueueDrop::Oldest => DropPolicy::Oldest,
                QueueDrop::Newest => DropPolicy::Newest,
            },
            ..SessionLimits::new(policy)
        });
        let routes = Arc::new(RouteTable::default());
        let broker = Arc::new(Broker {
            config,
            limits,
            topic_limits,
            index: RwLock::new(SubscriptionIndex::new()),
            local_retained: RwLock::new(RetainedStore::new()),
            sessions: Mutex::new(HashMap::new()),
            ownership: registry::Ownership::default(),
            timers: timers::Timers::default(),
            deadlines: Arc::new(deadlines::Deadlines::new()),
            tasks: TaskTracker::new(),
            metrics: Metrics::new(),
            next_conn_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            pending_bytes: AtomicUsize::new(0),
            started: crate::now(),
            cluster: Arc::clone(&cluster),
            routes: Arc::clone(&routes),
            draining: std::sync::atomic::AtomicBool::new(false),
            auth,
            policies,
            listeners: parking_lot::RwLock::new(Vec::new()),
            admin_tls: std::sync::OnceLock::new(),
            shards: std::sync::OnceLock::new(),
        });
        broker
            .tasks
            .spawn(Arc::clone(&routes).run_reconciler(Arc::clone(&cluster)));
        broker.tasks.spawn(timers::run(
            Arc::downgrade(&broker),
            broker.timers.signal.wake(),
        ));
        broker.tasks.spawn(deadlines::run(
            Arc::downgrade(&broker.deadlines),
            broker.deadlines.signal.wake(),
        ));
        broker
    }

    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    pub(crate) fn new_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `fut` as a task that [`Broker::close`] waits for.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    /// The one publish path for messages that start on this node: a client's PUBLISH and a
    /// will. Stores the retained copy (replicated, or local for `$SYS`), delivers to local
    /// subscribers, and hands the message to the peers with subscribers, in that order; a
    /// client's QoS 1/2 message whose retained copy failed goes no further. Messages
    /// from peers enter at [`Broker::deliver_from_peer`]: they are never retained or forwarded
    /// again.
    ///
    /// Cancel safety: not cancel safe once it started forwarding (a peer may have the message
    /// and the caller not know); the driver never cancels it.
    pub(crate) async fn publish(&self, msg: &Arc<Message>, origin: Origin<'_>) -> PublishOutcome {
        let mut out = PublishOutcome::default();
        if msg.retain {
            // Boxed: the proposal's future is large and rare; every idle connection's task
            // would otherwise be sized for it.
            if let Err(e) = Box::pin(self.store_retained(msg)).await {
                match &e {
                    RetainError::Quota => {
                        info!(topic = msg.topic.as_str(), "retained message not stored: over mqtt.max_retained_messages or mqtt.max_retained_bytes");
                        out.retain_refused = true;
                    }
                    RetainError::Cluster(e) if e.is_fatal() => {
                        tracing::error!(topic = msg.topic.as_str(), error = %e, "retained message not stored: this node's raft stopped");
                    }
                    RetainError::Cluster(e) => {
                        info!(topic = msg.topic.as_str(), error = %e, "retained message not stored");
                    }
                }
                out.retain_failed = true;
                if msg.qos != roost_codec::QoS::AtMostOnce && matches!(origin, Origin::Client(_)) {
                    // A client's QoS 1/2 PUBLISH is accepted whole or not at all: its
                    // acknowledgement says it failed (v5: 0x80, or 0x97 over the retained
                    // caps; v3.1.1: the connection closes unacknowledged), so delivering it
                    // anyway would make the retry a duplicate. QoS 0 and wills, which nobody
                    // retries, are still delivered.
                    match e {
                        RetainError::Quota => self.metrics.retain_quota.increment(1),
                        RetainError::Cluster(_) => self.metrics.retain_not_stored.increment(1),
                    }
                    return out;
                }
            }
        }
        let routed = self.route(msg, origin, &mut out.congested);
        if routed.unreachable {
            self.metrics.peer_unreachable.increment(1);
            out.peer_unreachable = true;
            return out;
        }
        out.matched = routed.local > 0 || !routed.remote.is_empty() || !routed.passes.is_empty();
        if !routed.remote.is_empty() || !routed.passes.is_empty() {
            out.peers = Box::pin(self.forward(msg, routed.remote, routed.passes)).await;
        }
        out
    }

    /// A message forwarded by a peer: local subscribers only. Returns the connected
    /// subscribers whose queue is backing up (the Forward stream waits for them,
    /// [`Broker::wait_for_space`], before it delivers the next message), and what must still
    /// go to other nodes: shared groups it was picked for that no member here took, and
    /// sessions it matched that moved on (docs/rfcs/0006). The peer's acknowledgement waits
    /// for those ([`Broker::forward_all`]).
    pub(crate) fn deliver_from_peer(
        &self,
        msg: &Arc<Message>,
        direct: bool,
        shared: &[TopicFilter],
    ) -> (Vec<SessionRef>, Vec<RemoteSend>, Vec<PassOn>) {
        let mut congested = Vec::new();
        let routed = self.route(msg, Origin::Peer { direct, shared }, &mut congested);
        (congested, routed.remote, routed.passes)
    }

    /// Publishes a broker-made message (`$SYS`): retained, QoS 0, this node only.
    pub(crate) fn publish_internal(&self, topic: &str, payload: String) {
        let Ok(topic) = roost_core::topic::TopicName::new(topic, &self.topic_limits) else {
            return;
        };
        let msg = Arc::new(Message {
            topic,
            payload: payload.into(),
            qos: roost_codec::QoS::AtMostOnce,
            retain: true,
            properties: roost_core::message::PassThrough::default(),
            expires_at: None,
            publisher: None,
            id: 0,
            entered: None,
        });
        self.retain_local(&msg);
        self.route(&msg, Origin::System, &mut Vec::new());
    }

    /// Sessions currently registered (snapshot).
    pub(crate) fn sessions(&self) -> Vec<SessionRef> {
        self.sessions.lock().values().cloned().collect()
    }

    pub(crate) fn session(&self, client_id: &str) -> Option<SessionRef> {
        self.sessions.lock().get(client_id).cloned()
    }

    pub(crate) fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.index.read().subscription_count()
    }

    /// Sets the gauges whose source of truth is elsewhere (the registry, the index, the
    /// replicated state applied from other nodes' proposals). Called when metrics are scraped.
    pub(crate) fn refresh_gauges(&self) {
        self.metrics.export();
        self.metrics.retained.set(self.retained_count() as f64);
        self.metrics.sessions.set(self.session_count() as f64);
        self.metrics
            .subscriptions
            .set(self.subscription_count() as f64);
        self.metrics
            .connections
            .set(self.connections.load(Ordering::Relaxed) as f64);
        self.metrics
            .pending
            .set(self.pending.load(Ordering::Relaxed) as f64);
        self.metrics
            .parked
            .set(self.parked.load(Ordering::Relaxed) as f64);
        self.metrics
            .routes_pending
            .set(self.routes.pending() as f64);
        // Kept up to date by every session of this node (`SessionLimits::queue_totals`).
        let queued = &self.limits.queue_totals;
        self.metrics.queue_messages.set(queued.messages() as f64);
        self.metrics.queue_bytes.set(queued.bytes() as f64);
        if let Some(shards) = self.shards.get().and_then(std::sync::Weak::upgrade) {
            for (i, live) in shards.live().into_iter().enumerate() {
                crate::metrics::shard_connections(i, live);
            }
        }
    }

    /// Tells every connected client to leave with `kick` (shutdown, lost lease); returns how
    /// many were told.
    pub(crate) fn kick_all(&self, kick: impl Into<Kick>) -> u64 {
        let kick = kick.into();
        let mut n = 0;
        for s in self.sessions() {
            if let Some(c) = s.conn() {
                c.kick(kick.clone());
                n += 1;
            }
        }
        n
    }

    /// Disconnects every connected client (v5: DISCONNECT 0x9C Use another server) each time
    /// this node loses its session lease: it may be cut off while the majority lets these
    /// clients connect elsewhere (docs/architecture.md, "Session lease"). Their sessions stay
    /// here, offline, for a later CONNECT or a hand-over. Ends when the cluster stops.
    pub(crate) fn start_lease_watch(self: &Arc<Self>) {
        let mut changes = self.cluster.lease_changes();
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if *changes.borrow_and_update() {
                    continue;
                }
                let Some(b) = broker.upgrade() else { return };
                let n = b.kick_all(ReasonCode::USE_ANOTHER_SERVER);
                b.metrics.lease_disconnects.increment(n);
                tracing::warn!(
                    clients = n,
                    "session lease lost: disconnected the connected clients"
                );
            }
        });
    }

    /// Stops the broker's background work: waits (at most `limit`) for the tasks it started
    /// (will publishes, registry updates), then stops the timers and the route reconciler.
    pub(crate) async fn close(&self, limit: Duration) {
        self.tasks.close();
        self.timers.signal.stop();
        self.deadlines.signal.stop();
        self.routes.stop();
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tasks.len(),
                "broker tasks still running after the drain timeout"
            );
        }
    }

    /// Starts comparing the replicated routes of this node with its subscriptions (see
    /// [`RouteTable::start_repairs`]): called once the persistent sessions are restored, so
    /// routes held from before a restart that nothing needs any more are removed.
    pub(crate) fn start_route_repairs(&self) {
        self.routes.start_repairs();
    }

    /// Queue length from which a connected subscriber holds its publishers back (half of
    /// `mqtt.max_queued_messages`).
    pub(crate) fn congested_at(&self) -> usize {
        self.config.mqtt.max_queued_messages / 2
    }

    /// Queue length a congested subscriber must drain to before its publishers go on (a
    /// quarter of `mqtt.max_queued_messages`).
    pub(crate) fn low_watermark(&self) -> usize {
        self.config.mqtt.max_queued_messages / 4
    }

    fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.config.cluster.commit_timeout_ms)
    }
}
