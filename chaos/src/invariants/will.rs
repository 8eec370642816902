//! Wills published more or less than once: for each connection of a will client that ended
//! (`ending`), the wills the watchers received (`will`).
//!
//! | ending | promise | violation |
//! |---|---|---|
//! | `drop` (no DISCONNECT), `with_will` (v5 DISCONNECT 0x04) | the will is published once, after the end | a watcher that held its subscription never got it (*missing*); it got two publications of it (*doubled*); it got it before the end (*early*) |
//! | `normal` (DISCONNECT 0x00), `refused` (CONNACK failure) | no will | any watcher got it (*forbidden*) |
//! | `broker`, `unknown` | none the client can know | only counted |
//!
//! A will nobody's connection carried (no `ending` with its client and incarnation) is a
//! violation too (*unexpected*).
//!
//! **Publications, not receipts.** A QoS 1 will may legitimately reach a watcher again as a
//! redelivery: the same PUBLISH resent on the session after a reconnect, with the DUP flag set
//! ([MQTT-3.3.1-1], [MQTT-4.4.0-1]). Receipts with DUP set are not counted. Two receipts
//! without it are two PUBLISHes the broker started: the will published twice.
//!
//! **Faults.** A fault can make a will due and unpublishable (the node that held the
//! connection is killed: the will dies with it), late, or sent again (a forward retried across
//! a healed partition). So an ending is judged for a watcher only when no fault *touched* the
//! pair (the node that served the connection, the watcher's node) from the connection's
//! CONNACK until [`DELIVER`] after its end, counting each fault until [`SETTLE`] after it
//! ended. A fault touches a pair when:
//! - it stopped, killed, restarted or degraded either node (its `nodes`; `loss` and `delay`
//!   name every node), or
//! - its partition (`cut`) separates the two, or leaves either outside the side with a
//!   majority of the cluster. A partition whose sides are not each fully connected (a bridge,
//!   a ring) touches every node: which node still holds its lease depends on where the leader
//!   is.
//!
//! A forbidden will is judged on the serving node alone (the will must not exist, wherever
//! the watcher is). Endings not judged are counted in the report, and so are the repeated
//! wills among them (`repeated under faults`).
//!
//! Source: [MQTT-3.1.2-8] (the will is published when the network connection closes, unless
//! deleted on a DISCONNECT), [MQTT-3.1.2-10] (deleted on a normal DISCONNECT), MQTT 5.0
//! [MQTT-3.14.4-3] (DISCONNECT 0x00 discards it) and §3.14.2.1 (0x04 asks for it); the
//! workload sets Will Delay Interval 0, so it is due at once ([MQTT-3.1.3-9] does not apply).

use super::Violation;
use crate::history::{EndKind, Nanos, Op};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub const NAME: &str = "will";
pub const SOURCE: &str =
    "[MQTT-3.1.2-8], [MQTT-3.1.2-10], [MQTT-3.14.4-3]; MQTT 5.0 §3.14.2.1 (0x04)";

/// How long after an ending a fault that starts can still have touched its will (published
/// on the close, forwarded within the 2 s forward timeout).
pub const DELIVER: Nanos = 3_000_000_000;
/// How long after a fault ends it still counts (peers reconnect, leases are held again).
pub const SETTLE: Nanos = 5_000_000_000;

/// What the invariant saw, for the report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Endings recorded.
    pub endings: usize,
    /// Of them, endings after which the will is due (`drop`, `with_will`).
    pub due: usize,
    /// Of them, endings after which no will may come (`normal`, `refused`).
    pub forbidden: usize,
    /// Endings judged for at least one watcher (no fault touched them).
    pub judged: usize,
    /// Wills received (every receipt, redeliveries included).
    pub received: usize,
    /// Receipts without DUP beyond the first of one will at one watcher, for endings not
    /// judged (a fault may explain them).
    pub repeated_under_faults: usize,
    /// Wills due that a watcher never got, where a fault may explain it (not judged).
    pub missing_under_faults: usize,
    /// Wills not allowed that a watcher got, where a fault may explain it (not judged).
    pub forbidden_under_faults: usize,
}

/// A fault, as the judgement needs it.
struct Span {
    from: Nanos,
    until: Nanos,
    nodes: BTreeSet<u64>,
    /// Nodes outside the majority side (every node when the sides are not cliques).
    degraded: BTreeSet<u64>,
    /// Unordered pairs that could not talk.
    cut: BTreeSet<(u64, u64)>,
}

