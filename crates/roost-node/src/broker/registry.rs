//! The session registry: the one place a session is built, attached, resumed, taken over
//! (here or from another node), detached, expired, handed over to another node and restored
//! after a restart. Timers go to [`super::timers`]; background work (registry proposals, will
//! publishes) is tracked by the broker so shutdown waits for it.
//!
//! ```text
//!  CONNECT ─▶ lease held? ─ [lane] attach ─ claim (Raft) ─ TakeSession from the old owner
//!            (unreachable: ask again until its lease ran out) ─▶ attach_local
//!            ─ overtaken by a later claim? drop_lost_claim ─▶ SessionRef
//!  close   ─▶ detach ─ will now | will timer ─ end now | expiry timer
//!  peer's TakeSession ─▶ hand_over: kick 0x8E, wait for the driver to detach, export the image
//!  another node's claim applied ─▶ on_cluster_event: kick 0x8E, stale-copy timer
//!  a claim naming this node, no attach waiting ─▶ own_claim_applied: adopt | ReturnSession
//! ```
//!
//! Ordering per client id (issue 7, items 8 and 11). Session state changes for one client id
//! must not overtake each other, or a session that was discarded comes back:
//!
//! - One attach at a time per client id on this node (its *lane*, held from the claim to the
//!   session being in the map), so claims of one node for one client apply in the order their
//!   sessions are built, and a claim event naming this node while the lane is taken is that
//!   attach's own.
//! - A clean start replacing a session the replicated registry holds always claims (with
//!   `clean`), so the stored subscriptions are gone before CONNACK ([MQTT-3.1.2-4]), also on a
//!   lone node.
//! - Releases and subscription writes are asynchronous, but fenced by generation in the state
//!   machine; the one read that is not, restoring a session from the registry at attach, skips
//!   a generation this node itself ended (`Ownership::ended`): its release may simply not
//!   have been applied yet.
//! - A session that ends with its connection (expiry 0) is never resumed by the CONNECT that
//!   takes its connection over ([MQTT-3.1.2-6]).
//! - A claim that lost to a later one drops the copy it built, with its index entries and
//!   routes; a claim this node gave up on (CONNACK 0x88) that commits later is handed back
//!   (`Command::ReturnSession`); see docs/architecture.md, "Session ownership".
//!
//! Lock order: [`Ownership::waiting`] first (held while a waiting pass-on is placed), then the
//! registry map, then one session's state (see [`super::session`]); the other maps of
//! [`Ownership`] are leaves.

use super::session::{Grant, Moved, RecentIds, SessionState, WallMs};
use super::timers::{Due, TimerKind};
use super::{Broker, ConnCtl, Origin, PassOn, SessionRef};
use crate::routes::RouteResult;
use parking_lot::Mutex;
use roost_cluster::state::{Event, SessionOwner};
use roost_cluster::types::NodeId;
use roost_cluster::types::{Command, CommandResponse};
use roost_cluster::{Addressed, ClusterError, SessionTransfer};
use roost_codec::{LastWill, ReasonCode};
use roost_core::connect::Negotiated;
use roost_core::message::Message;
use roost_core::session::{takeover_will, Ended, Session, SessionImage, Timeout};
use roost_core::topic::TopicFilter;
use roost_core::ClientId;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Mutex as AsyncMutex, OwnedMutexGuard};
use tracing::{debug, warn};

/// A hand-back (`ReturnSession`) that did not commit is proposed again after this, doubling
/// up to [`HAND_BACK_RETRY_MAX`], at most [`HAND_BACK_TRIES`] times in all (about 20 s).
const HAND_BACK_RETRY_FIRST: Duration = Duration::from_millis(20);
const HAND_BACK_RETRY_MAX: Duration = Duration::from_secs(1);
const HAND_BACK_TRIES: u32 = 25;

/// How often a claimant asks an unreachable previous owner again for the session.
const TAKE_RETRY: Duration = Duration::from_millis(250);

/// How often a message passed on to a session that is not here yet tries its client's queue
/// of waiting pass-ons again (see [`Broker::wait_placed`]).
const WAITING_RECHECK: Duration = Duration::from_millis(50);

/// What orders the registry's changes for one client id (see the module docs). Each map but
/// `waiting` is a leaf lock: never held while another lock is taken; none is held across an
/// `.await`.
#[derive(Default)]
pub(crate) struct Ownership {
    /// One lane per client id with an attach waiting or in progress on this node; the entry
    /// is removed when the last holder or waiter leaves.
    lanes: Mutex<HashMap<ClientId, Arc<AsyncMutex<()>>>>,
    /// The newest generation of each client id whose session this node ended and whose
    /// release may not be applied yet. Removed when the release is applied or a newer claim
    /// of this node committed; a release that never commits leaves it until the client's next
    /// claim here.
    ended: Mutex<HashMap<ClientId, u64>>,
    /// Claims of this node that gave up waiting (CONNACK 0x88) and may still commit.
    abandoned: Mutex<HashMap<ClientId, Abandoned>>,
    /// Sessions handed over to another node whose subscriptions stay indexed here for
    /// [`Broker::tombstone_linger`], so what still reaches this node for them goes on to the
    /// new owner (docs/rfcs/0006). One per client id at most: a newer hand-over, or the client
    /// coming back here, replaces it.
    tombstones: Mutex<HashMap<ClientId, Tombstone>>,
    /// Moves of a client's session to this node (another node's `ReturnSession`, see
    /// `adopt`) that applied while an attach of the client here held its lane: that attach's
    /// claim then names this node as the previous owner, and takes the session from the node
    /// recorded here (generation of the move → the node it moved from). Taken by the attach;
    /// at most one per client id.
    moved_in: Mutex<HashMap<ClientId, (u64, NodeId)>>,
    /// Messages passed on to a session that is not here yet ([`ToSession::Wait`]: its attach
    /// or adoption is still running, or this node has not applied its claim), per client id,
    /// in the order they came. Whatever puts the session in the registry map, or makes this
    /// node its owner again, places them in that order before it indexes the session, so
    /// before anything that reaches the session directly ([`Broker::place_waiting`]). One
    /// not placed within the forward timeout leaves (not acknowledged). Bounded by the Forward
    /// streams' pass-on bound (roost-cluster `MAX_PASSING` per stream): each entry is one
    /// stream's message waiting for its answer.
    waiting: Mutex<HashMap<ClientId, VecDeque<WaitingPassOn>>>,
}

/// A message passed on to a session not here yet (see [`Ownership::waiting`]).
struct WaitingPassOn {
    msg: Arc<Message>,
    addressed: Addressed,
    /// Where it went; closed once its sender stopped waiting.
    placed: oneshot::Sender<ToSession>,
}

/// The first step of [`Broker::deliver_addressed`].
enum Placed {
    Now(ToSession),
    /// Behind the session's other waiting pass-ons.
    Queued(oneshot::Receiver<ToSession>),
}

