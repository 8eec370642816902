//! Property test of the state machine: random deliveries, acks, abandons, disconnects and
//! reconnects keep packet ids unique, respect the window and queue bounds, and account for
//! every QoS 1/2 message (completed, abandoned, held or counted as dropped).

#![allow(clippy::unwrap_used)]

use super::test_support::*;
use super::*;
use proptest::prelude::*;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Property test: random flows keep ids unique, respect the window and lose nothing silently
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Deliver {
        qos: u8,
        shared: bool,
    },
    /// Ack the in-flight entry at `pick % len` (or a random id when `stray`).
    PubAck {
        pick: usize,
        stray: bool,
    },
    PubRec {
        pick: usize,
        stray: bool,
        error: bool,
    },
    PubComp {
        pick: usize,
        stray: bool,
    },
    Abandon {
        pick: usize,
    },
    TakeOutbox,
    Disconnect,
    Connect,
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, any::<bool>()).prop_map(|(qos, shared)| Op::Deliver { qos, shared }),
        3 => (any::<usize>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, stray)| Op::PubAck { pick, stray }),
        3 => (any::<usize>(), prop::bool::weighted(0.1), prop::bool::weighted(0.2))
            .prop_map(|(pick, stray, error)| Op::PubRec { pick, stray, error }),
        3 => (any::<usize>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, stray)| Op::PubComp { pick, stray }),
        1 => any::<usize>().prop_map(|pick| Op::Abandon { pick }),
        2 => Just(Op::TakeOutbox),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Connect),
        1 => Just(Op::Tick),
    ]
}

/// Picks an in-flight id (or a stray one) for an ack.
fn pick_id(s: &Session, pick: usize, stray: bool) -> Option<PacketId> {
    if stray {
        return PacketId::new(u16::try_from(pick % 65_535).unwrap() + 1);
    }
    if s.inflight.is_empty() {
        return None;
    }
    Some(s.inflight[pick % s.inflight.len()].id)
}

