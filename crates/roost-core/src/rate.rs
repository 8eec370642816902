//! Token buckets for rate limits (per-connection publish and byte rates, per-listener connect
//! rate). Time is passed in (convention 1); nothing here allocates.
//!
//! A bucket holds up to `burst` tokens and gains `rate` tokens per second; taking more than it
//! holds is refused and takes nothing. `rate` 0 means unlimited.

use std::time::Instant;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second; 0: unlimited.
    rate: u64,
    /// Most tokens held.
    burst: u64,
    /// Tokens held, in millionths (so slow rates refill smoothly without floats).
    micro: u64,
    last: Option<Instant>,
}

const MICRO: u64 = 1_000_000;

impl TokenBucket {
    /// A full bucket: `rate` per second, at most `burst` at once (at least `rate`... the caller
    /// decides; a burst below 1 would refuse everything and is raised to 1).
    pub fn new(rate: u64, burst: u64) -> TokenBucket {
        let burst = burst.max(1);
        TokenBucket {
            rate,
            burst,
            micro: burst.saturating_mul(MICRO),
            last: None,
        }
    }

    /// Whether the bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    fn refill(&mut self, now: Instant) {
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(last);
        let gained = (elapsed.as_micros() as u64).saturating_mul(self.rate);
        if gained > 0 {
            self.micro = self
                .micro
                .saturating_add(gained)
                .min(self.burst.saturating_mul(MICRO));
            self.last = Some(now);
        }
    }

    /// Takes `n` tokens at `now` if the bucket holds them; true when taken (always, unlimited).
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        let want = n.saturating_mul(MICRO);
        if self.micro >= want {
            self.micro -= want;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_full_bucket_gives_its_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5);
        for _ in 0..5 {
            assert!(b.take(1, t0));
        }
        assert!(!b.take(1, t0));
        // 10 per second: one token per 100 ms.
        assert!(!b.take(1, t0 + Duration::from_millis(50)));
        assert!(b.take(1, t0 + Duration::from_millis(100)));
        assert!(!b.take(1, t0 + Duration::from_millis(100)));
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(b.take(1, later));
        }
        assert!(!b.take(1, later));
    }

    #[test]
    fn a_take_larger_than_held_takes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 1000);
        assert!(!b.take(1001, t0));
        assert!(b.take(1000, t0));
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, 0);
        assert!(b.is_unlimited());
        assert!(b.take(u64::MAX, t0));
    }

    #[test]
    fn slow_rates_refill_without_rounding_to_zero() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1, 1);
        assert!(b.take(1, t0));
        // Refilled in small steps: half a token twice is one token.
        assert!(!b.take(1, t0 + Duration::from_millis(500)));
        assert!(b.take(1, t0 + Duration::from_millis(1000)));
    }
}
