//! The retained message store: the last retained PUBLISH of every topic.
//!
//! Owns one message per topic name, generic over the stored message `M` (the broker stores its
//! application message type; the payload inside is shared, so `M: Clone` is cheap). The router
//! calls [`RetainedStore::set`] for every PUBLISH with the RETAIN flag (an empty payload clears,
//! MQTT 5.0 §3.3.1.3); the session calls [`RetainedStore::matching`] when a SUBSCRIBE asks for
//! retained messages; an expiry sweep calls [`RetainedStore::retain`]. Plain `&mut self` / `&self`
//! code with no I/O and no clock: expiry is decided by the caller's closure.
//!
//! # Layout
//!
//! A trie of topic levels. Unlike the subscription index, topics have no wildcards, so a node is
//! only a map of literal children plus the message stored at that exact topic, if any:
//!
//! ```text
//!   topics: sport/tennis   sport/tennis/p1   $SYS/uptime
//!
//!   (root) ── "sport" ── "tennis" ── msg(sport/tennis)
//!     │                     └─ "p1" ── msg(sport/tennis/p1)
//!     └─ "$SYS" ── "uptime" ── msg($SYS/uptime)
//! ```
//!
//! [`RetainedStore::matching`] walks the trie by the filter's levels: a literal level is one
//! look-up, `+` visits every child, `#` takes the whole subtree (and the node itself: `sport/#`
//! matches `sport`). At the root, `+` and `#` skip children starting with `$` ([MQTT-4.7.2-1]).
//! Nodes left empty by a clear or an expiry are pruned. Walk depth is bounded by
//! [`crate::topic::TopicLimits::max_levels`].

use crate::topic::{TopicFilter, TopicName};
use std::collections::HashMap;

/// One trie node: the topic levels from the root to here.
#[derive(Debug)]
struct Node<M> {
    children: HashMap<Box<str>, Node<M>>,
    /// The message retained on exactly this topic.
    message: Option<(TopicName, M)>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            message: None,
        }
    }
}

impl<M: Clone> Node<M> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }

    /// Removes the message at the remaining `levels`, pruning nodes left empty.
    fn remove<'a>(&mut self, mut levels: impl Iterator<Item = &'a str>) -> Option<M> {
        let Some(level) = levels.next() else {
            return self.message.take().map(|(_, m)| m);
        };
        let child = self.children.get_mut(level)?;
        let removed = child.remove(levels);
        if child.is_empty() {
            self.children.remove(level);
        }
        removed
    }

    /// Appends the messages matching the remaining filter levels `rest` (`None`: all consumed).
    fn collect_matching(&self, rest: Option<&str>, at_root: bool, out: &mut Vec<M>) {
        let Some(rest) = rest else {
            self.push_message(out);
            return;
        };
        let (level, remainder) = match rest.split_once('/') {
            Some((level, remainder)) => (level, Some(remainder)),
            None => (rest, None),
        };
        match level {
            "#" => {
                // The parent level ("sport/#" matches "sport"), then everything below.
                self.push_message(out);
                for (key, child) in &self.children {
                    if at_root && key.starts_with('$') {
                        continue;
                    }
                    child.collect_all(out);
                }
            }
            "+" => {
                for (key, child) in &self.children {
                    if at_root && key.starts_with('$') {
                        continue;
                    }
                    child.collect_matching(remainder, false, out);
                }
            }
            literal => {
                if let Some(child) = self.children.get(literal) {
                    child.collect_matching(remainder, false, out);
                }
            }
        }
    }

    fn collect_all(&self, out: &mut Vec<M>) {
        self.push_message(out);
        for child in self.children.values() {
            child.collect_all(out);
        }
    }

    fn push_message(&self, out: &mut Vec<M>) {
        if let Some((_, message)) = &self.message {
            out.push(message.clone());
        }
    }

    /// Drops the messages `keep` rejects, pruning nodes left empty; returns how many.
    fn retain(&mut self, keep: &mut impl FnMut(&M) -> bool) -> usize {
        let mut removed = 0;
        if let Some((_, message)) = &self.message {
            if !keep(message) {
                self.message = None;
                removed += 1;
            }
        }
        self.children.retain(|_, child| {
            removed += child.retain(keep);
            !child.is_empty()
        });
        removed
    }
}

/// Retained messages by topic (see the module doc).
#[derive(Debug)]
pub struct RetainedStore<M> {
    root: Node<M>,
    /// Number of stored messages.
    len: usize,
}

impl<M: Clone> Default for RetainedStore<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Clone> RetainedStore<M> {
    /// An empty store.
    pub fn new() -> Self {
        RetainedStore {
            root: Node::default(),
            len: 0,
        }
    }

