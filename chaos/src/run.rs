//! `roost-chaos run`: a cluster in namespaces, a workload recording a history, a nemesis
//! injecting faults from the seed, then a quiet phase in which the cluster must heal by
//! itself; the history is checked and everything is written to `OUT`.
//!
//! ```text
//!  start N nodes ─▶ ready ─▶ workload ┬──────────────────────────────────────────▶ stop publishers
//!                                      └ nemesis: (quiet, fault) × k, healed ─────▶ drain (subscribers)
//!                                                                                   ─▶ check ─▶ OUT/
//! ```

use crate::history;
use crate::net::Net;
use crate::nodes::{self, Nodes, MQTT};
use crate::rng::Rng;
use crate::workload::{self, Recorder, Targets};
use anyhow::{bail, Context};
use parking_lot::Mutex;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// One random node cut off from the others (clients still reach it).
    Partition,
    /// One random node SIGSTOPped, then SIGCONTed.
    Pause,
    /// One random node SIGKILLed, then started again from its data directory.
    Kill,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        match s {
            "partition" => Ok(Fault::Partition),
            "pause" => Ok(Fault::Pause),
            "kill" => Ok(Fault::Kill),
            other => Err(format!(
                "unknown nemesis {other:?} (known: partition, pause, kill)"
            )),
        }
    }
}

/// What a run is asked to do.
pub struct RunConfig {
    pub nodes: usize,
    pub faults: Vec<Fault>,
    pub duration: Duration,
    pub seed: u64,
    pub out: PathBuf,
    pub roost: PathBuf,
    /// How long each fault lasts (longer than the 4 s session lease, so leases run out).
    pub fault_for: Duration,
    /// Quiet time before each fault, and the drain after the publishers stop.
    pub quiet_for: Duration,
}

/// Runs one test; returns whether every invariant held.
pub fn run(cfg: &RunConfig) -> anyhow::Result<bool> {
    if !(1..=5).contains(&cfg.nodes) {
        bail!("--nodes must be 1 to 5");
    }
    std::fs::create_dir_all(&cfg.out)?;
    let tag = format!(
        "rc{:04x}",
        (cfg.seed ^ u64::from(std::process::id())) & 0xffff
    );
    let net = Arc::new(Mutex::new(
        Net::new(&tag, cfg.nodes).context("building the network")?,
    ));
    let targets = {
        let n = net.lock();
        Targets(
            (1..=cfg.nodes)
                .map(|i| format!("{}:{MQTT}", n.node_ip(i)).parse())
                .collect::<Result<_, _>>()?,
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let nodes = Nodes::start(&net.lock(), cfg.nodes, &cfg.roost, &cfg.out)?;
    let admin = nodes.admin_addrs()?;
    rt.block_on(nodes::wait_ready(admin.clone(), Duration::from_secs(30)))
        .context("the cluster did not start")?;
    let nodes = Arc::new(Mutex::new(nodes));
    let mut events = std::fs::File::create(cfg.out.join("nemesis.log"))?;
    writeln!(
        events,
        "seed {} nodes {} faults {:?} duration {:?}",
        cfg.seed, cfg.nodes, cfg.faults, cfg.duration
    )?;

    let rec = Recorder::new();
    let stop_pub = Arc::new(AtomicBool::new(false));
    let stop_sub = Arc::new(AtomicBool::new(false));
    let mut rng = Rng::new(cfg.seed);
    let mut tasks = Vec::new();
    for i in 1..=cfg.nodes {
        let sub_rng = Rng::new(rng.next_u64());
        tasks.push(rt.spawn(workload::subscriber(
            i,
            targets.clone(),
            rec.clone(),
            Arc::clone(&stop_sub),
            sub_rng,
        )));
    }
    // Subscribers first, so every publish is owed to them.
    std::thread::sleep(Duration::from_secs(2));
    for i in 1..=cfg.nodes {
        tasks.push(rt.spawn(workload::publisher(
            i,
            targets.clone(),
            rec.clone(),
            Arc::clone(&stop_pub),
        )));
    }

    // The nemesis, on this thread.
    let started = Instant::now();
    let mut nemesis_rng = Rng::new(rng.next_u64());
    while !cfg.faults.is_empty() && started.elapsed() + cfg.quiet_for + cfg.fault_for < cfg.duration
    {
        std::thread::sleep(cfg.quiet_for);
        let fault = cfg.faults[nemesis_rng.below(cfg.faults.len())];
        let victim = 1 + nemesis_rng.below(cfg.nodes);
        let at = rec.now();
        match fault {
            Fault::Partition => net.lock().partition(&[victim])?,
            Fault::Pause => nodes.lock().pause(victim, true),
            Fault::Kill => nodes.lock().kill(victim),
        }
        std::thread::sleep(cfg.fault_for);
        match fault {
            Fault::Partition => net.lock().heal()?,
            Fault::Pause => nodes.lock().pause(victim, false),
            Fault::Kill => nodes.lock().spawn(victim)?,
        }
        writeln!(
            events,
            "{fault:?} node {victim} from {:.3}s to {:.3}s",
            at as f64 / 1e9,
            rec.now() as f64 / 1e9
        )?;
    }
    let rest = cfg.duration.saturating_sub(started.elapsed());
    std::thread::sleep(rest);
    stop_pub.store(true, Ordering::Release);
    // The quiet phase: the cluster heals by itself and subscribers drain what they are owed.
    let healed = rt.block_on(nodes::wait_ready(admin, Duration::from_secs(10)));
    writeln!(
        events,
        "healed within 10 s of the last fault: {}",
        if healed.is_ok() { "yes" } else { "NO" }
    )?;
    std::thread::sleep(cfg.quiet_for.max(Duration::from_secs(5)));
    stop_sub.store(true, Ordering::Release);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
    });
    nodes.lock().stop();
    net.lock().close();

    let ops = rec.ops();
    history::write(
        &ops,
        std::io::BufWriter::new(std::fs::File::create(cfg.out.join("history.jsonl"))?),
    )?;
    let report = crate::check(&ops);
    let mut md = format!(
        "# roost-chaos run\n\nseed {}, {} nodes, faults {:?}, {:?}; replay with \
         `roost-chaos run --seed {} ...`\n\n",
        cfg.seed, cfg.nodes, cfg.faults, cfg.duration, cfg.seed
    );
    md.push_str(&report.markdown(50));
    if healed.is_err() {
        md.push_str("\nThe cluster did not heal within 10 s of the last fault.\n");
    }
    std::fs::write(cfg.out.join("report.md"), &md)?;
    print!("{md}");
    Ok(report.ok() && healed.is_ok())
}
