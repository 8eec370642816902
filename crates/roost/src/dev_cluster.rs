//! `roost dev-cluster`: a local N-node cluster in the foreground, for trying the cluster out.
//!
//! ```text
//! roost dev-cluster --nodes 3 --base-port 1883 --data-dir ./dev-cluster-data
//!
//!   node i (0-based)   MQTT 127.0.0.1:P+i   HTTP 127.0.0.1:P+100+i   cluster 127.0.0.1:P+200+i
//!                      data DIR/node-(i+1)  log  DIR/node-(i+1).log   node id i+1
//! ```
//!
//! Each node is a child process of this same binary (`roost serve ... --seed` for every node),
//! so what runs is exactly what `roost serve` runs. The supervisor is one current-thread tokio
//! runtime that waits for three things: SIGINT/SIGTERM (stop every node: SIGTERM, then SIGKILL
//! after [`STOP_GRACE`]; exit 0), a child that exits on its own (report it with its log tail,
//! stop the others, exit 1), and readiness reports from a probe thread that polls each node's
//! `/readyz` (blocking HTTP, so it lives on its own thread; it sends each node index once over
//! a channel sized for all of them, so it never blocks on the channel).
//!
//! Children stay in our process group: Ctrl-C in a terminal reaches them directly as well, and
//! whoever kills the group kills everything. Running it again on the same data directory
//! restarts the same cluster (a node with Raft state on disk ignores its seeds).

use clap::Args;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long stopped nodes get to drain before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the supervisor checks whether a child exited.
const CHILD_POLL: Duration = Duration::from_millis(100);
/// How often the probe thread asks a not-yet-ready node for `/readyz`.
const READY_POLL: Duration = Duration::from_millis(200);
/// After this long without `/readyz` 200, say so once (the node may be waiting for a quorum).
const READY_WARN_AFTER: Duration = Duration::from_secs(30);
/// A child that exits this soon before our own SIGINT/SIGTERM arrives is taken to have been
/// stopped by the same Ctrl-C (the terminal signals the whole process group), not to have
/// failed.
const SIGNAL_RACE: Duration = Duration::from_millis(500);

/// `roost dev-cluster`: run a local cluster of N nodes in the foreground until Ctrl-C.
#[derive(Args, Debug)]
pub(crate) struct DevClusterArgs {
    /// Number of nodes (node ids 1..=N).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    nodes: u16,
    /// Node i (0-based) listens for MQTT on P+i, HTTP on P+100+i and cluster gRPC on P+200+i.
    #[arg(long, value_name = "P", default_value_t = 1883)]
    base_port: u16,
    /// Directory for the nodes' data (`node-1/`, ...) and logs (`node-1.log`, ...).
    #[arg(long, value_name = "DIR", default_value = "./dev-cluster-data")]
    data_dir: PathBuf,
    /// Log filter passed to every node (`--log-level`).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

/// The addresses and files of one node of the dev cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodePlan {
    node_id: u64,
    mqtt: String,
    http: String,
    cluster: String,
    data_dir: PathBuf,
    log: PathBuf,
}

/// Lays out the nodes; fails when a port would pass 65535.
fn plan(nodes: u16, base_port: u16, data_dir: &Path) -> Result<Vec<NodePlan>, String> {
    let last = u32::from(base_port) + 200 + u32::from(nodes) - 1;
    if last > u32::from(u16::MAX) {
        return Err(format!(
            "--base-port {base_port} with {nodes} nodes needs ports up to {last}, past 65535"
        ));
    }
    if base_port == 0 {
        return Err("--base-port must not be 0".to_owned());
    }
    let mut out = Vec::with_capacity(usize::from(nodes));
    for i in 0..u32::from(nodes) {
        let p = u32::from(base_port) + i;
        let node_id = u64::from(i) + 1;
        out.push(NodePlan {
            node_id,
            mqtt: format!("127.0.0.1:{p}"),
            http: format!("127.0.0.1:{}", p + 100),
            cluster: format!("127.0.0.1:{}", p + 200),
            data_dir: data_dir.join(format!("node-{node_id}")),
            log: data_dir.join(format!("node-{node_id}.log")),
        });
    }
    Ok(out)
}

