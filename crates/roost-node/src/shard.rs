//! Connection shards: one thread per core, each a single-threaded tokio runtime that owns the
//! sockets of the connections handed to it (docs/rfcs/0009-shards.md).
//!
//! The accept loops run on the node's shared runtime. Each accepted TCP socket is handed to a
//! shard (the one with the fewest sockets, or the previous connection's when the two came
//! together: [`Shards::place`]), which registers it with its own I/O driver and runs the
//! connection's task there. From then on the
//! connection's reads, writes, timers and wake-ups happen on that one thread: a delivery to a
//! subscriber on the same shard is a wake-up into the local run queue; one on another shard is
//! a wake-up into that shard's queue, which unparks its thread only when it sleeps.
//!
//! Why: on a work-stealing runtime every `yield_now` before routing (issue 7 item 10's
//! ordering, `driver.rs`) and many wake-ups sent the task through the scheduler's search for
//! work, waking the other worker (a futex or an eventfd write) that then found nothing: about
//! half of a QoS 1 round trip (docs/performance.md). On a single-threaded runtime a yield is one
//! `epoll_wait(0)` on the same thread, and the connections that poll woke run before the
//! yielding task (its queue is FIFO, and deferred tasks are queued after the driver's).
//!
//! What stays on the shared runtime: Raft, the gRPC forwarding streams and their receivers,
//! the admin HTTP API, QUIC (quinn's endpoint drives all its connections from one task), and
//! the node's background tasks. Work a connection spawns (a will's delay, a takeover's
//! hand-over) runs on its shard.
//!
//! With `node.shards = 0` (the default: it measured faster on the hardware we have, RFC 0009)
//! there are no shards and every connection runs on the shared runtime.
//!
//! io_uring (`node.io = "io_uring"`, the `io-uring` feature, RFC 0010): each shard thread runs a
//! tokio-uring runtime instead (a current-thread tokio runtime with a `LocalSet` and a ring).
//! Plain TCP sockets go to it through [`Shards::spawn_uring`]: the socket (which is `Send`) and
//! the connection's start travel over the shard's job channel to a task on the shard's
//! `LocalSet`, which wraps the socket in a `roost_transport::uring::UringStream` (not `Send`)
//! and spawns the connection there (`spawn_local`). Everything else (TLS, WebSocket, markers)
//! is spawned through the runtime's `Handle` and uses epoll as before. tokio-uring installs its
//! own park hook (it submits the ring's queued operations when the thread parks) and offers no
//! way to add ours, so an io_uring shard's `parked` flag is never set: see
//! [`Shards::send_markers`] for what stands in for it.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tracing::warn;

/// How a shard does its connections' I/O (`node.io`, RFC 0010).
pub(crate) use crate::config::NodeIo;

/// A connection's start, run on an io_uring shard's thread inside its `LocalSet` (it spawns
/// the connection's task with `spawn_local`).
#[cfg(all(target_os = "linux", feature = "io-uring"))]
type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// The shard this thread runs, if it is a shard thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The longest a publisher waits for the other shards to catch up ([`caught_up`]):
/// a shard stuck in a long task must not stall the others' publishers.
const CATCH_UP_LIMIT: Duration = Duration::from_millis(2);

/// The node's connection shards (none when `node.shards = 0`).
#[derive(Debug)]
pub(crate) struct Shards {
    shards: Vec<Shard>,
    /// Tells every shard thread to stop; dropping it does too.
    stop: watch::Sender<bool>,
    threads: parking_lot::Mutex<Vec<thread::JoinHandle<()>>>,
    /// Where the previous connection went ([`Shards::place`]).
    placement: parking_lot::Mutex<Placement>,
    /// The shards run io_uring (`node.io`); fixed at start.
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    uring: bool,
}

#[derive(Debug, Default)]
struct Placement {
    last: usize,
    last_at: Option<std::time::Instant>,
    /// Connections placed in a row on `last`.
    run: usize,
}

