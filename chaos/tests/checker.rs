//! The checker is shown to fail when it should (issue 8): hand-made histories with one planted
//! fault each, and a clean one; then the binary on saved files, by exit code.

#![allow(clippy::unwrap_used)]

use roost_chaos::history::{self, EndKind, Op, Outcome};
use roost_chaos::{check, Report};

fn publish(client: &str, seq: u64, qos: u8, start: u64, end: u64, outcome: Outcome) -> Op {
    Op::Publish {
        client: client.into(),
        node: 1,
        topic: "q/1".into(),
        seq,
        qos,
        start,
        end,
        outcome,
        retain: false,
    }
}

fn receive(client: &str, publisher: &str, seq: u64, qos: u8, at: u64) -> Op {
    Op::Receive {
        client: client.into(),
        node: 2,
        topic: "q/1".into(),
        publisher: publisher.into(),
        seq,
        qos,
        at,
    }
}

fn subscriber(client: &str, filter: &str) -> Op {
    Op::Subscriber {
        client: client.into(),
        topic: filter.into(),
        qos: 2,
        from: 0,
        until: None,
    }
}

fn session(client: &str, node: u64, from: u64, until: Option<u64>) -> Op {
    Op::Session {
        client: client.into(),
        node,
        from,
        until,
    }
}

/// Three QoS 2 messages from p1 and one QoS 1 from p2, each received once, by a subscriber on
/// `q/+`; the subscriber's two connections one after the other.
fn clean() -> Vec<Op> {
    vec![
        subscriber("s1", "q/+"),
        session("s1", 1, 0, Some(100)),
        session("s1", 2, 100, None),
        publish("p1", 1, 2, 10, 20, Outcome::Ok),
        publish("p1", 2, 2, 21, 30, Outcome::Ok),
        publish("p1", 3, 2, 31, 40, Outcome::Ok),
        publish("p2", 1, 1, 10, 20, Outcome::Ok),
        receive("s1", "p1", 1, 2, 25),
        receive("s1", "p2", 1, 1, 26),
        receive("s1", "p1", 2, 2, 35),
        receive("s1", "p1", 3, 2, 45),
    ]
}

fn found(r: &Report) -> Vec<&'static str> {
    r.violations.iter().map(|v| v.invariant).collect()
}

#[test]
fn a_clean_history_holds() {
    let r = check(&clean());
    assert!(r.ok(), "{}", r.markdown(10));
    assert_eq!((r.acknowledged, r.received), (4, 4));
}

#[test]
fn an_acknowledged_message_never_received_is_lost() {
    let mut h = clean();
    h.retain(|o| !matches!(o, Op::Receive { publisher, seq: 2, .. } if publisher == "p1"));
    let r = check(&h);
    assert_eq!(found(&r), ["lost"], "{}", r.markdown(10));
    assert!(r.violations[0].detail.contains("p1 #2"));
}

#[test]
fn an_unknown_publish_is_not_lost_and_counts_as_recovered_when_it_arrives() {
    let mut h = clean();
    h.push(publish("p1", 4, 2, 50, 60, Outcome::Unknown));
    h.push(publish("p1", 5, 2, 61, 70, Outcome::Unknown));
    h.push(receive("s1", "p1", 5, 2, 75));
    let r = check(&h);
    assert!(r.ok(), "{}", r.markdown(10));
    assert_eq!((r.unknown, r.recovered), (2, 1));
}

#[test]
fn a_message_outside_the_subscribers_interval_or_filter_is_not_owed() {
    let mut h = clean();
    h.insert(
        0,
        Op::Subscriber {
            client: "late".into(),
            topic: "q/1".into(),
            qos: 1,
            from: 1_000,
            until: None,
        },
    );
    h.push(subscriber("other", "r/#"));
    let r = check(&h);
    assert!(r.ok(), "{}", r.markdown(10));
}

