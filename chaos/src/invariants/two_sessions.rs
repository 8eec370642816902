//! Two live sessions for one client id: two connections of the same client id, each with
//! CONNACK 0x00 seen and not yet seen ended, overlapping in time (on one clock: the recorder's).
//!
//! Times are what the client saw, on two sockets read by two tasks: a takeover's old
//! connection may be seen closed a little after the new one's CONNACK although the broker closed
//! it first. An overlap up to `SKEW` that ends (the old connection was seen closed) is that
//! skew, not a split brain; a split brain lasts until the old node's session lease runs out
//! (4 s by default) or for ever.
//!
//! Source: [MQTT-3.1.4-3] (a second connection with a client id in use makes the Server
//! disconnect the existing one) as Roost extends it cluster-wide: one live session per client
//! id (README; docs/architecture.md, "Session lease").

use super::Violation;
use crate::history::{Nanos, Op};
use std::collections::HashMap;

pub const NAME: &str = "two_sessions";
pub const SOURCE: &str = "[MQTT-3.1.4-3], cluster-wide: docs/architecture.md \"Session lease\"";

/// The longest overlap taken for the client's own observation skew (see the module docs).
pub const SKEW: Nanos = 300_000_000;

pub fn check(ops: &[Op]) -> Vec<Violation> {
    let mut by_client: HashMap<&str, Vec<(Nanos, Nanos, u64)>> = HashMap::new();
    for op in ops {
        if let Op::Session {
            client,
            node,
            from,
            until,
        } = op
        {
            by_client
                .entry(client)
                .or_default()
                .push((*from, until.unwrap_or(Nanos::MAX), *node));
        }
    }
    let mut clients: Vec<_> = by_client.into_iter().collect();
    clients.sort();
    let mut out = Vec::new();
    for (client, mut spans) in clients {
        spans.sort();
        for pair in spans.windows(2) {
            let ((a_from, a_until, a_node), (b_from, _, b_node)) = (pair[0], pair[1]);
            if b_from < a_until && (a_until == Nanos::MAX || a_until - b_from > SKEW) {
                let end = if a_until == Nanos::MAX {
                    "still open".to_owned()
                } else {
                    format!("until {a_until} ns")
                };
                out.push(Violation {
                    invariant: NAME,
                    detail: format!(
                        "{client}: live on node {a_node} from {a_from} ns ({end}) and on node \
                         {b_node} from {b_from} ns"
                    ),
                });
            }
        }
    }
    out
}