    /// Stores or replaces (`Some`) or clears (`None`, a retained PUBLISH with an empty payload)
    /// the message retained on `topic`. Returns the previous one.
    pub fn set(&mut self, topic: &TopicName, msg: Option<M>) -> Option<M> {
        let previous = match msg {
            Some(msg) => {
                let mut node = &mut self.root;
                for level in topic.levels() {
                    node = node.children.entry(Box::from(level)).or_default();
                }
                let previous = node.message.replace((topic.clone(), msg));
                self.len += 1;
                previous.map(|(_, m)| m)
            }
            None => self.root.remove(topic.levels()),
        };
        self.len -= usize::from(previous.is_some());
        previous
    }

    /// The message retained on `topic`.
    pub fn get(&self, topic: &TopicName) -> Option<&M> {
        let mut node = &self.root;
        for level in topic.levels() {
            node = node.children.get(level)?;
        }
        node.message.as_ref().map(|(_, m)| m)
    }

    /// Appends to `out` every retained message whose topic matches `filter` (its filter part
    /// for a shared filter), in unspecified order.
    pub fn matching(&self, filter: &TopicFilter, out: &mut Vec<M>) {
        self.root.collect_matching(Some(filter.filter()), true, out);
    }

    /// Removes the messages for which `keep` returns false (message expiry); returns how many
    /// were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&M) -> bool) -> usize {
        let removed = self.root.retain(&mut keep);
        self.len -= removed;
        removed
    }

    /// The number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no message is retained.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every (topic, message) pair, in unspecified order (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &M)> {
        Iter {
            stack: vec![&self.root],
        }
    }
}

/// Depth-first iterator over the trie with an explicit stack.
struct Iter<'a, M> {
    stack: Vec<&'a Node<M>>,
}

impl<'a, M> Iterator for Iter<'a, M> {
    type Item = (&'a str, &'a M);

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(node) = self.stack.pop() {
            self.stack.extend(node.children.values());
            if let Some((topic, message)) = &node.message {
                return Some((topic.as_str(), message));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::topic::TopicLimits;
    use proptest::prelude::*;
    use test_case::test_case;

    fn name(s: &str) -> TopicName {
        TopicName::new(s, &TopicLimits::default()).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s, &TopicLimits::default()).unwrap()
    }

    const TOPICS: &[&str] = &[
        "sport",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/football",
        "sport/",
        "/finance",
        "a//b",
        "$SYS/uptime",
        "$SYS/monitor/Clients",
        "x/monitor/Clients",
    ];

    /// A store whose message is its own topic.
    fn store() -> RetainedStore<String> {
        let mut store = RetainedStore::new();
        for t in TOPICS {
            assert_eq!(store.set(&name(t), Some(t.to_string())), None);
        }
        store
    }

    fn matching(store: &RetainedStore<String>, f: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(&filter(f), &mut out);
        out.sort_unstable();
        out
    }

    #[test_case("#", &["/finance", "a//b", "sport", "sport/", "sport/football", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking", "x/monitor/Clients"]; "hash excludes dollar")]
    #[test_case("sport/#", &["sport", "sport/", "sport/football", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking"]; "sport hash")]
    #[test_case("sport/tennis/player1/#", &["sport/tennis/player1", "sport/tennis/player1/ranking"]; "player1 hash")]
    #[test_case("sport/+", &["sport/", "sport/football", "sport/tennis"]; "sport plus")]
    #[test_case("sport/+/player1", &["sport/tennis/player1"]; "plus middle")]
    #[test_case("+", &["sport"]; "plus alone")]
    #[test_case("+/+", &["/finance", "sport/", "sport/football", "sport/tennis"]; "plus plus")]
    #[test_case("/+", &["/finance"]; "slash plus")]
    #[test_case("+/monitor/Clients", &["x/monitor/Clients"]; "plus excludes dollar")]
    #[test_case("$SYS/#", &["$SYS/monitor/Clients", "$SYS/uptime"]; "dollar sys hash")]
    #[test_case("$SYS/+", &["$SYS/uptime"]; "dollar sys plus")]
    #[test_case("a/+/b", &["a//b"]; "plus empty level")]
    #[test_case("sport/tennis", &["sport/tennis"]; "literal")]
    #[test_case("sport/tennis/player2", &[]; "missing literal")]
    #[test_case("$share/g/sport/+", &["sport/", "sport/football", "sport/tennis"]; "shared uses filter part")]
    fn matching_table(f: &str, expected: &[&str]) {
        assert_eq!(matching(&store(), f), expected);
    }

    #[test]
    fn set_get_replace_clear() {
        let mut store = RetainedStore::new();
        assert!(store.is_empty());
        assert_eq!(store.set(&name("a/b"), Some(1)), None);
        assert_eq!(store.set(&name("a/b"), Some(2)), Some(1));
        assert_eq!(store.set(&name("a"), Some(3)), None);
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(&name("a/b")), Some(&2));
        assert_eq!(store.get(&name("a")), Some(&3));
        assert_eq!(store.get(&name("a/b/c")), None);
        assert_eq!(store.get(&name("b")), None);
        assert_eq!(store.set(&name("a/b/c"), None), None);
        assert_eq!(store.set(&name("zzz"), None), None);
        assert_eq!(store.len(), 2);
        assert_eq!(store.set(&name("a/b"), None), Some(2));
        assert_eq!(store.get(&name("a/b")), None);
        assert_eq!(store.len(), 1);
        // "a" keeps its message; its child "b" is pruned.
        assert!(store.root.children.get("a").unwrap().children.is_empty());
        assert_eq!(store.set(&name("a"), None), Some(3));
        assert!(store.is_empty());
        assert!(store.root.is_empty());
    }

