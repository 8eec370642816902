//! The node's shared broker state: the session registry, the subscription index, the retained
//! store, and the routing of one message to its subscribers.
//!
//! ```text
//!  driver (publisher) ── publish(msg) ──▶ index.read() ─ matches ─▶ for each session:
//!                                                                 lock(session) → deliver
//!                                                                 → wake its connection
//!  driver (subscriber) ◀── Notify ── session outbox (bounded by the session's queue limits)
//! ```
//!
//! Locks and their order (never two at once except as listed):
//! - `sessions` (registry map) may be held while taking one session's `state` lock (attach,
//!   expiry). Never the other way round.
//! - `index` is a read lock on the publish path, released before any session is locked; the
//!   matches hold `Arc`s to the sessions, so no registry lookup happens per message.
//! - `retained` is taken alone.
//!
//! The only lock every publish takes is the index's read lock (shared, uncontended by other
//! publishes); a SUBSCRIBE takes it for writing briefly. Sharding the index is the next step if
//! subscription churn ever shows up in the benchmarks.
//!
//! Overflow policy (house style, convention 2): delivery never blocks the publisher on a slow
//! subscriber. Each session's queue is bounded by count and bytes and drops per its policy,
//! counting every drop; the publisher itself is slowed by TCP backpressure because its driver
//! routes each PUBLISH before it reads the next one.

use crate::clustering::{RouteResult, Routes};
use crate::config::{Config, QueueDrop};
use crate::metrics::Metrics;
use parking_lot::{Mutex, RwLock};
use roost_cluster::state::Event;
use roost_cluster::types::{Command, CommandResponse, NodeId, RetainedMessage, StoredSubscription};
use roost_cluster::{Cluster, ClusterError, SessionTransfer};
use roost_codec::{LastWill, Protocol, QoS, ReasonCode};
use roost_core::index::{Matches, SubscriptionIndex};
use roost_core::message::{Message, PassThrough};
use roost_core::retained::RetainedStore;
use roost_core::session::{DropPolicy, Orphan, Session, SessionLimits};
use roost_core::topic::{TopicFilter, TopicLimits, TopicName};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;
use tokio::sync::Notify;
use tracing::{debug, warn};

/// One network connection's control block: how routing wakes it and how the broker tells it to
/// go away (takeover, admin kick, shutdown).
#[derive(Debug)]
pub(crate) struct ConnCtl {
    pub(crate) id: u64,
    /// Woken when the session's outbox has something to send or `kick` was set.
    pub(crate) wake: Notify,
    /// Set once to make the driver send DISCONNECT with this reason and close.
    pub(crate) kick: Mutex<Option<ReasonCode>>,
    pub(crate) info: ConnInfo,
}

impl ConnCtl {
    pub(crate) fn kick(&self, reason: ReasonCode) {
        let mut k = self.kick.lock();
        if k.is_none() {
            *k = Some(reason);
        }
        drop(k);
        self.wake.notify_one();
    }
}

/// What the admin API shows about a connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) protocol: Protocol,
    pub(crate) keep_alive: u16,
    pub(crate) connected_at: SystemTime,
    pub(crate) username: Option<String>,
}

/// A will waiting for its delay (MQTT 5.0 §3.1.3.2.2).
#[derive(Debug)]
pub(crate) struct PendingWill {
    pub(crate) will: LastWill,
}

/// Mutable per-session state, behind the entry's mutex.
#[derive(Debug)]
pub(crate) struct SessionState {
    pub(crate) session: Session,
    /// The attached connection, if any.
    pub(crate) conn: Option<Arc<ConnCtl>>,
    /// Bumped on every attach: timers armed at detach compare it to know they are still due.
    pub(crate) epoch: u64,
    /// Seconds; u32::MAX = never expires.
    pub(crate) expiry_interval: u32,
    /// Whether the latest attach started a clean session (decides the will on takeover).
    pub(crate) last_attach_clean: bool,
    /// Boxed: rare, and large next to the rest of an idle session.
    pub(crate) pending_will: Option<Box<PendingWill>>,
    /// Removed from the registry: deliveries to it are ignored.
    pub(crate) ended: bool,
    pub(crate) disconnected_at: Option<SystemTime>,
    /// The cluster registry generation this node owns, if the session was claimed. A claim by
    /// another node fences it out.
    pub(crate) generation: Option<u64>,
}

/// A session as the index and registry hold it. Equality is identity: a session that ended and
/// a new one with the same client id are different keys.
#[derive(Debug, Clone)]
pub(crate) struct SessionRef(pub(crate) Arc<SessionEntry>);

#[derive(Debug)]
pub(crate) struct SessionEntry {
    pub(crate) client_id: Arc<str>,
    pub(crate) state: Mutex<SessionState>,
    /// Notified (all waiters) when the session's queue drained below the low watermark:
    /// publishers held back by [`Broker::wait_for_space`] wait on it.
    pub(crate) space: Notify,
}

/// What [`Broker::deliver_to`] did.
pub(crate) enum Delivery {
    /// The session had ended; nothing delivered.
    Ended,
    /// Delivered or queued (or dropped and counted by the session's bounds).
    Accepted {
        /// A QoS 1/2 message to a connected session whose queue is at least half full.
        congested: bool,
    },
}

impl PartialEq for SessionRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for SessionRef {}
impl Hash for SessionRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

/// Counters shown in `$SYS` and the stats API (the Prometheus side has its own handles).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) msgs_received: AtomicU64,
    pub(crate) msgs_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// Result of attaching a connection to a session.
pub(crate) struct Attached {
    pub(crate) session: SessionRef,
    pub(crate) session_present: bool,
}

