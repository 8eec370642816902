//! The session registry: the one place a session is built, attached, resumed, taken over
//! (here or from another node), detached, expired, handed over to another node and restored
//! after a restart. Timers go to [`super::timers`]; background work (registry proposals, will
//! publishes) is tracked by the broker so shutdown waits for it.
//!
//! ```text
//!  CONNECT ─▶ attach ─ claim (Raft) ─ TakeSession from the old owner? ─▶ attach_local ─▶ SessionRef
//!  close   ─▶ detach ─ will now | will timer ─ end now | expiry timer
//!  peer's TakeSession ─▶ hand_over: kick 0x8E, wait for the driver to detach, export the image
//!  another node's claim applied ─▶ on_cluster_event: kick 0x8E, stale-copy timer
//! ```
//!
//! Lock order: the registry map, then one session's state (see [`super::session`]).

use super::session::SessionState;
use super::timers::{Due, TimerKind};
use super::{Broker, ConnCtl, Origin, SessionRef};
use crate::routes::RouteResult;
use roost_cluster::state::Event;
use roost_cluster::types::{Command, CommandResponse};
use roost_cluster::{ClusterError, SessionTransfer};
use roost_codec::{LastWill, ReasonCode};
use roost_core::message::{Message, PassThrough};
use roost_core::session::{ClientParams, Session, SessionImage};
use roost_core::topic::TopicName;
use roost_core::ClientId;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// Result of attaching a connection to a session.
pub(crate) struct Attached {
    pub(crate) session: SessionRef,
    pub(crate) session_present: bool,
}

fn will_delay(w: &LastWill) -> u32 {
    w.properties.will_delay_interval.unwrap_or(0)
}

impl Broker {
    /// Builds a session entry: the only constructor of [`SessionState`].
    fn new_entry(
        &self,
        client_id: &ClientId,
        session: Session,
        conn: Option<Arc<ConnCtl>>,
        expiry_interval: u32,
        clean: bool,
        generation: Option<u64>,
    ) -> SessionRef {
        let disconnected_at = conn.is_none().then(SystemTime::now);
        SessionRef::new(
            client_id.clone(),
            SessionState {
                session,
                conn,
                epoch: 1,
                expiry_interval,
                last_attach_clean: clean,
                pending_will: None,
                ended: false,
                disconnected_at,
                generation,
            },
        )
    }

    /// Arms the expiry timer of a detached session (none for u32::MAX: never expires).
    fn arm_expiry(&self, s: &SessionRef, epoch: u64, expiry_interval: u32) {
        if expiry_interval != u32::MAX {
            let at = tokio::time::Instant::now() + Duration::from_secs(u64::from(expiry_interval));
            self.timers.arm(at, s.clone(), epoch, TimerKind::Expiry);
        }
    }

