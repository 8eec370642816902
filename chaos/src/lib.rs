//! Roost's Jepsen-style fault testing (issue 8). The history format ([`history`]), the
//! invariants ([`invariants`], one per file, each citing its source) and the checker that
//! holds a history to them ([`check`], also `roost-chaos check HISTORY`); and a first harness
//! ([`run`]): nodes in network namespaces ([`net`], [`nodes`]), the workloads ([`workload`])
//! and a nemesis of partitions, pauses and kills, all from one seed ([`rng`]).

pub mod delay;
pub mod history;
pub mod invariants;
pub mod net;
pub mod nodes;
pub mod plot;
pub mod rng;
pub mod run;
pub mod suite;
pub mod workload;

use history::{Op, Outcome};
use invariants::Violation;

/// What the checker found in one history.
#[derive(Debug, Default)]
pub struct Report {
    /// Every violation, by invariant, in [`invariants::ALL`] order.
    pub violations: Vec<Violation>,
    /// Publishes acknowledged with success.
    pub acknowledged: usize,
    /// Publishes refused.
    pub failed: usize,
    /// Publishes with no answer (neither lost nor counted delivered when absent).
    pub unknown: usize,
    /// Of the unknown ones, those some subscriber received after all.
    pub recovered: usize,
    /// Of the refused ones, those some subscriber received anyway (failure is not rollback:
    /// docs/architecture.md, "What an acknowledgement promises"); not a violation.
    pub refused_delivered: usize,
    /// Messages received (every receipt, duplicates included).
    pub received: usize,
    /// QoS 2 messages not acknowledged with success (refused, or no answer) that reached one
    /// subscriber more than once: allowed by the documented promise (exactly-once holds for
    /// 0x00), reported so it stays visible.
    pub refused_twice: usize,
    /// The will workload's endings and wills (all zero for the other workloads).
    pub wills: invariants::will::Summary,
    /// The longest times a client that keeps a connection was without one: (client, from,
    /// to), at most 3 (judged by `invariants::outage` only under a bound).
    pub outages: Vec<(String, history::Nanos, history::Nanos)>,
}

impl Report {
    /// True when every invariant held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The report as Markdown: counts, then each invariant with its source and violations
    /// (at most `per_invariant` shown of each).
    pub fn markdown(&self, per_invariant: usize) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "verdict: {}\n\npublishes: {} acknowledged, {} refused ({} delivered anyway), {} \
             unknown ({} recovered); {} receipts; {} QoS 2 messages not acknowledged with \
             success reached a subscriber twice (allowed: failure is not rollback)\n\n",
            if self.ok() { "ok" } else { "VIOLATED" },
            self.acknowledged,
            self.failed,
            self.refused_delivered,
            self.unknown,
            self.recovered,
            self.received,
            self.refused_twice
        ));
        if self.wills.endings > 0 || self.wills.received > 0 {
            s.push_str(&format!(
                "wills: {} connections ended ({} with the will due, {} with none allowed), {} \
                 judged (no fault touched them), {} wills received; where a fault may explain \
                 it (not judged): {} received again without DUP, {} due and not received by \
                 a watcher, {} not allowed and received\n\n",
                self.wills.endings,
                self.wills.due,
                self.wills.forbidden,
                self.wills.judged,
                self.wills.received,
                self.wills.repeated_under_faults,
                self.wills.missing_under_faults,
                self.wills.forbidden_under_faults
            ));
        }
        if !self.outages.is_empty() {
            let longest: Vec<String> = self
                .outages
                .iter()
                .map(|(c, from, to)| {
                    format!(
                        "{c} {:.2} s (from {:.2} s)",
                        (to - from) as f64 / 1e9,
                        *from as f64 / 1e9
                    )
                })
                .collect();
            s.push_str(&format!(
                "longest times without a connection: {}\n\n",
                longest.join(", ")
            ));
        }
        s.push_str("| invariant | source | violations |\n|---|---|--:|\n");
        for inv in invariants::ALL {
            let n = self
                .violations
                .iter()
                .filter(|v| v.invariant == inv.name)
                .count();
            s.push_str(&format!("| {} | {} | {} |\n", inv.name, inv.source, n));
        }
        for inv in invariants::ALL {
            let found: Vec<_> = self
                .violations
                .iter()
                .filter(|v| v.invariant == inv.name)
                .collect();
            if found.is_empty() {
                continue;
            }
            s.push_str(&format!("\n## {} ({})\n\n", inv.name, found.len()));
            for v in found.iter().take(per_invariant) {
                s.push_str(&format!("- {}\n", v.detail));
            }
            if found.len() > per_invariant {
                s.push_str(&format!("- ... and {} more\n", found.len() - per_invariant));
            }
        }
        s
    }
}

/// Holds a history to every invariant.
pub fn check(ops: &[Op]) -> Report {
    let mut r = Report::default();
    let mut received = std::collections::HashSet::new();
    for op in ops {
        if let Op::Receive { publisher, seq, .. } = op {
            r.received += 1;
            received.insert((publisher.as_str(), *seq));
        }
    }
    for op in ops {
        if let Op::Publish {
            client,
            seq,
            outcome,
            ..
        } = op
        {
            match outcome {
                Outcome::Ok => r.acknowledged += 1,
                Outcome::Failed => {
                    r.failed += 1;
                    if received.contains(&(client.as_str(), *seq)) {
                        r.refused_delivered += 1;
                    }
                }
                Outcome::Unknown => {
                    r.unknown += 1;
                    if received.contains(&(client.as_str(), *seq)) {
                        r.recovered += 1;
                    }
                }
            }
        }
    }
    let acked = invariants::duplicated::acknowledged(ops);
    r.refused_twice = invariants::duplicated::repeated(ops)
        .iter()
        .filter(|((_, publisher, seq), _)| !acked.contains(&(*publisher, *seq)))
        .count();
    for inv in invariants::ALL {
        r.violations.extend((inv.check)(ops));
    }
    r.wills = invariants::will::judge(ops).1;
    // Outages up to the bound's end, or (no bound) up to the last publish.
    let end = invariants::outage::bound(ops)
        .map(|(_, until)| until)
        .unwrap_or_else(|| {
            ops.iter()
                .filter_map(|op| match op {
                    Op::Publish { end, .. } => Some(*end),
                    _ => None,
                })
                .max()
                .unwrap_or(0)
        });
    r.outages = invariants::outage::outages(ops, end);
    r.outages.truncate(3);
    r
}
