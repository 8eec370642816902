//! Micro-benchmarks of the sans-IO session's QoS flows, one whole flow per iteration.
//!
//! Ids carry the parameters (house style, convention 12). Every flow runs on one v5 session
//! connected with [`Session::connect`] (Receive Maximum 65,535, no topic aliases, default
//! [`SessionLimits`]: a window of 32), a 256-byte payload on `devices/000042/commands`, and
//! ends where it started (nothing in flight, nothing queued), so iterations are alike:
//!
//! - `session/outbound/qos=1`: [`Session::deliver`] (window open: sent), `take_outbox`,
//!   [`Session::prepare_publish_packet`] (the PUBLISH the driver encodes), then the client's
//!   PUBACK through [`Session::handle`].
//! - `session/outbound/qos=2`: the same to the PUBLISH, then PUBREC through `handle`, the
//!   PUBREL taken from the outbox (`ack_packet`), then PUBCOMP through `handle`.
//! - `session/inbound/qos=1`: a client PUBLISH through `handle` (the payload copied once out
//!   of the read buffer, the `Message` built), then the PUBACK packet for a matched message.
//! - `session/inbound/qos=2`: the same with PUBREC, then the client's PUBREL through `handle`
//!   and the PUBCOMP taken from the outbox.
//!
//! The decoded client PUBLISH of the inbound flows is cloned outside the timed region
//! (`iter_batched`); acknowledgement packets are built inside it (they allocate nothing).
//! Encoding is not included (see roost-codec's benches).

#![allow(missing_docs)]

mod common;

use bytes::Bytes;
use common::PAYLOAD;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use roost_codec::{Ack, Packet, PacketId, Properties, Publish, QoS};
use roost_core::message::Message;
use roost_core::session::{Delivered, Handled, Outbound, PublishOutcome, Session};
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPIC: &str = "devices/000042/commands";

fn connected(now: Instant) -> Session {
    common::connected("device-000042", now)
}

fn message(qos: QoS) -> Arc<Message> {
    common::message(TOPIC, qos, "backend-1")
}

/// Delivers `msg`, takes the PUBLISH out of the outbox and builds its packet; returns its
/// packet id.
fn send(
    s: &mut Session,
    outbox: &mut VecDeque<Outbound>,
    msg: &Arc<Message>,
    now: Instant,
) -> PacketId {
    let delivered = s.deliver(msg.clone(), msg.qos, false, Vec::new(), None, now);
    debug_assert_eq!(delivered, Delivered::Sent);
    s.take_outbox(outbox);
    let Some(Outbound::Publish(o)) = outbox.pop_front() else {
        unreachable!("a delivery with the window open puts its PUBLISH in the outbox");
    };
    let id = o.packet_id.expect("a QoS 1/2 PUBLISH has a packet id");
    black_box(s.prepare_publish_packet(o, now));
    id
}

fn bench_outbound(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("session/outbound");

    let mut s = connected(now);
    let mut outbox = VecDeque::new();
    let msg = message(QoS::AtLeastOnce);
    group.bench_function("qos=1", |b| {
        b.iter(|| {
            let id = send(&mut s, &mut outbox, &msg, now);
            let handled = s.handle(Packet::PubAck(Ack::new(id)), now);
            debug_assert_eq!(handled, Handled::Done);
            handled
        })
    });
    assert_eq!(
        (s.inflight_len(), s.queued_len()),
        (0, 0),
        "qos=1 flows completed"
    );

    let mut s = connected(now);
    let msg = message(QoS::ExactlyOnce);
    group.bench_function("qos=2", |b| {
        b.iter(|| {
            let id = send(&mut s, &mut outbox, &msg, now);
            let handled = s.handle(Packet::PubRec(Ack::new(id)), now);
            debug_assert_eq!(handled, Handled::Done);
            s.take_outbox(&mut outbox);
            let pubrel = outbox.pop_front().and_then(|o| o.ack_packet());
            debug_assert!(matches!(pubrel, Some(Packet::PubRel(_))));
            black_box(pubrel);
            s.handle(Packet::PubComp(Ack::new(id)), now)
        })
    });
    assert_eq!(
        (s.inflight_len(), s.queued_len()),
        (0, 0),
        "qos=2 flows completed"
    );
    group.finish();
}

fn client_publish(qos: QoS, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TOPIC.into(),
        packet_id: PacketId::new(id),
        properties: Properties::default(),
        payload: Bytes::from(vec![0xA5; PAYLOAD]),
    })
}

fn bench_inbound(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("session/inbound");
    let matched = PublishOutcome {
        matched: true,
        ..PublishOutcome::default()
    };

    let mut s = connected(now);
    let publish = client_publish(QoS::AtLeastOnce, 1);
    group.bench_function("qos=1", |b| {
        b.iter_batched(
            || publish.clone(),
            |p| {
                let Handled::Publish(inbound) = s.handle(p, now) else {
                    unreachable!("a valid QoS 1 PUBLISH is routed");
                };
                let ack = inbound.ack.map(|a| a.packet(matched));
                (inbound.msg, ack)
            },
            BatchSize::SmallInput,
        )
    });

    let mut s = connected(now);
    let mut outbox = VecDeque::new();
    let publish = client_publish(QoS::ExactlyOnce, 1);
    let id = PacketId::new(1).expect("1 is a packet id");
    group.bench_function("qos=2", |b| {
        b.iter_batched(
            || publish.clone(),
            |p| {
                let Handled::Publish(inbound) = s.handle(p, now) else {
                    unreachable!("a new QoS 2 PUBLISH is routed");
                };
                let pubrec = inbound.ack.map(|a| a.packet(matched));
                let handled = s.handle(Packet::PubRel(Ack::new(id)), now);
                debug_assert_eq!(handled, Handled::Done);
                s.take_outbox(&mut outbox);
                let pubcomp = outbox.pop_front().and_then(|o| o.ack_packet());
                debug_assert!(matches!(pubcomp, Some(Packet::PubComp(_))));
                (inbound.msg, pubrec, pubcomp)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_outbound, bench_inbound
}
criterion_main!(benches);
