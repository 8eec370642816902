//! The subscription index: which subscribers want a PUBLISH on a given topic.
//!
//! Owns every subscription of one scope (a node's local clients keyed by client id, or the
//! cluster's routes keyed by node id: the index is generic over the subscriber key `K`). The
//! router calls [`SubscriptionIndex::matches`] once per PUBLISH; sessions call
//! [`SubscriptionIndex::subscribe`] / [`SubscriptionIndex::unsubscribe`]. Mutation takes
//! `&mut self`; matching takes `&self` (the round-robin counters of shared subscriptions are
//! atomics), so a caller may share the index behind a read-write lock. The index does no I/O and
//! keeps no clock.
//!
//! # Layout
//!
//! A trie with one node per filter level. A node has literal children in a hash map and two
//! dedicated slots, `+` and `#`, so matching a topic level costs one hash look-up plus two slot
//! checks, whatever the number of filters. The subscribers of a filter sit at the node its last
//! level leads to: non-shared ones in a small map keyed by subscriber, shared ones grouped by
//! share name (`$share/{group}/...` lives at the node of its filter part). A leaf keeps only
//! its subscribers; the children, the two slots and the shared groups of a node are boxed
//! together and absent on a leaf, so a filter's last level costs 40 bytes in its parent's map
//! (issue 10: one unique filter per idle connection).
//!
//! ```text
//!   filters: sport/tennis/+   sport/#   +/monitor   $share/g/sport/tennis/+   $SYS/#
//!
//!   (root) ── "sport" ── "tennis" ── [+] ── subs {c1}, shared {g: [c2, c3]}
//!     │          └─ [#] ── subs {c4}
//!     ├─ [+] ── "monitor" ── subs {c5}
//!     └─ "$SYS" ── [#] ── subs {c6}
//! ```
//!
//! Matching walks the topic's levels from the root; at each node it follows the literal child,
//! the `+` slot (one level) and collects the `#` slot (all remaining levels, and the parent level
//! itself: `sport/#` matches `sport`). A topic whose first level starts with `$` skips the root's
//! `+` and `#` slots ([MQTT-4.7.2-1]) but follows literal `$SYS`-style children. The walk
//! allocates nothing per level: it recurses over sub-slices of the topic string, and its depth
//! is bounded by [`crate::topic::TopicLimits::max_levels`]. Empty nodes are pruned on
//! unsubscribe, so memory follows the live subscriptions, not the churn.
//!
//! # Aggregation
//!
//! A subscriber whose several non-shared subscriptions match one topic (say `a/+` at QoS 1 with
//! identifier 1 and `a/#` at QoS 2 with identifier 2) gets ONE [`Delivery`]: the maximum QoS of
//! the matching subscriptions, all their subscription identifiers (sorted, deduplicated) and
//! Retain As Published if any of them set it. MQTT 5.0 §3.3.4 allows exactly this: "the Server
//! MUST deliver the message to the Client respecting the maximum QoS of all the matching
//! subscriptions" [MQTT-3.3.4-2], and a single copy carries "the Subscription Identifiers for
//! all matching subscriptions" [MQTT-3.3.4-4]. MQTT 3.1.1 clients get the same single delivery:
//! §3.3.5 says "the Server MUST deliver the message to the Client respecting the maximum QoS of
//! all the matching subscriptions" [MQTT-3.3.5-1], which one copy at the maximum QoS satisfies
//! (further copies are only a MAY).
//!
//! Shared subscriptions are not aggregated: each (group, filter) that matches is one
//! [`SharedMatch`], from whose members the caller picks exactly one.

use crate::topic::{TopicFilter, TopicName};
use roost_codec::{QoS, SubscriptionOptions};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One subscription as the index stores it: the options from SUBSCRIBE and the v5 subscription
/// identifier, if the client gave one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// QoS, No Local, Retain As Published, Retain Handling.
    pub options: SubscriptionOptions,
    /// The Subscription Identifier property (v5 §3.8.2.1.2), echoed in matching PUBLISHes.
    pub identifier: Option<u32>,
}

