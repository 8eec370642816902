//! The route table: this node's local subscriber count per filter (the routes it *wants*),
//! and the reconciler that makes the replicated route table (the routes it *has*, committed
//! through Raft, docs/rfcs/0002) agree with it.
//!
//! ```text
//!  SUBSCRIBE ─▶ RouteTable::acquire (first local subscriber of a filter?) ─┐  adds
//!  last UNSUBSCRIBE / session end ─▶ RouteTable::release ──────────────────┤  removes
//!  restart, election, every REPAIR_INTERVAL ─▶ repair: diff against the    │
//!                                    replicated routes of this node ───────┘
//!                                                 │
//!                                                 ▼
//!                          reconciler ─▶ one UpdateRoutes { add, remove } at a time
//!                                 ok: adds committed (their SUBACKs go out), removes done
//!                                 failed: waiting SUBACKs hear it; everything stays pending
//!                                         and is proposed again after a backoff (at once
//!                                         when a new SUBSCRIBE waits for an add)
//! ```
//!
//! Desired and committed are kept apart: a change leaves the pending sets only when a proposal
//! carrying it committed, so a route change that failed (no leader, commit timeout) is retried
//! until it commits instead of being forgotten (issue 7 item 6: a subscriber restored or taken
//! over whose route add failed missed every message published elsewhere, and a removal that
//! failed left peers forwarding for nothing). Proposals are idempotent (adding a route this
//! node has, or removing one it lacks, changes nothing), so retrying one that in fact committed
//! late is harmless. What can drift without a failed proposal (a timeout that committed after
//! all, `ForgetNode`, a snapshot installed, routes left from before a restart) is found by a
//! repair: the replicated routes of this node compared with the local filters, after the
//! node starts, after every election and every [`REPAIR_INTERVAL`].
//!
//! The changes queued while a proposal is in flight go into the next one, so a burst of
//! SUBSCRIBEs costs one Raft round trip, not one each. Nothing here knows the broker; the
//! cluster is reached through [`RouteCluster`] (a seam for the tests below).
//!
//! Locks: the table's mutex is held for one counter or set change, never while the cluster's
//! state lock is taken (the repair reads the replicated routes first, then takes it).

