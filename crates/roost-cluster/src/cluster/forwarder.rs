//! Publish forwarding to one peer: the queue's item ([`Outgoing`]) and the task that drains it
//! ([`run_forwarder`]) onto one long-lived `Cluster.Forward` stream.
//!
//! Who calls it: `Cluster::peer` spawns one forwarder per peer the first time the peer is needed
//! (and again when its address changes); `Cluster::forward` puts messages in its queue
//! (`FORWARD_QUEUE`; when full, QoS 0 is dropped and QoS 1/2 waits up to `forward_timeout`,
//! then is refused `NotForwarded::QueueFull`).
//!
//! ```text
//!  Cluster::forward ─Outgoing─▶ queue ─▶ run_forwarder ─ForwardBatch─────────────────▶ peer
//!                                            │    ▲   (≤ MAX_BATCH messages and         │
//!                                            │    │    ≤ WireLimits::forward_batch bytes)│
//!                    QoS 1/2: unacked by seq ┘    └──────────── ForwardAck(seqs) ◀────┘
//!                    (≤ MAX_UNACKED), resent in order after a reconnect; an ack resolves
//!                    the oneshot the caller of `forward` waits on with Ok, giving up
//!                    resolves it with why (`NotForwarded`)
//! ```
//!
//! Bytes: a message whose encoding is over `WireLimits::max_message` is never sent (it could
//! not be sent next time either): it is counted (`roost_cluster_forward_too_large_total`) and
//! answered `NotForwarded::TooLarge`, which the publisher hears as a failure. Any other
//! message fits a batch on its own, so a batch the peer refuses is never built. Every message
//! given up is counted by reason (`roost_cluster_forward_given_up_total{reason}`), including
//! those not resent after a reconnect because nobody waits for them any more (`abandoned`:
//! the publisher's forward timeout ran out and it heard a failure; a late copy would only add
//! to what its retry brings, and for QoS 2 deliver one message twice).
//!
//! Health: the `up` flag is cleared while the stream is down and also while the peer is
//! *stalled*: a message has waited `stall_after` (the forward timeout) for an acknowledgement
//! and no acknowledgement came since. A peer cut off by a partition that drops packets keeps
//! its connection open; without this the node would go on making every publish wait the
//! whole forward timeout for it (docs/rfcs/0005). The first acknowledgement, or a new stream,
//! sets it again.
//!
//! Once: every batch carries this forwarder's random `epoch`, and a message keeps its sequence
//! number when it is resent on a new stream, so the receiver (`dedup`) acknowledges a resend of
//! a message it delivered before the stream broke without delivering it again.
//!
//! Reconnects back off: a stream that ended is reopened after an exponentially growing delay
//! with jitter (`RECONNECT_MIN` doubling up to `RECONNECT_MAX`, each delay between half and all
//! of it), reset once a stream got an ack or stayed up `RECONNECT_MAX`. A peer that ends every
//! stream at once therefore costs a reconnect every second or two, not a busy loop.
//!
//! Measured (`ForwardStreamStats`, labels `peer` = the peer's node id, resolved once per
//! forwarder): batches and bytes handed to the stream, messages per batch, resends, stream
//! failures by reason, and per QoS 1/2 message the time from entering the queue
//! (`Outgoing::queued_at`) to the peer's acknowledgement.
//!
//! Concurrency: one tokio task per peer owns the stream, the sequence numbers and the unacked
//! map; nothing else touches them. It ends when the queue's senders are gone (the peer was
//! dropped from `Cluster`'s map) or on shutdown (the `stop` watch). While its stream is down it
//! clears the peer's `up` flag, which shared-subscription delivery reads (`Cluster::peer_up`).

use super::NotForwarded;
use crate::convert::{self, Addressed};
use crate::limits::WireLimits;
use crate::metrics::{ClusterStats, ForwardStreamStats};
use crate::random_u64;
use crate::types::NodeId;
use metrics::{Counter, Histogram};
use prost::Message as _;
use roost_core::message::Message;
use roost_core::topic::TopicFilter;
use roost_proto::v1 as pb;
use roost_proto::v1::cluster_client::ClusterClient;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, warn};

