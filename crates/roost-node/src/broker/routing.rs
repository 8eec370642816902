//! Where a message goes: local subscribers (direct and one member per shared group), and the
//! peers that have subscribers for it; backpressure on a publisher whose subscribers fall
//! behind; redistribution of a departed shared member's messages.
//!
//! ```text
//!  route(msg, origin) ─▶ cluster route table (skipped on a lone node) ─▶ remote: peers to forward to
//!                     └▶ index.read().matches ─▶ SessionRef::deliver (one session lock at a time)
//!  forward(msg, remote) ─▶ Cluster::forward per peer ─▶ task: all peers accepted
//!                                                           | one refused / timed out (counted)
//! ```
//!
//! The publisher's acknowledgement keeps the promise written in docs/architecture.md ("What
//! an acknowledgement promises"): a client's QoS 1/2 message that must reach a peer known
//! unreachable is refused before it is delivered anywhere (docs/rfcs/0005), and one a peer did
//! not accept in time is reported to the driver as failed ([`PeerWait::failure`]).

use super::session::{Delivery, Grant, Moved};
use super::{Broker, Origin, SessionRef};
use roost_cluster::types::NodeId;
use roost_cluster::{Addressed, ForwardAck, NotForwarded};
use roost_codec::ReasonCode;
use roost_core::index::{Matches, Subscription};
use roost_core::message::Message;
use roost_core::session::Orphan;
use roost_core::topic::TopicFilter;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

thread_local! {
    /// Scratch match lists for [`Broker::route_local`], reused so a fan-out to many
    /// subscribers does not grow fresh vectors for every message.
    static MATCHES: std::cell::Cell<Matches<SessionRef>> = std::cell::Cell::new(Matches::default());
}

/// A message the publisher's node must hand to a peer.
#[derive(Debug)]
pub(crate) struct RemoteSend {
    pub(crate) node: NodeId,
    /// Deliver to the peer's matching non-shared subscriptions.
    pub(crate) direct: bool,
    /// Shared subscriptions this peer was chosen to serve.
    pub(crate) shared: Vec<TopicFilter>,
}

/// A message for a session that was handed over to another node and still matched here: it
/// goes on to that node, for that session alone (docs/rfcs/0006).
#[derive(Debug)]
pub(crate) struct PassOn {
    pub(crate) to: Moved,
    pub(crate) addressed: Addressed,
}

/// What routing a message did.
#[derive(Debug, Default)]
pub(crate) struct Routed {
    /// Local sessions it was delivered or queued to.
    pub(crate) local: usize,
    /// Peers that must get it.
    pub(crate) remote: Vec<RemoteSend>,
    /// Sessions that moved to other nodes that must get it.
    pub(crate) passes: Vec<PassOn>,
    /// A client's QoS 1/2 message that must reach a peer known unreachable
    /// (`Cluster::peer_up`): it was delivered nowhere, and the publisher hears a failure
    /// (docs/rfcs/0005).
    pub(crate) unreachable: bool,
}

/// The wait for peers to accept one forwarded QoS 1/2 message, which the publisher's
/// acknowledgement is held behind: the peers' answers (one per peer) and a deadline
/// (`cluster.forward_timeout_ms` after the message was handed to the forwarders).
///
/// No task and no timer of its own: whoever holds it polls the answers ([`answered`]) and
/// keeps the deadline in its own timer (a connection's one timer, `driver.rs`). A task per
/// forwarded message, as before, cost a spawn, a timer-wheel entry and a wake-up of the
/// publisher's connection per message, so the acknowledgements of a batch the peer answered
/// together went out one write each (docs/performance.md, "The forward path").
///
/// [`answered`]: Self::answered
#[derive(Debug)]
pub(crate) struct PeerWait {
    /// Answers not yet in. Dropped when the wait times out, which tells each forwarder that
    /// nobody waits for the message any more (it is not resent after a reconnect).
    acks: Vec<ForwardAck>,
    /// The worst answer so far.
    failure: Option<ReasonCode>,
    deadline: tokio::time::Instant,
    /// Counts a wait that timed out (`roost_cluster_forward_timeouts_total`), once.
    timeouts: metrics::Counter,
    /// Where a wait dropped before its answers came goes on waiting (see `Drop`).
    tasks: TaskTracker,
}