/// A non-shared delivery: one per matching subscriber, whatever the number of its matching
/// subscriptions (see the module doc, "Aggregation").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<K> {
    /// Who gets the message.
    pub subscriber: K,
    /// The maximum QoS of the subscriber's matching subscriptions (the caller still takes the
    /// minimum of this and the PUBLISH's QoS).
    pub qos: QoS,
    /// Subscription identifiers of the matching subscriptions, sorted and deduplicated.
    pub identifiers: Vec<u32>,
    /// True if any matching subscription has Retain As Published.
    pub retain_as_published: bool,
}

impl<K: Clone> Delivery<K> {
    /// The delivery for a subscriber's first matching subscription.
    fn new(subscriber: &K, sub: &Subscription) -> Self {
        Delivery {
            subscriber: subscriber.clone(),
            qos: sub.options.qos,
            identifiers: sub.identifier.into_iter().collect(),
            retain_as_published: sub.options.retain_as_published,
        }
    }
}

/// One matching shared subscription (one share group on one filter): the caller delivers the
/// message to exactly one of its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedMatch<K> {
    /// The share name.
    pub group: Arc<str>,
    /// The full filter, `$share/{group}/` included.
    pub filter: TopicFilter,
    /// The members in a stable order (the order they joined).
    pub members: Vec<(K, Subscription)>,
    /// Where the caller starts looking for an available member (`< members.len()`). It advances
    /// by one on every match of this shared subscription, so successive messages go round
    /// robin, and a member the caller finds unavailable is skipped by trying the next one.
    pub start: usize,
}

/// The result of [`SubscriptionIndex::matches`]. Reuse one across calls: its vectors and its
/// aggregation scratch map keep their capacity.
#[derive(Debug)]
pub struct Matches<K> {
    /// Non-shared deliveries, one per subscriber; order unspecified but deterministic for a
    /// given sequence of index operations.
    pub direct: Vec<Delivery<K>>,
    /// Matching shared subscriptions.
    pub shared: Vec<SharedMatch<K>>,
    /// Subscriber -> position in `direct`, for aggregation. Built only once a second trie
    /// node contributes direct subscribers: one node's subscribers are distinct already, and
    /// most topics match a single filter, so the common case hashes nothing.
    seen: HashMap<K, usize>,
    /// True once `seen` indexes every entry of `direct`.
    indexed: bool,
}

impl<K> Default for Matches<K> {
    fn default() -> Self {
        Matches {
            direct: Vec::new(),
            shared: Vec::new(),
            seen: HashMap::new(),
            indexed: false,
        }
    }
}

impl<K> Matches<K> {
    /// Empties both lists, keeping their capacity.
    pub fn clear(&mut self) {
        self.direct.clear();
        self.shared.clear();
        self.seen.clear();
        self.indexed = false;
    }

    /// True if nothing matched.
    pub fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

/// Above this many entries a [`Subscribers`] map keeps a hash index beside its vector.
const SMALL_MAP_MAX: usize = 8;

/// The non-shared subscribers of one filter: a vector (deterministic iteration order, cheap for
/// the usual handful of subscribers) plus a hash index once it grows (so a filter with 10,000
/// subscribers still subscribes in O(1)).
///
/// 32 bytes: it sits in every trie node that ends a filter, and most filters have one
/// subscriber (issue 10: memory per idle connection). The vector grows one entry at a time
/// while it is short ([`reserve_one`]), and the hash index is boxed.
#[derive(Debug)]
struct Subscribers<K> {
    entries: Vec<(K, Subscription)>,
    /// Subscriber -> position in `entries`; only when `entries.len() > SMALL_MAP_MAX`.
    /// Boxed on purpose: 8 bytes in every filter's node instead of a `HashMap`'s 48, for a
    /// map only large filters have (the extra allocation is theirs alone).
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<K, usize>>>,
}

/// Up to this many entries a small vector grows by exactly one ([`reserve_one`]); beyond it,
/// by doubling, so a long one still inserts in amortised O(1).
const EXACT_GROWTH_MAX: usize = 4;

/// Makes room for one more entry in `v`: exactly one while it is short (a lone entry costs one
/// slot, not the four a `Vec` reserves on its first push; issue 10, memory per idle
/// connection), then by doubling. For the small vectors of the index and of a session's
/// subscriptions.
pub(crate) fn reserve_one<T>(v: &mut Vec<T>) {
    if v.len() < EXACT_GROWTH_MAX {
        v.reserve_exact(1);
    }
}

impl<K> Default for Subscribers<K> {
    fn default() -> Self {
        Subscribers {
            entries: Vec::new(),
            index: None,
        }
    }
}

impl<K: Clone + Eq + Hash> Subscribers<K> {
    fn position(&self, key: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Inserts or replaces; true if `key` is new.
    fn insert(&mut self, key: K, sub: Subscription) -> bool {
        if let Some(pos) = self.position(&key) {
            if let Some(entry) = self.entries.get_mut(pos) {
                entry.1 = sub;
            }
            return false;
        }
        let pos = self.entries.len();
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), pos);
        }
        reserve_one(&mut self.entries);
        self.entries.push((key, sub));
        if self.index.is_none() && self.entries.len() > SMALL_MAP_MAX {
            let index = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            self.index = Some(Box::new(index));
        }
        true
    }

    /// Removes; true if `key` was there.
    fn remove(&mut self, key: &K) -> bool {
        let Some(pos) = self.position(key) else {
            return false;
        };
        self.entries.swap_remove(pos);
        if let Some(index) = &mut self.index {
            index.remove(key);
            if let Some((moved, _)) = self.entries.get(pos) {
                index.insert(moved.clone(), pos);
            }
            if self.entries.len() <= SMALL_MAP_MAX / 2 {
                self.index = None;
            }
        }
        true
    }
}

