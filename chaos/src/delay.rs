//! The `delay` nemesis's packet delayer: inside one node's namespace, iptables sends the
//! node's outgoing node-to-node packets to NFQUEUE queue 0 (`--queue-bypass`: with nobody
//! bound, they pass); a thread of this process, moved into that namespace (netlink sockets
//! belong to the namespace they were opened in), holds each packet for a time drawn from the
//! seed and then accepts it. Packets held for different times leave in a different order:
//! delay and reordering in one.
//!
//! ```text
//!  node a's namespace                                     this process
//!  roost ─▶ OUTPUT ─ -d node b ─▶ NFQUEUE 0 ── netlink ─▶ delayer thread (in a's namespace)
//!                                      ▲                    held: due time -> packet (bounded)
//!                                      └── ACCEPT verdict ◀─ when due
//! ```
//!
//! The kernel here has no netem qdisc and no nft `queue` expression, hence iptables'
//! NFQUEUE target (through nf_tables' xt compatibility) and the `nfq` crate (the NFQUEUE
//! netlink protocol in Rust, no libnetfilter_queue). Only metadata is copied to userspace
//! (copy range 0): the verdict does not change the packet. Bounds: at most [`MAX_HELD`]
//! packets held (more are accepted at once), the kernel queue at [`KERNEL_QUEUE`] (beyond it,
//! fail-open accepts them).

use crate::rng::Rng;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The NFQUEUE queue number (one per namespace: queues are per network namespace).
const QUEUE: u16 = 0;
/// Packets held at most by one delayer; beyond it, packets pass undelayed.
pub const MAX_HELD: usize = 20_000;
/// The kernel's queue length for the delayer; beyond it the kernel accepts (fail-open).
const KERNEL_QUEUE: u32 = 10_000;
/// How often an idle delayer looks for packets (the `nfq` socket offers no fd to poll).
const TICK: Duration = Duration::from_millis(1);

/// What a delayer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delayed {
    /// Packets held.
    pub delayed: u64,
    /// Packets let go before one that came earlier (reordered).
    pub reordered: u64,
}

/// One namespace's delayer: its thread and its iptables rules.
pub struct Delayer {
    ns: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Delayed>>>,
    ruled: bool,
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("running {} (is it installed?)", args[0]))?;
    if !out.status.success() {
        bail!(
            "in {ns}: {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Delayer {
    /// Starts delaying what namespace `ns` sends to `peers` (addresses), each packet by
    /// `min..=max`, drawn from `rng`. The delayer is bound before the rules go in, so no packet
    /// waits for a thread that is not there yet.
    pub fn start(
        ns: &str,
        peers: &[String],
        min: Duration,
        max: Duration,
        rng: Rng,
    ) -> anyhow::Result<Delayer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let path = format!("/run/netns/{ns}");
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("delay-{ns}"))
            .spawn(move || run(&path, min, max, rng, &stop2, ready_tx))
            .context("starting a delayer thread")?;
        let mut d = Delayer {
            ns: ns.to_owned(),
            stop,
            thread: Some(thread),
            ruled: false,
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = d.stop();
                bail!("the delayer for {ns} could not bind its queue: {e}");
            }
            Err(_) => {
                let e = d.stop().err();
                bail!("the delayer for {ns} did not start: {e:?}");
            }
        }
        d.ruled = true;
        for p in peers {
            let to = format!("{p}/32");
            let rule = ["iptables", "-w", "-A", "OUTPUT", "-d", &to, "-j", "NFQUEUE"];
            let q = QUEUE.to_string();
            let mut args: Vec<&str> = rule.to_vec();
            args.extend(["--queue-num", &q, "--queue-bypass"]);
            if let Err(e) = in_ns(ns, &args) {
                let _ = d.stop();
                return Err(e);
            }
        }
        Ok(d)
    }

    /// Removes the rules, releases every packet held, and ends the thread. Returns what it
    /// did. Idempotent.
    pub fn stop(&mut self) -> anyhow::Result<Delayed> {
        let mut err = None;
        if self.ruled {
            self.ruled = false;
            // The namespace holds nothing else of ours in iptables: flush the chain.
            err = in_ns(&self.ns, &["iptables", "-w", "-F", "OUTPUT"]).err();
        }
        self.stop.store(true, Ordering::Release);
        let delayed = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => bail!("the delayer thread for {} panicked", self.ns),
            None => Delayed::default(),
        };
        match err {
            Some(e) => Err(e),
            None => Ok(delayed),
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The delayer thread: joins the namespace, binds the queue, says so on `ready`, then holds
/// and releases packets until `stop`; then releases the rest at once.
fn run(
    netns: &str,
    min: Duration,
    max: Duration,
    mut rng: Rng,
    stop: &AtomicBool,
    ready: std::sync::mpsc::SyncSender<std::io::Result<()>>,
) -> anyhow::Result<Delayed> {
    let setup = || -> std::io::Result<nfq::Queue> {
        let f = std::fs::File::open(netns)?;
        rustix::thread::move_into_link_name_space(
            f.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        let mut q = nfq::Queue::open()?;
        q.bind(QUEUE)?;
        q.set_copy_range(QUEUE, 0)?;
        q.set_queue_max_len(QUEUE, KERNEL_QUEUE)?;
        q.set_fail_open(QUEUE, true)?;
        q.set_nonblocking(true);
        Ok(q)
    };
    let mut q = match setup() {
        Ok(q) => {
            let _ = ready.send(Ok(()));
            q
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
            bail!("{msg}");
        }
    };
    let spread = u64::try_from((max.saturating_sub(min)).as_micros()).unwrap_or(0);
    // Due time (and an arrival number, so equal times keep both) -> the packet.
    let mut held: BTreeMap<(Instant, u64), nfq::Message> = BTreeMap::new();
    let mut n = 0u64;
    let mut done = Delayed::default();
    // The latest arrival let go so far: one let go after it that came before it is reordered.
    let mut latest: Option<u64> = None;
    let mut release = |q: &mut nfq::Queue, (_, arrival): (Instant, u64), mut m: nfq::Message| {
        if latest.is_some_and(|l| arrival < l) {
            done.reordered += 1;
        }
        latest = latest.max(Some(arrival));
        m.set_verdict(nfq::Verdict::Accept);
        q.verdict(m)
    };
    while !stop.load(Ordering::Acquire) {
        loop {
            match q.recv() {
                Ok(m) if held.len() >= MAX_HELD => {
                    let mut m = m;
                    m.set_verdict(nfq::Verdict::Accept);
                    q.verdict(m)?
                }
                Ok(m) => {
                    let wait = min + Duration::from_micros(rng.next_u64() % (spread + 1));
                    held.insert((Instant::now() + wait, n), m);
                    n += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading the queue"),
            }
        }
        let now = Instant::now();
        while let Some(entry) = held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = *entry.key();
            release(&mut q, key, entry.remove())?;
        }
        std::thread::sleep(TICK);
    }
    while let Some((key, m)) = held.pop_first() {
        release(&mut q, key, m)?;
    }
    let _ = q.unbind(QUEUE);
    done.delayed = n;
    Ok(done)
}
