//! The deadlines of parked connections (keep-alive, credentials expiry; RFC 0013): one table of
//! 100 ms buckets and one task that wakes each connection whose bucket is due, instead of a
//! tokio `Sleep` (112 B) in every parked connection's task (issue 10, memory per connection).
//!
//! ```text
//!  driver, parking ─ arm(ctl, at) ─▶ bucket ⌈at⌉ (one entry per connection, `Weak<ConnCtl>`)
//!  deadlines task: sleep_until(first bucket) | woken by arm ─▶ pop due ─▶ ctl.wake.notify_deadline()
//!  driver, closing ─ disarm ─▶ entry out of its bucket (swap-remove; the moved one told its place)
//! ```
//!
//! A bucket fires at or after its deadlines, at most one tick later. A connection keeps at
//! most one entry: parking with a pending entry no later than its deadline keeps that one (a
//! keep-alive that moved on wakes the connection early, and the parked wait arms again without
//! going active); one later than its deadline is moved. So the table holds at most one entry
//! per connection (`mqtt.max_connections` bounds it, 8 B each plus the buckets' slack), and a
//! connection takes its lock only when it parks with no entry pending or with one later than
//! its deadline, and when it closes.

use super::session::ConnCtl;
use super::timers::Signal;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A bucket's width: how late at most a deadline is seen.
const TICK: Duration = Duration::from_millis(100);

/// A connection's entry in the table: the tick of its bucket, 0 for none. Owned by the
/// connection (it fits in its state's padding); its place in the bucket is in its control
/// block ([`super::session::Wake`]).
pub(crate) type Armed = u32;

#[derive(Default)]
struct Inner {
    /// By tick (the bucket fires at `epoch + tick × TICK`). Never an empty bucket.
    buckets: BTreeMap<u32, Vec<Weak<ConnCtl>>>,
}

/// The table. See the module docs.
pub(crate) struct Deadlines {
    /// Tick 0.
    epoch: Instant,
    inner: Mutex<Inner>,
    /// Every bucket up to this tick has fired: an entry armed at or before it is gone, and a
    /// new one goes after it. Changed under `inner`'s lock; read without it by `arm`'s fast
    /// path.
    fired: AtomicU32,
    pub(super) signal: Signal,
}

impl Deadlines {
    pub(super) fn new() -> Deadlines {
        Deadlines {
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
            fired: AtomicU32::new(0),
            signal: Signal::default(),
        }
    }

    /// The first tick at or after `at`.
    fn tick_at_or_after(&self, at: Instant) -> u32 {
        let ticks = at
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .div_ceil(TICK.as_nanos());
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// The last tick at or before `now`.
    fn tick_at_or_before(&self, now: Instant) -> u32 {
        let ticks = now.saturating_duration_since(self.epoch).as_nanos() / TICK.as_nanos();
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    fn instant(&self, tick: u32) -> Instant {
        self.epoch + TICK * tick
    }

    /// Makes sure the connection's [`super::session::Wake`] is notified
    /// ([`notify_deadline`](super::session::Wake::notify_deadline)) at or after `at`, at most
    /// one tick later: keeps its entry when it is pending and no later than that, else arms a
    /// new one (moving it out of a later bucket).
    ///
    /// Keeping the entry takes no lock: a parked connection woken by its client (a PINGREQ)
    /// parks again with a later deadline and finds its entry pending. (If the bucket fires
    /// just after the check, the connection is woken and arms again then.)
    pub(crate) fn arm(&self, ctl: &Arc<ConnCtl>, at: Instant, armed: &mut Armed) {
        let want = self.tick_at_or_after(at);
        if *armed > self.fired.load(Ordering::Acquire) && *armed <= want {
            return;
        }
        let mut g = self.inner.lock();
        let fired = self.fired.load(Ordering::Relaxed);
        if *armed > fired {
            if *armed <= want {
                return;
            }
            g.remove(*armed, ctl);
        }
        let tick = want.max(fired.saturating_add(1));
        let earliest = g.buckets.first_key_value().is_none_or(|(t, _)| *t > tick);
        let bucket = g.buckets.entry(tick).or_default();
        ctl.wake.set_deadline_slot(bucket.len());
        bucket.push(Arc::downgrade(ctl));
        *armed = tick;
        drop(g);
        if earliest {
            self.signal.notify();
        }
    }

    /// Takes the connection's entry out (it closes), if it is still pending.
    pub(crate) fn disarm(&self, ctl: &Arc<ConnCtl>, armed: &mut Armed) {
        if *armed == 0 {
            return;
        }
        let mut g = self.inner.lock();
        if *armed > self.fired.load(Ordering::Relaxed) {
            g.remove(*armed, ctl);
        }
        *armed = 0;
    }

    /// Entries in the table (pending deadlines).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().buckets.values().map(Vec::len).sum()
    }

    /// Takes the buckets due at `now`; says when the next one is.
    fn pop_due(&self, now: Instant) -> (Vec<Vec<Weak<ConnCtl>>>, Option<Instant>) {
        let now_tick = self.tick_at_or_before(now);
        let mut g = self.inner.lock();
        let mut due = Vec::new();
        while let Some(entry) = g.buckets.first_entry() {
            if *entry.key() > now_tick {
                break;
            }
            due.push(entry.remove());
        }
        if now_tick > self.fired.load(Ordering::Relaxed) {
            self.fired.store(now_tick, Ordering::Release);
        }
        let next = g.buckets.keys().next().map(|t| self.instant(*t));
        (due, next)
    }
}

impl Inner {
    /// Takes `ctl`'s entry out of bucket `tick`; the entry moved into its place is told.
    fn remove(&mut self, tick: u32, ctl: &Arc<ConnCtl>) {
        let Some(bucket) = self.buckets.get_mut(&tick) else {
            return;
        };
        let slot = ctl.wake.deadline_slot();
        if !bucket
            .get(slot)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(ctl)))
        {
            // Not where its control block says: cannot happen while every change goes
            // through this lock; the entry then wakes the connection once, harmlessly.
            debug_assert!(false, "deadline entry not at its slot");
            return;
        }
        bucket.swap_remove(slot);
        if let Some(moved) = bucket.get(slot).and_then(Weak::upgrade) {
            moved.wake.set_deadline_slot(slot);
        }
        if bucket.is_empty() {
            self.buckets.remove(&tick);
        }
    }
}

