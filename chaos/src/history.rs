//! The history a chaos run records: one JSON object per line, one per operation a client
//! made or saw, with times from one monotonic clock (the recording process's), in
//! nanoseconds since the run started. The checker reads nothing else, so a saved history can
//! be checked again on its own (`roost-chaos check HISTORY`).
//!
//! ```text
//! {"op":"publish","client":"p1","node":2,"topic":"q/1","seq":17,"qos":1,"start":10,"end":42,"outcome":"ok"}
//! {"op":"receive","client":"s1","node":1,"topic":"q/1","publisher":"p1","seq":17,"qos":1,"at":50}
//! {"op":"subscriber","client":"s1","topic":"q/1","qos":1,"from":5,"until":null}
//! {"op":"session","client":"s1","node":3,"from":5,"until":90}
//! {"op":"read","client":"r1","node":2,"topic":"r/1","value":"w1:16","start":60,"end":70,"outcome":"ok"}
//! {"op":"ending","client":"will-1","node":2,"incarnation":4,"kind":"drop","from":80,"at":95}
//! {"op":"will","client":"watch-3","node":3,"of":"will-1","incarnation":4,"dup":false,"at":97}
//! {"op":"fault","name":"partition node 3","nodes":[],"cut":[[1,3],[3,1],[2,3],[3,2]],"cluster":3,"from":40,"until":48}
//! {"op":"outage_bound","max":5000000000,"until":99}
//! ```
//!
//! - `publish`: a publisher's PUBLISH, from sending it (`start`) to its acknowledgement or
//!   failure (`end`). `outcome` `ok`: acknowledged with success (QoS 0: written); `failed`:
//!   refused (a failure reason code, CONNACK refused, not sent); `unknown`: no answer (the
//!   connection broke first). An `unknown` publish is neither lost nor counted delivered when
//!   absent; when it arrives it is *recovered*.
//!   `retain` (default false): published with RETAIN.
//! - `receive`: a subscriber got a PUBLISH; `publisher` and `seq` come from the payload. A
//!   QoS 2 PUBLISH that repeats a packet id still awaiting its PUBREL is the same delivery
//!   and is not recorded again ([MQTT-4.3.3]); the client of a shared subscription records
//!   under the group (`share:GROUP`), so the group is held to the promises as one subscriber.
//! - `read`: a new subscription's retained message on `topic`, read through `node` over
//!   `[start, end]`: `value` `PUBLISHER:SEQ` or null when none came; `outcome` `failed` when
//!   the read could not be made (refused, unreachable), which promises nothing.
//! - `subscriber`: a subscription the workload holds over `[from, until)` through one
//!   persistent session that lives through the faults (`until` null: to the end). Every
//!   message acknowledged to a publisher within it, on a topic it matches, must reach it.
//! - `session`: a connection of `client` to `node` was live (CONNACK 0x00 seen) over
//!   `[from, until)`; `until` is when the client saw it end (null: open at the end), or for
//!   receivers the last time the broker showed it served the connection (a packet other than
//!   DISCONNECT; they ping after every idle second): a paused node serves nobody.
//! - `ending`: how connection `incarnation` of a will client (a CONNECT with a Last Will
//!   naming the client and the incarnation) to `node` ended, live from `from` (CONNACK seen;
//!   for `unknown`, CONNECT sent) until `at`, when the client ended it (or saw it end): see
//!   [`EndKind`].
//! - `will`: a watcher received the will of `of`'s connection `incarnation` (from its
//!   payload `CLIENT:INCARNATION`); `dup` is the PUBLISH's DUP flag (a QoS 1 redelivery of a
//!   message already sent on the session, [MQTT-3.3.1-1], not a new publication).
//! - `fault`: a fault the nemesis injected over `[from, until]`: `nodes` whose processes it
//!   stopped, killed or restarted, or whose links it degraded (loss, delay); `cut` the
//!   (from, to) node pairs that could not reach each other; `cluster` the number of nodes. The
//!   will invariant judges nothing a fault may have touched (see
//!   `invariants::will`); the other invariants do not read it.
//! - `outage_bound`: the run promised that every client that keeps a connection (publishers,
//!   persistent subscribers) is connected again within `max` of losing one, until `until`
//!   (when the publishers were stopped); see `invariants::outage`. Without it, outages are
//!   only reported.

