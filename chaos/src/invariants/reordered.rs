//! Reordering: for one subscriber, the messages of one publisher on one topic at one QoS must
//! arrive in the order they were published. Judged on first receipts: a QoS 1 message sent
//! again after a reconnect may come after later ones.
//!
//! Source: [MQTT-4.6.0-6] (ordered topics: the Server sends PUBLISH packets to consumers in the
//! order they were received from any given Client, per topic and QoS). A shared subscription's
//! group (`share:…`) is not held to it: its messages are spread over members, each with its
//! own connection (MQTT 5.0 §4.8.2 makes no ordering promise across them).

use super::Violation;
use crate::history::Op;
use std::collections::{HashMap, HashSet};

pub const NAME: &str = "reordered";
pub const SOURCE: &str = "[MQTT-4.6.0-6] order per publisher, topic and QoS";

pub fn check(ops: &[Op]) -> Vec<Violation> {
    // (subscriber, publisher, topic, qos) -> the highest sequence number received first so far.
    let mut last: HashMap<(&str, &str, &str, u8), u64> = HashMap::new();
    let mut first: HashSet<(&str, &str, u64)> = HashSet::new();
    let mut receives: Vec<&Op> = ops
        .iter()
        .filter(|o| matches!(o, Op::Receive { .. }))
        .collect();
    receives.sort_by_key(|o| match o {
        Op::Receive { at, .. } => *at,
        _ => 0,
    });
    let mut out = Vec::new();
    for op in receives {
        let Op::Receive {
            client,
            topic,
            publisher,
            seq,
            qos,
            at,
            ..
        } = op
        else {
            continue;
        };
        if client.starts_with("share:") || !first.insert((client, publisher, *seq)) {
            continue;
        }
        let key = (client.as_str(), publisher.as_str(), topic.as_str(), *qos);
        match last.get(&key) {
            Some(prev) if *prev > *seq => out.push(Violation {
                invariant: NAME,
                detail: format!(
                    "{client} received {publisher} #{seq} on {topic} at {at} ns after #{prev}"
                ),
            }),
            _ => {
                last.insert(key, *seq);
            }
        }
    }
    out
}
