//! The replicated state machine's data and its deterministic `apply`.
//!
//! Every node holds a full copy behind an `RwLock`: routing reads the route index and the
//! retained store locally, with no network hop, so publishes keep flowing during elections.
//!
//! ```text
//!   committed entry ─▶ ClusterState::apply(cmd) ─▶ CommandResponse (to the proposer)
//!                                │
//!                                └─▶ Event (to the node: e.g. "client X is now owned by node N
//!                                    at generation G" so the old owner closes its connection)
//! ```
//!
//! Apply is pure: same entries in the same order give the same state on every node. Snapshots
//! are [`Snapshot`]: the canonical maps; the route index and the retained trie are derived from
//! them on install.
//!
//! The canonical maps are persistent B-trees ([`imbl::OrdMap`]): cloning one is O(1) and shares
//! every node until one side changes it, which then copies only the path it changes. The
//! snapshot builder clones [`Snapshot`] under the read lock and serialises the clone after
//! releasing it, so `apply` and the readers behind it (every publish reads the route index)
//! never wait for a serialisation (issue 7 item 20: 200,000 routes took ~200 ms to serialise
//! and as long again to clone as `BTreeMap`s in a debug build; the `OrdMap` clone is a few
//! reference counts). Their serde encoding is a map, as `BTreeMap`'s, so snapshots written
//! before the change still decode.

use crate::types::{
    Command, CommandResponse, NodeId, NodeSet, RetainedMessage, StoredSubscription,
};
use imbl::OrdMap;
use roost_core::index::{Subscription, SubscriptionIndex};
use roost_core::retained::RetainedStore;
use roost_core::topic::{TopicFilter, TopicLimits, TopicName};
use roost_core::ClientId;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

/// Who owns a client's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOwner {
    /// The owning node.
    pub node: NodeId,
    /// Bumped by every claim: the fence that tells a stale owner it lost the session.
    pub generation: u64,
}

/// Something a node must react to after an entry was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `client_id` is now owned by `owner`. A node serving that client at an older generation
    /// must close the connection (DISCONNECT 0x8E).
    SessionClaimed {
        /// Client id.
        client_id: ClientId,
        /// New owner.
        owner: SessionOwner,
        /// The owner it replaced, if any (for a `ReturnSession`: the node that returned it).
        previous: Option<SessionOwner>,
    },
    /// The authorization policies changed (a `SetPolicies` entry, or a snapshot with other
    /// policies): nodes load `policies` and enforce it from now on.
    PoliciesChanged {
        /// The new policies.
        policies: Policies,
    },
}

/// The replicated authorization policies (docs/security.md): the policy store as JSON, and
/// its version (how many `SetPolicies` entries were applied; 0: never set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policies {
    /// Count of `SetPolicies` applied.
    pub version: u64,
    /// The policy store as JSON; `None`: no policies.
    pub json: Option<String>,
}

/// The serialisable form of the state (snapshots). Cheap to clone (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// filter → nodes with local subscribers.
    pub routes: OrdMap<String, NodeSet>,
    /// client id → owner.
    pub sessions: OrdMap<String, SessionOwner>,
    /// The last generation handed out per client id that has a session. A released client's
    /// entry is dropped and its generation folded into the floor under [`GENERATION_FLOOR`]
    /// (a key no client id can be): every later claim starts above the floor, so a generation
    /// is never reused for a client id, and the map holds no entry per client that ever
    /// connected (issue 7 item 18: a loop of CONNECTs with fresh client ids grew it forever).
    pub generations: OrdMap<String, u64>,
    /// topic → retained message; shared with the retained index (held once in memory;
    /// serialised as the message itself).
    pub retained: OrdMap<String, Arc<RetainedMessage>>,
    /// client id → subscriptions of its persistent session.
    pub subscriptions: OrdMap<String, Vec<StoredSubscription>>,
    /// client id → session expiry interval (seconds) given at its last claim.
    pub expiry: OrdMap<String, u32>,
    /// The authorization policies. Last: snapshots written before it existed decode through
    /// [`SnapshotV1`].
    pub policies: Policies,
}

/// The snapshot as written before policies were replicated (issue 9): the same fields, without
/// `policies`. postcard is not self-describing, so an older snapshot is read with this.
#[derive(Debug, Deserialize)]
pub struct SnapshotV1 {
    routes: OrdMap<String, NodeSet>,
    sessions: OrdMap<String, SessionOwner>,
    generations: OrdMap<String, u64>,
    retained: OrdMap<String, Arc<RetainedMessage>>,
    subscriptions: OrdMap<String, Vec<StoredSubscription>>,
    expiry: OrdMap<String, u32>,
}

impl From<SnapshotV1> for Snapshot {
    fn from(v: SnapshotV1) -> Snapshot {
        Snapshot {
            routes: v.routes,
            sessions: v.sessions,
            generations: v.generations,
            retained: v.retained,
            subscriptions: v.subscriptions,
            expiry: v.expiry,
            policies: Policies::default(),
        }
    }
}

/// The key of `Snapshot::generations` that holds the floor of released clients' generations.
/// MQTT client ids never contain U+0000 ([MQTT-1.5.4-2]), so no client has it.
pub const GENERATION_FLOOR: &str = "\u{0}";

