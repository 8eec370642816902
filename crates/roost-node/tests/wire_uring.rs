//! Wire tests of the io_uring read/write path (`node.io = "io_uring"`, RFC 0010): a node with
//! two io_uring shards and real sockets. Connect, QoS 0 and 1 deliveries between connections on
//! different shards, a payload larger than any read or write buffer of the stream, a client
//! that stops reading (the write stays bounded and times out), and clean closes both ways.
//!
//! Built only with the feature (`cargo test -p roost-node --features io-uring --test
//! wire_uring`). If the kernel refuses io_uring (a container's seccomp filter, or
//! `kernel.io_uring_disabled`), each test prints why and passes without running.
#![cfg(all(target_os = "linux", feature = "io-uring"))]
#![allow(clippy::unwrap_used)]

use roost_codec::{Protocol, QoS};
use roost_node::config::NodeIo;
use roost_testkit::*;
use std::time::Duration;

/// A node with two io_uring shards, or `None` (printed) when the kernel refuses io_uring.
async fn uring_node(tweak: impl FnOnce(&mut roost_node::Config)) -> Option<TestNode> {
    let started = TestNode::start_with(|c| {
        c.node.shards = 2;
        c.node.io = NodeIo::IoUring;
        tweak(c);
    })
    .await;
    match started {
        Ok(node) => Some(node),
        Err(e) if format!("{e:#}").contains("io_uring_setup") => {
            println!("skipped: the kernel refuses io_uring here: {e:#}");
            None
        }
        Err(e) => panic!("node did not start: {e:#}"),
    }
}

/// Connections accepted more than this apart are placed alone, on the emptiest shard
/// (`shard.rs`, `BURST_WINDOW`).
const APART: Duration = Duration::from_millis(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_and_qos1_are_delivered_between_io_uring_shards() {
    let Some(node) = uring_node(|_| {}).await else {
        return;
    };
    let mut sub = connect_clean(node.addr(), Protocol::V5, "u-sub").await;
    sub.subscribe("u/#", QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(APART).await;
    let mut publ = connect_clean(node.addr(), Protocol::V311, "u-pub").await;
    assert_eq!(
        wait_shard_total(&node, 2).await,
        vec![1, 1],
        "one connection per shard"
    );

    publ.publish("u/q0", b"zero", QoS::AtMostOnce, false)
        .await
        .unwrap();
    publish_ok(&mut publ, "u/q1", b"one").await;
    let (a, b) = (recv_publish(&mut sub).await, recv_publish(&mut sub).await);
    assert_eq!((a.topic.as_str(), &a.payload[..]), ("u/q0", &b"zero"[..]));
    assert_eq!(a.qos, QoS::AtMostOnce);
    assert_eq!((b.topic.as_str(), &b.payload[..]), ("u/q1", &b"one"[..]));
    assert_eq!(b.qos, QoS::AtLeastOnce);

    // And the other way round, many in a row (several reads and writes per connection).
    publ.subscribe("back", QoS::AtLeastOnce).await.unwrap();
    for i in 0..200 {
        sub.publish("back", format!("m{i}").as_bytes(), QoS::AtMostOnce, false)
            .await
            .unwrap();
    }
    for i in 0..200 {
        let p = recv_publish(&mut publ).await;
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes(), "in order");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_larger_than_every_buffer_arrives_intact() {
    let Some(node) = uring_node(|_| {}).await else {
        return;
    };
    let mut sub = connect_clean(node.addr(), Protocol::V5, "u-big-sub").await;
    sub.subscribe("big", QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(APART).await;
    let mut publ = connect_clean(node.addr(), Protocol::V5, "u-big-pub").await;
    // 900 KiB, a pattern that shows a lost, repeated or reordered chunk: far more than a read
    // (16 KiB at most) or a write (64 KiB at most) of the io_uring stream.
    let payload: Vec<u8> = (0..900 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
        .collect();
    publish_ok(&mut publ, "big", &payload).await;
    let got = recv_publish(&mut sub).await;
    assert_eq!(got.payload.len(), payload.len());
    assert!(got.payload[..] == payload[..], "payload changed on the way");
    node.stop().await;
}

/// A subscriber that stops reading: the node's write stays in flight (the kernel's socket
/// buffers are full), its queue stays bounded, and after `write_timeout_secs` without progress
/// the connection is closed; its shard lets go of it. The publisher is never blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_bounded_and_closed() {
    let Some(node) = uring_node(|c| {
        c.mqtt.max_queued_bytes = 1024 * 1024;
        c.mqtt.write_timeout_secs = 2;
    })
    .await
    else {
        return;
    };
    let (stalled, _) = connect_persistent(node.addr(), Protocol::V5, "u-stalled").await;
    let mut stalled = stalled;
    stalled.subscribe("slow/#", QoS::AtMostOnce).await.unwrap();
    tokio::time::sleep(APART).await;
    let mut publ = connect_clean(node.addr(), Protocol::V5, "u-fast").await;
    let payload = vec![7u8; 64 * 1024];
    let publishing = async {
        for i in 0..300 {
            publ.publish(&format!("slow/{i}"), &payload, QoS::AtMostOnce, false)
                .await
                .unwrap();
        }
        // A round trip: the publisher's own connection still works.
        publish_ok(&mut publ, "elsewhere", b"ok").await;
    };
    tokio::time::timeout(Duration::from_secs(20), publishing)
        .await
        .expect("the publisher is not held up by a subscriber that does not read");
    // 19 MiB offered to a client that reads nothing: the write timeout closes it, and only the
    // publisher is left (on its shard).
    tokio::time::timeout(Duration::from_secs(15), wait_connections(&node, 1))
        .await
        .expect("the stalled connection is closed after the write timeout");
    wait_shard_total(&node, 1).await;
    drop(stalled);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_close_cleanly_both_ways() {
    let Some(node) = uring_node(|_| {}).await else {
        return;
    };
    let addr = node.addr();
    let mut clients = Vec::new();
    for i in 0..6 {
        tokio::time::sleep(APART).await;
        clients.push(connect_clean(addr, Protocol::V5, &format!("u-close{i}")).await);
    }
    let live = wait_shard_total(&node, 6).await;
    assert!(live.iter().all(|n| *n > 0), "both shards used: {live:?}");

    // The client closes: a DISCONNECT, then its socket; a socket simply dropped.
    clients.pop().unwrap().disconnect().await.unwrap();
    drop(clients.pop());
    wait_shard_total(&node, 4).await;
    wait_connections(&node, 4).await;

    // The node closes: shutdown says so to every client, then ends the shards.
    stop_telling_clients(node, &mut clients).await;
}