/// Messages per forwarded batch, at most.
const MAX_BATCH: usize = 256;
/// QoS 1/2 messages sent to a peer and not yet acknowledged, kept for resending after a
/// reconnect. Beyond it, or beyond `WireLimits::unacked` bytes, the oldest are given up (and
/// counted).
const MAX_UNACKED: usize = 65_536;
/// First delay before reopening a forward stream (then doubled per failure, with jitter).
const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Longest delay before reopening a forward stream; a stream that stayed up this long resets
/// the delay.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// A message waiting for a peer's forwarder.
pub(super) struct Outgoing {
    pub(super) msg: Arc<Message>,
    pub(super) direct: bool,
    pub(super) shared: Vec<TopicFilter>,
    /// For one session that moved to the peer (then `direct` and `shared` are unused).
    pub(super) to: Option<Addressed>,
    /// Resolved `Ok` when the peer accepted it into its sessions, `Err` when it was given up
    /// (QoS 1/2 only).
    pub(super) ack: Option<oneshot::Sender<Result<(), NotForwarded>>>,
    /// When the sender stops waiting for `ack` (Unix ms; 0: nobody waits). Sent along
    /// (`ForwardedMessage.give_up_at_ms`): the peer does not deliver it later than that.
    pub(super) give_up_at_ms: u64,
    /// When it entered the queue: the start of its acknowledgement latency
    /// (`roost_cluster_forward_ack_latency_seconds`).
    pub(super) queued_at: Instant,
}

/// What a forwarder is for: which peer, from which node, within which byte bounds.
pub(super) struct Forwarder {
    origin: NodeId,
    peer: NodeId,
    /// Names this forwarder's sequence numbers for the receiver's deduplication (`dedup`):
    /// random and non-zero, the same on every stream this forwarder opens.
    epoch: u64,
    limits: WireLimits,
    /// How long unacknowledged messages may wait with no acknowledgement at all before the
    /// peer counts as unreachable (`up` cleared): the forward timeout.
    stall_after: Duration,
    stats: Arc<ClusterStats>,
    /// This peer's stream metrics.
    stream: ForwardStreamStats,
}

impl Forwarder {
    pub(super) fn new(
        origin: NodeId,
        peer: NodeId,
        limits: WireLimits,
        stall_after: Duration,
        stats: Arc<ClusterStats>,
    ) -> Forwarder {
        Forwarder {
            origin,
            peer,
            epoch: random_u64(origin.get() ^ peer.get().rotate_left(32)) | 1,
            limits,
            stall_after,
            stats,
            stream: ForwardStreamStats::new(peer),
        }
    }

    fn batch(&self, messages: Vec<pb::ForwardedMessage>) -> pb::ForwardBatch {
        pb::ForwardBatch {
            origin_node: self.origin.get(),
            messages,
            epoch: self.epoch,
        }
    }
}

