//! Micro-benchmarks of the subscription index and the retained store.
//!
//! Ids carry the parameters (house style, convention 12): `index/match/subs=100000` is one
//! `matches` call against an index holding 100,000 subscriptions. The subscriptions mix literal,
//! `+` and `#` filters over 100 tenants; the measured topic fans out to about one subscriber in a
//! hundred (1,001 deliveries at 100,000), the shape of a busy multi-tenant broker rather than a
//! best case.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use roost_codec::{QoS, SubscriptionOptions};
use roost_core::index::{Matches, Subscription, SubscriptionIndex};
use roost_core::retained::RetainedStore;
use roost_core::topic::{TopicFilter, TopicLimits, TopicName};
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn filter_for(i: usize) -> TopicFilter {
    let tenant = i % 100;
    let s = match i % 4 {
        0 => format!("t/{tenant}/d/{i}/state"),
        1 => format!("t/{tenant}/d/+/state"),
        2 => format!("t/{tenant}/#"),
        _ => format!("t/+/d/{i}/#"),
    };
    TopicFilter::new(&s, &TopicLimits::default()).unwrap()
}

fn subscription() -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        },
        identifier: None,
    }
}

fn build(n: usize) -> SubscriptionIndex<Arc<str>> {
    let mut index = SubscriptionIndex::new();
    for i in 0..n {
        let client: Arc<str> = Arc::from(format!("client-{i}"));
        index.subscribe(&filter_for(i), client, subscription());
    }
    index
}

fn bench_index(c: &mut Criterion) {
    let topic = TopicName::new("t/42/d/4243/state", &TopicLimits::default()).unwrap();
    for n in [1_000, 100_000] {
        let index = build(n);
        let mut out = Matches::default();
        c.bench_function(&format!("index/match/subs={n}"), |b| {
            b.iter(|| {
                index.matches(black_box(&topic), None, &mut out);
                black_box(out.direct.len())
            })
        });

        let mut index = index;
        let churn = filter_for(n + 1);
        let client: Arc<str> = Arc::from("churn");
        c.bench_function(&format!("index/subscribe_unsubscribe/subs={n}"), |b| {
            b.iter(|| {
                index.subscribe(black_box(&churn), client.clone(), subscription());
                index.unsubscribe(black_box(&churn), &client)
            })
        });
    }
}

fn bench_retained(c: &mut Criterion) {
    let n = 100_000;
    let mut store = RetainedStore::new();
    for i in 0..n {
        let topic = TopicName::new(
            &format!("t/{}/d/{i}/state", i % 100),
            &TopicLimits::default(),
        )
        .unwrap();
        store.set(&topic, Some(i));
    }
    let filter = TopicFilter::new("t/42/#", &TopicLimits::default()).unwrap();
    let mut out = Vec::new();
    c.bench_function(
        &format!("retained/matching/topics={n}/filter=t_42_hash"),
        |b| {
            b.iter(|| {
                out.clear();
                store.matching(black_box(&filter), &mut out);
                black_box(out.len())
            })
        },
    );
}

/// Short runs, so the whole `cargo bench -p roost-core` stays within minutes on 2 cores.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_index, bench_retained
}
criterion_main!(benches);
