//! The route table: this node's local subscriber count per filter, and the batcher that
//! proposes changes to the replicated route table (docs/rfcs/0002).
//!
//! ```text
//!  SUBSCRIBE ─▶ RouteTable::acquire (first local subscriber of a filter?) ─▶ batcher ─▶ UpdateRoutes
//!  last UNSUBSCRIBE / session end ─▶ RouteTable::release ─────────────────▶ batcher ─▶ UpdateRoutes
//! ```
//!
//! The batcher turns every route change queued while the previous proposal was in flight into
//! one `UpdateRoutes` entry, so a burst of SUBSCRIBEs costs one Raft round trip, not one each.
//! It depends on the cluster only; the broker owns one table and nothing here knows the broker.

use parking_lot::Mutex;
use roost_cluster::types::Command;
use roost_cluster::{Cluster, ClusterError};
use roost_core::topic::TopicFilter;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};
use tracing::{error, warn};

/// Result of waiting for a route to commit: the log index, or why it failed (shared by every
/// subscriber that waited for the same proposal).
pub(crate) type RouteResult = Result<u64, Arc<ClusterError>>;

struct RouteOp {
    filter: String,
    /// Set for adds: the key of the filter's entry, to resolve its waiters.
    key: Option<TopicFilter>,
    add: bool,
}

/// One filter with local subscribers.
#[derive(Default)]
struct FilterRoute {
    /// Local subscriptions to it.
    count: usize,
    /// The route is committed (and was applied by the reachable members).
    committed: bool,
    /// An add is queued or being proposed.
    pending: bool,
    /// Subscribers waiting for that add (every one, not only the first: a second subscriber
    /// arriving while the first's route is in flight must not get its SUBACK earlier).
    waiters: Vec<oneshot::Sender<RouteResult>>,
}

#[derive(Default)]
struct RoutesInner {
    filters: HashMap<TopicFilter, FilterRoute>,
    /// Changes to propose, in the order they happened.
    queue: Vec<RouteOp>,
}

/// This node's local subscriber counts per filter, and the queue of route changes to propose.
#[derive(Default)]
pub(crate) struct RouteTable {
    inner: Mutex<RoutesInner>,
    wake: Notify,
    stopped: AtomicBool,
}

impl RouteTable {
    /// A local session subscribed to `filter`. Returns a receiver while the node's route for it
    /// is not committed yet (the SUBACK waits for it); `None` once it is.
    pub(crate) fn acquire(&self, filter: &TopicFilter) -> Option<oneshot::Receiver<RouteResult>> {
        let mut g = self.inner.lock();
        let RoutesInner { filters, queue } = &mut *g;
        let route = filters.entry(filter.clone()).or_default();
        route.count += 1;
        if route.committed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        route.waiters.push(tx);
        if !route.pending {
            route.pending = true;
            queue.push(RouteOp {
                filter: filter.as_str().to_owned(),
                key: Some(filter.clone()),
                add: true,
            });
            drop(g);
            self.wake.notify_one();
        }
        Some(rx)
    }

    /// A local session no longer subscribes to `filter`.
    pub(crate) fn release(&self, filter: &TopicFilter) {
        let mut g = self.inner.lock();
        let RoutesInner { filters, queue } = &mut *g;
        let Some(route) = filters.get_mut(filter) else {
            return;
        };
        route.count -= 1;
        if route.count > 0 {
            return;
        }
        filters.remove(filter);
        queue.push(RouteOp {
            filter: filter.as_str().to_owned(),
            key: None,
            add: false,
        });
        drop(g);
        self.wake.notify_one();
    }

    /// Queues the removal of routes this node held before it restarted (its sessions start
    /// empty, so nothing subscribes to them here any more). Called before clients connect, so
    /// any later subscription is queued after these and wins.
    pub(crate) fn forget_stale(&self, filters: Vec<String>) {
        if filters.is_empty() {
            return;
        }
        let mut g = self.inner.lock();
        for filter in filters {
            g.queue.push(RouteOp {
                filter,
                key: None,
                add: false,
            });
        }
        drop(g);
        self.wake.notify_one();
    }

    /// Ends the batcher (shutdown): changes still queued are not proposed (the next start of
    /// the node forgets its stale routes).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Proposes queued route changes, one batch at a time, until [`RouteTable::stop`].
    pub(crate) async fn run_batcher(self: Arc<Self>, cluster: Arc<Cluster>) {
        loop {
            let ops = loop {
                let notified = self.wake.notified();
                if self.stopped.load(Ordering::Acquire) {
                    return;
                }
                let ops = std::mem::take(&mut self.inner.lock().queue);
                if !ops.is_empty() {
                    break ops;
                }
                notified.await;
            };
            // The last change per filter wins: add-then-remove proposes a remove, and the
            // other way round an add.
            let mut last: BTreeMap<String, (bool, Option<TopicFilter>)> = BTreeMap::new();
            for op in ops {
                last.insert(op.filter, (op.add, op.key));
            }
            let mut add = Vec::new();
            let mut added = Vec::new();
            let mut remove = Vec::new();
            for (filter, (is_add, key)) in last {
                if is_add {
                    add.push(filter);
                    added.extend(key);
                } else {
                    remove.push(filter);
                }
            }
            let cmd = Command::UpdateRoutes {
                node: cluster.node_id(),
                add,
                remove,
            };
            let result = match cluster.propose(cmd).await {
                Ok((index, _)) => {
                    cluster.wait_replicated(index).await;
                    Ok(index)
                }
                Err(e) => {
                    if e.is_fatal() {
                        error!(error = %e, "route change not committed: this node's raft stopped");
                    } else {
                        warn!(error = %e, "route change not committed");
                    }
                    Err(Arc::new(e))
                }
            };
            let mut g = self.inner.lock();
            for key in added {
                let Some(route) = g.filters.get_mut(&key) else {
                    continue;
                };
                route.pending = false;
                route.committed = result.is_ok();
                for tx in route.waiters.drain(..) {
                    let _ = tx.send(result.clone());
                }
            }
        }
    }
}