/// The members of one share group on one filter.
#[derive(Debug)]
struct SharedGroup<K> {
    name: Arc<str>,
    filter: TopicFilter,
    /// Join order; removal keeps the order of the others.
    members: Vec<(K, Subscription)>,
    /// Round-robin position, advanced by every match.
    next: AtomicUsize,
}

/// One trie node: the filter levels from the root to here.
///
/// 40 bytes: most nodes are leaves (the last level of one filter) stored inline in their
/// parent's children map, so a node's size is paid per filter, in every bucket of that map
/// (issue 10). What only inner nodes and shared groups need is in [`Branches`], boxed and
/// absent on a leaf.
#[derive(Debug)]
struct Node<K> {
    direct: Subscribers<K>,
    /// `None` while the node has no children, no `+`/`#` slot and no shared group.
    branches: Option<Box<Branches<K>>>,
}

/// The rarer parts of a [`Node`]: its children and its shared groups.
#[derive(Debug)]
struct Branches<K> {
    children: HashMap<Box<str>, Node<K>>,
    plus: Option<Box<Node<K>>>,
    hash: Option<Box<Node<K>>>,
    shared: Vec<SharedGroup<K>>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            direct: Subscribers::default(),
            branches: None,
        }
    }
}

impl<K> Default for Branches<K> {
    fn default() -> Self {
        Branches {
            children: HashMap::new(),
            plus: None,
            hash: None,
            shared: Vec::new(),
        }
    }
}

impl<K> Branches<K> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.shared.is_empty()
    }
}

