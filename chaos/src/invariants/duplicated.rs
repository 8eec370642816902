//! Duplicates where the QoS forbids them: a subscriber received one QoS 2 message (same
//! publisher and sequence number), acknowledged to its publisher with success, more than once.
//!
//! Source: [MQTT-4.3.3] (QoS 2: exactly once delivery), as docs/architecture.md ("What an
//! acknowledgement promises") scopes it: exactly-once holds for messages acknowledged with
//! 0x00; one refused (or whose outcome the publisher never heard) may have been delivered
//! already and may arrive again. Those are counted in the report (`refused_twice`), not here.
//! QoS 1 may be delivered again after a reconnect ([MQTT-4.3.2]) and is not counted either.

use super::Violation;
use crate::history::{Op, Outcome};
use std::collections::{HashMap, HashSet};

/// QoS 2 receipts per (subscriber, publisher, seq) that came more than once.
pub fn repeated(ops: &[Op]) -> Vec<((&str, &str, u64), u32)> {
    let mut seen: HashMap<(&str, &str, u64), u32> = HashMap::new();
    for op in ops {
        if let Op::Receive {
            client,
            publisher,
            seq,
            qos: 2,
            ..
        } = op
        {
            *seen.entry((client, publisher, *seq)).or_default() += 1;
        }
    }
    let mut dups: Vec<_> = seen.into_iter().filter(|(_, n)| *n > 1).collect();
    dups.sort();
    dups
}

/// The (publisher, seq) of every publish acknowledged with success.
pub fn acknowledged(ops: &[Op]) -> HashSet<(&str, u64)> {
    ops.iter()
        .filter_map(|o| match o {
            Op::Publish {
                client,
                seq,
                outcome: Outcome::Ok,
                ..
            } => Some((client.as_str(), *seq)),
            _ => None,
        })
        .collect()
}

pub const NAME: &str = "duplicated";
pub const SOURCE: &str = "[MQTT-4.3.3] QoS 2, exactly once delivery";

pub fn check(ops: &[Op]) -> Vec<Violation> {
    let acked = acknowledged(ops);
    repeated(ops)
        .into_iter()
        .filter(|((_, publisher, seq), _)| acked.contains(&(*publisher, *seq)))
        .map(|((client, publisher, seq), n)| Violation {
            invariant: NAME,
            detail: format!("{client} received QoS 2 {publisher} #{seq} {n} times"),
        })
        .collect()
}
