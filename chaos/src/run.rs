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
use crate::net::{Net, Shape};
use crate::nodes::{self, Nodes, MQTT};
use crate::rng::Rng;
use crate::workload::{self, Recorder, Stops, Targets, Workload};
use anyhow::{bail, Context};
use parking_lot::Mutex;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a node has to exit after SIGTERM before it is killed: its graceful drain
/// (`cluster.drain_timeout_ms`, 20 s by default) plus a margin.
const STOP_LIMIT: Duration = Duration::from_secs(25);

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// One random node cut off from the others (clients still reach it).
    Partition,
    /// One random node SIGSTOPped, then SIGCONTed.
    Pause,
    /// One random node SIGKILLed, then started again from its data directory.
    Kill,
    /// One random node SIGTERMed (a pod's graceful stop), then started again at once on a new
    /// address (a rescheduled pod's new IP; its name stays).
    Restart,
    /// Every node in turn, highest first, SIGTERMed and started again on a new address, the
    /// next one once the cluster is ready (a rolling restart of a StatefulSet).
    RollingRestart,
    /// The node the others follow cut off from them (clients still reach it).
    IsolateLeader,
    /// A random majority and minority cut from each other (3|2 of 5, 2|1 of 3).
    PartitionHalves,
    /// Two random halves that both see one node in the middle, not each other (3+ nodes).
    Bridge,
    /// The nodes on a random ring, each seeing only its two neighbours (4+ nodes).
    Ring,
    /// A random 10-30 % of every node-to-node packet dropped (nft `numgen`).
    Loss,
    /// Every node-to-node packet held 20-200 ms, each its own time, so they are reordered too
    /// (NFQUEUE and a delayer in this process: [`crate::delay`]).
    Delay,
    /// A spare node (N+1, its own namespace, a new data directory) started and joined with
    /// `roost ctl join`; the workload's clients may use it; after the fault time it is
    /// stopped (SIGTERM: its drain hands its sessions on) and removed (`roost ctl leave`).
    Membership,
    /// Two spare nodes (N+1, N+2, new data directories) started at once and left to join by
    /// themselves (not among the seeds: they ask a seed, as pods `roost-3` and `roost-4` do
    /// on a scale-up); once all are ready they serve clients for the fault time; then the
    /// highest first is stopped (SIGTERM: its drain hands its sessions on) and removed with
    /// `roost ctl leave` (docs/deploy.md, "Scale down"). N -> N+2 -> N.
    Scale,
}

impl Fault {
    /// Every fault, by its name on the command line.
    pub const NAMES: &[(&str, Fault)] = &[
        ("partition", Fault::Partition),
        ("pause", Fault::Pause),
        ("kill", Fault::Kill),
        ("restart", Fault::Restart),
        ("rolling-restart", Fault::RollingRestart),
        ("isolate-leader", Fault::IsolateLeader),
        ("partition-halves", Fault::PartitionHalves),
        ("bridge", Fault::Bridge),
        ("ring", Fault::Ring),
        ("loss", Fault::Loss),
        ("delay", Fault::Delay),
        ("membership", Fault::Membership),
        ("scale", Fault::Scale),
    ];

    /// The fault's name on the command line.
    pub fn name(self) -> &'static str {
        Fault::NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    /// The partition shape of the faults that have one.
    fn shape(self) -> Option<Shape> {
        match self {
            Fault::PartitionHalves => Some(Shape::Halves),
            Fault::Bridge => Some(Shape::Bridge),
            Fault::Ring => Some(Shape::Ring),
            _ => None,
        }
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        Fault::NAMES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let known: Vec<_> = Fault::NAMES.iter().map(|(n, _)| *n).collect();
                format!("unknown nemesis {s:?} (known: {})", known.join(", "))
            })
    }
}