pub(crate) struct Broker {
    pub(crate) config: Arc<Config>,
    pub(crate) limits: SessionLimits,
    pub(crate) topic_limits: TopicLimits,
    index: RwLock<SubscriptionIndex<SessionRef>>,
    retained: RwLock<RetainedStore<Arc<Message>>>,
    sessions: Mutex<HashMap<Arc<str>, SessionRef>>,
    pub(crate) metrics: Metrics,
    pub(crate) stats: Stats,
    next_conn_id: AtomicU64,
    /// Connections past CONNACK.
    pub(crate) connections: AtomicUsize,
    pub(crate) started: Instant,
    /// The cluster layer (set once at start, before any client connects).
    cluster: OnceLock<Arc<Cluster>>,
    /// Local subscriber counts per filter and pending route changes.
    pub(crate) routes: Arc<Routes>,
}

/// A message the publisher's driver must hand to a peer.
#[derive(Debug)]
pub(crate) struct RemoteSend {
    pub(crate) node: NodeId,
    /// Deliver to the peer's matching non-shared subscriptions.
    pub(crate) direct: bool,
    /// Shared subscriptions this peer was chosen to serve.
    pub(crate) shared: Vec<String>,
}

/// What routing a message did.
#[derive(Debug, Default)]
pub(crate) struct Routed {
    /// Local sessions it was delivered or queued to.
    pub(crate) local: usize,
    /// Peers that must get it.
    pub(crate) remote: Vec<RemoteSend>,
}

impl Broker {
    pub(crate) fn new(config: Arc<Config>) -> Broker {
        let topic_limits = TopicLimits {
            max_levels: config.mqtt.max_topic_levels,
            max_length: config.mqtt.max_topic_length,
        };
        let limits = SessionLimits {
            max_inflight: config.mqtt.max_inflight,
            receive_maximum: config.mqtt.receive_maximum,
            max_queued_messages: config.mqtt.max_queued_messages,
            max_queued_bytes: config.mqtt.max_queued_bytes,
            drop_policy: match config.mqtt.queue_drop {
                QueueDrop::Oldest => DropPolicy::Oldest,
                QueueDrop::Newest => DropPolicy::Newest,
            },
            topic_alias_maximum: config.mqtt.topic_alias_maximum,
            topic: topic_limits,
        };
        Broker {
            config,
            limits,
            topic_limits,
            index: RwLock::new(SubscriptionIndex::new()),
            retained: RwLock::new(RetainedStore::new()),
            sessions: Mutex::new(HashMap::new()),
            metrics: Metrics::new(),
            stats: Stats::default(),
            next_conn_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            started: crate::now(),
            cluster: OnceLock::new(),
            routes: Arc::new(Routes::default()),
        }
    }

    /// Connects the broker to its cluster layer (once, at start).
    pub(crate) fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    fn node_id(&self) -> Option<NodeId> {
        self.cluster.get().map(|c| c.node_id())
    }

    pub(crate) fn new_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Routes a message to every matching session on this node. Returns how many sessions it
    /// was delivered or queued to. Connected sessions whose queue is backing up are added to
    /// `congested` (see [`Broker::wait_for_space`]); the publisher's own session never is.
    pub(crate) fn route(
        &self,
        msg: &Arc<Message>,
        publisher: Option<&SessionRef>,
        congested: &mut Vec<SessionRef>,
    ) -> Routed {
        // Cluster routes: which peers have subscribers, and which node serves each shared
        // group this time (round robin over the nodes that have members).
        let mut remote: BTreeMap<NodeId, RemoteSend> = BTreeMap::new();
        let mut shared_policy: Option<(HashSet<String>, HashSet<String>)> = None;
        // A lone node has no peers to forward to: skip the replicated route table.
        if let Some(c) = self.cluster.get().filter(|c| c.has_peers()) {
            let me = c.node_id();
            let mut m = Matches::default();
            c.state().read().routes().matches(&msg.topic, None, &mut m);
            for d in m.direct {
                if d.subscriber != me {
                    remote
                        .entry(d.subscriber)
                        .or_insert_with(|| RemoteSend {
                            node: d.subscriber,
                            direct: false,
                            shared: Vec::new(),
                        })
                        .direct = true;
                }
            }
            let mut known = HashSet::new();
            let mut mine = HashSet::new();
            for g in m.shared {
                // Round robin from `start`, skipping members this node cannot reach: a node
                // that is down must not strand its turn of the group's messages.
                let n = g.members.len();
                let pick = (0..n)
                    .map(|i| g.members[(g.start + i) % n].0)
                    .find(|node| *node == me || c.peer_up(*node))
                    .or_else(|| g.members.get(g.start % n.max(1)).map(|(node, _)| *node));
                let Some(node) = pick.as_ref() else {
                    continue;
                };
                let filter = g.filter.as_str().to_owned();
                known.insert(filter.clone());
                if *node == me {
                    mine.insert(filter);
                } else {
                    remote
                        .entry(*node)
                        .or_insert_with(|| RemoteSend {
                            node: *node,
                            direct: false,
                            shared: Vec::new(),
                        })
                        .shared
                        .push(filter);
                }
            }
            shared_policy = Some((known, mine));
        }
        let local = self.route_local(msg, publisher, congested, true, &|f: &TopicFilter| {
            match &shared_policy {
                // A group the cluster routes is served here only when this node was picked; a
                // group not (yet) in the replicated table is served locally.
                Some((known, mine)) => !known.contains(f.as_str()) || mine.contains(f.as_str()),
                None => true,
            }
        });
        Routed {
            local,
            remote: remote.into_values().collect(),
        }
    }

    /// A message forwarded by a peer: local sessions only, never forwarded again.
    pub(crate) fn deliver_forwarded(
        &self,
        msg: &Arc<Message>,
        direct: bool,
        shared_filters: &[String],
    ) {
        let mut congested = Vec::new();
        self.route_local(msg, None, &mut congested, direct, &|f: &TopicFilter| {
            shared_filters.iter().any(|s| s == f.as_str())
        });
    }

