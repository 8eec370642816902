//! The `will` workload: will clients `will-N` (two per node) connect again and again, each
//! connection to a random node with a Last Will (QoS 1, topic `chaos/w/will-N`, payload
//! `will-N:INCARNATION`, Will Delay Interval 0, clean start, session expiry 0), hold it for a
//! while and then end it in a way the client chooses:
//!
//! | ending | how | the will |
//! |---|---|---|
//! | `drop` | the socket is closed, no DISCONNECT | due ([MQTT-3.1.2-8]) |
//! | `normal` | DISCONNECT 0x00, then wait for the broker to close | discarded ([MQTT-3.1.2-10], [MQTT-3.14.4-3]) |
//! | `with_will` | v5 DISCONNECT 0x04, then wait for the broker to close | due (MQTT 5.0 §3.14.2.1) |
//!
//! Each ending is recorded (`ending`) with its kind and time, as are the ones the client did
//! not choose (`refused`, `broker`, `unknown`: see [`EndKind`]). One time in four the next
//! connection opens at once, so it races the broker's handling of the last one's end (a
//! takeover of a clean session, when the old node has not seen the close yet); otherwise
//! after 200-700 ms.
//!
//! Watchers `watch-N` (one per node, always on node N, persistent sessions) subscribe to
//! `chaos/w/#` at QoS 1 and record every will they receive (`will`), with its DUP flag.

use super::{Recorder, Stops, Targets};
use crate::history::{EndKind, Op};
use crate::rng::Rng;
use crate::workload::Liveness;
use roost_codec::{Ack, Disconnect, LastWill, Packet, Protocol, QoS, ReasonCode};
use roost_testkit::RawClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the watchers subscribe to.
pub(super) const WATCH: &str = "chaos/w/#";
/// Will clients per node.
pub(super) const PER_NODE: usize = 2;
/// How long a will client holds a connection before ending it: 200 ms plus up to this.
const HOLD_MORE_MS: usize = 1300;
/// How long a client waits for the broker to close after its DISCONNECT.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

fn will_topic(client: &str) -> String {
    format!("chaos/w/{client}")
}

