//! Stale retained reads: a new subscription on one node must get the retained message
//! acknowledged last before it started, on any node, or a later one: read-your-write across
//! nodes. With one writer per topic (what the `retained` workload does), a read that began
//! after write #N of that topic was acknowledged must return #N or later; returning nothing,
//! an older value, a value never written, or one written only after the read ended is a
//! violation. Reads that failed promise nothing.
//!
//! Source: [MQTT-3.3.1-5] (a retained message is stored and delivered to future subscribers
//! of matching topics) with [MQTT-3.3.1-8]/[MQTT-3.3.1-9] (retained messages are sent when a
//! subscription is made), and docs/architecture.md, "What an acknowledgement promises" (a
//! retained PUBLISH is acknowledged once its copy committed in the cluster).

use super::Violation;
use crate::history::{Nanos, Op, Outcome};
use std::collections::HashMap;

pub const NAME: &str = "stale_retained";
pub const SOURCE: &str = "[MQTT-3.3.1-5], [MQTT-3.3.1-9]; docs/architecture.md \"What an \
                          acknowledgement promises\" (across nodes)";

/// One retained write: its sequence number, when it started and ended, and whether it was
/// acknowledged.
struct Write {
    seq: u64,
    start: Nanos,
    end: Nanos,
    ok: bool,
}

pub fn check(ops: &[Op]) -> Vec<Violation> {
    // (topic, writer) -> writes; one writer per topic.
    let mut writes: HashMap<(&str, &str), Vec<Write>> = HashMap::new();
    for op in ops {
        if let Op::Publish {
            client,
            topic,
            seq,
            start,
            end,
            outcome,
            retain: true,
            ..
        } = op
        {
            writes.entry((topic, client)).or_default().push(Write {
                seq: *seq,
                start: *start,
                end: *end,
                ok: *outcome == Outcome::Ok,
            });
        }
    }
    let mut by_topic: HashMap<&str, (&str, &Vec<Write>)> = HashMap::new();
    for ((topic, writer), w) in &writes {
        by_topic.insert(topic, (writer, w));
    }
    let mut out = Vec::new();
    for op in ops {
        let Op::Read {
            client,
            node,
            topic,
            value,
            start,
            end,
            outcome: Outcome::Ok,
        } = op
        else {
            continue;
        };
        let Some((writer, ws)) = by_topic.get(topic.as_str()) else {
            continue;
        };
        let owed = ws
            .iter()
            .filter(|w| w.ok && w.end < *start)
            .map(|w| w.seq)
            .max();
        let got = value.as_deref().and_then(|v| {
            let (p, seq) = v.rsplit_once(':')?;
            Some((p, seq.parse::<u64>().ok()?))
        });
        let problem = match (owed, got) {
            (_, Some((p, _))) if p != *writer => {
                Some(format!("a value from {p}, who never wrote it"))
            }
            (_, Some((_, seq))) => match ws.iter().find(|w| w.seq == seq) {
                None => Some(format!("#{seq}, never written")),
                Some(w) if w.start > *end => Some(format!("#{seq}, written only after the read")),
                Some(_) if owed.is_some_and(|o| seq < o) => Some(format!("#{seq}")),
                Some(_) => None,
            },
            (Some(_), None) => Some("nothing".to_owned()),
            (None, None) => None,
        };
        if let Some(p) = problem {
            out.push(Violation {
                invariant: NAME,
                detail: format!(
                    "{client} read {p} on {topic} through node {node} at {start}-{end} ns; \
                     {writer} #{} was acknowledged before",
                    owed.map_or("(none)".to_owned(), |o| o.to_string())
                ),
            });
        }
    }
    out
}