/// The replicated metadata, with derived indexes for fast reads.
#[derive(Debug, Default)]
pub struct ClusterState {
    data: Snapshot,
    /// Derived from `data.routes`: which nodes to forward a topic to. Without the local
    /// node's own routes other than shared groups ([`ClusterState::for_node`]): a node never
    /// forwards to itself, and its local subscription index already holds those filters, so
    /// indexing them again would cost a trie leaf per filter for nothing. Its shared groups
    /// stay: the round robin over a group's members counts this node too.
    route_index: SubscriptionIndex<NodeId>,
    /// The node this copy serves, whose own non-shared routes are not in `route_index`;
    /// `None` indexes every route.
    local: Option<NodeId>,
    /// Derived from `data.retained`.
    retained_index: RetainedStore<Arc<RetainedMessage>>,
    /// Derived: payload bytes of `data.retained`, for the retained byte cap.
    retained_bytes: usize,
}

/// Topic limits for parsing replicated filters and topics: the widest MQTT allows, since every
/// node already validated them against its own configured limits before proposing.
fn wide_limits() -> TopicLimits {
    TopicLimits {
        max_levels: usize::MAX,
        max_length: 65_535,
    }
}

impl ClusterState {
    /// An empty state.
    pub fn new() -> ClusterState {
        ClusterState::default()
    }

    /// An empty state for node `local`: its own routes other than shared groups are kept in
    /// the canonical map only, not in [`ClusterState::routes`].
    pub fn for_node(local: NodeId) -> ClusterState {
        ClusterState {
            local: Some(local),
            ..ClusterState::default()
        }
    }

    /// Rebuilds the state from a snapshot.
    pub fn from_snapshot(data: Snapshot) -> ClusterState {
        ClusterState::restore(data, None)
    }

    /// Rebuilds the state from a snapshot for node `local` (see [`ClusterState::for_node`]).
    pub fn from_snapshot_for(data: Snapshot, local: NodeId) -> ClusterState {
        ClusterState::restore(data, Some(local))
    }

    fn restore(data: Snapshot, local: Option<NodeId>) -> ClusterState {
        let limits = wide_limits();
        let mut route_index = SubscriptionIndex::new();
        for (filter, nodes) in &data.routes {
            if let Ok(f) = TopicFilter::new(filter, &limits) {
                for n in nodes {
                    if indexed(local, &f, *n) {
                        route_index.subscribe(&f, *n, route_subscription());
                    }
                }
            }
        }
        let mut retained_index = RetainedStore::new();
        let mut retained_bytes = 0usize;
        for (topic, m) in &data.retained {
            if let Ok(t) = TopicName::new(topic, &limits) {
                retained_bytes = retained_bytes.saturating_add(m.payload.len());
                retained_index.set(&t, Some(Arc::clone(m)));
            }
        }
        ClusterState {
            data,
            route_index,
            local,
            retained_index,
            retained_bytes,
        }
    }

    /// The replicated authorization policies.
    pub fn policies(&self) -> &Policies {
        &self.data.policies
    }

    /// The canonical data (for snapshots and status).
    pub fn snapshot(&self) -> &Snapshot {
        &self.data
    }

    /// Nodes with subscribers matching a topic (for forwarding). For a state made for a node
    /// ([`ClusterState::for_node`]), that node appears in shared groups only.
    pub fn routes(&self) -> &SubscriptionIndex<NodeId> {
        &self.route_index
    }

    /// Retained messages, indexed by topic.
    pub fn retained(&self) -> &RetainedStore<Arc<RetainedMessage>> {
        &self.retained_index
    }

    /// The stored subscriptions and expiry interval of a client's persistent session.
    pub fn stored_session(&self, client_id: &ClientId) -> (Vec<StoredSubscription>, u32) {
        (
            self.data
                .subscriptions
                .get(client_id.as_str())
                .cloned()
                .unwrap_or_default(),
            self.data
                .expiry
                .get(client_id.as_str())
                .copied()
                .unwrap_or(0),
        )
    }

    /// Retained messages held and their payload bytes (the retained caps are checked against
    /// them before a new one is proposed).
    pub fn retained_usage(&self) -> (usize, usize) {
        (self.data.retained.len(), self.retained_bytes)
    }

    /// The last generation handed out for `client_id`: its own entry while it has one (so
    /// its claims go up by one), else the floor of released clients' generations, which is at
    /// least any generation it had before it was released. The next claim gets one more.
    pub fn last_generation(&self, client_id: &str) -> u64 {
        let g = &self.data.generations;
        g.get(client_id)
            .or_else(|| g.get(GENERATION_FLOOR))
            .copied()
            .unwrap_or(0)
    }

    /// True if `node` at `generation` owns `client_id`'s session: every write about a session
    /// is ignored unless it comes from the current owner.
    fn owned_by(&self, client_id: &str, node: NodeId, generation: u64) -> bool {
        self.data
            .sessions
            .get(client_id)
            .is_some_and(|o| o.node == node && o.generation == generation)
    }

    /// Forgets a client's session: owner, stored subscriptions, expiry; its generation goes
    /// into the floor, so its entry need not stay.
    fn release(&mut self, client_id: &str) {
        self.data.sessions.remove(client_id);
        self.data.subscriptions.remove(client_id);
        self.data.expiry.remove(client_id);
        if let Some(g) = self.data.generations.remove(client_id) {
            let floor = self.last_generation(GENERATION_FLOOR).max(g);
            self.data
                .generations
                .insert(GENERATION_FLOOR.to_owned(), floor);
        }
    }

