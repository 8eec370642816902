//! One session as the node holds it: the core [`Session`] state machine behind its own mutex,
//! plus what only the node knows (the attached connection, timers' epoch, the cluster
//! generation it owns). [`SessionRef`] is the handle everyone else holds; it is opaque: callers
//! ask it for what they need and never see the lock, so the lock order is kept in this module
//! and in [`super::registry`] alone.
//!
//! ```text
//!   SessionRef ──Arc──▶ SessionEntry { client_id, state: Mutex<SessionState>,
//!                                      changed: Notify (made by its first waiter) }
//!                                             │
//!                          SessionState { session: core Session, conn: Option<Arc<ConnCtl>>,
//!                                         epoch, registered expiry, generation, ended,
//!                                         handover: boxed, only after a hand-over }
//! ```
//!
//! Lock order: the registry map, then one session's `state`; never two sessions' states at
//! once; no `.await` while a state lock is held (it is a `parking_lot` mutex).

use atomic_waker::AtomicWaker;
use parking_lot::{Mutex, MutexGuard};
use roost_cluster::types::NodeId;
use roost_codec::{Protocol, QoS, ReasonCode};
use roost_core::index::Subscription;
use roost_core::message::Message;
use roost_core::session::{Drops, Session};
use roost_core::topic::TopicFilter;
use roost_core::ClientId;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tokio::sync::Notify;

/// One network connection's control block: how routing wakes it and how the broker tells it to
/// go away (takeover, admin kick, shutdown).
#[derive(Debug)]
pub(crate) struct ConnCtl {
    pub(crate) id: u64,
    /// Woken when the session's outbox has something to send or `kick` was set.
    pub(crate) wake: Wake,
    /// Set once to make the driver send DISCONNECT (this reason, and where to go) and close.
    /// Boxed: rare, and 16 bytes inline instead of 32 (with `ConnInfo`'s compact peer, the
    /// control block's `Arc` fits mimalloc's 128 B class; issue 10).
    kick: Mutex<Option<Box<Kick>>>,
    pub(crate) info: ConnInfo,
}

/// A connection's wake-up: one waiter (the connection's task), any number of notifiers. A
/// notification made while the task is not waiting is kept (one permit, as
/// `tokio::sync::Notify::notify_one`) until the task takes it.
///
/// Not `Notify`: waiting on a `Notify` takes a `Notified` future (64 B) in the waiter's state,
/// and a parked connection's task is made of that state (issue 10: this took the task one
/// mimalloc class down). Here the wait ([`WakeWait`]) is a reference; the registered waker
/// lives in the control block (the same 32 B as a `Notify`). Waiting costs a waker
/// registration instead of a waiter queued under the `Notify`'s lock. As with `Notify`, a
/// waiter is registered only while its wait exists: dropping the wait takes the waker back,
/// so a notification made while the task runs leaves a permit and wakes nothing (no extra
/// poll), and a closed connection's control block holds no waker of its task.
///
/// There are two permits: [`Wake::notify_one`]'s (a delivery or a kick) and
/// [`Wake::notify_deadline`]'s (a parked connection's deadline, `super::deadlines`), taken
/// together. A parked connection woken by its deadline alone checks the deadline and, when it
/// has moved, waits again without going active ([`Wake::poll_take`]). Each kind wakes the
/// task when it sets its permit; a wake-up takes the registered waker, so a deadline and a
/// delivery at once still wake a waiting task once.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    permit: AtomicBool,
    deadline: AtomicBool,
    /// The connection's place in its bucket of the deadlines table (`super::deadlines`),
    /// kept by that table under its lock; meaningless while it has no entry there. Here
    /// because the table moves entries and must tell their owners, and because it fits in
    /// this struct's padding (the control block stays in mimalloc's 128 B class).
    deadline_slot: AtomicU32,
    waker: AtomicWaker,
}

/// [`Wake::poll_take`]: [`Wake::notify_one`]'s permit was taken.
pub(crate) const WOKEN_NOTIFY: u8 = 1;
/// [`Wake::poll_take`]: [`Wake::notify_deadline`]'s permit was taken.
pub(crate) const WOKEN_DEADLINE: u8 = 2;

impl Wake {
    /// Wakes the task, or leaves a permit for its next wait. A permit already there was
    /// left by a notifier that wakes the task itself (or the task is running and takes it on
    /// its next wait), so only the notifier that set it wakes: in a fan-in, the many
    /// deliveries to one busy subscriber cost one atomic swap each.
    pub(crate) fn notify_one(&self) {
        self.leave(&self.permit);
    }

