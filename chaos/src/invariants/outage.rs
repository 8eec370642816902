//! Clients back within seconds: a client that keeps a connection (a publisher, a persistent
//! subscriber) and loses it is connected again within the run's bound. What a rolling restart
//! or a scale-down promises the clients of the node that stops: a v5 client is told where to
//! go (DISCONNECT 0x9C with a Server Reference) and its session is waiting there.
//!
//! Judged only when the history holds an `outage_bound` (the runs of the operators' faults
//! set one: a partition may keep a client out for as long as it lasts, by design); without one
//! the longest outages are reported, not judged. An outage is the time from the end of one of
//! the client's connections (`session.until`: for receivers, when the broker last served it)
//! to the start of its next one (CONNACK seen); a connection ended and never followed by
//! another counts until the bound's `until` (the publishers' stop). Connections that overlap
//! (a takeover's new one before the old one is seen closed) are no outage.
//!
//! Source: docs/deploy.md, "Rolling upgrade" (clients follow the Server Reference, or
//! reconnect through the Service, and find their session); issue 11: "each client back
//! within seconds".

use super::Violation;
use crate::history::{Nanos, Op};
use std::collections::{BTreeMap, BTreeSet};

pub const NAME: &str = "outage";
pub const SOURCE: &str = "docs/deploy.md \"Rolling upgrade\": clients back within seconds";

/// Every outage of every client that keeps a connection: (client, from, to), the longest
/// first. `end` closes an outage never followed by a connection.
pub fn outages(ops: &[Op], end: Nanos) -> Vec<(String, Nanos, Nanos)> {
    let mut keeps = BTreeSet::new();
    for op in ops {
        match op {
            Op::Publish { client, .. } | Op::Subscriber { client, .. } => {
                keeps.insert(client.as_str());
            }
            _ => {}
        }
    }
    let mut spans: BTreeMap<&str, Vec<(Nanos, Option<Nanos>)>> = BTreeMap::new();
    for op in ops {
        if let Op::Session {
            client,
            from,
            until,
            ..
        } = op
        {
            if keeps.contains(client.as_str()) {
                spans.entry(client).or_default().push((*from, *until));
            }
        }
    }
    let mut out = Vec::new();
    for (client, mut s) in spans {
        s.sort();
        // The latest end seen so far: a connection still open covers everything after it.
        let mut ended: Option<Nanos> = Some(0);
        for (i, &(from, until)) in s.iter().enumerate() {
            if let Some(e) = ended.filter(|&e| i > 0 && from > e) {
                out.push((client.to_owned(), e, from));
            }
            ended = match (ended, until) {
                (None, _) | (_, None) => None,
                (Some(e), Some(u)) => Some(e.max(u)),
            };
        }
        if let Some(e) = ended.filter(|&e| e < end) {
            out.push((client.to_owned(), e, end));
        }
    }
    out.sort_by_key(|(c, from, to)| (std::cmp::Reverse(to - from), c.clone(), *from));
    out
}

/// The run's bound, if it set one: (max, until).
pub fn bound(ops: &[Op]) -> Option<(Nanos, Nanos)> {
    ops.iter().find_map(|op| match op {
        Op::OutageBound { max, until } => Some((*max, *until)),
        _ => None,
    })
}

pub fn check(ops: &[Op]) -> Vec<Violation> {
    let Some((max, until)) = bound(ops) else {
        return Vec::new();
    };
    outages(ops, until)
        .into_iter()
        .filter(|(_, from, to)| from < &until && to - from > max)
        .map(|(client, from, to)| Violation {
            invariant: NAME,
            detail: format!(
                "{client}: no connection for {:.2} s (from {from} ns to {to} ns; the bound is \
                 {:.2} s)",
                (to - from) as f64 / 1e9,
                max as f64 / 1e9
            ),
        })
        .collect()
}
