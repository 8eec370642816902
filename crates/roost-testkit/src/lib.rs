//! The test kit, dev-only: everything the wire, admin and load tests share.
//!
//! - [`TestNode`]: an in-process node on `127.0.0.1:0` with its own data directory.
//! - [`RawClient`]: a raw MQTT client built on our own codec that can send any packet, or any
//!   bytes, and observe exactly what the broker answers; [`connect_packet`] for its CONNECTs.
//! - [`packets`]: packet builders (persistent CONNECTs, wills, PUBLISHes with properties) and
//!   hand-assembled bytes for malformed-input tests.
//! - [`steps`]: asserting steps over `RawClient` (connect, publish, collect, expect a
//!   disconnect, wait for the node to settle) that panic on anything unexpected.
//! - [`cluster`]: two nodes forming a cluster ([`two_nodes_with`]), optionally with a
//!   [`Proxy`] that cuts node 2 off without stopping it.
//! - [`admin`]: the admin HTTP API ([`http`], [`http_at`], [`http_with`]) on hyper, and
//!   [`metric`] to read a Prometheus counter.
//!
//! Everything is re-exported here, so a test file starts with `use roost_testkit::*;`. Every
//! wait is bounded ([`RECV_TIMEOUT`], [`HTTP_TIMEOUT`]) so a broken broker fails a test instead
//! of hanging it.

pub mod admin;
pub mod cluster;
pub mod packets;
pub mod pki;
pub mod proxy;
pub mod steps;

pub use admin::{http, http_at, http_with, metric, HttpResponse, HTTP_TIMEOUT};
pub use cluster::{free_port, nodes_with, two_nodes_with};
pub use packets::{connect_v5, persistent_packet, pid, pkt, publish_packet, s, will, BOTH, EXPIRY};
pub use proxy::Proxy;
pub use steps::{
    collect, connect_clean, connect_persistent, connect_when_served, connect_with,
    expect_disconnect, payloads, publish_ok, publish_with, raw_exchange, recv_publish,
    stop_telling_clients, wait_connections, wait_shard_total, SILENCE,
};

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use roost_codec::{
    encode, Ack, ConnAck, Connect, Decoder, Packet, PacketId, Properties, Protocol, Publish, QoS,
    SubAck, Subscribe, SubscriptionOptions,
};
use roost_node::{Config, Node};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single expected packet may take.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// A node running inside the test process, with its own temporary data directory.
pub struct TestNode {
    node: Node,
    /// The admin token the node was configured with, sent by [`http`].
    admin_token: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts a node with defaults on ephemeral ports.
    pub async fn start() -> anyhow::Result<TestNode> {
        Self::start_with(|_| {}).await
    }

    /// Starts a node after `tweak` adjusted the config (ports and data dir are set first).
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<TestNode> {
        let dir = tempfile::tempdir()?;
        let mut config = Config::default();
        config.mqtt.listen = "127.0.0.1:0".parse()?;
        config.http.listen = "127.0.0.1:0".parse()?;
        config.node.data_dir = dir.path().to_path_buf();
        config.node.sys_interval_secs = 0;
        // A cluster of one on an ephemeral port, with fast elections so tests start quickly.
        config.cluster.listen = "127.0.0.1:0".parse()?;
        config.cluster.heartbeat_ms = 50;
        config.cluster.election_timeout_ms = 300;
        tweak(&mut config);
        // An unreadable token file is reported by `Node::start` below.
        let admin_token = config
            .http
            .admin_token()
            .ok()
            .flatten()
            .map(|t| t.expose().to_owned());
        let node = Node::start(config, None).await?;
        if !node.wait_ready(Duration::from_secs(10)).await {
            anyhow::bail!("node did not become ready (no Raft leader) within 10 s");
        }
        Ok(TestNode {
            node,
            admin_token,
            _dir: dir,
        })
    }

    /// The MQTT address.
    pub fn addr(&self) -> SocketAddr {
        self.node.mqtt_addr()
    }

