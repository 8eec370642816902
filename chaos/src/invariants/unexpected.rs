//! Unexpected messages: a subscriber received a message no publisher sent (no `publish` with
//! that publisher and sequence number).
//!
//! A message whose publish was refused (`outcome: failed`) may still arrive: "failure is not
//! rollback" (docs/architecture.md, "What an acknowledgement promises"): it may have reached
//! local subscribers or other peers before the failure was known. The report counts those
//! (`refused_delivered`); they are not violations.
//!
//! Source: [MQTT-4.3.2] / [MQTT-4.3.3] (the Server delivers what Clients published).

use super::Violation;
use crate::history::Op;
use std::collections::HashSet;

pub const NAME: &str = "unexpected";
pub const SOURCE: &str = "[MQTT-4.3.2], [MQTT-4.3.3]: only what was published is delivered";

pub fn check(ops: &[Op]) -> Vec<Violation> {
    let mut sent: HashSet<(&str, u64)> = HashSet::new();
    for op in ops {
        if let Op::Publish { client, seq, .. } = op {
            sent.insert((client, *seq));
        }
    }
    let mut out = Vec::new();
    for op in ops {
        let Op::Receive {
            client,
            publisher,
            seq,
            at,
            ..
        } = op
        else {
            continue;
        };
        if !sent.contains(&(publisher.as_str(), *seq)) {
            out.push(Violation {
                invariant: NAME,
                detail: format!("{client} received {publisher} #{seq} at {at} ns: never published"),
            });
        }
    }
    out
}
