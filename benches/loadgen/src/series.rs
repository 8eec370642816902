//! What a publishing scenario records while it runs: the run's latency histogram, and per
//! second of the run the messages sent and received and the latency p50 / p99 (the time
//! series the JSON report carries and `--plot` draws).
//!
//! ```text
//!  receiving task ── Batch::record(at, latency) ── (local: this second's counts and samples)
//!        │ a message in a later second, 8,192 samples, or the task's end
//!        ▼
//!  Batch::flush ── lock ──▶ Recorder { window histogram, per-second slots }   (one per run)
//!  sending task ── count_sent (local Vec<u64> per second) ── at its end ──▶ Recorder::add_sent
//!  both ── every 256 messages / burst ──▶ Recorder::{sent, received} atomics ──▶ progress bar
//! ```
//!
//! Why batches: a fan-out run has one receiving task per subscriber, and one 270 KiB
//! histogram each ([`crate::latency`]) would cost more than the broker under test. A task
//! keeps only the current second's samples as plain numbers and takes the shared lock about
//! once a second (or every [`FLUSH_AT`] samples), so memory follows the message rate, not the
//! connection count, and the lock is never contended on the hot path.
//!
//! Seconds count from the start of the warm-up (`t0`); a message counts in the second it was
//! received (latency and `received`) or sent (`sent`). The run's histogram only takes the
//! samples the scenario marks as in its window (sent during the measured window), as before.

use crate::latency::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Samples a task keeps before it takes the lock within the same second.
const FLUSH_AT: usize = 8_192;
/// Messages a task counts before it adds them to the progress counters.
const REPORT_EVERY: u64 = 256;
/// Largest value in a per-second histogram: one hour in nanoseconds.
const SECOND_HIGHEST_NS: u64 = 3_600 * 1_000_000_000;

/// One second of a run, as reports carry it (JSON) and plots draw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SecondPoint {
    /// Seconds since the start of the warm-up: this point covers [t, t + 1).
    pub(crate) t: u64,
    /// Messages sent in this second.
    pub(crate) sent: u64,
    /// Messages received in this second.
    pub(crate) received: u64,
    /// Latency of the messages received in this second, microseconds (`None`: none
    /// received).
    pub(crate) p50_us: Option<f64>,
    pub(crate) p99_us: Option<f64>,
}

/// One second's received count and latency (two significant digits: enough to draw).
#[derive(Debug, Default)]
struct Slot {
    received: u64,
    latency: Option<hdrhistogram::Histogram<u32>>,
}

#[derive(Debug, Default)]
struct Recorded {
    window: Histogram,
    slots: Vec<Slot>,
    sent: Vec<u64>,
}

/// Shared by every task of one run (behind an `Arc`); see the module docs.
#[derive(Debug)]
pub(crate) struct Recorder {
    t0: Instant,
    state: Mutex<Recorded>,
    /// Messages sent so far (in bursts; for the progress bar only).
    pub(crate) sent: AtomicU64,
    /// Messages received so far (every [`REPORT_EVERY`]; for the progress bar only).
    pub(crate) received: AtomicU64,
}

