//! A small async MQTT client over one TCP connection, built on `roost-codec`.
//!
//! It measures nothing itself: the scenarios ([`crate::idle`], [`crate::throughput`]) drive it.
//! One [`Client`] is owned by one task; there is no shared state and no lock. Reading and
//! writing share one task so that a publisher can keep a window of unacknowledged messages
//! without a second task or a channel:
//!
//! ```text
//!  scenario loop ── queue(packet) ──▶ wbuf ──┐
//!                                            ├─ next_event(): select { write(wbuf), read(rbuf) }
//!  scenario loop ◀── Event::Packet ◀── decode(rbuf) ◀──┘
//! ```
//!
//! Packets are encoded into `wbuf` as they are queued, so many publishes leave in one `write`
//! (the same batching the broker's driver does). Every wait on the network during set-up is
//! bounded by [`SETUP_TIMEOUT`]; the scenario loops bound theirs with their own deadlines.

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use roost_codec::{
    encode, Connect, Decoder, Disconnect, Packet, PacketId, Properties, Protocol, QoS, Subscribe,
    SubscriptionOptions,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for TCP connect + CONNACK, or for a SUBACK, or for a clean disconnect.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest packet we accept from the broker (whole packet). Benchmark payloads are far smaller;
/// the bound only keeps a confused broker from making us allocate without limit.
const MAX_PACKET_SIZE: u32 = 16 * 1024 * 1024;

/// What one call to [`Client::next_event`] produced.
///
/// `Packet` is as large as [`Packet`] itself; boxing it would cost an allocation per received
/// message, and an `Event` only lives from `next_event` to the `match` that consumes it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Event {
    /// A whole packet from the broker.
    Packet(Packet),
    /// Some queued bytes went to the kernel (the write buffer shrank; it may not be empty).
    Wrote,
    /// The broker closed the connection (EOF).
    Closed,
}

/// How a client introduces itself.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    /// Client identifier; unique per connection within a run.
    pub(crate) client_id: String,
    /// MQTT 3.1.1 or 5.0.
    pub(crate) protocol: Protocol,
    /// Keep-alive seconds announced in CONNECT; the scenario sends PINGREQ at half of it.
    pub(crate) keep_alive: u16,
    /// Bytes reserved for reads at a time. Small for idle connections (their memory is what the
    /// idle scenario is about, on the broker side, but 5,000 of ours share the machine), large
    /// for throughput clients so one read takes many messages.
    pub(crate) read_chunk: usize,
}

/// One MQTT connection: a socket, a decoder and the two buffers.
#[derive(Debug)]
pub(crate) struct Client {
    stream: TcpStream,
    decoder: Decoder,
    protocol: Protocol,
    /// Bytes read but not yet decoded (a partial packet stays here across calls).
    rbuf: BytesMut,
    /// Encoded packets not yet taken by the kernel.
    wbuf: BytesMut,
    read_chunk: usize,
    /// Last packet id handed out; ids cycle 1..=65535.
    last_packet_id: u16,
    /// Receive Maximum the server announced in CONNACK (v5 §3.2.2.3.3); 65,535 when absent,
    /// and for v3.1.1. Publishers keep their window at or below it.
    server_receive_maximum: u16,
}

impl Client {
    /// Connects, sends CONNECT (clean start, no will, no credentials) and waits for a successful
    /// CONNACK, all within [`SETUP_TIMEOUT`].
    pub(crate) async fn connect(addr: SocketAddr, options: &ConnectOptions) -> Result<Client> {
        tokio::time::timeout(SETUP_TIMEOUT, Self::connect_inner(addr, options))
            .await
            .map_err(|_| anyhow!("no CONNACK from {addr} within {SETUP_TIMEOUT:?}"))?
    }

