//! Helpers shared by the wire tests: CONNECT builders, PUBLISH with properties, raw packet
//! bytes, "the broker closed this connection with reason X", a minimal HTTP/1.1 client for the
//! admin API and a Prometheus metric reader.
//!
//! Every wait is bounded: a broken broker fails a test, it never hangs one.
#![allow(dead_code, clippy::unwrap_used)]

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use roost_codec::{
    Ack, ConnAck, Connect, LastWill, Packet, PacketId, Properties, Protocol, Publish, QoS,
    ReasonCode,
};
use roost_testkit::{connect_packet, RawClient, TestNode};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Both protocol versions, for tests that hold for each.
pub(crate) const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

/// How long "nothing more arrives" is watched for in real-time tests.
pub(crate) const SILENCE: Duration = Duration::from_millis(300);

/// Session expiry used for v5 persistent sessions.
pub(crate) const EXPIRY: u32 = 300;

pub(crate) fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

/// A CONNECT with keep-alive 60, no will and the given v5 properties.
pub(crate) fn connect_v5(client_id: &str, clean_start: bool, properties: Properties) -> Connect {
    Connect {
        properties,
        ..connect_packet(Protocol::V5, client_id, clean_start)
    }
}

/// A will message (QoS 1, not retained) with the given v5 will properties.
pub(crate) fn will(topic: &str, payload: &[u8], properties: Properties) -> LastWill {
    LastWill {
        topic: topic.to_owned(),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
    }
}

/// Connects with an arbitrary CONNECT and insists on CONNACK success.
pub(crate) async fn connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
    let mut c = RawClient::open(addr, connect.protocol).await.unwrap();
    let ack = c.handshake(connect).await.unwrap();
    assert_eq!(
        ack.reason_code,
        ReasonCode::SUCCESS,
        "CONNACK refused: {ack:?}"
    );
    (c, ack)
}

/// A CONNECT for a session that outlives the connection: Clean Start / Clean Session 0, and in
/// v5 a Session Expiry Interval of [`EXPIRY`].
pub(crate) fn persistent_packet(protocol: Protocol, client_id: &str) -> Connect {
    let mut c = connect_packet(protocol, client_id, false);
    if protocol == Protocol::V5 {
        c.properties.session_expiry_interval = Some(EXPIRY);
    }
    c
}

/// Connects (or resumes) a persistent session.
pub(crate) async fn connect_persistent(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
) -> (RawClient, ConnAck) {
    connect_with(addr, persistent_packet(protocol, client_id)).await
}

/// Connects a client whose session ends with the connection.
pub(crate) async fn connect_clean(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
) -> RawClient {
    RawClient::connect(addr, protocol, client_id, true)
        .await
        .unwrap()
        .0
}

/// A PUBLISH packet.
pub(crate) fn publish_packet(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    packet_id: Option<PacketId>,
    properties: Properties,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id,
        properties,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Publishes with v5 properties and completes the QoS handshake; returns the (first error or
/// final) reason code.
pub(crate) async fn publish_with(
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
        .unwrap();
    let Some(id) = id else {
        return ReasonCode::SUCCESS;
    };
    loop {
        match c.recv().await.unwrap() {
            Some(Packet::PubAck(a)) if a.packet_id == id && qos == QoS::AtLeastOnce => {
                return a.reason_code
            }
            Some(Packet::PubRec(a)) if a.packet_id == id && qos == QoS::ExactlyOnce => {
                if a.reason_code.is_error() {
                    return a.reason_code;
                }
                c.send(&Packet::PubRel(Ack::new(id))).await.unwrap();
            }
            Some(Packet::PubComp(a)) if a.packet_id == id => return a.reason_code,
            other => panic!("unexpected {other:?} while publishing to {topic}"),
        }
    }
}

/// Publishes `payload` at QoS 1 and asserts the PUBACK is a success (0x00, or 0x10 No matching
/// subscribers in v5).
pub(crate) async fn publish_ok(c: &mut RawClient, topic: &str, payload: &[u8]) {
    let r = c
        .publish(topic, payload, QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(
        r == ReasonCode::SUCCESS || r == ReasonCode::NO_MATCHING_SUBSCRIBERS,
        "publish to {topic}: {r:?}"
    );
}

/// Receives PUBLISHes (acknowledging QoS 1 and 2, completing PUBRELs) until nothing arrives for
/// `quiet`. Anything else than PUBLISH / PUBREL fails the test, and so does a close.
pub(crate) async fn collect(c: &mut RawClient, quiet: Duration) -> Vec<Publish> {
    let mut got = Vec::new();
    loop {
        let r = match tokio::time::timeout(quiet, c.recv()).await {
            Err(_) => return got,
            Ok(r) => r.unwrap(),
        };
        match r {
            Some(Packet::Publish(p)) => {
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        c.send(&Packet::PubAck(Ack::new(id))).await.unwrap()
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        c.send(&Packet::PubRec(Ack::new(id))).await.unwrap()
                    }
                    _ => {}
                }
                got.push(p);
            }
            Some(Packet::PubRel(a)) => c
                .send(&Packet::PubComp(Ack::new(a.packet_id)))
                .await
                .unwrap(),
            Some(other) => panic!("expected PUBLISH, got {other:?}"),
            None => panic!("connection closed while collecting publishes"),
        }
    }
}

/// Payloads as strings, in order.
pub(crate) fn payloads(ps: &[Publish]) -> Vec<String> {
    ps.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

/// The next packet, which must be a PUBLISH; it is not acknowledged.
pub(crate) async fn recv_publish(c: &mut RawClient) -> Publish {
    match c.recv().await.unwrap() {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Asserts the broker closes the connection: in v5 after exactly one DISCONNECT with `reason`,
/// in v3.1.1 (no server DISCONNECT exists) without sending anything.
pub(crate) async fn expect_disconnect(c: &mut RawClient, reason: ReasonCode) {
    let got = c.expect_closed().await.unwrap();
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
pub(crate) async fn wait_connections(node: &TestNode, n: usize) {
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

/// A whole packet: first byte, remaining length (variable byte integer), body.
pub(crate) fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string / binary field.
pub(crate) fn s(x: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(x.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(x);
    out
}

/// Sends `bytes` on a fresh TCP connection and returns every byte the broker sends until it
/// closes (bounded by 5 s).
pub(crate) async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("broker did not close the connection")
        .unwrap();
    out
}

/// One admin HTTP response.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl HttpResponse {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .with_context(|| format!("not JSON: {:?}", self.body))
            .unwrap()
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.1 request with `Connection: close`; the response is read to EOF.
pub(crate) async fn http(
    node: &TestNode,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> HttpResponse {
    http_at(
        node.http_addr().expect("admin HTTP enabled"),
        method,
        path,
        body,
    )
    .await
    .unwrap()
}

async fn http_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| anyhow!("HTTP response not finished within 5 s"))??;
    let text = String::from_utf8(raw)?;
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_owned()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or_else(|| anyhow!("bad chunk"))?;
        let n = usize::from_str_radix(size.trim(), 16)?;
        if n == 0 {
            return Ok(out);
        }
        if rest.len() < n + 2 {
            bail!("short chunk");
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// The sum of every sample of metric `name` (all label sets) in `GET /metrics`; 0 if absent.
/// The recorder is process-wide, shared by every node of a test binary, so compare before and
/// after values, never absolute ones.
pub(crate) async fn metric(node: &TestNode, name: &str) -> f64 {
    let r = http(node, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut total = 0.0;
    for line in r.body.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().unwrap_or_default();
        total += value.parse::<f64>().unwrap_or(0.0);
    }
    total
}