impl Span {
    fn overlaps(&self, from: Nanos, to: Nanos) -> bool {
        self.from <= to && from <= self.until
    }

    fn touches_node(&self, a: u64) -> bool {
        self.nodes.contains(&a) || self.degraded.contains(&a)
    }

    fn touches_pair(&self, a: u64, b: u64) -> bool {
        self.touches_node(a)
            || self.touches_node(b)
            || (a != b && self.cut.contains(&(a.min(b), a.max(b))))
    }
}

/// The nodes a partition leaves outside the side with a majority (see the module docs).
fn degraded(cluster: u64, cut: &BTreeSet<(u64, u64)>) -> BTreeSet<u64> {
    let all: BTreeSet<u64> = (1..=cluster).collect();
    if cut.is_empty() {
        return BTreeSet::new();
    }
    let linked = |a: u64, b: u64| a == b || !cut.contains(&(a.min(b), a.max(b)));
    // Each node's side: the nodes it reaches directly. Sides must be cliques that do not
    // overlap, or nothing can be said.
    let mut majority = None;
    for &a in &all {
        let side: BTreeSet<u64> = all.iter().copied().filter(|&b| linked(a, b)).collect();
        for &b in &side {
            for &c in &side {
                if !linked(b, c) {
                    return all;
                }
            }
        }
        if 2 * side.len() as u64 > cluster {
            majority = Some(side);
        }
    }
    match majority {
        Some(side) => all.difference(&side).copied().collect(),
        None => all,
    }
}

fn spans(ops: &[Op]) -> Vec<Span> {
    let mut out = Vec::new();
    for op in ops {
        if let Op::Fault {
            nodes,
            cut,
            cluster,
            from,
            until,
            ..
        } = op
        {
            let cut: BTreeSet<(u64, u64)> =
                cut.iter().map(|&(a, b)| (a.min(b), a.max(b))).collect();
            let cluster = (*cluster).max(cut.iter().map(|&(_, b)| b).max().unwrap_or(0));
            out.push(Span {
                from: *from,
                until: until.saturating_add(SETTLE),
                nodes: nodes.iter().copied().collect(),
                degraded: degraded(cluster, &cut),
                cut,
            });
        }
    }
    out
}

/// One will client's connection, as recorded.
struct Ending<'a> {
    client: &'a str,
    node: u64,
    incarnation: u64,
    kind: EndKind,
    from: Nanos,
    at: Nanos,
}

/// One watcher: its subscription intervals and its connections (node, from, until).
#[derive(Default)]
struct Watcher {
    subscribed: Vec<(Nanos, Option<Nanos>)>,
    sessions: Vec<(u64, Nanos, Option<Nanos>)>,
}

impl Watcher {
    /// Held its subscription from before `at` until after `to`.
    fn owed(&self, at: Nanos, to: Nanos) -> bool {
        self.subscribed
            .iter()
            .any(|&(f, u)| f <= at && u.is_none_or(|u| u >= to))
    }

    /// The nodes it was connected to over `[from, to]`; all it ever used when none.
    fn nodes(&self, from: Nanos, to: Nanos) -> BTreeSet<u64> {
        let during: BTreeSet<u64> = self
            .sessions
            .iter()
            .filter(|&&(_, f, u)| f <= to && u.is_none_or(|u| u >= from))
            .map(|&(n, _, _)| n)
            .collect();
        if during.is_empty() {
            self.sessions.iter().map(|&(n, _, _)| n).collect()
        } else {
            during
        }
    }
}

/// One will's receipts at each watcher: (time, DUP flag).
type Receipts<'a> = BTreeMap<&'a str, Vec<(Nanos, bool)>>;