#[test]
fn a_qos2_message_received_twice_is_duplicated_but_qos1_may_be() {
    let mut h = clean();
    h.push(receive("s1", "p2", 1, 1, 50));
    assert!(check(&h).ok(), "a QoS 1 duplicate is allowed");
    h.push(receive("s1", "p1", 3, 2, 50));
    let r = check(&h);
    assert_eq!(found(&r), ["duplicated"], "{}", r.markdown(10));
    // A QoS 2 message its publisher heard refused is not promised exactly once (failure is
    // not rollback): counted, not a violation.
    let mut h = clean();
    h.push(publish("p1", 9, 2, 60, 70, Outcome::Failed));
    h.push(receive("s1", "p1", 9, 2, 65));
    h.push(receive("s1", "p1", 9, 2, 80));
    let r = check(&h);
    assert!(r.ok(), "{}", r.markdown(10));
    assert_eq!(r.refused_twice, 1);
}

#[test]
fn a_retained_read_older_than_an_acknowledged_write_is_stale() {
    let write = |seq, start, end, outcome| Op::Publish {
        client: "rw-1".into(),
        node: 1,
        topic: "r/1".into(),
        seq,
        qos: 1,
        start,
        end,
        outcome,
        retain: true,
    };
    let read = |value: Option<&str>, start, end| Op::Read {
        client: "rr-1".into(),
        node: 2,
        topic: "r/1".into(),
        value: value.map(str::to_owned),
        start,
        end,
        outcome: Outcome::Ok,
    };
    let mut h = vec![
        write(1, 0, 10, Outcome::Ok),
        write(2, 20, 30, Outcome::Ok),
        // Before #2 was acknowledged: #1 is still a right answer, and #2 too.
        read(Some("rw-1:1"), 25, 28),
        read(Some("rw-1:2"), 25, 28),
        // After: #2, or a write in flight (#3 started at 40).
        read(Some("rw-1:2"), 35, 45),
        write(3, 40, 50, Outcome::Unknown),
        read(Some("rw-1:3"), 35, 45),
    ];
    let r = check(&h);
    assert!(r.ok(), "{}", r.markdown(10));
    h.push(read(Some("rw-1:1"), 35, 45));
    h.push(read(None, 35, 45));
    h.push(read(Some("rw-1:7"), 35, 45));
    h.push(read(Some("rw-1:3"), 31, 35));
    h.push(read(Some("rw-9:3"), 31, 35));
    let r = check(&h);
    assert_eq!(
        r.violations
            .iter()
            .filter(|v| v.invariant == "stale_retained")
            .count(),
        5,
        "older, nothing, never written, from the future, another writer: {}",
        r.markdown(10)
    );
}

#[test]
fn a_message_never_sent_is_unexpected_but_a_refused_one_may_arrive() {
    let mut h = clean();
    // Failure is not rollback: a refused message may have reached subscribers.
    h.push(publish("p3", 1, 1, 10, 20, Outcome::Failed));
    h.push(receive("s1", "p3", 1, 1, 50));
    let r = check(&h);
    assert!(r.ok(), "{}", r.markdown(10));
    assert_eq!((r.failed, r.refused_delivered), (1, 1));
    h.push(receive("s1", "p9", 1, 1, 50));
    let r = check(&h);
    assert_eq!(found(&r), ["unexpected"], "{}", r.markdown(10));
}

#[test]
fn a_later_message_first_is_reordered_but_a_qos1_resend_is_not() {
    let mut h = clean();
    // p2 #1 again (a QoS 1 resend) after later ones: fine.
    h.push(receive("s1", "p2", 1, 1, 90));
    assert!(check(&h).ok());
    // p1 #3 before #2.
    let mut h = clean();
    for op in &mut h {
        if let Op::Receive {
            publisher, seq, at, ..
        } = op
        {
            if publisher == "p1" && *seq == 3 {
                *at = 33;
            }
        }
    }
    let r = check(&h);
    assert_eq!(found(&r), ["reordered"], "{}", r.markdown(10));
}

#[test]
fn two_overlapping_live_connections_of_one_client_id_are_a_split_brain() {
    let mut h = clean();
    h.push(session("s1", 3, 150, Some(200)));
    let r = check(&h);
    assert_eq!(found(&r), ["two_sessions"], "{}", r.markdown(10));
    assert!(r.violations[0].detail.contains("node 2"));
}

