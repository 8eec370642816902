//! Timer tests: keep-alive while attached, will delay and session expiry while detached.
//! Each drives `handle` / `detach` / `attach` at `t0 + n seconds` and asserts the exact
//! `poll_timeout` and `handle_timeout` outputs.

#![allow(clippy::unwrap_used)]

use super::test_support::*;
use super::*;
use crate::connect::ServerPolicy;
use roost_codec::LastWill;
use test_case::test_case;

#[test]
fn keep_alive_deadline_moves_with_every_packet() {
    let t0 = Instant::now();
    // keep-alive 10 s: the deadline is 1.5 × 10 s after the last packet ([MQTT-3.1.2-22]).
    let mut s = attached(Protocol::V5, t0);
    assert_eq!(s.poll_timeout(), Some(secs(t0, 15)));
    assert_eq!(s.handle(Packet::PingReq, secs(t0, 5)), Handled::Done);
    assert_eq!(s.poll_timeout(), Some(secs(t0, 20)));
    assert_eq!(s.handle_timeout(secs(t0, 19)), None);
    assert_eq!(s.handle_timeout(secs(t0, 20)), Some(Timeout::KeepAlive));
    assert_eq!(
        Close::keep_alive(),
        Close::error(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep_alive")
    );
}

#[test]
fn keep_alive_zero_arms_nothing() {
    let t0 = Instant::now();
    let c = Connect {
        keep_alive: 0,
        ..connect_packet(Protocol::V311, true, 0)
    };
    let mut s = attached_with(ServerPolicy::default(), &c, t0);
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_timeout(secs(t0, 100_000)), None);
}

#[test]
fn the_older_connect_and_disconnect_arm_nothing() {
    let t0 = Instant::now();
    let mut s = Session::new(Arc::from("c1"), SessionLimits::default());
    s.connect(ClientParams::v311(), t0);
    assert_eq!(s.poll_timeout(), None);
    s.disconnect();
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_timeout(secs(t0, 100_000)), None);
}

/// A persistent v5 session with `expiry`, attached at t0 and detached at t0 + 1 s with `will`.
fn detached(expiry: u32, will: Option<LastWill>) -> (Session, Detached, Instant) {
    let t0 = Instant::now();
    let mut s = attached_with(
        ServerPolicy::default(),
        &connect_packet(Protocol::V5, false, expiry),
        t0,
    );
    let d = s.detach(secs(t0, 1), will);
    (s, d, t0)
}

#[test]
fn expiry_zero_ends_with_the_connection_and_sends_the_will() {
    let (mut s, d, _) = detached(0, Some(will("w", Some(30))));
    assert_eq!(
        d,
        Detached {
            will_now: Some(will("w", Some(30))),
            orphans: vec![],
            ended: Some(Ended::default()),
        }
    );
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(take(&mut s), vec![]);
}