/// The violations and the summary.
pub fn judge(ops: &[Op]) -> (Vec<Violation>, Summary) {
    let spans = spans(ops);
    let mut summary = Summary::default();
    let mut endings = Vec::new();
    // Receipts of each will: (client, incarnation) -> watcher -> [(at, dup)].
    let mut got: HashMap<(&str, u64), Receipts<'_>> = HashMap::new();
    let mut receipts = Vec::new();
    for op in ops {
        match op {
            Op::Ending {
                client,
                node,
                incarnation,
                kind,
                from,
                at,
            } => endings.push(Ending {
                client,
                node: *node,
                incarnation: *incarnation,
                kind: *kind,
                from: *from,
                at: *at,
            }),
            Op::Will {
                client,
                of,
                incarnation,
                dup,
                at,
                ..
            } => {
                summary.received += 1;
                got.entry((of, *incarnation))
                    .or_default()
                    .entry(client)
                    .or_default()
                    .push((*at, *dup));
                receipts.push((client, of, *incarnation, *at));
            }
            _ => {}
        }
    }
    // Watchers: whoever subscribed to the wills' topics, or received one.
    let mut watchers: BTreeMap<&str, Watcher> = BTreeMap::new();
    for (client, ..) in &receipts {
        watchers.entry(client.as_str()).or_default();
    }
    for op in ops {
        match op {
            Op::Subscriber {
                client,
                topic,
                qos,
                from,
                until,
            } if topic.starts_with("chaos/w/") && *qos > 0 => {
                watchers
                    .entry(client)
                    .or_default()
                    .subscribed
                    .push((*from, *until));
            }
            Op::Session {
                client,
                node,
                from,
                until,
            } => {
                if let Some(w) = watchers.get_mut(client.as_str()) {
                    w.sessions.push((*node, *from, *until));
                }
            }
            _ => {}
        }
    }
    summary.endings = endings.len();
    let mut out = Vec::new();
    let known: BTreeSet<(&str, u64)> = endings.iter().map(|e| (e.client, e.incarnation)).collect();
    let empty = BTreeMap::new();
    for e in &endings {
        let (from, to) = (e.from, e.at.saturating_add(DELIVER));
        let touching: Vec<&Span> = spans.iter().filter(|s| s.overlaps(from, to)).collect();
        let clear_node = !touching.iter().any(|s| s.touches_node(e.node));
        let seen = got.get(&(e.client, e.incarnation)).unwrap_or(&empty);
        let what = format!(
            "{} #{} ({:?} on node {}, live {} ns to {} ns)",
            e.client, e.incarnation, e.kind, e.node, e.from, e.at
        );
        summary.due += usize::from(e.kind.will_due());
        summary.forbidden += usize::from(e.kind.will_forbidden());
        if e.kind.will_forbidden() {
            if !clear_node {
                summary.forbidden_under_faults += seen.len();
            }
            if clear_node {
                summary.judged += 1;
                if !seen.is_empty() {
                    let by: Vec<String> = seen
                        .iter()
                        .map(|(w, r)| format!("{w} at {} ns", r[0].0))
                        .collect();
                    out.push(Violation {
                        invariant: NAME,
                        detail: format!("forbidden: the will of {what} reached {}", by.join(", ")),
                    });
                }
            }
            continue;
        }
        if !e.kind.will_due() {
            continue;
        }
        let mut judged = false;
        let (mut missing, mut doubled, mut early) = (Vec::new(), Vec::new(), Vec::new());
        for (name, w) in &watchers {
            let fresh: Vec<Nanos> = seen
                .get(name)
                .map(|r| {
                    r.iter()
                        .filter(|(_, dup)| !dup)
                        .map(|(at, _)| *at)
                        .collect()
                })
                .unwrap_or_default();
            let clear = w
                .nodes(from, to)
                .iter()
                .all(|&b| !touching.iter().any(|s| s.touches_pair(e.node, b)));
            if !clear || !w.owed(e.at, to) {
                summary.repeated_under_faults += fresh.len().saturating_sub(1);
                let got_it = seen.get(name).is_some_and(|r| !r.is_empty());
                summary.missing_under_faults += usize::from(!got_it && w.owed(e.at, to));
                continue;
            }
            judged = true;
            let any = seen.get(name).is_some_and(|r| !r.is_empty());
            if !any {
                missing.push(name.to_string());
            }
            if fresh.len() > 1 {
                doubled.push(format!("{name} {} times", fresh.len()));
            }
            if let Some(r) = seen
                .get(name)
                .and_then(|r| r.iter().find(|(at, _)| *at < e.at))
            {
                early.push(format!("{name} at {} ns", r.0));
            }
        }
        summary.judged += usize::from(judged);
        for (label, list) in [("missing", missing), ("doubled", doubled), ("early", early)] {
            if !list.is_empty() {
                out.push(Violation {
                    invariant: NAME,
                    detail: format!("{label}: the will of {what}: {}", list.join(", ")),
                });
            }
        }
    }
    for (watcher, of, incarnation, at) in receipts {
        if !known.contains(&(of.as_str(), incarnation)) {
            out.push(Violation {
                invariant: NAME,
                detail: format!(
                    "unexpected: {watcher} received a will of {of} #{incarnation} at {at} ns: \
                     no such connection"
                ),
            });
        }
    }
    (out, summary)
}

pub fn check(ops: &[Op]) -> Vec<Violation> {
    judge(ops).0
}
