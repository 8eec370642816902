//! [`PublishDecisions`]: a session's small memo of `mqtt:Publish` decisions by topic.

use super::{Action, Decision, PrincipalPolicies, Resource};
use std::collections::HashMap;

/// The last `mqtt:Publish` decisions of one session, by topic name, so that a device publishing
/// to the same few topics pays for policy evaluation once per topic, not once per message.
///
/// Bounded by [`PublishDecisions::MAX_ENTRIES`] topics and [`PublishDecisions::MAX_BYTES`]
/// bytes of topic names. Eviction is deliberately simple: when an insert would pass either
/// bound, the whole cache is emptied first (a device with more topics than that gets no
/// benefit, and pays no bookkeeping either). A topic longer than `MAX_BYTES` is not cached.
///
/// Every entry belongs to one policy store version: a lookup with another version (the session
/// re-resolved its [`PrincipalPolicies`] after a policy change) misses, and the insert that
/// follows empties the cache first, so a decision never outlives the policy it came from.
///
/// Only `mqtt:Publish` is cached. `mqtt:Retain` is checked only for retained messages, and a
/// session that wants to cache `mqtt:Receive` keeps a second map of its own.
#[derive(Debug, Default)]
pub struct PublishDecisions {
    /// The store version of every entry; `None` before the first insert.
    version: Option<u64>,
    entries: HashMap<Box<str>, Decision>,
    /// The sum of the cached topic names' lengths.
    bytes: usize,
}

impl PublishDecisions {
    /// At most this many topics are cached.
    pub const MAX_ENTRIES: usize = 64;
    /// At most this many bytes of topic names are cached (8 KiB).
    pub const MAX_BYTES: usize = 8 * 1024;

    /// An empty cache. Allocates nothing until the first insert.
    pub fn new() -> PublishDecisions {
        PublishDecisions::default()
    }

    /// The decision for publishing to `topic`: from the cache if it holds one for this
    /// version of the policies, else evaluated by `policies` and remembered.
    pub fn check(&mut self, policies: &PrincipalPolicies, topic: &str) -> Decision {
        if let Some(decision) = self.get(policies.version(), topic) {
            return decision;
        }
        let decision = policies.check(Action::Publish, Resource::Topic(topic));
        self.insert(policies.version(), topic, decision);
        decision
    }

    /// The cached decision for `topic`, if there is one for store `version`.
    pub fn get(&self, version: u64, topic: &str) -> Option<Decision> {
        if self.version != Some(version) {
            return None;
        }
        self.entries.get(topic).copied()
    }

    /// Remembers `decision` for `topic` under store `version`, emptying the cache first if it
    /// holds another version's decisions or is full.
    pub fn insert(&mut self, version: u64, topic: &str, decision: Decision) {
        if self.version != Some(version) {
            self.clear();
            self.version = Some(version);
        }
        if topic.len() > Self::MAX_BYTES || self.entries.contains_key(topic) {
            return;
        }
        if self.entries.len() >= Self::MAX_ENTRIES || self.bytes + topic.len() > Self::MAX_BYTES {
            self.clear();
        }
        self.bytes += topic.len();
        self.entries.insert(topic.into(), decision);
    }

    /// Forgets every decision.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// How many topics are cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many bytes of topic names are cached.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
