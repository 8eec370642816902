//! `$SYS/` topics: the node's own state published as retained QoS 0 messages every
//! `node.sys_interval_secs` (Mosquitto's names where one exists, so existing dashboards work).
//!
//! | topic                             | value                                   |
//! |-----------------------------------|-----------------------------------------|
//! | `$SYS/broker/version`             | `roost <version>`                       |
//! | `$SYS/broker/uptime`              | `<seconds> seconds`                     |
//! | `$SYS/broker/clients/connected`   | connections open                        |
//! | `$SYS/broker/clients/total`       | sessions held (connected and offline)   |
//! | `$SYS/broker/subscriptions/count` | subscriptions                           |
//! | `$SYS/broker/retained messages/count` | retained messages                   |
//! | `$SYS/broker/messages/received`   | PUBLISH packets received                |
//! | `$SYS/broker/messages/sent`       | PUBLISH packets sent                    |
//! | `$SYS/broker/messages/dropped`    | messages dropped (all causes: the sum of the `*dropped_total` counters) |
//! | `$SYS/broker/bytes/received`      | bytes read from clients                 |
//! | `$SYS/broker/bytes/sent`          | bytes written to clients                |
//!
//! Wildcard subscriptions starting with `+` or `#` never see these ([MQTT-4.7.2-1]); subscribe
//! to `$SYS/#`. The same numbers are served as JSON at `GET /api/v1/stats`.

use crate::broker::Broker;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Publishes `$SYS` every `interval` and purges expired retained messages, until the broker is
/// dropped by everyone else.
pub(crate) async fn run(broker: Arc<Broker>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        publish(&broker);
        broker.purge_expired_retained(crate::now());
    }
}

fn publish(b: &Broker) {
    let m = &b.metrics;
    let items = [
        (
            "$SYS/broker/version",
            format!("roost {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", b.started.elapsed().as_secs()),
        ),
        (
            "$SYS/broker/clients/connected",
            b.connections.load(Ordering::Relaxed).to_string(),
        ),
        ("$SYS/broker/clients/total", b.session_count().to_string()),
        (
            "$SYS/broker/subscriptions/count",
            b.subscription_count().to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            b.retained_count().to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            m.msg_received.get().to_string(),
        ),
        ("$SYS/broker/messages/sent", m.msg_sent.get().to_string()),
        (
            "$SYS/broker/messages/dropped",
            m.dropped_total().to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            m.bytes_received.get().to_string(),
        ),
        ("$SYS/broker/bytes/sent", m.bytes_sent.get().to_string()),
    ];
    for (topic, value) in items {
        b.publish_internal(topic, value);
    }
}

/// The same numbers as JSON, for `GET /api/v1/stats`.
pub(crate) fn stats_json(b: &Broker) -> Value {
    let m = &b.metrics;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": b.started.elapsed().as_secs(),
        "connections": b.connections.load(Ordering::Relaxed),
        "connections_parked": b.parked.load(Ordering::Relaxed),
        "sessions": b.session_count(),
        "subscriptions": b.subscription_count(),
        "retained": b.retained_count(),
        "messages_received": m.msg_received.get(),
        "messages_sent": m.msg_sent.get(),
        "messages_dropped": m.dropped_total(),
        "bytes_received": m.bytes_received.get(),
        "bytes_sent": m.bytes_sent.get(),
    })
}
