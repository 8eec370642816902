//! Micro-benchmark of the in-core part of a fan-out: one PUBLISH matched to 10,000 local
//! subscribers and queued into each one's session.
//!
//! Ids carry the parameters (house style, convention 12):
//!
//! - `fanout/match/subscribers=10000`: [`SubscriptionIndex::matches`] producing the 10,000
//!   deliveries, nothing else.
//! - `fanout/match_deliver/qos=Q/subscribers=10000`: the match, then for each delivery what
//!   roost-node's `route_local` does with it: grant `min(message QoS, subscription QoS)`, move
//!   the subscription identifiers out, [`Session::deliver`] into that subscriber's session.
//!   Throughput is deliveries per second.
//!
//! Not included, because they are roost-node's: the per-session mutex, the congestion check
//! and the driver wake-up. The 10,000 sessions are v5, connected, with default limits (window
//! 32); half subscribe to `fleet/eu/firmware`, half to `fleet/+/firmware` (so two trie nodes
//! contribute and the aggregation map is used, as for any topic matched by several filters),
//! at QoS 1. The index key is the session's position in a `Vec` (roost-node's `SessionRef`
//! hashes a pointer: as cheap).
//!
//! Each timed iteration is followed by an untimed drain (each session's outbox taken, its
//! QoS 1 PUBLISH acknowledged), so every iteration finds the sessions empty with the window
//! open: the message is sent, not queued.

#![allow(missing_docs)]

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use roost_codec::QoS;
use roost_core::index::{Matches, SubscriptionIndex};
use roost_core::message::Message;
use roost_core::session::{Outbound, Session};
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SUBSCRIBERS: u32 = 10_000;
const TOPIC: &str = "fleet/eu/firmware";

struct Fanout {
    index: SubscriptionIndex<u32>,
    sessions: Vec<Session>,
    matches: Matches<u32>,
    outbox: VecDeque<Outbound>,
}

impl Fanout {
    fn new(now: Instant) -> Fanout {
        let exact = common::filter(TOPIC);
        let wildcard = common::filter("fleet/+/firmware");
        let sub = common::subscription();
        let mut index = SubscriptionIndex::new();
        let mut sessions = Vec::new();
        for k in 0..SUBSCRIBERS {
            let filter = if k % 2 == 0 { &exact } else { &wildcard };
            let mut s = common::connected(&format!("device-{k:06}"), now);
            s.add_subscription(filter.clone(), sub.clone());
            index.subscribe(filter, k, sub.clone());
            sessions.push(s);
        }
        Fanout {
            index,
            sessions,
            matches: Matches::default(),
            outbox: VecDeque::new(),
        }
    }

    /// The timed part: match, then deliver to every subscriber. Returns the deliveries made.
    fn publish(&mut self, msg: &Arc<Message>, now: Instant) -> usize {
        self.index.matches(&msg.topic, None, &mut self.matches);
        let mut n = 0;
        for d in self.matches.direct.drain(..) {
            let Some(session) = self.sessions.get_mut(d.subscriber as usize) else {
                continue;
            };
            let qos = msg.qos.min(d.qos);
            let retain = d.retain_as_published && msg.retain;
            black_box(session.deliver(msg.clone(), qos, retain, d.identifiers, None, now));
            n += 1;
        }
        n
    }

    /// The untimed part: each session's PUBLISH taken (as the driver would) and acknowledged.
    fn drain(&mut self, now: Instant) {
        for s in &mut self.sessions {
            s.take_outbox(&mut self.outbox);
            for o in self.outbox.drain(..) {
                if let Outbound::Publish(p) = o {
                    if let Some(id) = p.packet_id {
                        let acked = s.handle_puback(id, now);
                        debug_assert_eq!(acked, Ok(()));
                    }
                }
            }
        }
    }
}

fn message(qos: QoS) -> Arc<Message> {
    common::message(TOPIC, qos, "firmware-service")
}

fn bench_fanout(c: &mut Criterion) {
    let now = Instant::now();
    let mut f = Fanout::new(now);
    let topic = common::topic(TOPIC);

    f.index.matches(&topic, None, &mut f.matches);
    assert_eq!(
        f.matches.direct.len(),
        SUBSCRIBERS as usize,
        "every subscriber matches"
    );

    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(u64::from(SUBSCRIBERS)));
    group.bench_function(format!("match/subscribers={SUBSCRIBERS}"), |b| {
        b.iter(|| {
            f.index.matches(black_box(&topic), None, &mut f.matches);
            f.matches.direct.len()
        })
    });

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let msg = message(qos);
        let id = format!("match_deliver/qos={}/subscribers={SUBSCRIBERS}", qos as u8);
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let n = f.publish(&msg, now);
                    total += start.elapsed();
                    debug_assert_eq!(n, SUBSCRIBERS as usize);
                    f.drain(now);
                }
                total
            })
        });
        for s in &mut f.sessions {
            let drops = s.take_drops();
            assert_eq!(drops.queue_full + drops.offline_qos0, 0, "nothing dropped");
            assert_eq!((s.inflight_len(), s.queued_len()), (0, 0), "drained");
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_fanout
}
criterion_main!(benches);
