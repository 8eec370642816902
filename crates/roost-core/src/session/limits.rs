//! Per-session bounds and the client's side of flow control: [`SessionLimits`] come from the
//! node's config (one `Arc<ServerPolicy>` shared by every session of a node), [`ClientParams`]
//! from the client's CONNECT. The session reads both; neither changes while a connection is
//! attached.

use crate::connect::ServerPolicy;
use crate::topic::TopicLimits;
use roost_codec::{ConnectVariant, Protocol};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which message goes when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropPolicy {
    /// Drop the oldest queued message to make room (fresh data matters most: telemetry).
    #[default]
    Oldest,
    /// Refuse the new message (what was queued first is kept: command streams).
    Newest,
}

/// Per-session bounds, from the node's config.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Upper bound on outbound QoS 1/2 messages in flight, whatever the client allows.
    pub max_inflight: u16,
    /// The inbound window we announce in CONNACK (Receive Maximum): QoS 2 PUBLISHes from the
    /// client awaiting PUBREL beyond this are a protocol violation ([MQTT-3.3.4-9]).
    pub receive_maximum: u16,
    /// Queue bound by count.
    pub max_queued_messages: usize,
    /// Queue bound by bytes (see [`Message::size`](crate::message::Message::size)).
    pub max_queued_bytes: usize,
    /// What to drop when the queue is full.
    pub drop_policy: DropPolicy,
    /// Client-to-server topic aliases we accept (announced in CONNACK).
    pub topic_alias_maximum: u16,
    /// Topic validation limits for alias resolution.
    pub topic: TopicLimits,
    /// What the node offers: checked by [`Session::handle`](super::Session::handle) (QoS, retain, subscription
    /// features) and by DISCONNECT (expiry cap). Shared by every session of a node.
    pub policy: Arc<ServerPolicy>,
    /// What the queues of every session built with these limits hold together, kept as each
    /// queue changes (the node exports it as `roost_session_queue_messages` / `_bytes`).
    /// Shared by every session of a node: clones of these limits share it.
    pub queue_totals: Arc<QueueTotals>,
}

/// Messages and bytes waiting in the queues of all the sessions that share it (see
/// [`SessionLimits::queue_totals`]): the queue that `max_queued_messages` and
/// `max_queued_bytes` bound, not the messages in flight nor a connected client's QoS 0 outbox.
///
/// Each session adds what it enqueues and takes away what leaves its queue (sent, dropped,
/// handed to a shared group, exported, ended, or the session dropped), so reading the totals
/// costs two atomic loads, not a walk over the sessions. Each session's changes happen under
/// its own lock, in order, so the sums never go below zero; they are `Relaxed`: a reader sees
/// every change sooner or later, in no particular order across sessions.
#[derive(Debug, Default)]
pub struct QueueTotals {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl QueueTotals {
    /// Messages queued.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Bytes queued (each message counted by [`Message::size`](crate::message::Message::size)).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(super) fn add(&self, messages: usize, bytes: usize) {
        if messages > 0 {
            self.messages.fetch_add(messages as u64, Ordering::Relaxed);
            self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn sub(&self, messages: usize, bytes: usize) {
        if messages > 0 {
            self.messages.fetch_sub(messages as u64, Ordering::Relaxed);
            self.bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
        }
    }
}

impl SessionLimits {
    /// Limits whose announced values (Receive Maximum, Topic Alias Maximum, topic limits) are
    /// the policy's, so what CONNACK says and what the session enforces cannot differ; the
    /// queue and window bounds are the defaults (set them with struct update syntax).
    pub fn new(policy: Arc<ServerPolicy>) -> SessionLimits {
        SessionLimits {
            receive_maximum: policy.receive_maximum,
            topic_alias_maximum: policy.topic_alias_maximum,
            topic: policy.topic,
            policy,
            ..SessionLimits::default()
        }
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_inflight: 32,
            receive_maximum: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 16 << 20,
            drop_policy: DropPolicy::Oldest,
            topic_alias_maximum: 64,
            topic: TopicLimits::default(),
            policy: Arc::new(ServerPolicy::default()),
            queue_totals: Arc::new(QueueTotals::default()),
        }
    }
}

/// What the client said in CONNECT that shapes what we send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientParams {
    /// Protocol of the attached connection.
    pub protocol: Protocol,
    /// The client's Receive Maximum (65,535 when absent, [MQTT-3.1.2-?] §3.1.2.11.3).
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size, if it set one.
    pub maximum_packet_size: Option<u32>,
    /// How many server-to-client topic aliases the client accepts (0 when absent).
    pub topic_alias_maximum: u16,
    /// MQTT 3.1, or a bridge (the CONNECT level's top bit): a bridge's subscriptions get No
    /// Local and Retain As Published, so what it forwards here does not come back to it and
    /// retained flags cross intact (see `roost_codec::ConnectVariant`).
    pub variant: ConnectVariant,
}

impl ClientParams {
    /// v3.1.1 defaults.
    pub fn v311() -> ClientParams {
        ClientParams {
            protocol: Protocol::V311,
            receive_maximum: u16::MAX,
            maximum_packet_size: None,
            topic_alias_maximum: 0,
            variant: ConnectVariant::default(),
        }
    }
}
