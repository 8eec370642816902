//! A session's subscriptions: filter → options, ordered by filter.
//!
//! Most sessions hold a handful of subscriptions (an idle device: one), so the few are kept in
//! a sorted vector that grows one entry at a time: one subscription costs one 40-byte entry. A
//! `BTreeMap` would allocate a whole leaf (room for 11 entries, about 450 bytes) for the first
//! one (issue 10: memory per idle connection). Past [`FEW_MAX`] entries the map becomes a
//! `BTreeMap`, so a session with thousands of subscriptions (`mqtt.max_subscriptions`) still
//! inserts and removes in O(log n).
//!
//! Iteration is in filter order in both forms, as a `BTreeMap`'s.

use crate::index::Subscription;
use crate::topic::TopicFilter;
use std::collections::BTreeMap;

/// Above this many entries the subscriptions move to a `BTreeMap`.
const FEW_MAX: usize = 16;

/// A session's subscriptions, ordered by filter. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriptions {
    repr: Repr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    /// Sorted by filter, no duplicate filter; at most [`FEW_MAX`] entries.
    Few(Vec<(TopicFilter, Subscription)>),
    Many(BTreeMap<TopicFilter, Subscription>),
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions::new()
    }
}

impl Subscriptions {
    /// No subscription; allocates nothing.
    pub fn new() -> Subscriptions {
        Subscriptions {
            repr: Repr::Few(Vec::new()),
        }
    }

    /// The number of subscriptions.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Few(v) => v.len(),
            Repr::Many(m) => m.len(),
        }
    }

    /// True if there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The subscription to `filter`, if any.
    pub fn get(&self, filter: &TopicFilter) -> Option<&Subscription> {
        match &self.repr {
            Repr::Few(v) => {
                let i = v.binary_search_by(|(f, _)| f.cmp(filter)).ok()?;
                v.get(i).map(|(_, s)| s)
            }
            Repr::Many(m) => m.get(filter),
        }
    }

    /// True if there is a subscription to `filter`.
    pub fn contains_key(&self, filter: &TopicFilter) -> bool {
        self.get(filter).is_some()
    }

    /// Adds or replaces the subscription to `filter`; returns the one it replaced.
    pub fn insert(&mut self, filter: TopicFilter, sub: Subscription) -> Option<Subscription> {
        let v = match &mut self.repr {
            Repr::Many(m) => return m.insert(filter, sub),
            Repr::Few(v) => v,
        };
        match v.binary_search_by(|(f, _)| f.cmp(&filter)) {
            Ok(i) => v.get_mut(i).map(|(_, s)| std::mem::replace(s, sub)),
            Err(i) if v.len() < FEW_MAX => {
                crate::index::reserve_one(v);
                v.insert(i, (filter, sub));
                None
            }
            Err(_) => {
                let mut m: BTreeMap<_, _> = std::mem::take(v).into_iter().collect();
                m.insert(filter, sub);
                self.repr = Repr::Many(m);
                None
            }
        }
    }

    /// Removes the subscription to `filter`; returns it if it was there.
    pub fn remove(&mut self, filter: &TopicFilter) -> Option<Subscription> {
        match &mut self.repr {
            Repr::Few(v) => {
                let i = v.binary_search_by(|(f, _)| f.cmp(filter)).ok()?;
                Some(v.remove(i).1)
            }
            Repr::Many(m) => {
                let removed = m.remove(filter);
                if m.is_empty() {
                    self.repr = Repr::Few(Vec::new());
                }
                removed
            }
        }
    }

    /// Removes every subscription (and frees their memory).
    pub fn clear(&mut self) {
        self.repr = Repr::Few(Vec::new());
    }

    /// The subscriptions in filter order.
    pub fn iter(&self) -> impl Iterator<Item = (&TopicFilter, &Subscription)> + '_ {
        let (few, many) = match &self.repr {
            Repr::Few(v) => (Some(v.iter().map(|(f, s)| (f, s))), None),
            Repr::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// The filters in order.
    pub fn keys(&self) -> impl Iterator<Item = &TopicFilter> + '_ {
        self.iter().map(|(f, _)| f)
    }

    /// Takes every subscription out, in filter order.
    pub fn take_all(&mut self) -> Vec<(TopicFilter, Subscription)> {
        match std::mem::replace(&mut self.repr, Repr::Few(Vec::new())) {
            Repr::Few(v) => v,
            Repr::Many(m) => m.into_iter().collect(),
        }
    }
}

impl FromIterator<(TopicFilter, Subscription)> for Subscriptions {
    /// Later entries replace earlier ones with the same filter, as in a map.
    fn from_iter<I: IntoIterator<Item = (TopicFilter, Subscription)>>(iter: I) -> Self {
        let mut s = Subscriptions::new();
        for (f, sub) in iter {
            s.insert(f, sub);
        }
        s
    }
}

impl std::ops::Index<&TopicFilter> for Subscriptions {
    type Output = Subscription;

    /// The subscription to `filter`. Panics if there is none, as a map's index does: for
    /// tests and callers that checked.
    fn index(&self, filter: &TopicFilter) -> &Subscription {
        match self.get(filter) {
            Some(s) => s,
            None => panic!("no subscription to {}", filter.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicLimits;
    use roost_codec::{QoS, SubscriptionOptions};

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s, &TopicLimits::default()).expect("a valid filter")
    }

    fn sub(id: u32) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
            identifier: Some(id),
        }
    }

    #[test]
    fn one_subscription_takes_one_entry() {
        let mut s = Subscriptions::new();
        assert!(s.insert(filter("idle/1"), sub(1)).is_none());
        let Repr::Few(v) = &s.repr else {
            panic!("one subscription is few");
        };
        assert_eq!(v.capacity(), 1);
        assert_eq!(s.len(), 1);
    }

    /// Both forms behave as the `BTreeMap` they replace, through the switch and back.
    #[test]
    fn behaves_as_a_btreemap() {
        let mut s = Subscriptions::new();
        let mut m = BTreeMap::new();
        // A fixed pseudo-random walk over 40 filters: inserts, replacements, removes.
        let mut x = 7u32;
        for step in 0..2_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let f = filter(&format!("t/{}", (x >> 8) % 40));
            if (x >> 4).is_multiple_of(3) {
                assert_eq!(s.remove(&f), m.remove(&f), "step {step}");
            } else {
                assert_eq!(s.insert(f.clone(), sub(step)), m.insert(f, sub(step)));
            }
            assert_eq!(s.len(), m.len());
            assert!(s.iter().eq(m.iter()), "step {step}");
            for k in m.keys() {
                assert_eq!(s.get(k), m.get(k));
            }
        }
        assert!(matches!(s.repr, Repr::Many(_)) || m.len() <= FEW_MAX);
        let all: Vec<_> = m.clone().into_iter().collect();
        assert_eq!(s.take_all(), all);
        assert!(s.is_empty());
    }

    #[test]
    fn from_iter_keeps_the_last_of_a_filter() {
        let s: Subscriptions = [(filter("a"), sub(1)), (filter("a"), sub(2))]
            .into_iter()
            .collect();
        assert_eq!(s.len(), 1);
        assert_eq!(s[&filter("a")], sub(2));
    }
}
