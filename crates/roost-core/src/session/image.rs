//! A session as a value that can move between nodes ([`SessionImage`]: export / import, docs/rfcs/0002),
//! and the end of a session (what it still held for shared groups comes back as [`Orphan`]s).
//!
//! ```text
//!   node A: Session::export() ──SessionImage──▶ (cluster takeover) ──▶ node B: Session::import()
//!   end() / take_shared_queued() ──Vec<Orphan>──▶ node: redistribute to another group member
//! ```

use super::{Inflight, InflightState, Orphan, Pending, Session, SessionLimits};
use crate::index::Subscription;
use crate::message::Message;
use crate::topic::TopicFilter;
use roost_codec::{PacketId, QoS};
use std::collections::VecDeque;
use std::sync::Arc;

/// A message of a session image: queued, or in flight with its packet id and stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMessage {
    /// The message.
    pub msg: Arc<Message>,
    /// Delivery QoS.
    pub qos: QoS,
    /// RETAIN as sent to this subscriber.
    pub retain: bool,
    /// Subscription identifiers.
    pub subscription_ids: Vec<u32>,
    /// The shared subscription it came through.
    pub shared: Option<TopicFilter>,
    /// In flight only: its packet id.
    pub packet_id: Option<PacketId>,
    /// In flight only: PUBREL already sent (QoS 2, second half).
    pub released: bool,
}

/// Everything a session holds that must move with it when another node takes it over
/// (docs/rfcs/0002): subscriptions, in-flight and queued messages, inbound QoS 2 ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionImage {
    /// Subscriptions.
    pub subscriptions: Vec<(TopicFilter, Subscription)>,
    /// In flight, oldest first.
    pub inflight: Vec<ImageMessage>,
    /// Queued, oldest first.
    pub queued: Vec<ImageMessage>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
}

impl Session {
    /// Takes queued (not yet sent) messages that came through shared subscriptions, so another
    /// member of the group can have them. Called when a member disconnects: a member that is
    /// gone must not strand its group's messages.
    pub fn take_shared_queued(&mut self) -> Vec<Orphan> {
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.queue.len());
        let mut taken_bytes = 0;
        for p in self.queue.drain(..) {
            match p.shared {
                Some(filter) => {
                    taken_bytes += p.msg.size();
                    out.push(Orphan { filter, msg: p.msg });
                }
                None => keep.push_back(p),
            }
        }
        self.queue = keep;
        self.queue_removed(out.len(), taken_bytes);
        out
    }

    /// Takes the whole session out, leaving it empty and detached (the node hands the image to
    /// the node that took the client over).
    pub fn export(&mut self) -> SessionImage {
        let image_of = |p: Pending, id: Option<PacketId>, released: bool| ImageMessage {
            msg: p.msg,
            qos: p.qos,
            retain: p.retain,
            subscription_ids: p.subscription_ids,
            shared: p.shared,
            packet_id: id,
            released,
        };
        let inflight = self
            .inflight
            .drain(..)
            .map(|f| image_of(f.pending, Some(f.id), f.state == InflightState::Released))
            .collect();
        self.queue_removed(self.queue.len(), self.queued_bytes);
        let queued = self
            .queue
            .drain(..)
            .map(|p| image_of(p, None, false))
            .collect();
        let mut inbound_qos2 = self.inbound_qos2.take();
        inbound_qos2.sort_unstable();
        self.client = None;
        self.clock = None;
        self.clear_outbox();
        SessionImage {
            subscriptions: self.subscriptions.take_all(),
            inflight,
            queued,
            inbound_qos2,
        }
    }

    /// Rebuilds a session from an image (taken over from another node). The queue bounds of
    /// this node apply: what does not fit is dropped and counted. In-flight messages keep their
    /// packet ids and are resent (DUP) when a connection attaches.
    pub fn import(
        client_id: Arc<str>,
        limits: impl Into<Arc<SessionLimits>>,
        image: SessionImage,
    ) -> Session {
        let mut s = Session::new(client_id, limits);
        s.subscriptions = image.subscriptions.into_iter().collect();
        for m in image.inflight {
            let Some(id) = m.packet_id else { continue };
            if s.inflight.iter().any(|f| f.id == id) {
                continue;
            }
            s.inflight.push_back(Inflight {
                id,
                pending: Pending {
                    msg: m.msg,
                    qos: m.qos,
                    retain: m.retain,
                    subscription_ids: m.subscription_ids,
                    shared: m.shared,
                },
                state: if m.released {
                    InflightState::Released
                } else {
                    InflightState::Published
                },
                awaiting_resend: true,
            });
            s.next_packet_id = s.next_packet_id.max(id.get());
        }
        for m in image.queued {
            s.enqueue(Pending {
                msg: m.msg,
                qos: m.qos,
                retain: m.retain,
                subscription_ids: m.subscription_ids,
                shared: m.shared,
            });
        }
        s.inbound_qos2 = image.inbound_qos2.into_iter().collect();
        s
    }

    /// Ends the session: every shared-subscription message it still holds (queued, or sent and
    /// not acknowledged) is returned for redistribution; the rest is discarded.
    pub fn end(&mut self) -> Vec<Orphan> {
        let mut out = self.take_shared_queued();
        for f in self.inflight.drain(..) {
            if f.state == InflightState::Published {
                if let Some(filter) = f.pending.shared {
                    out.push(Orphan {
                        filter,
                        msg: f.pending.msg,
                    });
                }
            }
        }
        self.queue_removed(self.queue.len(), self.queued_bytes);
        self.queue.clear();
        self.subscriptions.clear();
        self.inbound_qos2.take();
        self.client = None;
        self.clock = None;
        out
    }
}