/// A wait dropped with answers still out (a will's publish, which nobody acknowledges; a
/// publisher's connection that closed) goes on waiting in a task of the broker's, until the
/// answers or the deadline, and still counts a timeout. The forwarders read a dropped receiver
/// as "nobody waits any more" and would neither send nor resend the message: right only for a
/// wait that ran out (whose publisher heard 0x80), which has no receivers left by then.
///
/// Outside a runtime (a wait dropped on a thread that has none, or after the runtime is gone)
/// there is nowhere to wait: the wait is given up and counted as timed out, instead of the
/// panic a spawn there would be (a panic in `drop` during an unwind aborts the process).
impl Drop for PeerWait {
    fn drop(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.acks);
        let (deadline, timeouts) = (self.deadline, self.timeouts.clone());
        if tokio::runtime::Handle::try_current().is_err() {
            timeouts.increment(1);
            return;
        }
        self.tasks.spawn(async move {
            let answers = async move {
                for rx in acks {
                    let _ = rx.await;
                }
            };
            if tokio::time::timeout_at(deadline, answers).await.is_err() {
                timeouts.increment(1);
            }
        });
    }
}

impl PeerWait {
    fn new(
        acks: Vec<ForwardAck>,
        deadline: tokio::time::Instant,
        timeouts: metrics::Counter,
        tasks: TaskTracker,
    ) -> PeerWait {
        PeerWait {
            acks,
            failure: None,
            deadline,
            timeouts,
            tasks,
        }
    }

    /// True once every peer answered or the deadline passed (which is then counted, and
    /// makes the publisher hear 0x80).
    pub(crate) fn is_finished(&mut self) -> bool {
        while let Some(rx) = self.acks.last_mut() {
            let answer = match rx.try_recv() {
                Ok(answer) => answer,
                Err(oneshot::error::TryRecvError::Closed) => Err(NotForwarded::Stopped),
                Err(oneshot::error::TryRecvError::Empty) => {
                    if tokio::time::Instant::now() < self.deadline {
                        return false;
                    }
                    self.acks.clear();
                    self.timeouts.increment(1);
                    self.failure = Some(ReasonCode::UNSPECIFIED_ERROR);
                    return true;
                }
            };
            self.take_last(answer);
        }
        true
    }

    /// The last receiver answered `answer` (a closed one: `Stopped`): it leaves the wait, and
    /// its answer is kept if it is a failure.
    fn take_last(&mut self, answer: Result<(), NotForwarded>) {
        self.acks.pop();
        if let Err(why) = answer {
            // Quota exceeded is the more specific answer; keep it if any peer gave it.
            if self.failure != Some(ReasonCode::QUOTA_EXCEEDED) {
                self.failure = Some(reason_for(why));
            }
        }
    }

    /// When the wait gives up on peers that have not answered.
    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// Waits until every peer answered, without the deadline: for a `select!` beside the
    /// holder's own timer at [`deadline`](Self::deadline). Then [`is_finished`] is true.
    ///
    /// Cancel safety: polling a receiver by reference takes nothing from it; an answer taken
    /// is kept.
    ///
    /// [`is_finished`]: Self::is_finished
    pub(crate) async fn answered(&mut self) {
        while let Some(rx) = self.acks.last_mut() {
            let answer = rx.await.unwrap_or(Err(NotForwarded::Stopped));
            self.take_last(answer);
        }
    }

    /// Waits until [`is_finished`](Self::is_finished): every peer answered, or the deadline.
    pub(crate) async fn done(&mut self) {
        let deadline = self.deadline;
        let _ = tokio::time::timeout_at(deadline, self.answered()).await;
        self.is_finished();
    }

    /// Once finished: `None` if every peer accepted the message, else the reason code for
    /// its publisher (0x97 Quota exceeded when a bound refused it, 0x80 otherwise).
    pub(crate) fn failure(&self) -> Option<ReasonCode> {
        self.failure
    }
}