    /// As [`Wake::notify_one`], with the deadline's own permit.
    pub(crate) fn notify_deadline(&self) {
        self.leave(&self.deadline);
    }

    /// Sets `permit`; the notifier that set it wakes the task.
    #[inline]
    fn leave(&self, permit: &AtomicBool) {
        if !permit.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Takes the permits that are there: [`WOKEN_NOTIFY`], [`WOKEN_DEADLINE`], both or
    /// neither (0). The deadline's is read before it is taken: it is rarely there, and the
    /// task takes permits on every wait.
    fn take(&self, order: Ordering) -> u8 {
        let mut bits = 0;
        if self.permit.swap(false, order) {
            bits |= WOKEN_NOTIFY;
        }
        if self.deadline.load(Ordering::Relaxed) && self.deadline.swap(false, order) {
            bits |= WOKEN_DEADLINE;
        }
        bits
    }

    /// Takes the permit if there is one; otherwise registers the task's waker. Cancel safe:
    /// nothing is taken unless `Ready` is returned.
    pub(crate) fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_take(cx).map(|_| ())
    }

    /// As [`Wake::poll_notified`], saying which permits it took ([`Wake::take`]).
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<u8> {
        match self.take(Ordering::Acquire) {
            0 => {}
            bits => return Poll::Ready(bits),
        }
        self.waker.register(cx.waker());
        // A notification between the check and the registration woke the old waker (or
        // none): look again now that this one is registered. (The deadline's relaxed read
        // is enough: a notifier that did not see this waker set its permit before the
        // waker's state, which `register` read.)
        match self.take(Ordering::AcqRel) {
            0 => Poll::Pending,
            bits => Poll::Ready(bits),
        }
    }

    pub(super) fn deadline_slot(&self) -> usize {
        self.deadline_slot.load(Ordering::Relaxed) as usize
    }

    pub(super) fn set_deadline_slot(&self, slot: usize) {
        self.deadline_slot
            .store(u32::try_from(slot).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Takes the registered waker back (a wait polled by hand, dropped).
    pub(crate) fn unregister(&self) {
        drop(self.waker.take());
    }

    /// Waits for a notification (see [`Wake::poll_notified`]); the future holds only `&self`.
    pub(crate) fn notified(&self) -> WakeWait<'_> {
        WakeWait(self)
    }
}

/// A wait for a [`Wake`]: ready once it takes the permit; dropped, it unregisters its waker.
/// Cancel safe: dropping it takes no permit.
#[derive(Debug)]
pub(crate) struct WakeWait<'a>(&'a Wake);

impl Future for WakeWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_notified(cx)
    }
}

impl Drop for WakeWait<'_> {
    fn drop(&mut self) {
        self.0.unregister();
    }
}

/// Why the broker tells a connection to leave (see [`ConnCtl::kick`]).
#[derive(Debug, Clone)]
pub(crate) enum Kick {
    /// DISCONNECT with this reason (v5): a takeover (0x8E), an administrator (0x98), a
    /// shutdown with nowhere to send the client (0x8B), a lost session lease (0x9C, no
    /// reference: this node cannot know which node the majority serves from).
    Reason(ReasonCode),
    /// A graceful stop that names the node to use instead: DISCONNECT 0x9C with this Server
    /// Reference (`HOST:PORT`, MQTT 5.0 §4.11; see `Broker::send_clients_away`). Shared by
    /// every client sent to the same peer.
    UseAnotherServer(Arc<str>),
}

impl From<ReasonCode> for Kick {
    fn from(reason: ReasonCode) -> Kick {
        Kick::Reason(reason)
    }
}

impl Kick {
    /// How the driver closes the connection for it.
    pub(crate) fn close(&self) -> roost_core::session::Close {
        match self {
            Kick::Reason(reason) => roost_core::session::Close::server(*reason),
            Kick::UseAnotherServer(to) => {
                roost_core::session::Close::use_another_server(to.to_string())
            }
        }
    }
}

impl ConnCtl {
    pub(crate) fn new(id: u64, info: ConnInfo) -> ConnCtl {
        ConnCtl {
            id,
            wake: Wake::default(),
            kick: Mutex::new(None),
            info,
        }
    }

