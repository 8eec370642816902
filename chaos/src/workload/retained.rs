//! The `retained` workload: writer `rw-N` sets the retained value of `chaos/r/N` (QoS 1,
//! payload `rw-N:SEQ`) every 100 ms through node N; readers on random nodes open a new clean
//! session, subscribe to a random writer's topic and record the retained value they get.

use super::{connect, publish_until, Publishing, Recorder, Stops, Targets};
use crate::history::{Op, Outcome};
use crate::rng::Rng;
use roost_codec::{Packet, QoS};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Time between two writes of one writer.
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// How long a reader waits for the retained message after subscribing.
const READ_WAIT: Duration = Duration::from_secs(1);

fn topic(n: usize) -> String {
    format!("chaos/r/{n}")
}

/// Writer `rw-{node}`: writes until the publishers stop.
pub(super) async fn writer(node: usize, targets: Targets, rec: Recorder, stops: Stops) {
    let p = Publishing {
        name: format!("rw-{node}"),
        node,
        topic: topic(node),
        qos: QoS::AtLeastOnce,
        retain: true,
        every: WRITE_EVERY,
    };
    publish_until(p, targets, rec, stops.publishers).await;
}

/// Reader `rr-{id}`: reads until the publishers stop.
pub(super) async fn reader(id: usize, targets: Targets, rec: Recorder, stops: Stops, mut rng: Rng) {
    let name = format!("rr-{id}");
    let nodes = targets.len();
    while !stops.publishers.load(Ordering::Acquire) {
        let node = 1 + rng.below(nodes);
        let t = topic(1 + rng.below(nodes));
        let start = rec.now();
        let (value, outcome, live) = match connect(&targets, node, &name, false).await {
            Err(_) => (None, Outcome::Failed, None),
            Ok((mut c, _)) => {
                let from = rec.now();
                let r = read_one(&mut c, &t).await;
                let _ = c.send(&Packet::Disconnect(Default::default())).await;
                match r {
                    Some(v) => (v, Outcome::Ok, Some(from)),
                    None => (None, Outcome::Failed, Some(from)),
                }
            }
        };
        let end = rec.now();
        rec.push(Op::Read {
            client: name.clone(),
            node: node as u64,
            topic: t,
            value,
            start,
            end,
            outcome,
        });
        if let Some(from) = live {
            rec.push(Op::Session {
                client: name.clone(),
                node: node as u64,
                from,
                until: Some(end),
            });
        }
        tokio::time::sleep(Duration::from_millis(200 + rng.below(300) as u64)).await;
    }
}

/// Subscribes to `topic` and waits for its retained message: `Some(Some(value))`,
/// `Some(None)` when none came within [`READ_WAIT`], `None` when the subscription failed.
async fn read_one(c: &mut roost_testkit::RawClient, topic: &str) -> Option<Option<String>> {
    let (ack, _) = c.subscribe(topic, QoS::AtLeastOnce).await.ok()?;
    if ack.reason_codes.iter().any(|r| r.is_error()) {
        return None;
    }
    let until = tokio::time::Instant::now() + READ_WAIT;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Some(None);
        }
        match c.recv_within(left).await {
            Ok(Some(Packet::Publish(p))) if p.retain && p.topic == topic => {
                if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                    let _ = c.send(&Packet::PubAck(roost_codec::Ack::new(id))).await;
                }
                return Some(Some(String::from_utf8_lossy(&p.payload).into_owned()));
            }
            Ok(Some(Packet::Publish(p))) => {
                if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                    let _ = c.send(&Packet::PubAck(roost_codec::Ack::new(id))).await;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) if e.to_string().starts_with("no packet within") => return Some(None),
            Err(_) => return None,
        }
    }
}
