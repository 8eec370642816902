//! Latency histograms (HdrHistogram, nanoseconds) and how every report prints them.
//!
//! [`Histogram`] wraps `hdrhistogram::Histogram<u64>` with the one configuration every scenario
//! uses: values from 1 ns to [`HIGHEST_NS`] (one hour) at three significant digits, so a
//! recorded value is known to within 0.1 % (1 µs at 1 ms). A value above the bound is recorded
//! as the bound (`saturating_record`): a run never fails on a slow message. One histogram is
//! about 270 KiB; the scenarios keep one per measuring task, or one per run behind the
//! time-series recorder ([`crate::series`]), never one per connection of a large fan-out.
//!
//! [`LatencyReport`] is what a report carries: sample count and p50 / p90 / p99 / p99.9 / max
//! in microseconds. HdrHistogram answers a quantile with the highest value equivalent to the
//! bucket it falls in (within the 0.1 % resolution, and here never above the maximum); the
//! maximum is kept exactly beside it.

use serde::{Deserialize, Serialize};

/// Largest value tracked: one hour in nanoseconds (larger values count as this).
const HIGHEST_NS: u64 = 3_600 * 1_000_000_000;
/// Significant decimal digits kept for every value.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in nanoseconds; see the module docs for its range and resolution.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    values: hdrhistogram::Histogram<u64>,
    /// The exact largest value recorded (HdrHistogram's own is rounded up to its bucket).
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            values: hdrhistogram::Histogram::new_with_bounds(1, HIGHEST_NS, SIGNIFICANT_DIGITS)
                .expect("constant bounds are valid"),
            max: 0,
        }
    }
}

impl Histogram {
    /// Records one value (values above one hour count as one hour in the quantiles).
    pub(crate) fn record(&mut self, ns: u64) {
        self.values.saturating_record(ns);
        self.max = self.max.max(ns);
    }

    /// Adds every value recorded in `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        // Both have the same bounds, so no value of `other` is out of our range.
        self.values
            .add(&other.values)
            .expect("histograms with the same bounds always add");
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub(crate) fn count(&self) -> u64 {
        self.values.len()
    }

    /// Largest value recorded (exact); 0 when empty.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.0..=1.0), never above the exact maximum; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.values.is_empty() {
            0
        } else {
            self.values
                .value_at_quantile(q.clamp(0.0, 1.0))
                .min(self.max)
        }
    }

    /// Percentiles in microseconds.
    pub(crate) fn report(&self) -> LatencyReport {
        let us = |ns: u64| ns as f64 / 1_000.0;
        LatencyReport {
            samples: self.count(),
            p50: us(self.quantile(0.50)),
            p90: us(self.quantile(0.90)),
            p99: us(self.quantile(0.99)),
            p999: us(self.quantile(0.999)),
            max: us(self.max()),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LatencyReport {
    pub(crate) samples: u64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    /// The 99.9th percentile.
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl LatencyReport {
    /// `p50 1.2 ms  p90 …  p99 …  p99.9 …  max …  (N samples)`, as every summary prints it.
    pub(crate) fn line(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            duration_us(self.p50),
            duration_us(self.p90),
            duration_us(self.p99),
            duration_us(self.p999),
            duration_us(self.max),
            self.samples
        )
    }
}

/// Formats microseconds as µs, ms or s.
pub(crate) fn duration_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_uniform_range_are_within_the_resolution() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1_000);
        }
        assert_eq!(h.count(), 10_000);
        let within = |got: u64, want: f64| (got as f64 - want).abs() / want < 0.002;
        for (q, want) in [
            (0.5, 5_000_000.0),
            (0.99, 9_900_000.0),
            (0.999, 9_990_000.0),
            (1.0, 10_000_000.0),
        ] {
            assert!(within(h.quantile(q), want), "q {q}: {}", h.quantile(q));
        }
        assert_eq!(h.max(), 10_000_000);
        let r = h.report();
        assert!((r.p999 - 9_990.0).abs() < 20.0, "{r:?}");
        assert!(r.p50 < r.p90 && r.p90 < r.p99 && r.p99 <= r.p999 && r.p999 <= r.max);
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_max() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(20);
        b.record(5_000);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.max(), 5_000);
        assert_eq!(a.quantile(0.5), 20);
        assert_eq!(Histogram::default().quantile(0.5), 0);
        assert_eq!(Histogram::default().max(), 0);
    }

    #[test]
    fn values_beyond_the_bound_saturate_instead_of_failing() {
        let mut h = Histogram::default();
        h.record(u64::MAX);
        h.record(0);
        assert_eq!(h.count(), 2);
        let top = h.quantile(1.0);
        assert!(
            (HIGHEST_NS..=HIGHEST_NS + HIGHEST_NS / 1_000).contains(&top),
            "{top}"
        );
        assert_eq!(h.max(), u64::MAX);
    }

    #[test]
    fn durations_pick_their_unit() {
        assert_eq!(duration_us(12.4), "12 µs");
        assert_eq!(duration_us(1_500.0), "1.50 ms");
        assert_eq!(duration_us(2_500_000.0), "2.50 s");
    }
}
