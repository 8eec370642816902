//! `roost-chaos`: see the crate docs. Exit codes: 0 every invariant held, 1 a violation was
//! found (or the cluster did not heal), 2 the input could not be read or the run could not
//! be made.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "roost-chaos", about = "Jepsen-style fault testing for Roost")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Starts a cluster in network namespaces (needs root and iproute2), runs a workload
    /// under a nemesis, checks the history, and writes history.jsonl, report.md,
    /// nemesis.log and the node logs to OUT.
    Run {
        /// Number of nodes (1 to 5).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The workload: qos1-queue, qos2-exactly-once, takeover, retained, shared, will,
        /// qos1-and-retained (the first and `retained` at once).
        #[arg(long, default_value = "qos1-queue")]
        workload: String,
        /// Faults to pick from, comma-separated: partition, pause, kill, restart,
        /// rolling-restart, isolate-leader, partition-halves (3+ nodes), bridge (3+ nodes),
        /// ring (4+ nodes), loss, delay (need nft and iptables), membership (a spare node
        /// N+1 joins and leaves), scale (N -> N+2 -> N) (empty: none).
        #[arg(long, default_value = "partition,pause", value_delimiter = ',')]
        nemesis: Vec<String>,
        /// Seconds of workload (the drain comes after).
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// The seed every random choice comes from.
        #[arg(long)]
        seed: Option<u64>,
        /// Where to write the results.
        #[arg(long, default_value = "chaos-out")]
        out: PathBuf,
        /// The roost binary (default: next to this one).
        #[arg(long, env = "ROOST_BIN")]
        roost: Option<PathBuf>,
        /// Judge the `outage` invariant: a publisher or persistent subscriber that loses its
        /// connection has a new one within this many seconds (default: only reported).
        #[arg(long)]
        max_outage_secs: Option<f64>,
    },
    /// Shows the checker catches faults planted in real nodes: short runs against a roost
    /// built with `--features testing`, one failpoint each. Exit 0 only if every planted
    /// fault was reported.
    Selftest {
        /// The roost binary built with the `testing` feature (default: `roost-testing` next to
        /// this one).
        #[arg(long, env = "ROOST_TESTING_BIN")]
        roost_testing: Option<PathBuf>,
        /// Where to write the runs.
        #[arg(long, default_value = "chaos-out")]
        out: PathBuf,
    },
    /// Runs the fixed suite of runs (`--short`: the one CI runs). Exit 0 only if every run held
    /// every invariant and healed.
    Suite {
        /// The short suite (a few minutes) instead of the full one (every workload under three
        /// rounds of nemeses and a 5-node run, 70 s each: about 31 minutes).
        #[arg(long)]
        short: bool,
        /// Where to write the runs.
        #[arg(long, default_value = "chaos-out")]
        out: PathBuf,
        /// The roost binary (default: next to this one).
        #[arg(long, env = "ROOST_BIN")]
        roost: Option<PathBuf>,
    },
    /// Checks a saved history (JSON lines, see chaos/README.md) against every invariant and
    /// prints the report.
    Check {
        /// The history file.
        history: PathBuf,
        /// Violations shown per invariant.
        #[arg(long, default_value_t = 20)]
        show: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            nodes,
            workload,
            nemesis,
            duration,
            seed,
            out,
            roost,
            max_outage_secs,
        } => {
            let max_outage = match max_outage_secs.map(std::time::Duration::try_from_secs_f64) {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    eprintln!("roost-chaos: --max-outage-secs: {e}");
                    return ExitCode::from(2);
                }
            };
            let workload = match workload.parse() {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("roost-chaos: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut faults = Vec::new();
            for n in nemesis.iter().filter(|n| !n.is_empty()) {
                match n.parse() {
                    Ok(f) => faults.push(f),
                    Err(e) => {
                        eprintln!("roost-chaos: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            let roost = roost.unwrap_or_else(|| beside_me("roost"));
            eprintln!("roost-chaos: seed {seed}");
            let cfg = roost_chaos::run::RunConfig {
                nodes,
                max_outage,
                ..roost_chaos::run::RunConfig::new(
                    workload,
                    faults,
                    std::time::Duration::from_secs(duration),
                    seed,
                    out,
                    roost,
                )
            };
            match roost_chaos::run::run(&cfg) {
                Ok(r) => {
                    print!("{}", r.markdown);
                    verdict(Ok(r.ok()))
                }
                Err(e) => {
                    eprintln!("roost-chaos: run failed (seed {seed}): {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Selftest { roost_testing, out } => {
            let roost = roost_testing.unwrap_or_else(|| beside_me("roost-testing"));
            verdict(roost_chaos::suite::selftest(&roost, &out))
        }
        Command::Suite { short, out, roost } => {
            let roost = roost.unwrap_or_else(|| beside_me("roost"));
            verdict(roost_chaos::suite::suite(&roost, &out, short))
        }
        Command::Check { history, show } => {
            let file = match std::fs::File::open(&history) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("roost-chaos: {}: {e}", history.display());
                    return ExitCode::from(2);
                }
            };
            let ops = match roost_chaos::history::read(std::io::BufReader::new(file)) {
                Ok(ops) => ops,
                Err(e) => {
                    eprintln!("roost-chaos: {}: {e}", history.display());
                    return ExitCode::from(2);
                }
            };
            let report = roost_chaos::check(&ops);
            print!("{}", report.markdown(show));
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// A binary in the same directory as this one.
fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Exit 0 when it held, 1 when it did not, 2 when it could not be made.
fn verdict(r: anyhow::Result<bool>) -> ExitCode {
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("roost-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}
