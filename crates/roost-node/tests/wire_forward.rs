//! Wire tests of messages forwarded between two nodes (issue 7, "Acknowledged means delivered"):
//! what a publisher's PUBACK/PUBREC promises when a subscriber is on the other node
//! (docs/architecture.md, "What an acknowledgement promises"), a cut-off peer
//! (docs/rfcs/0005), and backpressure from a slow subscriber on the other node.
//!
//! In its own test binary: it reads process-wide counters (`roost_session_queue_dropped_total`)
//! that other wire tests move on purpose.
#![allow(clippy::unwrap_used)]

use roost_codec::{Ack, Packet, Properties, Protocol, QoS, ReasonCode};
use roost_testkit::*;
use std::time::{Duration, Instant};

/// Two nodes (see [`two_nodes_with`]); panics when they do not start.
async fn two_nodes(
    proxy: bool,
    tweak: impl Fn(&mut roost_node::Config) + Copy + Send + 'static,
) -> (TestNode, TestNode, Option<Proxy>) {
    two_nodes_with(proxy, tweak).await.unwrap()
}

/// Publishes one QoS 1 or 2 message and returns its PUBACK/PUBREC reason code, `None` if the
/// connection closed without one. A QoS 2 flow that succeeded is completed (PUBREL/PUBCOMP).
async fn publish_reason(
    c: &mut RawClient,
    topic: &str,
    payload: &[u8],
    qos: QoS,
) -> Option<ReasonCode> {
    let id = c.next_packet_id();
    let p = publish_packet(topic, payload, qos, false, Some(id), Properties::default());
    c.send(&p).await.unwrap();
    match c.recv_within(Duration::from_secs(30)).await.unwrap() {
        Some(Packet::PubAck(a)) if qos == QoS::AtLeastOnce => {
            assert_eq!(a.packet_id, id);
            Some(a.reason_code)
        }
        Some(Packet::PubRec(r)) if qos == QoS::ExactlyOnce => {
            assert_eq!(r.packet_id, id);
            if !r.reason_code.is_error() {
                c.send(&Packet::PubRel(Ack::new(id))).await.unwrap();
                match c.recv().await.unwrap() {
                    Some(Packet::PubComp(_)) => {}
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
            Some(r.reason_code)
        }
        None => None,
        other => panic!("expected the acknowledgement of {qos:?}, got {other:?}"),
    }
}

/// Issue 7 item 3: a QoS 1/2 message that a peer with a subscriber did not accept is not
/// acknowledged as delivered. Node 2 holds a persistent subscriber and is stopped; node 1's
/// publishers hear v5 0x80 (PUBACK and PUBREC), and a v3.1.1 publisher (no failure code in its
/// protocol) has its connection closed without an acknowledgement, so it sends the message
/// again. Before the fix every one of them got 0x00 once the forward timeout ran out.
#[tokio::test]
async fn item3_message_a_peer_did_not_accept_is_not_acknowledged_as_delivered() {
    let (a, b, _) = two_nodes(false, |c| c.cluster.forward_timeout_ms = 1000).await;
    let (mut far, _) = connect_persistent(b.addr(), Protocol::V5, "far").await;
    far.subscribe("far/t", QoS::ExactlyOnce).await.unwrap();
    // Connected while the cluster has a quorum (a CONNECT needs one).
    let mut v5 = connect_clean(a.addr(), Protocol::V5, "pub5").await;
    let mut v3 = connect_clean(a.addr(), Protocol::V311, "pub3").await;
    assert_eq!(
        publish_reason(&mut v5, "far/t", b"warm", QoS::AtLeastOnce).await,
        Some(ReasonCode::SUCCESS),
        "node 2 is up: accepted"
    );
    drop(far);
    b.stop().await;

    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce] {
        assert_eq!(
            publish_reason(&mut v5, "far/t", b"lost?", qos).await,
            Some(ReasonCode::UNSPECIFIED_ERROR),
            "v5 {qos:?} to a stopped peer"
        );
    }
    assert_eq!(
        publish_reason(&mut v3, "far/t", b"lost?", QoS::AtLeastOnce).await,
        None,
        "v3.1.1: closed without PUBACK"
    );
    // A message with no subscriber on the stopped peer is still accepted.
    assert_eq!(
        publish_reason(&mut v5, "near/t", b"n", QoS::AtLeastOnce).await,
        Some(ReasonCode::NO_MATCHING_SUBSCRIBERS)
    );
    a.stop().await;
}

/// Issue 7 item 14: a peer cut off (it gets everything, nothing of it comes back) stalls a
/// publisher once, not per message. A v5 publisher sends 40 QoS 1 messages one after another
/// (each after the previous PUBACK) to a topic subscribed on the cut-off node, with a forward
/// timeout of 1 s: before the fix each waited the whole timeout (40 s); now, once the peer is
/// known unreachable, each is answered at once with 0x80 (docs/rfcs/0005). The deadline is a
/// quarter of N × timeout.
#[tokio::test]
async fn item14_cut_off_peer_does_not_stall_every_publish() {
    const N: u32 = 40;
    const TIMEOUT_MS: u64 = 1000;
    let (a, b, proxy) = two_nodes(true, |c| c.cluster.forward_timeout_ms = TIMEOUT_MS).await;
    let proxy = proxy.unwrap();
    let mut sub = connect_clean(b.addr(), Protocol::V5, "sub").await;
    sub.subscribe("cut/t", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(a.addr(), Protocol::V5, "pub").await;
    assert_eq!(
        publish_reason(&mut publ, "cut/t", b"warm", QoS::AtLeastOnce).await,
        Some(ReasonCode::SUCCESS)
    );
    assert_eq!(payloads(&[recv_publish(&mut sub).await]), ["warm"]);

    proxy.drop_replies(true);
    let deadline = Duration::from_millis(u64::from(N) * TIMEOUT_MS / 4);
    let started = Instant::now();
    let mut reasons = Vec::new();
    for i in 0..N {
        let r = tokio::time::timeout(
            deadline.saturating_sub(started.elapsed()),
            publish_reason(
                &mut publ,
                "cut/t",
                format!("m{i}").as_bytes(),
                QoS::AtLeastOnce,
            ),
        )
        .await;
        match r {
            Ok(r) => reasons.push(r),
            Err(_) => panic!(
                "{} of {N} publishes acknowledged within {deadline:?}: {reasons:?}",
                reasons.len()
            ),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(
        reasons,
        vec![Some(ReasonCode::UNSPECIFIED_ERROR); N as usize],
        "none of them was accepted by the cut-off peer"
    );
    eprintln!("{N} QoS 1 publishes during the cut took {elapsed:?}");
    proxy.drop_replies(false);
    a.stop().await;
    b.stop().await;
}

/// Issue 7 item 4: a slow subscriber on node 2 (queue of 10, one message in flight, it reads
/// slowly) and a fast QoS 1 publisher on node 1 with 20 messages in flight: every one of the 500
/// messages arrives, in order, and node 2's session queue drops nothing: the ForwardAck, which
/// the publisher's PUBACK waits for, is held until the subscriber has room. Before the fix
/// node 2 acknowledged at once and its queue overflowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item4_slow_subscriber_on_a_peer_slows_the_publisher_instead_of_dropping() {
    const N: u16 = 500;
    const WINDOW: usize = 20;
    let (a, b, _) = two_nodes(false, |c| {
        c.mqtt.max_queued_messages = 10;
        c.mqtt.backpressure_timeout_ms = 30_000;
        c.cluster.forward_timeout_ms = 30_000;
    })
    .await;
    let dropped_before = metric(&b, "roost_session_queue_dropped_total").await;
    let props = Properties {
        receive_maximum: Some(1),
        ..Properties::default()
    };
    let (mut sub, _) = connect_with(b.addr(), connect_v5("slow", true, props)).await;
    sub.subscribe("bp/t", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(a.addr(), Protocol::V5, "fast").await;

    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < usize::from(N) {
            // Nothing for 5 s: the rest was dropped.
            let p = match sub.recv_within(Duration::from_secs(5)).await {
                Ok(Some(Packet::Publish(p))) => p,
                Ok(other) => panic!("expected PUBLISH, got {other:?}"),
                Err(_) => break,
            };
            tokio::time::sleep(Duration::from_millis(1)).await;
            sub.send(&Packet::PubAck(Ack::new(p.packet_id.unwrap())))
                .await
                .unwrap();
            got.push(p);
        }
        (sub, got)
    });

    let mut in_flight = std::collections::VecDeque::new();
    let mut reasons = Vec::new();
    for i in 1..=N {
        if in_flight.len() == WINDOW {
            reasons.push(recv_puback(&mut publ, in_flight.pop_front().unwrap()).await);
        }
        let id = pid(i);
        let p = publish_packet(
            "bp/t",
            format!("m{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            Some(id),
            Properties::default(),
        );
        publ.send(&p).await.unwrap();
        in_flight.push_back(id);
    }
    while let Some(id) = in_flight.pop_front() {
        reasons.push(recv_puback(&mut publ, id).await);
    }
    assert_eq!(reasons, vec![ReasonCode::SUCCESS; usize::from(N)]);
    let (_sub, got) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the subscriber got every message")
        .unwrap();
    let want: Vec<String> = (1..=N).map(|i| format!("m{i}")).collect();
    assert_eq!(got.len(), want.len(), "messages the subscriber got");
    assert_eq!(payloads(&got), want);
    assert_eq!(
        metric(&b, "roost_session_queue_dropped_total").await,
        dropped_before,
        "node 2 dropped acknowledged messages"
    );
    a.stop().await;
    b.stop().await;
}

/// The next packet, which must be the PUBACK for `id`; returns its reason code.
async fn recv_puback(c: &mut RawClient, id: roost_codec::PacketId) -> ReasonCode {
    match c.recv_within(Duration::from_secs(60)).await.unwrap() {
        Some(Packet::PubAck(a)) => {
            assert_eq!(a.packet_id, id);
            a.reason_code
        }
        other => panic!("expected PUBACK {}, got {other:?}", id.get()),
    }
}

/// Not a test: the measurement behind docs/rfcs/0005. Publish throughput of one v5 QoS 1
/// publisher with 20 messages in flight (a typical client window) to a topic subscribed on a
/// cut-off peer, forward timeout 1 s, 200 messages; and the same with the peer healthy.
/// Prints the figures; asserts nothing. Run with
/// `cargo test -p roost-node --test wire_forward -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn measure_publish_throughput_during_a_cut() {
    const N: u16 = 200;
    const WINDOW: usize = 20;
    for cut in [false, true] {
        let (a, b, proxy) = two_nodes(true, |c| c.cluster.forward_timeout_ms = 1000).await;
        let proxy = proxy.unwrap();
        let mut sub = connect_clean(b.addr(), Protocol::V5, "sub").await;
        sub.subscribe("m/t", QoS::AtLeastOnce).await.unwrap();
        let reader = tokio::spawn(async move {
            // Keeps the subscriber's queue drained; what it gets is not counted.
            let _ = collect(&mut sub, Duration::from_secs(30)).await;
        });
        let mut publ = connect_clean(a.addr(), Protocol::V5, "pub").await;
        assert_eq!(
            publish_reason(&mut publ, "m/t", b"warm", QoS::AtLeastOnce).await,
            Some(ReasonCode::SUCCESS)
        );
        proxy.drop_replies(cut);
        let started = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        let mut reasons = std::collections::BTreeMap::<u8, usize>::new();
        for i in 1..=N {
            if in_flight.len() == WINDOW {
                let r = recv_puback(&mut publ, in_flight.pop_front().unwrap()).await;
                *reasons.entry(r.0).or_default() += 1;
            }
            let id = pid(i);
            let p = publish_packet(
                "m/t",
                b"x",
                QoS::AtLeastOnce,
                false,
                Some(id),
                Properties::default(),
            );
            publ.send(&p).await.unwrap();
            in_flight.push_back(id);
        }
        while let Some(id) = in_flight.pop_front() {
            let r = recv_puback(&mut publ, id).await;
            *reasons.entry(r.0).or_default() += 1;
        }
        let elapsed = started.elapsed();
        eprintln!(
            "cut={cut}: {N} QoS 1 publishes (window {WINDOW}) in {elapsed:?} = {:.0} msg/s; \
             reason codes {reasons:?}",
            f64::from(N) / elapsed.as_secs_f64()
        );
        reader.abort();
        proxy.drop_replies(false);
        a.stop().await;
        b.stop().await;
    }
}
