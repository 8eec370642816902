//! The invariants the checker holds a history to, one per file, each citing where the promise
//! comes from. Each takes the whole history and returns its violations; none looks at another.

use crate::history::Op;

pub mod duplicated;
pub mod lost;
pub mod outage;
pub mod reordered;
pub mod stale_retained;
pub mod two_sessions;
pub mod unexpected;
pub mod will;

/// One broken promise, with enough to find it in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (its file).
    pub invariant: &'static str,
    /// What was seen, in a sentence.
    pub detail: String,
}

/// An invariant: a name, its source, and the check.
pub struct Invariant {
    /// Short name, as in reports.
    pub name: &'static str,
    /// Where the promise comes from (spec statement or our docs).
    pub source: &'static str,
    /// The check.
    pub check: fn(&[Op]) -> Vec<Violation>,
}

/// Every invariant, in report order.
pub const ALL: &[Invariant] = &[
    Invariant {
        name: lost::NAME,
        source: lost::SOURCE,
        check: lost::check,
    },
    Invariant {
        name: duplicated::NAME,
        source: duplicated::SOURCE,
        check: duplicated::check,
    },
    Invariant {
        name: unexpected::NAME,
        source: unexpected::SOURCE,
        check: unexpected::check,
    },
    Invariant {
        name: reordered::NAME,
        source: reordered::SOURCE,
        check: reordered::check,
    },
    Invariant {
        name: stale_retained::NAME,
        source: stale_retained::SOURCE,
        check: stale_retained::check,
    },
    Invariant {
        name: two_sessions::NAME,
        source: two_sessions::SOURCE,
        check: two_sessions::check,
    },
    Invariant {
        name: will::NAME,
        source: will::SOURCE,
        check: will::check,
    },
    Invariant {
        name: outage::NAME,
        source: outage::SOURCE,
        check: outage::check,
    },
];
