//! Retained messages ([MQTT-3.3.1-5] .. [MQTT-3.3.1-7]): client topics live in the replicated
//! state (a subscriber on any node, or after a restart, sees them); this node's own `$SYS`
//! topics are kept in a local store. Expiry is wall-clock time in the replicated copy (it is
//! applied on other machines and after restarts) and tokio's clock here.

use super::Broker;
use roost_cluster::types::{Command, RetainedMessage};
use roost_cluster::ClusterError;
use roost_codec::QoS;
use roost_core::message::{Message, PassThrough};
use roost_core::topic::{TopicFilter, TopicLimits, TopicName};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

impl Broker {
    /// Stores or clears a retained message: replicated for client topics, local for `$SYS`.
    pub(super) async fn store_retained(&self, msg: &Arc<Message>) -> Result<(), RetainError> {
        if msg.topic.is_system() {
            self.retain_local(msg);
            return Ok(());
        }
        if !msg.payload.is_empty() && !self.retained_fits(msg) {
            return Err(RetainError::Quota);
        }
        if crate::failpoints::forget_retained() {
            return Ok(());
        }
        self.cluster
            .propose(set_retained(msg))
            .await
            .map_err(RetainError::Cluster)?;
        Ok(())
    }

    /// Whether storing `msg` keeps the replicated store within `mqtt.max_retained_messages`
    /// and `mqtt.max_retained_bytes` (replacing a topic's message counts the difference).
    /// Checked here, before proposing, against this node's view: proposals racing from
    /// several nodes can pass it together, so the caps are soft by that much.
    fn retained_fits(&self, msg: &Message) -> bool {
        let m = &self.config.mqtt;
        let state = self.cluster.state().read();
        let (count, bytes) = state.retained_usage();
        let old = state.retained_payload_len(msg.topic.as_str());
        let count = count + usize::from(old.is_none());
        let bytes = bytes - old.unwrap_or(0).min(bytes) + msg.payload.len();
        count <= m.max_retained_messages && bytes <= m.max_retained_bytes
    }

    /// Stores a retained message in the node-local store (`$SYS`).
    pub(super) fn retain_local(&self, msg: &Arc<Message>) {
        let mut r = self.local_retained.write();
        if msg.payload.is_empty() {
            r.set(&msg.topic, None);
        } else {
            r.set(&msg.topic, Some(msg.clone()));
        }
    }

    /// Retained messages matching a filter, expired ones dropped ([MQTT-3.3.2-5]).
    pub(crate) fn retained_matching(
        &self,
        filter: &TopicFilter,
        now: Instant,
        budget: &mut RetainedBudget,
    ) -> Vec<Arc<Message>> {
        let mut local = Vec::new();
        self.local_retained.read().matching(filter, &mut local);
        let mut replicated = Vec::new();
        self.cluster
            .state()
            .read()
            .retained()
            .matching(filter, &mut replicated);
        let unix_now = unix_millis();
        let mut out = Vec::new();
        for m in local {
            if !m.is_expired(now) && budget.take(m.size()) {
                out.push(m);
            }
        }
        // Converted (a payload copy each) only within the budget.
        for r in replicated {
            if budget.messages == 0 || r.payload.len() > budget.bytes {
                budget.skipped += 1;
                continue;
            }
            if let Some(m) = from_retained(&r, now, unix_now, &self.topic_limits) {
                if !m.is_expired(now) && budget.take(m.size()) {
                    out.push(Arc::new(m));
                }
            }
        }
        out
    }

    pub(crate) fn retained_count(&self) -> usize {
        self.local_retained.read().len() + self.cluster.state().read().retained().len()
    }

    /// Drops local retained messages whose expiry has passed (called periodically; the leader
    /// purges the replicated ones).
    pub(crate) fn purge_expired_retained(&self, now: Instant) {
        self.local_retained.write().retain(|m| !m.is_expired(now));
    }
}

