//! `roost-chaos selftest` and `roost-chaos suite`.
//!
//! The self-test shows the checker fails when it should on the real system: for each planted
//! fault, a short run against nodes built with the `testing` feature and that failpoint on
//! (see `crates/roost-node/src/failpoints.rs`); it passes only if the checker reports the
//! invariant the fault breaks, every time.
//!
//! The suite is a fixed list of runs, each workload under faults with its own seed; `--short`
//! is the one CI runs on every change (a few minutes), the full one runs every workload for
//! 70 s under partitions, pauses and kills, again under the network's faults (halves, bridge,
//! loss, delay), again under the operators' (restart, rolling restart, isolated leader, a
//! node added and removed), and 5 nodes under ring, halves and bridge: 22 minutes of faults
//! (`docs/chaos.md` has its results).

use crate::run::{run, Fault, RunConfig, RunResult};
use crate::workload::Workload;
use std::path::Path;
use std::time::Duration;

/// A fault planted in the node and the invariant that must catch it.
struct Plant {
    failpoint: &'static str,
    workload: Workload,
    expect: &'static str,
}

const PLANTS: &[Plant] = &[
    Plant {
        failpoint: "drop_acked:40",
        workload: Workload::Qos1Queue,
        expect: crate::invariants::lost::NAME,
    },
    Plant {
        failpoint: "qos2_twice:40",
        workload: Workload::Qos2ExactlyOnce,
        expect: crate::invariants::duplicated::NAME,
    },
    Plant {
        failpoint: "two_sessions",
        workload: Workload::Takeover,
        expect: crate::invariants::two_sessions::NAME,
    },
    Plant {
        failpoint: "forget_retained:4",
        workload: Workload::Retained,
        expect: crate::invariants::stale_retained::NAME,
    },
];

/// Runs the self-test with `roost` (built with `--features testing`); returns whether every
/// planted fault was reported. Writes each run under `out/selftest-FAILPOINT`.
pub fn selftest(roost: &Path, out: &Path) -> anyhow::Result<bool> {
    let mut all = true;
    let mut table =
        String::from("| failpoint | workload | must be reported | reported |\n|---|---|---|--:|\n");
    for (i, p) in PLANTS.iter().enumerate() {
        let name = p.failpoint.split(':').next().unwrap_or(p.failpoint);
        let cfg = RunConfig {
            failpoints: Some(p.failpoint.to_owned()),
            ..RunConfig::new(
                p.workload,
                Vec::new(),
                Duration::from_secs(15),
                100 + i as u64,
                out.join(format!("selftest-{name}")),
                roost.to_owned(),
            )
        };
        let r = run(&cfg)?;
        let found = r
            .report
            .violations
            .iter()
            .filter(|v| v.invariant == p.expect)
            .count();
        all &= found > 0;
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            p.failpoint, p.workload, p.expect, found
        ));
        eprintln!(
            "selftest: {} with {}: {} {} violation(s){}",
            p.failpoint,
            p.workload,
            found,
            p.expect,
            if found > 0 { "" } else { "  <-- NOT FOUND" }
        );
    }
    println!(
        "# roost-chaos selftest\n\n{table}\nverdict: {}",
        if all { "ok" } else { "FAILED" }
    );
    Ok(all)
}

/// One run of the suite.
#[derive(Clone)]
struct Case {
    workload: Workload,
    faults: &'static [Fault],
    secs: u64,
    seed: u64,
    nodes: usize,
    /// The `outage` bound (clients back within it), for the operators' faults.
    outage: Option<Duration>,
}

/// Clients back within this under the operators' faults (a rolling restart, a scale-down):
/// each stopping node tells its v5 clients where to go and moves their sessions there.
const BACK_WITHIN: Duration = Duration::from_secs(5);

/// What issue 11 asks of a rolling restart and a scale 3 -> 5 -> 3: QoS 1 with persistent
/// subscribers and retained messages, nothing acknowledged lost, every client back within
/// [`BACK_WITHIN`]. In both suites.
const ROLLOUTS: [Case; 2] = [
    Case {
        workload: Workload::Qos1AndRetained,
        faults: &[Fault::RollingRestart],
        secs: 35,
        nodes: 3,
        seed: 80,
        outage: Some(BACK_WITHIN),
    },
    Case {
        workload: Workload::Qos1AndRetained,
        faults: &[Fault::Scale],
        secs: 35,
        nodes: 3,
        seed: 81,
        outage: Some(BACK_WITHIN),
    },
];

