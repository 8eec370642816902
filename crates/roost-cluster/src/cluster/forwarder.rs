//! Publish forwarding to one peer: the queue's item ([`Outgoing`]) and the task that drains it
//! ([`run_forwarder`]) onto one long-lived `Cluster.Forward` stream.
//!
//! Who calls it: `Cluster::peer` spawns one forwarder per peer the first time the peer is needed
//! (and again when its address changes); `Cluster::forward` puts messages in its queue
//! (`FORWARD_QUEUE`; when full, QoS 0 is dropped and QoS 1/2 waits up to `forward_timeout`).
//!
//! ```text
//!  Cluster::forward ─Outgoing─▶ queue ─▶ run_forwarder ─ForwardBatch (≤ MAX_BATCH)─▶ peer
//!                                            │    ▲                                   │
//!                    QoS 1/2: unacked by seq ┘    └──────────── ForwardAck(seqs) ◀────┘
//!                    (≤ MAX_UNACKED), resent in order after a reconnect; an ack resolves
//!                    the oneshot the caller of `forward` waits on
//! ```
//!
//! Concurrency: one tokio task per peer owns the stream, the sequence numbers and the unacked
//! map; nothing else touches them. It ends when the queue's senders are gone (the peer was
//! dropped from `Cluster`'s map) or on shutdown (the `stop` watch). While its stream is down it
//! clears the peer's `up` flag, which shared-subscription delivery reads (`Cluster::peer_up`).

use crate::convert;
use crate::metrics::ClusterStats;
use crate::types::NodeId;
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
use tracing::debug;

/// Messages per forwarded batch, at most.
const MAX_BATCH: usize = 256;
/// QoS 1/2 messages sent to a peer and not yet acknowledged, kept for resending after a
/// reconnect. Beyond it the oldest are given up (and counted).
const MAX_UNACKED: usize = 65_536;

/// A message waiting for a peer's forwarder.
pub(super) struct Outgoing {
    pub(super) msg: Arc<Message>,
    pub(super) direct: bool,
    pub(super) shared: Vec<TopicFilter>,
    /// Resolved when the peer accepted it into its sessions (QoS 1/2 only).
    pub(super) ack: Option<oneshot::Sender<()>>,
}

/// Sends one peer its forwarded messages: batches on one long-lived stream, resends what was not
/// acknowledged after a reconnect.
pub(super) async fn run_forwarder(
    origin: NodeId,
    peer: NodeId,
    client: ClusterClient<Channel>,
    mut rx: mpsc::Receiver<Outgoing>,
    stats: Arc<ClusterStats>,
    mut stop: watch::Receiver<bool>,
    up: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut unacked: BTreeMap<u64, Outgoing> = BTreeMap::new();
    let mut seq: u64 = 0;
    let mut backoff = Duration::from_millis(50);
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
                debug!(peer = %peer, error = %e, "forward stream not established");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        up.store(true, Relaxed);
        // Resend what the previous stream left unacknowledged, in order.
        if !unacked.is_empty() {
            let now = Instant::now();
            let messages = unacked
                .iter()
                .map(|(s, o)| forwarded(*s, o, now))
                .collect::<Vec<_>>();
            for chunk in messages.chunks(MAX_BATCH) {
                let batch = pb::ForwardBatch {
                    origin_node: origin.get(),
                    messages: chunk.to_vec(),
                };
                if btx.send(batch).await.is_err() {
                    break;
                }
            }
        }
        loop {
            tokio::select! {
                item = rx.recv() => {
                    let Some(first) = item else { return };
                    let now = Instant::now();
                    let mut messages = Vec::with_capacity(8);
                    let mut next = Some(first);
                    while let Some(o) = next.take() {
                        seq += 1;
                        messages.push(forwarded(seq, &o, now));
                        if o.ack.is_some() {
                            unacked.insert(seq, o);
                            if unacked.len() > MAX_UNACKED {
                                unacked.pop_first();
                                stats.forward_given_up.increment(1);
                            }
                        }
                        if messages.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    let batch = pb::ForwardBatch { origin_node: origin.get(), messages };
                    if btx.send(batch).await.is_err() {
                        break;
                    }
                }
                ack = acks.message() => {
                    match ack {
                        Ok(Some(a)) => {
                            for s in a.seqs {
                                if let Some(o) = unacked.remove(&s) {
                                    if let Some(tx) = o.ack {
                                        let _ = tx.send(());
                                    }
                                }
                            }
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                _ = stop.changed() => return,
            }
        }
        debug!(
            peer = %peer,
            unacked = unacked.len(),
            "forward stream closed; reconnecting"
        );
        up.store(false, Relaxed);
    }
}

fn forwarded(seq: u64, o: &Outgoing, now: Instant) -> pb::ForwardedMessage {
    pb::ForwardedMessage {
        seq,
        message: Some(convert::message_to_wire(&o.msg, now.into_std())),
        direct: o.direct,
        shared_filters: convert::shared_filters_to_wire(&o.shared),
    }
}