/// What a run is asked to do.
pub struct RunConfig {
    pub nodes: usize,
    pub workload: Workload,
    pub faults: Vec<Fault>,
    pub duration: Duration,
    pub seed: u64,
    pub out: PathBuf,
    pub roost: PathBuf,
    /// How long each fault lasts (longer than the 4 s session lease, so leases run out).
    pub fault_for: Duration,
    /// Quiet time before each fault, and the drain after the publishers stop.
    pub quiet_for: Duration,
    /// `ROOST_FAILPOINTS` for the nodes (selftest only).
    pub failpoints: Option<String>,
    /// The longest a client that keeps a connection may be without one (`outage`
    /// invariant); `None`: reported, not judged.
    pub max_outage: Option<Duration>,
}

impl RunConfig {
    /// A run of `workload` for `duration` on 3 nodes: each fault lasts 8 s (longer than the
    /// 4 s session lease), after 5 s of quiet; no failpoints.
    pub fn new(
        workload: Workload,
        faults: Vec<Fault>,
        duration: Duration,
        seed: u64,
        out: PathBuf,
        roost: PathBuf,
    ) -> RunConfig {
        RunConfig {
            nodes: 3,
            workload,
            faults,
            duration,
            seed,
            out,
            roost,
            fault_for: Duration::from_secs(8),
            quiet_for: Duration::from_secs(5),
            failpoints: None,
            max_outage: None,
        }
    }

    /// How many spare nodes (N+1, ...) the faults use: two to scale, one for membership.
    fn spares(&self) -> usize {
        if self.faults.contains(&Fault::Scale) {
            2
        } else {
            usize::from(self.faults.contains(&Fault::Membership))
        }
    }
}

/// What a run found.
pub struct RunResult {
    /// The checker's report on the history.
    pub report: crate::Report,
    /// The cluster was ready again within 10 s of the last fault.
    pub healed: bool,
    /// `report.md` as written.
    pub markdown: String,
}

impl RunResult {
    /// Every invariant held and the cluster healed.
    pub fn ok(&self) -> bool {
        self.report.ok() && self.healed
    }
}

/// On Ctrl-C or SIGTERM: stops the nodes, removes the delayers, rules, namespaces and bridge,
/// and exits 130 (the nemesis thread may be in the middle of a fault: the locks are waited
/// for a bounded time, then the clean-up goes on without them; `Drop` of each does the same
/// on an error or a panic).
async fn clean_up_when_interrupted(net: Arc<Mutex<Net>>, nodes: Arc<Mutex<Nodes>>) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("roost-chaos: interrupted: stopping the nodes and removing the network");
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(mut n) = nodes.try_lock_for(Duration::from_secs(20)) {
            n.stop();
        }
        if let Some(mut n) = net.try_lock_for(Duration::from_secs(20)) {
            n.close();
        }
    })
    .await;
    std::process::exit(130);
}

