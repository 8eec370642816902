//! Duplicates where the QoS forbids them: a subscriber received one QoS 2 message (same
//! publisher and sequence number) more than once.
//!
//! Source: [MQTT-4.3.3] (QoS 2: exactly once delivery). QoS 1 may be delivered again after a
//! reconnect ([MQTT-4.3.2]) and is not counted here.

use super::Violation;
use crate::history::Op;
use std::collections::HashMap;

pub const NAME: &str = "duplicated";
pub const SOURCE: &str = "[MQTT-4.3.3] QoS 2, exactly once delivery";

pub fn check(ops: &[Op]) -> Vec<Violation> {
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
    dups.into_iter()
        .map(|((client, publisher, seq), n)| Violation {
            invariant: NAME,
            detail: format!("{client} received QoS 2 {publisher} #{seq} {n} times"),
        })
        .collect()
}