/// A session handed over to another node, still indexed here (see `Ownership::tombstones`).
struct Tombstone {
    session: SessionRef,
    /// Where it went (also in the session's state; kept here so the map, a leaf lock, is
    /// read without taking the session's).
    moved: Moved,
    filters: Vec<TopicFilter>,
    /// What was handed over, for a TakeSession of the same generation asked again (the
    /// requester did not get the reply: a timeout, a partition healing). Without it the
    /// session's contents would be gone with the lost reply.
    handed: SessionTransfer,
}

/// A session handed over from here whose tombstone still stands (see
/// [`Broker::handed_over`]).
pub(super) struct HandedOver {
    pub(super) client_id: ClientId,
    pub(super) to: Moved,
    pub(super) filters: Vec<TopicFilter>,
}

/// Where a message passed on for one session goes here (see [`Broker::deliver_addressed`]).
enum ToSession {
    /// Delivered (or dropped by the session's own bounds, counted there); `congested` as for
    /// any delivery.
    Delivered { congested: Option<SessionRef> },
    /// It moved on again: pass it to this node, for this generation.
    PassOn(Moved),
    /// Its attach here is still running, or this node has not applied the claim yet (after
    /// the wait: not placed within the forward timeout).
    Wait,
    /// It ended, or no longer has the subscription: dropped and counted.
    Gone,
    /// This node gave up its claim of the client (the session goes back to the owner it
    /// replaced): not taken, so not acknowledged; the publisher hears a failure.
    Refuse,
}

/// Claims of this node for one client that it gave up waiting for (several may be in flight):
/// what the registry said before the first was proposed, updated as they commit late.
#[derive(Debug, Clone, Copy)]
struct Abandoned {
    /// The client's last generation before the claims, or the newest one of them handed back:
    /// a late claim not yet handled gets a greater one.
    last_generation: u64,
    /// The owner the chain of claims replaced, to hand the session back to.
    previous: Option<NodeId>,
}

/// Holds (or waits for) a client id's attach lane; leaving it removes the lane when nobody
/// else holds or waits for it.
///
/// Cancel safety: dropping it while waiting or holding leaves the map as it found it.
struct LaneGuard<'a> {
    lanes: &'a Mutex<HashMap<ClientId, Arc<AsyncMutex<()>>>>,
    client_id: ClientId,
    lane: Arc<AsyncMutex<()>>,
    held: Option<OwnedMutexGuard<()>>,
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        let mut lanes = self.lanes.lock();
        self.held = None;
        // The map's reference and ours: nobody else holds or waits.
        if Arc::strong_count(&self.lane) == 2
            && lanes
                .get(&self.client_id)
                .is_some_and(|l| Arc::ptr_eq(l, &self.lane))
        {
            lanes.remove(&self.client_id);
        }
    }
}

/// Result of attaching a connection to a session.
pub(crate) struct Attached {
    pub(crate) session: SessionRef,
    pub(crate) session_present: bool,
}

impl Broker {
    /// Builds a session entry: the only constructor of [`SessionState`].
    fn new_entry(
        &self,
        client_id: &ClientId,
        session: Session,
        conn: Option<Arc<ConnCtl>>,
        clean: bool,
        generation: Option<u64>,
    ) -> SessionRef {
        let disconnected_at = conn.is_none().then(WallMs::now);
        SessionRef::new(
            client_id.clone(),
            SessionState::new(session, conn, clean, disconnected_at, generation),
        )
    }

    /// How long a session handed over to another node stays indexed here, passing on what
    /// still matches it (docs/rfcs/0006). What must be covered: a publisher's node planned
    /// the message with routes from before the new owner's route was applied there. The new
    /// owner's routes commit within `commit_timeout` of the hand-over (its CONNACK waits for
    /// them); any node that still holds its session lease `session_lease` later has applied
    /// them (it renewed from a read index taken after the commit); and a message planned before
    /// that reaches this node within `forward_timeout` or its publisher has heard a failure.
    pub(crate) fn tombstone_linger(&self) -> Duration {
        let c = &self.config.cluster;
        Duration::from_millis(c.commit_timeout_ms + c.session_lease_ms + c.forward_timeout_ms)
    }

    /// How long a session that arrived from another node remembers the ids of its messages:
    /// as long as the old owner may pass messages on, plus the time one takes on the way.
    fn recent_window(&self) -> Duration {
        self.tombstone_linger() + Duration::from_millis(self.config.cluster.forward_timeout_ms)
    }

    /// Arms the session's next timer (will delay or expiry), if the core session has one.
    fn arm_session_timer(&self, s: &SessionRef, epoch: u32, at: Option<std::time::Instant>) {
        if let Some(at) = at {
            self.timers.arm(
                tokio::time::Instant::from_std(at),
                s.clone(),
                epoch,
                TimerKind::Session,
            );
        }
    }

