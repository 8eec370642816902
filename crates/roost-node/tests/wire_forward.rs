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

/// A QoS 1 subscriber of `topic` on `b` and a v5 publisher on `a`, with one message ("warm")
/// gone through, so the route and the forward stream are up.
async fn warm_pair(a: &TestNode, b: &TestNode, topic: &str) -> (RawClient, RawClient) {
    let mut sub = connect_clean(b.addr(), Protocol::V5, "sub").await;
    sub.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(a.addr(), Protocol::V5, "pub").await;
    assert_eq!(
        publish_reason(&mut publ, topic, b"warm", QoS::AtLeastOnce).await,
        Some(ReasonCode::SUCCESS)
    );
    assert_eq!(payloads(&[recv_publish(&mut sub).await]), ["warm"]);
    (sub, publ)
}

/// Sends QoS 1 message number `i` ("m{i}") to `topic` as packet `id`, without waiting for
/// its PUBACK.
async fn send_numbered(
    c: &mut RawClient,
    topic: &str,
    i: impl std::fmt::Display,
    id: roost_codec::PacketId,
) {
    let p = publish_packet(
        topic,
        format!("m{i}").as_bytes(),
        QoS::AtLeastOnce,
        false,
        Some(id),
        Properties::default(),
    );
    c.send(&p).await.unwrap();
}

/// Issue 7 item 3: a QoS 1/2 message that a peer with a subscriber did not accept is not
/// acknowledged as delivered. Node 2 holds a persistent subscriber and is stopped; node 1's
/// publishers hear v5 0x80 (PUBACK and PUBREC), and a v3.1.1 publisher (no failure code in its
/// protocol) has its connection closed without an acknowledgement, so it sends the message
/// again. Before the fix every one of them got 0x00 once the forward timeout ran out.
/// Node 2 stops without a drain (`drain_timeout_ms` 1: as if it crashed), so its subscriber's
/// session and route stay with it; a drained stop hands them to node 1 (`wire_drain`).
#[tokio::test]
async fn item3_message_a_peer_did_not_accept_is_not_acknowledged_as_delivered() {
    let (a, b, _) = two_nodes(false, |c| {
        c.cluster.forward_timeout_ms = 1000;
        c.cluster.drain_timeout_ms = 1;
    })
    .await;
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
    let (_sub, mut publ) = warm_pair(&a, &b, "cut/t").await;

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

/// Pipelined QoS 1 publishes to a topic subscribed only on a peer that stopped answering: each
/// is answered v5 0x80, in PUBLISH order, once its forward timeout runs out, and each counts
/// as a forward timeout. The wait has no task and no timer of its own (docs/performance.md,
/// "The forward path"): the connection's one timer carries the oldest held acknowledgement's
/// deadline, then the next one's, so none is left without an answer.
#[tokio::test]
async fn pipelined_publishes_to_a_silent_peer_each_time_out_in_order() {
    const TIMEOUT_MS: u64 = 500;
    let (a, b, proxy) = two_nodes(true, |c| c.cluster.forward_timeout_ms = TIMEOUT_MS).await;
    let proxy = proxy.unwrap();
    let (_sub, mut publ) = warm_pair(&a, &b, "quiet/t").await;

    let timeouts_before = metric(&a, "roost_cluster_forward_timeouts_total").await;
    proxy.drop_replies(true);
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = publ.next_packet_id();
        send_numbered(&mut publ, "quiet/t", i, id).await;
        ids.push(id);
    }
    let mut answers = Vec::new();
    for _ in 0..3 {
        match publ.recv_within(Duration::from_secs(20)).await.unwrap() {
            Some(Packet::PubAck(a)) => answers.push((a.packet_id, a.reason_code)),
            other => panic!("expected a PUBACK, got {other:?} after {answers:?}"),
        }
    }
    let expected: Vec<_> = ids
        .iter()
        .map(|id| (*id, ReasonCode::UNSPECIFIED_ERROR))
        .collect();
    assert_eq!(answers, expected, "in order, none of them accepted");
    let timeouts = metric(&a, "roost_cluster_forward_timeouts_total").await - timeouts_before;
    // At least: the counter is process-wide and other tests here time out forwards too.
    assert!(
        timeouts >= 3.0,
        "each wait that ran out is counted: {timeouts}"
    );
    proxy.drop_replies(false);
    a.stop().await;
    b.stop().await;
}