/// Will workload histories: watchers `w1` (node 1) and `w2` (node 2) subscribed to
/// `chaos/w/#` throughout; `will-1` ends connection 1 (node 3) by a dropped socket at 100,
/// connection 2 (node 1) by DISCONNECT 0x00 at 300, connection 3 (node 2) by DISCONNECT 0x04
/// at 500; both watchers get the two wills due, once each.
fn wills() -> Vec<Op> {
    let mut h = Vec::new();
    for (w, node) in [("w1", 1), ("w2", 2)] {
        h.push(Op::Subscriber {
            client: w.into(),
            topic: "chaos/w/#".into(),
            qos: 1,
            from: 0,
            until: None,
        });
        h.push(session(w, node, 0, None));
    }
    for (inc, node, kind, from, at) in [
        (1, 3, EndKind::Drop, 10, 100),
        (2, 1, EndKind::Normal, 200, 300),
        (3, 2, EndKind::WithWill, 400, 500),
    ] {
        h.push(ending(inc, node, kind, from, at));
    }
    for w in ["w1", "w2"] {
        h.push(will(w, 1, false, 110));
        h.push(will(w, 3, false, 510));
    }
    h
}

fn ending(incarnation: u64, node: u64, kind: EndKind, from: u64, at: u64) -> Op {
    Op::Ending {
        client: "will-1".into(),
        node,
        incarnation,
        kind,
        from,
        at,
    }
}

fn will(watcher: &str, incarnation: u64, dup: bool, at: u64) -> Op {
    Op::Will {
        client: watcher.into(),
        node: if watcher == "w1" { 1 } else { 2 },
        of: "will-1".into(),
        incarnation,
        dup,
        at,
    }
}

fn fault(nodes: &[u64], cut: &[(u64, u64)], from: u64, until: u64) -> Op {
    Op::Fault {
        name: "planted".into(),
        nodes: nodes.to_vec(),
        cut: cut.to_vec(),
        cluster: 3,
        from,
        until,
    }
}

/// Removes the receipt of will `incarnation` at `watcher`.
fn without(mut h: Vec<Op>, watcher: &str, incarnation: u64) -> Vec<Op> {
    h.retain(|o| !matches!(o, Op::Will { client, incarnation: i, .. } if client == watcher && *i == incarnation));
    h
}

#[test]
fn wills_published_once_when_due_hold() {
    let r = check(&wills());
    assert!(r.ok(), "{}", r.markdown(10));
    assert_eq!((r.wills.endings, r.wills.due, r.wills.forbidden), (3, 2, 1));
    assert_eq!((r.wills.judged, r.wills.received), (3, 4));
}

#[test]
fn a_will_due_and_never_received_is_missing() {
    let r = check(&without(wills(), "w2", 3));
    assert_eq!(found(&r), ["will"], "{}", r.markdown(10));
    let d = &r.violations[0].detail;
    assert!(
        d.starts_with("missing") && d.contains("will-1 #3") && d.contains("w2"),
        "{d}"
    );
    // A dropped socket's will, missing at both watchers: one violation naming both.
    let r = check(&without(without(wills(), "w1", 1), "w2", 1));
    assert_eq!(found(&r), ["will"], "{}", r.markdown(10));
    assert!(r.violations[0].detail.contains("w1, w2"));
}

#[test]
fn a_will_published_twice_is_doubled_but_a_dup_redelivery_is_not() {
    let mut h = wills();
    h.push(will("w1", 3, false, 520));
    let r = check(&h);
    assert_eq!(found(&r), ["will"], "{}", r.markdown(10));
    assert!(r.violations[0].detail.starts_with("doubled"));
    assert!(r.violations[0].detail.contains("w1 2 times"));
    // The same PUBLISH resent on the session after a reconnect (DUP set): not a second one.
    let mut h = wills();
    h.push(will("w1", 3, true, 520));
    let r = check(&h);
    assert!(r.ok(), "{}", r.markdown(10));
}