    /// Tells the connection to leave with `kick` (a reason code, or where to go: the first
    /// one wins).
    pub(crate) fn kick(&self, kick: impl Into<Kick>) {
        let mut k = self.kick.lock();
        if k.is_none() {
            *k = Some(Box::new(kick.into()));
        }
        drop(k);
        self.wake.notify_one();
    }

    /// Why the connection was told to leave, if it was.
    pub(crate) fn take_kick(&self) -> Option<Kick> {
        self.kick.lock().take().map(|k| *k)
    }
}

/// What the admin API shows about a connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The client's address, kept as address and port ([`ConnInfo::peer`]): 24 bytes less
    /// than a `SocketAddr`, whose IPv6 flow and scope fields nothing here shows.
    pub(crate) peer_ip: IpAddr,
    pub(crate) peer_port: u16,
    pub(crate) protocol: Protocol,
    /// MQTT 3.1, or a bridge.
    pub(crate) variant: roost_codec::ConnectVariant,
    pub(crate) keep_alive: u16,
    pub(crate) connected_at: WallMs,
    /// The authenticated user name (a certificate's identity on listeners that use it) and
    /// the certificate: shared with the session, `None` when there is neither.
    pub(crate) who: Option<Arc<crate::policy::Who>>,
    /// How the client authenticated.
    pub(crate) auth: crate::auth::Method,
    /// The listener it came through (its name and transport): shared, not copied.
    pub(crate) listener: Arc<crate::listener::Listener>,
}

impl ConnInfo {
    /// A connection's details for unit tests: a plain TCP client of a listener on port 1883.
    #[cfg(test)]
    pub(crate) fn for_tests() -> ConnInfo {
        let listen: SocketAddr = ([127, 0, 0, 1], 1883).into();
        let config = crate::listener::Listener::main_config(listen, 10);
        let listener = crate::listener::Listener::from_config("mqtt", &config, true, 1, 0)
            .expect("a plain TCP listener needs no files");
        ConnInfo {
            peer_ip: IpAddr::from([127, 0, 0, 1]),
            peer_port: 50_000,
            protocol: Protocol::V5,
            variant: roost_codec::ConnectVariant::default(),
            keep_alive: 60,
            connected_at: WallMs::now(),
            who: None,
            auth: crate::auth::Method::Anonymous,
            listener: Arc::new(listener),
        }
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.peer_ip, self.peer_port)
    }

    /// The authenticated user name, if any.
    pub(crate) fn username(&self) -> Option<&str> {
        self.who.as_deref().and_then(|w| w.username.as_deref())
    }
}

/// A wall-clock time in 8 bytes, milliseconds since the Unix epoch (an `Option<SystemTime>` is
/// 16: the session record is one mimalloc size class smaller for it; issue 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WallMs(std::num::NonZeroU64);

impl WallMs {
    pub(crate) fn now() -> WallMs {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        WallMs(std::num::NonZeroU64::new(ms).unwrap_or(std::num::NonZeroU64::MIN))
    }

    pub(crate) fn time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(self.0.get())
    }
}

/// Mutable per-session state, behind the entry's mutex. Only this module and the registry
/// touch it.
#[derive(Debug)]
pub(super) struct SessionState {
    pub(super) session: Session,
    /// The attached connection, if any.
    pub(super) conn: Option<Arc<ConnCtl>>,
    /// Bumped on every attach (wrapping): timers armed at detach compare it to know they are
    /// still due. 32 bits, beside `registered_expiry`: a stale timer would need exactly 2^32
    /// attaches of one session in between to be taken for current.
    pub(super) epoch: u32,
    /// The Session Expiry Interval recorded in the cluster's registry (the session's own, in
    /// the core session, may have been changed since by a v5 DISCONNECT).
    pub(super) registered_expiry: u32,
    /// Whether the latest attach ended the session the previous connection had: a clean
    /// start, or a session that ended with its connection (expiry 0). Decides the will of the
    /// connection taken over (published at once when its session ended).
    pub(super) last_attach_clean: bool,
    /// Removed from the registry: deliveries to it are ignored.
    pub(super) ended: bool,
    /// When its connection went away (for the admin API), see [`WallMs`].
    pub(super) disconnected_at: Option<WallMs>,
    /// The cluster registry generation this node owns, if the session was claimed. A claim by
    /// another node fences it out.
    pub(super) generation: Option<u64>,
    /// Its hand-over state (docs/rfcs/0006), made when a hand-over first touches it.
    handover: Option<Box<Handover>>,
    /// The `mqtt:Receive` gate (docs/security.md): resolved when a connection attaches, kept
    /// while it is offline, made again when the policies change; `None` while the node has
    /// no policies (or no connection attached here yet, see `principal_known`).
    pub(super) receive: Option<Box<crate::policy::ReceiveGate>>,
    /// Who the session's client is (from its latest connection here), for the gate.
    pub(super) who: Option<Arc<crate::policy::Who>>,
    /// Whether a connection attached here, so `who` is known: a session adopted from another
    /// node gets its gate when its client attaches (as before policies change).
    pub(super) principal_known: bool,
}

