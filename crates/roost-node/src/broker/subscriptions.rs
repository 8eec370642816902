//! The subscription index and what it tells the cluster: a session's SUBSCRIBE goes into the
//! local index (matched by every local publish) and, when it is this node's first subscriber
//! for the filter, into the [`RouteTable`](crate::routes::RouteTable) whose reconciler proposes
//! the route; a persistent session's subscriptions are also written to the replicated session
//! registry so they survive a restart of this node.

use super::{Broker, SessionRef};
use crate::routes::RouteResult;
use roost_cluster::types::{Command, NodeId, StoredSubscription};
use roost_core::index::Subscription;
use roost_core::session::Session;
use roost_core::topic::TopicFilter;
use tokio::sync::oneshot;
use tracing::{error, warn};

impl Broker {
    /// Adds a subscription to the index and the session; true if it is new. When it is this
    /// node's first subscriber for the filter, `route` receives the route commit to wait for.
    pub(crate) fn subscribe(
        &self,
        s: &SessionRef,
        filter: &TopicFilter,
        sub: Subscription,
        route: &mut Option<oneshot::Receiver<RouteResult>>,
    ) -> bool {
        let new = self.index.write().subscribe(filter, s.clone(), sub.clone());
        if new {
            *route = self.routes.acquire(filter);
        }
        s.with(|session| session.add_subscription(filter.clone(), sub));
        new
    }

    /// Removes a subscription; true if it existed.
    pub(crate) fn unsubscribe(&self, s: &SessionRef, filter: &TopicFilter) -> bool {
        let existed = self.index.write().unsubscribe(filter, s);
        if existed {
            self.routes.release(filter);
        }
        s.with(|session| session.remove_subscription(filter));
        existed
    }

    /// Indexes a session's subscriptions (one that arrived from another node, or was restored);
    /// returns the route commits to wait for. A caller that does not wait (or stops waiting)
    /// still gets the routes: the route table proposes them until they commit.
    pub(super) fn index_all(
        &self,
        s: &SessionRef,
        subscriptions: &[(TopicFilter, Subscription)],
    ) -> Vec<oneshot::Receiver<RouteResult>> {
        let mut routes = Vec::new();
        if subscriptions.is_empty() {
            return routes;
        }
        let mut idx = self.index.write();
        for (f, sub) in subscriptions {
            if idx.subscribe(f, s.clone(), sub.clone()) {
                routes.extend(self.routes.acquire(f));
            }
        }
        routes
    }

    /// Removes a session's subscriptions from the index (the session ended or left).
    pub(super) fn unindex_all(&self, s: &SessionRef, filters: &[TopicFilter]) {
        if filters.is_empty() {
            return;
        }
        let mut idx = self.index.write();
        for f in filters {
            if idx.unsubscribe(f, s) {
                self.routes.release(f);
            }
        }
    }

    /// Records a change of a persistent session's subscriptions in the registry (what a
    /// SUBSCRIBE added, what an UNSUBSCRIBE removed): a delta, so the replicated log grows with
    /// the change, not with the session's whole list. Waits for the commit (bounded); false if
    /// it did not commit. Nothing to do (true) for a session that ends with its connection.
    pub(crate) async fn persist_subscription_change(
        &self,
        s: &SessionRef,
        add: &[(TopicFilter, Subscription)],
        remove: &[TopicFilter],
    ) -> bool {
        if add.is_empty() && remove.is_empty() {
            return true;
        }
        self.write_session(
            s,
            "subscription change",
            |client_id, node, generation, _| Command::UpdateSubscriptions {
                client_id,
                node,
                generation,
                add: add
                    .iter()
                    .map(|(f, sub)| StoredSubscription::new(f, sub))
                    .collect(),
                remove: remove.iter().map(|f| f.as_str().to_owned()).collect(),
            },
        )
        .await
    }

    /// Records a persistent session's subscriptions in the registry, so they survive a restart
    /// of this node or its loss. Waits for the commit (bounded); false if it did not commit.
    pub(crate) async fn persist_subscriptions(&self, s: &SessionRef) -> bool {
        self.write_session(
            s,
            "subscriptions",
            |client_id, node, generation, session| Command::SetSubscriptions {
                client_id,
                node,
                generation,
                subscriptions: session
                    .subscriptions()
                    .iter()
                    .map(|(f, sub)| StoredSubscription::new(f, sub))
                    .collect(),
                expiry_interval: Some(session.expiry_interval()),
            },
        )
        .await
    }

    /// Proposes a write about a persistent session's registry entry, built by `cmd` from its
    /// client id, this node, the generation it holds and the session (under its lock), and
    /// waits for the commit (bounded). True without proposing for a session with no claim or
    /// that ends with its connection (nothing of it is stored); false if it did not commit.
    async fn write_session(
        &self,
        s: &SessionRef,
        what: &str,
        cmd: impl FnOnce(String, NodeId, u64, &Session) -> Command,
    ) -> bool {
        let cmd = {
            let st = s.lock();
            let Some(generation) = st.generation else {
                return true;
            };
            if st.session.expiry_interval() == 0 {
                return true;
            }
            cmd(
                s.client_id().to_string(),
                self.cluster.node_id(),
                generation,
                &st.session,
            )
        };
        match self.cluster.propose(cmd).await {
            Ok(_) => true,
            Err(e) if e.is_fatal() => {
                error!(client_id = %s.client_id(), error = %e, "{what} not persisted: this node's raft stopped");
                false
            }
            Err(e) => {
                warn!(client_id = %s.client_id(), error = %e, "{what} not persisted");
                false
            }
        }
    }
}
