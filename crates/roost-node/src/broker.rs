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

use crate::config::{Config, QueueDrop};
use crate::metrics::Metrics;
use parking_lot::{Mutex, RwLock};
use roost_codec::{LastWill, Protocol, QoS, ReasonCode};
use roost_core::index::{Matches, SubscriptionIndex};
use roost_core::message::{Message, PassThrough};
use roost_core::retained::RetainedStore;
use roost_core::session::{DropPolicy, Orphan, Session, SessionLimits};
use roost_core::topic::{TopicFilter, TopicLimits, TopicName};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;
use tracing::debug;

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
        }
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
    ) -> usize {
        let now = crate::now();
        let mut matches = Matches::default();
        self.index
            .read()
            .matches(&msg.topic, publisher, &mut matches);
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
            if g.members.is_empty() {
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
    pub(crate) fn retain(&self, msg: &Arc<Message>) {
        let mut r = self.retained.write();
        if msg.payload.is_empty() {
            r.set(&msg.topic, None);
        } else {
            r.set(&msg.topic, Some(msg.clone()));
        }
        self.metrics.retained.set(r.len() as f64);
    }

    /// Retained messages matching a filter, expired ones dropped ([MQTT-3.3.2-5]).
    pub(crate) fn retained_matching(
        &self,
        filter: &TopicFilter,
        now: Instant,
    ) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.retained.read().matching(filter, &mut out);
        out.retain(|m| !m.is_expired(now));
        out
    }

    pub(crate) fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Drops retained messages whose expiry has passed (called periodically).
    pub(crate) fn purge_expired_retained(&self, now: Instant) {
        let mut r = self.retained.write();
        if r.retain(|m| !m.is_expired(now)) > 0 {
            self.metrics.retained.set(r.len() as f64);
        }
    }

    /// Adds a subscription to the index and the session; true if it is new.
    pub(crate) fn subscribe(
        &self,
        s: &SessionRef,
        filter: &TopicFilter,
        sub: roost_core::index::Subscription,
    ) -> bool {
        let (new, count) = {
            let mut idx = self.index.write();
            let new = idx.subscribe(filter, s.clone(), sub.clone());
            (new, idx.subscription_count())
        };
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
        self.metrics.subscriptions.set(count as f64);
        s.0.state.lock().session.remove_subscription(filter);
        existed
    }

    fn unindex_all(&self, s: &SessionRef, filters: &[TopicFilter]) {
        if filters.is_empty() {
            return;
        }
        let count = {
            let mut idx = self.index.write();
            for f in filters {
                idx.unsubscribe(f, s);
            }
            idx.subscription_count()
        };
        self.metrics.subscriptions.set(count as f64);
    }

    /// Attaches a new connection to the client's session, creating, resuming or replacing it
    /// (clean start). An existing connection is told to leave with 0x8E (takeover).
    pub(crate) fn attach(
        &self,
        client_id: &Arc<str>,
        clean_start: bool,
        expiry_interval: u32,
        conn: Arc<ConnCtl>,
        params: roost_core::session::ClientParams,
    ) -> Attached {
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
            let present = if clean_start {
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
            st.session.connect(params, now);
            drop(st);
            drop(sessions);
            self.unindex_all(&existing, &old_filters);
            self.redistribute(orphans, &existing);
            if let Some(w) = will_now {
                self.publish_will(w.will, client_id);
            }
            return Attached {
                session: existing,
                session_present: present,
            };
        }
        let mut session = Session::new(client_id.clone(), self.limits.clone());
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
            }),
        }));
        sessions.insert(client_id.clone(), entry.clone());
        self.metrics.sessions.set(sessions.len() as f64);
        Attached {
            session: entry,
            session_present: false,
        }
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
        drop(st);
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
        if msg.retain {
            self.retain(&msg);
        }
        self.route(&msg, None, &mut Vec::new());
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
        self.retain(&msg);
        self.route(&msg, None, &mut Vec::new());
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