    /// The payload size of `topic`'s retained message, if it has one.
    pub fn retained_payload_len(&self, topic: &str) -> Option<usize> {
        self.data.retained.get(topic).map(|m| m.payload.len())
    }

    /// Forgets the canonical copy of `topic`'s retained message (the index is the caller's).
    fn remove_retained(&mut self, topic: &str) {
        if let Some(old) = self.data.retained.remove(topic) {
            self.retained_bytes = self.retained_bytes.saturating_sub(old.payload.len());
        }
    }

    /// Retained messages whose expiry is at or before `unix_ms`: (topic, expiry), at most
    /// `limit` of them.
    pub fn expired_retained(&self, unix_ms: u64, limit: usize) -> Vec<(String, u64)> {
        self.data
            .retained
            .iter()
            .filter_map(|(t, m)| {
                m.expires_at_unix_ms
                    .filter(|at| *at <= unix_ms)
                    .map(|at| (t.clone(), at))
            })
            .take(limit)
            .collect()
    }

    /// The owner of a client's session, if any.
    pub fn session_owner(&self, client_id: &ClientId) -> Option<SessionOwner> {
        self.data.sessions.get(client_id.as_str()).copied()
    }

    /// [`apply`](Self::apply), taking the command: a retained message is moved into the store
    /// instead of copied (the state machine holds the state's write lock meanwhile, and every
    /// publish's route lookup waits on it).
    pub fn apply_owned(&mut self, cmd: Command) -> (CommandResponse, Option<Event>) {
        match cmd {
            Command::SetRetained { topic, message } => {
                self.set_retained(&topic, message.map(Arc::new));
                (CommandResponse::Done, None)
            }
            cmd => self.apply(&cmd),
        }
    }

    /// Stores (`Some`) or clears `topic`'s retained message.
    fn set_retained(&mut self, topic: &str, message: Option<Arc<RetainedMessage>>) {
        let Ok(t) = TopicName::new(topic, &wide_limits()) else {
            return;
        };
        self.remove_retained(topic);
        if let Some(m) = message {
            self.retained_bytes = self.retained_bytes.saturating_add(m.payload.len());
            self.data.retained.insert(topic.to_owned(), Arc::clone(&m));
            self.retained_index.set(&t, Some(m));
        } else {
            self.retained_index.set(&t, None);
        }
    }