    async fn connect_inner(addr: SocketAddr, options: &ConnectOptions) -> Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            decoder: Decoder::client(options.protocol, MAX_PACKET_SIZE),
            protocol: options.protocol,
            rbuf: BytesMut::with_capacity(options.read_chunk),
            wbuf: BytesMut::with_capacity(64),
            read_chunk: options.read_chunk,
            last_packet_id: 0,
            server_receive_maximum: u16::MAX,
        };
        client.queue(&Packet::Connect(Box::new(Connect {
            variant: Default::default(),
            protocol: options.protocol,
            clean_start: true,
            keep_alive: options.keep_alive,
            client_id: options.client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })))?;
        client.flush().await?;
        match client.recv().await? {
            Some(Packet::ConnAck(ack)) => {
                if ack.reason_code.is_error() {
                    bail!(
                        "CONNACK refused with reason code 0x{:02X}",
                        ack.reason_code.0
                    );
                }
                if let Some(max) = ack.properties.receive_maximum {
                    client.server_receive_maximum = max;
                }
                Ok(client)
            }
            Some(other) => bail!("expected CONNACK, got {}", other.kind()),
            None => bail!("connection closed before CONNACK"),
        }
    }

    /// The broker's Receive Maximum (how many QoS 1/2 publishes it lets us have in flight).
    pub(crate) fn server_receive_maximum(&self) -> u16 {
        self.server_receive_maximum
    }

    /// The next packet id (1..=65535, wrapping). Callers with a window far below 65,535 never
    /// reuse an id that is still in flight.
    pub(crate) fn next_packet_id(&mut self) -> PacketId {
        self.last_packet_id = following_packet_id(self.last_packet_id);
        PacketId::new(self.last_packet_id).expect("following_packet_id is never 0")
    }

    /// Encodes `packet` onto the write buffer; nothing is sent until [`Client::next_event`] or
    /// [`Client::flush`].
    pub(crate) fn queue(&mut self, packet: &Packet) -> Result<()> {
        encode(packet, self.protocol, &mut self.wbuf)
            .with_context(|| format!("cannot encode {}", packet.kind()))
    }

    /// Bytes queued but not yet written.
    pub(crate) fn pending_write(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes everything queued.
    ///
    /// Cancel safety: safe; bytes the kernel took are removed from the buffer, the rest stay
    /// queued (`write_all_buf` advances the buffer as it goes).
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.stream
            .write_all_buf(&mut self.wbuf)
            .await
            .context("write to broker failed")
    }

    /// Waits for the next packet, reading only (the write buffer is left alone). `None` when
    /// the broker closed the connection.
    ///
    /// Cancel safety: safe; a partial packet stays in `rbuf`.
    pub(crate) async fn recv(&mut self) -> Result<Option<Packet>> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(Some(packet));
            }
            self.rbuf.reserve(self.read_chunk);
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .context("read from broker failed")?;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Makes progress in both directions: returns the next decoded packet, or [`Event::Wrote`]
    /// when some queued bytes were written, or [`Event::Closed`] at EOF.
    ///
    /// Cancel safety: safe. A partial packet stays in `rbuf`; `read_buf` and `write` either
    /// complete (and the buffers are updated before returning) or transfer nothing.
    pub(crate) async fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(Event::Packet(packet));
            }
            self.rbuf.reserve(self.read_chunk);
            let (mut reader, mut writer) = self.stream.split();
            if self.wbuf.is_empty() {
                let n = reader
                    .read_buf(&mut self.rbuf)
                    .await
                    .context("read from broker failed")?;
                if n == 0 {
                    return Ok(Event::Closed);
                }
                continue;
            }
            tokio::select! {
                read = reader.read_buf(&mut self.rbuf) => {
                    if read.context("read from broker failed")? == 0 {
                        return Ok(Event::Closed);
                    }
                }
                written = writer.write(&self.wbuf) => {
                    let n = written.context("write to broker failed")?;
                    if n == 0 {
                        return Ok(Event::Closed);
                    }
                    self.wbuf.advance(n);
                    return Ok(Event::Wrote);
                }
            }
        }
    }

    /// Subscribes to each filter at `qos` in one SUBSCRIBE and waits (bounded) for a SUBACK
    /// granting every one of them. Must be called before anything is published to us: any
    /// other packet arriving first is an error.
    pub(crate) async fn subscribe(&mut self, filters: &[String], qos: QoS) -> Result<()> {
        let packet_id = self.next_packet_id();
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: filters.iter().map(|f| (f.clone(), options)).collect(),
        }))?;
        let wait = async {
            self.flush().await?;
            match self.recv().await? {
                Some(Packet::SubAck(ack)) if ack.packet_id == packet_id => Ok(ack),
                Some(other) => bail!("expected SUBACK, got {}", other.kind()),
                None => bail!("connection closed before SUBACK"),
            }
        };
        let ack = tokio::time::timeout(SETUP_TIMEOUT, wait)
            .await
            .map_err(|_| anyhow!("no SUBACK within {SETUP_TIMEOUT:?}"))??;
        if ack.reason_codes.len() != filters.len() {
            bail!(
                "SUBACK has {} reason codes for {} filters",
                ack.reason_codes.len(),
                filters.len()
            );
        }
        for (filter, code) in filters.iter().zip(&ack.reason_codes) {
            if code.is_error() {
                bail!("subscription to {filter} refused: 0x{:02X}", code.0);
            }
        }
        Ok(())
    }

    /// Sends DISCONNECT (normal disconnection), flushes and closes our side, bounded by
    /// [`SETUP_TIMEOUT`].
    pub(crate) async fn disconnect(mut self) -> Result<()> {
        self.queue(&Packet::Disconnect(Disconnect::default()))?;
        let close = async {
            self.flush().await?;
            self.stream.shutdown().await.context("shutdown failed")
        };
        tokio::time::timeout(SETUP_TIMEOUT, close)
            .await
            .map_err(|_| anyhow!("disconnect not written within {SETUP_TIMEOUT:?}"))?
    }
}

