//! Test steps over [`RawClient`]: connect, publish, collect deliveries, expect a disconnect,
//! wait for the node to settle. Unlike `RawClient`'s own methods these assert what they expect
//! and panic (failing the test) on anything else, so a test reads as a list of steps.
//!
//! Every wait is bounded (by [`RECV_TIMEOUT`](crate::RECV_TIMEOUT) inside `RawClient`, or
//! explicitly here): a broken broker fails a test, it never hangs one.

use roost_codec::{Ack, ConnAck, Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{persistent_packet, publish_packet, RawClient, TestNode};

/// How long "nothing more arrives" is watched for in real-time tests.
pub const SILENCE: Duration = Duration::from_millis(300);

/// Connects with an arbitrary CONNECT and insists on CONNACK success.
pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
    let mut c = RawClient::open(addr, connect.protocol)
        .await
        .expect("TCP connect to the broker");
    let ack = c.handshake(connect).await.expect("CONNECT / CONNACK");
    assert_eq!(
        ack.reason_code,
        ReasonCode::SUCCESS,
        "CONNACK refused: {ack:?}"
    );
    (c, ack)
}

/// Connects with `connect` (built afresh for each try), asking again every 250 ms while the
/// broker answers 0x88 Server unavailable (a claim that missed the commit timeout, a cluster
/// electing a leader), at most 40 times (10 s); any other refusal fails the test. Returns the
/// client and whether a session was present.
pub async fn connect_when_served(
    addr: SocketAddr,
    connect: impl Fn() -> Connect,
) -> (RawClient, bool) {
    for _ in 0..40 {
        let first = connect();
        let mut c = RawClient::open(addr, first.protocol)
            .await
            .expect("TCP connect to the broker");
        let ack = c.handshake(first).await.expect("CONNECT / CONNACK");
        if ack.reason_code == ReasonCode::SUCCESS {
            return (c, ack.session_present);
        }
        assert_eq!(ack.reason_code, ReasonCode::SERVER_UNAVAILABLE, "{ack:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the broker at {addr} served no CONNECT within 10 s (0x88 each time)");
}

/// Connects (or resumes) a persistent session (see [`persistent_packet`]).
pub async fn connect_persistent(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
) -> (RawClient, ConnAck) {
    connect_with(addr, persistent_packet(protocol, client_id)).await
}

/// Connects a client whose session ends with the connection.
pub async fn connect_clean(addr: SocketAddr, protocol: Protocol, client_id: &str) -> RawClient {
    RawClient::connect(addr, protocol, client_id, true)
        .await
        .expect("clean connect")
        .0
}

/// Publishes with v5 properties and completes the QoS handshake; returns the (first error or
/// final) reason code.
pub async fn publish_with(
    c: &mut RawClient,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    properties: Properties,
) -> ReasonCode {
    let id = (qos != QoS::AtMostOnce).then(|| c.next_packet_id());
    c.send(&publish_packet(topic, payload, qos, retain, id, properties))
        .await
        .expect("send PUBLISH");
    let Some(id) = id else {
        return ReasonCode::SUCCESS;
    };
    loop {
        match c.recv().await.expect("receive the publish acknowledgement") {
            Some(Packet::PubAck(a)) if a.packet_id == id && qos == QoS::AtLeastOnce => {
                return a.reason_code
            }
            Some(Packet::PubRec(a)) if a.packet_id == id && qos == QoS::ExactlyOnce => {
                if a.reason_code.is_error() {
                    return a.reason_code;
                }
                c.send(&Packet::PubRel(Ack::new(id)))
                    .await
                    .expect("send PUBREL");
            }
            Some(Packet::PubComp(a)) if a.packet_id == id => return a.reason_code,
            other => panic!("unexpected {other:?} while publishing to {topic}"),
        }
    }
}

/// Publishes `payload` at QoS 1 and asserts the PUBACK is a success (0x00, or 0x10 No matching
/// subscribers in v5).
pub async fn publish_ok(c: &mut RawClient, topic: &str, payload: &[u8]) {
    let r = c
        .publish(topic, payload, QoS::AtLeastOnce, false)
        .await
        .expect("publish at QoS 1");
    assert!(
        r == ReasonCode::SUCCESS || r == ReasonCode::NO_MATCHING_SUBSCRIBERS,
        "publish to {topic}: {r:?}"
    );
}

/// Receives PUBLISHes (acknowledging QoS 1 and 2, completing PUBRELs) until nothing arrives for
/// `quiet`. Anything else than PUBLISH / PUBREL fails the test, and so does a close.
pub async fn collect(c: &mut RawClient, quiet: Duration) -> Vec<Publish> {
    let mut got = Vec::new();
    loop {
        let r = match tokio::time::timeout(quiet, c.recv()).await {
            Err(_) => return got,
            Ok(r) => r.expect("receive while collecting publishes"),
        };
        match r {
            Some(Packet::Publish(p)) => {
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => c
                        .send(&Packet::PubAck(Ack::new(id)))
                        .await
                        .expect("send PUBACK"),
                    (QoS::ExactlyOnce, Some(id)) => c
                        .send(&Packet::PubRec(Ack::new(id)))
                        .await
                        .expect("send PUBREC"),
                    _ => {}
                }
                got.push(p);
            }
            Some(Packet::PubRel(a)) => c
                .send(&Packet::PubComp(Ack::new(a.packet_id)))
                .await
                .expect("send PUBCOMP"),
            Some(other) => panic!("expected PUBLISH, got {other:?}"),
            None => panic!("connection closed while collecting publishes"),
        }
    }
}