/// Which shared groups this node serves for one message.
enum SharedPolicy<'a> {
    /// Every local group (a lone node, `$SYS`).
    All,
    /// Groups the cluster routes are served here only when this node was picked; a group not
    /// (yet) in the replicated table is served locally.
    Picked {
        known: HashSet<TopicFilter>,
        mine: HashSet<TopicFilter>,
    },
    /// Only these (a peer picked this node for them).
    Only(&'a [TopicFilter]),
}

impl SharedPolicy<'_> {
    fn serves(&self, f: &TopicFilter) -> bool {
        match self {
            SharedPolicy::All => true,
            SharedPolicy::Picked { known, mine } => !known.contains(f) || mine.contains(f),
            SharedPolicy::Only(list) => list.contains(f),
        }
    }
}

impl Broker {
    /// Routes a message: delivers it to every matching local session and, for messages that
    /// start here on a node with peers, decides which peers get it. Connected sessions whose
    /// queue is backing up are added to `congested` (see [`Broker::wait_for_space`]); the
    /// publisher's own session never is.
    pub(super) fn route(
        &self,
        msg: &Arc<Message>,
        origin: Origin<'_>,
        congested: &mut Vec<SessionRef>,
    ) -> Routed {
        let (publisher, direct, (remote, policy)) = match origin {
            Origin::Client(s) => (Some(s), true, self.plan_remote(msg)),
            Origin::Will => (None, true, self.plan_remote(msg)),
            Origin::Peer { direct, shared } => {
                (None, direct, (Vec::new(), SharedPolicy::Only(shared)))
            }
            Origin::System => (None, true, (Vec::new(), SharedPolicy::All)),
        };
        if publisher.is_some()
            && msg.qos != roost_codec::QoS::AtMostOnce
            && remote.iter().any(|r| !self.cluster.peer_up(r.node))
        {
            // A client's QoS 1/2 message is accepted whole or not at all: a peer that must get
            // it is known unreachable, so it goes nowhere and the publisher hears a failure at
            // once instead of waiting the forward timeout (docs/rfcs/0005).
            return Routed {
                unreachable: true,
                ..Routed::default()
            };
        }
        let mut passes = Vec::new();
        let mut served = Vec::new();
        let local = self.route_local(
            msg,
            publisher,
            congested,
            direct,
            &policy,
            &mut passes,
            &mut served,
        );
        // A group this node was picked to serve (by a peer, or by itself for its own
        // clients) that no member here took: its last member just left, and the route that
        // picked this node is about to go. Another node with members takes it, within the
        // publisher's wait like any peer (issue 8, chaos `shared`).
        let unserved: Vec<&TopicFilter> = match &policy {
            SharedPolicy::Only(list) => list.iter().filter(|f| !served.contains(f)).collect(),
            SharedPolicy::Picked { mine, .. } => {
                mine.iter().filter(|f| !served.contains(f)).collect()
            }
            SharedPolicy::All => Vec::new(),
        };
        let mut remote = remote;
        for f in unserved {
            self.serve_elsewhere(&msg.topic, f, &mut remote);
        }
        Routed {
            local,
            remote,
            passes,
            unreachable: false,
        }
    }

