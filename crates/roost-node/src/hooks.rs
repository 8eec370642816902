//! The cluster layer's handle on the node ([`LocalNode`]): forwarded messages, session
//! hand-over requests and applied events go from the cluster to the broker through here.
//!
//! ```text
//!  peer's Forward stream ─▶ NodeHooks::deliver ─▶ Broker::deliver_from_peer (local sessions only)
//!                       ◀── wait for space ──── congested local subscribers (backpressure)
//!                       ◀── passed on ───────── sessions that moved on (docs/rfcs/0006)
//!    ... addressed to one session ─▶ Broker::deliver_addressed
//!  peer's TakeSession ─▶ NodeHooks::take_session ─▶ Broker::hand_over (leaves a tombstone)
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
use roost_cluster::types::NodeId;
use roost_cluster::{Answer, Delivered, LocalNode, SessionTransfer, Target};
use roost_core::message::Message;
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
    fn deliver(&self, msg: Arc<Message>, target: Target<'_>) -> Delivered {
        let Some(b) = self.broker() else {
            crate::metrics::forward_dropped_not_started();
            return Delivered::default();
        };
        match target {
            Target::Subscribers { direct, shared } => {
                let (congested, remote, passes) = b.deliver_from_peer(&msg, direct, shared);
                let passed_on = (!remote.is_empty() || !passes.is_empty()).then(|| {
                    let b = Arc::clone(&b);
                    Box::pin(async move {
                        Answer(Box::pin(b.forward_then_wait(&msg, remote, passes).await))
                    }) as BoxFuture<Answer>
                });
                let space = (!congested.is_empty()).then(|| {
                    Box::pin(async move { b.wait_for_space(&congested).await }) as BoxFuture<()>
                });
                Delivered { passed_on, space }
            }
            Target::Session(a) => {
                // Placed (or queued behind the session's waiting pass-ons) now, in stream order.
                let answer = Answer(Box::pin(b.deliver_addressed(msg, a)));
                Delivered {
                    passed_on: Some(Box::pin(std::future::ready(answer))),
                    space: None,
                }
            }
        }
    }

    fn take_session(
        &self,
        client_id: ClientId,
        generation: u64,
        requester: NodeId,
    ) -> BoxFuture<Option<SessionTransfer>> {
        let broker = self.broker();
        Box::pin(async move { broker?.hand_over(&client_id, generation, requester).await })
    }

    fn sessions_pending(&self, sessions: &[(ClientId, u64)]) -> Vec<usize> {
        match self.broker() {
            Some(b) => b.sessions_pending(sessions),
            // Stopped (or not started): nothing is being taken in here.
            None => Vec::new(),
        }
    }

    fn on_event(&self, event: &Event) {
        if let Some(b) = self.broker() {
            b.on_cluster_event(event);
        }
    }

    fn draining(&self) -> bool {
        self.broker().is_some_and(|b| b.draining())
    }
}
