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
