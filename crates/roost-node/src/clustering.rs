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
    add: bool,
    done: Option<oneshot::Sender<RouteResult>>,
}

/// This node's local subscriber counts per filter, and the queue of route changes to propose.
#[derive(Default)]
pub(crate) struct Routes {
    /// Filter → number of local sessions subscribed to it. A change from 0 to 1 or 1 to 0 is a
    /// route change; the queue is appended under the same lock, so changes to one filter are
    /// proposed in the order they happened.
    counts: Mutex<(HashMap<TopicFilter, usize>, Vec<RouteOp>)>,
    wake: Notify,
}

impl Routes {
    /// A local session subscribed to `filter`. Returns a receiver when this is the node's first
    /// subscriber for it (the SUBACK waits for the route to commit).
    pub(crate) fn acquire(&self, filter: &TopicFilter) -> Option<oneshot::Receiver<RouteResult>> {
        let mut g = self.counts.lock();
        let (counts, queue) = &mut *g;
        let n = counts.entry(filter.clone()).or_insert(0);
        *n += 1;
        if *n != 1 {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        queue.push(RouteOp {
            filter: filter.as_str().to_owned(),
            add: true,
            done: Some(tx),
        });
        drop(g);
        self.wake.notify_one();
        Some(rx)
    }

    /// A local session no longer subscribes to `filter`.
    pub(crate) fn release(&self, filter: &TopicFilter) {
        let mut g = self.counts.lock();
        let (counts, queue) = &mut *g;
        let Some(n) = counts.get_mut(filter) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        counts.remove(filter);
        queue.push(RouteOp {
            filter: filter.as_str().to_owned(),
            add: false,
            done: None,
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
        let mut g = self.counts.lock();
        for filter in filters {
            g.1.push(RouteOp {
                filter,
                add: false,
                done: None,
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
                let ops = std::mem::take(&mut self.counts.lock().1);
                if !ops.is_empty() {
                    break ops;
                }
                notified.await;
            };
            // The last change per filter wins: add-then-remove proposes a remove, and the
            // other way round an add.
            let mut last: BTreeMap<String, bool> = BTreeMap::new();
            let mut waiters = Vec::new();
            for op in ops {
                last.insert(op.filter, op.add);
                if let Some(tx) = op.done {
                    waiters.push(tx);
                }
            }
            let (add, remove): (Vec<_>, Vec<_>) = last.into_iter().partition(|(_, a)| *a);
            let cmd = Command::UpdateRoutes {
                node: cluster.node_id(),
                add: add.into_iter().map(|(f, _)| f).collect(),
                remove: remove.into_iter().map(|(f, _)| f).collect(),
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
            for tx in waiters {
                let _ = tx.send(result.clone());
            }
        }
    }
}
