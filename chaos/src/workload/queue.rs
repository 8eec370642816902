//! The queue workloads (`qos1-queue`, `qos2-exactly-once`, `takeover`, `shared`): one
//! publisher per node sends sequence-numbered messages (payload `CLIENT:SEQ`) to one topic;
//! one persistent-session receiver per node gets them, moving between nodes (see
//! [`Hop`]). Each connection is read by a task of its own, so a takeover's new connection
//! can open while the old one is still read.

use super::{connect, publish_until, Publishing, Recorder, Stops, Targets, Workload};
use crate::history::Op;
use crate::rng::Rng;
use crate::workload::Liveness;
use parking_lot::Mutex;
use roost_codec::{Ack, Packet, QoS};
use roost_testkit::RawClient;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The topic of `qos1-queue`, `qos2-exactly-once` and `takeover`.
pub const TOPIC: &str = "chaos/q";
/// The topic of `shared`, and its group.
const SHARED_TOPIC: &str = "chaos/s";
const GROUP: &str = "g";
/// Time between two publishes of one publisher.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// When a receiver moves to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hop {
    /// After its connection ended, one time in three.
    OnLoss,
    /// Every 1-3 s, while still connected: the broker takes the old connection over.
    Connected,
}

/// What one queue workload does.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spec {
    qos: QoS,
    topic: &'static str,
    hop: Hop,
    /// Receivers are members of this shared group.
    shared: bool,
}

impl Spec {
    pub(super) fn of(w: Workload) -> Spec {
        let base = Spec {
            qos: QoS::AtLeastOnce,
            topic: TOPIC,
            hop: Hop::OnLoss,
            shared: false,
        };
        match w {
            Workload::Qos2ExactlyOnce => Spec {
                qos: QoS::ExactlyOnce,
                ..base
            },
            Workload::Takeover => Spec {
                hop: Hop::Connected,
                ..base
            },
            Workload::Shared => Spec {
                qos: QoS::ExactlyOnce,
                topic: SHARED_TOPIC,
                shared: true,
                ..base
            },
            Workload::Qos1Queue
            | Workload::Retained
            | Workload::Will
            | Workload::Qos1AndRetained => base,
        }
    }

    fn filter(&self) -> String {
        if self.shared {
            format!("$share/{GROUP}/{}", self.topic)
        } else {
            self.topic.to_owned()
        }
    }
}

/// Publisher `pub-{node}`: publishes until told to stop, reconnecting to its node when cut off.
pub(super) async fn publisher(
    spec: Spec,
    node: usize,
    targets: Targets,
    rec: Recorder,
    stops: Stops,
) {
    let p = Publishing {
        name: format!("pub-{node}"),
        node,
        topic: spec.topic.to_owned(),
        qos: spec.qos,
        retain: false,
        every: PUBLISH_EVERY,
    };
    publish_until(p, targets, rec, stops.publishers).await;
}