/// The CONNECT of connection `incarnation` of `client`: a clean start that ends with the
/// connection (session expiry 0), carrying a will due at once (Will Delay Interval 0).
fn will_connect(client: &str, incarnation: u64) -> roost_codec::Connect {
    let mut c = roost_testkit::connect_packet(Protocol::V5, client, true);
    let mut will = LastWill {
        topic: will_topic(client),
        payload: format!("{client}:{incarnation}").into_bytes().into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    will.properties.will_delay_interval = Some(0);
    c.will = Some(will);
    c
}

/// How a live connection is to be ended, drawn from the seed: drop 45 %, normal 35 %,
/// with-will 20 %.
fn pick_ending(rng: &mut Rng) -> EndKind {
    match rng.below(20) {
        0..=8 => EndKind::Drop,
        9..=15 => EndKind::Normal,
        _ => EndKind::WithWill,
    }
}

/// Will client `will-{id}`: connects, holds, ends, until the publishers stop.
pub(super) async fn will_client(
    id: usize,
    targets: Targets,
    rec: Recorder,
    stops: Stops,
    mut rng: Rng,
) {
    let name = format!("will-{id}");
    let nodes = targets.len();
    let stop = stops.publishers;
    let mut incarnation = 0u64;
    while !stop.load(Ordering::Acquire) {
        let node = 1 + rng.below(nodes);
        let addr = targets.addr(node);
        let open =
            tokio::time::timeout(Duration::from_secs(2), RawClient::open(addr, Protocol::V5));
        let Ok(Ok(mut c)) = open.await else {
            // Nothing was sent: no will can exist.
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        incarnation += 1;
        let sent = rec.now();
        let ending = |kind, from, at| Op::Ending {
            client: name.clone(),
            node: node as u64,
            incarnation,
            kind,
            from,
            at,
        };
        // A takeover from an unreachable owner waits for its lease: allow for it.
        let ack = tokio::time::timeout(
            Duration::from_secs(15),
            c.handshake(will_connect(&name, incarnation)),
        )
        .await;
        let ack = match ack {
            Ok(Ok(a)) => a,
            _ => {
                rec.push(ending(EndKind::Unknown, sent, rec.now()));
                drop(c);
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        if ack.reason_code != ReasonCode::SUCCESS {
            rec.push(ending(EndKind::Refused, sent, rec.now()));
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let from = rec.now();
        let hold = Duration::from_millis(200 + rng.below(HOLD_MORE_MS) as u64);
        let want = pick_ending(&mut rng);
        let (kind, at) = match hold_then_end(&mut c, hold, want, &rec, &stop).await {
            Some(at) => (want, at),
            None => (EndKind::Broker, rec.now()),
        };
        drop(c);
        rec.push(ending(kind, from, at));
        rec.push(Op::Session {
            client: name.clone(),
            node: node as u64,
            from,
            until: Some(at),
        });
        if rng.below(4) != 0 {
            tokio::time::sleep(Duration::from_millis(200 + rng.below(500) as u64)).await;
        }
    }
}

/// Holds the connection for `hold` (or until `stop`), then ends it as `kind` says. Returns when
/// the client ended it, or `None` when the broker or the network ended it first.
async fn hold_then_end(
    c: &mut RawClient,
    hold: Duration,
    kind: EndKind,
    rec: &Recorder,
    stop: &AtomicBool,
) -> Option<u64> {
    let until = tokio::time::Instant::now() + hold;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || stop.load(Ordering::Acquire) {
            break;
        }
        match c.recv_within(left.min(Duration::from_millis(200))).await {
            Ok(Some(Packet::Disconnect(_))) | Ok(None) => return None,
            Ok(Some(_)) => {}
            Err(e) if e.to_string().starts_with("no packet within") => {}
            Err(_) => return None,
        }
    }
    let at = rec.now();
    let reason = match kind {
        EndKind::Normal => ReasonCode::NORMAL_DISCONNECTION,
        EndKind::WithWill => ReasonCode::DISCONNECT_WITH_WILL,
        // The caller drops the socket: no DISCONNECT.
        _ => return Some(at),
    };
    let d = Disconnect {
        reason_code: reason,
        properties: Default::default(),
    };
    if c.send(&Packet::Disconnect(d)).await.is_err() {
        return None;
    }
    // The broker closes the connection after a DISCONNECT ([MQTT-3.14.4-1]); wait for it, so
    // the next connection does not race this one's end.
    let deadline = Instant::now() + CLOSE_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match c.recv_within(left).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    Some(at)
}

/// Watcher `watch-{home}`: a persistent session on node `home` subscribed to [`WATCH`] at QoS 1,
/// recording every will it receives, until the receivers stop. When its session is found gone
/// on a reconnect, its subscription interval ends where the last connection was last served,
/// and a new one starts.
pub(super) async fn watcher(home: usize, targets: Targets, rec: Recorder, stops: Stops) {
    let name = format!("watch-{home}");
    let stop = stops.receivers;
    let mut subscribed_from: Option<u64> = None;
    let mut last_alive = 0u64;
    while !stop.load(Ordering::Acquire) {
        let Ok((mut c, present)) = super::connect(&targets, home, &name, true).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let from = rec.now();
        if subscribed_from.is_none() || !present {
            if let Some(since) = subscribed_from.take() {
                eprintln!("{name}: session gone on reconnect; subscribing again");
                rec.push(Op::Subscriber {
                    client: name.clone(),
                    topic: WATCH.to_owned(),
                    qos: 1,
                    from: since,
                    until: Some(last_alive),
                });
            }
            match c.subscribe(WATCH, QoS::AtLeastOnce).await {
                Ok((ack, _)) if !ack.reason_codes.iter().any(|r| r.is_error()) => {
                    subscribed_from = Some(rec.now());
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            }
        }
        last_alive = watch(&mut c, &name, home, from, &rec, &stop).await;
    }
    if let Some(since) = subscribed_from {
        rec.push(Op::Subscriber {
            client: name,
            topic: WATCH.to_owned(),
            qos: 1,
            from: since,
            until: None,
        });
    }
}

/// Reads one watcher connection until it ends or `stop`, recording wills; returns the last
/// time the broker served it, and records the connection as a `session` live until then (a
/// PINGREQ goes out after every idle second, as the queue receivers do).
async fn watch(
    c: &mut RawClient,
    name: &str,
    node: usize,
    from: u64,
    rec: &Recorder,
    stop: &Arc<AtomicBool>,
) -> u64 {
    let mut live = Liveness::new(rec, stop, from);
    while let Some(packet) = live.next(c).await {
        let sent = match packet {
            Packet::Publish(p) => {
                let text = String::from_utf8_lossy(&p.payload);
                let (of, incarnation) = match text.rsplit_once(':') {
                    Some((of, n)) => (of.to_owned(), n.parse().unwrap_or(0)),
                    None => (text.into_owned(), 0),
                };
                rec.push(Op::Will {
                    client: name.to_owned(),
                    node: node as u64,
                    of,
                    incarnation,
                    dup: p.dup,
                    at: rec.now(),
                });
                match p.packet_id {
                    Some(id) if p.qos == QoS::AtLeastOnce => {
                        c.send(&Packet::PubAck(Ack::new(id))).await
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    rec.push(Op::Session {
        client: name.to_owned(),
        node: node as u64,
        from,
        until: Some(live.alive),
    });
    live.alive
}