/// The id after `last`: 1..=65535, wrapping from 65,535 to 1, never 0 ([MQTT-2.2.1-3]).
fn following_packet_id(last: u16) -> u16 {
    last % u16::MAX + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_codec::Publish;
    use roost_testkit::TestNode;

    fn options(id: &str) -> ConnectOptions {
        ConnectOptions {
            client_id: id.to_owned(),
            protocol: Protocol::V5,
            keep_alive: 30,
            read_chunk: 256,
        }
    }

    #[tokio::test]
    async fn publish_reaches_a_subscriber_and_ping_is_answered() -> Result<()> {
        let node = TestNode::start().await?;
        let mut sub = Client::connect(node.addr(), &options("sub")).await?;
        sub.subscribe(&["t/#".to_owned()], QoS::AtLeastOnce).await?;
        let mut publisher = Client::connect(node.addr(), &options("pub")).await?;
        let packet_id = publisher.next_packet_id();
        publisher.queue(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t/1".to_owned(),
            packet_id: Some(packet_id),
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"hello"),
        }))?;
        publisher.queue(&Packet::PingReq)?;
        let mut acked = false;
        let mut ponged = false;
        while !(acked && ponged) {
            match tokio::time::timeout(SETUP_TIMEOUT, publisher.next_event()).await?? {
                Event::Packet(Packet::PubAck(a)) => acked = a.packet_id == packet_id,
                Event::Packet(Packet::PingResp) => ponged = true,
                Event::Packet(p) => bail!("unexpected {}", p.kind()),
                Event::Wrote => {}
                Event::Closed => bail!("closed"),
            }
        }
        match tokio::time::timeout(SETUP_TIMEOUT, sub.recv()).await?? {
            Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"hello"),
            other => bail!("expected PUBLISH, got {other:?}"),
        }
        publisher.disconnect().await?;
        sub.disconnect().await?;
        node.stop().await;
        Ok(())
    }

    #[test]
    fn packet_ids_wrap_without_zero() {
        assert_eq!(following_packet_id(0), 1);
        assert_eq!(following_packet_id(1), 2);
        assert_eq!(following_packet_id(u16::MAX - 1), u16::MAX);
        assert_eq!(following_packet_id(u16::MAX), 1);
    }
}
