//! `qos1-queue`: one publisher per node sends sequence-numbered QoS 1 messages to one topic
//! (payload `CLIENT:SEQ`); one persistent-session subscriber per node receives them, and when
//! its connection ends reconnects, now and then to another node (taking its session over).
//! Everything is recorded as [`Op`]s on one clock.

use crate::history::{Nanos, Op, Outcome};
use crate::rng::Rng;
use parking_lot::Mutex;
use roost_codec::{Ack, Packet, Protocol, QoS, ReasonCode};
use roost_testkit::{connect_packet, persistent_packet, RawClient};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The topic every message goes to.
pub const TOPIC: &str = "chaos/q";
/// Time between two publishes of one publisher.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// Where the operations go, timed from the run's start.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> Nanos {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn push(&self, op: Op) {
        self.ops.lock().push(op);
    }

    /// Everything recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// The nodes' MQTT addresses, by node id (index 0 is node 1).
#[derive(Clone)]
pub struct Targets(pub Vec<SocketAddr>);

/// Connects `client_id` to node `node` (1-based); `None` when refused or unreachable.
async fn connect(
    targets: &Targets,
    node: usize,
    client_id: &str,
    persistent: bool,
) -> Option<(RawClient, bool)> {
    let addr = targets.0[node - 1];
    let open = tokio::time::timeout(Duration::from_secs(2), RawClient::open(addr, Protocol::V5));
    let mut c = open.await.ok()?.ok()?;
    let packet = if persistent {
        persistent_packet(Protocol::V5, client_id)
    } else {
        connect_packet(Protocol::V5, client_id, true)
    };
    // A takeover from an unreachable owner waits for its lease: allow for it.
    let ack = tokio::time::timeout(Duration::from_secs(15), c.handshake(packet))
        .await
        .ok()?
        .ok()?;
    (ack.reason_code == ReasonCode::SUCCESS).then_some((c, ack.session_present))
}

/// Publisher `pub-{node}`: publishes until `stop`, reconnecting to its node when cut off.
pub async fn publisher(node: usize, targets: Targets, rec: Recorder, stop: Arc<AtomicBool>) {
    let name = format!("pub-{node}");
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        let Some((mut c, _)) = connect(&targets, node, &name, false).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let from = rec.now();
        while !stop.load(Ordering::Acquire) {
            seq += 1;
            let payload = format!("{name}:{seq}");
            let start = rec.now();
            let r = c
                .publish(TOPIC, payload.as_bytes(), QoS::AtLeastOnce, false)
                .await;
            let outcome = match &r {
                Ok(rc) if *rc == ReasonCode::SUCCESS => Outcome::Ok,
                Ok(_) => Outcome::Failed,
                Err(_) => Outcome::Unknown,
            };
            rec.push(Op::Publish {
                client: name.clone(),
                node: node as u64,
                topic: TOPIC.into(),
                seq,
                qos: 1,
                start,
                end: rec.now(),
                outcome,
            });
            if r.is_err() {
                break;
            }
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
        rec.push(Op::Session {
            client: name.clone(),
            node: node as u64,
            from,
            until: Some(rec.now()),
        });
    }
}

/// Subscriber `sub-{home}`: a persistent session subscribed to [`TOPIC`] at QoS 1; receives
/// until `stop`; after a lost connection it reconnects, one time in three to another node.
pub async fn subscriber(
    home: usize,
    targets: Targets,
    rec: Recorder,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
) {
    let name = format!("sub-{home}");
    let nodes = targets.0.len();
    let mut node = home;
    let mut subscribed = false;
    while !stop.load(Ordering::Acquire) {
        let Some((mut c, present)) = connect(&targets, node, &name, true).await else {
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
            match c.subscribe(TOPIC, QoS::AtLeastOnce).await {
                Ok((ack, _)) if !ack.reason_codes.iter().any(|r| r.is_error()) => {
                    if !subscribed {
                        rec.push(Op::Subscriber {
                            client: name.clone(),
                            topic: TOPIC.into(),
                            qos: 1,
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
        let mut last_ping = Instant::now();
        loop {
            if stop.load(Ordering::Acquire) {
                let _ = c.send(&Packet::Disconnect(Default::default())).await;
                break;
            }
            if last_ping.elapsed() > Duration::from_secs(15) {
                last_ping = Instant::now();
                if c.send(&Packet::PingReq).await.is_err() {
                    break;
                }
            }
            match c.recv_within(Duration::from_millis(500)).await {
                Ok(Some(Packet::Publish(p))) => {
                    let text = String::from_utf8_lossy(&p.payload);
                    if let Some((publisher, seq)) = text.rsplit_once(':') {
                        rec.push(Op::Receive {
                            client: name.clone(),
                            node: node as u64,
                            topic: p.topic.clone(),
                            publisher: publisher.to_owned(),
                            seq: seq.parse().unwrap_or(0),
                            qos: p.qos as u8,
                            at: rec.now(),
                        });
                    }
                    if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                        if c.send(&Packet::PubAck(Ack::new(id))).await.is_err() {
                            break;
                        }
                    }
                }
                Ok(Some(Packet::Disconnect(_))) | Ok(None) => break,
                Ok(Some(_)) => {}
                Err(e) if e.to_string().starts_with("no packet within") => {}
                Err(_) => break,
            }
        }
        rec.push(Op::Session {
            client: name.clone(),
            node: node as u64,
            from,
            until: Some(rec.now()),
        });
        if rng.below(3) == 0 {
            node = 1 + rng.below(nodes);
        }
    }
}