/// Connections accepted this close together go to the same shard ([`Shards::place`]).
const BURST_WINDOW: Duration = Duration::from_millis(20);
/// At most this many in a row.
const BURST_RUN: usize = 16;

#[derive(Debug)]
struct Shard {
    handle: Handle,
    /// Connections handed to it and not yet ended (the balance the hand-off keeps).
    live: Arc<AtomicUsize>,
    /// Its thread sleeps in the I/O driver with nothing to run (set when it parks, cleared
    /// when it wakes). Never set on an io_uring shard (see the module's doc).
    parked: Arc<AtomicBool>,
    /// An io_uring shard's job channel: plain TCP connections to start on its `LocalSet`
    /// ([`Shards::spawn_uring`]). Unbounded, but every job holds a socket that took a place in
    /// `mqtt.max_pending_connections`, which bounds it.
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
}

/// Decrements its shard's count when the connection's task ends (or is dropped).
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shards {
    /// Starts `n` shard threads (`n` >= 1), named `roost-shard-<i>`, each with a tokio
    /// runtime, or a tokio-uring one for `NodeIo::IoUring` (an error when the kernel refuses
    /// io_uring: a seccomp filter, `kernel.io_uring_disabled`).
    pub(crate) fn start(n: usize, io: NodeIo) -> io::Result<Shards> {
        let (stop, stop_rx) = watch::channel(false);
        let mut shards = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            if io == NodeIo::IoUring {
                let (shard, thread) = Self::start_uring(i, stop_rx.clone())?;
                shards.push(shard);
                threads.push(thread);
                continue;
            }
            let parked = Arc::new(AtomicBool::new(false));
            let (on_park, on_unpark) = (Arc::clone(&parked), Arc::clone(&parked));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(move || {
                    on_park.store(true, Ordering::Release);
                    roost_alloc::on_thread_park();
                })
                .on_thread_unpark(move || on_unpark.store(false, Ordering::Release))
                .build()?;
            let handle = runtime.handle().clone();
            let mut rx = stop_rx.clone();
            let thread = thread::Builder::new()
                .name(format!("roost-shard-{i}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(i)));
                    runtime.block_on(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    });
                    // Dropping the runtime drops the tasks still on it: their sockets close.
                    drop(runtime);
                })?;
            shards.push(Shard {
                handle,
                live: Arc::new(AtomicUsize::new(0)),
                parked,
                #[cfg(all(target_os = "linux", feature = "io-uring"))]
                jobs: None,
            });
            threads.push(thread);
        }
        Ok(Shards {
            shards,
            stop,
            threads: parking_lot::Mutex::new(threads),
            placement: parking_lot::Mutex::new(Placement::default()),
            #[cfg(all(target_os = "linux", feature = "io-uring"))]
            uring: matches!(io, NodeIo::IoUring),
        })
    }

    /// Starts io_uring shard `i`: its runtime is made on its own thread (tokio-uring's runtime
    /// is not `Send`), which sends back the runtime's `Handle` or the error that stopped it.
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    fn start_uring(
        i: usize,
        mut stop: watch::Receiver<bool>,
    ) -> io::Result<(Shard, thread::JoinHandle<()>)> {
        let (ready, started) = std::sync::mpsc::sync_channel::<io::Result<Handle>>(1);
        let (jobs, mut job_rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let thread = thread::Builder::new()
            .name(format!("roost-shard-{i}"))
            .spawn(move || {
                CURRENT.with(|c| c.set(Some(i)));
                let runtime = match tokio_uring::Runtime::new(&tokio_uring::builder()) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let _ = ready.send(Ok(Handle::current()));
                    loop {
                        tokio::select! {
                            job = job_rx.recv() => match job {
                                Some(job) => job(),
                                None => break,
                            },
                            _ = stop.wait_for(|s| *s) => break,
                        }
                    }
                });
                // Dropping the runtime drops the tasks still on it: their sockets close.
                drop(runtime);
            })?;
        let handle = match started.recv() {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "node.io = \"io_uring\": the kernel refused io_uring_setup ({e}); \
                         a seccomp filter or kernel.io_uring_disabled may forbid it, \
                         use node.io = \"epoll\""
                    ),
                ));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("an io_uring shard thread ended at start"));
            }
        };
        let shard = Shard {
            handle,
            live: Arc::new(AtomicUsize::new(0)),
            parked: Arc::new(AtomicBool::new(false)),
            jobs: Some(jobs),
        };
        Ok((shard, thread))
    }

    #[cfg(not(all(target_os = "linux", feature = "io-uring")))]
    fn start_uring(
        _i: usize,
        _stop: watch::Receiver<bool>,
    ) -> io::Result<(Shard, thread::JoinHandle<()>)> {
        // Config validation refuses node.io = "io_uring" in such a build.
        Err(io::Error::other(
            "node.io = \"io_uring\": this roost was built without the io-uring feature",
        ))
    }

    /// Whether the shards run io_uring (plain TCP connections go to [`Shards::spawn_uring`]).
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    pub(crate) fn uring(&self) -> bool {
        self.uring
    }

    /// Runs an accepted plain TCP connection on an io_uring shard (see [`Shards::place`]): the
    /// socket travels to the shard's thread, becomes a `UringStream` there, and `serve` runs as
    /// a local task of that thread (its future need not be `Send`).
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    pub(crate) fn spawn_uring<F, Fut>(&self, stream: std::net::TcpStream, serve: F)
    where
        F: FnOnce(roost_transport::uring::UringStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let shard = &self.shards[self.place()];
        let Some(jobs) = &shard.jobs else {
            return;
        };
        shard.live.fetch_add(1, Ordering::Relaxed);
        let live = Live(Arc::clone(&shard.live));
        let job: Job = Box::new(move || {
            let task = async move {
                let _live = live;
                match roost_transport::uring::UringStream::from_std(stream) {
                    Ok(stream) => serve(stream).await,
                    Err(e) => warn!(error = %e, "cannot set up an accepted socket for io_uring"),
                }
            };
            drop(tokio::task::spawn_local(task));
        });
        // A send fails only when the shard stopped (shutdown): the socket is dropped, closed.
        let _ = jobs.send(job);
    }

    /// How many shards run.
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    /// Live connections per shard, in shard order.
    pub(crate) fn live(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|s| s.live.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs an accepted connection on a shard (see [`Shards::place`]): the socket is
    /// registered with that shard's I/O driver there, then `serve` runs as its task.
    pub(crate) fn spawn_tcp<F, Fut>(&self, stream: std::net::TcpStream, serve: F)
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shard = &self.shards[self.place()];
        shard.live.fetch_add(1, Ordering::Relaxed);
        let live = Live(Arc::clone(&shard.live));
        let task = async move {
            let _live = live;
            match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => warn!(error = %e, "cannot register an accepted socket with its shard"),
            }
        };
        drop(shard.handle.spawn(task));
    }

    /// Which shard a new connection goes to: the one with the fewest sockets, except that a
    /// connection accepted within [`BURST_WINDOW`] of the previous one joins it on its shard,
    /// up to [`BURST_RUN`] in a row and while that shard holds at most `BURST_RUN` more than
    /// the emptiest. Connections a program opens together usually talk to each other (a test
    /// suite's publisher and subscriber, a bridge's pair), and on one shard a SUBSCRIBE read
    /// before another connection's PUBLISH is always routed first (issue 7 item 10); across
    /// shards [`send_markers`](Self::send_markers) narrows the window but cannot close it. A
    /// connect storm still spreads: shards stay within `BURST_RUN` sockets of each other.
    fn place(&self) -> usize {
        let now = std::time::Instant::now();
        let live: Vec<usize> = self.live();
        let (fewest, min) = live
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, n)| *n)
            .unwrap_or((0, 0));
        let mut p = self.placement.lock();
        let keep = p
            .last_at
            .is_some_and(|at| now.duration_since(at) < BURST_WINDOW)
            && p.run < BURST_RUN
            && live[p.last] <= min + BURST_RUN;
        if keep {
            p.run += 1;
        } else {
            p.last = fewest;
            p.run = 1;
        }
        p.last_at = Some(now);
        p.last
    }

    /// Sends a marker task to every other shard that is awake; [`caught_up`] waits for them.
    ///
    /// Issue 7 item 10's ordering across shards: a SUBSCRIBE whose bytes reached the node
    /// before another client's PUBLISH must be indexed before that PUBLISH is routed. On one
    /// shard a yield does it (see `driver.rs`); a SUBSCRIBE on another shard is read by that
    /// shard's thread, in parallel. Its bytes arrived first, so the kernel woke that thread
    /// first: it is awake (or its queue still holds the task) when the PUBLISH is read here.
    /// A marker yields once on its shard, so it completes only after that shard's next driver
    /// poll and after the tasks that poll woke (the queue is FIFO). A parked shard had nothing
    /// to run and gets no marker: a lone connection's round trip pays nothing, a busy node one
    /// marker per other shard per read batch that holds a PUBLISH.
    ///
    /// An io_uring shard's park is not seen (tokio-uring keeps the park hook to itself), so
    /// it counts as parked only while it runs no connection: with io_uring a busy node sends a
    /// marker to every other shard that runs one, asleep or not (a wake-up of that shard, and
    /// up to [`CATCH_UP_LIMIT`] of waiting, per read batch with a PUBLISH).
    pub(crate) fn send_markers(&self) -> Vec<oneshot::Receiver<()>> {
        let me = CURRENT.with(Cell::get);
        let mut markers = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            if Some(i) == me || shard.asleep() {
                continue;
            }
            let (done, marker) = oneshot::channel();
            drop(shard.handle.spawn(async move {
                tokio::task::yield_now().await;
                let _ = done.send(());
            }));
            markers.push(marker);
        }
        markers
    }

    /// Stops every shard and waits for its thread: the connections still on it are dropped.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut *self.threads.lock());
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = joined.await;
    }
}