/// Wall-clock milliseconds, advanced by tokio's clock from an anchor taken once: the same as
/// the system clock in production, and under control of tests that pause tokio's clock.
pub(crate) fn unix_millis() -> u64 {
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    let (unix, at) = *ANCHOR.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        (unix, crate::now())
    });
    let since = crate::now().saturating_duration_since(at);
    unix.saturating_add(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// Stores a retained message in the replicated state, or clears it for an empty payload
/// ([MQTT-3.3.1-6]).
fn set_retained(msg: &Message) -> Command {
    Command::SetRetained {
        topic: msg.topic.as_str().to_owned(),
        message: (!msg.payload.is_empty()).then(|| to_retained(msg)),
    }
}

/// A retained message for the replicated store (expiry as wall-clock time: it is applied on
/// other machines and after restarts).
fn to_retained(m: &Message) -> RetainedMessage {
    let now = crate::now();
    RetainedMessage {
        topic: m.topic.as_str().to_owned(),
        payload: m.payload.to_vec(),
        qos: m.qos as u8,
        payload_format_indicator: m.properties.payload_format_indicator,
        content_type: m.properties.content_type.clone(),
        response_topic: m.properties.response_topic.clone(),
        correlation_data: m.properties.correlation_data.as_ref().map(|b| b.to_vec()),
        user_properties: m.properties.user_properties.clone(),
        expires_at_unix_ms: m.expires_at.map(|t| {
            let left = u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(0);
            unix_millis().saturating_add(left)
        }),
        publisher: m.publisher.as_deref().map(str::to_owned),
    }
}

/// A replicated retained message as a routable message; `None` if it expired or is invalid.
fn from_retained(
    r: &RetainedMessage,
    now: Instant,
    unix_now: u64,
    limits: &TopicLimits,
) -> Option<Message> {
    let expires_at = match r.expires_at_unix_ms {
        Some(at) if at <= unix_now => return None,
        Some(at) => Some(now + Duration::from_millis(at - unix_now)),
        None => None,
    };
    Some(Message {
        topic: TopicName::new(&r.topic, limits).ok()?,
        payload: bytes::Bytes::from(r.payload.clone()),
        qos: QoS::from_u8(r.qos)?,
        retain: true,
        properties: PassThrough {
            payload_format_indicator: r.payload_format_indicator,
            content_type: r.content_type.clone(),
            response_topic: r.response_topic.clone(),
            correlation_data: r.correlation_data.clone().map(bytes::Bytes::from),
            user_properties: r.user_properties.clone(),
        },
        expires_at,
        publisher: r.publisher.as_deref().map(Arc::from),
        // A retained message is delivered when a client subscribes, never routed twice to one
        // session: it needs no name.
        id: 0,
        // Sent on SUBSCRIBE, not a live publish: no delivery latency.
        entered: None,
    })
}

/// What one SUBSCRIBE may take from the retained store: as many messages and bytes as the
/// session could hold (its window and queue). A `#` over a large store must not copy every
/// retained payload only for the session to drop most of them; those over the budget are
/// counted (`skipped`) as the queue drops they would have been.
#[derive(Debug)]
pub(crate) struct RetainedBudget {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
    pub(crate) skipped: u64,
}

impl RetainedBudget {
    /// The budget for one SUBSCRIBE of a session with `limits`.
    pub(crate) fn for_session(
        limits: &roost_core::session::SessionLimits,
        max_packet_size: u32,
    ) -> RetainedBudget {
        let window = usize::from(limits.max_inflight);
        RetainedBudget {
            messages: limits.max_queued_messages.saturating_add(window),
            bytes: limits
                .max_queued_bytes
                .saturating_add(window.saturating_mul(max_packet_size as usize)),
            skipped: 0,
        }
    }

    /// Takes one message of `size` bytes; false (counted as skipped) when it does not fit.
    fn take(&mut self, size: usize) -> bool {
        if self.messages == 0 || size > self.bytes {
            self.skipped += 1;
            return false;
        }
        self.messages -= 1;
        self.bytes -= size;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::RetainedBudget;
    use roost_core::session::SessionLimits;

    /// Issue 7 item 18: a SUBSCRIBE takes from the retained store only what the session could
    /// hold (window + queue, in messages and bytes); the rest is counted, not copied.
    #[test]
    fn item18_retained_budget_is_the_session_window_and_queue() {
        let limits = SessionLimits {
            max_inflight: 2,
            max_queued_messages: 3,
            max_queued_bytes: 100,
            ..SessionLimits::default()
        };
        let mut b = RetainedBudget::for_session(&limits, 10);
        assert_eq!((b.messages, b.bytes), (5, 120));
        let taken: Vec<bool> = [50, 50, 30, 1, 1, 1].iter().map(|n| b.take(*n)).collect();
        // 50 + 50 fit (20 left); 30 does not; two 1-byte ones do; then the 5 messages are used.
        assert_eq!(taken, [true, true, false, true, true, true]);
        assert!(!b.take(0));
        assert_eq!(b.skipped, 2);
    }
}

/// Why a retained copy was not stored.
#[derive(Debug)]
pub(crate) enum RetainError {
    /// Over `mqtt.max_retained_messages` or `mqtt.max_retained_bytes` (v5: 0x97).
    Quota,
    /// The cluster did not commit it.
    Cluster(ClusterError),
}