/// Payloads as strings, in order.
pub fn payloads(ps: &[Publish]) -> Vec<String> {
    ps.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

/// The next packet, which must be a PUBLISH; it is not acknowledged.
pub async fn recv_publish(c: &mut RawClient) -> Publish {
    match c.recv().await.expect("receive a PUBLISH") {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Asserts the broker closes the connection: in v5 after exactly one DISCONNECT with `reason`,
/// in v3.1.1 (no server DISCONNECT exists) without sending anything.
pub async fn expect_disconnect(c: &mut RawClient, reason: ReasonCode) {
    let got = c.expect_closed().await.expect("the broker closes");
    match c.protocol() {
        Protocol::V5 => match got.as_slice() {
            [Packet::Disconnect(d)] => assert_eq!(
                d.reason_code, reason,
                "DISCONNECT reason {:#04x}, expected {:#04x}",
                d.reason_code.0, reason.0
            ),
            other => panic!(
                "expected DISCONNECT {:#04x} then close, got {other:?}",
                reason.0
            ),
        },
        Protocol::V311 => assert!(got.is_empty(), "v3.1.1: expected a bare close, got {got:?}"),
    }
}

/// Waits (bounded) until the node counts exactly `n` open MQTT connections: a DISCONNECT or a
/// dropped socket has been fully processed (session detached) once the count drops.
pub async fn wait_connections(node: &TestNode, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.node().connection_count() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node still has {} connections, expected {n}",
            node.node().connection_count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Stops `node` while `clients` are connected: each hears DISCONNECT 0x8B (Server shutting
/// down), the stop ends within 20 s, and nothing accepts on the node's port afterwards.
pub async fn stop_telling_clients(node: TestNode, clients: &mut [RawClient]) {
    let addr = node.addr();
    let stopping = tokio::spawn(node.stop());
    for c in clients.iter_mut() {
        expect_disconnect(c, ReasonCode::SERVER_SHUTTING_DOWN).await;
    }
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("shutdown ends")
        .expect("the stop task did not panic");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed and nothing accepts on the port any more"
    );
}

/// Waits (bounded) until the node's connection shards run `total` sockets between them
/// (`node.shards >= 1`); returns the count per shard.
pub async fn wait_shard_total(node: &TestNode, total: usize) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let live = node.node().shard_connections();
        if live.iter().sum::<usize>() == total {
            return live;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shards run {live:?}, expected {total} in all"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `bytes` on a fresh TCP connection and returns every byte the broker sends until it
/// closes (bounded by 5 s).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("TCP connect to the broker");
    stream.write_all(bytes).await.expect("send the bytes");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("broker did not close the connection")
        .expect("read until the broker closes");
    out
}