    /// The admin HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.node.http_addr()
    }

    /// The admin API token the node requires, if one was configured.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// The node itself.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Graceful shutdown.
    pub async fn stop(self) {
        self.node.shutdown().await;
    }
}

/// A raw MQTT client over TCP.
pub struct RawClient {
    /// TCP, or any other byte stream (a QUIC stream: [`RawClient::over`]).
    stream: Box<dyn ClientIo>,
    decoder: Decoder,
    protocol: Protocol,
    buf: BytesMut,
    next_id: u16,
    /// The DISCONNECT the broker sent, if it sent one (its reason and Server Reference).
    disconnect: Option<roost_codec::Disconnect>,
}

/// What a [`RawClient`] talks over: any tokio byte stream.
pub trait ClientIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> ClientIo for T {}

impl RawClient {
    /// Opens a TCP connection; nothing is sent yet.
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> anyhow::Result<RawClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawClient::over(stream, protocol))
    }

    /// A client over an already open byte stream (TLS, WebSocket, a QUIC stream from
    /// `roost_transport::quic::connect`); nothing is sent yet.
    pub fn over(stream: impl ClientIo, protocol: Protocol) -> RawClient {
        RawClient {
            stream: Box::new(stream),
            decoder: Decoder::client(protocol, 268_435_460),
            protocol,
            buf: BytesMut::new(),
            next_id: 0,
            disconnect: None,
        }
    }

    /// Opens a connection and completes CONNECT/CONNACK with a success.
    pub async fn connect(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: &str,
        clean_start: bool,
    ) -> anyhow::Result<(RawClient, ConnAck)> {
        let mut c = Self::open(addr, protocol).await?;
        let ack = c
            .handshake(connect_packet(protocol, client_id, clean_start))
            .await?;
        if ack.reason_code.is_error() {
            bail!("CONNACK refused: {:?}", ack.reason_code);
        }
        Ok((c, ack))
    }

    /// Sends a CONNECT and returns the CONNACK, whatever its code.
    pub async fn handshake(&mut self, connect: Connect) -> anyhow::Result<ConnAck> {
        self.send(&Packet::Connect(Box::new(connect))).await?;
        match self.recv().await? {
            Some(Packet::ConnAck(a)) => Ok(a),
            other => Err(anyhow!("expected CONNACK, got {other:?}")),
        }
    }

    /// The DISCONNECT the broker sent on this connection, if any was read (whatever read it:
    /// [`publish`](Self::publish) fails on it, and this keeps its reason code and Server
    /// Reference for the caller).
    pub fn broker_disconnect(&self) -> Option<&roost_codec::Disconnect> {
        self.disconnect.as_ref()
    }

    /// The protocol this client speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Encodes and sends one packet.
    pub async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        encode(packet, self.protocol, &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Sends raw bytes (malformed-input tests).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next packet, `None` if the broker closed the connection. Fails after
    /// [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> anyhow::Result<Option<Packet>> {
        self.recv_within(RECV_TIMEOUT).await
    }

    /// Like [`recv`](Self::recv) with a custom bound; a timeout is an error.
    pub async fn recv_within(&mut self, limit: Duration) -> anyhow::Result<Option<Packet>> {
        tokio::time::timeout(limit, self.recv_inner())
            .await
            .map_err(|_| anyhow!("no packet within {limit:?}"))?
    }

    async fn recv_inner(&mut self) -> anyhow::Result<Option<Packet>> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf)? {
                if let Packet::Disconnect(d) = &p {
                    self.disconnect = Some(d.clone());
                }
                return Ok(Some(p));
            }
            self.buf.reserve(4096);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// True if nothing arrives within `limit` (and the connection stays open).
    pub async fn expect_silence(&mut self, limit: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(limit, self.recv_inner()).await {
            Err(_) => Ok(()),
            Ok(Ok(Some(p))) => Err(anyhow!("expected silence, got {p:?}")),
            Ok(Ok(None)) => Err(anyhow!("expected silence, connection closed")),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Waits for the broker to close the connection; returns the packets it sent first.
    pub async fn expect_closed(&mut self) -> anyhow::Result<Vec<Packet>> {
        let mut got = Vec::new();
        loop {
            match self.recv().await.context("waiting for close")? {
                Some(p) => got.push(p),
                None => return Ok(got),
            }
        }
    }

    /// A fresh packet id.
    pub fn next_packet_id(&mut self) -> PacketId {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        PacketId::new(self.next_id).unwrap_or(PacketId::new(1).expect("1 is non-zero"))
    }

    /// Subscribes to one filter and waits for the SUBACK (PUBLISHes that arrive before it are
    /// returned too, in order).
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: QoS,
    ) -> anyhow::Result<(SubAck, Vec<Packet>)> {
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        self.subscribe_with(filter, options, Properties::default())
            .await
    }

    /// Subscribes with explicit options and properties.
    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        properties: Properties,
    ) -> anyhow::Result<(SubAck, Vec<Packet>)> {
        let packet_id = self.next_packet_id();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties,
            filters: vec![(filter.to_owned(), options)],
        }))
        .await?;
        let mut before = Vec::new();
        loop {
            match self.recv().await? {
                Some(Packet::SubAck(a)) if a.packet_id == packet_id => return Ok((a, before)),
                Some(p) => before.push(p),
                None => bail!("closed while waiting for SUBACK"),
            }
        }
    }

    /// Publishes and, for QoS 1/2, completes the handshake. Returns the ack's reason code.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> anyhow::Result<roost_codec::ReasonCode> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.next_packet_id());
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.to_owned(),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload),
        }))
        .await?;
        let Some(id) = packet_id else {
            return Ok(roost_codec::ReasonCode::SUCCESS);
        };
        loop {
            match self.recv().await? {
                Some(Packet::PubAck(a)) if a.packet_id == id && qos == QoS::AtLeastOnce => {
                    return Ok(a.reason_code)
                }
                Some(Packet::PubRec(a)) if a.packet_id == id && qos == QoS::ExactlyOnce => {
                    if a.reason_code.is_error() {
                        return Ok(a.reason_code);
                    }
                    self.send(&Packet::PubRel(Ack::new(id))).await?;
                }
                Some(Packet::PubComp(a)) if a.packet_id == id => return Ok(a.reason_code),
                Some(other) => bail!("unexpected {other:?} while publishing"),
                None => bail!("closed while publishing"),
            }
        }
    }

    /// Waits for the next PUBLISH, acknowledging QoS 1 (PUBACK) and QoS 2 (PUBREC, then
    /// PUBCOMP when the PUBREL comes) so the broker's window keeps moving.
    pub async fn next_publish(&mut self) -> anyhow::Result<Publish> {
        loop {
            match self.recv().await? {
                Some(Packet::Publish(p)) => {
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            self.send(&Packet::PubAck(Ack::new(id))).await?
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            self.send(&Packet::PubRec(Ack::new(id))).await?
                        }
                        _ => {}
                    }
                    return Ok(p);
                }
                Some(Packet::PubRel(a)) => {
                    self.send(&Packet::PubComp(Ack::new(a.packet_id))).await?;
                }
                Some(other) => bail!("expected PUBLISH, got {other:?}"),
                None => bail!("closed while waiting for PUBLISH"),
            }
        }
    }

    /// Sends DISCONNECT (reason 0x00) and closes.
    pub async fn disconnect(mut self) -> anyhow::Result<()> {
        self.send(&Packet::Disconnect(roost_codec::Disconnect::default()))
            .await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}

/// A CONNECT with keep-alive 60 and no will.
pub fn connect_packet(protocol: Protocol, client_id: &str, clean_start: bool) -> Connect {
    Connect {
        variant: Default::default(),
        protocol,
        clean_start,
        keep_alive: 60,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}
