//! Unit tests for the subscription index: the spec's matching table (`test_case`), overlapping
//! subscriptions, no-local, `$share` groups, pruning on unsubscribe, churn, `$` topics, and a
//! property test against brute-force matching that also checks the trie is left empty. A child
//! module of `index`, so it may look at private state such as `root`.

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
    let a = index.root.child("a").unwrap();
    assert!(a.branches.as_ref().unwrap().children.is_empty());
    assert!(a.plus().is_some());
    assert!(index.unsubscribe(&filter("a/+/#"), &"x"));
    // Nothing but its own subscriber left: the leaf lost its branches.
    assert!(index.root.child("a").unwrap().branches.is_none());
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
    let root = index.root.branches.as_ref().unwrap();
    assert_eq!(root.children.len(), 1);
    assert!(root.children.contains_key("keep"));
    assert!(root.plus.is_none() && root.hash.is_none() && root.shared.is_empty());
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

/// Issue 10: a leaf costs its size in its parent's children map, for every unique filter.
#[test]
fn a_leaf_is_small_and_a_lone_subscriber_takes_one_entry() {
    assert_eq!(std::mem::size_of::<Node<std::sync::Arc<str>>>(), 40);
    let mut index = SubscriptionIndex::new();
    index.subscribe(&filter("idle/1"), "x", q0());
    let leaf = index.root.child("idle").unwrap().child("1").unwrap();
    assert!(leaf.branches.is_none());
    assert_eq!(leaf.direct.entries.capacity(), 1);
    for (i, c) in ["y", "z", "w"].into_iter().enumerate() {
        index.subscribe(&filter("idle/1"), c, q0());
        let leaf = index.root.child("idle").unwrap().child("1").unwrap();
        assert_eq!(leaf.direct.entries.capacity(), i + 2);
    }
}