    /// Waits for the client id's attach lane (see the module docs).
    ///
    /// Cancel safety: dropping the future stops waiting and leaves no trace.
    async fn lane(&self, client_id: &ClientId) -> LaneGuard<'_> {
        let lanes = &self.ownership.lanes;
        let lane = Arc::clone(lanes.lock().entry(client_id.clone()).or_default());
        let mut guard = LaneGuard {
            lanes,
            client_id: client_id.clone(),
            lane: Arc::clone(&lane),
            held: None,
        };
        guard.held = Some(lane.lock_owned().await);
        guard
    }

    /// Attaches a new connection to the client's session, creating, resuming or replacing it
    /// (clean start). An existing connection is told to leave with 0x8E (takeover).
    ///
    /// The session is first claimed in the replicated registry (one live session per client
    /// id, cluster-wide); if another node owned it, that node hands it over
    /// (`Cluster.TakeSession`). Fails when the claim cannot commit (no quorum); such a claim
    /// is remembered, and handed back if it commits after all (see
    /// [`on_cluster_event`](Self::on_cluster_event)). Attaches of one client id on this node
    /// run one at a time.
    pub(crate) async fn attach(
        self: &Arc<Self>,
        n: &Negotiated,
        conn: Arc<ConnCtl>,
    ) -> Result<Attached, ClusterError> {
        let (client_id, clean_start, expiry_interval) =
            (&n.client_id, n.clean_start, n.expiry_interval);
        // A node that no quorum confirmed within its session lease serves nobody (it may be
        // cut off while the majority hands this client to another node): wait for the lease
        // as a claim would wait for its commit, then refuse (CONNACK 0x88).
        self.cluster.await_lease(self.commit_timeout()).await?;
        let _lane = self.lane(client_id).await;
        let mut generation = None;
        let mut transfer = None;
        let c = Arc::clone(&self.cluster);
        let me = c.node_id();
        let (registered, last_generation) = {
            let state = c.state().read();
            let owner = state.session_owner(client_id);
            (owner, state.last_generation(client_id.as_str()))
        };
        // A lone node needs no claim for a session that ends with its connection; anything
        // persistent, any session in a cluster of several, and a clean start that replaces a
        // session the registry holds (its stored subscriptions must go before CONNACK,
        // [MQTT-3.1.2-4]) is claimed.
        let needs_claim =
            c.has_peers() || !clean_start || expiry_interval > 0 || registered.is_some();
        if needs_claim {
            let cmd = Command::ClaimSession {
                client_id: client_id.to_string(),
                node: me,
                clean: clean_start,
                expiry_interval,
            };
            let proposed = c.propose(cmd).await;
            // A move to this node that applied before our claim (while we held the lane).
            let moved_in = self.ownership.moved_in.lock().remove(client_id);
            let resp = match proposed {
                Ok((_, resp)) => resp,
                Err(e) => {
                    // It may still commit: remember what it would replace, to hand it back.
                    // An earlier claim given up on may still commit too: the entry it left
                    // names the owner that chain of claims replaces, and is kept.
                    if !e.is_fatal() {
                        self.ownership
                            .abandoned
                            .lock()
                            .entry(client_id.clone())
                            .or_insert(Abandoned {
                                last_generation,
                                previous: registered.map(|o| o.node),
                            });
                    }
                    return Err(e);
                }
            };
            if let CommandResponse::Claimed {
                generation: g,
                previous,
            } = resp
            {
                generation = Some(g);
                // This claim supersedes an earlier one given up on, and a release not yet
                // applied; a session this node ended must not come back from the registry.
                let abandoned = self.ownership.abandoned.lock().remove(client_id);
                let ended_here = self.ownership.ended.lock().remove(client_id);
                let discarded_here =
                    previous.is_some_and(|(n, pg)| n == me && ended_here.is_some_and(|e| e >= pg));
                if let Some((owner, _)) = previous.filter(|(n, _)| *n != me) {
                    transfer = self.take_from(owner, client_id, g).await;
                } else if previous.is_some_and(|(n, _)| n == me)
                    && !discarded_here
                    && self.session(client_id.as_str()).is_none()
                {
                    // It replaces a claim naming this node that nobody here built: another
                    // node moved the session here (a graceful stop) while this attach held the
                    // lane, or one of our claims given up on committed late and was not handed
                    // back yet. The session is where that move or claim took it from.
                    let from = match moved_in {
                        Some((mg, from)) if previous.is_some_and(|(_, pg)| pg == mg) => Some(from),
                        _ => abandoned.and_then(|a| a.previous),
                    };
                    if let Some(owner) = from.filter(|o| *o != me) {
                        transfer = self.take_from(owner, client_id, g).await;
                    }
                }
                if transfer.is_none()
                    && !clean_start
                    && !discarded_here
                    && self.session(client_id.as_str()).is_none()
                {
                    // The owner is gone (or restarted): its queued messages are lost, its
                    // subscriptions are in the registry.
                    transfer = self.stored_transfer(client_id.as_str());
                }
            }
        }
        let (attached, routes) = self.attach_local(n, Arc::clone(&conn), generation, transfer);
        // Fence: another node may have claimed the client after our claim but before this
        // session existed here, so its claim event found nothing to close. Whichever way the
        // race went, the later claim wins: if ours is no longer current, the copy built here
        // goes at once, with its index entries and routes, and the connection leaves.
        if let Some(g) = generation {
            let current = c.state().read().session_owner(client_id);
            if current.is_some_and(|o| o.generation > g) {
                debug!(client_id = %client_id, "claimed by another node meanwhile");
                self.drop_lost_claim(&attached.session, &conn, g);
                conn.kick(ReasonCode::SESSION_TAKEN_OVER);
                return Ok(attached);
            }
        }
        // Subscriptions that arrived with a session from another node: their routes must be in
        // place before the client hears CONNACK.
        for rx in routes {
            let _ = tokio::time::timeout(self.commit_timeout(), rx).await;
        }
        Ok(attached)
    }

    /// Asks `owner` to hand over the session this node just claimed (generation `g`). If it
    /// cannot be reached, asks again until [`Cluster::takeover_wait`] has passed since the
    /// claim applied: by then the owner's session lease has run out, so it no longer serves
    /// the client (a node cut off from the quorum keeps serving until then; docs/architecture.md,
    /// "Session lease"). `None`: nothing handed over (the owner had nothing, or never answered).
    async fn take_from(
        &self,
        owner: NodeId,
        client_id: &ClientId,
        g: u64,
    ) -> Option<SessionTransfer> {
        let c = &self.cluster;
        let until = tokio::time::Instant::now() + c.takeover_wait();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let e = match c.take_session(owner, client_id, g, tries > 1).await {
                Ok(t) => return t,
                Err(e) => e,
            };
            let now = tokio::time::Instant::now();
            if now >= until {
                warn!(
                    client_id = %client_id, owner = %owner, error = %e, tries,
                    "previous owner did not hand the session over within the session lease; \
                     restoring its subscriptions from the registry"
                );
                self.metrics.takeover_unreachable.increment(1);
                return None;
            }
            debug!(client_id = %client_id, owner = %owner, error = %e, "take-over: asking again");
            tokio::time::sleep((until - now).min(TAKE_RETRY)).await;
        }
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
            session.set_expiry_interval(t.expiry_interval);
            // Offline from now: its expiry runs from the restart.
            session.detach(crate::now(), None);
            let next = session.poll_timeout();
            let entry = self.new_entry(&id, session, None, false, Some(generation));
            // Fire and forget: nothing waits for a restored route.
            drop(self.index_all(&entry, &t.image.subscriptions));
            self.sessions.lock().insert(id, entry.clone());
            self.arm_session_timer(&entry, 1, next);
            restored += 1;
        }
        if restored > 0 {
            tracing::info!(
                sessions = restored,
                "restored persistent sessions from the registry"
            );
        }
    }

    fn attach_local(
        self: &Arc<Self>,
        n: &Negotiated,
        conn: Arc<ConnCtl>,
        generation: Option<u64>,
        transfer: Option<SessionTransfer>,
    ) -> (Attached, Vec<oneshot::Receiver<RouteResult>>) {
        let now = crate::now();
        let client_id = &n.client_id;
        let clean_start = n.clean_start;
        // The client is back on this node: a session it left here earlier passes nothing on
        // any more (what matches it, matches the one attached now).
        self.bury(client_id, None);
        let recent_until = now + self.recent_window();
        let mut sessions = self.sessions.lock();
        if let Some(existing) = sessions.get(client_id).cloned() {
            let mut st = existing.lock();
            if let Some(old) = st.conn.take() {
                take_over(&old);
                self.metrics.takeovers.increment(1);
                debug!(client_id = %client_id, "session taken over");
            }
            let mut ended: Option<Ended> = None;
            // A session that ends with its connection (expiry 0: v3.1.1 CleanSession=1, v5
            // without Session Expiry Interval) ended with the connection just taken over, so
            // this CONNECT finds none ([MQTT-3.1.2-6], [MQTT-3.2.2-2]); the old connection's
            // will is due as for a clean start.
            let ends_with_connection = st.session.expiry_interval() == 0;
            if ends_with_connection && !clean_start {
                let mut gone = st.session.terminate();
                gone.will = None;
                ended = Some(gone);
            }
            // A copy left here from before the client moved to another node is stale: the
            // session that node handed back replaces it (and its will went with the claim).
            let handed_back = transfer.filter(|_| !clean_start).map(|t| t.image);
            let mut new_subscriptions = Vec::new();
            let present = if let Some(image) = handed_back {
                let mut stale = st.session.terminate();
                stale.will = None;
                if let Some(gone) = &mut ended {
                    gone.filters.append(&mut stale.filters);
                    gone.orphans.append(&mut stale.orphans);
                } else {
                    ended = Some(stale);
                }
                new_subscriptions = image.subscriptions.clone();
                st.set_recent(RecentIds::new(recent_until, image_ids(&image)));
                st.session =
                    Session::import(client_id.as_arc().clone(), self.limits.clone(), image);
                true
            } else {
                !clean_start && !ends_with_connection
            };
            st.epoch = st.epoch.wrapping_add(1);
            st.conn = Some(conn);
            st.registered_expiry = n.expiry_interval;
            st.last_attach_clean = clean_start || ends_with_connection;
            st.disconnected_at = None;
            // Never back to an older generation (attaches of one client are ordered by its
            // lane, but a hand-back may have given this copy a newer one meanwhile).
            if generation > st.generation {
                st.generation = generation;
            }
            // A clean start ends what the session held; a will waiting for its delay is due
            // now (§3.1.3.2.2). A resumed session cancels that will: the client came back.
            if let Some(e) = st.session.attach(n, now) {
                ended = Some(e);
            }
            drop(st);
            drop(sessions);
            self.place_waiting(client_id);
            if let Some(e) = ended {
                self.unindex_all(&existing, &e.filters);
                self.redistribute(e.orphans, &existing);
                if let Some(w) = e.will {
                    self.publish_will(w, client_id);
                }
            }
            let routes = self.index_all(&existing, &new_subscriptions);
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
        let recent = imported
            .as_ref()
            .map(|i| RecentIds::new(recent_until, image_ids(i)));
        let mut session = match imported {
            Some(image) => Session::import(id, self.limits.clone(), image),
            None => Session::new(id, self.limits.clone()),
        };
        // A fresh or imported session holds no will and nothing a clean start would end.
        let _ = session.attach(n, now);
        let entry = self.new_entry(client_id, session, Some(conn), clean_start, generation);
        if let Some(recent) = recent {
            entry.lock().set_recent(recent);
        }
        sessions.insert(client_id.clone(), entry.clone());
        drop(sessions);
        self.place_waiting(client_id);
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
        self: &Arc<Self>,
        client_id: &ClientId,
        generation: u64,
        requester: NodeId,
    ) -> Option<SessionTransfer> {
        let here = match self.session(client_id.as_str()) {
            Some(s) => Some(s),
            None => self.session_on_its_way(client_id, generation).await,
        };
        let Some(s) = here else {
            // Handed over already, to this requester for this claim: its reply was lost.
            let t = self.ownership.tombstones.lock();
            let t = t.get(client_id)?;
            if t.moved.node == requester && t.moved.generation == generation {
                debug!(client_id = %client_id, generation, "session asked for again: handing the same over");
                return Some(t.handed.clone());
            }
            return None;
        };
        {
            let st = s.lock();
            if st.generation.is_some_and(|g| g >= generation) {
                // We own a newer claim than the requester: it lost the race.
                return None;
            }
            if let Some(c) = &st.conn {
                take_over(c);
            }
        }
        let limit = if crate::failpoints::two_sessions() {
            // The connection was not told to go, so it will not: do not wait for it.
            Duration::ZERO
        } else {
            Duration::from_millis(self.config.cluster.forward_timeout_ms) / 2
        };
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
        if let Some(c) = st.conn.take() {
            take_over(&c);
        }
        if st.session.expiry_interval() == 0 {
            // It ends with the connection just closed ([MQTT-3.1.2-6]): nothing to hand over.
            // The connection's will is its driver's (a takeover by a clean start).
            st.last_attach_clean = true;
            let mut ended = st.session.terminate();
            ended.will = None;
            self.retire(&mut sessions, &s, &mut st, false);
            drop(st);
            drop(sessions);
            self.unindex_all(&s, &ended.filters);
            self.redistribute(ended.orphans, &s);
            return None;
        }
        let filters: Vec<_> = st.session.subscriptions().keys().cloned().collect();
        let pending_will = st.session.take_pending_will();
        let expiry_interval = st.session.expiry_interval();
        let image = st.session.export();
        // The claim is the new owner's now: nothing to release.
        self.retire(&mut sessions, &s, &mut st, false);
        // Its subscriptions stay indexed for a while: a message that still reaches this node
        // for it goes on to the new owner (docs/rfcs/0006).
        let moved = Moved {
            node: requester,
            generation,
        };
        st.set_moved(moved);
        drop(st);
        drop(sessions);
        let handed = SessionTransfer {
            image,
            pending_will,
            expiry_interval,
        };
        let earlier = self.ownership.tombstones.lock().insert(
            client_id.clone(),
            Tombstone {
                session: s.clone(),
                moved,
                filters,
                handed: handed.clone(),
            },
        );
        if let Some(t) = earlier {
            self.unindex_all(&t.session, &t.filters);
        }
        let at = tokio::time::Instant::now() + self.tombstone_linger();
        self.timers.arm(at, s.clone(), 0, TimerKind::Tombstone);
        self.metrics.takeovers.increment(1);
        debug!(client_id = %client_id, generation, "session handed over to another node");
        Some(handed)
    }

    /// No session of `client_id` here, asked for by the claim at `generation`: one may be on
    /// its way. Another node moved it here (see [`adopt`](Self::adopt)) and this node is still
    /// taking it, holding the client's lane, or has not applied that move yet (the requester
    /// applied its own, later claim first). Waits, at most a quarter of the forward timeout
    /// (the requester waits a whole one), until this node applied the requester's claim and
    /// no attach or adoption of the client runs here, then looks again. A requester whose
    /// claim is not the current one gets nothing at once: a later claim won.
    async fn session_on_its_way(
        &self,
        client_id: &ClientId,
        generation: u64,
    ) -> Option<SessionRef> {
        let limit = Duration::from_millis(self.config.cluster.forward_timeout_ms) / 4;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (owner, last) = {
                let state = self.cluster.state().read();
                (
                    state.session_owner(client_id),
                    state.last_generation(client_id.as_str()),
                )
            };
            if owner.is_some_and(|o| o.generation > generation) {
                return None;
            }
            if last >= generation {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !self.ownership.lanes.lock().contains_key(client_id) {
            return self.session(client_id.as_str());
        }
        let _ = tokio::time::timeout_at(deadline, self.lane(client_id)).await;
        self.session(client_id.as_str())
    }

    /// For a graceful stop: the sessions handed over from here (the tombstones still
    /// standing), where each went, with the filters its tombstone holds here.
    pub(super) fn handed_over(&self) -> Vec<HandedOver> {
        self.ownership
            .tombstones
            .lock()
            .iter()
            .map(|(client_id, t)| HandedOver {
                client_id: client_id.clone(),
                to: t.moved,
                filters: t.filters.clone(),
            })
            .collect()
    }

    /// Which of `sessions` (client id, the generation a hand-over to this node was for) this
    /// node has not taken in yet: indices into `sessions`. Pending: an attach or adoption of
    /// the client holds its lane here (it indexes the session, and waits for its routes,
    /// before it lets the lane go), or this node has not applied that generation. Asked by a
    /// stopping peer before it takes its routes away (see `Broker::drain`): the peer handed
    /// the session over when this node's attach or adoption asked for it, so a free lane
    /// means that attach or adoption is over.
    pub(crate) fn sessions_pending(&self, sessions: &[(ClientId, u64)]) -> Vec<usize> {
        let in_lane: Vec<bool> = {
            let lanes = self.ownership.lanes.lock();
            sessions
                .iter()
                .map(|(c, _)| lanes.contains_key(c))
                .collect()
        };
        let state = self.cluster.state().read();
        sessions
            .iter()
            .zip(in_lane)
            .enumerate()
            .filter(|(_, ((c, g), lane))| *lane || state.last_generation(c.as_str()) < *g)
            .map(|(i, _)| i)
            .collect()
    }

    /// Reacts to an applied cluster entry. A claim of a client this node serves, by another
    /// node, fences the local connection out (0x8E); the session itself waits for the new
    /// owner's TakeSession call, and takes nothing new meanwhile: what still matches it here
    /// goes on to the claimant, as from a tombstone (docs/rfcs/0006; the claimant places it
    /// after what the TakeSession brings, or in the session it rebuilt from the registry). If
    /// the TakeSession has not come within twice the forward timeout, the copy left here is
    /// stale and is dropped (a timer), what it held counted. Its will went with the claim.
    ///
    /// A claim naming this node that no attach here is waiting for (its lane is free) is
    /// either a session handed back to this node (`ReturnSession`), or a claim this node gave
    /// up on that committed after all: see `own_claim_applied`.
    pub(crate) fn on_cluster_event(self: &Arc<Self>, event: &Event) {
        let (client_id, owner, previous) = match event {
            Event::SessionClaimed {
                client_id,
                owner,
                previous,
            } => (client_id, owner, previous),
            Event::PoliciesChanged { policies } => {
                if self.policies.apply(policies) {
                    let store = self.policies.current();
                    for s in self.sessions() {
                        s.refresh_receive_gate(store.as_deref());
                    }
                }
                return;
            }
        };
        if owner.node == self.cluster.node_id() {
            self.own_claim_applied(client_id, owner.generation, previous.map(|p| p.node));
            return;
        }
        let Some(s) = self.session(client_id.as_str()) else {
            return;
        };
        {
            let st = s.lock();
            if st.ended || st.generation.is_some_and(|g| g >= owner.generation) {
                return;
            }
            if let Some(c) = &st.conn {
                debug!(client_id = %client_id, owner = %owner.node, "session claimed by another node");
                take_over(c);
            }
        }
        self.fence_out(s, *owner);
    }

    /// A later claim of another node (`owner`) took the client of this copy: from now on the
    /// copy takes nothing new (what matches it goes on to `owner`, docs/rfcs/0006), and it
    /// waits twice the forward timeout for `owner`'s TakeSession before it is dropped as stale
    /// (`TimerKind::StaleCopy`).
    fn fence_out(&self, s: SessionRef, owner: SessionOwner) {
        s.lock().fence(Moved {
            node: owner.node,
            generation: owner.generation,
        });
        let wait = Duration::from_millis(self.config.cluster.forward_timeout_ms) * 2;
        let kind = TimerKind::StaleCopy {
            generation: owner.generation,
        };
        self.timers
            .arm(tokio::time::Instant::now() + wait, s, 0, kind);
    }

    /// A claim naming this node applied, and no attach here made it (those hold the lane):
    ///
    /// - a live copy here at an older generation owns it again: it was handed back, or a
    ///   claim of this node given up on committed while the copy was still here. The copy
    ///   takes the generation (so the stale-copy timer the claim armed, if any, keeps it) and
    ///   its subscriptions are written again (a clean claim removed them from the registry);
    /// - no copy here, and this node gave up on a claim of the client (CONNACK 0x88): that
    ///   claim committed late and nobody built its session. It is handed back to the owner it
    ///   replaced (`Command::ReturnSession`, conditional on the generation), so that owner
    ///   keeps its session: `previous`, the owner the claim replaced, or when that was another
    ///   claim of this node given up on (several can be in flight, and commit in a row), the
    ///   owner that chain replaced. The entry stays for the next late claim of the chain; an
    ///   attach here that claims the client removes it.
    fn own_claim_applied(
        self: &Arc<Self>,
        client_id: &ClientId,
        generation: u64,
        previous: Option<NodeId>,
    ) {
        let me = self.cluster.node_id();
        if self.ownership.lanes.lock().contains_key(client_id) {
            // An attach here holds the lane: this is its own claim, or a move of the session
            // to this node that its claim will replace. Remember where a move came from.
            if let Some(from) = previous.filter(|p| *p != me) {
                self.ownership
                    .moved_in
                    .lock()
                    .insert(client_id.clone(), (generation, from));
            }
            return;
        }
        if let Some(s) = self.session(client_id.as_str()) {
            let mut st = s.lock();
            if st.ended || st.generation.is_none_or(|g| g >= generation) {
                return;
            }
            st.generation = Some(generation);
            drop(st);
            self.ownership.abandoned.lock().remove(client_id);
            self.place_waiting(client_id);
            debug!(client_id = %client_id, generation, "session owned again by this node");
            let broker = Arc::clone(self);
            self.spawn(async move {
                broker.persist_subscriptions(&s).await;
            });
            return;
        }
        let to = {
            let mut a = self.ownership.abandoned.lock();
            let Some(ab) = a.get_mut(client_id) else {
                drop(a);
                // Nothing here, and no claim of ours: another node moved the session to this
                // one (a draining node's `ReturnSession`, or a claim whose attach here went
                // away). The registry names this node: take the session from the owner it
                // replaced, and hold it here offline.
                if let Some(from) = previous.filter(|p| *p != me) {
                    self.adopt(client_id, generation, from);
                }
                return;
            };
            if ab.last_generation >= generation {
                return;
            }
            let to = match previous {
                Some(p) if p == me => ab.previous,
                other => other,
            };
            ab.previous = to;
            ab.last_generation = generation;
            to
        };
        debug!(client_id = %client_id, generation, to = ?to, "a claim given up on committed: handing it back");
        let c = Arc::clone(&self.cluster);
        let cmd = Command::ReturnSession {
            client_id: client_id.to_string(),
            node: c.node_id(),
            generation,
            to,
        };
        let client_id = client_id.clone();
        self.spawn(async move {
            // Asked again until it took effect: the owner it goes back to drops its copy (and
            // what it queued) when the hand-back has not come by its stale-copy timer. A
            // proposal that timed out may still have committed (it is then applied here a
            // moment later, and the registry no longer names this claim); one proposed twice
            // is a no-op the second time (fenced by generation).
            let ours = SessionOwner {
                node: c.node_id(),
                generation,
            };
            let mut backoff = HAND_BACK_RETRY_FIRST;
            let mut tries = 1;
            while let Err(e) = c.propose(cmd.clone()).await {
                tokio::time::sleep(backoff).await;
                if c.state().read().session_owner(&client_id) != Some(ours) {
                    return;
                }
                if tries == HAND_BACK_TRIES {
                    warn!(client_id = %client_id, error = %e, tries, "a claim given up on committed and was not handed back");
                    return;
                }
                debug!(client_id = %client_id, error = %e, tries, "handing back a claim given up on: asking again");
                backoff = (backoff * 2).min(HAND_BACK_RETRY_MAX);
                tries += 1;
            }
        });
    }

    /// Takes the session of `client_id` from `from`, for the claim at `generation` that names
    /// this node and that no attach here made (see `own_claim_applied`), and holds it offline
    /// until its client comes back or its expiry runs out. The lane is taken at once, before
    /// this returns: a TakeSession from a later claimant waits for the session to be here
    /// (see [`hand_over`](Self::hand_over)). What `from` cannot hand over (it never answers,
    /// or had nothing) is rebuilt from the registry, subscriptions only, as an attach would.
    fn adopt(self: &Arc<Self>, client_id: &ClientId, generation: u64, from: NodeId) {
        let lane = Arc::clone(
            self.ownership
                .lanes
                .lock()
                .entry(client_id.clone())
                .or_default(),
        );
        // Nobody holds it (own_claim_applied saw no lane): this cannot wait.
        let Ok(held) = Arc::clone(&lane).try_lock_owned() else {
            return;
        };
        let broker = Arc::clone(self);
        let client_id = client_id.clone();
        self.spawn(async move {
            let _lane = LaneGuard {
                lanes: &broker.ownership.lanes,
                client_id: client_id.clone(),
                lane,
                held: Some(held),
            };
            broker.adopt_in_lane(&client_id, generation, from).await;
        });
    }

    async fn adopt_in_lane(self: &Arc<Self>, client_id: &ClientId, generation: u64, from: NodeId) {
        if self.session(client_id.as_str()).is_some() {
            return;
        }
        let transfer = match self.take_from(from, client_id, generation).await {
            Some(t) => Some(t),
            None => self.stored_transfer(client_id.as_str()),
        };
        let Some(t) = transfer.filter(|t| t.expiry_interval > 0) else {
            debug!(client_id = %client_id, from = %from, "moved here with nothing to hold");
            return;
        };
        let now = crate::now();
        let recent = RecentIds::new(now + self.recent_window(), image_ids(&t.image));
        let subscriptions = t.image.subscriptions.clone();
        let mut session = Session::import(client_id.as_arc().clone(), self.limits.clone(), t.image);
        session.set_expiry_interval(t.expiry_interval);
        // Offline from now: its expiry, and a will waiting for its delay, run from here. Its
        // shared-group messages stay for its client: the group's other members may be on
        // their way too (a stopping node moves them all), with nobody to take them now.
        let detached = session.park(now, t.pending_will);
        let next = session.poll_timeout();
        let entry = self.new_entry(client_id, session, None, false, Some(generation));
        entry.lock().set_recent(recent);
        {
            let mut sessions = self.sessions.lock();
            if sessions.contains_key(client_id) {
                // An attach here cannot have run (the lane is ours); nothing else inserts.
                return;
            }
            sessions.insert(client_id.clone(), entry.clone());
        }
        self.place_waiting(client_id);
        let routes = self.index_all(&entry, &subscriptions);
        if let Some(w) = detached.will_now {
            self.publish_will(w, client_id);
        }
        self.arm_session_timer(&entry, 1, next);
        self.metrics.sessions_adopted.increment(1);
        debug!(client_id = %client_id, from = %from, generation, "session moved here");
        // A later claim may have taken the client meanwhile: its owner asks for the session
        // (the copy waits for it, as any copy a claim fenced out), else it is dropped.
        let current = self.cluster.state().read().session_owner(client_id);
        if let Some(owner) = current.filter(|o| o.generation > generation) {
            self.fence_out(entry, owner);
            return;
        }
        for rx in routes {
            let _ = tokio::time::timeout(self.commit_timeout(), rx).await;
        }
    }

    /// Our claim at `generation` lost to a later one before this attach finished: the copy it
    /// built here (new, resumed or handed over) goes at once, with its index entries and its
    /// routes, unless a hand-over already took it. Its claim belongs to the winner: nothing
    /// to release. The connection is the caller's to kick; its driver's detach sees a
    /// takeover.
    fn drop_lost_claim(self: &Arc<Self>, s: &SessionRef, conn: &Arc<ConnCtl>, generation: u64) {
        let mut sessions = self.sessions.lock();
        let mut st = s.lock();
        if st.ended || st.generation != Some(generation) {
            return;
        }
        if st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            st.conn = None;
        }
        let mut ended = st.session.terminate();
        // Its will went with the claim to the new owner.
        ended.will = None;
        self.retire(&mut sessions, s, &mut st, false);
        drop(st);
        drop(sessions);
        s.notify_changed();
        self.after_end(s, ended, None);
    }

    /// Called by a driver when its connection ends. `will` is the connection's will if it must
    /// be published (abnormal close or DISCONNECT 0x04). The core session decides what is due
    /// now and arms its timer (will delay, expiry); the registry carries it out.
    pub(crate) fn detach(
        self: &Arc<Self>,
        s: &SessionRef,
        conn: &Arc<ConnCtl>,
        will: Option<Box<LastWill>>,
    ) {
        // Registry first (lock order): a session that ends now leaves the map under the same
        // locks that saw it end, so no connection can attach to it in between.
        let mut sessions = self.sessions.lock();
        let mut st = s.lock();
        let ours = st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn));
        if !ours {
            // Taken over: the session lives on with the new connection.
            let clean = st.last_attach_clean;
            drop(st);
            drop(sessions);
            if let Some(w) = will.and_then(|w| takeover_will(*w, clean)) {
                self.publish_will(w, s.client_id());
            }
            return;
        }
        st.conn = None;
        let now = crate::now();
        // A v5 DISCONNECT changed the expiry of a registered persistent session: record it, so
        // a restart of this node restores the right one.
        let expiry = st.session.expiry_interval();
        if expiry != st.registered_expiry && expiry > 0 && st.generation.is_some() {
            st.registered_expiry = expiry;
            let broker = Arc::clone(self);
            let s2 = s.clone();
            self.spawn(async move {
                broker.persist_subscriptions(&s2).await;
            });
        }
        // Publishers waiting for this session to drain, and a hand-over waiting for the
        // connection to go, stop waiting: it is offline now.
        s.notify_changed();
        st.disconnected_at = Some(WallMs::now());
        let epoch = st.epoch;
        let detached = st.session.detach(now, will.map(|w| *w));
        let next = st.session.poll_timeout();
        let generation = detached
            .ended
            .is_some()
            .then(|| self.retire(&mut sessions, s, &mut st, true));
        drop(st);
        drop(sessions);
        self.redistribute(detached.orphans, s);
        if let Some(w) = detached.will_now {
            self.publish_will(w, s.client_id());
        }
        match (detached.ended, generation) {
            (Some(ended), Some(generation)) => self.after_end(s, ended, generation),
            _ => self.arm_session_timer(s, epoch, next),
        }
    }

    /// A timer from [`super::timers`] is due.
    pub(super) fn fire_timer(self: &Arc<Self>, due: Due) {
        let s = &due.session;
        if due.kind == TimerKind::Tombstone {
            self.bury(s.client_id(), Some(s));
            return;
        }
        let mut sessions = self.sessions.lock();
        let mut st = s.lock();
        if st.ended {
            return;
        }
        match due.kind {
            TimerKind::Session => {
                // Armed for an earlier detach: a connection attached since (and the driver owns
                // the keep-alive while one is attached).
                if st.epoch != due.epoch || st.conn.is_some() {
                    return;
                }
                match st.session.handle_timeout(crate::now()) {
                    Some(Timeout::Will(w)) => {
                        let next = st.session.poll_timeout();
                        drop(st);
                        drop(sessions);
                        self.publish_will(w, s.client_id());
                        self.arm_session_timer(s, due.epoch, next);
                    }
                    Some(Timeout::Expired(ended)) => {
                        let generation = self.retire(&mut sessions, s, &mut st, true);
                        drop(st);
                        drop(sessions);
                        self.metrics.sessions_expired.increment(1);
                        self.after_end(s, ended, generation);
                    }
                    // Not due yet (an earlier deadline of the same epoch) or a keep-alive
                    // (never while detached): look again when the session says.
                    Some(Timeout::KeepAlive) | None => {
                        let next = st.session.poll_timeout();
                        drop(st);
                        drop(sessions);
                        self.arm_session_timer(s, due.epoch, next);
                    }
                }
            }
            // Handled before the locks: a tombstone's session has ended by design.
            TimerKind::Tombstone => {}
            TimerKind::StaleCopy { generation } => {
                let stale = st.conn.is_none() && st.generation.is_none_or(|g| g < generation);
                if !stale {
                    return;
                }
                // What it held is lost: the new owner did not ask for it in time (it rebuilt
                // the session from the registry). Nothing new reached it since the claim
                // fenced it out (it went on to the claimant).
                let held = st.session.inflight_len() + st.session.queued_len();
                self.metrics.stale_copy_dropped.increment(held as u64);
                let mut ended = st.session.terminate();
                // Its will went with the claim to the new owner, and so did the registry entry:
                // nothing to release.
                ended.will = None;
                self.retire(&mut sessions, s, &mut st, false);
                drop(st);
                drop(sessions);
                self.after_end(s, ended, None);
            }
        }
    }

    /// Marks a session ended and removes it from the registry map (both locks held by the
    /// caller, in order). With `release`, returns the cluster generation it held, to release,
    /// and remembers it until that release is applied; without (the claim is another node's
    /// now: handed over, lost, stale), there is nothing to release and nothing to remember.
    fn retire(
        &self,
        sessions: &mut HashMap<ClientId, SessionRef>,
        s: &SessionRef,
        st: &mut SessionState,
        release: bool,
    ) -> Option<u64> {
        st.ended = true;
        if sessions.get(s.client_id()).is_some_and(|cur| cur == s) {
            sessions.remove(s.client_id());
        }
        if !release {
            return None;
        }
        if let Some(g) = st.generation {
            // Until its release is applied the registry still names it: not to be restored.
            let mut ended = self.ownership.ended.lock();
            let e = ended.entry(s.client_id().clone()).or_insert(g);
            *e = (*e).max(g);
        }
        st.generation
    }

    /// What is left after a session ended, outside its locks: release its claim in the
    /// cluster registry, unindex its subscriptions, hand its shared messages to the rest of
    /// their groups, publish a will that became due.
    fn after_end(self: &Arc<Self>, s: &SessionRef, ended: Ended, generation: Option<u64>) {
        if let Some(generation) = generation {
            let c = Arc::clone(&self.cluster);
            let cmd = Command::ReleaseSession {
                client_id: s.client_id().to_string(),
                node: c.node_id(),
                generation,
            };
            let broker = Arc::clone(self);
            let client_id = s.client_id().clone();
            self.spawn(async move {
                match c.propose(cmd).await {
                    // Applied (or superseded by a newer claim): the registry no longer names
                    // the generation ended here.
                    Ok(_) => {
                        let mut ended = broker.ownership.ended.lock();
                        if ended.get(&client_id).is_some_and(|e| *e <= generation) {
                            ended.remove(&client_id);
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "session release not committed (it stays registered)")
                    }
                }
            });
        }
        self.unindex_all(s, &ended.filters);
        self.redistribute(ended.orphans, s);
        if let Some(w) = ended.will {
            self.publish_will(w, s.client_id());
        }
    }

    /// Removes the client's tombstone (only if it is `which`, when given) and its index
    /// entries and routes: it passes nothing on any more.
    fn bury(&self, client_id: &ClientId, which: Option<&SessionRef>) {
        let t = {
            let mut t = self.ownership.tombstones.lock();
            match t.get(client_id) {
                Some(cur) if which.is_none_or(|w| *w == cur.session) => t.remove(client_id),
                _ => None,
            }
        };
        if let Some(t) = t {
            self.unindex_all(&t.session, &t.filters);
        }
    }

    /// A message passed on by the node the client's session moved from (docs/rfcs/0006),
    /// for generation `a.generation` of it: delivered to the session if it is here, owns that
    /// generation (or a newer one) and still has the subscription that matched; passed on
    /// again if it moved on since; waited for (up to the forward timeout) while its attach is
    /// still running. The returned future resolves to whether the message was accepted:
    /// `false` leaves a QoS 1/2 message unacknowledged (its publisher hears a failure). One
    /// for a session that ended or lost its subscription meanwhile is accepted, dropped and
    /// counted.
    ///
    /// Order: the message is placed (or queued behind the client's waiting ones) now, before
    /// this returns; the Forward stream calls this in the order the messages came, so the
    /// session gets them in that order ([MQTT-4.6.0-6] across a hand-over), and before what
    /// reaches it directly once it is indexed here.
    pub(crate) fn deliver_addressed(
        self: &Arc<Self>,
        msg: Arc<Message>,
        a: Addressed,
    ) -> impl Future<Output = bool> + Send + 'static {
        let placed = self.place_addressed(&msg, &a);
        let broker = Arc::clone(self);
        async move {
            let to = match placed {
                Placed::Now(to) => to,
                Placed::Queued(rx) => broker.wait_placed(rx, &a.client_id).await,
            };
            match to {
                ToSession::Delivered { congested } => {
                    if let Some(c) = congested {
                        broker.wait_for_space(&[c]).await;
                    }
                    true
                }
                ToSession::Gone => {
                    broker.metrics.passed_on_gone.increment(1);
                    true
                }
                ToSession::PassOn(to) => {
                    let again = PassOn {
                        to,
                        addressed: Addressed {
                            generation: to.generation,
                            ..a
                        },
                    };
                    broker.forward_all(&msg, Vec::new(), vec![again]).await
                }
                ToSession::Refuse => {
                    debug!(client_id = %a.client_id, "a message passed on for a claim given up on was refused");
                    false
                }
                ToSession::Wait => {
                    debug!(client_id = %a.client_id, "a message passed on for a session still attaching was not placed in time");
                    false
                }
            }
        }
    }

    /// The first step of [`deliver_addressed`](Self::deliver_addressed): behind the client's
    /// waiting pass-ons if it has any, else where [`to_session`](Self::to_session) says, and
    /// queued if that is to wait.
    fn place_addressed(&self, msg: &Arc<Message>, a: &Addressed) -> Placed {
        let mut waiting = self.ownership.waiting.lock();
        let queue = match waiting.get_mut(&a.client_id) {
            // Older ones wait: this one may not overtake them.
            Some(q) => q,
            None => match self.to_session(msg, a) {
                ToSession::Wait => waiting.entry(a.client_id.clone()).or_default(),
                to => return Placed::Now(to),
            },
        };
        let (placed, rx) = oneshot::channel();
        queue.push_back(WaitingPassOn {
            msg: Arc::clone(msg),
            addressed: a.clone(),
            placed,
        });
        Placed::Queued(rx)
    }

    /// Waits for a queued pass-on to be placed, up to the forward timeout; then it leaves the
    /// queue ([`ToSession::Wait`]), unless it was placed meanwhile. Every
    /// [`WAITING_RECHECK`] it tries the queue again itself: what ends a wait without putting
    /// the session in the map (an attach that gave up or lost to a later claim lets the lane
    /// go) places nothing.
    async fn wait_placed(
        &self,
        mut rx: oneshot::Receiver<ToSession>,
        client_id: &ClientId,
    ) -> ToSession {
        let limit = Duration::from_millis(self.config.cluster.forward_timeout_ms);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = deadline.min(tokio::time::Instant::now() + WAITING_RECHECK);
            match tokio::time::timeout_at(next, &mut rx).await {
                Ok(Ok(to)) => return to,
                Ok(Err(_)) => break,
                Err(_) if next >= deadline => break,
                Err(_) => self.place_waiting(client_id),
            }
        }
        // Closed under the lock `place_waiting` holds while it places: it either placed this
        // one already (the answer is in `rx`) or will skip it.
        let mut waiting = self.ownership.waiting.lock();
        rx.close();
        if let Some(q) = waiting.get_mut(client_id) {
            q.retain(|w| !w.placed.is_closed());
            if q.is_empty() {
                waiting.remove(client_id);
            }
        }
        drop(waiting);
        rx.try_recv().unwrap_or(ToSession::Wait)
    }

    /// Places the pass-ons waiting for `client_id`'s session, oldest first, up to the first
    /// that must still wait. Called where a session is put in the registry map (before it is
    /// indexed), where this node becomes its owner again, and by the waiting messages
    /// themselves now and then ([`WAITING_RECHECK`]).
    fn place_waiting(&self, client_id: &ClientId) {
        let mut waiting = self.ownership.waiting.lock();
        let Some(queue) = waiting.get_mut(client_id) else {
            return;
        };
        while let Some(w) = queue.pop_front() {
            if w.placed.is_closed() {
                continue;
            }
            match self.to_session(&w.msg, &w.addressed) {
                ToSession::Wait => {
                    queue.push_front(w);
                    break;
                }
                to => {
                    // Its sender waits under the same lock before it gives up: it gets this.
                    let _ = w.placed.send(to);
                }
            }
        }
        if queue.is_empty() {
            waiting.remove(client_id);
        }
    }

    /// One attempt of [`deliver_addressed`](Self::deliver_addressed).
    fn to_session(&self, msg: &Arc<Message>, a: &Addressed) -> ToSession {
        let live = self.session(a.client_id.as_str());
        if let Some(s) = &live {
            match s.takes_passed_on(a.generation, &msg.topic, a.shared.as_ref()) {
                Some(false) => return ToSession::Gone,
                Some(true) => {
                    let grant = Grant {
                        qos: a.qos,
                        retain: a.retain,
                        ids: a.subscription_ids.clone(),
                        shared: a.shared.clone(),
                    };
                    let (mut congested, mut moved) = (Vec::new(), Vec::new());
                    let now = crate::now();
                    if !self.deliver_to(s, msg, grant, now, None, &mut congested, &mut moved) {
                        return ToSession::Gone;
                    }
                    // It moved on between the check and the delivery.
                    return match moved.pop() {
                        Some(p) if p.to.generation > a.generation => ToSession::PassOn(p.to),
                        Some(_) => ToSession::Gone,
                        None => ToSession::Delivered {
                            congested: congested.pop(),
                        },
                    };
                }
                None => {}
            }
        }
        let moved_on = self
            .ownership
            .tombstones
            .lock()
            .get(&a.client_id)
            .map(|t| t.moved)
            .filter(|m| m.generation > a.generation);
        if let Some(to) = moved_on {
            return ToSession::PassOn(to);
        }
        if self.ownership.lanes.lock().contains_key(&a.client_id) {
            return ToSession::Wait;
        }
        if self.ownership.abandoned.lock().contains_key(&a.client_id) {
            return ToSession::Refuse;
        }
        // The sender applied the claim or move naming this node at `a.generation`; this node
        // may not have yet (a fenced copy passes on from the moment its node applies it: a
        // drained node's move reaches the adopter a little later). Its adoption, or the
        // attach's lane, comes with the entry: until then the message waits, and is not
        // acknowledged if that takes longer than the forward timeout. No entry at all: the
        // session was released since (it ended).
        let applied = self
            .cluster
            .state()
            .read()
            .session_owner(&a.client_id)
            .map(|o| o.generation);
        if applied.is_some_and(|g| g < a.generation) {
            return ToSession::Wait;
        }
        ToSession::Gone
    }

    /// Publishes a will message as if its client had published it, on a tracked task: the
    /// caller (a driver closing, a timer) is not held up by the retained commit or forwarding.
    pub(crate) fn publish_will(self: &Arc<Self>, will: LastWill, client_id: &ClientId) {
        let Some(msg) =
            Message::from_will(will, client_id.clone(), &self.topic_limits, crate::now())
        else {
            return;
        };
        let msg = Arc::new(msg);
        self.metrics.wills.increment(1);
        debug!(client_id = %client_id, topic = msg.topic.as_str(), "publishing will");
        let broker = Arc::clone(self);
        // Its forwards' acknowledgements are waited for on a tracked task of their own.
        self.spawn(async move {
            broker.publish(&msg, Origin::Will).await;
        });
    }
}

/// Tells the connection a takeover replaces to go (DISCONNECT 0x8E): the one place that does,
/// so the `two_sessions` failpoint (feature `testing`) is one place too.
fn take_over(c: &ConnCtl) {
    if !crate::failpoints::two_sessions() {
        c.kick(ReasonCode::SESSION_TAKEN_OVER);
    }
}

/// The ids of the messages a session image holds (in flight and queued).
fn image_ids(image: &SessionImage) -> impl Iterator<Item = u64> + '_ {
    image
        .inflight
        .iter()
        .chain(image.queued.iter())
        .map(|m| m.msg.id)
}