    /// Delivers to matching local sessions: non-shared ones if `direct`, and one member of each
    /// matching shared group that `serve_shared` accepts.
    fn route_local(
        &self,
        msg: &Arc<Message>,
        publisher: Option<&SessionRef>,
        congested: &mut Vec<SessionRef>,
        direct: bool,
        serve_shared: &dyn Fn(&TopicFilter) -> bool,
    ) -> usize {
        let now = crate::now();
        let mut matches = Matches::default();
        self.index
            .read()
            .matches(&msg.topic, publisher, &mut matches);
        if !direct {
            matches.direct.clear();
        }
        let mut n = 0;
        for d in matches.direct {
            let qos = msg.qos.min(d.qos);
            let retain = d.retain_as_published && msg.retain;
            match self.deliver_to(
                &d.subscriber,
                msg.clone(),
                qos,
                retain,
                d.identifiers,
                None,
                now,
            ) {
                Delivery::Ended => {}
                Delivery::Accepted { congested: c } => {
                    n += 1;
                    if c && publisher != Some(&d.subscriber) {
                        congested.push(d.subscriber);
                    }
                }
            }
        }
        for g in matches.shared {
            if g.members.is_empty() || !serve_shared(&g.filter) {
                continue;
            }
            let (member, sub) = pick_member(&g.members, g.start);
            let qos = msg.qos.min(sub.options.qos);
            let retain = sub.options.retain_as_published && msg.retain;
            let ids = sub.identifier.into_iter().collect();
            match self.deliver_to(member, msg.clone(), qos, retain, ids, Some(g.filter), now) {
                Delivery::Ended => {}
                Delivery::Accepted { congested: c } => {
                    n += 1;
                    if c && publisher != Some(member) {
                        congested.push(member.clone());
                    }
                }
            }
        }
        n
    }