use parking_lot::Mutex;
use roost_cluster::types::{Command, NodeId};
use roost_cluster::{Cluster, ClusterError};
use roost_core::topic::TopicFilter;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Result of waiting for a route to commit: the log index, or why it failed (shared by every
/// subscriber that waited for the same proposal).
pub(crate) type RouteResult = Result<u64, Arc<ClusterError>>;

/// First wait before proposing again after a failed proposal; doubled per failure.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two tries (each try itself waits up to `cluster.commit_timeout_ms`).
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the replicated routes of this node are compared with the local filters even
/// when nothing failed and no election happened.
pub(crate) const REPAIR_INTERVAL: Duration = Duration::from_secs(30);
/// How often the reconciler looks for an election (a new term or leader).
const LEADERSHIP_POLL: Duration = Duration::from_secs(1);

/// What the route table needs from the cluster.
pub(crate) trait RouteCluster: Send + Sync + 'static {
    /// Commits one route change of this node; `Ok(index)` once this node applied it and the
    /// reachable members did (bounded), so a publish anywhere after it sees the route.
    fn update_routes(
        &self,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> impl Future<Output = Result<u64, ClusterError>> + Send;

    /// The filters the replicated route table holds for this node.
    fn committed_routes(&self) -> HashSet<String>;

    /// The Raft term and leader as this node knows them (a change triggers a repair).
    fn leadership(&self) -> (u64, Option<NodeId>);
}

impl RouteCluster for Cluster {
    async fn update_routes(
        &self,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<u64, ClusterError> {
        let cmd = Command::UpdateRoutes {
            node: self.node_id(),
            add,
            remove,
        };
        let (index, _) = self.propose(cmd).await?;
        self.wait_replicated(index).await;
        Ok(index)
    }

    fn committed_routes(&self) -> HashSet<String> {
        let me = self.node_id();
        // O(1) under the lock (a persistent map), scanned after releasing it.
        let routes = self.state().read().snapshot().routes.clone();
        routes
            .iter()
            .filter(|(_, nodes)| nodes.contains(&me))
            .map(|(f, _)| f.clone())
            .collect()
    }

    fn leadership(&self) -> (u64, Option<NodeId>) {
        Cluster::leadership(self)
    }
}

/// One filter with local subscribers.
#[derive(Default)]
struct FilterRoute {
    /// Local subscriptions to it.
    count: usize,
    /// The route is committed (and was applied by the reachable members).
    committed: bool,
    /// Subscribers waiting for the add (every one, not only the first: a second subscriber
    /// arriving while the first's route is in flight must not get its SUBACK earlier).
    /// Boxed and only while someone waits: the entry sits in every bucket of `filters`, one
    /// per filter with a local subscriber, and a `Vec` inline is 24 bytes (issue 10).
    #[allow(clippy::box_collection)]
    waiters: Option<Box<Vec<oneshot::Sender<RouteResult>>>>,
}

#[derive(Default)]
struct RoutesInner {
    /// The routes this node wants: every filter with a local subscriber.
    filters: HashMap<TopicFilter, FilterRoute>,
    /// Wanted and not known to be committed: to add. Disjoint from `removes`.
    adds: BTreeSet<TopicFilter>,
    /// Not wanted and possibly in the replicated table: to remove.
    removes: BTreeSet<String>,
    /// A repair was asked for (start-up, election, interval).
    repair: bool,
    /// A SUBSCRIBE waits for an add: propose now, not after the backoff (its SUBACK waits
    /// one commit timeout; a partition that healed during a backoff must not refuse it).
    urgent: bool,
    /// Repairs may run: set once the node restored its sessions, so the first repair does
    /// not remove the routes of sessions not indexed yet.
    repairs_enabled: bool,
}

/// This node's local subscriber counts per filter, and the route changes not committed yet.
#[derive(Default)]
pub(crate) struct RouteTable {
    inner: Mutex<RoutesInner>,
    wake: Notify,
    stopped: AtomicBool,
}

impl RouteTable {
    /// A local session subscribed to `filter`. Returns a receiver while the node's route for it
    /// is not committed yet (the SUBACK waits for it); `None` once it is. A caller that drops
    /// the receiver (a restored or taken-over session, already told its subscriptions stand)
    /// still gets the route: it stays pending until a proposal commits it.
    pub(crate) fn acquire(&self, filter: &TopicFilter) -> Option<oneshot::Receiver<RouteResult>> {
        let mut g = self.inner.lock();
        let RoutesInner {
            filters,
            adds,
            removes,
            ..
        } = &mut *g;
        let route = filters.entry(filter.clone()).or_default();
        route.count += 1;
        if route.committed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        route.waiters.get_or_insert_with(Box::default).push(tx);
        removes.remove(filter.as_str());
        adds.insert(filter.clone());
        g.urgent = true;
        drop(g);
        self.wake.notify_one();
        Some(rx)
    }

    /// A local session no longer subscribes to `filter`.
    pub(crate) fn release(&self, filter: &TopicFilter) {
        let mut g = self.inner.lock();
        let RoutesInner {
            filters,
            adds,
            removes,
            ..
        } = &mut *g;
        let Some(route) = filters.get_mut(filter) else {
            return;
        };
        route.count -= 1;
        if route.count > 0 {
            return;
        }
        filters.remove(filter);
        adds.remove(filter);
        removes.insert(filter.as_str().to_owned());
        drop(g);
        self.wake.notify_one();
    }

    /// Compares the replicated routes of this node with the local filters now and from then
    /// on (after every election and every [`REPAIR_INTERVAL`]). Called once the node restored
    /// its persistent sessions, before clients connect: routes held from before a restart
    /// that nothing subscribes to any more are removed, missing ones added.
    pub(crate) fn start_repairs(&self) {
        let mut g = self.inner.lock();
        g.repairs_enabled = true;
        g.repair = true;
        drop(g);
        self.wake.notify_one();
    }

    /// Route changes wanted and not committed yet: adds plus removes (the
    /// `roost_cluster_routes_pending` gauge).
    pub(crate) fn pending(&self) -> usize {
        let g = self.inner.lock();
        g.adds.len() + g.removes.len()
    }

    /// Ends the reconciler (shutdown): changes still pending are not proposed (the next start
    /// of the node repairs them).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Proposes pending route changes, one proposal at a time, until [`RouteTable::stop`]:
    /// retries failed ones with a backoff, repairs when asked to, after an election and
    /// every [`REPAIR_INTERVAL`].
    pub(crate) async fn run_reconciler<C: RouteCluster>(self: Arc<Self>, cluster: Arc<C>) {
        let mut backoff = RETRY_MIN;
        // After a failure: no proposal before this.
        let mut retry_at: Option<Instant> = None;
        let mut next_repair = Instant::now() + REPAIR_INTERVAL;
        let mut leadership = cluster.leadership();
        // Failures in a row (logged at WARN on the first, DEBUG after).
        let mut failures = 0u32;
        loop {
            let notified = self.wake.notified();
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            let seen = cluster.leadership();
            if seen != leadership {
                leadership = seen;
                self.inner.lock().repair = true;
                // An election may unblock what failed: try again now.
                retry_at = None;
                backoff = RETRY_MIN;
            }
            if now >= next_repair {
                next_repair = now + REPAIR_INTERVAL;
                self.inner.lock().repair = true;
            }
            if std::mem::take(&mut self.inner.lock().urgent) {
                // Someone waits for an add: try now (the backoff itself stays, for the
                // retries nobody waits for).
                retry_at = None;
            }
            if let Some(at) = retry_at.filter(|at| now < *at) {
                Self::sleep_or_wake(notified, at.min(now + LEADERSHIP_POLL)).await;
                continue;
            }
            retry_at = None;
            if self.take_repair() {
                // A scan of the whole replicated route table: on the blocking pool.
                let (table, c) = (Arc::clone(&self), Arc::clone(&cluster));
                if let Err(e) =
                    tokio::task::spawn_blocking(move || table.repair(c.committed_routes())).await
                {
                    warn!(error = %e, "route repair did not run; trying again at the next one");
                }
            }
            let Some((add, remove)) = self.next_batch() else {
                Self::sleep_or_wake(notified, (now + LEADERSHIP_POLL).min(next_repair)).await;
                continue;
            };
            let add_names: Vec<String> = add.iter().map(|f| f.as_str().to_owned()).collect();
            let result = cluster.update_routes(add_names, remove.to_vec()).await;
            match &result {
                Ok(_) => {
                    if failures > 0 {
                        info!(failures, "route changes committed again");
                    }
                    failures = 0;
                    backoff = RETRY_MIN;
                }
                Err(e) => {
                    failures += 1;
                    if e.is_fatal() && failures == 1 {
                        error!(error = %e, "route change not committed: this node's raft stopped");
                    } else if failures == 1 {
                        warn!(error = %e, adds = add.len(), removes = remove.len(), "route change not committed; retrying");
                    } else {
                        debug!(error = %e, failures, "route change not committed; retrying");
                    }
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
            self.settle(&add, &remove, result.map_err(Arc::new));
        }
    }

    /// Sleeps until `at` or a wake-up, whichever comes first.
    async fn sleep_or_wake(notified: tokio::sync::futures::Notified<'_>, at: Instant) {
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(at) => {}
        }
    }

    fn take_repair(&self) -> bool {
        let mut g = self.inner.lock();
        let due = g.repair && g.repairs_enabled;
        if due {
            g.repair = false;
        }
        due
    }

    /// The changes to propose next, or `None` when there are none.
    fn next_batch(&self) -> Option<(Vec<TopicFilter>, Vec<String>)> {
        let g = self.inner.lock();
        if g.adds.is_empty() && g.removes.is_empty() {
            return None;
        }
        Some((
            g.adds.iter().cloned().collect(),
            g.removes.iter().cloned().collect(),
        ))
    }

    /// Records what a proposal of `add` and `remove` did. Only the reconciler proposes route
    /// changes of this node, so on success the replicated table holds every route of `add` and
    /// none of `remove`, whatever changed here meanwhile.
    fn settle(&self, add: &[TopicFilter], remove: &[String], result: RouteResult) {
        let mut g = self.inner.lock();
        let RoutesInner {
            filters,
            adds,
            removes,
            ..
        } = &mut *g;
        for f in add {
            // Released meanwhile: its removal is pending and comes next.
            let Some(route) = filters.get_mut(f) else {
                continue;
            };
            if result.is_ok() {
                route.committed = true;
                adds.remove(f);
            }
            // A failure is told to the SUBSCRIBEs waiting (SUBACK 0x80, the subscription is
            // undone); the add stays pending for the subscribers that stay.
            for tx in route.waiters.take().into_iter().flat_map(|w| *w) {
                let _ = tx.send(result.clone());
            }
        }
        if result.is_ok() {
            // A filter subscribed again meanwhile left `removes` then (its add is pending);
            // one still there is not wanted, and the table no longer holds it.
            for f in remove {
                removes.remove(f);
            }
        }
    }

    /// Makes the pending sets the difference between `committed` (the replicated routes of
    /// this node) and the local filters.
    fn repair(&self, committed: HashSet<String>) {
        let mut g = self.inner.lock();
        let RoutesInner {
            filters,
            adds,
            removes,
            ..
        } = &mut *g;
        let mut added = 0usize;
        for (f, route) in filters.iter_mut() {
            let present = committed.contains(f.as_str());
            if !present && route.committed {
                route.committed = false;
                adds.insert(f.clone());
                added += 1;
            } else if present && !route.committed && route.waiters.is_none() {
                // It committed after all (a late commit, or held from before a restart).
                route.committed = true;
                adds.remove(f);
            }
        }
        removes.retain(|f| committed.contains(f));
        let before = removes.len();
        let wanted: HashSet<&str> = filters.keys().map(TopicFilter::as_str).collect();
        for f in committed {
            if !wanted.contains(f.as_str()) {
                removes.insert(f);
            }
        }
        let stale = removes.len() - before;
        if added > 0 || stale > 0 {
            info!(
                missing = added,
                stale,
                "route repair: the replicated routes of this node differ from its subscriptions"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use roost_cluster::Refusal;
    use roost_core::topic::TopicLimits;
    use std::sync::atomic::{AtomicU64, AtomicUsize};

    /// A cluster whose route table is a set, and whose next `fail` proposals fail (after the
    /// commit timeout) without committing.
    #[derive(Default)]
    struct FakeCluster {
        table: Mutex<BTreeSet<String>>,
        fail: AtomicUsize,
        proposals: Mutex<Vec<(Vec<String>, Vec<String>)>>,
        term: AtomicU64,
    }

    impl RouteCluster for FakeCluster {
        async fn update_routes(
            &self,
            add: Vec<String>,
            remove: Vec<String>,
        ) -> Result<u64, ClusterError> {
            let n = {
                let mut p = self.proposals.lock();
                p.push((add.clone(), remove.clone()));
                p.len() as u64
            };
            let commit_timeout = Duration::from_millis(500);
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                .is_ok()
            {
                tokio::time::sleep(commit_timeout).await;
                return Err(ClusterError::Refused(Refusal::Timeout(commit_timeout)));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut t = self.table.lock();
            t.extend(add);
            for r in remove {
                t.remove(&r);
            }
            Ok(n)
        }

        fn committed_routes(&self) -> HashSet<String> {
            self.table.lock().iter().cloned().collect()
        }

        fn leadership(&self) -> (u64, Option<NodeId>) {
            (self.term.load(Ordering::SeqCst), Some(NodeId::new(1)))
        }
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s, &TopicLimits::default()).unwrap()
    }

    fn table(c: &FakeCluster) -> Vec<String> {
        c.table.lock().iter().cloned().collect()
    }

    fn start(fake: FakeCluster) -> (Arc<RouteTable>, Arc<FakeCluster>) {
        let routes = Arc::new(RouteTable::default());
        let fake = Arc::new(fake);
        tokio::spawn(Arc::clone(&routes).run_reconciler(Arc::clone(&fake)));
        (routes, fake)
    }

    /// Waits (virtual time) until `done`, at most ten minutes of it.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        for _ in 0..6_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never happened: {what}");
    }

    /// A SUBSCRIBE waiting for its route is proposed for at once, even while the reconciler
    /// backs off after failures: after a partition healed, the first SUBSCRIBE of a new filter
    /// waited out a backoff of seconds and heard 0x80 (its SUBACK waits one commit timeout).
    #[tokio::test(start_paused = true)]
    async fn item7_a_waiting_subscriber_does_not_wait_out_the_backoff() {
        let (routes, fake) = start(FakeCluster {
            fail: AtomicUsize::new(6),
            ..FakeCluster::default()
        });
        drop(routes.acquire(&f("a/+")));
        eventually("six failed proposals", || fake.proposals.lock().len() == 6).await;
        // The sixth fails after the (fake) commit timeout; the next try is 3.2 s later.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let rx = routes.acquire(&f("b")).unwrap();
        let heard = tokio::time::timeout(Duration::from_millis(600), rx)
            .await
            .expect("the subscriber waited for the backoff");
        assert!(heard.unwrap().is_ok());
        assert_eq!(table(&fake), ["a/+", "b"]);
    }

    /// A restored or taken-over session (its caller dropped the receiver: the client was
    /// already told its subscriptions stand) whose route add fails gets the route once a
    /// proposal commits, with no further subscribe.
    #[tokio::test(start_paused = true)]
    async fn item6_failed_add_is_retried_until_committed() {
        let (routes, fake) = start(FakeCluster {
            fail: AtomicUsize::new(3),
            ..FakeCluster::default()
        });
        drop(routes.acquire(&f("a/+")));
        assert_eq!(routes.pending(), 1);
        eventually("route a/+ committed", || table(&fake) == ["a/+"]).await;
        assert_eq!(routes.pending(), 0);
        let proposals = fake.proposals.lock().clone();
        assert_eq!(proposals.len(), 4, "three failed tries, one that committed");
        for (add, remove) in proposals {
            assert_eq!((add, remove), (vec!["a/+".to_owned()], vec![]));
        }
        // Committed: a second subscriber does not wait.
        assert!(routes.acquire(&f("a/+")).is_none());
    }

    /// The SUBSCRIBE contract is kept: the subscriber waiting for a route that failed hears
    /// it (SUBACK 0x80); its undo then leaves nothing in the table and nothing pending.
    #[tokio::test(start_paused = true)]
    async fn item6_waiting_subscriber_hears_the_failure() {
        let (routes, fake) = start(FakeCluster {
            fail: AtomicUsize::new(1),
            ..FakeCluster::default()
        });
        let rx = routes.acquire(&f("s")).unwrap();
        let heard = rx.await.unwrap();
        let err = heard.unwrap_err();
        assert!(
            matches!(*err, ClusterError::Refused(Refusal::Timeout(_))),
            "{err:?}"
        );
        routes.release(&f("s"));
        eventually("nothing pending", || routes.pending() == 0).await;
        assert!(table(&fake).is_empty());
    }

    /// A removal that failed (the last subscriber left during an outage) is retried, so
    /// peers stop forwarding the filter's messages here.
    #[tokio::test(start_paused = true)]
    async fn item6_failed_removal_is_retried() {
        let (routes, fake) = start(FakeCluster::default());
        let rx = routes.acquire(&f("r/#")).unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 1);
        assert_eq!(table(&fake), ["r/#"]);
        fake.fail.store(2, Ordering::SeqCst);
        routes.release(&f("r/#"));
        eventually("route r/# removed", || table(&fake).is_empty()).await;
        assert_eq!(routes.pending(), 0);
        let proposals = fake.proposals.lock().clone();
        assert_eq!(
            proposals[1..],
            vec![(vec![], vec!["r/#".to_owned()]); 3],
            "two failed removals, one that committed"
        );
    }

    /// A route the replicated table lost (`ForgetNode`, a commit that was reported failed
    /// but undone by an election...) is added again after the next election.
    #[tokio::test(start_paused = true)]
    async fn item6_repair_after_an_election_restores_a_lost_route() {
        let (routes, fake) = start(FakeCluster::default());
        routes.start_repairs();
        routes.acquire(&f("x")).unwrap().await.unwrap().unwrap();
        fake.table.lock().clear();
        fake.term.fetch_add(1, Ordering::SeqCst);
        eventually("route x restored", || table(&fake) == ["x"]).await;
        assert_eq!(routes.pending(), 0);
    }

    /// Without an election, the periodic repair finds it too.
    #[tokio::test(start_paused = true)]
    async fn item6_periodic_repair_restores_a_lost_route() {
        let (routes, fake) = start(FakeCluster::default());
        routes.start_repairs();
        routes.acquire(&f("x")).unwrap().await.unwrap().unwrap();
        fake.table.lock().clear();
        let lost = tokio::time::Instant::now();
        eventually("route x restored", || table(&fake) == ["x"]).await;
        assert!(lost.elapsed() <= REPAIR_INTERVAL + LEADERSHIP_POLL);
    }

    /// After a restart: routes held from before that no restored session needs are removed,
    /// the ones restored sessions need are kept (and not proposed again).
    #[tokio::test(start_paused = true)]
    async fn item6_start_removes_routes_held_from_before_a_restart() {
        let fake = FakeCluster::default();
        fake.table
            .lock()
            .extend(["old".to_owned(), "kept".to_owned()]);
        let (routes, fake) = start(fake);
        // The node restores its sessions (fire and forget), then starts repairs.
        drop(routes.acquire(&f("kept")));
        routes.start_repairs();
        eventually("stale route removed", || table(&fake) == ["kept"]).await;
        eventually("nothing pending", || routes.pending() == 0).await;
        let proposals = fake.proposals.lock().clone();
        assert!(
            proposals
                .iter()
                .all(|(_, remove)| !remove.contains(&"kept".to_owned())),
            "{proposals:?}"
        );
    }

    /// Repairs wait for the node's sessions: before `start_repairs` nothing held from before
    /// is removed.
    #[tokio::test(start_paused = true)]
    async fn no_repair_before_the_node_restored_its_sessions() {
        let fake = FakeCluster::default();
        fake.table.lock().insert("restored/later".to_owned());
        let (routes, fake) = start(fake);
        tokio::time::sleep(REPAIR_INTERVAL * 3).await;
        assert_eq!(table(&fake), ["restored/later"]);
        assert!(fake.proposals.lock().is_empty());
        assert_eq!(routes.pending(), 0);
    }
}