/// What a hand-over between nodes leaves in a session (docs/rfcs/0006). Most sessions never
/// take part in one, so it is boxed and absent until one does: 56 bytes less in every session
/// record, which puts the record in mimalloc's 384 B class instead of 448 (issue 10).
#[derive(Debug, Default)]
struct Handover {
    /// Handed over to another node (then also `ended`): what still matches it here goes on
    /// to that node (a tombstone).
    moved: Option<Moved>,
    /// Claimed by another node (the newest such claim) while this copy waits for its
    /// TakeSession: a copy fenced out takes nothing new, what matches it goes on to the
    /// claimant as from a tombstone. Lapses when this copy owns a newer generation again
    /// (handed back, or the client came back here).
    fenced: Option<Moved>,
    /// Just arrived from another node: the ids of the messages it holds or was given since,
    /// for a while, so a message that reaches it both directly and passed on from the old
    /// owner is taken once.
    recent: Option<RecentIds>,
}

impl SessionState {
    /// The fields a new session record starts with: attached to `conn` if given, owning
    /// `generation` if claimed, no hand-over, no gate yet.
    pub(super) fn new(
        session: Session,
        conn: Option<Arc<ConnCtl>>,
        last_attach_clean: bool,
        disconnected_at: Option<WallMs>,
        generation: Option<u64>,
    ) -> SessionState {
        SessionState {
            registered_expiry: session.expiry_interval(),
            session,
            conn,
            epoch: 1,
            last_attach_clean,
            ended: false,
            disconnected_at,
            generation,
            handover: None,
            receive: None,
            who: None,
            principal_known: false,
        }
    }

    fn handover_mut(&mut self) -> &mut Handover {
        self.handover.get_or_insert_with(Box::default)
    }

    /// Where the session was handed over to, if it was.
    pub(super) fn moved(&self) -> Option<Moved> {
        self.handover.as_ref().and_then(|h| h.moved)
    }

    /// Records that the session was handed over to `to`.
    pub(super) fn set_moved(&mut self, to: Moved) {
        self.handover_mut().moved = Some(to);
    }

    /// The claim that fenced this copy out, if it still does: one newer than the generation
    /// the copy owns.
    pub(super) fn fenced_by(&self) -> Option<Moved> {
        self.handover
            .as_ref()
            .and_then(|h| h.fenced)
            .filter(|f| self.generation.is_none_or(|g| g < f.generation))
    }

    /// Records a claim of another node that fences this copy out (the newest one counts).
    pub(super) fn fence(&mut self, by: Moved) {
        let h = self.handover_mut();
        if h.fenced.is_none_or(|f| f.generation < by.generation) {
            h.fenced = Some(by);
        }
    }

    /// Remembers the ids of the messages a session arrived with (see [`Handover::recent`]).
    pub(super) fn set_recent(&mut self, recent: RecentIds) {
        self.handover_mut().recent = Some(recent);
    }

    /// Whether `id` is a message this session, just arrived, has already: false the first
    /// time (and remembered), true after. The set lapses at its `until`.
    fn seen_recently(&mut self, id: u64, now: Instant) -> bool {
        let Some(h) = self.handover.as_deref_mut() else {
            return false;
        };
        let Some(r) = &mut h.recent else {
            return false;
        };
        if now < r.until {
            return !r.first(id);
        }
        h.recent = None;
        if h.moved.is_none() && h.fenced.is_none() {
            self.handover = None;
        }
        false
    }
}

/// Where a session handed over to another node went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) node: NodeId,
    /// The generation the new owner claimed.
    pub(crate) generation: u64,
}

/// Message ids a session that just moved has seen: the newest `RECENT_IDS_MAX`, until
/// `until` (after that the session drops the set).
#[derive(Debug)]
pub(super) struct RecentIds {
    until: Instant,
    order: VecDeque<u64>,
    seen: HashSet<u64>,
}

