//! Acknowledged messages lost: a QoS 1/2 PUBLISH acknowledged with success (`outcome: ok`)
//! within a subscriber's interval, on a topic its filter matches, that the subscriber never
//! received.
//!
//! Source: docs/architecture.md, "What an acknowledgement promises" (PUBACK/PUBREC 0x00 means
//! the broker took responsibility), and [MQTT-4.3.2] / [MQTT-4.3.3] (QoS 1 at least once,
//! QoS 2 exactly once) for a session that lives through the fault. A publish whose outcome is
//! `unknown` is never counted lost.

use super::Violation;
use crate::history::{Op, Outcome};
use roost_core::topic::{TopicFilter, TopicLimits, TopicName};
use std::collections::HashSet;

pub const NAME: &str = "lost";
pub const SOURCE: &str =
    "docs/architecture.md \"What an acknowledgement promises\"; [MQTT-4.3.2], [MQTT-4.3.3]";

pub fn check(ops: &[Op]) -> Vec<Violation> {
    let limits = TopicLimits::default();
    let mut received: HashSet<(&str, &str, u64)> = HashSet::new();
    for op in ops {
        if let Op::Receive {
            client,
            publisher,
            seq,
            ..
        } = op
        {
            received.insert((client, publisher, *seq));
        }
    }
    // Every acknowledged QoS 1/2 publish, its topic parsed once (not once per subscriber).
    let acked: Vec<_> = ops
        .iter()
        .filter_map(|p| match p {
            Op::Publish {
                client,
                topic,
                seq,
                qos,
                start,
                end,
                outcome: Outcome::Ok,
                ..
            } if *qos > 0 => Some((
                client,
                topic,
                TopicName::new(topic, &limits).ok(),
                *seq,
                *qos,
                *start,
                *end,
            )),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for op in ops {
        let Op::Subscriber {
            client,
            topic: filter,
            qos: sub_qos,
            from,
            until,
        } = op
        else {
            continue;
        };
        let Ok(f) = TopicFilter::new(filter, &limits) else {
            out.push(Violation {
                invariant: NAME,
                detail: format!("subscriber {client}: filter {filter:?} does not parse"),
            });
            continue;
        };
        for (publisher, topic, name, seq, qos, start, end) in &acked {
            // Delivered at the lower of the two QoS; QoS 0 promises nothing.
            if *sub_qos == 0 || start < from || until.is_some_and(|u| *end > u) {
                continue;
            }
            let matches = name.as_ref().is_some_and(|t| f.matches(t));
            if matches && !received.contains(&(client.as_str(), publisher.as_str(), *seq)) {
                out.push(Violation {
                    invariant: NAME,
                    detail: format!(
                        "{publisher} #{seq} on {topic} (QoS {qos}) acknowledged at {end} ns, \
                         never received by {client}"
                    ),
                });
            }
        }
    }
    out
}