/// The `roost serve` arguments of one node: its own addresses and every node as a seed.
fn serve_args(node: &NodePlan, all: &[NodePlan], log_level: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "serve".to_owned(),
        "--node-id".to_owned(),
        node.node_id.to_string(),
        "--mqtt".to_owned(),
        node.mqtt.clone(),
        "--http".to_owned(),
        node.http.clone(),
        "--cluster".to_owned(),
        node.cluster.clone(),
        "--data-dir".to_owned(),
        node.data_dir.display().to_string(),
    ];
    for seed in all {
        args.push("--seed".to_owned());
        args.push(format!("{}@{}", seed.node_id, seed.cluster));
    }
    if let Some(level) = log_level {
        args.push("--log-level".to_owned());
        args.push(level.to_owned());
    }
    args
}

/// Runs the dev cluster until Ctrl-C/SIGTERM (exit 0) or until a node dies (exit 1).
pub(crate) fn run(args: DevClusterArgs) -> ExitCode {
    let nodes = match plan(args.nodes, args.base_port, &args.data_dir) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("roost dev-cluster: {e}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roost dev-cluster: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(supervise(nodes, args.log_level))
}

struct Running {
    plan: NodePlan,
    child: Child,
    /// Set once the child has been reaped.
    status: Option<ExitStatus>,
}

async fn supervise(nodes: Vec<NodePlan>, log_level: Option<String>) -> ExitCode {
    // Install the handlers before the first child exists, so no signal is missed.
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("roost dev-cluster: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("roost dev-cluster: cannot find the roost binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(root) = nodes.first().and_then(|n| n.data_dir.parent()) {
        if let Err(e) = std::fs::create_dir_all(root) {
            eprintln!("roost dev-cluster: cannot create {}: {e}", root.display());
            return ExitCode::FAILURE;
        }
    }
    say(&format!(
        "starting {} nodes (data and logs in {}); Ctrl-C stops them",
        nodes.len(),
        nodes
            .first()
            .and_then(|n| n.data_dir.parent())
            .map_or_else(|| ".".to_owned(), |p| p.display().to_string())
    ));

    let mut running: Vec<Running> = Vec::with_capacity(nodes.len());
    for node in &nodes {
        match spawn_node(&exe, node, &nodes, log_level.as_deref()) {
            Ok(child) => running.push(Running {
                plan: node.clone(),
                child,
                status: None,
            }),
            Err(e) => {
                eprintln!("roost dev-cluster: cannot start node {}: {e}", node.node_id);
                stop_all(&mut running).await;
                return ExitCode::FAILURE;
            }
        }
    }

    // Readiness probe on its own thread (blocking HTTP); reports each node index once.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<usize>(nodes.len());
    let stop_probe = Arc::new(AtomicBool::new(false));
    let probe = {
        let urls: Vec<String> = nodes.iter().map(|n| n.http.clone()).collect();
        let stop = Arc::clone(&stop_probe);
        std::thread::spawn(move || probe_readiness(&urls, &ready_tx, &stop))
    };

    let mut ready = vec![false; nodes.len()];
    let mut warned = false;
    let started = Instant::now();
    let mut tick = tokio::time::interval(CHILD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let code = loop {
        tokio::select! {
            biased;
            name = signals.recv() => {
                say(&format!("{name}: stopping {} nodes", running.len()));
                stop_all(&mut running).await;
                say("all nodes stopped");
                break ExitCode::SUCCESS;
            }
            Some(i) = ready_rx.recv() => {
                if let Some(slot) = ready.get_mut(i) {
                    *slot = true;
                }
                let n = &nodes[i];
                say(&format!(
                    "node {} ready: mqtt {} http {} cluster {}",
                    n.node_id, n.mqtt, n.http, n.cluster
                ));
                if ready.iter().all(|r| *r) {
                    say(&format!(
                        "cluster ready: {} nodes; try `roost ctl --http {} status`",
                        nodes.len(), nodes[0].http
                    ));
                }
            }
            _ = tick.tick() => {
                if let Some(i) = first_exited(&mut running) {
                    // The Ctrl-C that stopped this child may also be on its way to us.
                    if let Some(name) = signals.recv_within(SIGNAL_RACE).await {
                        say(&format!("{name}: stopping {} nodes", running.len()));
                        stop_all(&mut running).await;
                        say("all nodes stopped");
                        break ExitCode::SUCCESS;
                    }
                    let r = &running[i];
                    let status = r.status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
                    eprintln!(
                        "roost dev-cluster: node {} exited unexpectedly ({status}); last lines of {}:",
                        r.plan.node_id, r.plan.log.display()
                    );
                    eprintln!("{}", log_tail(&r.plan.log, 20));
                    eprintln!("roost dev-cluster: stopping the other nodes");
                    stop_all(&mut running).await;
                    break ExitCode::FAILURE;
                }
                if !warned && started.elapsed() > READY_WARN_AFTER && !ready.iter().all(|r| *r) {
                    warned = true;
                    for (i, r) in ready.iter().enumerate() {
                        if !r {
                            say(&format!(
                                "node {} is not ready after {}s; see {}",
                                nodes[i].node_id,
                                READY_WARN_AFTER.as_secs(),
                                nodes[i].log.display()
                            ));
                        }
                    }
                }
            }
        }
    };
    stop_probe.store(true, Ordering::Release);
    let _ = probe.join();
    code
}

/// One line on stdout, flushed at once (stdout may be a pipe to a script waiting for it).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn spawn_node(
    exe: &Path,
    node: &NodePlan,
    all: &[NodePlan],
    log_level: Option<&str>,
) -> std::io::Result<Child> {
    std::fs::create_dir_all(&node.data_dir)?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)?;
    let args = serve_args(node, all, log_level);
    writeln!(log, "$ {} {}", exe.display(), args.join(" "))?;
    let err = log.try_clone()?;
    Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
}

/// Reaps children that exited; returns the index of the first one found dead.
fn first_exited(running: &mut [Running]) -> Option<usize> {
    for (i, r) in running.iter_mut().enumerate() {
        if r.status.is_some() {
            continue;
        }
        match r.child.try_wait() {
            Ok(Some(status)) => {
                r.status = Some(status);
                return Some(i);
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!(
                    "roost dev-cluster: cannot check node {}: {e}",
                    r.plan.node_id
                );
            }
        }
    }
    None
}

/// SIGTERM to every live child, wait up to [`STOP_GRACE`], then SIGKILL what is left.
async fn stop_all(running: &mut [Running]) {
    for r in running.iter_mut() {
        if r.status.is_none() {
            if let Ok(Some(status)) = r.child.try_wait() {
                r.status = Some(status);
                continue;
            }
            terminate(&r.child);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let mut alive = 0;
        for r in running.iter_mut() {
            if r.status.is_none() {
                match r.child.try_wait() {
                    Ok(Some(status)) => r.status = Some(status),
                    Ok(None) => alive += 1,
                    Err(_) => r.status = None,
                }
            }
        }
        if alive == 0 {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in running.iter_mut() {
        if r.status.is_none() {
            eprintln!(
                "roost dev-cluster: node {} did not stop within {}s; killing it",
                r.plan.node_id,
                STOP_GRACE.as_secs()
            );
            let _ = r.child.kill();
            r.status = r.child.wait().ok();
        }
    }
}

/// Sends SIGTERM (std's `Child::kill` only knows SIGKILL, which skips the node's drain).
fn terminate(child: &Child) {
    let Ok(raw) = i32::try_from(child.id()) else {
        return;
    };
    if let Some(pid) = rustix::process::Pid::from_raw(raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Polls every node's `/readyz` until each has answered 200 once, or until `stop`.
fn probe_readiness(
    addrs: &[String],
    ready_tx: &tokio::sync::mpsc::Sender<usize>,
    stop: &AtomicBool,
) {
    let mut pending: Vec<usize> = (0..addrs.len()).collect();
    while !pending.is_empty() && !stop.load(Ordering::Acquire) {
        let mut still = Vec::with_capacity(pending.len());
        for i in pending {
            let ok = crate::ctl::http_request(
                &addrs[i],
                "GET",
                "/readyz",
                None,
                None,
                Duration::from_secs(1),
            )
            .is_ok_and(|r| r.status == 200);
            if ok {
                // Capacity is the node count and each index is sent once: never full.
                if ready_tx.try_send(i).is_err() {
                    return; // the supervisor is gone
                }
            } else {
                still.push(i);
            }
        }
        pending = still;
        std::thread::sleep(READY_POLL);
    }
}

/// The last `lines` lines of a node's log, for the report when it dies.
fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(cannot open {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(16 * 1024);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// SIGINT and SIGTERM as one stream of signal names.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Cancel safety: both `recv`s are cancel safe (a signal not taken stays pending).
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "interrupted",
                _ = self.term.recv() => "terminated",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted"
        }
    }

    async fn recv_within(&mut self, wait: Duration) -> Option<&'static str> {
        tokio::time::timeout(wait, self.recv()).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_lays_out_ports_and_dirs() {
        let nodes = plan(3, 1883, Path::new("/tmp/dc")).expect("plan");
        assert_eq!(nodes.len(), 3);
        assert_eq!(
            nodes[0],
            NodePlan {
                node_id: 1,
                mqtt: "127.0.0.1:1883".to_owned(),
                http: "127.0.0.1:1983".to_owned(),
                cluster: "127.0.0.1:2083".to_owned(),
                data_dir: PathBuf::from("/tmp/dc/node-1"),
                log: PathBuf::from("/tmp/dc/node-1.log"),
            }
        );
        assert_eq!(nodes[2].node_id, 3);
        assert_eq!(nodes[2].mqtt, "127.0.0.1:1885");
        assert_eq!(nodes[2].http, "127.0.0.1:1985");
        assert_eq!(nodes[2].cluster, "127.0.0.1:2085");
    }

    #[test]
    fn plan_refuses_ports_past_65535() {
        assert!(plan(3, 65400, Path::new("d")).is_err());
        assert!(plan(1, 65335, Path::new("d")).is_ok());
        assert!(plan(2, 65335, Path::new("d")).is_err());
        assert!(plan(1, 0, Path::new("d")).is_err());
    }

    #[test]
    fn every_node_seeds_every_node() {
        let nodes = plan(2, 5000, Path::new("d")).expect("plan");
        let args = serve_args(&nodes[1], &nodes, Some("debug"));
        let d2 = Path::new("d").join("node-2").display().to_string();
        assert_eq!(
            args,
            [
                "serve",
                "--node-id",
                "2",
                "--mqtt",
                "127.0.0.1:5001",
                "--http",
                "127.0.0.1:5101",
                "--cluster",
                "127.0.0.1:5201",
                "--data-dir",
                d2.as_str(),
                "--seed",
                "1@127.0.0.1:5200",
                "--seed",
                "2@127.0.0.1:5201",
                "--log-level",
                "debug",
            ]
        );
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("roost-dc-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("n.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        let tail = log_tail(&path, 3);
        assert_eq!(tail, "    line 28\n    line 29\n    line 30");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(log_tail(&dir.join("missing"), 3).starts_with("(cannot open"));
    }
}
