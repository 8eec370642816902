//! The `roost` binary: sets the allocator, parses the command line, loads and validates the
//! configuration (file < environment < flags), starts telemetry and the node, and stops it
//! gracefully on SIGTERM/SIGINT.
//!
//! Exit codes: 0 after a clean stop, 64 (EX_USAGE) for an invalid configuration, 1 for any
//! other start-up failure (port in use, data directory locked).

mod ctl;
mod dev_cluster;
mod passwd;

use clap::{Parser, Subcommand};
use roost_node::config::{CliOverrides, Config};
use roost_node::Node;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc 2 (the workspace's `v2` feature), not 3: about 0.3 KiB less RSS per idle
/// connection and no throughput or latency row worse (benches/results/2026-12-03-mimalloc2-and-first-park.md).
/// Its housekeeping (idle threads give freed pages back): the roost-alloc crate, RFC 0012.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `node.transparent_huge_pages = false`: no transparent huge pages for this process, before
/// the runtime and the node allocate anything much. mimalloc asks for them (`MADV_HUGEPAGE`)
/// on its regions; the kernel then backs partly used 2 MiB regions whole, and khugepaged
/// keeps collapsing them while connections sit idle (docs/performance.md, "Transparent huge
/// pages"). A kernel that refuses (not Linux, too old) only costs that memory: logged.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off for this process (node.transparent_huge_pages = false)");
    }
}

/// Exit code for an invalid configuration (sysexits.h EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "roost",
    version,
    about = "Roost: a clustered MQTT 3.1.1 / 5.0 broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no flags: MQTT on 127.0.0.1:1883, HTTP on 127.0.0.1:8080, anonymous
    /// clients allowed, data in ./roost-data.
    Serve(Box<ServeArgs>),
    /// Validate a config file and exit: 0 if valid, 64 with the reason if not.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Inspect or change a running cluster through a member's admin HTTP API.
    Ctl(ctl::CtlArgs),
    /// Run a local N-node cluster in the foreground (for trying it out); Ctrl-C stops it.
    DevCluster(dev_cluster::DevClusterArgs),
    /// Add, change or delete a user in a password file (argon2id hashes). The password is read
    /// from stdin, or asked for twice without echo when stdin is a terminal.
    Passwd(passwd::PasswdArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// MQTT listen address (mqtt.listen).
    #[arg(long, value_name = "ADDR")]
    mqtt: Option<SocketAddr>,
    /// Admin HTTP listen address (http.listen).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Data directory (node.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `info,roost_node=debug` (log.level).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// This node's id in the cluster (cluster.node_id).
    #[arg(long, value_name = "N")]
    node_id: Option<u64>,
    /// Take the node id from the host name: 1 + its trailing -<ordinal>, so the StatefulSet
    /// pod roost-0 is node 1 (cluster.node_id_from_hostname).
    #[arg(long, conflicts_with = "node_id")]
    node_id_from_hostname: bool,
    /// Cluster gRPC listen address (cluster.listen).
    #[arg(long, value_name = "ADDR")]
    cluster: Option<SocketAddr>,
    /// An initial member as ID@HOST:PORT; repeat for each (cluster.seeds).
    #[arg(long = "seed", value_name = "ID@ADDR")]
    seeds: Vec<String>,
    /// Adds an MQTT-over-TLS listener (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    mqtts: Option<SocketAddr>,
    /// Adds an MQTT-over-WebSocket listener, path /mqtt.
    #[arg(long, value_name = "ADDR")]
    ws: Option<SocketAddr>,
    /// Adds an MQTT-over-secure-WebSocket listener, path /mqtt (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    wss: Option<SocketAddr>,
    /// Adds an MQTT-over-QUIC listener on this UDP address, ALPN "mqtt" (needs --tls-cert and
    /// --tls-key).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    quic: Option<SocketAddr>,
    /// PEM certificate chain for --mqtts, --wss and --quic.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --mqtts and --wss.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates on --mqtts and --wss; certificates are then
    /// required, and their CN is the client's username.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Password file written by `roost passwd` (auth.password_file).
    #[arg(long, value_name = "FILE")]
    passwords: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Serve(args) => serve(*args),
        Command::Ctl(args) => ctl::run(args),
        Command::DevCluster(args) => dev_cluster::run(args),
        Command::Passwd(args) => passwd::run(args),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read config file {}: {e}", file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match Config::from_toml_str(&text) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let cli = CliOverrides {
        mqtt: args.mqtt,
        http: args.http,
        data_dir: args.data_dir,
        log_level: args.log_level,
        node_id: args.node_id,
        node_id_from_hostname: args.node_id_from_hostname,
        cluster: args.cluster,
        seeds: args.seeds,
        mqtts: args.mqtts,
        ws: args.ws,
        wss: args.wss,
        quic: args.quic,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_client_ca: args.tls_client_ca,
        passwords: args.passwords,
    };
    if (cli.tls_cert.is_some() || cli.tls_key.is_some() || cli.tls_client_ca.is_some())
        && cli.mqtts.is_none()
        && cli.wss.is_none()
        && cli.quic.is_none()
    {
        eprintln!("roost: --tls-cert, --tls-key and --tls-client-ca apply to --mqtts, --wss or --quic; give one of them");
        return ExitCode::from(EXIT_CONFIG);
    }
    let config = match Config::load(args.config.as_deref(), std::env::vars(), &cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roost: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log = match roost_node::telemetry::init_logging(&config.log) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("roost: cannot start logging: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !config.node.transparent_huge_pages {
        disable_transparent_huge_pages();
    }
    if config.node.release_freed_memory {
        roost_alloc::release_freed_memory();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(roost_alloc::on_thread_park)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roost: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Listen for SIGTERM/SIGINT before anything starts: a signal during start-up then
        // stops the node cleanly once it is up, instead of killing the process half-way.
        let signal = wait_for_signal();
        let node = match Node::start(config, Some(log)).await {
            Ok(n) => n,
            // A config problem found only at start (an unreadable http.token_file).
            Err(e @ roost_node::StartError::Config(_)) => {
                tracing::error!(error = %e, "cannot start node");
                eprintln!("roost: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot start node");
                eprintln!("roost: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        signal.await;
        node.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Registers for SIGTERM and SIGINT now; the returned future resolves when one arrives.
fn wait_for_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut t), Some(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                (Some(mut t), None) => {
                    t.recv().await;
                }
                (None, Some(mut i)) => {
                    i.recv().await;
                }
                (None, None) => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