    /// Which peers have subscribers, and which node serves each shared group this time (round
    /// robin over the nodes that have members). A lone node has no peers: the replicated route
    /// table is skipped.
    fn plan_remote(&self, msg: &Arc<Message>) -> (Vec<RemoteSend>, SharedPolicy<'static>) {
        let c = &self.cluster;
        if !c.has_peers() {
            return (Vec::new(), SharedPolicy::All);
        }
        let me = c.node_id();
        let mut remote: BTreeMap<NodeId, RemoteSend> = BTreeMap::new();
        fn entry(remote: &mut BTreeMap<NodeId, RemoteSend>, node: NodeId) -> &mut RemoteSend {
            remote.entry(node).or_insert_with(|| RemoteSend {
                node,
                direct: false,
                shared: Vec::new(),
            })
        }
        let mut m = Matches::default();
        c.state().read().routes().matches(&msg.topic, None, &mut m);
        for d in m.direct {
            if d.subscriber != me {
                entry(&mut remote, d.subscriber).direct = true;
            }
        }
        let mut known = HashSet::new();
        let mut mine = HashSet::new();
        for g in m.shared {
            // Round robin from `start`, skipping members this node cannot reach: a node that is
            // down must not strand its turn of the group's messages.
            let n = g.members.len();
            let pick = (0..n)
                .map(|i| g.members[(g.start + i) % n].0)
                .find(|node| *node == me || c.peer_up(*node))
                .or_else(|| g.members.get(g.start % n.max(1)).map(|(node, _)| *node));
            let Some(node) = pick else {
                continue;
            };
            known.insert(g.filter.clone());
            if node == me {
                mine.insert(g.filter);
            } else {
                entry(&mut remote, node).shared.push(g.filter);
            }
        }
        (
            remote.into_values().collect(),
            SharedPolicy::Picked { known, mine },
        )
    }

    /// Delivers to matching local sessions: non-shared ones if `direct`, and one member of each
    /// matching shared group that `policy` serves here (those served are added to `served`,
    /// unless every local group is served).
    #[allow(clippy::too_many_arguments)]
    fn route_local(
        &self,
        msg: &Arc<Message>,
        publisher: Option<&SessionRef>,
        congested: &mut Vec<SessionRef>,
        direct: bool,
        policy: &SharedPolicy<'_>,
        passes: &mut Vec<PassOn>,
        served: &mut Vec<TopicFilter>,
    ) -> usize {
        let now = crate::now();
        // The match lists keep their capacity from one message to the next on this thread.
        let mut matches = MATCHES.take();
        self.index
            .read()
            .matches(&msg.topic, publisher, &mut matches);
        if !direct {
            matches.direct.clear();
        }
        let mut n = 0;
        for d in matches.direct.drain(..) {
            if msg.qos != roost_codec::QoS::AtMostOnce && crate::failpoints::drop_acked() {
                continue;
            }
            let grant = Grant {
                qos: msg.qos.min(d.qos),
                retain: d.retain_as_published && msg.retain,
                ids: d.identifiers,
                shared: None,
            };
            if self.deliver_to(&d.subscriber, msg, grant, now, publisher, congested, passes) {
                n += 1;
            }
        }
        for g in matches.shared.drain(..) {
            if g.members.is_empty() || !policy.serves(&g.filter) {
                continue;
            }
            let (member, sub) = pick_member(&g.members, g.start);
            let grant = Grant {
                qos: msg.qos.min(sub.options.qos),
                retain: sub.options.retain_as_published && msg.retain,
                ids: sub.identifier.into_iter().collect(),
                shared: Some(g.filter.clone()),
            };
            if self.deliver_to(member, msg, grant, now, publisher, congested, passes) {
                if !matches!(policy, SharedPolicy::All) {
                    served.push(g.filter.clone());
                }
                n += 1;
            }
        }
        // Cleared before it is put back: no session is kept alive by the scratch lists.
        matches.clear();
        MATCHES.set(matches);
        n
    }