impl<K: Clone + Eq + Hash> Node<K> {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.branches.is_none()
    }

    /// The branches, made on first use.
    fn branches_mut(&mut self) -> &mut Branches<K> {
        self.branches.get_or_insert_with(Box::default)
    }

    /// Drops the branches once nothing is left in them (pruning after a removal).
    fn prune_branches(&mut self) {
        if self.branches.as_ref().is_some_and(|b| b.is_empty()) {
            self.branches = None;
        }
    }

    fn plus(&self) -> Option<&Node<K>> {
        self.branches.as_ref()?.plus.as_deref()
    }

    fn hash(&self) -> Option<&Node<K>> {
        self.branches.as_ref()?.hash.as_deref()
    }

    fn child(&self, level: &str) -> Option<&Node<K>> {
        self.branches.as_ref()?.children.get(level)
    }

    fn shared(&self) -> &[SharedGroup<K>] {
        match &self.branches {
            Some(b) => &b.shared,
            None => &[],
        }
    }

    /// Adds every subscriber at this node to `out`.
    fn collect(&self, publisher: Option<&K>, out: &mut Matches<K>) {
        let first = out.direct.is_empty();
        if !first && !out.indexed && !self.direct.entries.is_empty() {
            out.seen.extend(
                out.direct
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (d.subscriber.clone(), i)),
            );
            out.indexed = true;
        }
        for (key, sub) in &self.direct.entries {
            if sub.options.no_local && publisher == Some(key) {
                continue;
            }
            if first {
                // A node's subscribers are distinct: nothing to aggregate yet.
                out.direct.push(Delivery::new(key, sub));
                continue;
            }
            match out.seen.get(key).and_then(|&i| out.direct.get_mut(i)) {
                Some(delivery) => {
                    delivery.qos = delivery.qos.max(sub.options.qos);
                    delivery.retain_as_published |= sub.options.retain_as_published;
                    if let Some(id) = sub.identifier {
                        delivery.identifiers.push(id);
                    }
                }
                None => {
                    out.seen.insert(key.clone(), out.direct.len());
                    out.direct.push(Delivery::new(key, sub));
                }
            }
        }
        for group in self.shared() {
            if group.members.is_empty() {
                continue;
            }
            let start = group.next.fetch_add(1, Ordering::Relaxed) % group.members.len();
            out.shared.push(SharedMatch {
                group: group.name.clone(),
                filter: group.filter.clone(),
                members: group.members.clone(),
                start,
            });
        }
    }

    /// Matches the remaining topic levels `rest` (`None`: all levels consumed) at this node.
    fn walk(
        &self,
        rest: Option<&str>,
        at_root_of_dollar: bool,
        publisher: Option<&K>,
        out: &mut Matches<K>,
    ) {
        let Some(rest) = rest else {
            self.collect(publisher, out);
            // "sport/#" matches "sport".
            if let Some(hash) = self.hash() {
                hash.collect(publisher, out);
            }
            return;
        };
        let (level, remainder) = match rest.split_once('/') {
            Some((level, remainder)) => (level, Some(remainder)),
            None => (rest, None),
        };
        if !at_root_of_dollar {
            if let Some(hash) = self.hash() {
                hash.collect(publisher, out);
            }
            if let Some(plus) = self.plus() {
                plus.walk(remainder, false, publisher, out);
            }
        }
        if let Some(child) = self.child(level) {
            child.walk(remainder, false, publisher, out);
        }
    }

    /// Removes `subscriber` from the filter whose remaining levels are `levels`, pruning nodes
    /// left empty. Returns (existed, the filter lost its last subscriber of this kind).
    fn remove<'a>(
        &mut self,
        mut levels: impl Iterator<Item = &'a str>,
        group: Option<&str>,
        subscriber: &K,
    ) -> (bool, bool) {
        let Some(level) = levels.next() else {
            let removed = self.remove_here(group, subscriber);
            self.prune_branches();
            return removed;
        };
        let Some(branches) = self.branches.as_deref_mut() else {
            return (false, false);
        };
        let removed = match level {
            "#" | "+" => {
                let slot = if level == "#" {
                    &mut branches.hash
                } else {
                    &mut branches.plus
                };
                let Some(child) = slot.as_deref_mut() else {
                    return (false, false);
                };
                let removed = child.remove(levels, group, subscriber);
                if child.is_empty() {
                    *slot = None;
                }
                removed
            }
            literal => {
                let Some(child) = branches.children.get_mut(literal) else {
                    return (false, false);
                };
                let removed = child.remove(levels, group, subscriber);
                if child.is_empty() {
                    branches.children.remove(literal);
                }
                removed
            }
        };
        self.prune_branches();
        removed
    }

    fn remove_here(&mut self, group: Option<&str>, subscriber: &K) -> (bool, bool) {
        match group {
            None => {
                let existed = self.direct.remove(subscriber);
                (existed, existed && self.direct.is_empty())
            }
            Some(group) => {
                let Some(branches) = self.branches.as_deref_mut() else {
                    return (false, false);
                };
                let Some(g) = branches.shared.iter().position(|g| &*g.name == group) else {
                    return (false, false);
                };
                let Some(shared) = branches.shared.get_mut(g) else {
                    return (false, false);
                };
                let Some(m) = shared.members.iter().position(|(k, _)| k == subscriber) else {
                    return (false, false);
                };
                shared.members.remove(m);
                if shared.members.is_empty() {
                    branches.shared.remove(g);
                    return (true, true);
                }
                (true, false)
            }
        }
    }
}