/// Issue 8 (chaos `takeover` seed 1202: a message reached a subscriber about 7 s late, after
/// 358 newer ones of the same publisher, when an isolated leader's link healed; and the
/// `qos2-exactly-once` finding "refused, yet delivered twice"): a QoS 1 message whose
/// publisher was told it failed (v5 0x80: node 2 did not acknowledge it within the forward
/// timeout) was still delivered when the bytes held on the blackholed link arrived, after
/// the publisher had gone on. Now the origin sends the moment it stops waiting
/// (`give_up_at_ms`) and node 2 does not deliver what arrives after it. The link to node 2
/// holds everything for 1.5 s (forward timeout 500 ms) while `late` is published; then
/// `next` goes through: the subscriber gets `next` and not `late`.
#[tokio::test]
async fn a_forward_that_arrives_after_its_publisher_heard_a_failure_is_not_delivered() {
    let (a, b, proxy) = two_nodes(true, |c| c.cluster.forward_timeout_ms = 500).await;
    let proxy = proxy.unwrap();
    let (mut sub, mut publ) = warm_pair(&a, &b, "late/t").await;
    let stale_before = metric(&b, "roost_cluster_received_stale_total").await;

    proxy.hold(true);
    assert_eq!(
        publish_reason(&mut publ, "late/t", b"late", QoS::AtLeastOnce).await,
        Some(ReasonCode::UNSPECIFIED_ERROR),
        "node 2 saw nothing: the publisher must hear a failure"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    proxy.hold(false);
    // Node 2 counts as unreachable until it acknowledges again (RFC 0005): a publish may be
    // refused at once meanwhile.
    let mut next_acked = false;
    for _ in 0..40 {
        let r = publish_reason(&mut publ, "late/t", b"next", QoS::AtLeastOnce).await;
        if r == Some(ReasonCode::SUCCESS) {
            next_acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        next_acked,
        "node 2 did not take messages again after the link healed"
    );
    let mut got = Vec::new();
    while let Ok(Some(Packet::Publish(p))) = sub.recv_within(Duration::from_millis(500)).await {
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    assert!(got.contains(&"next".to_owned()), "{got:?}");
    assert!(
        !got.contains(&"late".to_owned()),
        "a message its publisher was told failed arrived after the fact: {got:?}"
    );
    assert!(metric(&b, "roost_cluster_received_stale_total").await > stale_before);
    a.stop().await;
    b.stop().await;
}

/// Issue 8 (full suite at e9fd8ca, `takeover` seed 1202 under a rolling restart: 10 messages
/// acknowledged in 0.25 s never reached a subscriber whose session the stopping node 3 had
/// just moved to node 2). Node 3 applied its own move, so its copy, fenced out, passed on what
/// matched it, addressed to node 2's new generation; node 2 had not applied the move yet, had
/// no session, no lane and no tombstone for the client, and acknowledged the messages as gone.
/// A message addressed to a generation this node has not applied now waits for it (and is
/// not acknowledged if it does not come within the forward timeout). Here a hand-made
/// Forward stream (as node 1 would send it) passes a QoS 1 message on to node 2 for a
/// persistent session of node 1, at a generation nobody claimed: node 2 must not acknowledge
/// it, nor count it dropped as delivered-to-nobody.
#[tokio::test]
async fn a_message_passed_on_for_a_claim_not_applied_here_is_not_acknowledged_as_gone() {
    use roost_proto::v1 as pb;
    let (a, b, _) = two_nodes(false, |c| c.cluster.forward_timeout_ms = 500).await;
    let (mut s, _) = connect_persistent(a.addr(), Protocol::V311, "ahead").await;
    s.subscribe("ahead/t", QoS::AtLeastOnce).await.unwrap();
    s.disconnect().await.unwrap();
    let gone_before = metric(&b, "roost_handover_passed_on_dropped_total").await;

    let mut client =
        pb::cluster_client::ClusterClient::connect(format!("http://{}", b.node().cluster_addr()))
            .await
            .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::ForwardBatch {
        origin_node: 1,
        epoch: 0x0a4e_ad00,
        messages: vec![pb::ForwardedMessage {
            seq: 1,
            message: Some(pb::Message {
                topic: "ahead/t".to_owned(),
                payload: b"x".to_vec(),
                qos: 1,
                ..Default::default()
            }),
            direct: false,
            shared_filters: Vec::new(),
            to: Some(pb::Addressed {
                client_id: "ahead".to_owned(),
                generation: 1 << 40,
                qos: 1,
                retain: false,
                subscription_ids: Vec::new(),
                shared_filter: None,
            }),
            give_up_at_ms: 0,
        }],
    })
    .await
    .unwrap();
    let mut acks = client
        .forward(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut acked = Vec::new();
    while let Ok(Ok(Some(ack))) = tokio::time::timeout_at(until, acks.message()).await {
        acked.extend(ack.seqs);
    }
    assert!(
        acked.is_empty(),
        "node 2 acknowledged a message for a claim it had not applied: {acked:?}"
    );
    assert_eq!(
        metric(&b, "roost_handover_passed_on_dropped_total").await,
        gone_before
    );
    drop(tx);
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
        send_numbered(&mut publ, "bp/t", i, id).await;
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

/// Reads PUBLISHes for `dur` (acknowledging QoS 1 and 2, completing PUBRELs) and returns the
/// payloads delivered; stops early, keeping what it read, when the connection closes (a
/// takeover). `awaiting_rel` is the session's QoS 2 packet ids that got a PUBREC and no PUBREL
/// yet, kept across connections as a receiver must: a PUBLISH with one of them is the same
/// message again, not a new delivery ([MQTT-4.3.3-9]).
async fn read_for(
    c: &mut RawClient,
    dur: Duration,
    awaiting_rel: &mut std::collections::HashSet<u16>,
) -> Vec<String> {
    let until = tokio::time::Instant::now() + dur;
    let mut got = Vec::new();
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let p = match tokio::time::timeout(left, c.recv()).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(None)) => return got,
            Ok(Ok(Some(p))) => p,
        };
        let sent = match p {
            Packet::Publish(p) => match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => {
                    got.push(String::from_utf8_lossy(&p.payload).into_owned());
                    c.send(&Packet::PubAck(Ack::new(id))).await
                }
                (QoS::ExactlyOnce, Some(id)) => {
                    if awaiting_rel.insert(id.get()) {
                        got.push(String::from_utf8_lossy(&p.payload).into_owned());
                    }
                    c.send(&Packet::PubRec(Ack::new(id))).await
                }
                _ => {
                    got.push(String::from_utf8_lossy(&p.payload).into_owned());
                    Ok(())
                }
            },
            Packet::PubRel(a) => {
                awaiting_rel.remove(&a.packet_id.get());
                c.send(&Packet::PubComp(Ack::new(a.packet_id))).await
            }
            _ => Ok(()),
        };
        if sent.is_err() {
            return got;
        }
    }
}