/// Runs one test (see the module docs).
pub fn run(cfg: &RunConfig) -> anyhow::Result<RunResult> {
    if !(1..=5).contains(&cfg.nodes) {
        bail!("--nodes must be 1 to 5");
    }
    for f in &cfg.faults {
        if let Some(shape) = f.shape().filter(|s| cfg.nodes < s.min_nodes()) {
            bail!(
                "{f:?} needs at least {} nodes (--nodes {})",
                shape.min_nodes(),
                cfg.nodes
            );
        }
    }
    std::fs::create_dir_all(&cfg.out)?;
    let tag = format!(
        "rc{:04x}",
        (cfg.seed ^ u64::from(std::process::id())) & 0xffff
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The spare nodes have namespaces from the start, and the clients know their addresses
    // (nothing listens there while they are not running).
    let all = cfg.nodes + cfg.spares();
    let net = Arc::new(Mutex::new(
        Net::new(&tag, all).context("building the network")?,
    ));
    let targets = {
        let n = net.lock();
        let nodes = (1..=all)
            .map(|i| Ok((n.name(i), format!("{}:{MQTT}", n.node_ip(i)).parse()?)))
            .collect::<anyhow::Result<_>>()?;
        Targets::new(nodes, cfg.nodes)
    };
    let mut nodes = Nodes::start(
        &net.lock(),
        cfg.nodes,
        &cfg.roost,
        &cfg.out,
        cfg.failpoints.clone(),
    )?;
    for i in cfg.nodes + 1..=all {
        nodes.add_spare(&net.lock(), i, &cfg.out);
    }
    let nodes = Arc::new(Mutex::new(nodes));
    rt.spawn(clean_up_when_interrupted(
        Arc::clone(&net),
        Arc::clone(&nodes),
    ));
    // Every node running now is ready (the admin addresses of now: a moved node's new one).
    let ready = |limit: Duration| -> anyhow::Result<()> {
        let admin = nodes.lock().running_admin()?;
        rt.block_on(nodes::wait_ready(admin, limit))
    };
    // Node `i`, stopped, gets a new address; the clients learn it.
    let move_node = |i: usize| -> anyhow::Result<String> {
        let ip = net.lock().move_node(i)?;
        nodes.lock().moved(i, ip.clone());
        targets.moved(i, format!("{ip}:{MQTT}").parse()?);
        Ok(ip)
    };
    // Node `i` leaves as docs/deploy.md says: stopped first (SIGTERM: its drain hands its
    // sessions on), then removed with `roost ctl leave` through node `via` (a leave first
    // would forget the sessions it still holds). Returns what happened, for the nemesis log.
    let remove_node = |i: usize, via: usize| -> String {
        let mut note = String::new();
        if !nodes.lock().terminate(i, STOP_LIMIT) {
            note.push_str(&format!(", node {i} killed 25 s after SIGTERM"));
        }
        match nodes.lock().ctl(via, &["leave", &i.to_string()]) {
            Ok(_) => note.push_str(&format!(", node {i} left through node {via}")),
            Err(e) => note.push_str(&format!(", node {i}: leave failed: {e}")),
        }
        note
    };
    ready(Duration::from_secs(30)).context("the cluster did not start")?;
    let mut events = std::fs::File::create(cfg.out.join("nemesis.log"))?;
    writeln!(
        events,
        "seed {} nodes {} workload {} faults {:?} duration {:?}",
        cfg.seed, cfg.nodes, cfg.workload, cfg.faults, cfg.duration
    )?;

    let rec = Recorder::new();
    let stops = Stops {
        publishers: Arc::new(AtomicBool::new(false)),
        receivers: Arc::new(AtomicBool::new(false)),
    };
    let mut rng = Rng::new(cfg.seed);
    let tasks = workload::spawn(cfg.workload, &rt, &targets, &rec, &stops, &mut rng);

    // The nemesis, on this thread.
    let started = Instant::now();
    let mut nemesis_rng = Rng::new(rng.next_u64());
    let mut intervals = Vec::new();
    while !cfg.faults.is_empty() && started.elapsed() + cfg.quiet_for + cfg.fault_for < cfg.duration
    {
        std::thread::sleep(cfg.quiet_for);
        let fault = cfg.faults[nemesis_rng.below(cfg.faults.len())];
        let mut victim = 1 + nemesis_rng.below(cfg.nodes);
        let at = rec.now();
        let mut note = String::new();
        let mut what = format!("node {victim}");
        match fault {
            Fault::Partition => net.lock().partition(&[victim])?,
            Fault::PartitionHalves | Fault::Bridge | Fault::Ring => {
                let shape = fault.shape().context("a partition has a shape")?;
                let (links, drawn) = shape.draw(cfg.nodes, &mut nemesis_rng);
                what = drawn;
                net.lock().cut_links(&links)?
            }
            Fault::Loss => {
                let percent = 10 + nemesis_rng.below(21) as u32;
                what = format!("{percent} % of every node-to-node packet");
                net.lock().loss(percent)?
            }
            Fault::Delay => {
                what = "every node-to-node packet by 20-200 ms".to_owned();
                let (min, max) = (Duration::from_millis(20), Duration::from_millis(200));
                net.lock().delay(min, max, &mut nemesis_rng)?
            }
            Fault::IsolateLeader => {
                // Any member knows the leader; asked of the one after the random pick.
                let ask = nodes.lock().admin(1 + victim % cfg.nodes);
                if let Some(l) = rt.block_on(nodes::leader_seen_by(ask, cfg.nodes)) {
                    victim = l;
                } else {
                    note = " (leader unknown: a random node)".into();
                }
                net.lock().partition(&[victim])?
            }
            Fault::Membership => {
                let i = cfg.nodes + 1;
                victim = i;
                what = format!("node {i}");
                let (member, mqtt) = nodes.lock().member_spec(i);
                nodes.lock().spawn_fresh(i)?;
                // Asked of a random member: any forwards to the leader.
                let via = 1 + nemesis_rng.below(cfg.nodes);
                match nodes.lock().ctl(via, &["join", &member, "--mqtt", &mqtt]) {
                    Ok(_) => note.push_str(&format!(" (joined through node {via})")),
                    Err(e) => note.push_str(&format!(" (join failed: {e})")),
                }
            }
            Fault::Pause => nodes.lock().pause(victim, true),
            Fault::Kill => nodes.lock().kill(victim),
            Fault::Restart => {
                if !nodes.lock().terminate(victim, STOP_LIMIT) {
                    note = " (did not exit within 25 s of SIGTERM: killed)".into();
                }
                note.push_str(&format!(" (now at {})", move_node(victim)?));
                nodes.lock().spawn(victim)?;
            }
            Fault::RollingRestart => {
                // Highest ordinal first, as the StatefulSet controller goes.
                for i in (1..=cfg.nodes).rev() {
                    if !nodes.lock().terminate(i, STOP_LIMIT) {
                        note.push_str(&format!(" (node {i} killed 25 s after SIGTERM)"));
                    }
                    note.push_str(&format!(" (node {i} now at {})", move_node(i)?));
                    nodes.lock().spawn(i)?;
                    if ready(Duration::from_secs(20)).is_err() {
                        note.push_str(&format!(" (not ready 20 s after node {i} restarted)"));
                    }
                }
            }
            Fault::Scale => {
                what = format!("{} -> {all} -> {} nodes", cfg.nodes, cfg.nodes);
                for i in cfg.nodes + 1..=all {
                    nodes.lock().spawn_fresh(i)?;
                }
                let up = Instant::now();
                match ready(Duration::from_secs(60)) {
                    Ok(()) => note.push_str(&format!(
                        " ({all} ready {:.1} s after the new nodes started)",
                        up.elapsed().as_secs_f64()
                    )),
                    Err(e) => note.push_str(&format!(" (scale-up: {e})")),
                }
            }
        }
        if matches!(
            fault,
            Fault::Partition
                | Fault::IsolateLeader
                | Fault::Pause
                | Fault::Kill
                | Fault::PartitionHalves
                | Fault::Bridge
                | Fault::Ring
                | Fault::Loss
                | Fault::Delay
                | Fault::Membership
                | Fault::Scale
        ) {
            std::thread::sleep(cfg.fault_for);
        }
        let cut = net.lock().cut();
        match fault {
            Fault::Partition
            | Fault::IsolateLeader
            | Fault::PartitionHalves
            | Fault::Bridge
            | Fault::Ring
            | Fault::Loss
            | Fault::Delay => {
                let h = net.lock().heal()?;
                if h.dropped > 0 {
                    note.push_str(&format!(" ({} packets dropped)", h.dropped));
                }
                if h.delayed > 0 {
                    note.push_str(&format!(
                        " ({} packets delayed, {} of them reordered)",
                        h.delayed, h.reordered
                    ));
                }
            }
            Fault::Pause => nodes.lock().pause(victim, false),
            Fault::Kill => nodes.lock().spawn(victim)?,
            Fault::Membership => {
                let via = 1 + nemesis_rng.below(cfg.nodes);
                note.push_str(&remove_node(victim, via));
            }
            Fault::Scale => {
                // Scale down one at a time, highest first.
                for i in (cfg.nodes + 1..=all).rev() {
                    let via = 1 + nemesis_rng.below(cfg.nodes);
                    note.push_str(&remove_node(i, via));
                }
            }
            Fault::Restart | Fault::RollingRestart => {}
        }
        match fault {
            Fault::RollingRestart => what = "every node".to_owned(),
            Fault::IsolateLeader => what = format!("node {victim}"),
            _ => {}
        }
        let until = rec.now();
        writeln!(
            events,
            "{fault:?} {what} from {:.3}s to {:.3}s{note}",
            at as f64 / 1e9,
            until as f64 / 1e9
        )?;
        let touched: Vec<u64> = match fault {
            Fault::Partition
            | Fault::IsolateLeader
            | Fault::PartitionHalves
            | Fault::Bridge
            | Fault::Ring => Vec::new(),
            Fault::RollingRestart
            | Fault::Loss
            | Fault::Delay
            | Fault::Membership
            | Fault::Scale => (1..=all as u64).collect(),
            Fault::Pause | Fault::Kill | Fault::Restart => vec![victim as u64],
        };
        rec.push(history::Op::Fault {
            name: format!("{fault:?} {what}"),
            nodes: touched,
            cut: cut.iter().map(|&(a, b)| (a as u64, b as u64)).collect(),
            cluster: all as u64,
            from: at,
            until,
        });
        intervals.push(crate::plot::Interval {
            label: format!("{fault:?} {what}"),
            from: at,
            to: until,
        });
    }
    let rest = cfg.duration.saturating_sub(started.elapsed());
    std::thread::sleep(rest);
    stops.publishers.store(true, Ordering::Release);
    if let Some(max) = cfg.max_outage {
        rec.push(history::Op::OutageBound {
            max: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
            until: rec.now(),
        });
    }
    // The quiet phase: the cluster heals by itself and subscribers drain what they are owed.
    let healed = ready(Duration::from_secs(10));
    writeln!(
        events,
        "healed within 10 s of the last fault: {}",
        if healed.is_ok() { "yes" } else { "NO" }
    )?;
    std::thread::sleep(cfg.quiet_for.max(Duration::from_secs(5)));
    stops.receivers.store(true, Ordering::Release);
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
    std::fs::write(
        cfg.out.join("throughput.svg"),
        crate::plot::throughput_svg(&ops, &intervals),
    )?;
    std::fs::write(
        cfg.out.join("latency.svg"),
        crate::plot::latency_svg(&ops, &intervals),
    )?;
    let report = crate::check(&ops);
    let names: Vec<&str> = cfg.faults.iter().map(|f| f.name()).collect();
    let mut md = format!(
        "# roost-chaos run\n\nseed {}, {} nodes, workload {}, faults {:?}, {:?}; replay with \
         `roost-chaos run --nodes {} --workload {} --nemesis {} --duration {} --seed {}`\n\n",
        cfg.seed,
        cfg.nodes,
        cfg.workload,
        cfg.faults,
        cfg.duration,
        cfg.nodes,
        cfg.workload,
        names.join(","),
        cfg.duration.as_secs(),
        cfg.seed
    );
    if let Some(max) = cfg.max_outage {
        md = md.replacen(
            "`\n\n",
            &format!(" --max-outage-secs {}`\n\n", max.as_secs_f64()),
            1,
        );
    }
    md.push_str("![throughput](throughput.svg)\n\n![latency](latency.svg)\n\n");
    md.push_str(&report.markdown(50));
    if healed.is_err() {
        md.push_str("\nThe cluster did not heal within 10 s of the last fault.\n");
    }
    std::fs::write(cfg.out.join("report.md"), &md)?;
    Ok(RunResult {
        report,
        healed: healed.is_ok(),
        markdown: md,
    })
}