/// Ids a session that just moved remembers, at most (8 bytes each, twice): beyond it the
/// oldest are forgotten, counted (`roost_handover_ids_forgotten_total`), and a copy of one of
/// them arriving later would be delivered again.
pub(super) const RECENT_IDS_MAX: usize = 16_384;

impl RecentIds {
    /// Remembers `ids` (the messages the session arrived with) until `until`.
    pub(super) fn new(until: Instant, ids: impl Iterator<Item = u64>) -> RecentIds {
        let mut r = RecentIds {
            until,
            order: VecDeque::new(),
            seen: HashSet::new(),
        };
        for id in ids {
            r.first(id);
        }
        r
    }

    /// True the first time `id` is seen (and remembers it); 0 is never remembered.
    fn first(&mut self, id: u64) -> bool {
        if id == 0 {
            return true;
        }
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
                crate::metrics::handover_ids_forgotten();
            }
        }
        true
    }
}

/// A session as the index and registry hold it. Equality is identity: a session that ended and
/// a new one with the same client id are different keys.
#[derive(Debug, Clone)]
pub(crate) struct SessionRef(Arc<SessionEntry>);

#[derive(Debug)]
struct SessionEntry {
    client_id: ClientId,
    state: Mutex<SessionState>,
    /// Notified (all waiters) when the session's queue drained below the low watermark or its
    /// connection detached: publishers held back by backpressure and a hand-over waiting for
    /// the connection to go wait on it. Made by the first waiter (16 bytes in every session
    /// record instead of a `Notify`'s 32): with none made, nobody waits, and a waiter makes
    /// it before it checks what it waits for, so no change is missed.
    changed: OnceLock<Box<Notify>>,
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

/// What [`SessionRef::deliver`] did.
pub(crate) enum Delivery {
    /// The session had ended; nothing delivered.
    Ended,
    /// The policies do not let this session's client receive the topic (`mqtt:Receive`);
    /// nothing delivered.
    Denied,
    /// The session moved to another node: the message goes on to it, with this grant.
    Moved { to: Moved, grant: Grant },
    /// The session just moved here and has this message already (docs/rfcs/0006).
    Duplicate,
    /// Delivered or queued (or dropped and counted by the session's bounds).
    Accepted {
        /// A QoS 1/2 message to a connected session whose queue is at least `congested_at`.
        congested: bool,
        /// What the session dropped doing it.
        drops: Drops,
    },
}

/// What one subscriber gets of a message: the fields that differ per delivery.
#[derive(Debug)]
pub(crate) struct Grant {
    /// Delivery QoS: min(published, granted).
    pub(crate) qos: QoS,
    /// RETAIN as sent to this subscriber.
    pub(crate) retain: bool,
    /// Identifiers of the matching subscriptions (v5).
    pub(crate) ids: Vec<u32>,
    /// The shared subscription it came through, if any.
    pub(crate) shared: Option<TopicFilter>,
}

/// A read-only view of a session for the admin API.
#[derive(Debug)]
pub(crate) struct SessionView {
    pub(crate) conn: Option<(u64, ConnInfo)>,
    pub(crate) disconnected_at: Option<SystemTime>,
    pub(crate) expiry_interval: u32,
    /// Number of subscriptions (the list is [`SessionRef::subscriptions`]).
    pub(crate) subscriptions: usize,
    pub(crate) inflight: usize,
    pub(crate) queued: usize,
}

impl SessionRef {
    pub(super) fn new(client_id: ClientId, state: SessionState) -> SessionRef {
        SessionRef(Arc::new(SessionEntry {
            client_id,
            state: Mutex::new(state),
            changed: OnceLock::new(),
        }))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.0.state.lock()
    }

    /// Wakes everything in [`wait_changed`](Self::wait_changed) now.
    pub(super) fn notify_changed(&self) {
        if let Some(changed) = self.0.changed.get() {
            changed.notify_waiters();
        }
    }

    /// The client id.
    pub(crate) fn client_id(&self) -> &ClientId {
        &self.0.client_id
    }

    /// Runs `f` on the core session. The closure runs under the session's lock: it must not
    /// block or take another session's lock (it cannot `.await`).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Session) -> R) -> R {
        f(&mut self.0.state.lock().session)
    }