#[test]
fn a_will_after_a_normal_disconnect_or_before_the_end_or_of_no_connection_is_reported() {
    let mut h = wills();
    h.push(will("w2", 2, false, 310));
    let r = check(&h);
    assert_eq!(found(&r), ["will"], "{}", r.markdown(10));
    assert!(r.violations[0].detail.starts_with("forbidden"));
    let mut h = without(wills(), "w1", 3);
    h.push(will("w1", 3, false, 450));
    let r = check(&h);
    assert_eq!(found(&r), ["will"], "{}", r.markdown(10));
    assert!(r.violations[0].detail.starts_with("early"));
    let mut h = wills();
    h.push(will("w1", 9, false, 600));
    let r = check(&h);
    assert_eq!(found(&r), ["will"], "{}", r.markdown(10));
    assert!(r.violations[0].detail.starts_with("unexpected"));
}

#[test]
fn a_fault_touching_the_serving_or_watching_node_leaves_the_will_unjudged() {
    use roost_chaos::invariants::will::SETTLE;
    // Node 3 (it served connection 1) killed right after its end: its will may be lost.
    let mut h = without(without(wills(), "w1", 1), "w2", 1);
    h.push(fault(&[3], &[], 150, 160));
    assert!(check(&h).ok());
    // Node 2 (w2's) paused just before, still settling: for connection 1 (node 3), w2's will
    // unjudged, w1's not.
    let mut h = without(without(wills(), "w2", 1), "w1", 1);
    h.push(fault(&[2], &[], 0, 5));
    let r = check(&h);
    assert_eq!(found(&r), ["will"], "{}", r.markdown(10));
    assert!(r.violations[0].detail.contains(": w1") && !r.violations[0].detail.contains("w2"));
    // ... and once settled, judged again.
    let mut h = without(wills(), "w2", 3);
    h.push(Op::Fault {
        name: "planted".into(),
        nodes: vec![2],
        cut: vec![],
        cluster: 3,
        from: 0,
        until: 1,
    });
    let h: Vec<Op> = h
        .into_iter()
        .map(|o| match o {
            Op::Ending {
                at,
                from,
                incarnation,
                node,
                kind,
                client,
            } if incarnation == 3 => Op::Ending {
                client,
                node,
                incarnation,
                kind,
                from: from + 2 * SETTLE,
                at: at + 2 * SETTLE,
            },
            Op::Will {
                client,
                node,
                of,
                incarnation,
                dup,
                at,
            } if incarnation == 3 => Op::Will {
                client,
                node,
                of,
                incarnation,
                dup,
                at: at + 2 * SETTLE,
            },
            o => o,
        })
        .collect();
    let r = check(&h);
    assert_eq!(found(&r), ["will"], "{}", r.markdown(10));
    // A doubled will under a fault is counted, not reported.
    let mut h = wills();
    h.push(will("w1", 1, false, 120));
    h.push(fault(&[3], &[], 90, 95));
    let r = check(&h);
    assert!(r.ok(), "{}", r.markdown(10));
    assert_eq!(r.wills.repeated_under_faults, 1);
}

#[test]
fn a_partition_touches_the_minority_and_the_pairs_it_separates_only() {
    // Node 3 cut off: connection 3 (node 2) to w1 (node 1) is on the majority side: judged.
    let cut3 = [(1, 3), (3, 1), (2, 3), (3, 2)];
    let mut h = without(wills(), "w1", 3);
    h.push(fault(&[], &cut3, 450, 460));
    assert_eq!(found(&check(&h)), ["will"]);
    // Node 1 cut off: w1 is in the minority: unjudged.
    let cut1 = [(1, 2), (2, 1), (1, 3), (3, 1)];
    let mut h = without(wills(), "w1", 3);
    h.push(fault(&[], &cut1, 450, 460));
    assert!(check(&h).ok());
    // A ring of 3 nodes that is not one (1-2 cut only: node 3 bridges them): every node.
    let mut h = without(wills(), "w1", 3);
    h.push(fault(&[], &[(1, 2), (2, 1)], 450, 460));
    assert!(check(&h).ok());
}

