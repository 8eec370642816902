//! Micro-benchmarks of the subscription index at 10k, 100k and 1M subscriptions: matching one
//! topic (a hit and a miss), subscribing and unsubscribing.
//!
//! Ids carry the parameters (house style, convention 12): `matching/match_hit/subs=100000` is
//! one [`SubscriptionIndex::matches`] call against an index holding 100,000 subscriptions.
//!
//! # The subscriptions
//!
//! A multi-tenant device fleet: tenants of 250 devices, four subscriptions per device, each
//! subscription its own subscriber (a `u32`: roost-node keys the index by `SessionRef`, which
//! hashes and compares a pointer, so a small integer key costs the same). For subscription
//! `i`, device `d = i / 4`, tenant `t = d / 250`:
//!
//! ```text
//!   i % 4 = 0   tenant/{t}/devices/{d}/commands          exact (the device itself)
//!   i % 4 = 1   tenant/{t}/devices/{d}/telemetry         exact (its digital twin)
//!   i % 4 = 2   tenant/{t}/devices/{d}/config/+          `+`
//!   i % 4 = 3   by d % 10:
//!       0..=5   tenant/{t}/devices/{d}/ota/#             `#`
//!       6..=7   tenant/{t}/devices/+/telemetry           tenant-wide `+` (50 per tenant)
//!       8       tenant/{t}/alerts/#                      tenant-wide `#` (25 per tenant)
//!       9       $share/g{d % 3}/tenant/{t}/devices/+/telemetry   (3 groups, 25 members)
//! ```
//!
//! So 50% exact filters, 40% per-device wildcards, 7.5% tenant-wide wildcards and 2.5%
//! shared members. The hit topic `tenant/{t}/devices/{d}/telemetry` matches the same set at
//! every size (1 exact + 50 tenant-wide = 51 direct deliveries, from two trie nodes so the
//! aggregation map is used, and 3 shared groups); the miss `tenant/{t}/devices/{d}/state`
//! walks every level and matches nothing. Growing the index adds tenants, so what changes with
//! the size is the cost of the hash look-ups and the cache misses, not the fan-out.
//!
//! Subscribe and unsubscribe are measured on the full index with the next 1,024
//! subscriptions of the same pattern (256 new devices, partly in a new tenant), pre-built
//! [`TopicFilter`]s: each timed batch of subscribes is undone untimed (and each timed batch of
//! unsubscribes prepared untimed), so the index stays at its size.
//!
//! Each size's index is built once, outside the measures; the build time and the process's
//! resident memory are printed to stderr (`build: ...`) for the results file.

#![allow(missing_docs)]

mod common;

use common::{subscription, topic};
use criterion::{criterion_group, criterion_main, Criterion};
use roost_core::index::{Matches, SubscriptionIndex};
use roost_core::topic::TopicFilter;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SIZES: [u32; 3] = [10_000, 100_000, 1_000_000];
const DEVICES_PER_TENANT: u32 = 250;
/// Subscriptions added (or removed) per timed batch in the subscribe/unsubscribe benches.
const CHURN: u32 = 1024;

fn filter_string(i: u32) -> String {
    let d = i / 4;
    let t = d / DEVICES_PER_TENANT;
    match i % 4 {
        0 => format!("tenant/{t}/devices/{d}/commands"),
        1 => format!("tenant/{t}/devices/{d}/telemetry"),
        2 => format!("tenant/{t}/devices/{d}/config/+"),
        _ => match d % 10 {
            0..=5 => format!("tenant/{t}/devices/{d}/ota/#"),
            6 | 7 => format!("tenant/{t}/devices/+/telemetry"),
            8 => format!("tenant/{t}/alerts/#"),
            _ => format!("$share/g{}/tenant/{t}/devices/+/telemetry", d % 3),
        },
    }
}

fn filter(i: u32) -> TopicFilter {
    common::filter(&filter_string(i))
}

/// Resident set size of this process in MiB (Linux; `None` elsewhere).
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn build(n: u32) -> SubscriptionIndex<u32> {
    let before = rss_mib();
    let start = Instant::now();
    let mut index = SubscriptionIndex::new();
    let sub = subscription();
    for i in 0..n {
        index.subscribe(&filter(i), i, sub.clone());
    }
    let took = start.elapsed();
    let mib = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |m| format!("{m:.0} MiB"));
    eprintln!(
        "build: subs={n} filters={} in {:.2} s; RSS {} before, {} after",
        index.filter_count(),
        took.as_secs_f64(),
        mib(before),
        mib(rss_mib()),
    );
    index
}

/// Times `timed` over `iters` subscriptions of the churn pool, running `untimed` on each
/// batch around it so the index ends every batch at its starting size.
fn churn(
    index: &mut SubscriptionIndex<u32>,
    pool: &[(TopicFilter, u32)],
    iters: u64,
    subscribe_timed: bool,
) -> Duration {
    let sub = subscription();
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let k = usize::try_from((iters - done).min(pool.len() as u64))
            .expect("a batch is at most the pool's length");
        let batch = &pool[..k];
        if subscribe_timed {
            let start = Instant::now();
            for (f, key) in batch {
                black_box(index.subscribe(f, *key, sub.clone()));
            }
            total += start.elapsed();
            for (f, key) in batch {
                index.unsubscribe(f, key);
            }
        } else {
            for (f, key) in batch {
                index.subscribe(f, *key, sub.clone());
            }
            let start = Instant::now();
            for (f, key) in batch {
                black_box(index.unsubscribe(f, key));
            }
            total += start.elapsed();
        }
        done += k as u64;
    }
    total
}

fn bench_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("matching");
    for n in SIZES {
        let mut index = build(n);
        let d = n / 4 / 2 + 7;
        let t = d / DEVICES_PER_TENANT;
        let hit = topic(&format!("tenant/{t}/devices/{d}/telemetry"));
        let miss = topic(&format!("tenant/{t}/devices/{d}/state"));
        let mut out = Matches::default();

        index.matches(&hit, None, &mut out);
        assert_eq!(
            (out.direct.len(), out.shared.len()),
            (51, 3),
            "the hit topic's fan-out does not depend on the size"
        );
        index.matches(&miss, None, &mut out);
        assert!(out.is_empty(), "the miss topic matches nothing");

        group.bench_function(format!("match_hit/subs={n}"), |b| {
            b.iter(|| {
                index.matches(black_box(&hit), None, &mut out);
                out.direct.len() + out.shared.len()
            })
        });
        group.bench_function(format!("match_miss/subs={n}"), |b| {
            b.iter(|| {
                index.matches(black_box(&miss), None, &mut out);
                out.direct.len() + out.shared.len()
            })
        });

        let pool: Vec<(TopicFilter, u32)> = (n..n + CHURN).map(|i| (filter(i), i)).collect();
        group.bench_function(format!("subscribe/subs={n}"), |b| {
            b.iter_custom(|iters| churn(&mut index, &pool, iters, true))
        });
        group.bench_function(format!("unsubscribe/subs={n}"), |b| {
            b.iter_custom(|iters| churn(&mut index, &pool, iters, false))
        });
        assert_eq!(index.subscription_count(), n as usize, "churn undone");
        // Freed before the next size is built.
        drop(index);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_matching
}
criterion_main!(benches);