const ALL_FAULTS: &[Fault] = &[Fault::Partition, Fault::Pause, Fault::Kill];
/// The network's faults on 3 nodes (`ring` needs 4): the full suite's second round.
const NETWORK_FAULTS: &[Fault] = &[
    Fault::PartitionHalves,
    Fault::Bridge,
    Fault::Loss,
    Fault::Delay,
];
/// What operators do to a running cluster: the full suite's third round.
const OPERATOR_FAULTS: &[Fault] = &[
    Fault::Restart,
    Fault::RollingRestart,
    Fault::IsolateLeader,
    Fault::Membership,
    Fault::Scale,
];
/// How long each run of the full suite lasts: 3 rounds of 6 workloads and the 5-node run,
/// 19 × 70 s = 22 minutes of faults.
const FULL_SECS: u64 = 70;

const SHORT: &[Case] = &[
    Case {
        workload: Workload::Qos1Queue,
        faults: ALL_FAULTS,
        secs: 35,
        nodes: 3,
        seed: 2,
        outage: None,
    },
    Case {
        workload: Workload::Qos2ExactlyOnce,
        faults: &[Fault::Partition],
        secs: 22,
        nodes: 3,
        seed: 7,
        outage: None,
    },
    Case {
        workload: Workload::Takeover,
        faults: &[Fault::Kill],
        secs: 22,
        nodes: 3,
        seed: 3,
        outage: None,
    },
    Case {
        workload: Workload::Retained,
        faults: &[Fault::Partition],
        secs: 22,
        nodes: 3,
        seed: 4,
        outage: None,
    },
    Case {
        workload: Workload::Shared,
        faults: &[Fault::Pause],
        secs: 22,
        nodes: 3,
        seed: 5,
        outage: None,
    },
    Case {
        workload: Workload::Will,
        faults: &[Fault::Partition, Fault::Kill],
        secs: 22,
        nodes: 3,
        seed: 6,
        outage: None,
    },
    Case {
        workload: Workload::Takeover,
        faults: &[Fault::Restart, Fault::RollingRestart],
        secs: 25,
        nodes: 3,
        seed: 34,
        outage: None,
    },
];

/// Runs the suite (`short`: the CI one) with `roost`; returns whether every run held every
/// invariant and healed. Writes each run under `out/WORKLOAD-SEED`.
pub fn suite(roost: &Path, out: &Path, short: bool) -> anyhow::Result<bool> {
    // Every workload under the process faults, the network faults and the operators' ones,
    // then 5 nodes under the partitions only they allow (ring).
    let mut long: Vec<Case> = Vec::new();
    for (round, faults) in [ALL_FAULTS, NETWORK_FAULTS, OPERATOR_FAULTS]
        .into_iter()
        .enumerate()
    {
        for (i, w) in Workload::ALL.iter().enumerate() {
            long.push(Case {
                workload: *w,
                faults,
                secs: FULL_SECS,
                seed: 1000 + 100 * round as u64 + i as u64,
                nodes: 3,
                outage: None,
            });
        }
    }
    long.push(Case {
        workload: Workload::Qos1Queue,
        faults: &[Fault::Ring, Fault::PartitionHalves, Fault::Bridge],
        secs: FULL_SECS,
        seed: 1300,
        nodes: 5,
        outage: None,
    });
    long.extend(ROLLOUTS);
    let short_cases: Vec<Case> = SHORT.iter().cloned().chain(ROLLOUTS).collect();
    let cases: &[Case] = if short { &short_cases } else { &long };
    let mut all = true;
    let mut table = String::from("| workload | faults | seconds | seed | acked | violations | healed |\n|---|---|--:|--:|--:|--:|---|\n");
    for c in cases {
        let cfg = RunConfig {
            nodes: c.nodes,
            max_outage: c.outage,
            ..RunConfig::new(
                c.workload,
                c.faults.to_vec(),
                Duration::from_secs(c.secs),
                c.seed,
                out.join(format!("{}-{}", c.workload, c.seed)),
                roost.to_owned(),
            )
        };
        let r: RunResult = run(&cfg)?;
        all &= r.ok();
        table.push_str(&format!(
            "| {} | {:?} | {} | {} | {} | {} | {} |\n",
            c.workload,
            c.faults,
            c.secs,
            c.seed,
            r.report.acknowledged,
            r.report.violations.len(),
            if r.healed { "yes" } else { "NO" }
        ));
        if !r.ok() {
            eprintln!("{}", r.markdown);
        }
        eprintln!(
            "suite: {} {:?} seed {}: {}",
            c.workload,
            c.faults,
            c.seed,
            if r.ok() { "ok" } else { "VIOLATED" }
        );
    }
    println!(
        "# roost-chaos suite{}\n\n{table}\nverdict: {}",
        if short { " --short" } else { "" },
        if all { "ok" } else { "VIOLATED" }
    );
    Ok(all)
}
