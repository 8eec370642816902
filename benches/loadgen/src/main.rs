//! `roost-loadgen`: the end-to-end load generator for Roost (and any MQTT 3.1.1 / 5.0 broker)
//! running on this machine: the same scenarios, the same client and the same report for every
//! broker, so their numbers can stand in one table.
//!
//! Subcommands, each bounded in connections and time and stopping by itself:
//!
//! - `idle`: opens N connections (one subscription each with `--subscribe`) and reports the
//!   broker's resident memory per connection ([`idle`]).
//! - `throughput`: P publishers and S subscribers; messages per second published and
//!   delivered, publish-to-delivery latency, loss, duplication and reordering per pair
//!   ([`throughput`]). Patterns: point-to-point pairs (default), `--fanout` (every subscriber
//!   gets every message), `--fan-in` (many publishers into one subscriber), `--shared GROUP`
//!   (`$share/GROUP/bench/#`: each message to one member, loss and duplicates over the group).
//! - `round-trip`: each client publishes to a topic it subscribes to itself, one message in
//!   flight; round-trip latency and round trips per second ([`round_trip`]).
//! - `subscribe-latency`: C clients each SUBSCRIBE to N new (or, `--existing`, already routed)
//!   filters one after another; SUBACK latency, subscribes per second, and with
//!   `--publish-host` whether a publish on another node right after each SUBACK arrives
//!   ([`subscribe_latency`]).
//! - `table`: turns the `--json` lines of several brokers into one Markdown table ([`table`]).
//! - `plot`: turns them into SVG plots, one line per broker ([`plot`]).
//!
//! What every publishing scenario (`throughput`, `round-trip`) reports beside its totals:
//! latency percentiles p50 / p90 / p99 / p99.9 / max from an HdrHistogram ([`latency`]), and
//! a per-second series of messages sent and received and latency p50 / p99 ([`series`]) that
//! `--plot DIR` draws as SVG ([`plot`]). While it runs, a progress bar on stderr shows the
//! elapsed time and the current rates ([`progress`]); it is off when stderr is not a terminal
//! and with `--no-progress`. `--nodes A,B,...` (or `--pub-nodes` / `--sub-nodes`) puts
//! publishers and subscribers on different cluster nodes ([`target::Placement`]).
//!
//! Every scenario runs over TCP, TLS or QUIC (`--transport`, `--ca`, `--server-name`:
//! [`transport`]). The client is our own, on `roost-codec` ([`client`]). Only loopback brokers
//! may be targeted, for every address given ([`target`]). The allocator is mimalloc, as in the
//! `roost` binary (house style 12), so the load generator's own overhead is what a Roost node's
//! would be.
//!
//! Exit codes: 0 when the scenario ran (its report says how well), 64 for a refused command line
//! (a non-loopback address, impossible numbers), 1 when the scenario could not run or was
//! interrupted by a broker error.

mod client;
mod idle;
mod latency;
mod plot;
mod procfs;
mod progress;
mod round_trip;
mod series;
mod subscribe_latency;
mod table;
mod target;
mod throughput;
mod transport;

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};
use roost_codec::{Protocol, QoS};
use std::process::ExitCode;
use std::time::Duration;
use target::{Placement, UsageError};
use tokio::task::JoinHandle;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a refused command line (sysexits.h EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "roost-loadgen",
    version,
    about = "End-to-end MQTT load generator for brokers on this machine (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open many idle connections and measure broker memory per connection.
    Idle(idle::IdleArgs),
    /// Publish and subscribe as fast as the broker allows (pairs, fan-out, fan-in, shared
    /// subscription); rates, latency, loss, duplicates, reordering.
    Throughput(throughput::ThroughputArgs),
    /// Each client publishes to its own topic and waits for the message to come back, one in
    /// flight; round-trip latency and round trips per second.
    RoundTrip(round_trip::RoundTripArgs),
    /// SUBSCRIBE-to-SUBACK latency when every SUBSCRIBE is a route change (or, `--existing`,
    /// none is); with `--publish-host`, that a publish on another node right after arrives.
    SubscribeLatency(subscribe_latency::SubscribeLatencyArgs),
    /// Print a Markdown table comparing brokers from their `--json` result lines.
    Table(table::TableArgs),
    /// Write SVG plots (throughput and latency per second) comparing brokers from their
    /// `--json` result lines.
    Plot(plot::PlotArgs),
}

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// Broker address, HOST:PORT. Must be loopback (127.0.0.0/8 or ::1): other hosts are
    /// refused.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(crate) host: String,
    /// Speak MQTT 3.1.1 instead of 5.0.
    #[arg(long)]
    pub(crate) v311: bool,
    /// The broker's process id, to read its memory (and CPU) from /proc.
    #[arg(long, value_name = "PID")]
    pub(crate) broker_pid: Option<u32>,
    /// Print one JSON object on stdout (the human summary goes to stderr).
    #[arg(long)]
    pub(crate) json: bool,
    /// Name of this run in the report (default: derived from the parameters).
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// No progress bar on stderr (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub(crate) no_progress: bool,
    #[command(flatten)]
    pub(crate) transport: transport::TransportArgs,
}

