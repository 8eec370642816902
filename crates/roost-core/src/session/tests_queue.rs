//! The offline / behind-the-window queue: its bounds by count and bytes under each
//! `DropPolicy`, message expiry while queued or on delivery, and `has_window`. Time is
//! `t0 + n seconds` from one `t0`; nothing sleeps.

#![allow(clippy::unwrap_used)]

use super::test_support::*;
use super::*;
use std::time::Duration;
use test_case::test_case;

// ---------------------------------------------------------------------------------------------
// Queue bounds
// ---------------------------------------------------------------------------------------------

/// Issue 7 item 16: QoS 0 to a connected client that does not read bypasses the window; its
/// outbox is bounded by bytes as well as by count, and taking the outbox frees the bytes.
/// Each message is topic "t" + a 1-byte payload = 2 bytes: 7 bytes hold three.
#[test]
fn item16_qos0_outbox_is_bounded_by_bytes() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_queued_messages: 1000,
        max_queued_bytes: 7,
        ..SessionLimits::default()
    });
    s.connect(v5(100), t0);
    let got: Vec<_> = ["1", "2", "3", "4", "5"]
        .iter()
        .map(|p| deliver(&mut s, &msg("t", p), QoS::AtMostOnce, t0))
        .collect();
    assert_eq!(
        got,
        [
            Delivered::Sent,
            Delivered::Sent,
            Delivered::Sent,
            Delivered::Dropped,
            Delivered::Dropped
        ]
    );
    assert_eq!(s.take_drops().queue_full, 2);
    assert_eq!(take(&mut s).len(), 3);
    // Taken by the connection: room again.
    assert_eq!(
        deliver(&mut s, &msg("t", "6"), QoS::AtMostOnce, t0),
        Delivered::Sent
    );
}

/// Five messages into an offline session whose queue holds three.
#[test_case(DropPolicy::Oldest, 3, 1000 => (vec!["3", "4", "5"], 2) ; "oldest by count keeps the newest")]
#[test_case(DropPolicy::Newest, 3, 1000 => (vec!["1", "2", "3"], 2) ; "newest by count keeps the oldest")]
// Each message is topic "t" + a 1-byte payload = 2 bytes: 7 bytes hold three.
#[test_case(DropPolicy::Oldest, 1000, 7 => (vec!["3", "4", "5"], 2) ; "oldest by bytes keeps the newest")]
#[test_case(DropPolicy::Newest, 1000, 7 => (vec!["1", "2", "3"], 2) ; "newest by bytes keeps the oldest")]
#[test_case(DropPolicy::Oldest, 1000, 10 => (vec!["1", "2", "3", "4", "5"], 0) ; "exactly at the byte bound")]
fn queue_bounds(
    drop_policy: DropPolicy,
    max_queued_messages: usize,
    max_queued_bytes: usize,
) -> (Vec<&'static str>, u64) {
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_queued_messages,
        max_queued_bytes,
        drop_policy,
        ..SessionLimits::default()
    });
    let payloads = ["1", "2", "3", "4", "5"];

    for p in payloads {
        let r = deliver(&mut s, &msg("t", p), QoS::AtLeastOnce, t0);
        // Oldest always accepts the newcomer; Newest refuses it when full.
        assert_ne!(r, Delivered::Sent);
    }

    assert_eq!(
        s.queued_bytes,
        s.queue.iter().map(|p| p.msg.size()).sum::<usize>()
    );
    // The node-wide totals hold exactly this session's queue (it is their only session).
    let totals = s.limits.queue_totals.clone();
    assert_eq!(
        (totals.messages(), totals.bytes()),
        (s.queue.len() as u64, s.queued_bytes as u64)
    );
    let drops = s.take_drops();
    assert_eq!(
        drops,
        Drops {
            queue_full: drops.queue_full,
            ..no_drops()
        }
    );
    s.connect(v5(100), secs(t0, 1));
    let mut kept = Vec::new();
    for (i, o) in take(&mut s).into_iter().enumerate() {
        let Outbound::Publish(p) = o else {
            panic!("not a publish: {o:?}")
        };
        assert_eq!(p.packet_id, Some(pid(i as u16 + 1)));
        assert!(!p.dup);
        let idx = payloads
            .iter()
            .position(|x| x.as_bytes() == p.msg.payload)
            .unwrap();
        kept.push(payloads[idx]);
    }
    assert_eq!(s.queued_bytes, 0);
    assert_eq!((totals.messages(), totals.bytes()), (0, 0));
    (kept, drops.queue_full)
}