#[test]
fn will_without_delay_goes_now_and_the_session_waits_for_its_expiry() {
    let (mut s, d, t0) = detached(100, Some(will("w", None)));
    assert_eq!(
        d,
        Detached {
            will_now: Some(will("w", None)),
            ..Detached::default()
        }
    );
    assert_eq!(s.poll_timeout(), Some(secs(t0, 101)));
    assert_eq!(s.handle_timeout(secs(t0, 100)), None);
    assert_eq!(
        s.handle_timeout(secs(t0, 101)),
        Some(Timeout::Expired(Ended::default()))
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn delayed_will_fires_then_the_session_expires() {
    let (mut s, d, t0) = detached(100, Some(will("w", Some(10))));
    assert_eq!(d, Detached::default());
    assert_eq!(s.poll_timeout(), Some(secs(t0, 11)));
    assert_eq!(s.handle_timeout(secs(t0, 10)), None);
    assert_eq!(
        s.handle_timeout(secs(t0, 11)),
        Some(Timeout::Will(will("w", Some(10))))
    );
    assert_eq!(s.poll_timeout(), Some(secs(t0, 101)));
    assert_eq!(
        s.handle_timeout(secs(t0, 101)),
        Some(Timeout::Expired(Ended::default()))
    );
}

#[test]
fn will_delay_longer_than_expiry_goes_out_with_the_end() {
    // [MQTT-3.1.3-9] / §3.1.3.2.2: the will is sent when the session ends, if that is first.
    let (mut s, _, t0) = detached(100, Some(will("w", Some(500))));
    assert_eq!(s.poll_timeout(), Some(secs(t0, 101)));
    assert_eq!(
        s.handle_timeout(secs(t0, 101)),
        Some(Timeout::Expired(Ended {
            will: Some(will("w", Some(500))),
            ..Ended::default()
        }))
    );
}

#[test]
fn never_expiring_session_without_will_arms_nothing() {
    let (s, d, _) = detached(u32::MAX, None);
    assert_eq!(d, Detached::default());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn reattaching_in_time_cancels_the_will() {
    let (mut s, _, t0) = detached(100, Some(will("w", Some(10))));
    let n = negotiated(
        &connect_packet(Protocol::V5, false, 100),
        &ServerPolicy::default(),
    );
    assert_eq!(s.attach(&n, secs(t0, 5)), None);
    assert_eq!(s.poll_timeout(), Some(secs(t0, 20)));
    assert_eq!(s.handle_timeout(secs(t0, 11)), None);
}

#[test]
fn clean_start_ends_the_old_session_and_its_will_is_due() {
    let t0 = Instant::now();
    let c = Connect {
        properties: Properties {
            session_expiry_interval: Some(100),
            receive_maximum: Some(1),
            ..Properties::default()
        },
        ..connect_packet(Protocol::V5, false, 100)
    };
    let mut s = attached_with(ServerPolicy::default(), &c, t0);
    s.add_subscription(
        filter("$share/g/a"),
        Subscription {
            options: Default::default(),
            identifier: None,
        },
    );
    let (m1, m2) = (msg("a", "1"), msg("a", "2"));
    for m in [&m1, &m2] {
        s.deliver(
            m.clone(),
            QoS::AtLeastOnce,
            false,
            vec![],
            Some(filter("$share/g/a")),
            t0,
        );
    }
    let d = s.detach(secs(t0, 1), Some(will("w", Some(50))));
    // The queued shared message goes to another member at once; the one in flight stays.
    assert_eq!(
        d.orphans,
        vec![Orphan {
            filter: filter("$share/g/a"),
            msg: m2
        }]
    );
    let n = negotiated(
        &connect_packet(Protocol::V5, true, 0),
        &ServerPolicy::default(),
    );
    assert_eq!(
        s.attach(&n, secs(t0, 2)),
        Some(Ended {
            will: Some(will("w", Some(50))),
            orphans: vec![Orphan {
                filter: filter("$share/g/a"),
                msg: m1
            }],
            filters: vec![filter("$share/g/a")],
        })
    );
    assert_eq!(
        (s.inflight_len(), s.queued_len(), s.subscriptions().len()),
        (0, 0, 0)
    );
    assert_eq!(s.expiry_interval(), 0);
    assert_eq!(take(&mut s), vec![]);
}

#[test]
fn disconnect_packet_expiry_decides_at_detach() {
    let t0 = Instant::now();
    let mut s = attached_with(
        ServerPolicy::default(),
        &connect_packet(Protocol::V5, false, 100),
        t0,
    );
    let d = roost_codec::Disconnect {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    };
    assert!(matches!(
        s.handle(Packet::Disconnect(d), t0),
        Handled::Close(_)
    ));
    let out = s.detach(t0, None);
    assert_eq!(out.ended, Some(Ended::default()));
}

// (will delay, new connection started clean) -> will sent now
#[test_case(0, false => true; "no delay")]
#[test_case(10, true => true; "session ended by clean start")]
#[test_case(10, false => false; "session continued")]
fn will_of_a_taken_over_connection(delay: u32, clean: bool) -> bool {
    takeover_will(will("w", Some(delay)), clean).is_some()
}

#[test]
fn will_delay_reads_the_property() {
    assert_eq!(will_delay(&will("w", None)), 0);
    assert_eq!(will_delay(&will("w", Some(7))), 7);
}

use roost_codec::Connect;

/// Every connected client holds a `Session`: growth here is per-connection memory. 376 bytes
/// before timers and policy moved in; 408 with them; 416 with the QoS 0 outbox's byte count
/// (issue 7 item 16: a client that does not read is bounded by bytes); 424 with the pointer to
/// the node's queue totals in its limits (issue 10: `roost_session_queue_*` read at scrape
/// without walking the sessions) (x86_64 Linux).
#[cfg(target_pointer_width = "64")]
#[test]
fn session_stays_small() {
    assert!(std::mem::size_of::<Session>() <= 424);
    assert!(std::mem::size_of::<Handled>() <= 48);
}

#[test]
fn a_pending_will_moves_with_the_session_and_stops_its_timer() {
    // Will delay 30 s, expiry 100 s: detached at t0 + 1 s, the will is due at t0 + 31 s.
    let (mut s, _, t0) = detached(100, Some(will("w", Some(30))));
    assert_eq!(s.poll_timeout(), Some(secs(t0, 31)));
    // Handed over to another node: the will goes with the image, and only expiry is left here.
    assert_eq!(s.take_pending_will(), Some(will("w", Some(30))));
    assert_eq!(s.take_pending_will(), None);
    assert_eq!(s.poll_timeout(), Some(secs(t0, 101)));
}

#[test]
fn terminate_ends_the_session_and_returns_what_is_left() {
    let (mut s, _, _) = detached(100, Some(will("w", Some(30))));
    let ended = s.terminate();
    assert_eq!(
        ended,
        Ended {
            will: Some(will("w", Some(30))),
            orphans: vec![],
            filters: vec![],
        }
    );
    assert_eq!(s.poll_timeout(), None);
    assert!(s.subscriptions().is_empty());
}