use serde::{Deserialize, Serialize};
use std::io::BufRead;

/// Nanoseconds since the run started, on the recorder's monotonic clock.
pub type Nanos = u64;

/// What happened to an operation the client invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged with success.
    Ok,
    /// Refused: the broker said so (or it was never sent).
    Failed,
    /// No answer: it may or may not have taken effect.
    Unknown,
}

/// How a will client's connection ended (the `ending` operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndKind {
    /// The client closed its socket without a DISCONNECT: the will is due
    /// ([MQTT-3.1.2-8]).
    Drop,
    /// DISCONNECT 0x00 (Normal disconnection): the will is discarded ([MQTT-3.1.2-10],
    /// [MQTT-3.14.4-3]).
    Normal,
    /// v5 DISCONNECT 0x04 (Disconnect with Will Message): the will is due (MQTT 5.0
    /// §3.14.2.1).
    WithWill,
    /// The CONNECT was refused (a CONNACK failure code): no will is stored
    /// ([MQTT-3.1.2-8]: only for a connection that is accepted).
    Refused,
    /// The broker (or the network) ended it before the client did: the will may or may not
    /// be due and may be lost with a node; not judged.
    Broker,
    /// No CONNACK came: the connection may or may not have been accepted; not judged.
    Unknown,
}

impl EndKind {
    /// The will must be published (once) after this ending.
    pub fn will_due(self) -> bool {
        matches!(self, EndKind::Drop | EndKind::WithWill)
    }

    /// The will must never be published after this ending.
    pub fn will_forbidden(self) -> bool {
        matches!(self, EndKind::Normal | EndKind::Refused)
    }
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A PUBLISH and its outcome.
    Publish {
        client: String,
        node: u64,
        topic: String,
        seq: u64,
        qos: u8,
        start: Nanos,
        end: Nanos,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retain: bool,
    },
    /// A PUBLISH a subscriber received.
    Receive {
        client: String,
        node: u64,
        topic: String,
        publisher: String,
        seq: u64,
        qos: u8,
        at: Nanos,
    },
    /// A subscription held through a persistent session over `[from, until)`.
    Subscriber {
        client: String,
        topic: String,
        qos: u8,
        from: Nanos,
        until: Option<Nanos>,
    },
    /// A retained message read by a new subscription.
    Read {
        client: String,
        node: u64,
        topic: String,
        value: Option<String>,
        start: Nanos,
        end: Nanos,
        outcome: Outcome,
    },
    /// A live connection of `client` to `node` over `[from, until)`.
    Session {
        client: String,
        node: u64,
        from: Nanos,
        until: Option<Nanos>,
    },
    /// How a will client's connection ended.
    Ending {
        client: String,
        node: u64,
        incarnation: u64,
        kind: EndKind,
        from: Nanos,
        at: Nanos,
    },
    /// A will a watcher received.
    Will {
        client: String,
        node: u64,
        of: String,
        incarnation: u64,
        dup: bool,
        at: Nanos,
    },
    /// The longest time a client may be without a connection (see the module docs).
    OutageBound { max: Nanos, until: Nanos },
    /// A fault the nemesis injected.
    Fault {
        name: String,
        nodes: Vec<u64>,
        cut: Vec<(u64, u64)>,
        cluster: u64,
        from: Nanos,
        until: Nanos,
    },
}

/// A history that could not be read: which line, and why.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("line {line}: {source}")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error("reading the history: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a history, one operation per line (blank lines are skipped).
pub fn read(input: impl BufRead) -> Result<Vec<Op>, ReadError> {
    let mut ops = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|source| ReadError::Json {
            line: i + 1,
            source,
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// Writes a history in the form [`read`] reads.
pub fn write(ops: &[Op], mut out: impl std::io::Write) -> std::io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