    /// Attaches a new connection to the client's session, creating, resuming or replacing it
    /// (clean start). An existing connection is told to leave with 0x8E (takeover).
    ///
    /// The session is first claimed in the replicated registry (one live session per client
    /// id, cluster-wide); if another node owned it, that node hands it over
    /// (`Cluster.TakeSession`). Fails when the claim cannot commit (no quorum).
    pub(crate) async fn attach(
        self: &Arc<Self>,
        client_id: &ClientId,
        clean_start: bool,
        expiry_interval: u32,
        conn: Arc<ConnCtl>,
        params: ClientParams,
    ) -> Result<Attached, ClusterError> {
        let mut generation = None;
        let mut transfer = None;
        let c = Arc::clone(&self.cluster);
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
                            client_id = %client_id, owner = %owner, error = %e,
                            "previous owner did not hand the session over; \
                             restoring its subscriptions from the registry"
                        ),
                    }
                }
                if transfer.is_none() && !clean_start && self.session(client_id.as_str()).is_none()
                {
                    // The owner is gone (or restarted): its queued messages are lost, its
                    // subscriptions are in the registry.
                    transfer = self.stored_transfer(client_id.as_str());
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
        if let Some(g) = generation {
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
    fn stored_transfer(&self, client_id: &str) -> Option<SessionTransfer> {
        let (subs, expiry_interval) = self
            .cluster
            .state()
            .read()
            .stored_session(&ClientId::from(client_id));
        if subs.is_empty() {
            return None;
        }
        let mut image = SessionImage::default();
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

    /// After a restart: rebuilds, as offline sessions, the persistent sessions the registry
    /// says this node owns, with their subscriptions (their queued messages were in memory and
    /// are lost). Their expiry starts again from now.
    pub(crate) fn restore_sessions(self: &Arc<Self>) {
        let me = self.cluster.node_id();
        let owned: Vec<(String, u64)> = self
            .cluster
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
            let Some(t) = self.stored_transfer(&client_id) else {
                continue;
            };
            let id = ClientId::from(client_id);
            let mut session = Session::new(id.as_arc().clone(), self.limits.clone());
            for (f, sub) in &t.image.subscriptions {
                session.add_subscription(f.clone(), sub.clone());
            }
            let entry = self.new_entry(
                &id,
                session,
                None,
                t.expiry_interval,
                false,
                Some(generation),
            );
            // Fire and forget: nothing waits for a restored route.
            drop(self.index_all(&entry, &t.image.subscriptions));
            self.sessions.lock().insert(id, entry.clone());
            self.arm_expiry(&entry, 1, t.expiry_interval);
            restored += 1;
        }
        if restored > 0 {
            tracing::info!(
                sessions = restored,
                "restored persistent sessions from the registry"
            );
        }
    }

    #[allow(clippy::too_many_arguments)] // attach's inputs plus what the claim produced
    fn attach_local(
        self: &Arc<Self>,
        client_id: &ClientId,
        clean_start: bool,
        expiry_interval: u32,
        conn: Arc<ConnCtl>,
        params: ClientParams,
        generation: Option<u64>,
        transfer: Option<SessionTransfer>,
    ) -> (Attached, Vec<oneshot::Receiver<RouteResult>>) {
        let now = crate::now();
        let mut sessions = self.sessions.lock();
        if let Some(existing) = sessions.get(client_id).cloned() {
            let mut st = existing.lock();
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
                st.session =
                    Session::import(client_id.as_arc().clone(), self.limits.clone(), image);
                st.pending_will = None;
                true
            } else if clean_start {
                old_filters = st.session.subscriptions().keys().cloned().collect();
                orphans = st.session.end();
                st.session = Session::new(client_id.as_arc().clone(), self.limits.clone());
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
                self.publish_will(*w, client_id);
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
        let id = client_id.as_arc().clone();
        let mut session = match imported {
            Some(image) => Session::import(id, self.limits.clone(), image),
            None => Session::new(id, self.limits.clone()),
        };
        session.connect(params, now);
        let entry = self.new_entry(
            client_id,
            session,
            Some(conn),
            expiry_interval,
            clean_start,
            generation,
        );
        sessions.insert(client_id.clone(), entry.clone());
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
    /// connection (if any) is closed with 0x8E first and given up to half the forward timeout
    /// to detach (woken by the detach itself, no polling).
    pub(crate) async fn hand_over(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Option<SessionTransfer> {
        let s = self.session(client_id)?;
        {
            let st = s.lock();
            if st.generation.is_some_and(|g| g >= generation) {
                // We own a newer claim than the requester: it lost the race.
                return None;
            }
            if let Some(c) = &st.conn {
                c.kick(ReasonCode::SESSION_TAKEN_OVER);
            }
        }
        let limit = Duration::from_millis(self.config.cluster.forward_timeout_ms) / 2;
        let detached = async {
            while s.conn().is_some() {
                s.wait_changed(|s| s.conn().is_none()).await;
            }
        };
        let _ = tokio::time::timeout(limit, detached).await;
        let mut sessions = self.sessions.lock();
        let mut st = s.lock();
        if st.ended {
            return None;
        }
        st.ended = true;
        if let Some(c) = st.conn.take() {
            c.kick(ReasonCode::SESSION_TAKEN_OVER);
        }
        let filters: Vec<_> = st.session.subscriptions().keys().cloned().collect();
        let image = st.session.export();
        let pending_will = st.pending_will.take().map(|w| *w);
        let expiry_interval = st.expiry_interval;
        drop(st);
        if sessions.get(client_id).is_some_and(|cur| cur == &s) {
            sessions.remove(client_id);
        }
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
    /// owner's TakeSession call. If that has not come within twice the forward timeout, the
    /// copy left here is stale and is dropped (a timer), so it does not collect messages for a
    /// client that lives elsewhere now. Its will went with the claim.
    pub(crate) fn on_cluster_event(&self, event: &Event) {
        let Event::SessionClaimed { client_id, owner } = event;
        if owner.node == self.cluster.node_id() {
            return;
        }
        let Some(s) = self.session(client_id.as_str()) else {
            return;
        };
        {
            let st = s.lock();
            if st.generation.is_some_and(|g| g >= owner.generation) {
                return;
            }
            if let Some(c) = &st.conn {
                debug!(client_id = %client_id, owner = %owner.node, "session claimed by another node");
                c.kick(ReasonCode::SESSION_TAKEN_OVER);
            }
        }
        let wait = Duration::from_millis(self.config.cluster.forward_timeout_ms) * 2;
        let kind = TimerKind::StaleCopy {
            generation: owner.generation,
        };
        self.timers
            .arm(tokio::time::Instant::now() + wait, s, 0, kind);
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
        let mut st = s.lock();
        let ours = st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn));
        if !ours {
            // Taken over: the session lives on with the new connection. The old connection's
            // will goes out now unless it has a delay and the session continued (§3.1.4).
            let clean = st.last_attach_clean;
            drop(st);
            if let Some(w) = will {
                if will_delay(&w) == 0 || clean {
                    self.publish_will(*w, s.client_id());
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
            self.spawn(async move {
                broker.persist_subscriptions(&s2).await;
            });
        }
        // Publishers waiting for this session to drain, and a hand-over waiting for the
        // connection to go, stop waiting: it is offline now.
        s.changed().notify_waiters();
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
                st.pending_will = Some(w);
                let d = Duration::from_secs(u64::from(delay.min(expiry_interval)));
                self.timers.arm(
                    tokio::time::Instant::now() + d,
                    s.clone(),
                    epoch,
                    TimerKind::Will,
                );
            }
        }
        drop(st);
        self.redistribute(orphans, s);
        if let Some(w) = will_now {
            self.publish_will(*w, s.client_id());
        }
        if expiry_interval == 0 {
            self.end_session(s, Some(epoch));
        } else {
            self.arm_expiry(s, epoch, expiry_interval);
        }
    }

    /// A timer from [`super::timers`] is due.
    pub(super) fn fire_timer(self: &Arc<Self>, due: Due) {
        let s = &due.session;
        match due.kind {
            TimerKind::Will => {
                let will = {
                    let mut st = s.lock();
                    if st.epoch != due.epoch || st.conn.is_some() {
                        return;
                    }
                    st.pending_will.take()
                };
                if let Some(w) = will {
                    self.publish_will(*w, s.client_id());
                }
            }
            TimerKind::Expiry => {
                if self.end_session(s, Some(due.epoch)) {
                    self.metrics.sessions_expired.increment(1);
                }
            }
            TimerKind::StaleCopy { generation } => {
                let stale = {
                    let mut st = s.lock();
                    let stale = !st.ended
                        && st.conn.is_none()
                        && st.generation.is_none_or(|g| g < generation);
                    if stale {
                        st.pending_will = None;
                    }
                    stale
                };
                if stale {
                    self.end_session(s, None);
                }
            }
        }
    }

    /// Removes a session from the registry and the index. With `epoch`, only if no connection
    /// attached since (expiry timers). Returns true if it ended the session.
    pub(crate) fn end_session(self: &Arc<Self>, s: &SessionRef, epoch: Option<u64>) -> bool {
        let mut sessions = self.sessions.lock();
        let mut st = s.lock();
        if st.ended || epoch.is_some_and(|e| e != st.epoch || st.conn.is_some()) {
            return false;
        }
        st.ended = true;
        let filters: Vec<_> = st.session.subscriptions().keys().cloned().collect();
        let orphans = st.session.end();
        let will = st.pending_will.take();
        let generation = st.generation;
        drop(st);
        if let Some(generation) = generation {
            let c = Arc::clone(&self.cluster);
            let cmd = Command::ReleaseSession {
                client_id: s.client_id().to_string(),
                node: c.node_id(),
                generation,
            };
            self.spawn(async move {
                if let Err(e) = c.propose(cmd).await {
                    debug!(error = %e, "session release not committed (it stays registered)");
                }
            });
        }
        if sessions.get(s.client_id()).is_some_and(|cur| cur == s) {
            sessions.remove(s.client_id());
        }
        drop(sessions);
        self.unindex_all(s, &filters);
        self.redistribute(orphans, s);
        if let Some(w) = will {
            self.publish_will(*w, s.client_id());
        }
        true
    }

    /// Publishes a will message as if its client had published it, on a tracked task: the
    /// caller (a driver closing, a timer) is not held up by the retained commit or forwarding.
    pub(crate) fn publish_will(self: &Arc<Self>, mut will: LastWill, client_id: &ClientId) {
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
            publisher: Some(client_id.as_arc().clone()),
        });
        self.metrics.wills.increment(1);
        debug!(client_id = %client_id, topic = msg.topic.as_str(), "publishing will");
        let broker = Arc::clone(self);
        self.spawn(async move {
            let out = broker.publish(&msg, Origin::Will).await;
            if let Some(peers) = out.peers {
                let _ = peers.await;
            }
        });
    }
}