/// The queue totals every session of a node shares (`roost_session_queue_messages` /
/// `_bytes`) follow each way into and out of a queue, and are back at 0 once nothing is
/// queued: sent after a reconnect or an acknowledgement, dropped for the bound, taken for a
/// shared group, exported to another node, ended, or the session dropped. Each message is
/// its topic plus a 1-byte payload: "t" 2 bytes, "tt" 3.
#[test]
fn queue_totals_follow_every_way_in_and_out_and_drain_to_zero() {
    let t0 = Instant::now();
    let limits = SessionLimits {
        max_queued_messages: 3,
        drop_policy: DropPolicy::Oldest,
        ..SessionLimits::default()
    };
    let totals = Arc::clone(&limits.queue_totals);
    let held = || (totals.messages(), totals.bytes());
    let mut a = session(limits.clone());
    let mut b = Session::new(Arc::from("client-2"), limits.clone());

    // Offline: QoS 1 is queued, QoS 0 is not kept.
    deliver(&mut a, &msg("t", "1"), QoS::AtLeastOnce, t0);
    deliver(&mut a, &msg("t", "2"), QoS::AtMostOnce, t0);
    deliver(&mut b, &msg("tt", "3"), QoS::AtLeastOnce, t0);
    assert_eq!(held(), (2, 5));
    // Past a's bound of 3 the oldest go: a holds 3 × 2 bytes.
    for p in ["4", "5", "6"] {
        deliver(&mut a, &msg("t", p), QoS::AtLeastOnce, t0);
    }
    assert_eq!(a.take_drops().queue_full, 1);
    assert_eq!(held(), (4, 9));

    // Taken for another member of a shared group.
    deliver_shared(&mut b, &msg("t", "7"), QoS::AtLeastOnce, "$share/g/t", t0);
    assert_eq!(held(), (5, 11));
    assert_eq!(b.take_shared_queued().len(), 1);
    assert_eq!(held(), (4, 9));

    // Exported: out of this node; imported: in again; the copy dropped: out.
    let image = b.export();
    assert_eq!(held(), (3, 6));
    let copy = Session::import(Arc::from("client-2"), limits.clone(), image);
    assert_eq!(held(), (4, 9));
    drop(copy);
    assert_eq!(held(), (3, 6));

    // Reconnected with a window of 1: one goes out, two wait; each PUBACK sends the next.
    a.connect(v5(1), secs(t0, 1));
    assert_eq!(held(), (2, 4));
    for left in [(1, 2), (0, 0)] {
        let [Outbound::Publish(p)] = &take(&mut a)[..] else {
            panic!("one PUBLISH expected");
        };
        a.handle_puback(p.packet_id.unwrap(), t0).unwrap();
        assert_eq!(held(), left);
    }

    // Ended, and dropped, with messages queued: nothing is left counted.
    a.disconnect();
    deliver(&mut a, &msg("t", "8"), QoS::AtLeastOnce, t0);
    deliver(&mut b, &msg("t", "9"), QoS::AtLeastOnce, t0);
    assert_eq!(held(), (2, 4));
    a.end();
    assert_eq!(held(), (1, 2));
    drop(b);
    assert_eq!(held(), (0, 0));
}

#[test]
fn newest_policy_reports_the_refused_message_as_dropped() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_queued_messages: 1,
        drop_policy: DropPolicy::Newest,
        ..SessionLimits::default()
    });
    assert_eq!(
        deliver(&mut s, &msg("t", "1"), QoS::AtLeastOnce, t0),
        Delivered::Queued
    );
    assert_eq!(
        deliver(&mut s, &msg("t", "2"), QoS::AtLeastOnce, t0),
        Delivered::Dropped
    );
    assert_eq!(
        s.take_drops(),
        Drops {
            queue_full: 1,
            ..no_drops()
        }
    );
}