    /// Delivers to one session, counting its drops; true if the session took it. A congested
    /// subscriber other than the publisher is added to `congested`; a session that moved to
    /// another node adds the message to `passes` (and counts as taking it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver_to(
        &self,
        target: &SessionRef,
        msg: &Arc<Message>,
        grant: Grant,
        now: Instant,
        publisher: Option<&SessionRef>,
        congested: &mut Vec<SessionRef>,
        passes: &mut Vec<PassOn>,
    ) -> bool {
        match target.deliver(msg.clone(), grant, now, self.congested_at()) {
            Delivery::Ended => false,
            Delivery::Denied => {
                crate::metrics::receive_denied();
                false
            }
            Delivery::Duplicate => {
                self.metrics.handover_duplicates.increment(1);
                true
            }
            Delivery::Moved { to, grant } => {
                passes.push(PassOn {
                    to,
                    addressed: Addressed {
                        client_id: target.client_id().clone(),
                        generation: to.generation,
                        qos: grant.qos,
                        retain: grant.retain,
                        subscription_ids: grant.ids,
                        shared: grant.shared,
                    },
                });
                true
            }
            Delivery::Accepted {
                congested: c,
                drops,
            } => {
                self.metrics.record_drops(drops);
                if c && publisher != Some(target) {
                    congested.push(target.clone());
                }
                true
            }
        }
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
        let low = self.low_watermark();
        for s in congested {
            while s.backed_up(low) {
                let wait = s.wait_changed(|s| !s.backed_up(low));
                if tokio::time::timeout_at(deadline, wait).await.is_err() {
                    self.metrics.backpressure_timeouts.increment(1);
                    return;
                }
            }
        }
    }

    /// Hands messages of a departed shared-subscription member to the rest of its group.
    pub(super) fn redistribute(&self, orphans: Vec<Orphan>, departed: &SessionRef) {
        let now = crate::now();
        let mut remote = Vec::new();
        let mut passes = Vec::new();
        for o in orphans {
            let mut matches = Matches::default();
            self.index.read().matches(&o.msg.topic, None, &mut matches);
            let (start, members) = match matches.shared.into_iter().find(|g| g.filter == o.filter) {
                Some(g) => (
                    g.start,
                    g.members
                        .into_iter()
                        .filter(|(m, _)| m != departed)
                        .collect::<Vec<_>>(),
                ),
                None => (0, Vec::new()),
            };
            if members.is_empty() {
                // No member left here: a peer with members of the group takes it.
                if let Some(node) = self.peer_with_members(&o) {
                    remote.push((node, o));
                } else {
                    self.metrics.queue_dropped.increment(1);
                }
                continue;
            }
            let (member, sub) = pick_member(&members, start);
            let grant = Grant {
                qos: o.msg.qos.min(sub.options.qos),
                retain: false,
                ids: sub.identifier.into_iter().collect(),
                shared: Some(o.filter),
            };
            // A member that ended meanwhile takes nothing: the message is dropped, and counted.
            let mut moved = Vec::new();
            if !self.deliver_to(
                member,
                &o.msg,
                grant,
                now,
                None,
                &mut Vec::new(),
                &mut moved,
            ) {
                self.metrics.queue_dropped.increment(1);
            }
            passes.extend(
                moved
                    .into_iter()
                    .filter_map(|p| self.readdress(p))
                    .map(|p| (o.msg.clone(), p)),
            );
        }
        if !remote.is_empty() || !passes.is_empty() {
            // One task, so they reach each peer's forwarder in the order they were queued.
            let cluster = Arc::clone(&self.cluster);
            let limit = Duration::from_millis(self.config.cluster.forward_timeout_ms);
            // Where the wait goes on if this task is dropped mid-way (at shutdown).
            let tasks = self.tasks.clone();
            self.spawn(async move {
                let mut acks = Vec::new();
                for (node, o) in remote {
                    // The forwarder counts what it gives up (timeouts, a peer that left).
                    acks.extend(cluster.forward(node, o.msg, false, vec![o.filter]).await);
                }
                for (msg, p) in passes {
                    acks.extend(cluster.pass_on(p.to.node, msg, p.addressed).await);
                }
                // Waited for like a publisher's: a forwarder resends after a reconnect only
                // what somebody still waits for. Nobody hears the answer: a timeout here is
                // not a publisher's and is not counted as one.
                let deadline = tokio::time::Instant::now() + limit;
                PeerWait::new(acks, deadline, metrics::Counter::noop(), tasks)
                    .done()
                    .await;
            });
        }
    }

    /// For a departed shared member's message with no member of its group left on this node:
    /// a reachable peer that has members of the group (the replicated route table), to take it
    /// as its share of the group; `None` (the message is dropped and counted) when there is none.
    fn peer_with_members(&self, o: &Orphan) -> Option<NodeId> {
        self.peer_serving(&o.msg.topic, &o.filter)
    }

    /// A reachable peer the replicated route table says has members of shared group `filter`
    /// matching `topic`.
    fn peer_serving(
        &self,
        topic: &roost_core::topic::TopicName,
        filter: &TopicFilter,
    ) -> Option<NodeId> {
        let c = &self.cluster;
        if !c.has_peers() {
            return None;
        }
        let me = c.node_id();
        let mut m = Matches::default();
        c.state().read().routes().matches(topic, None, &mut m);
        m.shared
            .iter()
            .filter(|g| g.filter == *filter)
            .flat_map(|g| g.members.iter().map(|(n, _)| *n))
            .find(|n| *n != me && c.peer_up(*n))
    }

    /// Adds shared group `f`, picked to be served here but taken by no member here, to
    /// `remote` for a peer that has members of it; with none left anywhere the message is
    /// dropped for that group and counted, as one with no subscriber is.
    fn serve_elsewhere(
        &self,
        topic: &roost_core::topic::TopicName,
        f: &TopicFilter,
        remote: &mut Vec<RemoteSend>,
    ) {
        let Some(node) = self.peer_serving(topic, f) else {
            self.metrics.shared_no_member.increment(1);
            return;
        };
        self.metrics.shared_served_elsewhere.increment(1);
        match remote.iter_mut().find(|r| r.node == node) {
            Some(r) => r.shared.push(f.clone()),
            None => remote.push(RemoteSend {
                node,
                direct: false,
                shared: vec![f.clone()],
            }),
        }
    }

    /// Hands a message to the peers that have subscribers, in publish order. For QoS 1/2 it
    /// returns a [`PeerWait`] that ends when every peer accepted it, when one refused it
    /// (not a member, its queue full, the resend bound, too large: counted by the cluster
    /// layer), or after `cluster.forward_timeout_ms` (counted here); in the last two cases
    /// the publisher hears a failure, never 0x00 (docs/architecture.md, "What an
    /// acknowledgement promises").
    pub(super) async fn forward(
        &self,
        msg: &Arc<Message>,
        remote: Vec<RemoteSend>,
        passes: Vec<PassOn>,
    ) -> Option<PeerWait> {
        let mut acks = Vec::new();
        for r in remote {
            if let Some(rx) = self
                .cluster
                .forward(r.node, msg.clone(), r.direct, r.shared)
                .await
            {
                acks.push(rx);
            }
        }
        acks.extend(self.pass_on(msg, passes).await);
        if acks.is_empty() {
            return None;
        }
        let limit = Duration::from_millis(self.config.cluster.forward_timeout_ms);
        let deadline = tokio::time::Instant::now() + limit;
        Some(PeerWait::new(
            acks,
            deadline,
            self.metrics.forward_timeouts.clone(),
            self.tasks.clone(),
        ))
    }

    /// Hands a message to the nodes that sessions it matched here moved to (docs/rfcs/0006);
    /// the acknowledgements to wait for (QoS 1/2).
    async fn pass_on(&self, msg: &Arc<Message>, passes: Vec<PassOn>) -> Vec<ForwardAck> {
        let mut acks = Vec::new();
        for p in passes.into_iter().filter_map(|p| self.readdress(p)) {
            if let Some(rx) = self
                .cluster
                .pass_on(p.to.node, msg.clone(), p.addressed)
                .await
            {
                acks.push(rx);
            }
        }
        acks
    }

    /// Where a pass-on goes when the node the session moved to has left the cluster since
    /// (its tombstone here names it). Passed on there it would be refused (no member), and the
    /// publisher, or the peer whose forward brought it, would hear a failure for every message
    /// the tombstone matches until it ends. The replicated state says where the session is
    /// now: at a member, it goes there, addressed to that claim; nowhere (`leave` forgot the
    /// departed node's sessions, docs/deploy.md), it is owed to nobody and dropped, counted.
    /// While the state still names the departed node (the leave is applied, its forgetting not
    /// yet), or this node, it goes as before and is refused: the publisher hears a failure,
    /// nothing is lost.
    fn readdress(&self, mut p: PassOn) -> Option<PassOn> {
        if self.cluster.is_member(p.to.node) {
            return Some(p);
        }
        let owner = self
            .cluster
            .state()
            .read()
            .session_owner(&p.addressed.client_id);
        match owner {
            Some(o) if o.node != self.cluster.node_id() && self.cluster.is_member(o.node) => {
                p.to = Moved {
                    node: o.node,
                    generation: o.generation,
                };
                p.addressed.generation = o.generation;
                Some(p)
            }
            None => {
                self.metrics.passed_on_owner_left.increment(1);
                None
            }
            // Still the departed node, or this one (an attach here not indexed yet): refused.
            Some(_) => Some(p),
        }
    }

    /// [`forward`](Self::forward) for a message this node did not publish (from a peer, or
    /// passed on to a session that moved on): whether every node took it within the forward
    /// timeout. The peer's acknowledgement waits for this.
    pub(crate) async fn forward_all(
        &self,
        msg: &Arc<Message>,
        remote: Vec<RemoteSend>,
        passes: Vec<PassOn>,
    ) -> bool {
        self.forward_then_wait(msg, remote, passes).await.await
    }

    /// [`forward_all`](Self::forward_all) in its two steps: this hands the message to the
    /// forwarders (a Forward stream awaits it in the order its messages came, so what it
    /// passes on keeps that order); the future it returns waits for their answers.
    pub(crate) async fn forward_then_wait(
        &self,
        msg: &Arc<Message>,
        remote: Vec<RemoteSend>,
        passes: Vec<PassOn>,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let wait = self.forward(msg, remote, passes).await;
        async move {
            match wait {
                None => true,
                Some(mut wait) => {
                    wait.done().await;
                    wait.failure().is_none()
                }
            }
        }
    }
}