impl Shard {
    /// Whether it had nothing to run at last look (see [`Shards::send_markers`]).
    fn asleep(&self) -> bool {
        #[cfg(all(target_os = "linux", feature = "io-uring"))]
        if self.jobs.is_some() {
            return self.live.load(Ordering::Relaxed) == 0;
        }
        self.parked.load(Ordering::Acquire)
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        // A node dropped without `shutdown` (a test's runtime ending) still closes its
        // connections: the shard threads end on their own.
        let _ = self.stop.send(true);
    }
}

/// Waits for the markers of [`Shards::send_markers`], at most [`CATCH_UP_LIMIT`] in all.
pub(crate) async fn caught_up(markers: Vec<oneshot::Receiver<()>>) {
    let all = async {
        for m in markers {
            let _ = m.await;
        }
    };
    let _ = tokio::time::timeout(CATCH_UP_LIMIT, all).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn place_one(shards: &Shards) -> usize {
        let i = shards.place();
        shards.shards[i].live.fetch_add(1, Ordering::Relaxed);
        i
    }

    #[test]
    fn a_burst_stays_on_one_shard_and_a_storm_spreads_in_runs() {
        let shards = Shards::start(3, NodeIo::Epoll).unwrap();
        // Back to back (well within the window): runs of BURST_RUN, each on the emptiest.
        for _ in 0..3 * BURST_RUN {
            place_one(&shards);
        }
        assert_eq!(shards.live(), vec![BURST_RUN; 3]);
        // Apart: the emptiest, whatever came before.
        shards.shards[1].live.fetch_sub(5, Ordering::Relaxed);
        std::thread::sleep(BURST_WINDOW + Duration::from_millis(10));
        assert_eq!(place_one(&shards), 1);
        // A burst does not run on when its shard is BURST_RUN above the emptiest.
        shards.shards[2].live.store(0, Ordering::Relaxed);
        shards.shards[1]
            .live
            .store(BURST_RUN + 1, Ordering::Relaxed);
        assert_eq!(
            place_one(&shards),
            2,
            "shard 1 is more than BURST_RUN above shard 2"
        );
    }
}