    /// Backpressure: waits until each congested session's queue has drained to a quarter of
    /// `max_queued_messages`, it disconnected, or `mqtt.backpressure_timeout_ms` passed. The
    /// publisher's driver calls this before reading more, so a publisher that outruns its
    /// subscribers is slowed by TCP flow control instead of having its messages dropped.
    ///
    /// Cancel safety: stateless; dropping it only stops waiting.
    pub(crate) async fn wait_for_space(&self, congested: &[SessionRef]) {
        let limit = Duration::from_millis(self.config.mqtt.backpressure_timeout_ms);
        if limit.is_zero() || congested.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + limit;
        let low = self.config.mqtt.max_queued_messages / 4;
        for s in congested {
            loop {
                let notified = s.0.space.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = s.0.state.lock();
                    if st.ended || st.conn.is_none() || st.session.queued_len() <= low {
                        break;
                    }
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    self.metrics.backpressure_timeouts.increment(1);
                    return;
                }
            }
        }
    }

    /// Hands messages of a departed shared-subscription member to the rest of its group.
    pub(crate) fn redistribute(&self, orphans: Vec<Orphan>, departed: &SessionRef) {
        if orphans.is_empty() {
            return;
        }
        let now = crate::now();
        for o in orphans {
            let mut matches = Matches::default();
            self.index.read().matches(&o.msg.topic, None, &mut matches);
            let Some(g) = matches.shared.into_iter().find(|g| g.filter == o.filter) else {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.queue_dropped.increment(1);
                continue;
            };
            let candidates: Vec<_> = g
                .members
                .into_iter()
                .filter(|(m, _)| m != departed)
                .collect();
            if candidates.is_empty() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.queue_dropped.increment(1);
                continue;
            }
            let (member, sub) = pick_member(&candidates, g.start);
            let qos = o.msg.qos.min(sub.options.qos);
            let ids = sub.identifier.into_iter().collect();
            let _ = self.deliver_to(member, o.msg, qos, false, ids, Some(o.filter), now);
        }
    }

    /// Delivers to one session and wakes its connection.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver_to(
        &self,
        target: &SessionRef,
        msg: Arc<Message>,
        qos: QoS,
        retain: bool,
        ids: Vec<u32>,
        shared: Option<TopicFilter>,
        now: Instant,
    ) -> Delivery {
        let mut st = target.0.state.lock();
        if st.ended {
            return Delivery::Ended;
        }
        st.session.deliver(msg, qos, retain, ids, shared, now);
        let drops = st.session.take_drops();
        if drops != Default::default() {
            let total = drops.queue_full + drops.expired + drops.offline_qos0 + drops.too_large;
            self.stats.dropped.fetch_add(total, Ordering::Relaxed);
            self.metrics.record_drops(drops);
        }
        if st.session.has_outbox() {
            if let Some(c) = &st.conn {
                c.wake.notify_one();
            }
        }
        let congested = qos != QoS::AtMostOnce
            && st.conn.is_some()
            && st.session.queued_len() >= self.config.mqtt.max_queued_messages / 2;
        Delivery::Accepted { congested }
    }

    /// Stores or clears a retained message ([MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-7]).
    /// Client topics go through the replicated state (so a subscriber on any node, or after a
    /// restart, sees it); the node's own `$SYS` topics stay local.
    pub(crate) async fn retain(&self, msg: &Arc<Message>) -> Result<(), ClusterError> {
        match self.cluster.get() {
            Some(c) if !msg.topic.is_system() => {
                c.propose(set_retained(msg)).await?;
                Ok(())
            }
            _ => {
                self.retain_local(msg);
                Ok(())
            }
        }
    }

    /// Stores a retained message in the node-local store (`$SYS`).
    pub(crate) fn retain_local(&self, msg: &Arc<Message>) {
        let mut r = self.retained.write();
        if msg.payload.is_empty() {
            r.set(&msg.topic, None);
        } else {
            r.set(&msg.topic, Some(msg.clone()));
        }
    }

    /// Retained messages matching a filter, expired ones dropped ([MQTT-3.3.2-5]).
    pub(crate) fn retained_matching(
        &self,
        filter: &TopicFilter,
        now: Instant,
    ) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.retained.read().matching(filter, &mut out);
        if let Some(c) = self.cluster.get() {
            let mut replicated = Vec::new();
            c.state()
                .read()
                .retained()
                .matching(filter, &mut replicated);
            let unix_now = unix_millis();
            for r in replicated {
                if let Some(m) = from_retained(&r, now, unix_now, &self.topic_limits) {
                    out.push(Arc::new(m));
                }
            }
        }
        out.retain(|m| !m.is_expired(now));
        out
    }

    pub(crate) fn retained_count(&self) -> usize {
        let replicated = self
            .cluster
            .get()
            .map_or(0, |c| c.state().read().retained().len());
        self.retained.read().len() + replicated
    }

    /// Drops retained messages whose expiry has passed (called periodically).
    pub(crate) fn purge_expired_retained(&self, now: Instant) {
        self.retained.write().retain(|m| !m.is_expired(now));
    }

    /// Sets the gauges whose source of truth changes outside this node (the replicated
    /// state is applied from other nodes' proposals). Called when metrics are scraped.
    pub(crate) fn refresh_gauges(&self) {
        self.metrics.retained.set(self.retained_count() as f64);
    }

    /// Adds a subscription to the index and the session; true if it is new. When it is this
    /// node's first subscriber for the filter, the route is proposed and `route` receives the
    /// commit to wait for.
    pub(crate) fn subscribe(
        &self,
        s: &SessionRef,
        filter: &TopicFilter,
        sub: roost_core::index::Subscription,
        route: &mut Option<oneshot::Receiver<RouteResult>>,
    ) -> bool {
        let (new, count) = {
            let mut idx = self.index.write();
            let new = idx.subscribe(filter, s.clone(), sub.clone());
            (new, idx.subscription_count())
        };
        if new && self.cluster.get().is_some() {
            *route = self.routes.acquire(filter);
        }
        self.metrics.subscriptions.set(count as f64);
        s.0.state
            .lock()
            .session
            .add_subscription(filter.clone(), sub);
        new
    }

    /// Removes a subscription; true if it existed.
    pub(crate) fn unsubscribe(&self, s: &SessionRef, filter: &TopicFilter) -> bool {
        let (existed, count) = {
            let mut idx = self.index.write();
            let existed = idx.unsubscribe(filter, s);
            (existed, idx.subscription_count())
        };
        if existed && self.cluster.get().is_some() {
            self.routes.release(filter);
        }
        self.metrics.subscriptions.set(count as f64);
        s.0.state.lock().session.remove_subscription(filter);
        existed
    }

    /// Indexes a session's subscriptions (one that arrived from another node); returns the
    /// route commits to wait for.
    fn index_all(
        &self,
        s: &SessionRef,
        subscriptions: &[(TopicFilter, roost_core::index::Subscription)],
    ) -> Vec<oneshot::Receiver<RouteResult>> {
        let mut routes = Vec::new();
        if subscriptions.is_empty() {
            return routes;
        }
        let clustered = self.cluster.get().is_some();
        let mut idx = self.index.write();
        for (f, sub) in subscriptions {
            if idx.subscribe(f, s.clone(), sub.clone()) && clustered {
                routes.extend(self.routes.acquire(f));
            }
        }
        self.metrics
            .subscriptions
            .set(idx.subscription_count() as f64);
        routes
    }

    fn unindex_all(&self, s: &SessionRef, filters: &[TopicFilter]) {
        if filters.is_empty() {
            return;
        }
        let clustered = self.cluster.get().is_some();
        let count = {
            let mut idx = self.index.write();
            for f in filters {
                if idx.unsubscribe(f, s) && clustered {
                    self.routes.release(f);
                }
            }
            idx.subscription_count()
        };
        self.metrics.subscriptions.set(count as f64);
    }

    /// Attaches a new connection to the client's session, creating, resuming or replacing it
    /// (clean start). An existing connection is told to leave with 0x8E (takeover).
    ///
    /// In a cluster the session is first claimed in the replicated registry (one live session
    /// per client id, cluster-wide); if another node owned it, that node hands it over
    /// (`Cluster.TakeSession`). Fails when the claim cannot commit (no quorum).
    pub(crate) async fn attach(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        clean_start: bool,
        expiry_interval: u32,
        conn: Arc<ConnCtl>,
        params: roost_core::session::ClientParams,
    ) -> Result<Attached, ClusterError> {
        let mut generation = None;
        let mut transfer = None;
        if let Some(c) = self.cluster.get() {
            // A lone node needs no claim for a session that ends with its connection; anything
            // persistent, or any session in a cluster of several, is registered.
            let needs_claim = c.has_peers() || !clean_start || expiry_interval > 0;
            if needs_claim {
                let cmd = Command::ClaimSession {
                    client_id: client_id.to_string(),
                    node: c.node_id(),
                    clean: clean_start,
                    expiry_interval,
                };
                let (_, resp) = c.propose(cmd).await?;
                if let CommandResponse::Claimed {
                    generation: g,
                    previous,
                } = resp
                {
                    generation = Some(g);
                    if let Some((owner, _)) = previous.filter(|(n, _)| *n != c.node_id()) {
                        match c.take_session(owner, client_id, g).await {
                            Ok(t) => transfer = t,
                            Err(e) => warn!(
                                client_id = %client_id, owner, error = %e,
                                "previous owner did not hand the session over; \
                                 restoring its subscriptions from the registry"
                            ),
                        }
                    }
                    if transfer.is_none() && !clean_start && self.session(client_id).is_none() {
                        // The owner is gone (or restarted): its queued messages are lost, its
                        // subscriptions are in the registry.
                        transfer = self.stored_transfer(c, client_id);
                    }
                }
            }
        }
        let (attached, routes) = self.attach_local(
            client_id,
            clean_start,
            expiry_interval,
            Arc::clone(&conn),
            params,
            generation,
            transfer,
        );
        // Fence: another node may have claimed the client after our claim but before this
        // session existed here, so its claim event found nothing to close. Whichever way the
        // race went, the later claim wins: if ours is no longer current, leave at once.
        if let (Some(c), Some(g)) = (self.cluster.get(), generation) {
            let current = c.state().read().session_owner(client_id);
            if current.is_some_and(|o| o.generation > g) {
                debug!(client_id = %client_id, "claimed by another node meanwhile");
                conn.kick(ReasonCode::SESSION_TAKEN_OVER);
            }
        }
        // Subscriptions that arrived with a session from another node: their routes must be in
        // place before the client hears CONNACK.
        for rx in routes {
            let _ = tokio::time::timeout(self.commit_timeout(), rx).await;
        }
        Ok(attached)
    }

    /// A session rebuilt from the registry: subscriptions only.
    fn stored_transfer(&self, c: &Cluster, client_id: &str) -> Option<SessionTransfer> {
        let (subs, expiry_interval) = c.state().read().stored_session(client_id);
        if subs.is_empty() {
            return None;
        }
        let mut image = roost_core::session::SessionImage::default();
        for s in subs {
            if let Some(sub) = s.to_subscription() {
                image.subscriptions.push(sub);
            }
        }
        Some(SessionTransfer {
            image,
            pending_will: None,
            expiry_interval,
        })
    }

    /// Records a persistent session's subscriptions in the registry, so they survive a restart
    /// of this node or its loss. Waits for the commit (bounded); false if it did not commit.
    pub(crate) async fn persist_subscriptions(&self, s: &SessionRef) -> bool {
        let Some(c) = self.cluster.get() else {
            return true;
        };
        let cmd = {
            let st = s.0.state.lock();
            let Some(generation) = st.generation else {
                return true;
            };
            if st.expiry_interval == 0 {
                return true;
            }
            Command::SetSubscriptions {
                client_id: s.0.client_id.to_string(),
                node: c.node_id(),
                generation,
                subscriptions: st
                    .session
                    .subscriptions()
                    .iter()
                    .map(|(f, sub)| StoredSubscription::new(f, sub))
                    .collect(),
                expiry_interval: Some(st.expiry_interval),
            }
        };
        match c.propose(cmd).await {
            Ok(_) => true,
            Err(e) => {
                warn!(client_id = %s.0.client_id, error = %e, "subscriptions not persisted");
                false
            }
        }
    }

    /// After a restart: rebuilds, as offline sessions, the persistent sessions the registry
    /// says this node owns, with their subscriptions (their queued messages were in memory and
    /// are lost). Their expiry starts again from now.
    pub(crate) fn restore_sessions(self: &Arc<Self>) {
        let Some(c) = self.cluster.get() else {
            return;
        };
        let me = c.node_id();
        let owned: Vec<(String, u64)> = c
            .state()
            .read()
            .snapshot()
            .sessions
            .iter()
            .filter(|(_, o)| o.node == me)
            .map(|(id, o)| (id.clone(), o.generation))
            .collect();
        let mut restored = 0;
        for (client_id, generation) in owned {
            let Some(t) = self.stored_transfer(c, &client_id) else {
                continue;
            };
            let id: Arc<str> = client_id.as_str().into();
            let expiry = t.expiry_interval;
            let mut session = Session::new(id.clone(), self.limits.clone());
            let entry = SessionRef(Arc::new(SessionEntry {
                client_id: id.clone(),
                space: Notify::new(),
                state: Mutex::new(SessionState {
                    session: {
                        for (f, sub) in &t.image.subscriptions {
                            session.add_subscription(f.clone(), sub.clone());
                        }
                        session
                    },
                    conn: None,
                    epoch: 1,
                    expiry_interval: expiry,
                    last_attach_clean: false,
                    pending_will: None,
                    ended: false,
                    disconnected_at: Some(SystemTime::now()),
                    generation: Some(generation),
                }),
            }));
            {
                let mut idx = self.index.write();
                for (f, sub) in &t.image.subscriptions {
                    if idx.subscribe(f, entry.clone(), sub.clone()) {
                        // Fire and forget: nothing waits for a restored route.
                        drop(self.routes.acquire(f));
                    }
                }
                self.metrics
                    .subscriptions
                    .set(idx.subscription_count() as f64);
            }
            self.sessions.lock().insert(id, entry.clone());
            restored += 1;
            if expiry != u32::MAX {
                let broker = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
                    if broker.end_session(&entry, Some(1)) {
                        broker.metrics.sessions_expired.increment(1);
                    }
                });
            }
        }
        self.metrics.sessions.set(self.sessions.lock().len() as f64);
        if restored > 0 {
            tracing::info!(
                sessions = restored,
                "restored persistent sessions from the registry"
            );
        }
    }

    fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.config.cluster.commit_timeout_ms)
    }

    #[allow(clippy::too_many_arguments)]
    fn attach_local(
        &self,
        client_id: &Arc<str>,
        clean_start: bool,
        expiry_interval: u32,
        conn: Arc<ConnCtl>,
        params: roost_core::session::ClientParams,
        generation: Option<u64>,
        transfer: Option<SessionTransfer>,
    ) -> (Attached, Vec<oneshot::Receiver<RouteResult>>) {
        let now = crate::now();
        let mut sessions = self.sessions.lock();
        if let Some(existing) = sessions.get(client_id).cloned() {
            let mut st = existing.0.state.lock();
            if let Some(old) = st.conn.take() {
                old.kick(ReasonCode::SESSION_TAKEN_OVER);
                self.metrics.takeovers.increment(1);
                debug!(client_id = %client_id, "session taken over");
            }
            let mut will_now = None;
            let mut orphans = Vec::new();
            let mut old_filters = Vec::new();
            // A copy left here from before the client moved to another node is stale: the
            // session that node handed back replaces it.
            let handed_back = transfer.filter(|_| !clean_start).map(|t| t.image);
            let mut new_subscriptions = Vec::new();
            let present = if let Some(image) = handed_back {
                old_filters = st.session.subscriptions().keys().cloned().collect();
                orphans = st.session.end();
                new_subscriptions = image.subscriptions.clone();
                st.session = Session::import(client_id.clone(), self.limits.clone(), image);
                st.pending_will = None;
                true
            } else if clean_start {
                old_filters = st.session.subscriptions().keys().cloned().collect();
                orphans = st.session.end();
                st.session = Session::new(client_id.clone(), self.limits.clone());
                // The old session ended: its delayed will is due now (§3.1.3.2.2).
                will_now = st.pending_will.take();
                false
            } else {
                // Reconnected within the will delay: the will is not sent.
                st.pending_will = None;
                true
            };
            st.epoch += 1;
            st.conn = Some(conn);
            st.expiry_interval = expiry_interval;
            st.last_attach_clean = clean_start;
            st.disconnected_at = None;
            if generation.is_some() {
                st.generation = generation;
            }
            st.session.connect(params, now);
            drop(st);
            drop(sessions);
            self.unindex_all(&existing, &old_filters);
            self.redistribute(orphans, &existing);
            let routes = self.index_all(&existing, &new_subscriptions);
            if let Some(w) = will_now {
                self.publish_will(w.will, client_id);
            }
            let attached = Attached {
                session: existing,
                session_present: present,
            };
            return (attached, routes);
        }
        // A session handed over by another node continues here unless the client asked for a
        // clean start (then it ended there, and a will it was holding is due now).
        let mut will_now = None;
        let mut imported = None;
        if let Some(t) = transfer {
            if clean_start {
                will_now = t.pending_will;
            } else {
                imported = Some(t.image);
            }
        }
        let present = imported.is_some();
        let subscriptions = imported
            .as_ref()
            .map(|i| i.subscriptions.clone())
            .unwrap_or_default();
        let mut session = match imported {
            Some(image) => Session::import(client_id.clone(), self.limits.clone(), image),
            None => Session::new(client_id.clone(), self.limits.clone()),
        };
        session.connect(params, now);
        let entry = SessionRef(Arc::new(SessionEntry {
            client_id: client_id.clone(),
            space: Notify::new(),
            state: Mutex::new(SessionState {
                session,
                conn: Some(conn),
                epoch: 1,
                expiry_interval,
                last_attach_clean: clean_start,
                pending_will: None,
                ended: false,
                disconnected_at: None,
                generation,
            }),
        }));
        sessions.insert(client_id.clone(), entry.clone());
        self.metrics.sessions.set(sessions.len() as f64);
        drop(sessions);
        let routes = self.index_all(&entry, &subscriptions);
        if let Some(w) = will_now {
            self.publish_will(w, client_id);
        }
        let attached = Attached {
            session: entry,
            session_present: present,
        };
        (attached, routes)
    }

    /// Another node claimed `client_id`: hand its session over and forget it here. The local
    /// connection (if any) is closed with 0x8E first and given a moment to detach.
    pub(crate) async fn hand_over(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Option<SessionTransfer> {
        let s = self.session(client_id)?;
        {
            let st = s.0.state.lock();
            if st.generation.is_some_and(|g| g >= generation) {
                // We own a newer claim than the requester: it lost the race.
                return None;
            }
            if let Some(c) = &st.conn {
                c.kick(ReasonCode::SESSION_TAKEN_OVER);
            }
        }
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.config.cluster.forward_timeout_ms) / 2;
        while s.0.state.lock().conn.is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut sessions = self.sessions.lock();
        let mut st = s.0.state.lock();
        if st.ended {
            return None;
        }
        st.ended = true;
        if let Some(c) = st.conn.take() {
            c.kick(ReasonCode::SESSION_TAKEN_OVER);
        }
        let filters: Vec<_> = st.session.subscriptions().keys().cloned().collect();
        let image = st.session.export();
        let pending_will = st.pending_will.take().map(|w| w.will);
        let expiry_interval = st.expiry_interval;
        drop(st);
        if sessions.get(client_id).is_some_and(|cur| cur == &s) {
            sessions.remove(client_id);
        }
        self.metrics.sessions.set(sessions.len() as f64);
        drop(sessions);
        self.unindex_all(&s, &filters);
        self.metrics.takeovers.increment(1);
        debug!(client_id, generation, "session handed over to another node");
        Some(SessionTransfer {
            image,
            pending_will,
            expiry_interval,
        })
    }

    /// Reacts to an applied cluster entry. A claim of a client this node serves, by another
    /// node, fences the local connection out (0x8E); the session itself waits for the new
    /// owner's TakeSession call.
    pub(crate) fn on_cluster_event(self: &Arc<Self>, event: &Event) {
        let Event::SessionClaimed { client_id, owner } = event;
        if Some(owner.node) == self.node_id() {
            return;
        }
        let Some(s) = self.session(client_id) else {
            return;
        };
        {
            let st = s.0.state.lock();
            if st.generation.is_some_and(|g| g >= owner.generation) {
                return;
            }
            if let Some(c) = &st.conn {
                debug!(client_id = %client_id, owner = owner.node, "session claimed by another node");
                c.kick(ReasonCode::SESSION_TAKEN_OVER);
            }
        }
        // The new owner normally fetches the session (TakeSession) right away. If it has not
        // within twice the forward timeout, the copy left here is stale: drop it, so it does not
        // collect messages for a client that lives elsewhere now. Its will went with the claim.
        let broker = Arc::clone(self);
        let generation = owner.generation;
        let wait = Duration::from_millis(self.config.cluster.forward_timeout_ms) * 2;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let stale = {
                let mut st = s.0.state.lock();
                let stale =
                    !st.ended && st.conn.is_none() && st.generation.is_none_or(|g| g < generation);
                if stale {
                    st.pending_will = None;
                }
                stale
            };
            if stale {
                broker.end_session(&s, None);
            }
        });
    }

    /// Called by a driver when its connection ends. `will` is the connection's will if it must
    /// be published (abnormal close or DISCONNECT 0x04); `expiry_interval` the final value
    /// (DISCONNECT may change it).
    pub(crate) fn detach(
        self: &Arc<Self>,
        s: &SessionRef,
        conn: &Arc<ConnCtl>,
        will: Option<Box<LastWill>>,
        expiry_interval: u32,
    ) {
        let mut st = s.0.state.lock();
        let ours = st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn));
        if !ours {
            // Taken over: the session lives on with the new connection. The old connection's
            // will goes out now unless it has a delay and the session continued (§3.1.4).
            let clean = st.last_attach_clean;
            drop(st);
            if let Some(w) = will {
                if will_delay(&w) == 0 || clean {
                    self.publish_will(*w, &s.0.client_id);
                }
            }
            return;
        }
        st.conn = None;
        st.session.disconnect();
        // A v5 DISCONNECT changed the expiry of a registered persistent session: record it, so
        // a restart of this node restores the right one.
        if expiry_interval != st.expiry_interval && expiry_interval > 0 && st.generation.is_some() {
            let broker = Arc::clone(self);
            let s2 = s.clone();
            tokio::spawn(async move {
                broker.persist_subscriptions(&s2).await;
            });
        }
        // Publishers waiting for this session to drain stop waiting: it is offline now.
        s.0.space.notify_waiters();
        st.expiry_interval = expiry_interval;
        st.disconnected_at = Some(SystemTime::now());
        let epoch = st.epoch;
        let orphans = st.session.take_shared_queued();
        let mut will_now = None;
        if let Some(w) = will {
            let delay = will_delay(&w);
            if delay == 0 || expiry_interval == 0 {
                will_now = Some(w);
            } else {
                st.pending_will = Some(Box::new(PendingWill { will: *w }));
                let broker = Arc::clone(self);
                let s2 = s.clone();
                let d = Duration::from_secs(u64::from(delay.min(expiry_interval)));
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    broker.fire_delayed_will(&s2, epoch);
                });
            }
        }
        drop(st);
        self.redistribute(orphans, s);
        if let Some(w) = will_now {
            self.publish_will(*w, &s.0.client_id);
        }
        if expiry_interval == 0 {
            self.end_session(s, Some(epoch));
        } else if expiry_interval != u32::MAX {
            let broker = Arc::clone(self);
            let s2 = s.clone();
            let d = Duration::from_secs(u64::from(expiry_interval));
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                if broker.end_session(&s2, Some(epoch)) {
                    broker.metrics.sessions_expired.increment(1);
                }
            });
        }
    }

    fn fire_delayed_will(&self, s: &SessionRef, epoch: u64) {
        let will = {
            let mut st = s.0.state.lock();
            if st.epoch != epoch || st.conn.is_some() {
                return;
            }
            st.pending_will.take()
        };
        if let Some(w) = will {
            self.publish_will(w.will, &s.0.client_id);
        }
    }

    /// Removes a session from the registry and the index. With `epoch`, only if no connection
    /// attached since (expiry timers). Returns true if it ended the session.
    pub(crate) fn end_session(&self, s: &SessionRef, epoch: Option<u64>) -> bool {
        let mut sessions = self.sessions.lock();
        let mut st = s.0.state.lock();
        if st.ended || epoch.is_some_and(|e| e != st.epoch || st.conn.is_some()) {
            return false;
        }
        st.ended = true;
        let filters: Vec<_> = st.session.subscriptions().keys().cloned().collect();
        let orphans = st.session.end();
        let will = st.pending_will.take();
        let generation = st.generation;
        drop(st);
        if let (Some(c), Some(generation)) = (self.cluster.get(), generation) {
            let c = Arc::clone(c);
            let cmd = Command::ReleaseSession {
                client_id: s.0.client_id.to_string(),
                node: c.node_id(),
                generation,
            };
            tokio::spawn(async move {
                if let Err(e) = c.propose(cmd).await {
                    debug!(error = %e, "session release not committed (it stays registered)");
                }
            });
        }
        if sessions.get(&s.0.client_id).is_some_and(|cur| cur == s) {
            sessions.remove(&s.0.client_id);
        }
        self.metrics.sessions.set(sessions.len() as f64);
        drop(sessions);
        self.unindex_all(s, &filters);
        self.redistribute(orphans, s);
        if let Some(w) = will {
            self.publish_will(w.will, &s.0.client_id);
        }
        true
    }

    /// Publishes a will message as if its client had published it.
    pub(crate) fn publish_will(&self, mut will: LastWill, client_id: &Arc<str>) {
        let Ok(topic) = TopicName::new(&will.topic, &self.topic_limits) else {
            return;
        };
        let now = crate::now();
        let msg = Arc::new(Message {
            topic,
            expires_at: will
                .properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            properties: PassThrough::from_properties(&mut will.properties),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            publisher: Some(client_id.clone()),
        });
        self.metrics.wills.increment(1);
        debug!(client_id = %client_id, topic = msg.topic.as_str(), "publishing will");
        self.publish_detached(msg);
    }

    /// Publishes a message made by the broker itself (a will): routed at once; its retained
    /// copy commits and its forwards go out on a task of their own, without holding up the
    /// caller (a driver closing, or an expiry timer).
    fn publish_detached(&self, msg: Arc<Message>) {
        let routed = self.route(&msg, None, &mut Vec::new());
        let Some(cluster) = self.cluster.get().cloned() else {
            if msg.retain {
                self.retain_local(&msg);
            }
            return;
        };
        let replicate = msg.retain && !msg.topic.is_system();
        if msg.retain && msg.topic.is_system() {
            self.retain_local(&msg);
        }
        if !replicate && routed.remote.is_empty() {
            return;
        }
        tokio::spawn(async move {
            if replicate {
                if let Err(e) = cluster.propose(set_retained(&msg)).await {
                    warn!(error = %e, "retained will message not stored");
                }
            }
            for r in routed.remote {
                let _ = cluster
                    .forward(r.node, msg.clone(), r.direct, r.shared)
                    .await;
            }
        });
    }

    /// Publishes a broker-made message ($SYS): retained, QoS 0.
    pub(crate) fn publish_internal(&self, topic: &str, payload: String) {
        let Ok(topic) = TopicName::new(topic, &self.topic_limits) else {
            return;
        };
        let msg = Arc::new(Message {
            topic,
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PassThrough::default(),
            expires_at: None,
            publisher: None,
        });
        // `$SYS` is this node's own: retained locally, delivered to local subscribers only.
        self.retain_local(&msg);
        self.route_local(&msg, None, &mut Vec::new(), true, &|_| true);
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

    /// Tells every connected client to leave with `reason` (shutdown).
    pub(crate) fn kick_all(&self, reason: ReasonCode) {
        for s in self.sessions() {
            if let Some(c) = &s.0.state.lock().conn {
                c.kick(reason);
            }
        }
    }
}

