//! Wire tests of a node that runs its connections on shards (`node.shards`, RFC 0009): every
//! other test runs them on the shared runtime (`node.shards = 0`, the default), so this file
//! is where deliveries, takeovers and shutdown cross shard threads.
#![allow(clippy::unwrap_used)]

use roost_codec::{Protocol, QoS, ReasonCode};
use roost_testkit::*;
use std::time::Duration;

async fn sharded(n: usize) -> TestNode {
    TestNode::start_with(|c| c.node.shards = n).await.unwrap()
}

/// Connections accepted within this of each other go to the same shard, up to 16 in a row
/// (`shard.rs`, `BURST_WINDOW`, `BURST_RUN`); a test waits longer to place a connection alone.
const APART: Duration = Duration::from_millis(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_shards_and_deliver_across_them() {
    let node = sharded(3).await;
    let mut subs = Vec::new();
    for i in 0..48 {
        let mut c = connect_clean(node.addr(), Protocol::V5, &format!("sh-sub{i}")).await;
        c.subscribe("sh/all", QoS::AtLeastOnce).await.unwrap();
        subs.push(c);
    }
    // Opened one after the other: runs of at most 16 on one shard, and no shard more than 16
    // above the emptiest (exactly 16 each when every connect came within the burst window).
    let live = wait_shard_total(&node, 48).await;
    let (min, max) = (*live.iter().min().unwrap(), *live.iter().max().unwrap());
    assert!(min > 0 && max - min <= 16, "placement {live:?}");

    let mut publ = connect_clean(node.addr(), Protocol::V311, "sh-pub").await;
    for m in ["m1", "m2", "m3"] {
        publish_ok(&mut publ, "sh/all", m.as_bytes()).await;
    }
    for c in &mut subs {
        let got: Vec<_> = [
            c.next_publish().await.unwrap(),
            c.next_publish().await.unwrap(),
            c.next_publish().await.unwrap(),
        ]
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
        assert_eq!(got, ["m1", "m2", "m3"], "in order, on every shard");
    }

    // Closed sockets leave their shard's count.
    drop(publ);
    for c in subs.drain(..45) {
        c.disconnect().await.unwrap();
    }
    wait_shard_total(&node, 3).await;
    wait_connections(&node, 3).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_from_another_shard_moves_the_session() {
    let node = sharded(2).await;
    let (mut old, ack) = connect_persistent(node.addr(), Protocol::V5, "sh-take").await;
    assert!(!ack.session_present);
    old.subscribe("sh/take", QoS::AtLeastOnce).await.unwrap();
    // The second connection, apart from the first, goes to the other shard (the one with
    // fewer sockets).
    assert_eq!(node.node().shard_connections(), vec![1, 0]);
    tokio::time::sleep(APART).await;
    let (mut new, ack) = connect_persistent(node.addr(), Protocol::V5, "sh-take").await;
    assert!(ack.session_present);
    expect_disconnect(&mut old, ReasonCode::SESSION_TAKEN_OVER).await;

    let mut publ = connect_clean(node.addr(), Protocol::V5, "sh-take-pub").await;
    publish_ok(&mut publ, "sh/take", b"after").await;
    assert_eq!(&new.next_publish().await.unwrap().payload[..], b"after");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_connections_on_every_shard_and_stops_the_threads() {
    let node = sharded(2).await;
    let addr = node.addr();
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(connect_clean(addr, Protocol::V5, &format!("sh-stop{i}")).await);
    }
    for i in 4..8 {
        // Apart: spread over both shards.
        tokio::time::sleep(APART).await;
        clients.push(connect_clean(addr, Protocol::V5, &format!("sh-stop{i}")).await);
    }
    let live = wait_shard_total(&node, 8).await;
    assert!(
        live.iter().all(|n| *n > 0),
        "both shards hold connections: {live:?}"
    );
    // Alone, the node has nowhere to send its clients: 0x8B Server shutting down.
    stop_telling_clients(node, &mut clients).await;
}