    /// Applies one command. Returns the proposer's response and any event for the node.
    pub fn apply(&mut self, cmd: &Command) -> (CommandResponse, Option<Event>) {
        match cmd {
            Command::UpdateRoutes { node, add, remove } => {
                let limits = wide_limits();
                for filter in add {
                    let Ok(f) = TopicFilter::new(filter, &limits) else {
                        continue;
                    };
                    if self
                        .data
                        .routes
                        .entry(filter.clone())
                        .or_default()
                        .insert(*node)
                        && indexed(self.local, &f, *node)
                    {
                        self.route_index.subscribe(&f, *node, route_subscription());
                    }
                }
                for filter in remove {
                    self.remove_route(filter, *node);
                }
                (CommandResponse::Done, None)
            }
            Command::ClaimSession {
                client_id,
                node,
                clean,
                expiry_interval,
            } => {
                let previous = self.data.sessions.get(client_id).copied();
                if *clean {
                    self.data.subscriptions.remove(client_id);
                }
                self.data.expiry.insert(client_id.clone(), *expiry_interval);
                let generation = self.last_generation(client_id) + 1;
                let owner = SessionOwner {
                    node: *node,
                    generation,
                };
                self.data.generations.insert(client_id.clone(), generation);
                self.data.sessions.insert(client_id.clone(), owner);
                (
                    CommandResponse::Claimed {
                        generation,
                        previous: previous.map(|p| (p.node, p.generation)),
                    },
                    Some(Event::SessionClaimed {
                        client_id: ClientId::from(client_id.as_str()),
                        owner,
                        previous,
                    }),
                )
            }
            Command::ReleaseSession {
                client_id,
                node,
                generation,
            } => {
                let matches = self.owned_by(client_id, *node, *generation);
                if matches {
                    self.release(client_id);
                }
                (CommandResponse::Released(matches), None)
            }
            Command::ReturnSession {
                client_id,
                node,
                generation,
                to,
            } => {
                if !self.owned_by(client_id, *node, *generation) {
                    return (CommandResponse::Released(false), None);
                }
                let Some(to) = to else {
                    self.release(client_id);
                    return (CommandResponse::Released(true), None);
                };
                // A claim for `to`: a new generation, so anything the withdrawn owner wrote
                // meanwhile is fenced out, and `to` hears it as a claim naming itself.
                let previous = self.data.sessions.get(client_id).copied();
                let generation = self.last_generation(client_id).max(*generation) + 1;
                let owner = SessionOwner {
                    node: *to,
                    generation,
                };
                self.data.generations.insert(client_id.clone(), generation);
                self.data.sessions.insert(client_id.clone(), owner);
                (
                    CommandResponse::Released(true),
                    Some(Event::SessionClaimed {
                        client_id: ClientId::from(client_id.as_str()),
                        owner,
                        previous,
                    }),
                )
            }
            Command::SetSubscriptions {
                client_id,
                node,
                generation,
                subscriptions,
                expiry_interval,
            } => {
                if self.owned_by(client_id, *node, *generation) {
                    if let Some(e) = expiry_interval {
                        self.data.expiry.insert(client_id.clone(), *e);
                    }
                    if subscriptions.is_empty() {
                        self.data.subscriptions.remove(client_id);
                    } else {
                        self.data
                            .subscriptions
                            .insert(client_id.clone(), subscriptions.clone());
                    }
                }
                (CommandResponse::Done, None)
            }
            Command::UpdateSubscriptions {
                client_id,
                node,
                generation,
                add,
                remove,
            } => {
                if self.owned_by(client_id, *node, *generation) {
                    // Edited in place: the delta's cost, not a copy of the session's list.
                    let changed: HashSet<&str> = remove
                        .iter()
                        .map(String::as_str)
                        .chain(add.iter().map(|a| a.filter.as_str()))
                        .collect();
                    let subs = match self.data.subscriptions.get_mut(client_id) {
                        Some(subs) => subs,
                        None => self
                            .data
                            .subscriptions
                            .entry(client_id.clone())
                            .or_default(),
                    };
                    subs.retain(|s| !changed.contains(s.filter.as_str()));
                    subs.extend(add.iter().cloned());
                    if subs.is_empty() {
                        self.data.subscriptions.remove(client_id);
                    }
                }
                (CommandResponse::Done, None)
            }
            Command::SetRetained { topic, message } => {
                self.set_retained(topic, message.as_ref().map(|m| Arc::new(m.clone())));
                (CommandResponse::Done, None)
            }
            Command::ExpireRetained {
                topic,
                expires_at_unix_ms,
            } => {
                let current = self.data.retained.get(topic);
                if current.is_some_and(|m| m.expires_at_unix_ms == Some(*expires_at_unix_ms)) {
                    self.remove_retained(topic);
                    if let Ok(t) = TopicName::new(topic, &wide_limits()) {
                        self.retained_index.set(&t, None);
                    }
                }
                (CommandResponse::Done, None)
            }
            Command::SetPolicies { json, if_version } => {
                if if_version.is_some_and(|v| v != self.data.policies.version) {
                    return (CommandResponse::Done, None);
                }
                self.data.policies = Policies {
                    version: self.data.policies.version + 1,
                    json: json.clone(),
                };
                let policies = self.data.policies.clone();
                (
                    CommandResponse::Done,
                    Some(Event::PoliciesChanged { policies }),
                )
            }
            Command::ForgetNode { node } => {
                let filters: Vec<String> = self
                    .data
                    .routes
                    .iter()
                    .filter(|(_, nodes)| nodes.contains(node))
                    .map(|(f, _)| f.clone())
                    .collect();
                for f in filters {
                    self.remove_route(&f, *node);
                }
                let gone: Vec<String> = self
                    .data
                    .sessions
                    .iter()
                    .filter(|(_, o)| o.node == *node)
                    .map(|(c, _)| c.clone())
                    .collect();
                for c in gone {
                    self.release(&c);
                }
                (CommandResponse::Done, None)
            }
        }
    }

    fn remove_route(&mut self, filter: &str, node: NodeId) {
        let Some(nodes) = self.data.routes.get_mut(filter) else {
            return;
        };
        if nodes.remove(&node) {
            if let Ok(f) = TopicFilter::new(filter, &wide_limits()) {
                if indexed(self.local, &f, node) {
                    self.route_index.unsubscribe(&f, &node);
                }
            }
        }
        if nodes.is_empty() {
            self.data.routes.remove(filter);
        }
    }
}

/// Whether `node`'s route for `filter` goes into the route index of the state made for
/// `local`: every route but `local`'s own direct (non-shared) ones.
fn indexed(local: Option<NodeId>, filter: &TopicFilter, node: NodeId) -> bool {
    local != Some(node) || filter.share_group().is_some()
}

