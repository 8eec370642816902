//! Unexpected messages: a subscriber received a message no publisher sent (no `publish` with
//! that publisher and sequence number), or one whose publish was refused (`outcome: failed`:
//! the broker said it did not take it).
//!
//! Source: [MQTT-4.3.2] / [MQTT-4.3.3] (the Server delivers what Clients published) and
//! docs/architecture.md, "What an acknowledgement promises" (a failure reason code means the
//! message went nowhere).

use super::Violation;
use crate::history::{Op, Outcome};
use std::collections::HashMap;

pub const NAME: &str = "unexpected";
pub const SOURCE: &str =
    "[MQTT-4.3.2], [MQTT-4.3.3]; docs/architecture.md \"What an acknowledgement promises\"";

pub fn check(ops: &[Op]) -> Vec<Violation> {
    let mut sent: HashMap<(&str, u64), Outcome> = HashMap::new();
    for op in ops {
        if let Op::Publish {
            client,
            seq,
            outcome,
            ..
        } = op
        {
            sent.insert((client, *seq), *outcome);
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
        let why = match sent.get(&(publisher.as_str(), *seq)) {
            None => "never published",
            Some(Outcome::Failed) => "refused to its publisher",
            Some(_) => continue,
        };
        out.push(Violation {
            invariant: NAME,
            detail: format!("{client} received {publisher} #{seq} at {at} ns: {why}"),
        });
    }
    out
}
