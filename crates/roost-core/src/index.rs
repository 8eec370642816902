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
//! share name (`$share/{group}/...` lives at the node of its filter part).
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
    /// Subscriber -> position in `direct`, for aggregation.
    seen: HashMap<K, usize>,
}

impl<K> Default for Matches<K> {
    fn default() -> Self {
        Matches {
            direct: Vec::new(),
            shared: Vec::new(),
            seen: HashMap::new(),
        }
    }
}

impl<K> Matches<K> {
    /// Empties both lists, keeping their capacity.
    pub fn clear(&mut self) {
        self.direct.clear();
        self.shared.clear();
        self.seen.clear();
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
#[derive(Debug)]
struct Subscribers<K> {
    entries: Vec<(K, Subscription)>,
    /// Subscriber -> position in `entries`; only when `entries.len() > SMALL_MAP_MAX`.
    index: Option<HashMap<K, usize>>,
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
        self.entries.push((key, sub));
        if self.index.is_none() && self.entries.len() > SMALL_MAP_MAX {
            let index = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            self.index = Some(index);
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
#[derive(Debug)]
struct Node<K> {
    children: HashMap<Box<str>, Node<K>>,
    plus: Option<Box<Node<K>>>,
    hash: Option<Box<Node<K>>>,
    direct: Subscribers<K>,
    shared: Vec<SharedGroup<K>>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            hash: None,
            direct: Subscribers::default(),
            shared: Vec::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> Node<K> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.direct.is_empty()
            && self.shared.is_empty()
    }

    /// Adds every subscriber at this node to `out`.
    fn collect(&self, publisher: Option<&K>, out: &mut Matches<K>) {
        for (key, sub) in &self.direct.entries {
            if sub.options.no_local && publisher == Some(key) {
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
                    out.direct.push(Delivery {
                        subscriber: key.clone(),
                        qos: sub.options.qos,
                        identifiers: sub.identifier.into_iter().collect(),
                        retain_as_published: sub.options.retain_as_published,
                    });
                }
            }
        }
        for group in &self.shared {
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
            if let Some(hash) = &self.hash {
                hash.collect(publisher, out);
            }
            return;
        };
        let (level, remainder) = match rest.split_once('/') {
            Some((level, remainder)) => (level, Some(remainder)),
            None => (rest, None),
        };
        if !at_root_of_dollar {
            if let Some(hash) = &self.hash {
                hash.collect(publisher, out);
            }
            if let Some(plus) = &self.plus {
                plus.walk(remainder, false, publisher, out);
            }
        }
        if let Some(child) = self.children.get(level) {
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
            return self.remove_here(group, subscriber);
        };
        match level {
            "#" | "+" => {
                let slot = if level == "#" {
                    &mut self.hash
                } else {
                    &mut self.plus
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
                let Some(child) = self.children.get_mut(literal) else {
                    return (false, false);
                };
                let removed = child.remove(levels, group, subscriber);
                if child.is_empty() {
                    self.children.remove(literal);
                }
                removed
            }
        }
    }

    fn remove_here(&mut self, group: Option<&str>, subscriber: &K) -> (bool, bool) {
        match group {
            None => {
                let existed = self.direct.remove(subscriber);
                (existed, existed && self.direct.is_empty())
            }
            Some(group) => {
                let Some(g) = self.shared.iter().position(|g| &*g.name == group) else {
                    return (false, false);
                };
                let Some(shared) = self.shared.get_mut(g) else {
                    return (false, false);
                };
                let Some(m) = shared.members.iter().position(|(k, _)| k == subscriber) else {
                    return (false, false);
                };
                shared.members.remove(m);
                if shared.members.is_empty() {
                    self.shared.remove(g);
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
                "#" => node.hash.get_or_insert_with(Box::default),
                "+" => node.plus.get_or_insert_with(Box::default),
                literal => node.children.entry(Box::from(literal)).or_default(),
            };
        }
        let (is_new, new_filter) = match filter.share_group() {
            None => {
                let was_empty = node.direct.is_empty();
                let is_new = node.direct.insert(subscriber, sub);
                (is_new, was_empty && is_new)
            }
            Some(group) => match node.shared.iter_mut().find(|g| &*g.name == group) {
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
                    node.shared.push(SharedGroup {
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
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::topic::TopicLimits;
    use proptest::prelude::*;
    use roost_codec::RetainHandling;
    use test_case::test_case;

    fn name(s: &str) -> TopicName {
        TopicName::new(s, &TopicLimits::default()).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s, &TopicLimits::default()).unwrap()
    }

    fn sub(qos: QoS, identifier: Option<u32>) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            },
            identifier,
        }
    }

    fn q0() -> Subscription {
        sub(QoS::AtMostOnce, None)
    }

    /// Subscribers (sorted) of the direct deliveries for `topic`.
    fn direct(index: &SubscriptionIndex<&'static str>, topic: &str) -> Vec<&'static str> {
        let mut out = Matches::default();
        index.matches(&name(topic), None, &mut out);
        let mut subs: Vec<_> = out.direct.iter().map(|d| d.subscriber).collect();
        subs.sort_unstable();
        subs
    }

    fn spec_index() -> SubscriptionIndex<&'static str> {
        let mut index = SubscriptionIndex::new();
        for (f, s) in [
            ("sport/tennis/player1/#", "player1_all"),
            ("sport/tennis/+", "tennis_plus"),
            ("sport/#", "sport_all"),
            ("sport/+", "sport_plus"),
            ("+/+", "plus_plus"),
            ("/+", "slash_plus"),
            ("+", "plus"),
            ("#", "all"),
            ("$SYS/#", "sys_all"),
            ("+/monitor/Clients", "monitor"),
            ("$SYS/monitor/+", "sys_monitor"),
            ("sport/tennis/player1", "literal"),
        ] {
            index.subscribe(&filter(f), s, q0());
        }
        index
    }

    #[test_case("sport/tennis/player1", &["all", "literal", "player1_all", "sport_all", "tennis_plus"]; "player1")]
    #[test_case("sport/tennis/player1/ranking", &["all", "player1_all", "sport_all"]; "player1 ranking")]
    #[test_case("sport/tennis/player1/score/wimbledon", &["all", "player1_all", "sport_all"]; "player1 deep")]
    #[test_case("sport", &["all", "plus", "sport_all"]; "sport parent")]
    #[test_case("sport/", &["all", "plus_plus", "sport_all", "sport_plus"]; "sport trailing slash")]
    #[test_case("/finance", &["all", "plus_plus", "slash_plus"]; "leading slash")]
    #[test_case("$SYS/monitor/Clients", &["sys_all", "sys_monitor"]; "dollar sys")]
    #[test_case("$SYS", &["sys_all"]; "dollar sys parent")]
    #[test_case("$other", &[]; "other dollar topic")]
    #[test_case("a/monitor/Clients", &["all", "monitor"]; "monitor")]
    fn matching(topic: &str, expected: &[&str]) {
        let index = spec_index();
        assert_eq!(direct(&index, topic), expected);
    }

    #[test]
    fn overlapping_subscriptions_aggregate() {
        let mut index = SubscriptionIndex::new();
        index.subscribe(&filter("a/+"), "c", sub(QoS::AtLeastOnce, Some(1)));
        index.subscribe(&filter("a/#"), "c", sub(QoS::ExactlyOnce, Some(2)));
        let mut rap = sub(QoS::AtMostOnce, Some(1));
        rap.options.retain_as_published = true;
        index.subscribe(&filter("a/b"), "c", rap);
        index.subscribe(&filter("a/b"), "d", sub(QoS::AtLeastOnce, None));
        let mut out = Matches::default();
        index.matches(&name("a/b"), None, &mut out);
        out.direct.sort_by_key(|d| d.subscriber);
        assert_eq!(
            out.direct,
            vec![
                Delivery {
                    subscriber: "c",
                    qos: QoS::ExactlyOnce,
                    identifiers: vec![1, 2],
                    retain_as_published: true,
                },
                Delivery {
                    subscriber: "d",
                    qos: QoS::AtLeastOnce,
                    identifiers: vec![],
                    retain_as_published: false,
                },
            ]
        );
        assert!(out.shared.is_empty());
    }

    #[test]
    fn subscribe_replaces_and_reports_new() {
        let mut index = SubscriptionIndex::new();
        assert!(index.subscribe(&filter("a/+"), "c", sub(QoS::AtMostOnce, None)));
        assert!(!index.subscribe(&filter("a/+"), "c", sub(QoS::ExactlyOnce, Some(7))));
        assert_eq!(index.subscription_count(), 1);
        assert_eq!(index.filter_count(), 1);
        let mut out = Matches::default();
        index.matches(&name("a/x"), None, &mut out);
        assert_eq!(out.direct.len(), 1);
        assert_eq!(out.direct[0].qos, QoS::ExactlyOnce);
        assert_eq!(out.direct[0].identifiers, [7]);
    }

    #[test]
    fn no_local_skips_only_the_publisher() {
        let mut index = SubscriptionIndex::new();
        let mut nl = q0();
        nl.options.no_local = true;
        index.subscribe(&filter("chat/#"), "alice", nl.clone());
        index.subscribe(&filter("chat/#"), "bob", nl.clone());
        index.subscribe(&filter("$share/g/chat/#"), "alice", q0());
        let mut out = Matches::default();
        index.matches(&name("chat/room"), Some(&"alice"), &mut out);
        let subs: Vec<_> = out.direct.iter().map(|d| d.subscriber).collect();
        assert_eq!(subs, ["bob"]);
        // Shared subscriptions ignore No Local.
        assert_eq!(out.shared.len(), 1);
        assert_eq!(out.shared[0].members[0].0, "alice");
        index.matches(&name("chat/room"), None, &mut out);
        assert_eq!(out.direct.len(), 2);
    }

    #[test]
    fn shared_groups() {
        let mut index = SubscriptionIndex::new();
        assert!(index.subscribe(&filter("$share/g1/jobs/+"), "w1", q0()));
        assert!(index.subscribe(&filter("$share/g1/jobs/+"), "w2", q0()));
        assert!(index.subscribe(&filter("$share/g1/jobs/+"), "w3", q0()));
        assert!(index.subscribe(&filter("$share/g2/jobs/+"), "x1", q0()));
        assert!(!index.subscribe(
            &filter("$share/g2/jobs/+"),
            "x1",
            sub(QoS::AtLeastOnce, None)
        ));
        index.subscribe(&filter("jobs/+"), "plain", q0());
        assert_eq!(index.subscription_count(), 5);
        assert_eq!(index.filter_count(), 3);

        let mut out = Matches::default();
        let mut starts = Vec::new();
        for _ in 0..4 {
            index.matches(&name("jobs/1"), None, &mut out);
            assert_eq!(out.direct.len(), 1);
            assert_eq!(out.shared.len(), 2);
            out.shared.sort_by(|a, b| a.group.cmp(&b.group));
            let g1 = &out.shared[0];
            assert_eq!(&*g1.group, "g1");
            assert_eq!(g1.filter.as_str(), "$share/g1/jobs/+");
            let members: Vec<_> = g1.members.iter().map(|(k, _)| *k).collect();
            assert_eq!(members, ["w1", "w2", "w3"]);
            starts.push(g1.start);
            let g2 = &out.shared[1];
            assert_eq!(g2.members, vec![("x1", sub(QoS::AtLeastOnce, None))]);
            assert_eq!(g2.start, 0);
        }
        assert_eq!(starts, [0, 1, 2, 0]);

        // Leaving keeps the others' order.
        assert!(index.unsubscribe(&filter("$share/g1/jobs/+"), &"w2"));
        assert!(!index.unsubscribe(&filter("$share/g1/jobs/+"), &"w2"));
        assert!(!index.unsubscribe(&filter("$share/g3/jobs/+"), &"w1"));
        index.matches(&name("jobs/1"), None, &mut out);
        let g1 = out.shared.iter().find(|m| &*m.group == "g1").unwrap();
        let members: Vec<_> = g1.members.iter().map(|(k, _)| *k).collect();
        assert_eq!(members, ["w1", "w3"]);
        assert!(g1.start < 2);

        assert!(index.unsubscribe(&filter("$share/g2/jobs/+"), &"x1"));
        assert_eq!(index.filter_count(), 2);
        index.unsubscribe(&filter("$share/g1/jobs/+"), &"w1");
        index.unsubscribe(&filter("$share/g1/jobs/+"), &"w3");
        index.unsubscribe(&filter("jobs/+"), &"plain");
        assert!(index.is_empty());
        assert_eq!(index.filter_count(), 0);
        assert!(index.root.is_empty());
    }

    #[test]
    fn unsubscribe_prunes_and_counts() {
        let mut index = SubscriptionIndex::new();
        index.subscribe(&filter("a/b/c"), "x", q0());
        index.subscribe(&filter("a/b/c"), "y", q0());
        index.subscribe(&filter("a/+/#"), "x", q0());
        index.subscribe(&filter("a"), "x", q0());
        assert_eq!(index.subscription_count(), 4);
        assert_eq!(index.filter_count(), 3);

        assert!(!index.unsubscribe(&filter("a/b"), &"x"));
        assert!(!index.unsubscribe(&filter("a/b/c"), &"z"));
        assert!(!index.unsubscribe(&filter("q/+"), &"x"));
        assert!(index.unsubscribe(&filter("a/b/c"), &"x"));
        assert_eq!(index.filter_count(), 3);
        assert!(index.unsubscribe(&filter("a/b/c"), &"y"));
        assert_eq!(index.filter_count(), 2);
        // "a/b" is gone, "a/+/#" is still there.
        let a = index.root.children.get("a").unwrap();
        assert!(a.children.is_empty());
        assert!(a.plus.is_some());
        assert!(index.unsubscribe(&filter("a/+/#"), &"x"));
        assert!(index.root.children.get("a").unwrap().plus.is_none());
        assert!(index.unsubscribe(&filter("a"), &"x"));
        assert!(index.is_empty());
        assert_eq!(index.filter_count(), 0);
        assert!(index.root.is_empty());
    }

    #[test]
    fn churn_does_not_grow_the_trie() {
        let mut index = SubscriptionIndex::new();
        index.subscribe(&filter("keep/+"), 0u32, q0());
        for i in 0..1000u32 {
            let f = filter(&format!("devices/{i}/+/state/#"));
            index.subscribe(&f, i, q0());
            index.subscribe(&filter(&format!("$share/g{i}/devices/{i}")), i, q0());
            assert!(index.unsubscribe(&f, &i));
            assert!(index.unsubscribe(&filter(&format!("$share/g{i}/devices/{i}")), &i));
        }
        assert_eq!(index.subscription_count(), 1);
        assert_eq!(index.filter_count(), 1);
        assert_eq!(index.root.children.len(), 1);
        assert!(index.root.children.contains_key("keep"));
    }

    #[test]
    fn many_subscribers_on_one_filter() {
        let mut index = SubscriptionIndex::new();
        let f = filter("alerts");
        for i in 0..100u32 {
            assert!(index.subscribe(&f, i, sub(QoS::AtMostOnce, Some(i))));
        }
        assert!(!index.subscribe(&f, 50, sub(QoS::ExactlyOnce, Some(500))));
        for i in (0..100u32).step_by(3) {
            assert!(index.unsubscribe(&f, &i));
            assert!(!index.unsubscribe(&f, &i));
        }
        let mut out = Matches::default();
        index.matches(&name("alerts"), None, &mut out);
        let mut got: Vec<_> = out
            .direct
            .iter()
            .map(|d| (d.subscriber, d.identifiers.clone()))
            .collect();
        got.sort_unstable();
        let expected: Vec<_> = (0..100u32)
            .filter(|i| i % 3 != 0)
            .map(|i| (i, vec![if i == 50 { 500 } else { i }]))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(index.subscription_count(), expected.len());
        for (i, _) in &expected {
            assert!(index.unsubscribe(&f, i));
        }
        assert!(index.is_empty());
        assert!(index.root.is_empty());
    }

    #[test]
    fn dollar_topics_skip_root_wildcards_only() {
        let mut index = SubscriptionIndex::new();
        index.subscribe(&filter("#"), "hash", q0());
        index.subscribe(&filter("+/#"), "plus_hash", q0());
        index.subscribe(&filter("$SYS/#"), "sys", q0());
        index.subscribe(&filter("$share/g/#"), "shared", q0());
        let mut out = Matches::default();
        index.matches(&name("$SYS/broker/load"), None, &mut out);
        let subs: Vec<_> = out.direct.iter().map(|d| d.subscriber).collect();
        assert_eq!(subs, ["sys"]);
        assert!(out.shared.is_empty());
        index.matches(&name("a/$SYS"), None, &mut out);
        assert_eq!(out.direct.len(), 2);
        assert_eq!(out.shared.len(), 1);
    }

    /// Levels drawn from a tiny alphabet so random filters and topics collide often.
    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "", "$s"]), 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("topic names are not empty", |t| !t.is_empty())
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "", "+", "$s"]), 1..5),
            any::<bool>(),
            prop::option::of(prop::sample::select(vec!["g", "h"])),
        )
            .prop_map(|(mut levels, hash, group)| {
                if hash {
                    levels.push("#");
                }
                let f = levels.join("/");
                if f.is_empty() {
                    return "a".to_string();
                }
                match group {
                    Some(g) => format!("$share/{g}/{f}"),
                    None => f,
                }
            })
    }

    proptest! {
        #[test]
        fn matches_agrees_with_brute_force(
            subs in prop::collection::vec((filter_strategy(), 0u8..4, 0u8..3), 0..24),
            unsubs in prop::collection::vec((filter_strategy(), 0u8..4), 0..8),
            topics in prop::collection::vec(topic_strategy(), 1..8),
        ) {
            let mut index = SubscriptionIndex::new();
            // The model: (filter, subscriber) -> qos.
            let mut model: HashMap<(TopicFilter, u8), QoS> = HashMap::new();
            for (f, subscriber, qos) in &subs {
                let f = filter(f);
                let qos = QoS::from_u8(*qos).unwrap();
                let is_new = index.subscribe(&f, *subscriber, sub(qos, Some(u32::from(*subscriber))));
                prop_assert_eq!(is_new, model.insert((f, *subscriber), qos).is_none());
            }
            for (f, subscriber) in &unsubs {
                let f = filter(f);
                let existed = index.unsubscribe(&f, subscriber);
                prop_assert_eq!(existed, model.remove(&(f, *subscriber)).is_some());
            }
            prop_assert_eq!(index.subscription_count(), model.len());
            let distinct: std::collections::HashSet<_> = model.keys().map(|(f, _)| f.clone()).collect();
            prop_assert_eq!(index.filter_count(), distinct.len());

            let mut out = Matches::default();
            for t in &topics {
                let t = name(t);
                index.matches(&t, None, &mut out);
                let mut expected_direct: HashMap<u8, QoS> = HashMap::new();
                let mut expected_shared: HashMap<TopicFilter, Vec<u8>> = HashMap::new();
                for ((f, subscriber), qos) in &model {
                    if !f.matches(&t) {
                        continue;
                    }
                    if f.share_group().is_some() {
                        expected_shared.entry(f.clone()).or_default().push(*subscriber);
                    } else {
                        let e = expected_direct.entry(*subscriber).or_insert(*qos);
                        *e = (*e).max(*qos);
                    }
                }
                let got_direct: HashMap<u8, QoS> = out.direct.iter().map(|d| (d.subscriber, d.qos)).collect();
                prop_assert_eq!(got_direct.len(), out.direct.len(), "one delivery per subscriber");
                prop_assert_eq!(&got_direct, &expected_direct, "topic {}", t);
                for d in &out.direct {
                    prop_assert_eq!(&d.identifiers, &vec![u32::from(d.subscriber)]);
                }
                let mut got_shared: HashMap<TopicFilter, Vec<u8>> = HashMap::new();
                for m in &out.shared {
                    prop_assert!(m.start < m.members.len());
                    prop_assert_eq!(m.filter.share_group(), Some(&*m.group));
                    let mut members: Vec<u8> = m.members.iter().map(|(k, _)| *k).collect();
                    members.sort_unstable();
                    prop_assert!(got_shared.insert(m.filter.clone(), members).is_none());
                }
                for members in expected_shared.values_mut() {
                    members.sort_unstable();
                }
                prop_assert_eq!(got_shared, expected_shared, "topic {}", t);
            }

            // Removing everything leaves an empty trie.
            for (f, subscriber) in model.keys() {
                prop_assert!(index.unsubscribe(f, subscriber));
            }
            prop_assert!(index.is_empty());
            prop_assert_eq!(index.filter_count(), 0);
            prop_assert!(index.root.is_empty());
        }
    }
}
