//! Micro-benchmarks of the subscription index and the retained store.
//!
//! Ids carry the parameters (house style, convention 12): `index/match/subs=100000` is one
//! `matches` call against an index holding 100,000 subscriptions. The subscriptions mix literal,
//! `+` and `#` filters over 100 tenants; the measured topic fans out to about one subscriber in a
//! hundred (1,001 deliveries at 100,000), the shape of a busy multi-tenant broker rather than a
//! best case.

#![allow(missing_docs)]

mod common;

use common::{subscription, topic};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use roost_core::index::{Matches, SubscriptionIndex};
use roost_core::retained::RetainedStore;
use roost_core::topic::TopicFilter;
use std::sync::Arc;

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
    common::filter(&s)
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
    let topic = topic("t/42/d/4243/state");
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
        store.set(&topic(&format!("t/{}/d/{i}/state", i % 100)), Some(i));
    }
    let filter = common::filter("t/42/#");
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

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_index, bench_retained
}
criterion_main!(benches);