#[test]
fn a_history_reads_back_as_written() {
    let h = clean();
    let mut buf = Vec::new();
    history::write(&h, &mut buf).unwrap();
    assert_eq!(history::read(&buf[..]).unwrap(), h);
}

/// `roost-chaos check` on saved files: 0 clean, 1 with a violation, 2 unreadable (naming the
/// line).
#[test]
fn the_binary_checks_a_saved_history() {
    let dir = tempfile_dir();
    let run = |name: &str, ops: Option<&[Op]>, raw: &str| {
        let path = dir.join(name);
        match ops {
            Some(ops) => history::write(ops, std::fs::File::create(&path).unwrap()).unwrap(),
            None => std::fs::write(&path, raw).unwrap(),
        }
        std::process::Command::new(env!("CARGO_BIN_EXE_roost-chaos"))
            .arg("check")
            .arg(&path)
            .output()
            .unwrap()
    };
    let ok = run("clean.jsonl", Some(&clean()), "");
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("verdict: ok"));
    let mut lost = clean();
    lost.pop();
    let bad = run("lost.jsonl", Some(&lost), "");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("## lost (1)"));
    let broken = run("broken.jsonl", None, "{\"op\":\"session\"}\n");
    assert_eq!(broken.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&broken.stderr).contains("line 1"));
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("roost-chaos-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bound(max: u64, until: u64) -> Op {
    Op::OutageBound { max, until }
}

/// A publisher and a persistent subscriber, each reconnecting once: out for 30 and 20.
fn outages() -> Vec<Op> {
    vec![
        subscriber("s1", "q/+"),
        session("s1", 1, 0, Some(100)),
        session("s1", 2, 120, None),
        publish("p1", 1, 1, 10, 20, Outcome::Ok),
        receive("s1", "p1", 1, 1, 25),
        session("p1", 1, 0, Some(50)),
        session("p1", 3, 80, Some(300)),
        // A reader of retained values connects now and then: it keeps no connection.
        session("r1", 1, 0, Some(10)),
        session("r1", 1, 200, Some(210)),
    ]
}

#[test]
fn a_client_back_within_the_bound_holds_and_one_out_longer_is_reported() {
    let mut h = outages();
    h.push(bound(30, 250));
    let r = check(&h);
    assert!(r.ok(), "{}", r.markdown(10));
    assert_eq!(
        r.outages,
        vec![("p1".to_owned(), 50, 80), ("s1".to_owned(), 100, 120)],
        "the longest first; the reader is not judged"
    );

    let mut h = outages();
    h.push(bound(25, 250));
    let r = check(&h);
    assert_eq!(found(&r), vec!["outage"], "{}", r.markdown(10));
    assert!(
        r.violations[0].detail.starts_with("p1:"),
        "{:?}",
        r.violations
    );
}

#[test]
fn outages_are_only_reported_without_a_bound() {
    let r = check(&outages());
    assert!(r.ok(), "{}", r.markdown(10));
    assert_eq!(r.outages.len(), 2);
    assert!(r
        .markdown(10)
        .contains("longest times without a connection: p1 0.00 s"));
}

#[test]
fn a_client_never_back_is_out_until_the_bound_ends() {
    let mut h = outages();
    // p1's last connection ends at 300: never back before the publishers stop at 500.
    h.push(bound(100, 500));
    let r = check(&h);
    assert_eq!(found(&r), vec!["outage"], "{}", r.markdown(10));
    assert!(r.violations[0].detail.starts_with("p1: no connection for"));
    assert_eq!(r.outages[0], ("p1".to_owned(), 300, 500));
}

#[test]
fn overlapping_connections_are_no_outage() {
    let h = vec![
        subscriber("s1", "q/+"),
        session("s1", 1, 0, Some(100)),
        // The takeover's new connection before the old one was seen closed.
        session("s1", 2, 90, Some(400)),
        session("s1", 3, 150, None),
        bound(1, 1000),
    ];
    let r = check(&h);
    assert!(r.ok(), "{}", r.markdown(10));
    assert!(r.outages.is_empty(), "{:?}", r.outages);
}