/// Receiver `sub-{home}` (or `shared-{home}`, a member of the group, recorded as `share:g`): a
/// persistent session subscribed to the workload's filter; receives until told to stop,
/// moving between nodes as [`Hop`] says.
pub(super) async fn subscriber(
    spec: Spec,
    home: usize,
    targets: Targets,
    rec: Recorder,
    stops: Stops,
    mut rng: Rng,
) {
    let name = if spec.shared {
        format!("shared-{home}")
    } else {
        format!("sub-{home}")
    };
    let recorded_as = if spec.shared {
        format!("share:{GROUP}")
    } else {
        name.clone()
    };
    let stop = stops.receivers;
    let nodes = targets.len();
    // QoS 2 packet ids that got a PUBREC and no PUBREL yet: the session's, across connections.
    let awaiting_rel = Arc::new(Mutex::new(HashSet::new()));
    let mut node = home;
    let mut subscribed = false;
    let mut readers = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let Ok((mut c, present)) = connect(&targets, node, &name, true).await else {
            // Refused (no lease, no quorum) or unreachable: try another node.
            node = 1 + rng.below(nodes);
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let from = rec.now();
        if !subscribed || !present {
            if subscribed {
                eprintln!("{name}: session gone on reconnect to node {node}; subscribing again");
            }
            match c.subscribe(&spec.filter(), spec.qos).await {
                Ok((ack, _)) if !ack.reason_codes.iter().any(|r| r.is_error()) => {
                    // The group holds the subscription from its first member's.
                    if !subscribed && (!spec.shared || home == 1) {
                        rec.push(Op::Subscriber {
                            client: recorded_as.clone(),
                            topic: spec.filter(),
                            qos: spec.qos as u8,
                            from: rec.now(),
                            until: None,
                        });
                    }
                    subscribed = true;
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            }
        }
        let reader = tokio::spawn(read(
            c,
            Conn {
                name: name.clone(),
                recorded_as: recorded_as.clone(),
                node,
                from,
                home: targets.away_from_spare_home(home, node).then_some(home),
            },
            rec.clone(),
            targets.clone(),
            Arc::clone(&stop),
            Arc::clone(&awaiting_rel),
        ));
        match spec.hop {
            Hop::OnLoss => {
                // Where the broker referred it (a draining node's 0x9C), else a random node
                // one time in three.
                let referred = reader.await.ok().flatten();
                let hop = rng.below(3) == 0;
                let random = 1 + rng.below(nodes);
                node = referred.unwrap_or(if hop { random } else { node });
            }
            Hop::Connected => {
                let stay = Duration::from_millis(1000 + rng.below(2000) as u64);
                let until = tokio::time::Instant::now() + stay;
                while tokio::time::Instant::now() < until
                    && !stop.load(Ordering::Acquire)
                    && !reader.is_finished()
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                readers.push(reader);
                node = 1 + rng.below(nodes);
            }
        }
    }
    for r in readers {
        let _ = r.await;
    }
}

/// One connection of a receiver, for its records.
struct Conn {
    name: String,
    recorded_as: String,
    node: usize,
    from: u64,
    /// The client's home, a spare, to go back to after [`super::HOME_AFTER`].
    home: Option<usize>,
}

/// Reads one connection until it ends or `stop`, recording what it receives and, at the end,
/// the connection as a `session` live until the broker last showed it served it (a packet
/// other than the one that closed it; a PINGREQ goes out after every idle second). A node
/// that is paused holds its connections open but serves nobody: its session is not live.
/// Returns the node the broker's DISCONNECT referred the client to, if it did, or its home
/// when it left to go there (`conn.home`).
async fn read(
    mut c: RawClient,
    conn: Conn,
    rec: Recorder,
    targets: Targets,
    stop: Arc<std::sync::atomic::AtomicBool>,
    awaiting_rel: Arc<Mutex<HashSet<u16>>>,
) -> Option<usize> {
    let mut live = Liveness::new(&rec, &stop, conn.from);
    let mut go_home_at = conn
        .home
        .map(|_| std::time::Instant::now() + super::HOME_AFTER);
    let mut gone_home = false;
    while let Some(packet) = live.next(&mut c).await {
        let sent = match packet {
            Packet::Publish(p) => {
                // A QoS 2 PUBLISH whose id still awaits its PUBREL is the same delivery again.
                let new = match (p.qos, p.packet_id) {
                    (QoS::ExactlyOnce, Some(id)) => awaiting_rel.lock().insert(id.get()),
                    _ => true,
                };
                let text = String::from_utf8_lossy(&p.payload);
                if let (true, Some((publisher, seq))) = (new, text.rsplit_once(':')) {
                    rec.push(Op::Receive {
                        client: conn.recorded_as.clone(),
                        node: conn.node as u64,
                        topic: p.topic.clone(),
                        publisher: publisher.to_owned(),
                        seq: seq.parse().unwrap_or(0),
                        qos: p.qos as u8,
                        at: rec.now(),
                    });
                }
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => c.send(&Packet::PubAck(Ack::new(id))).await,
                    (QoS::ExactlyOnce, Some(id)) => c.send(&Packet::PubRec(Ack::new(id))).await,
                    _ => Ok(()),
                }
            }
            Packet::PubRel(a) => {
                awaiting_rel.lock().remove(&a.packet_id.get());
                c.send(&Packet::PubComp(Ack::new(a.packet_id))).await
            }
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
        // A receiver hears a packet at least every second (it pings when idle).
        if let (Some(at), Some(home)) = (go_home_at, conn.home) {
            if std::time::Instant::now() >= at {
                if targets.ready(home).await {
                    let _ = c.send(&Packet::Disconnect(Default::default())).await;
                    gone_home = true;
                    break;
                }
                go_home_at = Some(std::time::Instant::now() + super::HOME_AFTER);
            }
        }
    }
    rec.push(Op::Session {
        client: conn.name,
        node: conn.node as u64,
        from: conn.from,
        until: Some(live.alive),
    });
    if gone_home {
        return conn.home;
    }
    targets.referred(&c)
}