    #[test]
    fn clear_keeps_descendants() {
        let mut store = RetainedStore::new();
        store.set(&name("a"), Some(1));
        store.set(&name("a/b/c"), Some(2));
        assert_eq!(store.set(&name("a"), None), Some(1));
        assert_eq!(store.get(&name("a/b/c")), Some(&2));
        assert_eq!(store.set(&name("a/b/c"), None), Some(2));
        assert!(store.root.is_empty());
    }

    #[test]
    fn retain_removes_and_prunes() {
        let mut store = RetainedStore::new();
        for (i, t) in TOPICS.iter().enumerate() {
            store.set(&name(t), Some(i));
        }
        let removed = store.retain(|i| i % 2 == 0);
        assert_eq!(removed, TOPICS.len() / 2);
        assert_eq!(store.len(), TOPICS.len() - removed);
        for (i, t) in TOPICS.iter().enumerate() {
            assert_eq!(store.get(&name(t)).is_some(), i % 2 == 0, "{t}");
        }
        assert_eq!(store.retain(|_| false), TOPICS.len() - removed);
        assert!(store.is_empty());
        assert!(store.root.is_empty());
    }

    #[test]
    fn iter_yields_every_message() {
        let store = store();
        let mut got: Vec<_> = store
            .iter()
            .map(|(t, m)| (t.to_string(), m.clone()))
            .collect();
        got.sort_unstable();
        let mut expected: Vec<_> = TOPICS
            .iter()
            .map(|t| (t.to_string(), t.to_string()))
            .collect();
        expected.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(RetainedStore::<u8>::new().iter().count(), 0);
    }

    #[test]
    fn churn_does_not_grow_the_trie() {
        let mut store = RetainedStore::new();
        store.set(&name("keep"), Some(0));
        for i in 0..1000 {
            let t = name(&format!("devices/{i}/state"));
            store.set(&t, Some(i));
            assert_eq!(store.set(&t, None), Some(i));
        }
        assert_eq!(store.len(), 1);
        assert_eq!(store.root.children.len(), 1);
    }

    /// Levels drawn from a tiny alphabet so random filters and topics collide often.
    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "", "$s"]), 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("topic names are not empty", |t| !t.is_empty())
    }

    proptest! {
        #[test]
        fn matching_agrees_with_brute_force(
            topics in prop::collection::vec(topic(), 0..24),
            cleared in prop::collection::vec(topic(), 0..8),
            filters in prop::collection::vec(
                (prop::collection::vec(prop::sample::select(vec!["a", "b", "", "+", "$s"]), 1..5), any::<bool>()),
                1..8,
            ),
        ) {
            let mut store = RetainedStore::new();
            let mut model = std::collections::BTreeMap::new();
            for t in &topics {
                prop_assert_eq!(store.set(&name(t), Some(t.clone())), model.insert(t.clone(), t.clone()));
            }
            for t in &cleared {
                prop_assert_eq!(store.set(&name(t), None), model.remove(t));
            }
            prop_assert_eq!(store.len(), model.len());
            for (levels, hash) in &filters {
                let mut f = levels.join("/");
                if *hash {
                    f.push_str("/#");
                }
                if f.is_empty() {
                    f.push('#');
                }
                let f = filter(&f);
                let mut got = Vec::new();
                store.matching(&f, &mut got);
                got.sort_unstable();
                let expected: Vec<String> =
                    model.keys().filter(|t| f.matches(&name(t))).cloned().collect();
                prop_assert_eq!(got, expected, "filter {}", f);
            }
            store.retain(|_| false);
            prop_assert!(store.root.is_empty());
        }
    }
}
