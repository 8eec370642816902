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
        /// The workload (only qos1-queue so far).
        #[arg(long, default_value = "qos1-queue")]
        workload: String,
        /// Faults to pick from, comma-separated: partition, pause, kill (empty: none).
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
        } => {
            if workload != "qos1-queue" {
                eprintln!("roost-chaos: unknown workload {workload:?} (known: qos1-queue)");
                return ExitCode::from(2);
            }
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
            let roost = roost.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("roost")))
                    .unwrap_or_else(|| PathBuf::from("roost"))
            });
            eprintln!("roost-chaos: seed {seed}");
            let cfg = roost_chaos::run::RunConfig {
                nodes,
                faults,
                duration: std::time::Duration::from_secs(duration),
                seed,
                out,
                roost,
                fault_for: std::time::Duration::from_secs(8),
                quiet_for: std::time::Duration::from_secs(5),
            };
            match roost_chaos::run::run(&cfg) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("roost-chaos: run failed (seed {seed}): {e:#}");
                    ExitCode::from(2)
                }
            }
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