proptest! {
    #[test]
    fn random_flows_keep_ids_unique_window_bounded_and_messages_accounted(
        receive_maximum in 1u16..6,
        max_inflight in 1u16..6,
        max_queued_messages in 1usize..6,
        oldest in any::<bool>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let t0 = Instant::now();
        let mut s = session(SessionLimits {
            max_inflight,
            max_queued_messages,
            drop_policy: if oldest { DropPolicy::Oldest } else { DropPolicy::Newest },
            ..SessionLimits::default()
        });
        let window = usize::from(receive_maximum.min(max_inflight));
        let mut now = t0;
        s.connect(v5(receive_maximum), now);

        // Conservation bookkeeping for QoS 1/2 deliveries.
        let mut delivered = 0u64; // deliver() calls with QoS > 0
        let mut completed = 0u64; // PUBACK, PUBCOMP, PUBREC with an error: Ok(())
        let mut abandoned = 0u64; // abandon() that removed an in-flight entry
        let mut queue_full = 0u64; // of QoS > 0 messages
        let mut seq = 0u32; // makes every payload distinct

        for op in ops {
            let before = s.inflight_len();
            let drops_before = s.drops;
            match op {
                Op::Deliver { qos, shared } => {
                    seq += 1;
                    let m = msg("t", &seq.to_string());
                    let qos = QoS::from_u8(qos).unwrap();
                    let share = shared.then(|| filter("$share/g/t"));
                    let r = s.deliver(m, qos, false, Vec::new(), share, now);
                    if qos == QoS::AtMostOnce {
                        // QoS 0 never touches the window or the queue.
                        prop_assert_eq!(s.inflight_len(), before);
                        if !s.is_connected() {
                            prop_assert_eq!(r, Delivered::Dropped);
                        }
                    } else {
                        delivered += 1;
                        queue_full += s.drops.queue_full - drops_before.queue_full;
                        if r == Delivered::Sent {
                            prop_assert_eq!(s.inflight_len(), before + 1);
                        }
                    }
                }
                Op::PubAck { pick, stray } => {
                    if let Some(id) = pick_id(&s, pick, stray) {
                        if s.handle_puback(id, now).is_ok() {
                            completed += 1;
                        }
                    }
                }
                Op::PubRec { pick, stray, error } => {
                    if let Some(id) = pick_id(&s, pick, stray) {
                        let reason = if error {
                            ReasonCode::UNSPECIFIED_ERROR
                        } else {
                            ReasonCode::SUCCESS
                        };
                        // An error PUBREC ends only a flow still at the PUBLISH stage; a
                        // repeated PUBREC at the PUBREL stage just gets the PUBREL again.
                        let was_published = s
                            .inflight
                            .iter()
                            .any(|f| f.id == id && f.state == InflightState::Published);
                        if s.handle_pubrec(id, reason, now).is_ok() && error && was_published {
                            completed += 1;
                        }
                    }
                }
                Op::PubComp { pick, stray } => {
                    if let Some(id) = pick_id(&s, pick, stray) {
                        if s.handle_pubcomp(id, now).is_ok() {
                            completed += 1;
                        }
                    }
                }
                Op::Abandon { pick } => {
                    // The freed slot may be refilled from the queue at once, so count what
                    // left the session as a whole.
                    let held_before = s.inflight_len() + s.queued_len();
                    let id = pick_id(&s, pick, false);
                    s.abandon(id, now);
                    abandoned += (held_before - s.inflight_len() - s.queued_len()) as u64;
                }
                Op::TakeOutbox => {
                    let out = take(&mut s);
                    // Every PUBLISH with an id names an entry in flight, at most once each.
                    let mut seen = HashSet::new();
                    for o in &out {
                        if let Outbound::Publish(p) = o {
                            prop_assert_eq!(p.packet_id.is_some(), p.qos != QoS::AtMostOnce);
                            if let Some(id) = p.packet_id {
                                prop_assert!(seen.insert(id), "{:?} twice in one outbox", id);
                            }
                        }
                    }
                }
                Op::Disconnect => s.disconnect(),
                Op::Connect => s.connect(v5(receive_maximum), now),
                Op::Tick => now += Duration::from_secs(1),
            }

            // Ids in flight are unique (and non-zero by construction of PacketId).
            let ids: HashSet<u16> = s.inflight.iter().map(|f| f.id.get()).collect();
            prop_assert_eq!(ids.len(), s.inflight_len(), "duplicate ids: {:?}", inflight_ids(&s));
            // The window is never exceeded.
            prop_assert!(s.inflight_len() <= window, "{} in flight > {}", s.inflight_len(), window);
            // A connected session leaves nothing queued while it has room.
            if s.is_connected() {
                prop_assert!(s.queued_len() == 0 || s.inflight_len() == window);
            }
            // Queue bounds and byte accounting.
            prop_assert!(s.queued_len() <= max_queued_messages);
            prop_assert_eq!(s.queued_bytes, s.queue.iter().map(|p| p.msg.size()).sum::<usize>());
            // The node-wide totals (this session is their only one) follow the queue.
            let totals = &s.limits.queue_totals;
            prop_assert_eq!(
                (totals.messages(), totals.bytes()),
                (s.queue.len() as u64, s.queued_bytes as u64)
            );
            // No expiry in this test, so nothing is dropped as expired.
            prop_assert_eq!(s.drops.expired, 0);
            // Conservation: every QoS 1/2 message is completed, abandoned, in flight, queued or
            // counted as dropped.
            let held = (s.inflight_len() + s.queued_len()) as u64;
            prop_assert_eq!(
                delivered,
                completed + abandoned + held + queue_full,
                "completed {} abandoned {} held {} queue_full {}",
                completed, abandoned, held, queue_full
            );
        }
    }
}