    /// Sets who this session's client is (at attach) and resolves its `mqtt:Receive` gate
    /// under `store` (none without policies).
    pub(crate) fn set_principal(
        &self,
        who: Option<Arc<crate::policy::Who>>,
        store: Option<&roost_core::policy::PolicyStore>,
    ) {
        let mut st = self.0.state.lock();
        let p = crate::policy::principal(self.0.client_id.as_str(), who.as_deref());
        st.receive = crate::policy::ReceiveGate::resolve(store, &p);
        st.who = who;
        st.principal_known = true;
    }

    /// Makes the session's `mqtt:Receive` gate again after the policies changed (`store`:
    /// the new ones, `None` when they were removed).
    pub(crate) fn refresh_receive_gate(&self, store: Option<&roost_core::policy::PolicyStore>) {
        let mut st = self.0.state.lock();
        if !st.principal_known {
            return;
        }
        let p = crate::policy::principal(self.0.client_id.as_str(), st.who.as_deref());
        st.receive = crate::policy::ReceiveGate::resolve(store, &p);
    }

    /// Whether the policies let this session's client receive `topic` (retained messages on
    /// subscribe).
    pub(crate) fn may_receive(&self, topic: &str) -> bool {
        self.0
            .state
            .lock()
            .receive
            .as_mut()
            .is_none_or(|g| g.allows(topic))
    }

    /// Delivers one message and wakes the connection if something is ready to send.
    /// `congested_at`: queue length from which a QoS 1/2 delivery to a connected session
    /// reports congestion (backpressure).
    pub(crate) fn deliver(
        &self,
        msg: Arc<Message>,
        grant: Grant,
        now: Instant,
        congested_at: usize,
    ) -> Delivery {
        let mut st = self.0.state.lock();
        if let Some(to) = st.moved() {
            return Delivery::Moved { to, grant };
        }
        if st.ended {
            return Delivery::Ended;
        }
        if let Some(to) = st.fenced_by() {
            return Delivery::Moved { to, grant };
        }
        if st.seen_recently(msg.id, now) {
            return Delivery::Duplicate;
        }
        if let Some(g) = &mut st.receive {
            if !g.allows(msg.topic.as_str()) {
                return Delivery::Denied;
            }
        }
        let Grant {
            qos,
            retain,
            ids,
            shared,
        } = grant;
        if qos == QoS::ExactlyOnce && crate::failpoints::qos2_twice() {
            st.session
                .deliver(msg.clone(), qos, retain, ids.clone(), shared.clone(), now);
        }
        st.session.deliver(msg, qos, retain, ids, shared, now);
        let drops = st.session.take_drops();
        if st.session.has_outbox() {
            if let Some(c) = &st.conn {
                c.wake.notify_one();
            }
        }
        let congested =
            qos != QoS::AtMostOnce && st.conn.is_some() && st.session.queued_len() >= congested_at;
        Delivery::Accepted { congested, drops }
    }

    /// Whether a message passed on to this session from the node it moved from
    /// (docs/rfcs/0006) is still for it: the session is live, owns `generation` or a newer
    /// one, and still has the subscription that matched (a clean start since ended that
    /// session). `None`: it does not own that generation yet (its attach is still running).
    pub(crate) fn takes_passed_on(
        &self,
        generation: u64,
        topic: &roost_core::topic::TopicName,
        shared: Option<&TopicFilter>,
    ) -> Option<bool> {
        let st = self.0.state.lock();
        if st.ended || st.moved().is_some() {
            return Some(false);
        }
        if st.generation.is_none_or(|g| g < generation) {
            return None;
        }
        let subs = st.session.subscriptions();
        Some(match shared {
            Some(f) => subs.contains_key(f),
            None => subs
                .keys()
                .any(|f| f.share_group().is_none() && f.matches(topic)),
        })
    }

    /// True while the session is live, connected and its queue is longer than `low`
    /// (backpressure keeps waiting).
    pub(crate) fn backed_up(&self, low: usize) -> bool {
        let st = self.0.state.lock();
        !st.ended && st.conn.is_some() && st.session.queued_len() > low
    }

    /// Wakes publishers waiting for this session's queue once it is down to `low`.
    pub(crate) fn signal_space(&self, low: usize) {
        if self.0.state.lock().session.queued_len() <= low {
            self.notify_changed();
        }
    }

