//! The receiving side's memory of what peers' forward streams already delivered, so a resend
//! after a reconnect is acknowledged without being delivered twice (issue 7: a QoS 2 message
//! must reach a subscriber once even when its ack was lost with the stream).
//!
//! A forwarder numbers its messages 1, 2, 3... within an *epoch*, a random id it picks when it
//! starts (a restarted origin, or a new forwarder for a moved peer, picks a new one). It sends
//! in increasing order and resends its unacknowledged messages in order on the next stream, so
//! for each (origin, epoch) the receiver keeps one number, the highest sequence delivered:
//!
//! ```text
//!   stream 1:  1 2 3 4 5        delivered up to 5; acks for 3..5 lost when the stream broke
//!   stream 2:      3 4 5 6 7    3..5 ≤ 5: acknowledged, not delivered; 6, 7 delivered
//!   restart:   epoch E' ≠ E     a new entry, starting from 0
//! ```
//!
//! Memory is bounded: at most [`MAX_STREAMS`] (origin, epoch) entries of two integers each; when
//! full, the entry used longest ago (a restarted origin's old epoch) is forgotten. An entry
//! forgotten while its stream is still resending would let that resend through again, so the
//! bound is far above the number of live streams (one per peer).
//!
//! A late QoS 0 message from a stream that was replaced (still buffered when the new stream
//! already delivered higher numbers) is also not delivered: QoS 0 is at most once.
//!
//! Who calls it: the Forward service's per-stream tasks, through a `parking_lot::Mutex` held
//! for one check, never across a delivery.

use std::collections::HashMap;

/// Most (origin, epoch) entries kept.
pub(super) const MAX_STREAMS: usize = 1024;

/// Delivered high-water marks per (origin node, epoch). See the module docs.
#[derive(Debug, Default)]
pub(super) struct Dedup {
    streams: HashMap<(u64, u64), Mark>,
    /// Counts checks, to find the entry used longest ago.
    clock: u64,
}

#[derive(Debug)]
struct Mark {
    /// Highest sequence number delivered.
    delivered: u64,
    /// `clock` at its last use.
    used: u64,
}

impl Dedup {
    /// True when message `seq` of `origin`'s stream `epoch` was not delivered before, and
    /// records it as delivered; false for a resend of one at or below the high-water mark.
    /// Epoch 0 (a sender that does not number its epochs) is never deduplicated.
    pub(super) fn first_delivery(&mut self, origin: u64, epoch: u64, seq: u64) -> bool {
        if epoch == 0 {
            return true;
        }
        self.clock += 1;
        let key = (origin, epoch);
        if !self.streams.contains_key(&key) && self.streams.len() >= MAX_STREAMS {
            let oldest = self
                .streams
                .iter()
                .min_by_key(|(_, m)| m.used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.streams.remove(&k);
            }
        }
        let mark = self.streams.entry(key).or_insert(Mark {
            delivered: 0,
            used: 0,
        });
        mark.used = self.clock;
        if seq <= mark.delivered {
            return false;
        }
        mark.delivered = seq;
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_at_or_below_the_high_water_mark_is_not_delivered_again() {
        let mut d = Dedup::default();
        let got: Vec<bool> = [1, 2, 3, 2, 3, 4, 6, 5, 6, 7]
            .iter()
            .map(|s| d.first_delivery(1, 77, *s))
            .collect();
        assert_eq!(
            got,
            vec![true, true, true, false, false, true, true, false, false, true]
        );
    }

    #[test]
    fn origins_and_epochs_are_separate_and_epoch_zero_is_never_deduplicated() {
        let mut d = Dedup::default();
        assert!(d.first_delivery(1, 77, 5));
        // Another origin, and the same origin restarted (new epoch), start from nothing.
        assert!(d.first_delivery(2, 77, 1));
        assert!(d.first_delivery(1, 78, 1));
        assert!(!d.first_delivery(1, 77, 5));
        assert!(d.first_delivery(1, 77, 6));
        for _ in 0..3 {
            assert!(d.first_delivery(1, 0, 1));
        }
        assert_eq!(d.len(), 3, "epoch 0 keeps nothing");
    }

    #[test]
    fn memory_is_bounded_and_the_least_recently_used_stream_goes() {
        let mut d = Dedup::default();
        for origin in 0..MAX_STREAMS as u64 {
            assert!(d.first_delivery(origin, 9, 10));
        }
        assert_eq!(d.len(), MAX_STREAMS);
        // Origin 0 is used again, so origin 1 is now the least recently used.
        assert!(!d.first_delivery(0, 9, 10));
        assert!(d.first_delivery(5000, 9, 1));
        assert_eq!(d.len(), MAX_STREAMS);
        assert!(!d.first_delivery(0, 9, 10), "kept");
        assert!(
            d.first_delivery(1, 9, 10),
            "forgotten: starts again from nothing"
        );
        assert_eq!(d.len(), MAX_STREAMS);
    }
}