/// Publishes `prefix-N` to `topic` at `qos` with a v3.1.1 client (whose acknowledgement has no
/// reason code: 0x00 is its only answer) one after another until `stop`, and returns the
/// payloads the broker acknowledged.
fn publish_until(
    addr: std::net::SocketAddr,
    id: &'static str,
    topic: &'static str,
    qos: QoS,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut c = connect_clean(addr, Protocol::V311, id).await;
        let mut acked = Vec::new();
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let payload = format!("{id}-{n}");
            match c.publish(topic, payload.as_bytes(), qos, false).await {
                Ok(r) if !r.is_error() => acked.push(payload),
                Ok(r) => panic!("{id}: {payload} refused with {r:?}"),
                Err(e) => panic!("{id}: {payload}: {e}"),
            }
        }
        acked
    })
}

/// RFC 0006 (issue 8's chaos run, gap 2): while a persistent session moves from one node to
/// another, messages routed to the old owner after it exported the session, but before the
/// new owner's route is applied everywhere, were acknowledged and matched nothing. Three
/// nodes; the subscriber hops between nodes 1 and 2 while v3.1.1 publishers on node 1 (the
/// old owner's own clients) and node 3 (a peer that forwards by its copy of the routes) send
/// QoS 1 and QoS 2 messages without pause. Every acknowledged message must reach the
/// subscriber, and no QoS 2 message twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc6_a_moving_session_loses_no_acknowledged_message() {
    let (nodes, _) = nodes_with(3, false, |_| {}).await.unwrap();
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr()).collect();
    let (mut sub, _) = connect_persistent(addrs[0], Protocol::V311, "mover").await;
    sub.subscribe("ho/+", QoS::ExactlyOnce).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pubs = [
        publish_until(addrs[0], "p1q1", "ho/a", QoS::AtLeastOnce, stop.clone()),
        publish_until(addrs[2], "p3q1", "ho/b", QoS::AtLeastOnce, stop.clone()),
        publish_until(addrs[0], "p1q2", "ho/c", QoS::ExactlyOnce, stop.clone()),
        publish_until(addrs[2], "p3q2", "ho/d", QoS::ExactlyOnce, stop.clone()),
    ];
    let mut rel = std::collections::HashSet::new();
    let mut got = read_for(&mut sub, Duration::from_millis(300), &mut rel).await;
    for hop in 1..=12 {
        let (mut next, ack) = connect_persistent(addrs[hop % 2], Protocol::V311, "mover").await;
        assert!(ack.session_present, "hop {hop}: the session did not move");
        got.extend(read_for(&mut sub, Duration::from_millis(20), &mut rel).await);
        drop(sub);
        got.extend(read_for(&mut next, Duration::from_millis(250), &mut rel).await);
        sub = next;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for p in pubs {
        acked.extend(p.await.unwrap());
    }
    got.extend(read_for(&mut sub, Duration::from_secs(3), &mut rel).await);
    let received: std::collections::HashSet<&String> = got.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|p| !received.contains(p)).collect();
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<&String> = got
        .iter()
        .filter(|p| p.contains("q2-") && !seen.insert(p.as_str()))
        .collect();
    assert!(
        acked.len() > 400,
        "too few messages for the test to mean anything: {}",
        acked.len()
    );
    assert!(
        lost.is_empty() && twice.is_empty(),
        "of {} acknowledged messages, {} lost: {lost:?}; QoS 2 delivered twice: {twice:?}",
        acked.len(),
        lost.len()
    );
    for n in nodes {
        n.stop().await;
    }
}

