//! The one owner of every session timer: will delay (MQTT 5.0 §3.1.3.2.2), session expiry
//! (§3.1.2.11.2), the clean-up of a session copy left behind when another node claimed the
//! client, and the end of a handed-over session's tombstone. One task sleeps until the earliest
//! deadline instead of a task per timer; a timer is armed with the session's epoch and does
//! nothing if the session was attached again since.
//!
//! ```text
//!  registry::detach / restore / claim event ─ arm(at, session, epoch, kind) ─▶ BTreeMap by deadline
//!  timer task: sleep_until(first) | woken by arm ─▶ pop due ─▶ Broker::fire_timer
//! ```

use super::{Broker, SessionRef};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimerKind {
    /// The core session's own timer (will delay, expiry: `Session::poll_timeout`), if the
    /// session is still detached in the same epoch.
    Session,
    /// Another node claimed the client with this generation: if it has not taken the session
    /// over by now, the copy here is stale and is dropped.
    StaleCopy { generation: u64 },
    /// The session was handed over to another node: its index entries here, kept so what
    /// still arrived for it went on to the new owner, go now (docs/rfcs/0006).
    Tombstone,
}

/// A timer due to fire.
pub(super) struct Due {
    pub(super) session: SessionRef,
    pub(super) epoch: u32,
    pub(super) kind: TimerKind,
}

#[derive(Default)]
struct Inner {
    /// By deadline; the sequence number keeps equal deadlines apart.
    queue: BTreeMap<(Instant, u64), Due>,
    seq: u64,
}

/// The timer queue. See the module docs.
#[derive(Default)]
pub(super) struct Timers {
    inner: Mutex<Inner>,
    pub(super) signal: Signal,
}

/// How a task that fires deadlines ([`fire_until_stopped`]) is woken (a new first deadline)
/// and stopped (shutdown). Held by the table the task serves: this one and the parked
/// connections' deadline table (`deadlines.rs`).
#[derive(Default)]
pub(super) struct Signal {
    wake: Arc<Notify>,
    stopped: AtomicBool,
}

impl Signal {
    /// A new first deadline: the task sleeps until it instead.
    pub(super) fn notify(&self) {
        self.wake.notify_one();
    }

    /// The notification the task waits on.
    pub(super) fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Ends the task (shutdown).
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub(super) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

impl Timers {
    /// Arms a timer.
    pub(super) fn arm(&self, at: Instant, session: SessionRef, epoch: u32, kind: TimerKind) {
        let mut g = self.inner.lock();
        g.seq += 1;
        let key = (at, g.seq);
        let first = g.queue.keys().next().is_none_or(|k| *k > key);
        g.queue.insert(
            key,
            Due {
                session,
                epoch,
                kind,
            },
        );
        drop(g);
        if first {
            self.signal.notify();
        }
    }

    fn pop_due(&self, now: Instant) -> (Vec<Due>, Option<Instant>) {
        let mut g = self.inner.lock();
        let mut due = Vec::new();
        while let Some(entry) = g.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        let next = g.queue.keys().next().map(|k| k.0);
        (due, next)
    }
}

/// The timer task. Holds the broker weakly: it ends when the broker is dropped or stopped.
pub(super) async fn run(broker: Weak<Broker>, wake: Arc<Notify>) {
    fire_until_stopped(&wake, |now| {
        let Some(b) = broker.upgrade() else {
            return ControlFlow::Break(());
        };
        if b.timers.signal.stopped() {
            return ControlFlow::Break(());
        }
        let (due, next) = b.timers.pop_due(now);
        for d in due {
            b.fire_timer(d);
        }
        ControlFlow::Continue(next)
    })
    .await
}

/// The loop of a task that fires deadlines, shared by this table and the parked connections'
/// deadline table (`deadlines.rs`). Each round enables the notification before it fires, so a
/// deadline armed while firing (or between firing and sleeping) is not slept through; then it
/// calls `fire_due` with the time, which fires what is due and returns the next deadline
/// (`Continue`), or `Break` when its table is gone or stopped; then it sleeps until that
/// deadline or the notification. `fire_due` holds no `Arc` across the sleep.
pub(super) async fn fire_until_stopped(
    wake: &Notify,
    mut fire_due: impl FnMut(Instant) -> ControlFlow<(), Option<Instant>>,
) {
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let ControlFlow::Continue(next) = fire_due(Instant::now()) else {
            return;
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}