impl Common {
    pub(crate) fn protocol(&self) -> Protocol {
        if self.v311 {
            Protocol::V311
        } else {
            Protocol::V5
        }
    }

    pub(crate) fn protocol_name(&self) -> &'static str {
        if self.v311 {
            "v3.1.1"
        } else {
            "v5"
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Common {
        Common {
            host: "127.0.0.1:1883".to_owned(),
            v311: false,
            broker_pid: None,
            json: false,
            label: None,
            no_progress: true,
            transport: transport::TransportArgs {
                transport: transport::TransportKind::Tcp,
                ca: None,
                server_name: "localhost".to_owned(),
            },
        }
    }
}

/// Message options of the publishing scenarios (`throughput`, `round-trip`), validated once
/// for both ([`MessageArgs::validate`]).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MessageArgs {
    /// QoS of every publish and subscription (0, 1 or 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) qos: u8,
    /// Payload bytes per message (at least 24: the timestamp/sequence header).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// Length of the measurement window, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration_secs: u64,
}

impl MessageArgs {
    /// `--qos` as the codec's type (clap has checked the range).
    pub(crate) fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or_default()
    }

    /// The payload holds the header ([`throughput::PAYLOAD_HEADER_LEN`]) and is at most 1 MiB;
    /// the window lasts at least a second.
    pub(crate) fn validate(&self) -> Result<(), UsageError> {
        let header = throughput::PAYLOAD_HEADER_LEN;
        if self.payload < header {
            return Err(UsageError(format!(
                "--payload {} is too small: the header (time, sequence, publisher, run) takes \
                 {header} bytes",
                self.payload
            )));
        }
        if self.payload > 1024 * 1024 {
            return Err(UsageError(format!(
                "--payload {} is above 1 MiB",
                self.payload
            )));
        }
        if self.duration_secs == 0 {
            return Err(UsageError("--duration-secs must be at least 1".into()));
        }
        Ok(())
    }

    /// QoS `qos`, 64-byte payloads, a one-second window.
    #[cfg(test)]
    pub(crate) fn for_tests(qos: u8) -> MessageArgs {
        MessageArgs {
            qos,
            payload: 64,
            duration_secs: 1,
        }
    }
}

/// Upper bound on a whole scenario, beyond the bounds each phase keeps: a last guard so the
/// process always stops by itself.
fn watchdog(secs: u64) -> Duration {
    Duration::from_secs(secs + 300)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Table(args) => return finish(table::run(args)),
        Command::Plot(args) => return finish(plot::run(args)),
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roost-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    finish(runtime.block_on(run(cli.command)))
}

fn finish(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roost-loadgen: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Idle(args) => {
            let addr = target::resolve_loopback(&args.common.host).await?;
            let limit = watchdog(args.hold_secs + args.connections as u64 / 10);
            let Ok(report) = tokio::time::timeout(limit, idle::run(&args, addr)).await else {
                bail!("idle did not finish within {limit:?}");
            };
            emit(&args.common, &report?)
        }
        Command::Throughput(args) => {
            let nodes = Placement::resolve(&args.common.host, &args.nodes).await?;
            let limit = watchdog(args.warmup_secs + args.message.duration_secs + args.drain_secs);
            let Ok(report) = tokio::time::timeout(limit, throughput::run(&args, &nodes)).await
            else {
                bail!("throughput did not finish within {limit:?}");
            };
            emit(&args.common, &report?)
        }
        Command::RoundTrip(args) => {
            let nodes = Placement::resolve(&args.common.host, &args.nodes).await?;
            let limit =
                watchdog(args.warmup_secs + args.message.duration_secs + args.timeout_ms / 1000);
            let Ok(report) = tokio::time::timeout(limit, round_trip::run(&args, &nodes)).await
            else {
                bail!("round-trip did not finish within {limit:?}");
            };
            emit(&args.common, &report?)
        }
        Command::SubscribeLatency(args) => {
            let addr = target::resolve_loopback(&args.common.host).await?;
            // Set-up (holders, connections) is bounded by the client's own timeouts.
            let limit = watchdog(args.max_secs);
            let Ok(report) = tokio::time::timeout(limit, subscribe_latency::run(&args, addr)).await
            else {
                bail!("subscribe-latency did not finish within {limit:?}");
            };
            emit(&args.common, &report?)
        }
        Command::Table(args) => table::run(&args),
        Command::Plot(args) => plot::run(&args),
    }
}

/// Prints the report: human summary on stdout, or on stderr with the JSON line on stdout.
fn emit<R: serde::Serialize + std::fmt::Display>(common: &Common, report: &R) -> Result<()> {
    if common.json {
        eprintln!("{report}");
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// Awaits every task in order; the first error (or panic) wins.
pub(crate) async fn join_all<T>(tasks: Vec<JoinHandle<Result<T>>>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow!("task panicked: {e}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