/// Issue 8 (chaos `shared` workload, seed 5): a peer picks this node to serve a shared group
/// by a route that is about to go (its last member here just left); nothing here took the
/// message, yet it was acknowledged. Now another node with members takes it, and the
/// acknowledgement waits for that. Member `m1` stays on node 1; member `m2` joins and leaves
/// node 2 eight times while a v3.1.1 publisher on node 1 sends QoS 1 without pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_pick_without_a_member_is_served_elsewhere() {
    let (a, b, _) = two_nodes(false, |_| {}).await;
    let filter = "$share/g/sh/t";
    let mut m1 = connect_clean(a.addr(), Protocol::V5, "m1").await;
    m1.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rel = std::collections::HashSet::new();
            let mut got = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                got.extend(read_for(&mut m1, Duration::from_millis(200), &mut rel).await);
            }
            got.extend(read_for(&mut m1, Duration::from_secs(2), &mut rel).await);
            got
        })
    };
    let publisher = publish_until(a.addr(), "shp", "sh/t", QoS::AtLeastOnce, stop.clone());
    let mut got = Vec::new();
    for _ in 0..8 {
        let mut m2 = connect_clean(b.addr(), Protocol::V5, "m2").await;
        m2.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let mut rel = std::collections::HashSet::new();
        got.extend(read_for(&mut m2, Duration::from_millis(150), &mut rel).await);
        m2.disconnect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = publisher.await.unwrap();
    got.extend(reader.await.unwrap());
    let received: std::collections::HashSet<&String> = got.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|p| !received.contains(p)).collect();
    assert!(acked.len() > 200, "too few messages: {}", acked.len());
    assert!(
        lost.is_empty(),
        "of {} acknowledged messages, {} reached no member of the group: {lost:?}",
        acked.len(),
        lost.len()
    );
    a.stop().await;
    b.stop().await;
}