fn will_delay(w: &LastWill) -> u32 {
    w.properties.will_delay_interval.unwrap_or(0)
}

/// Chooses one member of a shared subscription: starting at `start`, the first connected member
/// with room in its window, else the first connected one, else the one at `start` (its queue
/// keeps the message until it returns or its session ends and the message is redistributed).
fn pick_member(
    members: &[(SessionRef, roost_core::index::Subscription)],
    start: usize,
) -> (&SessionRef, &roost_core::index::Subscription) {
    let n = members.len();
    let mut connected = None;
    for i in 0..n {
        let (m, sub) = &members[(start + i) % n];
        let st = m.0.state.lock();
        if st.ended {
            continue;
        }
        if st.session.has_window() {
            return (m, sub);
        }
        if connected.is_none() && st.session.is_connected() {
            connected = Some((m, sub));
        }
    }
    connected.unwrap_or_else(|| {
        let (m, sub) = &members[start % n];
        (m, sub)
    })
}

/// Wall-clock milliseconds, advanced by tokio's clock from an anchor taken once: the same as
/// the system clock in production, and under control of tests that pause tokio's clock.
pub(crate) fn unix_millis() -> u64 {
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    let (unix, at) = *ANCHOR.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        (unix, crate::now())
    });
    let since = crate::now().saturating_duration_since(at);
    unix.saturating_add(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// Stores a retained message in the replicated state, or clears it for an empty payload
/// ([MQTT-3.3.1-6]).
fn set_retained(msg: &Message) -> Command {
    Command::SetRetained {
        topic: msg.topic.as_str().to_owned(),
        message: (!msg.payload.is_empty()).then(|| to_retained(msg)),
    }
}

/// A retained message for the replicated store (expiry as wall-clock time: it is applied on
/// other machines and after restarts).
fn to_retained(m: &Message) -> RetainedMessage {
    let now = crate::now();
    RetainedMessage {
        topic: m.topic.as_str().to_owned(),
        payload: m.payload.to_vec(),
        qos: m.qos as u8,
        payload_format_indicator: m.properties.payload_format_indicator,
        content_type: m.properties.content_type.clone(),
        response_topic: m.properties.response_topic.clone(),
        correlation_data: m.properties.correlation_data.as_ref().map(|b| b.to_vec()),
        user_properties: m.properties.user_properties.clone(),
        expires_at_unix_ms: m.expires_at.map(|t| {
            let left = u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(0);
            unix_millis().saturating_add(left)
        }),
        publisher: m.publisher.as_deref().map(str::to_owned),
    }
}

/// A replicated retained message as a routable message; `None` if it expired or is invalid.
fn from_retained(
    r: &RetainedMessage,
    now: Instant,
    unix_now: u64,
    limits: &TopicLimits,
) -> Option<Message> {
    let expires_at = match r.expires_at_unix_ms {
        Some(at) if at <= unix_now => return None,
        Some(at) => Some(now + Duration::from_millis(at - unix_now)),
        None => None,
    };
    Some(Message {
        topic: TopicName::new(&r.topic, limits).ok()?,
        payload: bytes::Bytes::from(r.payload.clone()),
        qos: QoS::from_u8(r.qos)?,
        retain: true,
        properties: PassThrough {
            payload_format_indicator: r.payload_format_indicator,
            content_type: r.content_type.clone(),
            response_topic: r.response_topic.clone(),
            correlation_data: r.correlation_data.clone().map(bytes::Bytes::from),
            user_properties: r.user_properties.clone(),
        },
        expires_at,
        publisher: r.publisher.as_deref().map(Arc::from),
    })
}
