//! A fixed-size log-linear latency histogram (nanoseconds), in the spirit of HdrHistogram with
//! two significant digits.
//!
//! Each power of two is split into 64 linear sub-buckets, so a recorded value is known to within
//! 1/64 (1.6 %) and the whole `u64` range fits in 3,776 counters (30 KiB). Values below 128 ns
//! are exact. Recording is an index computation and an increment: cheap enough for every
//! delivered message. Each subscriber task owns one histogram; they are merged at the end.

/// Sub-buckets per power of two, as a power of two (64).
const SUB_BITS: u32 = 6;
const SUB_COUNT: usize = 1 << SUB_BITS;
/// Buckets for every `u64`: 128 exact ones, then 64 per further power of two.
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB_COUNT + SUB_COUNT;

/// Latency histogram; see the module docs for its resolution.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Records one value.
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    /// Adds every value recorded in `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// Largest value recorded (exact); 0 when empty.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.0..=1.0): the upper end of the bucket holding the
    /// `ceil(q * count)`-th smallest value, never above the exact maximum. 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_bound(i).min(self.max);
            }
        }
        self.max
    }
}

/// The bucket of `value`.
fn index(value: u64) -> usize {
    if value < (SUB_COUNT as u64) << 1 {
        return value as usize;
    }
    let magnitude = 63 - value.leading_zeros(); // floor(log2(value)), >= SUB_BITS + 1
    let shift = magnitude - SUB_BITS;
    let sub = (value >> shift) as usize; // SUB_COUNT..2 * SUB_COUNT
    (shift as usize + 1) * SUB_COUNT + (sub - SUB_COUNT)
}

/// The largest value that falls in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    if i < SUB_COUNT << 1 {
        return i as u64;
    }
    let shift = (i / SUB_COUNT - 1) as u32;
    let sub = (i % SUB_COUNT + SUB_COUNT) as u64;
    (((sub + 1) as u128) << shift)
        .saturating_sub(1)
        .min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact_and_buckets_are_contiguous() {
        for v in 0..128u64 {
            assert_eq!(index(v), v as usize);
            assert_eq!(upper_bound(index(v)), v);
        }
        let mut last = index(127);
        for v in [
            128u64,
            129,
            255,
            256,
            1_000,
            1 << 20,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let i = index(v);
            assert!(i >= last, "{v}");
            assert!(i < BUCKETS, "{v}");
            assert!(upper_bound(i) >= v, "{v}");
            // Relative error at most 1/64.
            let lower = if i == 0 { 0 } else { upper_bound(i - 1) + 1 };
            assert!(lower <= v);
            assert!(
                (upper_bound(i) - lower) as f64 <= v as f64 / 64.0 + 1.0,
                "{v}"
            );
            last = i;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1_000);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max(), 10_000_000);
        let within = |got: u64, want: f64| (got as f64 - want).abs() / want < 0.02;
        assert!(within(h.quantile(0.5), 5_000_000.0), "{}", h.quantile(0.5));
        assert!(
            within(h.quantile(0.99), 9_900_000.0),
            "{}",
            h.quantile(0.99)
        );
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert!(h.quantile(0.0) <= 1_016);
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
    }
}
