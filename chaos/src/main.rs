//! `roost-chaos`: see the crate docs. Exit codes: 0 every invariant held, 1 a violation was
//! found, 2 the input could not be read.

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