#[test]
fn oldest_policy_evicts_as_many_as_needed_for_a_big_message() {
    let t0 = Instant::now();
    // 30 bytes: three 10-byte messages fill it; a 25-byte one needs all three gone.
    let mut s = session(SessionLimits {
        max_queued_bytes: 30,
        drop_policy: DropPolicy::Oldest,
        ..SessionLimits::default()
    });
    for p in ["111111111", "222222222", "333333333"] {
        assert_eq!(
            deliver(&mut s, &msg("t", p), QoS::AtLeastOnce, t0),
            Delivered::Queued
        );
    }
    let big = msg("t", &"x".repeat(24));

    assert_eq!(
        deliver(&mut s, &big, QoS::AtLeastOnce, t0),
        Delivered::Queued
    );

    assert_eq!(s.queued_len(), 1);
    assert_eq!(s.queued_bytes, 25);
    assert_eq!(
        s.take_drops(),
        Drops {
            queue_full: 3,
            ..no_drops()
        }
    );
    s.connect(v5(10), t0);
    assert_eq!(take(&mut s), vec![q1(&big, 1)]);
}

#[test_case(DropPolicy::Oldest ; "oldest")]
#[test_case(DropPolicy::Newest ; "newest")]
fn a_message_larger_than_max_queued_bytes_is_dropped_and_evicts_nothing(policy: DropPolicy) {
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_queued_bytes: 10,
        drop_policy: policy,
        ..SessionLimits::default()
    });
    let small = msg("t", "1");
    deliver(&mut s, &small, QoS::AtLeastOnce, t0);

    let r = deliver(&mut s, &msg("t", "0123456789"), QoS::AtLeastOnce, t0);

    assert_eq!(r, Delivered::Dropped);
    assert_eq!(
        s.take_drops(),
        Drops {
            queue_full: 1,
            ..no_drops()
        }
    );
    assert_eq!(s.queued_bytes, 2);
    s.connect(v5(10), t0);
    assert_eq!(take(&mut s), vec![q1(&small, 1)]);
}

#[test]
fn a_connected_session_with_window_sends_even_oversized_messages() {
    // The queue bounds are for waiting messages; one that goes straight out is not queued.
    let t0 = Instant::now();
    let mut s = session(SessionLimits {
        max_queued_bytes: 4,
        ..SessionLimits::default()
    });
    s.connect(v5(10), t0);
    let m = msg("t", "0123456789");

    assert_eq!(deliver(&mut s, &m, QoS::AtLeastOnce, t0), Delivered::Sent);
    assert_eq!(take(&mut s), vec![q1(&m, 1)]);
    assert_eq!(s.take_drops(), no_drops());
}

// ---------------------------------------------------------------------------------------------
// Message expiry
// ---------------------------------------------------------------------------------------------

/// A message expiring at t0+5s, delivered at t0+`at`s.
#[test_case(4 => Delivered::Sent ; "before expiry")]
#[test_case(5 => Delivered::Dropped ; "exactly at expiry")]
#[test_case(6 => Delivered::Dropped ; "after expiry")]
fn expiry_on_deliver(at: u64) -> Delivered {
    let t0 = Instant::now();
    let mut s = connected(10, t0);
    let m = msg_expiring("a", "x", secs(t0, 5));

    let r = deliver(&mut s, &m, QoS::AtLeastOnce, secs(t0, at));

    let expected_drops = Drops {
        expired: u64::from(r == Delivered::Dropped),
        ..no_drops()
    };
    assert_eq!(s.take_drops(), expected_drops);
    if r == Delivered::Dropped {
        assert_eq!(take(&mut s), vec![]);
        assert_eq!(s.inflight_len(), 0);
    } else {
        assert_eq!(take(&mut s), vec![q1(&m, 1)]);
    }
    r
}

#[test]
fn expired_qos0_is_dropped_as_expired_even_offline() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    let m = msg_expiring("a", "x", t0);

    assert_eq!(deliver(&mut s, &m, QoS::AtMostOnce, t0), Delivered::Dropped);
    assert_eq!(
        s.take_drops(),
        Drops {
            expired: 1,
            ..no_drops()
        }
    );
}

