//! The session lease (issue 7 item 7; docs/architecture.md, "Session lease"): a node serves
//! MQTT clients only while it has recently confirmed that it is part of the quorum, so a node
//! cut off from the majority stops serving its sessions before the majority lets another node
//! serve them.
//!
//! ```text
//!  renewer, every lease/8 (lease/32 while not held):
//!    t0 = now
//!    leader here ─▶ raft.ensure_linearizable()            (a heartbeat round to a quorum)
//!    leader there ─▶ Cluster.RenewLease ─▶ leader: ensure_linearizable ─▶ read index
//!                    then apply locally up to that index
//!    success ─▶ valid_until = max(valid_until, t0 + lease)
//!  watcher: held = lone voter || now < valid_until ─▶ watch<bool> (the node kicks on false)
//! ```
//!
//! Why it is safe. A claim C on a session owned by node N commits at time `tc`. A renewal N
//! started at `t0 >= tc` succeeds only through a leader that confirmed its leadership with a
//! quorum after `t0` (a deposed leader's heartbeat round fails), whose read index therefore
//! covers C, and N applies up to it before it counts the renewal: N then knows C and has closed
//! its copy. A renewal started before `tc` ends by `tc + lease`. So after `tc + lease` (on N's
//! clock) N serves no session it lost. The claimant, which sees C applied at or after `tc`,
//! waits [`Lease::takeover_wait`] (the lease plus an eighth for clock rates and N's reaction)
//! before it serves a session whose previous owner did not hand it over.
//!
//! A lone voter holds the lease always: no other node can commit a claim without it.
//!
//! Concurrency: two tasks per node (spawned by `Cluster::start`, ended by its `stop` watch):
//! the renewer and the watcher. `valid_until` is a leaf lock; nothing awaits while holding it.

use super::Cluster;
use crate::types::{NodeId, TypeConfig};
use openraft::Raft;
use parking_lot::Mutex;
use roost_proto::v1 as pb;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tonic::Request;
use tracing::{debug, info, warn};

/// While waiting for the lease, how often [`Lease::wait_held`] looks again besides the
/// watcher's notifications.
const HELD_POLL: Duration = Duration::from_millis(50);

/// This node's session lease. See the module docs.
pub(crate) struct Lease {
    me: NodeId,
    raft: Raft<TypeConfig>,
    /// `cluster.session_lease_ms`.
    lease: Duration,
    /// Until when the last renewal holds (`None`: never renewed).
    valid_until: Mutex<Option<Instant>>,
    /// Wakes the watcher after a renewal.
    renewed: Notify,
    /// Whether the lease is held, as the watcher last saw it.
    held: watch::Sender<bool>,
    /// `roost_cluster_session_lease_held` and `roost_cluster_session_lease_lost_total`.
    gauge: metrics::Gauge,
    lost: metrics::Counter,
}

impl Lease {
    pub(crate) fn new(me: NodeId, raft: Raft<TypeConfig>, lease: Duration) -> Lease {
        Lease {
            me,
            raft,
            lease,
            valid_until: Mutex::new(None),
            renewed: Notify::new(),
            held: watch::channel(false).0,
            gauge: metrics::gauge!(crate::metrics::LEASE_HELD),
            lost: metrics::counter!(crate::metrics::LEASE_LOST),
        }
    }

    /// The lease's length (`cluster.session_lease_ms`).
    pub(crate) fn duration(&self) -> Duration {
        self.lease
    }

    /// How long a node that claimed a session must wait, after its claim applied, before it
    /// serves the session when the previous owner did not hand it over: the lease, plus an
    /// eighth of it for clock rates and for the owner closing its connections.
    pub(crate) fn takeover_wait(&self) -> Duration {
        self.lease + self.lease / 8
    }

    /// True while this node may serve MQTT clients: a lone voter always; otherwise until the
    /// lease from the last renewal runs out.
    pub(crate) fn holds(&self) -> bool {
        // The renewal first: a lock and a clock read, on every forwarded batch and CONNECT;
        // the membership (a lone voter renews too, so this is rarely reached) second.
        self.valid_until.lock().is_some_and(|u| Instant::now() < u) || self.lone()
    }