    /// Waits until [`notify_changed`](Self::notify_changed) is called; the permit is registered before `check`
    /// runs, so a notification between the check and the wait is not lost. Returns at once
    /// when `check` is true.
    ///
    /// Cancel safety: stateless; dropping it only stops waiting.
    pub(crate) async fn wait_changed(&self, check: impl Fn(&SessionRef) -> bool) {
        let notified = self
            .0
            .changed
            .get_or_init(|| Box::new(Notify::new()))
            .notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if check(self) {
            return;
        }
        notified.await;
    }

    /// The attached connection's control block.
    pub(crate) fn conn(&self) -> Option<Arc<ConnCtl>> {
        self.0.state.lock().conn.clone()
    }

    /// True once the session ended here (expired, discarded, handed over).
    pub(crate) fn is_ended(&self) -> bool {
        self.0.state.lock().ended
    }

    /// What a graceful stop must do about this session; `None` once it ended here.
    pub(crate) fn drain_state(&self) -> Option<super::drain::DrainState> {
        use super::drain::DrainState;
        let st = self.0.state.lock();
        if st.ended {
            return None;
        }
        Some(match (&st.conn, st.generation) {
            (Some(c), _) => DrainState::Connected(Arc::clone(c)),
            (None, Some(generation)) if st.session.expiry_interval() > 0 => {
                DrainState::Offline { generation }
            }
            _ => DrainState::Stays,
        })
    }

    /// For shared-group member choice: (ended, has window, connected).
    pub(crate) fn availability(&self) -> (bool, bool, bool) {
        let st = self.0.state.lock();
        (st.ended, st.session.has_window(), st.session.is_connected())
    }

    /// The session's subscriptions (a copy, for the admin API).
    pub(crate) fn subscriptions(&self) -> Vec<(TopicFilter, Subscription)> {
        let st = self.0.state.lock();
        let subs = st.session.subscriptions();
        subs.iter().map(|(f, s)| (f.clone(), s.clone())).collect()
    }

    /// A snapshot for the admin API.
    pub(crate) fn view(&self) -> SessionView {
        let st = self.0.state.lock();
        SessionView {
            conn: st.conn.as_ref().map(|c| (c.id, c.info.clone())),
            disconnected_at: st.disconnected_at.map(WallMs::time),
            expiry_interval: st.session.expiry_interval(),
            subscriptions: st.session.subscriptions().len(),
            inflight: st.session.inflight_len(),
            queued: st.session.queued_len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        ConnCtl, Moved, RecentIds, SessionEntry, SessionState, Wake, WallMs, WOKEN_DEADLINE,
        WOKEN_NOTIFY,
    };
    use roost_cluster::types::NodeId;
    use roost_core::session::{Session, SessionLimits};
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant, SystemTime};

    /// Counts how often a waker was woken: the count, and a waker that adds to it.
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn woken(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        (count, waker)
    }

