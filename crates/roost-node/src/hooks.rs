//! The cluster layer's handle on the node ([`LocalNode`]): forwarded messages, session
//! hand-over requests and applied events go from the cluster to the broker through here.
//!
//! ```text
//!  peer's Forward stream ─▶ NodeHooks::deliver ─▶ Broker::deliver_from_peer (local sessions only)
//!                       ◀── wait for space ──── congested local subscribers (backpressure)
//!  peer's TakeSession ─▶ NodeHooks::take_session ─▶ Broker::hand_over
//!  applied SessionClaimed for another node ─▶ NodeHooks::on_event ─▶ Broker::on_cluster_event
//! ```
//!
//! The cluster starts before the broker exists (the broker is built on the running cluster), so
//! the hooks hold the broker in a `OnceLock`, set right after it is built. What arrives before
//! that finds no session to serve: a forwarded message is counted as dropped (`not_started`),
//! a TakeSession gets nothing (the new owner restores the subscriptions from the registry),
//! an event is ignored (no local session can be fenced). The link is weak: the cluster must not
//! keep the broker alive.

use crate::broker::Broker;
use roost_cluster::cluster::BoxFuture;
use roost_cluster::state::Event;
use roost_cluster::{LocalNode, SessionTransfer};
use roost_core::message::Message;
use roost_core::topic::TopicFilter;
use roost_core::ClientId;
use std::sync::{Arc, OnceLock, Weak};

#[derive(Default)]
pub(crate) struct NodeHooks {
    broker: OnceLock<Weak<Broker>>,
}

impl NodeHooks {
    /// Connects the hooks to the broker (once, at start).
    pub(crate) fn set_broker(&self, broker: &Arc<Broker>) {
        let _ = self.broker.set(Arc::downgrade(broker));
    }

    fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.get().and_then(Weak::upgrade)
    }
}

impl LocalNode for NodeHooks {
    fn deliver(
        &self,
        msg: Arc<Message>,
        direct: bool,
        shared: &[TopicFilter],
    ) -> Option<BoxFuture<()>> {
        let Some(b) = self.broker() else {
            crate::metrics::forward_dropped_not_started();
            return None;
        };
        let congested = b.deliver_from_peer(&msg, direct, shared);
        if congested.is_empty() {
            return None;
        }
        Some(Box::pin(async move { b.wait_for_space(&congested).await }))
    }

    fn take_session(
        &self,
        client_id: ClientId,
        generation: u64,
    ) -> BoxFuture<Option<SessionTransfer>> {
        let broker = self.broker();
        Box::pin(async move { broker?.hand_over(&client_id, generation).await })
    }

    fn on_event(&self, event: &Event) {
        if let Some(b) = self.broker() {
            b.on_cluster_event(event);
        }
    }
}
