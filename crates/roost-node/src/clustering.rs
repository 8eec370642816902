//! The node's side of the cluster (docs/rfcs/0002): what it tells the cluster layer and what
//! it does when the cluster tells it something.
//!
//! ```text
//!  SUBSCRIBE ─▶ Routes::acquire (first local subscriber of a filter?) ─▶ batcher ─▶ UpdateRoutes
//!  last UNSUBSCRIBE / session end ─▶ Routes::release ─────────────────▶ batcher ─▶ UpdateRoutes
//!  peer's Forward stream ─▶ NodeHooks::deliver ─▶ Broker::deliver_forwarded (local sessions only)
//!  peer's TakeSession ─▶ NodeHooks::take_session ─▶ Broker::hand_over
//!  applied SessionClaimed for another node ─▶ NodeHooks::on_event ─▶ close that client here (0x8E)
//! ```
//!
//! The batcher turns every route change queued while the previous proposal was in flight into
//! one `UpdateRoutes` entry, so a burst of SUBSCRIBEs costs one Raft round trip, not one each.

use crate::broker::Broker;
use parking_lot::Mutex;
use roost_cluster::cluster::BoxFuture;
use roost_cluster::state::Event;
use roost_cluster::types::Command;
use roost_cluster::{Cluster, LocalNode, SessionTransfer};
use roost_core::message::Message;
use roost_core::topic::TopicFilter;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use tokio::sync::{oneshot, Notify};
use tracing::warn;

/// The cluster layer's handle on the node. Weak: the cluster must not keep the broker alive.
pub(crate) struct NodeHooks {
    pub(crate) broker: Weak<Broker>,
}

impl LocalNode for NodeHooks {
    fn deliver(&self, msg: Arc<Message>, direct: bool, shared_filters: &[String]) {
        if let Some(b) = self.broker.upgrade() {
            b.deliver_forwarded(&msg, direct, shared_filters);
        }
    }

    fn take_session(
        &self,
        client_id: String,
        generation: u64,
    ) -> BoxFuture<Option<SessionTransfer>> {
        let broker = self.broker.clone();
        Box::pin(async move {
            let b = broker.upgrade()?;
            b.hand_over(&client_id, generation).await
        })
    }

    fn on_event(&self, event: &Event) {
        if let Some(b) = self.broker.upgrade() {
            b.on_cluster_event(event);
        }
    }
}

/// Result of waiting for a route to commit: the log index, or why it failed.
pub(crate) type RouteResult = Result<u64, String>;

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
pub(crate) struct Routes {
    inner: Mutex<RoutesInner>,
    wake: Notify,
}

impl Routes {
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

    /// Proposes queued route changes, one batch at a time, until the cluster stops.
    pub(crate) async fn run_batcher(self: Arc<Self>, cluster: Arc<Cluster>) {
        loop {
            let ops = loop {
                let notified = self.wake.notified();
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
                    warn!(error = %e, "route change not committed");
                    Err(e.to_string())
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