/// The deadlines task. Holds the table weakly: it ends when the table is dropped or stopped.
pub(super) async fn run(table: Weak<Deadlines>, wake: Arc<Notify>) {
    super::timers::fire_until_stopped(&wake, |now| {
        let (due, next) = {
            let Some(t) = table.upgrade() else {
                return ControlFlow::Break(());
            };
            if t.signal.stopped() {
                return ControlFlow::Break(());
            }
            t.pop_due(now)
        };
        // Outside the lock: a connection woken here may arm again at once.
        for ctl in due.iter().flatten().filter_map(Weak::upgrade) {
            ctl.wake.notify_deadline();
        }
        ControlFlow::Continue(next)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::session::{ConnInfo, WOKEN_DEADLINE};
    use std::task::{Context, Poll};

    fn ctl(id: u64) -> Arc<ConnCtl> {
        Arc::new(ConnCtl::new(id, ConnInfo::for_tests()))
    }

    fn taken(c: &ConnCtl) -> Option<u8> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match c.wake.poll_take(&mut cx) {
            Poll::Ready(bits) => Some(bits),
            Poll::Pending => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_fires_at_or_after_its_deadline_and_not_before() {
        let d = Deadlines::new();
        let c = ctl(1);
        let mut armed = 0;
        let at = Instant::now() + Duration::from_millis(1_050);
        d.arm(&c, at, &mut armed);
        assert_eq!(armed, 11, "rounded up to the next tick");
        let (due, next) = d.pop_due(at - Duration::from_millis(1));
        assert!(due.is_empty());
        assert_eq!(next, Some(d.instant(11)));
        let (due, _) = d.pop_due(d.instant(11));
        assert_eq!(due.len(), 1);
        assert_eq!(d.len(), 0);
        // A pending entry is gone once fired: disarming it touches nothing.
        d.disarm(&c, &mut armed);
        assert_eq!(armed, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_entry_per_connection_the_earliest_kept() {
        let d = Deadlines::new();
        let c = ctl(1);
        let mut armed = 0;
        let now = Instant::now();
        d.arm(&c, now + Duration::from_secs(5), &mut armed);
        // A later deadline (a keep-alive that moved on): the earlier entry stays.
        d.arm(&c, now + Duration::from_secs(9), &mut armed);
        assert_eq!((armed, d.len()), (50, 1));
        // An earlier one (credentials that expire sooner): the entry moves.
        d.arm(&c, now + Duration::from_secs(2), &mut armed);
        assert_eq!((armed, d.len()), (20, 1));
        d.disarm(&c, &mut armed);
        assert_eq!((armed, d.len()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn disarming_moves_the_last_entry_into_the_freed_place() {
        let d = Deadlines::new();
        let at = Instant::now() + Duration::from_secs(1);
        let conns: Vec<_> = (0..4).map(ctl).collect();
        let mut armed = [0; 4];
        for (c, a) in conns.iter().zip(armed.iter_mut()) {
            d.arm(c, at, a);
        }
        // The first out: the fourth takes its place and is told so.
        d.disarm(&conns[0], &mut armed[0]);
        assert_eq!(conns[3].wake.deadline_slot(), 0);
        // So it can still be taken out, and so can the others.
        d.disarm(&conns[3], &mut armed[3]);
        d.disarm(&conns[1], &mut armed[1]);
        assert_eq!(d.len(), 1);
        let (due, _) = d.pop_due(at);
        let woken: Vec<u64> = due
            .iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .map(|c| c.id)
            .collect();
        assert_eq!(woken, vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_armed_into_a_bucket_that_fired() {
        let d = Deadlines::new();
        let c = ctl(1);
        let start = Instant::now();
        let _ = d.pop_due(start + Duration::from_secs(3));
        let mut armed = 0;
        // Behind the task's clock (armed by a thread that read the time earlier).
        d.arm(&c, start + Duration::from_secs(2), &mut armed);
        assert_eq!(armed, 31, "the first bucket not yet fired");
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_wakes_the_connection_with_a_deadline_permit() {
        let table = Arc::new(Deadlines::new());
        let task = tokio::spawn(run(Arc::downgrade(&table), table.signal.wake()));
        let c = ctl(7);
        let mut armed = 0;
        let at = Instant::now() + Duration::from_secs(2);
        table.arm(&c, at, &mut armed);
        tokio::time::sleep_until(at - Duration::from_millis(1)).await;
        assert_eq!(taken(&c), None, "not before its deadline");
        tokio::time::sleep_until(at + TICK).await;
        assert_eq!(taken(&c), Some(WOKEN_DEADLINE));
        // A closed connection (its control block gone) is skipped.
        let gone = ctl(8);
        table.arm(&gone, at + TICK * 5, &mut 0);
        drop(gone);
        tokio::time::sleep(TICK * 10).await;
        assert_eq!(table.len(), 0);
        table.signal.stop();
        task.await.expect("the task ends when stopped");
    }
}