/// Bytes a message adds to a `ForwardBatch`: its tag, its length and itself.
fn wire_size(fm: &pb::ForwardedMessage) -> usize {
    let len = fm.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Sends one peer its forwarded messages: batches on one long-lived stream, resends what was not
/// acknowledged after a reconnect. When it ends, what it still held (unacknowledged, or
/// queued and never sent) is answered [`NotForwarded::Stopped`] and counted.
pub(super) async fn run_forwarder(
    f: Forwarder,
    client: ClusterClient<Channel>,
    mut rx: mpsc::Receiver<Outgoing>,
    stop: watch::Receiver<bool>,
    up: Arc<std::sync::atomic::AtomicBool>,
) {
    let stats = f.stats.clone();
    let mut unacked = Unacked::new(MAX_UNACKED, f.limits.unacked);
    // A message taken from the queue that did not fit the batch being built: it opens the next.
    let mut carry: Option<Outgoing> = None;
    forward_loop(f, client, &mut rx, stop, up, &mut unacked, &mut carry).await;
    rx.close();
    let mut left = std::mem::take(&mut unacked.by_seq)
        .into_values()
        .map(|(o, _)| o)
        .chain(carry)
        .collect::<Vec<_>>();
    while let Ok(o) = rx.try_recv() {
        left.push(o);
    }
    for o in left {
        if let Some(tx) = o.ack {
            stats.forward_given_up.stopped.increment(1);
            let _ = tx.send(Err(NotForwarded::Stopped));
        }
    }
}

/// The body of [`run_forwarder`]; returns when the queue's senders are gone or on stop.
async fn forward_loop(
    f: Forwarder,
    client: ClusterClient<Channel>,
    rx: &mut mpsc::Receiver<Outgoing>,
    mut stop: watch::Receiver<bool>,
    up: Arc<std::sync::atomic::AtomicBool>,
    unacked: &mut Unacked,
    carry: &mut Option<Outgoing>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let (peer, stats) = (f.peer, f.stats.clone());
    let mut seq: u64 = 0;
    let mut backoff = Backoff::new(peer);
    loop {
        if *stop.borrow() {
            return;
        }
        let (btx, brx) = mpsc::channel::<pb::ForwardBatch>(16);
        let mut c = client.clone();
        let mut acks = match c.forward(ReceiverStream::new(brx)).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                up.store(false, Relaxed);
                f.stream.errors.connect.increment(1);
                debug!(peer = %peer, error = %e, "forward stream not established");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
        };
        let opened = Instant::now();
        let mut acked = false;
        up.store(true, Relaxed);
        // Last sign of life from the peer on this stream (its opening, an ack), for the stall
        // check: unacknowledged messages and nothing since `stall_after` means unreachable.
        let mut progress = Instant::now();
        let mut stalled = false;
        // Why this stream ended, the first reason seen (counted once, when it is left).
        let mut ended: Option<&Counter> = None;
        // What nobody waits for any more (its publisher's forward timeout ran out, and it was
        // told the message failed) is not sent again: the peer is owed nothing, and a copy
        // arriving now would be one more than the publisher's retry brings.
        let abandoned = unacked.drop_abandoned();
        stats.forward_given_up.abandoned.increment(abandoned);
        // Resend what the previous stream left unacknowledged, in order, in bounded batches,
        // each built when the stream has room for it. Acks are read meanwhile: the peer acks
        // every batch, and its acks back up into the stream (and stop it) unless read.
        let mut cursor = 0;
        let mut open = true;
        while open {
            let now = Instant::now();
            let mut messages = Vec::new();
            let mut bytes = 0;
            for (s, (o, size)) in unacked.by_seq.range(cursor..) {
                if !messages.is_empty()
                    && (messages.len() >= MAX_BATCH || bytes + size > f.limits.forward_batch)
                {
                    break;
                }
                bytes += size;
                cursor = s + 1;
                messages.push(forwarded(*s, o, now));
            }
            if messages.is_empty() {
                break;
            }
            let count = messages.len();
            let batch = f.batch(messages);
            loop {
                tokio::select! {
                    permit = btx.reserve() => {
                        match permit {
                            Ok(p) => {
                                p.send(batch);
                                f.stream.sent(count, bytes);
                                f.stream.resent.increment(count as u64);
                            }
                            Err(_) => {
                                open = false;
                                ended.get_or_insert(&f.stream.errors.send);
                            }
                        }
                        break;
                    }
                    ack = acks.message() => match ack {
                        Ok(Some(a)) => {
                            acked = true;
                            progress = Instant::now();
                            let refused = &stats.forward_given_up.refused;
                            unacked.answer(&a, &f.stream.ack_latency, refused);
                        }
                        Ok(None) | Err(_) => {
                            open = false;
                            ended.get_or_insert(stream_end(&f.stream, &ack));
                            break;
                        }
                    },
                    _ = stop.changed() => return,
                }
            }
        }
        loop {
            // Cancel safety: `recv` and `message` keep nothing in flight when another arm wins;
            // a message taken from the queue is either in the batch sent below or in `carry`.
            let stall_at = progress + f.stall_after;
            let first = match carry.take() {
                Some(o) => o,
                None => tokio::select! {
                    item = rx.recv() => {
                        let Some(o) = item else { return };
                        if o.ack.is_some() && unacked.is_empty() {
                            // The stall clock starts when something waits for an ack.
                            progress = Instant::now();
                        }
                        o
                    }
                    ack = acks.message() => {
                        match ack {
                            Ok(Some(a)) => {
                                acked = true;
                                progress = Instant::now();
                                if stalled {
                                    stalled = false;
                                    up.store(true, Relaxed);
                                    debug!(peer = %peer, "peer acknowledging again");
                                }
                                unacked.answer(
                                    &a,
                                    &f.stream.ack_latency,
                                    &stats.forward_given_up.refused,
                                );
                                continue;
                            }
                            Ok(None) | Err(_) => {
                                ended.get_or_insert(stream_end(&f.stream, &ack));
                                break;
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(stall_at), if !stalled && !unacked.is_empty() => {
                        // Cancel safety: a sleep keeps no state.
                        stalled = true;
                        up.store(false, Relaxed);
                        f.stream.errors.stalled.increment(1);
                        warn!(
                            peer = %peer,
                            unacked = unacked.by_seq.len(),
                            waited_ms = f.stall_after.as_millis() as u64,
                            "peer not acknowledging forwarded messages: unreachable"
                        );
                        continue;
                    }
                    _ = stop.changed() => return,
                },
            };
            let now = Instant::now();
            let mut messages = Vec::with_capacity(8);
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(o) = next.take() {
                if o.ack.as_ref().is_some_and(|tx| tx.is_closed()) {
                    // Queued while the peer was away, and nobody waits for it any more.
                    stats.forward_given_up.abandoned.increment(1);
                    if messages.len() < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                    continue;
                }
                let mut fm = forwarded(seq + 1, &o, now);
                let size = wire_size(&fm);
                if size > f.limits.max_message {
                    // It would not fit next time either: refused and counted, never resent.
                    stats.forward_too_large.increment(1);
                    if let Some(tx) = o.ack {
                        let _ = tx.send(Err(NotForwarded::TooLarge));
                    }
                    warn!(
                        peer = %peer,
                        topic = %o.msg.topic.as_str(),
                        size,
                        limit = f.limits.max_message,
                        "message too large to forward: dropped"
                    );
                } else if !messages.is_empty() && bytes + size > f.limits.forward_batch {
                    *carry = Some(o);
                    break;
                } else {
                    seq += 1;
                    fm.seq = seq;
                    bytes += size;
                    messages.push(fm);
                    if o.ack.is_some() {
                        let given_up = unacked.insert(seq, o, size);
                        stats.forward_given_up.resend_bound.increment(given_up);
                    }
                }
                if messages.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if messages.is_empty() {
                continue;
            }
            let count = messages.len();
            if btx.send(f.batch(messages)).await.is_err() {
                ended.get_or_insert(&f.stream.errors.send);
                break;
            }
            f.stream.sent(count, bytes);
        }
        if let Some(reason) = ended {
            reason.increment(1);
        }
        up.store(false, Relaxed);
        if acked || opened.elapsed() >= RECONNECT_MAX {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        debug!(
            peer = %peer,
            unacked = unacked.by_seq.len(),
            delay_ms = delay.as_millis() as u64,
            "forward stream closed; reconnecting"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// QoS 1/2 messages sent and not acknowledged, by sequence number, with the bytes each took in
/// its batch: what is resent after a reconnect. Bounded by count and by bytes; beyond either the
/// oldest are given up.
struct Unacked {
    by_seq: BTreeMap<u64, (Outgoing, usize)>,
    bytes: usize,
    max_len: usize,
    max_bytes: usize,
}

impl Unacked {
    fn new(max_len: usize, max_bytes: usize) -> Unacked {
        Unacked {
            by_seq: BTreeMap::new(),
            bytes: 0,
            max_len,
            max_bytes,
        }
    }

    /// Keeps `o` (sent as `seq`, `size` bytes); returns how many of the oldest were given up
    /// to stay within the bounds (never `o` itself, which is at most `max_message` bytes).
    /// Each one given up is answered [`NotForwarded::ResendBound`].
    fn insert(&mut self, seq: u64, o: Outgoing, size: usize) -> u64 {
        self.by_seq.insert(seq, (o, size));
        self.bytes += size;
        let mut given_up = 0;
        while self.by_seq.len() > 1
            && (self.by_seq.len() > self.max_len || self.bytes > self.max_bytes)
        {
            let Some((_, (o, size))) = self.by_seq.pop_first() else {
                break;
            };
            self.bytes -= size;
            if let Some(tx) = o.ack {
                let _ = tx.send(Err(NotForwarded::ResendBound));
            }
            given_up += 1;
        }
        given_up
    }

    /// Forgets the messages whose waiter is gone (see `forward_loop`); returns how many.
    fn drop_abandoned(&mut self) -> u64 {
        let before = self.by_seq.len();
        let mut bytes = self.bytes;
        self.by_seq.retain(|_, (o, size)| {
            let wanted = o.ack.as_ref().is_none_or(|tx| !tx.is_closed());
            if !wanted {
                bytes -= *size;
            }
            wanted
        });
        self.bytes = bytes;
        (before - self.by_seq.len()) as u64
    }

    /// The message acknowledged as `seq`, if it was still kept.
    fn ack(&mut self, seq: u64) -> Option<Outgoing> {
        let (o, size) = self.by_seq.remove(&seq)?;
        self.bytes -= size;
        Some(o)
    }

    /// The peer acknowledged `seqs`: each one's publisher hears it was accepted, and the time
    /// since it was queued goes into `latency`.
    fn settle(&mut self, seqs: &[u64], latency: &Histogram) {
        let now = Instant::now();
        for s in seqs {
            let Some(o) = self.ack(*s) else { continue };
            latency.record(now.saturating_duration_since(o.queued_at));
            if let Some(tx) = o.ack {
                let _ = tx.send(Ok(()));
            }
        }
    }

    /// The peer's answer: what it accepted ([`settle`](Self::settle)) and what it refused
    /// (it is there, but did not take them: `ForwardAck.refused`), whose publishers hear a
    /// failure at once, counted in `refused`.
    fn answer(&mut self, ack: &pb::ForwardAck, latency: &Histogram, refused: &Counter) {
        self.settle(&ack.seqs, latency);
        for s in &ack.refused {
            let Some(o) = self.ack(*s) else { continue };
            refused.increment(1);
            if let Some(tx) = o.ack {
                let _ = tx.send(Err(NotForwarded::Refused));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}

/// Exponential reconnect delay with jitter: each delay is between half and all of the current
/// step, and the step doubles from `RECONNECT_MIN` up to `RECONNECT_MAX`.
struct Backoff {
    step: Duration,
    /// xorshift64 state, seeded from std's per-process random hasher keys (no rand crate).
    rng: u64,
}

impl Backoff {
    fn new(peer: NodeId) -> Backoff {
        Backoff {
            step: RECONNECT_MIN,
            rng: random_u64(peer.get()) | 1,
        }
    }

    fn reset(&mut self) {
        self.step = RECONNECT_MIN;
    }

    fn next_delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = self.step / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        let delay = half + Duration::from_millis(self.rng % (jitter_ms + 1));
        self.step = (self.step * 2).min(RECONNECT_MAX);
        delay
    }
}

/// The stream-error counter for an acknowledgement stream that ended: with a gRPC error, or
/// closed by the peer.
fn stream_end<'a, T>(
    stream: &'a ForwardStreamStats,
    ack: &Result<Option<T>, tonic::Status>,
) -> &'a Counter {
    match ack {
        Err(_) => &stream.errors.error,
        Ok(_) => &stream.errors.closed,
    }
}

fn forwarded(seq: u64, o: &Outgoing, now: Instant) -> pb::ForwardedMessage {
    pb::ForwardedMessage {
        seq,
        message: Some(convert::message_to_wire(&o.msg, now.into_std())),
        direct: o.direct,
        shared_filters: convert::shared_filters_to_wire(&o.shared),
        to: o.to.as_ref().map(convert::addressed_to_wire),
        give_up_at_ms: o.give_up_at_ms,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use roost_core::topic::{TopicLimits, TopicName};

    fn outgoing() -> (Outgoing, oneshot::Receiver<Result<(), NotForwarded>>) {
        let (tx, rx) = oneshot::channel();
        let msg = Message {
            topic: TopicName::new("t", &TopicLimits::default()).unwrap(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: roost_codec::QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            id: 0,
            publisher: None,
            entered: None,
        };
        let o = Outgoing {
            msg: Arc::new(msg),
            direct: true,
            shared: vec![],
            to: None,
            ack: Some(tx),
            give_up_at_ms: 0,
            queued_at: Instant::now(),
        };
        (o, rx)
    }

    #[test]
    fn unacked_forgets_what_nobody_waits_for() {
        let mut u = Unacked::new(10, 1000);
        let (a, rx_a) = outgoing();
        let (b, rx_b) = outgoing();
        u.insert(1, a, 10);
        u.insert(2, b, 20);
        drop(rx_a);
        assert_eq!(u.drop_abandoned(), 1);
        assert_eq!(u.by_seq.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(u.bytes, 20);
        u.settle(&[2], &Histogram::noop());
        assert!(u.is_empty());
        drop(rx_b);
    }

    #[test]
    fn settling_records_each_acknowledged_message_latency() {
        let rec = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = rec.handle();
        let latency = metrics::with_local_recorder(&rec, || metrics::histogram!("latency"));
        let mut u = Unacked::new(10, 1000);
        let mut rxs = Vec::new();
        for seq in 1..=3 {
            let (o, rx) = outgoing();
            rxs.push(rx);
            u.insert(seq, o, 10);
        }
        // 9 was never kept (given up, or acknowledged already): nothing to record.
        u.settle(&[1, 3, 9], &latency);
        let text = handle.render();
        assert!(text.contains("latency_count 2"), "{text}");
        assert_eq!(rxs[0].try_recv(), Ok(Ok(())));
        assert!(rxs[1].try_recv().is_err(), "2 is still unacknowledged");
        assert_eq!(rxs[2].try_recv(), Ok(Ok(())));
    }

    #[test]
    fn unacked_gives_up_the_oldest_beyond_its_count_or_bytes() {
        let mut u = Unacked::new(3, 100);
        let mut rxs = Vec::new();
        let mut given_up = Vec::new();
        for (seq, size) in [(1, 10), (2, 20), (3, 30), (4, 10), (5, 50), (6, 100)] {
            let (o, rx) = outgoing();
            rxs.push(rx);
            given_up.push(u.insert(seq, o, size));
        }
        // 4th: over the count (seq 1 goes). 5th: 20+30+10+50 = 110 bytes (seq 2 goes).
        // 6th: 100 bytes alone fill it (seqs 3, 4, 5 go).
        assert_eq!(given_up, vec![0, 0, 0, 1, 1, 3]);
        assert_eq!(u.by_seq.keys().copied().collect::<Vec<_>>(), vec![6]);
        assert_eq!(u.bytes, 100);
        // A given-up message's waiter hears why; the kept one is acked.
        for rx in &mut rxs[..5] {
            assert_eq!(rx.try_recv(), Ok(Err(NotForwarded::ResendBound)));
        }
        assert!(u.ack(1).is_none());
        u.ack(6).unwrap().ack.unwrap().send(Ok(())).unwrap();
        assert_eq!(rxs[5].try_recv(), Ok(Ok(())));
        assert!(u.is_empty());
        assert_eq!(u.bytes, 0);
        // One message larger than the byte bound is still kept (it was sent).
        let (o, _rx) = outgoing();
        assert_eq!(u.insert(7, o, 1000), 0);
        assert_eq!(u.by_seq.len(), 1);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(NodeId::new(2));
        let mut steps = Vec::new();
        for _ in 0..8 {
            let step = b.step;
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            steps.push(step.as_millis());
        }
        assert_eq!(steps, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.step, RECONNECT_MIN);
        let d = b.next_delay();
        assert!(d >= Duration::from_millis(25) && d <= Duration::from_millis(50));
    }
}