    /// Returns once the lease is held (never, if the node stops renewing: callers bound it).
    pub(crate) async fn wait_held(&self) {
        // The watcher's notifications may lag the exact check (`holds`) by up to a poll. The
        // sender lives in `self`, so `changed` never fails here.
        let mut changes = self.held.subscribe();
        while !self.holds() {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(HELD_POLL) => {}
            }
        }
    }

    /// Changes of [`holds`](Self::holds), as the watcher sees them.
    pub(crate) fn changes(&self) -> watch::Receiver<bool> {
        self.held.subscribe()
    }

    /// This node is the only voter: nothing commits without it.
    fn lone(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let mut voters = m.membership_config.membership().voter_ids();
        voters.next() == Some(self.me) && voters.next().is_none()
    }

    /// How often the renewer asks while the lease is held: eight times a lease, so that a few
    /// slow or lost rounds in a row do not let it run out.
    fn every(&self) -> Duration {
        (self.lease / 8).max(Duration::from_millis(10))
    }

    /// Renews the lease until `stop`, every [`every`](Self::every); four times as often while
    /// it is not held (after a start, a pause or a partition: the node serves again as soon as
    /// a quorum answers).
    pub(crate) async fn renew(
        self: std::sync::Arc<Self>,
        cluster: Weak<Cluster>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            if *stop.borrow() {
                return;
            }
            let attempt = tokio::time::timeout(self.lease / 2, self.renew_once(&cluster));
            let outcome = tokio::select! {
                r = attempt => r,
                _ = stop.changed() => return,
            };
            match outcome {
                Ok(Ok(t0)) => {
                    let until = t0 + self.lease;
                    let mut v = self.valid_until.lock();
                    if v.is_none_or(|old| old < until) {
                        *v = Some(until);
                    }
                    drop(v);
                    self.renewed.notify_one();
                }
                Ok(Err(e)) => debug!(error = %e, "session lease not renewed"),
                Err(_) => debug!(limit = ?self.lease / 2, "session lease renewal timed out"),
            }
            let pause = if self.holds() {
                self.every()
            } else {
                self.every() / 4
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One renewal: returns the moment it started, from which the lease runs.
    async fn renew_once(&self, cluster: &Weak<Cluster>) -> Result<Instant, String> {
        let t0 = Instant::now();
        let leader = self.raft.metrics().borrow().current_leader;
        let Some(leader) = leader else {
            return Err("no leader known".into());
        };
        if leader == self.me {
            // Confirms the leadership with a quorum and waits until the read index is applied.
            self.raft
                .ensure_linearizable()
                .await
                .map_err(|e| e.to_string())?;
            return Ok(t0);
        }
        let mut client = {
            let c = cluster.upgrade().ok_or("shutting down")?;
            let peer = c.peer(leader).ok_or("the leader is not a member")?;
            peer.client.clone()
        };
        let reply = client
            .renew_lease(Request::new(pb::LeaseRequest {
                node_id: self.me.get(),
            }))
            .await
            .map_err(|s| format!("leader {leader}: {}", s.message()))?
            .into_inner();
        // Bounded by the caller's timeout.
        self.raft
            .wait(None)
            .applied_index_at_least(Some(reply.read_index), "session lease")
            .await
            .map_err(|e| e.to_string())?;
        Ok(t0)
    }

    /// Publishes whether the lease is held, waking at its end and after each renewal, until
    /// `stop`. On `stop` it publishes nothing more: a node that shuts down closes its clients
    /// itself.
    pub(crate) async fn watch(self: std::sync::Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let until = *self.valid_until.lock();
            let held = self.holds();
            let was = *self.held.borrow();
            if held != was {
                if held {
                    info!("session lease held: serving clients");
                } else {
                    warn!(
                        lease = ?self.lease,
                        "session lease lost: no quorum confirmed this node within the lease; \
                         its clients are disconnected and CONNECTs refused until one does"
                    );
                    self.lost.increment(1);
                }
                self.gauge.set(if held { 1.0 } else { 0.0 });
                self.held.send_replace(held);
            }
            // Wake at the lease's end, or look again after a while (membership changes make a
            // lone voter, or end one).
            let next = match until {
                Some(u) if held && u > Instant::now() => u.min(Instant::now() + self.every()),
                _ => Instant::now() + self.every() / 4,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.renewed.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The leader's side of `Cluster.RenewLease`: the requester must be a member, and this node
/// must still lead (confirmed with a quorum). Answers the read index.
pub(super) async fn answer(
    raft: &Raft<TypeConfig>,
    requester: NodeId,
) -> Result<u64, tonic::Status> {
    let member = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&requester)
        .is_some();
    if !member {
        warn!(node = %requester, "session lease asked by a node that is not a member");
        return Err(tonic::Status::permission_denied("not a member"));
    }
    match raft.ensure_linearizable().await {
        Ok(read) => Ok(read.map_or(0, |l| l.index)),
        Err(e) => Err(tonic::Status::failed_precondition(e.to_string())),
    }
}