/// Routes carry no per-subscriber options: the receiving node applies its own subscriptions'.
fn route_subscription() -> Subscription {
    Subscription {
        options: roost_codec::SubscriptionOptions::default(),
        identifier: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use roost_core::index::Matches;

    fn cid() -> ClientId {
        ClientId::from("c")
    }

    fn topic(s: &str) -> TopicName {
        TopicName::new(s, &TopicLimits::default()).unwrap()
    }

    fn nodes_for(state: &ClusterState, t: &str) -> (Vec<u64>, Vec<(String, Vec<u64>)>) {
        let mut m = Matches::default();
        state.routes().matches(&topic(t), None, &mut m);
        let mut direct: Vec<_> = m.direct.iter().map(|d| d.subscriber.get()).collect();
        direct.sort_unstable();
        let mut shared: Vec<_> = m
            .shared
            .iter()
            .map(|s| {
                let mut n: Vec<_> = s.members.iter().map(|(k, _)| k.get()).collect();
                n.sort_unstable();
                (s.filter.as_str().to_owned(), n)
            })
            .collect();
        shared.sort();
        (direct, shared)
    }

    fn routes(node: u64, add: &[&str], remove: &[&str]) -> Command {
        Command::UpdateRoutes {
            node: NodeId::new(node),
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn routes_aggregate_per_node_and_match_wildcards() {
        let mut s = ClusterState::new();
        s.apply(&routes(1, &["a/+", "$share/g/a/b"], &[]));
        s.apply(&routes(2, &["a/#", "$share/g/a/b"], &[]));
        s.apply(&routes(3, &["b"], &[]));
        assert_eq!(
            nodes_for(&s, "a/b"),
            (vec![1, 2], vec![("$share/g/a/b".to_owned(), vec![1, 2])])
        );
        s.apply(&routes(1, &[], &["a/+", "$share/g/a/b"]));
        assert_eq!(
            nodes_for(&s, "a/b"),
            (vec![2], vec![("$share/g/a/b".to_owned(), vec![2])])
        );
        assert!(!s.snapshot().routes.contains_key("a/+"));
    }

    #[test]
    fn a_nodes_own_direct_routes_are_kept_but_not_indexed() {
        let mut s = ClusterState::for_node(NodeId::new(1));
        s.apply(&routes(1, &["a/+", "$share/g/a/b"], &[]));
        s.apply(&routes(2, &["a/#", "$share/g/a/b"], &[]));
        // Node 1's direct route is replicated (its peers forward to it) but not indexed here;
        // its shared group membership is, for the round robin.
        assert!(s.snapshot().routes["a/+"].contains(&NodeId::new(1)));
        assert_eq!(
            nodes_for(&s, "a/b"),
            (vec![2], vec![("$share/g/a/b".to_owned(), vec![1, 2])])
        );
        // Restored from a snapshot for node 1: the same; for node 2: node 1's route indexed.
        let for_1 = ClusterState::from_snapshot_for(s.snapshot().clone(), NodeId::new(1));
        assert_eq!(nodes_for(&for_1, "a/b"), nodes_for(&s, "a/b"));
        let for_2 = ClusterState::from_snapshot_for(s.snapshot().clone(), NodeId::new(2));
        assert_eq!(
            nodes_for(&for_2, "a/b"),
            (vec![1], vec![("$share/g/a/b".to_owned(), vec![1, 2])])
        );
        // Removing it (and the group) leaves nothing of node 1 behind.
        s.apply(&routes(1, &[], &["a/+", "$share/g/a/b"]));
        assert!(!s.snapshot().routes.contains_key("a/+"));
        assert_eq!(
            nodes_for(&s, "a/b"),
            (vec![2], vec![("$share/g/a/b".to_owned(), vec![2])])
        );
    }

    #[test]
    fn claims_bump_the_generation_and_name_the_previous_owner() {
        let mut s = ClusterState::new();
        let claim = |n| Command::ClaimSession {
            client_id: "c".into(),
            node: NodeId::new(n),
            clean: false,
            expiry_interval: 60,
        };
        let (r, e) = s.apply(&claim(1));
        assert_eq!(
            r,
            CommandResponse::Claimed {
                generation: 1,
                previous: None
            }
        );
        assert!(
            matches!(e, Some(Event::SessionClaimed { owner, .. }) if owner.node == NodeId::new(1))
        );
        let (r, _) = s.apply(&claim(2));
        assert_eq!(
            r,
            CommandResponse::Claimed {
                generation: 2,
                previous: Some((NodeId::new(1), 1))
            }
        );
        // A stale release from node 1 does not remove node 2's ownership.
        let (r, _) = s.apply(&Command::ReleaseSession {
            client_id: "c".into(),
            node: NodeId::new(1),
            generation: 1,
        });
        assert_eq!(r, CommandResponse::Released(false));
        assert_eq!(s.session_owner(&cid()).unwrap().node, NodeId::new(2));
        let (r, _) = s.apply(&Command::ReleaseSession {
            client_id: "c".into(),
            node: NodeId::new(2),
            generation: 2,
        });
        assert_eq!(r, CommandResponse::Released(true));
        // Generations are never reused for a client id.
        let (r, _) = s.apply(&claim(3));
        assert_eq!(
            r,
            CommandResponse::Claimed {
                generation: 3,
                previous: None
            }
        );
    }

    /// Issue 7 item 8: a claim given up on is handed back to the owner it replaced, only while
    /// it is still the current one.
    #[test]
    fn item8_return_session_hands_a_late_claim_back_only_while_it_is_current() {
        let mut s = ClusterState::new();
        let claim = |n, clean| Command::ClaimSession {
            client_id: "c".into(),
            node: NodeId::new(n),
            clean,
            expiry_interval: 60,
        };
        let give_back = |generation, to: Option<u64>| Command::ReturnSession {
            client_id: "c".into(),
            node: NodeId::new(2),
            generation,
            to: to.map(NodeId::new),
        };
        s.apply(&claim(1, false));
        s.apply(&claim(2, true));
        // Node 2's late claim (generation 2) goes back to node 1, at a new generation.
        let (r, e) = s.apply(&give_back(2, Some(1)));
        assert_eq!(r, CommandResponse::Released(true));
        let back = SessionOwner {
            node: NodeId::new(1),
            generation: 3,
        };
        assert_eq!(
            e,
            Some(Event::SessionClaimed {
                client_id: cid(),
                owner: back,
                previous: Some(SessionOwner {
                    node: NodeId::new(2),
                    generation: 2
                }),
            })
        );
        assert_eq!(s.session_owner(&cid()), Some(back));
        // Repeated, or once a newer claim exists: nothing.
        assert_eq!(
            s.apply(&give_back(2, Some(1))),
            (CommandResponse::Released(false), None)
        );
        s.apply(&claim(2, false));
        s.apply(&claim(3, false));
        assert_eq!(
            s.apply(&give_back(4, None)),
            (CommandResponse::Released(false), None)
        );
        assert_eq!(
            s.session_owner(&cid()).map(|o| o.node),
            Some(NodeId::new(3))
        );
        // Nobody to hand it back to: released.
        let (r, e) = s.apply(&Command::ReturnSession {
            client_id: "c".into(),
            node: NodeId::new(3),
            generation: 5,
            to: None,
        });
        assert_eq!((r, e), (CommandResponse::Released(true), None));
        assert_eq!(s.session_owner(&cid()), None);
    }

    fn retained(t: &str, p: &str) -> RetainedMessage {
        RetainedMessage {
            topic: t.into(),
            payload: p.as_bytes().to_vec(),
            qos: 1,
            payload_format_indicator: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
            expires_at_unix_ms: None,
            publisher: None,
        }
    }

    #[test]
    fn retained_set_clear_and_snapshot_round_trip() {
        let mut s = ClusterState::new();
        for (t, p) in [("a/1", "x"), ("a/2", "y"), ("b", "z")] {
            s.apply(&Command::SetRetained {
                topic: t.into(),
                message: Some(retained(t, p)),
            });
        }
        s.apply(&Command::SetRetained {
            topic: "a/2".into(),
            message: None,
        });
        s.apply(&routes(4, &["x/#"], &[]));
        s.apply(&Command::ClaimSession {
            client_id: "c".into(),
            node: NodeId::new(4),
            clean: false,
            expiry_interval: 60,
        });
        let bytes = postcard::to_allocvec(s.snapshot()).unwrap();
        let back: Snapshot = postcard::from_bytes(&bytes).unwrap();
        let s2 = ClusterState::from_snapshot(back);
        assert_eq!(s2.snapshot(), s.snapshot());
        let f = TopicFilter::new("a/#", &TopicLimits::default()).unwrap();
        let mut out = Vec::new();
        s2.retained().matching(&f, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, b"x");
        assert_eq!(nodes_for(&s2, "x/y").0, vec![4]);
    }

    /// Snapshots written while the maps were `BTreeMap`s (before issue 7 item 20) decode into
    /// the persistent maps: both are serde maps, encoded alike.
    #[test]
    fn snapshots_written_with_btreemaps_still_decode() {
        use std::collections::{BTreeMap, BTreeSet};
        #[derive(Serialize)]
        struct Before {
            routes: BTreeMap<String, BTreeSet<NodeId>>,
            sessions: BTreeMap<String, SessionOwner>,
            generations: BTreeMap<String, u64>,
            retained: BTreeMap<String, RetainedMessage>,
            subscriptions: BTreeMap<String, Vec<StoredSubscription>>,
            expiry: BTreeMap<String, u32>,
        }
        let owner = SessionOwner {
            node: NodeId::new(2),
            generation: 3,
        };
        let before = Before {
            routes: BTreeMap::from([("a/#".to_owned(), BTreeSet::from([NodeId::new(1)]))]),
            sessions: BTreeMap::from([("c".to_owned(), owner)]),
            generations: BTreeMap::from([("c".to_owned(), 3)]),
            retained: BTreeMap::from([("a/b".to_owned(), retained("a/b", "x"))]),
            subscriptions: BTreeMap::new(),
            expiry: BTreeMap::from([("c".to_owned(), 60)]),
        };
        let bytes = postcard::to_allocvec(&before).unwrap();
        // Before policies too (issue 9): the old layout is read through `SnapshotV1`.
        let now: Snapshot = postcard::from_bytes::<SnapshotV1>(&bytes).unwrap().into();
        assert_eq!(now.routes["a/#"], NodeSet::from_iter([NodeId::new(1)]));
        assert_eq!(now.sessions["c"], owner);
        assert_eq!(now.generations["c"], 3);
        assert_eq!(*now.retained["a/b"], retained("a/b", "x"));
        assert!(now.subscriptions.is_empty());
        assert_eq!(now.expiry["c"], 60);
        // Written again, it is the old encoding plus the (empty) policies: version 0, none.
        let mut again = bytes.clone();
        again.extend_from_slice(&[0, 0]);
        assert_eq!(postcard::to_allocvec(&now).unwrap(), again);
    }

    #[test]
    fn subscriptions_are_kept_per_owner_generation_and_dropped_on_clean_claims() {
        let mut s = ClusterState::new();
        let claim = |n, clean| Command::ClaimSession {
            client_id: "c".into(),
            node: NodeId::new(n),
            clean,
            expiry_interval: 300,
        };
        let sub = StoredSubscription {
            filter: "a/#".into(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            identifier: Some(3),
        };
        let set = |n, generation| Command::SetSubscriptions {
            client_id: "c".into(),
            node: NodeId::new(n),
            generation,
            subscriptions: vec![sub.clone()],
            expiry_interval: None,
        };
        s.apply(&claim(1, false));
        s.apply(&set(2, 1));
        assert!(s.stored_session(&cid()).0.is_empty(), "not the owner");
        s.apply(&set(1, 1));
        assert_eq!(s.stored_session(&cid()), (vec![sub.clone()], 300));
        // A takeover keeps them (the new owner restores them if the old one is gone)...
        s.apply(&claim(2, false));
        assert_eq!(s.stored_session(&cid()).0.len(), 1);
        // ...a stale owner cannot overwrite them, and a clean start drops them.
        s.apply(&Command::SetSubscriptions {
            client_id: "c".into(),
            node: NodeId::new(1),
            generation: 1,
            subscriptions: vec![],
            expiry_interval: Some(1),
        });
        assert_eq!(s.stored_session(&cid()), (vec![sub.clone()], 300));
        // The owner may change the expiry (v5 DISCONNECT).
        s.apply(&Command::SetSubscriptions {
            client_id: "c".into(),
            node: NodeId::new(2),
            generation: 2,
            subscriptions: vec![sub.clone()],
            expiry_interval: Some(30),
        });
        assert_eq!(s.stored_session(&cid()), (vec![sub.clone()], 30));
        s.apply(&claim(3, true));
        assert!(s.stored_session(&cid()).0.is_empty());
    }

    #[test]
    fn expire_retained_removes_only_the_message_it_names() {
        let mut s = ClusterState::new();
        let mut m = retained("a", "old");
        m.expires_at_unix_ms = Some(1_000);
        s.apply(&Command::SetRetained {
            topic: "a".into(),
            message: Some(m),
        });
        assert_eq!(s.expired_retained(999, 10), vec![]);
        assert_eq!(s.expired_retained(1_000, 10), vec![("a".to_owned(), 1_000)]);
        // A newer message arrived before the purge committed: it stays.
        let mut newer = retained("a", "new");
        newer.expires_at_unix_ms = Some(5_000);
        s.apply(&Command::SetRetained {
            topic: "a".into(),
            message: Some(newer),
        });
        s.apply(&Command::ExpireRetained {
            topic: "a".into(),
            expires_at_unix_ms: 1_000,
        });
        assert_eq!(s.retained().len(), 1);
        s.apply(&Command::ExpireRetained {
            topic: "a".into(),
            expires_at_unix_ms: 5_000,
        });
        assert_eq!(s.retained().len(), 0);
        assert!(s.snapshot().retained.is_empty());
    }

    /// Issue 7 item 18: a released client's generation entry goes (a loop of CONNECTs with
    /// fresh client ids no longer grows the map), and a client id claimed again after its
    /// release still gets a higher generation than any it had.
    #[test]
    fn item18_released_clients_leave_no_generation_entry() {
        let mut s = ClusterState::new();
        let claim = |c: &str| Command::ClaimSession {
            client_id: c.into(),
            node: NodeId::new(1),
            clean: true,
            expiry_interval: 0,
        };
        let mut last_of_c0 = 0;
        for i in 0..1000 {
            let c = format!("c{i}");
            let (CommandResponse::Claimed { generation, .. }, _) = s.apply(&claim(&c)) else {
                panic!("not claimed");
            };
            if i == 0 {
                last_of_c0 = generation;
            }
            s.apply(&Command::ReleaseSession {
                client_id: c,
                node: NodeId::new(1),
                generation,
            });
        }
        // Only the floor is left.
        assert_eq!(s.snapshot().generations.len(), 1);
        let (CommandResponse::Claimed { generation, .. }, _) = s.apply(&claim("c0")) else {
            panic!("not claimed");
        };
        assert!(generation > last_of_c0);
        // A client with a session counts up from its own entry.
        let (
            CommandResponse::Claimed {
                generation: next, ..
            },
            _,
        ) = s.apply(&claim("c0"))
        else {
            panic!("not claimed");
        };
        assert_eq!(next, generation + 1);
    }

    /// Issue 7 item 18: a SUBSCRIBE or UNSUBSCRIBE is proposed as a delta; applying it keeps
    /// the rest of the stored list, and a delta from a stale owner changes nothing.
    #[test]
    fn item18_subscription_deltas_apply_to_the_stored_list() {
        let mut s = ClusterState::new();
        let (CommandResponse::Claimed { generation, .. }, _) = s.apply(&Command::ClaimSession {
            client_id: "c".into(),
            node: NodeId::new(1),
            clean: true,
            expiry_interval: 60,
        }) else {
            panic!("not claimed");
        };
        let sub = |f: &str, qos: u8| StoredSubscription {
            filter: f.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            identifier: None,
        };
        let delta = |generation, add: Vec<StoredSubscription>, remove: Vec<&str>| {
            Command::UpdateSubscriptions {
                client_id: "c".into(),
                node: NodeId::new(1),
                generation,
                add,
                remove: remove.into_iter().map(String::from).collect(),
            }
        };
        s.apply(&delta(generation, vec![sub("a", 0), sub("b", 1)], vec![]));
        s.apply(&delta(
            generation,
            vec![sub("a", 2), sub("c", 0)],
            vec!["b"],
        ));
        s.apply(&delta(generation + 7, vec![sub("stale", 0)], vec!["a"]));
        let (stored, _) = s.stored_session(&ClientId::from("c"));
        let mut got: Vec<(String, u8)> = stored.into_iter().map(|s| (s.filter, s.qos)).collect();
        got.sort();
        assert_eq!(got, [("a".to_owned(), 2), ("c".to_owned(), 0)]);
    }

    /// Issue 7 item 18: the retained store's size (messages, payload bytes) is kept through
    /// set, replace, clear and expiry, and rebuilt from a snapshot; the payload is held once.
    #[test]
    fn item18_retained_usage_follows_every_change() {
        let mut s = ClusterState::new();
        let set = |topic: &str, p: &str| Command::SetRetained {
            topic: topic.into(),
            message: (!p.is_empty()).then(|| retained(topic, p)),
        };
        s.apply(&set("a", "12345"));
        s.apply(&set("b", "123"));
        assert_eq!(s.retained_usage(), (2, 8));
        s.apply(&set("a", "1"));
        assert_eq!(s.retained_usage(), (2, 4));
        s.apply(&set("b", ""));
        assert_eq!(s.retained_usage(), (1, 1));
        let mut m = retained("c", "xy");
        m.expires_at_unix_ms = Some(10);
        s.apply(&Command::SetRetained {
            topic: "c".into(),
            message: Some(m),
        });
        assert_eq!(s.retained_usage(), (2, 3));
        s.apply(&Command::ExpireRetained {
            topic: "c".into(),
            expires_at_unix_ms: 10,
        });
        assert_eq!(s.retained_usage(), (1, 1));
        let restored = ClusterState::from_snapshot(s.snapshot().clone());
        assert_eq!(restored.retained_usage(), (1, 1));
        // One copy: the canonical map and the index share the message.
        let mut found = Vec::new();
        restored
            .retained()
            .matching(&TopicFilter::new("a", &wide_limits()).unwrap(), &mut found);
        assert!(Arc::ptr_eq(&found[0], &restored.snapshot().retained["a"]));
    }

    #[test]
    fn forget_node_drops_its_routes_and_sessions() {
        let mut s = ClusterState::new();
        s.apply(&routes(1, &["a"], &[]));
        s.apply(&routes(2, &["a"], &[]));
        s.apply(&Command::ClaimSession {
            client_id: "c".into(),
            node: NodeId::new(1),
            clean: false,
            expiry_interval: 60,
        });
        s.apply(&Command::ForgetNode {
            node: NodeId::new(1),
        });
        assert_eq!(nodes_for(&s, "a").0, vec![2]);
        assert_eq!(s.session_owner(&cid()), None);
        // Its generation went into the floor: no entry per client of a node that left.
        assert!(!s.snapshot().generations.contains_key("c"));
        assert_eq!(s.last_generation("c"), 1);
    }

    #[test]
    fn set_policies_bumps_the_version_and_honours_its_condition() {
        let mut s = ClusterState::new();
        let set = |json: Option<&str>, if_version| Command::SetPolicies {
            json: json.map(str::to_owned),
            if_version,
        };
        let (_, e) = s.apply(&set(Some("{}"), Some(0)));
        let one = Policies {
            version: 1,
            json: Some("{}".into()),
        };
        assert_eq!(
            e,
            Some(Event::PoliciesChanged {
                policies: one.clone()
            })
        );
        // A seed proposed for an empty cluster does not replace policies set meanwhile.
        let (_, e) = s.apply(&set(Some("seed"), Some(0)));
        assert_eq!(e, None);
        assert_eq!(s.policies(), &one);
        let (_, e) = s.apply(&set(None, None));
        assert!(
            matches!(e, Some(Event::PoliciesChanged { policies }) if policies.version == 2 && policies.json.is_none())
        );
        // Round trip through a snapshot.
        let bytes = postcard::to_allocvec(s.snapshot()).unwrap();
        let back: Snapshot = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.policies.version, 2);
    }

    /// A snapshot written before policies were replicated decodes through `SnapshotV1`, and a
    /// current one does not decode as the old layout by accident (the new field is last).
    #[test]
    fn snapshots_written_before_policies_still_decode() {
        let mut old = ClusterState::new();
        old.apply(&Command::UpdateRoutes {
            node: NodeId::new(1),
            add: vec!["a/#".into()],
            remove: vec![],
        });
        #[derive(Serialize)]
        struct Before<'a> {
            routes: &'a OrdMap<String, NodeSet>,
            sessions: &'a OrdMap<String, SessionOwner>,
            generations: &'a OrdMap<String, u64>,
            retained: &'a OrdMap<String, Arc<RetainedMessage>>,
            subscriptions: &'a OrdMap<String, Vec<StoredSubscription>>,
            expiry: &'a OrdMap<String, u32>,
        }
        let d = old.snapshot();
        let bytes = postcard::to_allocvec(&Before {
            routes: &d.routes,
            sessions: &d.sessions,
            generations: &d.generations,
            retained: &d.retained,
            subscriptions: &d.subscriptions,
            expiry: &d.expiry,
        })
        .unwrap();
        assert!(postcard::from_bytes::<Snapshot>(&bytes).is_err());
        let v1: SnapshotV1 = postcard::from_bytes(&bytes).unwrap();
        let now = Snapshot::from(v1);
        assert_eq!(now.routes, d.routes);
        assert_eq!(now.policies, Policies::default());
    }
}