/// The v5 reason code for a message a peer did not accept.
fn reason_for(why: NotForwarded) -> ReasonCode {
    if why.is_quota() {
        ReasonCode::QUOTA_EXCEEDED
    } else {
        ReasonCode::UNSPECIFIED_ERROR
    }
}

/// Chooses one member of a shared subscription: starting at `start`, the first connected member
/// with room in its window, else the first connected one, else the one at `start` (its queue
/// keeps the message until it returns or its session ends and the message is redistributed).
fn pick_member(
    members: &[(SessionRef, Subscription)],
    start: usize,
) -> (&SessionRef, &Subscription) {
    let n = members.len();
    let mut connected = None;
    for i in 0..n {
        let (m, sub) = &members[(start + i) % n];
        let (ended, window, is_connected) = m.availability();
        if ended {
            continue;
        }
        if window {
            return (m, sub);
        }
        if connected.is_none() && is_connected {
            connected = Some((m, sub));
        }
    }
    connected.unwrap_or_else(|| {
        let (m, sub) = &members[start % n];
        (m, sub)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A counter the test can read.
    #[derive(Default)]
    struct Count(AtomicU64);

    impl metrics::CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    fn wait_on_one(
        count: &Arc<Count>,
        tasks: &TaskTracker,
    ) -> (oneshot::Sender<Result<(), NotForwarded>>, PeerWait) {
        let (tx, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let counter = metrics::Counter::from_arc(Arc::clone(count));
        (
            tx,
            PeerWait::new(vec![rx], deadline, counter, tasks.clone()),
        )
    }

    #[test]
    fn a_wait_dropped_outside_a_runtime_is_given_up_and_counted_not_a_panic() {
        let count = Arc::new(Count::default());
        let (tx, wait) = wait_on_one(&count, &TaskTracker::new());
        drop(wait);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(tx.is_closed(), "nobody waits for the answer any more");
    }

    #[tokio::test]
    async fn a_wait_dropped_in_a_runtime_goes_on_until_the_answer() {
        let count = Arc::new(Count::default());
        let tasks = TaskTracker::new();
        let (tx, wait) = wait_on_one(&count, &tasks);
        drop(wait);
        tokio::task::yield_now().await;
        // The forwarder still sees somebody waiting, so it sends (and resends) the message.
        assert!(!tx.is_closed());
        tx.send(Ok(())).expect("the wait is still there");
        tasks.close();
        tokio::time::timeout(Duration::from_secs(10), tasks.wait())
            .await
            .expect("the wait ends once answered");
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            0,
            "answered, not timed out"
        );
    }
}