#[test]
fn message_that_expires_while_queued_offline_is_dropped_on_connect() {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    let doomed = msg_expiring("a", "doomed", secs(t0, 10));
    let kept = msg_expiring("a", "kept", secs(t0, 60));
    let forever = msg("a", "forever");
    for m in [&doomed, &kept, &forever] {
        assert_eq!(deliver(&mut s, m, QoS::AtLeastOnce, t0), Delivered::Queued);
    }

    s.connect(v5(10), secs(t0, 10));

    // The expired one used no packet id.
    assert_eq!(take(&mut s), vec![q1(&kept, 1), q1(&forever, 2)]);
    assert_eq!(
        s.take_drops(),
        Drops {
            expired: 1,
            ..no_drops()
        }
    );
    assert_eq!((s.queued_len(), s.queued_bytes), (0, 0));
}

#[test]
fn message_that_expires_while_queued_behind_the_window_is_dropped_on_pump() {
    let t0 = Instant::now();
    let mut s = connected(1, t0);
    let first = msg("a", "1");
    let doomed = msg_expiring("a", "2", secs(t0, 3));
    let last = msg("a", "3");
    deliver(&mut s, &first, QoS::AtLeastOnce, t0);
    deliver(&mut s, &doomed, QoS::AtLeastOnce, t0);
    deliver(&mut s, &last, QoS::AtLeastOnce, t0);
    assert_eq!(take(&mut s), vec![q1(&first, 1)]);

    s.handle_puback(pid(1), secs(t0, 5)).unwrap();

    assert_eq!(take(&mut s), vec![q1(&last, 2)]);
    assert_eq!(
        s.take_drops(),
        Drops {
            expired: 1,
            ..no_drops()
        }
    );
    assert_eq!((s.queued_len(), s.queued_bytes), (0, 0));
}

/// Expiry at t0+10s, asked at t0+`ms` milliseconds.
#[test_case(0 => Some(10) ; "whole interval left")]
#[test_case(2_500 => Some(8) ; "7.5 s rounds up to 8")]
#[test_case(9_999 => Some(1) ; "1 ms rounds up to 1")]
#[test_case(9_000 => Some(1) ; "exactly 1 s")]
#[test_case(10_000 => Some(0) ; "at expiry")]
#[test_case(11_000 => Some(0) ; "past expiry saturates at 0")]
fn remaining_expiry_rounds_up(ms: u64) -> Option<u32> {
    let t0 = Instant::now();
    let m = msg_expiring("a", "x", secs(t0, 10));
    m.remaining_expiry(t0 + Duration::from_millis(ms))
}

#[test]
fn remaining_expiry_is_none_without_an_expiry() {
    let t0 = Instant::now();
    assert_eq!(msg("a", "x").remaining_expiry(t0), None);
}

// ---------------------------------------------------------------------------------------------
// has_window
// ---------------------------------------------------------------------------------------------

/// (connected, client receive maximum, QoS 1 messages delivered) -> has_window.
#[test_case(false, 10, 0 => false ; "offline")]
#[test_case(true, 10, 0 => true ; "connected and empty")]
#[test_case(true, 2, 1 => true ; "room left")]
#[test_case(true, 2, 2 => false ; "window full")]
#[test_case(true, 2, 3 => false ; "window full and queue non-empty")]
fn has_window(connect: bool, receive_maximum: u16, delivered: usize) -> bool {
    let t0 = Instant::now();
    let mut s = session(SessionLimits::default());
    if connect {
        s.connect(v5(receive_maximum), t0);
    }
    for _ in 0..delivered {
        deliver(&mut s, &msg("a", "x"), QoS::AtLeastOnce, t0);
    }
    // QoS 0 traffic never affects it.
    if connect {
        deliver(&mut s, &msg("a", "0"), QoS::AtMostOnce, t0);
    }
    s.has_window()
}

#[test]
fn has_window_follows_acks_and_disconnects() {
    let t0 = Instant::now();
    let mut s = connected(1, t0);
    deliver(&mut s, &msg("a", "1"), QoS::AtLeastOnce, t0);
    assert!(!s.has_window());
    s.handle_puback(pid(1), t0).unwrap();
    assert!(s.has_window());
    s.disconnect();
    assert!(!s.has_window());
    s.connect(v5(1), t0);
    assert!(s.has_window());
}

#[test]
fn has_window_is_false_while_anything_is_queued() {
    // Even with free slots, queued messages go first: a new one must not overtake them.
    let t0 = Instant::now();
    let mut s = connected(3, t0);
    s.queue.push_back(Pending {
        msg: msg("a", "1"),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        shared: None,
    });
    assert_eq!(s.inflight_len(), 0);
    assert!(!s.has_window());
}