impl Recorder {
    pub(crate) fn new(t0: Instant) -> Recorder {
        Recorder {
            t0,
            state: Mutex::default(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// The second of the run `at` falls in.
    pub(crate) fn second(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.t0).as_secs() as usize
    }

    /// Counts one message sent at `at` in a sending task's own per-second counts (index =
    /// second of the run), which it hands to [`Recorder::add_sent`] at its end.
    pub(crate) fn count_sent(&self, per_second: &mut Vec<u64>, at: Instant) {
        let second = self.second(at);
        if second >= per_second.len() {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += 1;
    }

    /// Adds one sending task's per-second counts (index = second).
    pub(crate) fn add_sent(&self, per_second: &[u64]) {
        let mut state = self.lock();
        if state.sent.len() < per_second.len() {
            state.sent.resize(per_second.len(), 0);
        }
        for (total, n) in state.sent.iter_mut().zip(per_second) {
            *total += n;
        }
    }

    /// The run's latency histogram (in-window samples) and its time series, up to the last
    /// second in which anything was sent or received.
    pub(crate) fn finish(&self) -> (Histogram, Vec<SecondPoint>) {
        let state = std::mem::take(&mut *self.lock());
        let len = state.slots.len().max(state.sent.len());
        let mut points = Vec::with_capacity(len);
        for t in 0..len {
            let slot = state.slots.get(t);
            let quantile = |q: f64| {
                slot.and_then(|s| s.latency.as_ref())
                    .filter(|h| !h.is_empty())
                    .map(|h| h.value_at_quantile(q) as f64 / 1_000.0)
            };
            points.push(SecondPoint {
                t: t as u64,
                sent: state.sent.get(t).copied().unwrap_or(0),
                received: slot.map_or(0, |s| s.received),
                p50_us: quantile(0.50),
                p99_us: quantile(0.99),
            });
        }
        (state.window, points)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // A task that panicked while holding the lock left whole numbers behind; keep them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One receiving task's samples not yet added to the [`Recorder`].
#[derive(Debug, Default)]
pub(crate) struct Batch {
    second: usize,
    received: u64,
    unreported: u64,
    /// Every latency of `second`.
    latencies: Vec<u64>,
    /// Those the scenario counts in its window.
    window: Vec<u64>,
}

impl Batch {
    /// Counts one message received at `at`, with its latency (ns) when it has one, and
    /// whether that latency belongs in the run's window histogram.
    pub(crate) fn record(
        &mut self,
        recorder: &Recorder,
        at: Instant,
        latency: Option<(u64, bool)>,
    ) {
        let second = recorder.second(at);
        if second != self.second || self.latencies.len() >= FLUSH_AT {
            self.flush(recorder);
            self.second = second;
        }
        self.received += 1;
        if let Some((ns, in_window)) = latency {
            self.latencies.push(ns);
            if in_window {
                self.window.push(ns);
            }
        }
        self.unreported += 1;
        if self.unreported >= REPORT_EVERY {
            recorder
                .received
                .fetch_add(self.unreported, Ordering::Relaxed);
            self.unreported = 0;
        }
    }

    /// Adds everything kept so far to the recorder (call once more when the task ends).
    pub(crate) fn flush(&mut self, recorder: &Recorder) {
        if self.unreported > 0 {
            recorder
                .received
                .fetch_add(self.unreported, Ordering::Relaxed);
            self.unreported = 0;
        }
        if self.received == 0 && self.latencies.is_empty() {
            return;
        }
        let mut state = recorder.lock();
        for &ns in &self.window {
            state.window.record(ns);
        }
        if state.slots.len() <= self.second {
            state.slots.resize_with(self.second + 1, Slot::default);
        }
        let slot = &mut state.slots[self.second];
        slot.received += self.received;
        if !self.latencies.is_empty() {
            let h = slot.latency.get_or_insert_with(|| {
                hdrhistogram::Histogram::new_with_bounds(1, SECOND_HIGHEST_NS, 2)
                    .expect("constant bounds are valid")
            });
            for &ns in &self.latencies {
                h.saturating_record(ns);
            }
        }
        drop(state);
        self.received = 0;
        self.latencies.clear();
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn batches_fill_the_seconds_they_were_received_in() {
        let t0 = Instant::now();
        let rec = Recorder::new(t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut a = Batch::default();
        let mut b = Batch::default();
        a.record(&rec, at(100), Some((1_000, false)));
        a.record(&rec, at(900), Some((3_000, true)));
        b.record(&rec, at(500), None);
        a.record(&rec, at(2_100), Some((10_000, true)));
        a.flush(&rec);
        b.flush(&rec);
        rec.add_sent(&[5, 0, 2]);
        rec.add_sent(&[1]);
        let (window, points) = rec.finish();
        assert_eq!(window.count(), 2);
        assert_eq!(points.len(), 3);
        assert_eq!((points[0].sent, points[0].received), (6, 3));
        // Two significant digits per second: within 1 %.
        let near =
            |got: Option<f64>, want: f64| got.is_some_and(|v| (v - want).abs() <= want / 100.0);
        assert!(near(points[0].p50_us, 1.0), "{:?}", points[0]);
        assert!(near(points[0].p99_us, 3.0), "{:?}", points[0]);
        assert_eq!(
            (points[1].sent, points[1].received, points[1].p50_us),
            (0, 0, None)
        );
        assert_eq!((points[2].sent, points[2].received), (2, 1));
        assert_eq!(rec.received.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn sent_messages_count_in_the_second_they_were_sent() {
        let t0 = Instant::now();
        let rec = Recorder::new(t0);
        let mut per_second = Vec::new();
        for ms in [100, 900, 2_100] {
            rec.count_sent(&mut per_second, t0 + Duration::from_millis(ms));
        }
        assert_eq!(per_second, [2, 0, 1]);
    }

    #[test]
    fn a_full_batch_flushes_within_its_second() {
        let t0 = Instant::now();
        let rec = Recorder::new(t0);
        let mut a = Batch::default();
        for _ in 0..FLUSH_AT + 10 {
            a.record(&rec, t0, Some((500, true)));
        }
        assert_eq!(rec.lock().window.count(), FLUSH_AT as u64);
        a.flush(&rec);
        let (window, points) = rec.finish();
        assert_eq!(window.count(), FLUSH_AT as u64 + 10);
        assert_eq!(points[0].received, FLUSH_AT as u64 + 10);
    }
}