/// The subscription trie, generic over the subscriber key (client ids, node ids).
///
/// See the module doc for the layout and the aggregation rule.
pub struct SubscriptionIndex<K> {
    root: Node<K>,
    /// (filter, subscriber) pairs, shared ones included.
    subscriptions: usize,
    /// Distinct filters (a shared group on a filter counts as its own filter) with at least one
    /// subscriber.
    filters: usize,
}

impl<K> std::fmt::Debug for SubscriptionIndex<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("subscriptions", &self.subscriptions)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl<K: Clone + Eq + Hash> Default for SubscriptionIndex<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone + Eq + Hash> SubscriptionIndex<K> {
    /// An empty index.
    pub fn new() -> Self {
        SubscriptionIndex {
            root: Node::default(),
            subscriptions: 0,
            filters: 0,
        }
    }

    /// Adds or replaces the subscription of `subscriber` to `filter`. Returns true if this
    /// (filter, subscriber) pair did not exist before (Retain Handling 1, v5 §3.8.3.1).
    ///
    /// A shared filter joins `subscriber` to the group `filter.share_group()`.
    pub fn subscribe(&mut self, filter: &TopicFilter, subscriber: K, sub: Subscription) -> bool {
        let mut node = &mut self.root;
        for level in filter.levels() {
            node = match level {
                "#" => node.branches_mut().hash.get_or_insert_with(Box::default),
                "+" => node.branches_mut().plus.get_or_insert_with(Box::default),
                literal => node
                    .branches_mut()
                    .children
                    .entry(Box::from(literal))
                    .or_default(),
            };
        }
        let (is_new, new_filter) = match filter.share_group() {
            None => {
                let was_empty = node.direct.is_empty();
                let is_new = node.direct.insert(subscriber, sub);
                (is_new, was_empty && is_new)
            }
            Some(group) => match node
                .branches_mut()
                .shared
                .iter_mut()
                .find(|g| &*g.name == group)
            {
                Some(shared) => match shared.members.iter_mut().find(|(k, _)| *k == subscriber) {
                    Some(member) => {
                        member.1 = sub;
                        (false, false)
                    }
                    None => {
                        shared.members.push((subscriber, sub));
                        (true, false)
                    }
                },
                None => {
                    node.branches_mut().shared.push(SharedGroup {
                        name: Arc::from(group),
                        filter: filter.clone(),
                        members: vec![(subscriber, sub)],
                        next: AtomicUsize::new(0),
                    });
                    (true, true)
                }
            },
        };
        self.subscriptions += usize::from(is_new);
        self.filters += usize::from(new_filter);
        is_new
    }

    /// Removes the subscription of `subscriber` to `filter` (for a shared filter: from its
    /// group). Returns true if it existed. Nodes left empty are removed.
    pub fn unsubscribe(&mut self, filter: &TopicFilter, subscriber: &K) -> bool {
        let (existed, filter_gone) =
            self.root
                .remove(filter.levels(), filter.share_group(), subscriber);
        self.subscriptions -= usize::from(existed);
        self.filters -= usize::from(filter_gone);
        existed
    }

    /// Every subscription matching `topic`, written to `out` (cleared first).
    ///
    /// `publisher` implements No Local: a non-shared subscription with `no_local` whose
    /// subscriber is the publisher is skipped ([MQTT-3.8.3-3]; No Local on a shared subscription
    /// is a protocol error, [MQTT-3.8.3-4], so shared ones ignore it).
    pub fn matches(&self, topic: &TopicName, publisher: Option<&K>, out: &mut Matches<K>) {
        out.clear();
        self.root
            .walk(Some(topic.as_str()), topic.is_system(), publisher, out);
        out.seen.clear();
        out.indexed = false;
        for delivery in &mut out.direct {
            if delivery.identifiers.len() > 1 {
                delivery.identifiers.sort_unstable();
                delivery.identifiers.dedup();
            }
        }
    }

    /// The number of (filter, subscriber) pairs, shared ones included.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// The number of distinct filters with at least one subscriber; `$share/g/a`, `$share/h/a`
    /// and `a` are three.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// True if there is no subscription.
    pub fn is_empty(&self) -> bool {
        self.subscriptions == 0
    }
}

#[cfg(test)]
mod tests;