    /// The record is held once per session, online or not, so its mimalloc size class is
    /// part of issue 10's memory per connection: with `Arc`'s two counters (16 bytes) it must
    /// fit the 384 B class. What would grow it past that belongs in a box (as [`super::Handover`]).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_session_record_fits_the_384_byte_class() {
        let size = std::mem::size_of::<SessionEntry>() + 16;
        assert!(size <= 384, "Arc<SessionEntry> is {size} B");
    }

    /// The same for a connection's control block: mimalloc's 128 B class.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_connection_control_block_fits_the_128_byte_class() {
        let size = std::mem::size_of::<ConnCtl>() + 16;
        assert!(size <= 128, "Arc<ConnCtl> is {size} B");
    }

    /// A notification made while nobody waits is kept as one permit (several collapse into
    /// it), taken by the next wait; a wait that is dropped unfinished takes nothing.
    #[test]
    fn a_wake_keeps_one_permit_until_taken_and_a_dropped_wait_takes_nothing() {
        let wake = Wake::default();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(wake.poll_notified(&mut cx), Poll::Pending);
        wake.notify_one();
        wake.notify_one();
        assert_eq!(wake.poll_notified(&mut cx), Poll::Ready(()));
        assert_eq!(
            wake.poll_notified(&mut cx),
            Poll::Pending,
            "one permit, not two"
        );
        // Polled once and dropped (a `select!` arm that lost), then notified: the permit waits
        // for the next wait.
        {
            let mut wait = std::pin::pin!(wake.notified());
            assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending);
        }
        wake.notify_one();
        let mut wait = std::pin::pin!(wake.notified());
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    /// The permits say who left them; a task waiting is woken once, however many notify.
    #[test]
    fn a_permit_says_whether_a_deadline_or_a_notification_left_it() {
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let wake = Wake::default();
        assert_eq!(wake.poll_take(&mut cx), Poll::Pending);
        wake.notify_deadline();
        assert_eq!(count.woken(), 1);
        assert_eq!(wake.poll_take(&mut cx), Poll::Ready(WOKEN_DEADLINE));
        assert_eq!(wake.poll_take(&mut cx), Poll::Pending);
        wake.notify_deadline();
        wake.notify_one();
        wake.notify_deadline();
        assert_eq!(
            count.woken(),
            2,
            "once: the first notifier takes the registered waker"
        );
        assert_eq!(
            wake.poll_take(&mut cx),
            Poll::Ready(WOKEN_DEADLINE | WOKEN_NOTIFY)
        );
        wake.notify_one();
        assert_eq!(wake.poll_take(&mut cx), Poll::Ready(WOKEN_NOTIFY));
    }

    /// A dropped wait unregisters its waker: a notification afterwards leaves the permit and
    /// wakes nobody (the task is running, or gone), as a dropped `Notified` would.
    #[test]
    fn a_dropped_wait_leaves_no_waker_behind() {
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let wake = Wake::default();
        {
            let mut wait = std::pin::pin!(wake.notified());
            assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending);
        }
        wake.notify_one();
        assert_eq!(count.woken(), 0);
        assert_eq!(Arc::strong_count(&count), 2, "only `waker` holds it");
        // Still registered while the wait exists: woken once, then it takes the permit.
        let mut wait = std::pin::pin!(wake.notified());
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending);
        wake.notify_one();
        assert_eq!(count.woken(), 1);
    }

    /// A task waiting on the wake-up is woken by a notification from another thread, each time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_task_is_woken_from_another_thread() {
        let wake = Arc::new(Wake::default());
        for _ in 0..1000 {
            let waiter = tokio::spawn({
                let wake = Arc::clone(&wake);
                async move { wake.notified().await }
            });
            tokio::task::yield_now().await;
            wake.notify_one();
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("woken")
                .expect("task");
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            wake.poll_notified(&mut cx),
            Poll::Pending,
            "every permit was taken"
        );
    }

    fn state() -> SessionState {
        let session = Session::new("c".into(), SessionLimits::default());
        SessionState::new(session, None, false, None, None)
    }

    #[test]
    fn hand_over_state_is_made_when_used_and_dropped_when_only_a_lapsed_id_set_was_left() {
        let now = Instant::now();
        let mut st = state();
        assert!(st.handover.is_none());
        assert_eq!((st.moved(), st.fenced_by()), (None, None));
        assert!(!st.seen_recently(7, now));

        // Arrived from another node with message 7: a second copy of 7 is a duplicate, 8 is
        // new once.
        st.set_recent(RecentIds::new(
            now + Duration::from_secs(1),
            [7].into_iter(),
        ));
        assert!(st.seen_recently(7, now));
        assert!(!st.seen_recently(8, now));
        assert!(st.seen_recently(8, now));
        // Past its window the set lapses, and with nothing else in it the box goes too.
        assert!(!st.seen_recently(7, now + Duration::from_secs(1)));
        assert!(st.handover.is_none());

        // Fenced by a newer claim elsewhere, until this copy owns a newer generation.
        let by = |generation| Moved {
            node: NodeId::new(2),
            generation,
        };
        st.generation = Some(3);
        st.fence(by(5));
        st.fence(by(4));
        assert_eq!(st.fenced_by(), Some(by(5)), "the newest claim counts");
        st.generation = Some(6);
        assert_eq!(st.fenced_by(), None);
        st.set_moved(by(7));
        assert_eq!(st.moved(), Some(by(7)));
        // A lapsing id set does not drop the box while it holds a move.
        st.set_recent(RecentIds::new(now, [1].into_iter()));
        assert!(!st.seen_recently(1, now));
        assert_eq!(st.moved(), Some(by(7)));
    }

    #[test]
    fn a_wall_time_in_milliseconds_reads_back_as_the_time_it_was_taken() {
        let before = SystemTime::now();
        let t = WallMs::now().time();
        let after = SystemTime::now();
        // Truncated to the millisecond: at most 1 ms before `before`.
        assert!(t + Duration::from_millis(1) >= before, "{t:?} < {before:?}");
        assert!(t <= after, "{t:?} > {after:?}");
    }
}
