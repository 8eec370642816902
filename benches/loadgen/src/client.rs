//! A small async MQTT client over one connection (TCP, TLS or QUIC: [`crate::transport`]),
//! built on `roost-codec`.
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
//!
//! The stream is a boxed `AsyncRead + AsyncWrite` ([`Io`]). Reading and writing at once needs
//! no split: [`Client::next_event`] polls the write and the read on the same stream, one after
//! the other, inside one `poll_fn`, and keeps whatever either did. Over TCP this is what
//! `TcpStream::split` + `select!` did before, without the split (no copy, no allocation).

use crate::transport::{Dialer, Io};
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use roost_codec::{
    encode, Ack, Connect, Decoder, Disconnect, Packet, PacketId, Properties, Protocol, QoS,
    Subscribe, SubscriptionOptions,
};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for connect (with the TLS or QUIC handshake) + CONNACK, or for a SUBACK, or for
/// a clean disconnect.
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
    /// TCP, TLS or QUIC, with what the handshake needs.
    pub(crate) dialer: Dialer,
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
    /// `Some(secs)`: a persistent session, whose state the broker keeps past the connection
    /// (in a cluster, a session the node registers with its peers). v5: clean start with that
    /// Session Expiry Interval, and [`Client::disconnect`] sets it to 0 so the session ends
    /// with the run; v3.1.1: clean session 0, which has no way to end it at disconnect (the
    /// broker keeps it until its own limit). `None`: a clean, non-persistent session.
    pub(crate) session_expiry: Option<u32>,
}

impl ConnectOptions {
    /// A session kept past the connection: an expiry above 0 (0 is a clean session).
    fn persistent(&self) -> bool {
        self.session_expiry.is_some_and(|s| s > 0)
    }

    /// The CONNECT these options make: no will, no credentials.
    fn connect_packet(&self) -> Connect {
        let v5 = self.protocol == Protocol::V5;
        let mut properties = Properties::default();
        if v5 {
            properties.session_expiry_interval = self.session_expiry;
        }
        Connect {
            variant: Default::default(),
            protocol: self.protocol,
            // v3.1.1 keeps a session past the connection only without a clean start.
            clean_start: v5 || !self.persistent(),
            keep_alive: self.keep_alive,
            client_id: self.client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties,
        }
    }
}

/// One MQTT connection: a byte stream, a decoder and the two buffers.
pub(crate) struct Client {
    stream: Box<dyn Io>,
    decoder: Decoder,
    protocol: Protocol,
    /// Bytes read but not yet decoded (a partial packet stays here across calls).
    rbuf: BytesMut,
    /// The broker closed its side; reported once `rbuf` holds no whole packet.
    eof: bool,
    /// Encoded packets not yet taken by the kernel.
    wbuf: BytesMut,
    read_chunk: usize,
    /// Last packet id handed out; ids cycle 1..=65535.
    last_packet_id: u16,
    /// Receive Maximum the server announced in CONNACK (v5 §3.2.2.3.3); 65,535 when absent,
    /// and for v3.1.1. Publishers keep their window at or below it.
    server_receive_maximum: u16,
    /// A v5 persistent session ([`ConnectOptions::session_expiry`]): DISCONNECT ends it.
    end_session: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("protocol", &self.protocol)
            .field("rbuf", &self.rbuf.len())
            .field("wbuf", &self.wbuf.len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with `options.dialer` (TCP, or the TLS or QUIC handshake too), sends CONNECT
    /// (clean start, no will, no credentials) and waits for a successful CONNACK, all within
    /// [`SETUP_TIMEOUT`].
    pub(crate) async fn connect(addr: SocketAddr, options: &ConnectOptions) -> Result<Client> {
        tokio::time::timeout(SETUP_TIMEOUT, Self::connect_inner(addr, options))
            .await
            .map_err(|_| anyhow!("no CONNACK from {addr} within {SETUP_TIMEOUT:?}"))?
    }

    async fn connect_inner(addr: SocketAddr, options: &ConnectOptions) -> Result<Client> {
        let stream = options.dialer.dial(addr).await?;
        let mut client = Client {
            stream,
            decoder: Decoder::client(options.protocol, MAX_PACKET_SIZE),
            protocol: options.protocol,
            rbuf: BytesMut::with_capacity(options.read_chunk),
            eof: false,
            wbuf: BytesMut::with_capacity(64),
            read_chunk: options.read_chunk,
            last_packet_id: 0,
            server_receive_maximum: u16::MAX,
            end_session: options.protocol == Protocol::V5 && options.persistent(),
        };
        client.queue(&Packet::Connect(Box::new(options.connect_packet())))?;
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

    /// Writes everything queued, and flushes the stream (TLS: records rustls still holds; TCP
    /// and QUIC: nothing to do).
    ///
    /// Cancel safety: safe; bytes the stream took are removed from the buffer, the rest stay
    /// queued (`write_all_buf` advances the buffer as it goes).
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.stream
            .write_all_buf(&mut self.wbuf)
            .await
            .context("write to broker failed")?;
        self.stream.flush().await.context("write to broker failed")
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
            if self.eof {
                return Ok(None);
            }
            self.rbuf.reserve(self.read_chunk);
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .context("read from broker failed")?;
            if n == 0 {
                self.eof = true;
                return Ok(None);
            }
        }
    }

    /// Makes progress in both directions: returns the next decoded packet, or [`Event::Wrote`]
    /// when some queued bytes were written, or [`Event::Closed`] at EOF.
    ///
    /// Cancel safety: safe. A partial packet stays in `rbuf`. Each poll of the stream either
    /// completes (and the buffer it touched is updated in the same poll, before this future
    /// can be dropped) or transfers nothing; see [`Client::poll_progress`].
    pub(crate) async fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(Event::Packet(packet));
            }
            if self.eof {
                return Ok(Event::Closed);
            }
            self.rbuf.reserve(self.read_chunk);
            let Progress { wrote, read } = poll_fn(|cx| self.poll_progress(cx)).await?;
            if let Some(n) = read {
                self.eof |= n == 0;
            }
            match wrote {
                Some(0) => return Ok(Event::Closed),
                Some(_) => return Ok(Event::Wrote),
                // Only read: decode what came (or report the end) at the top of the loop.
                None => {}
            }
        }
    }

    /// One poll of both directions: the write (when bytes are queued; otherwise a flush, which
    /// only TLS needs, to push records rustls holds), then the read. Ready when either moved
    /// bytes; both may have. Whatever a stream call took or gave is applied to `wbuf` / `rbuf`
    /// here, so nothing is lost if the caller's future is dropped after this returns.
    ///
    /// Over TCP both calls are the same `poll_write` / `poll_read` the old `select!` over the
    /// split halves made; readiness is cached by tokio, so a call that cannot progress makes no
    /// system call.
    fn poll_progress(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<Progress>> {
        let mut progress = Progress {
            wrote: None,
            read: None,
        };
        if self.wbuf.is_empty() {
            let flushed = pin!(self.stream.flush()).poll(cx);
            if let Poll::Ready(Err(e)) = flushed {
                return Poll::Ready(Err(anyhow!(e).context("write to broker failed")));
            }
        } else {
            let written = pin!(self.stream.write(&self.wbuf)).poll(cx);
            if let Poll::Ready(written) = written {
                let n = written.context("write to broker failed")?;
                self.wbuf.advance(n);
                progress.wrote = Some(n);
            }
        }
        let read = pin!(self.stream.read_buf(&mut self.rbuf)).poll(cx);
        if let Poll::Ready(read) = read {
            progress.read = Some(read.context("read from broker failed")?);
        }
        if progress.wrote.is_none() && progress.read.is_none() {
            Poll::Pending
        } else {
            Poll::Ready(Ok(progress))
        }
    }

    /// Subscribes to each filter at `qos` in one SUBSCRIBE and waits (bounded) for a SUBACK
    /// granting every one of them. Returns how many PUBLISH packets arrived before the SUBACK:
    /// the server may start sending matching messages before it (MQTT 3.1.1 §3.8.4, v5
    /// §3.8.4), e.g. a previous run's backlog on `bench/#`. They are acknowledged as their QoS
    /// requires (a PUBREL that follows later is the scenario loop's to answer) and otherwise
    /// dropped; the scenarios subscribe before their own publishers start, so none is theirs.
    /// Any other packet before the SUBACK is an error.
    pub(crate) async fn subscribe(&mut self, filters: &[String], qos: QoS) -> Result<u64> {
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
        let mut early = 0;
        let wait = async {
            loop {
                self.flush().await?;
                match self.recv().await? {
                    Some(Packet::SubAck(ack)) if ack.packet_id == packet_id => return Ok(ack),
                    Some(Packet::Publish(p)) => {
                        early += 1;
                        match (p.qos, p.packet_id) {
                            (QoS::AtLeastOnce, Some(id)) => {
                                self.queue(&Packet::PubAck(Ack::new(id)))?
                            }
                            (QoS::ExactlyOnce, Some(id)) => {
                                self.queue(&Packet::PubRec(Ack::new(id)))?
                            }
                            _ => {}
                        }
                    }
                    Some(Packet::PubRel(rel)) => {
                        self.queue(&Packet::PubComp(Ack::new(rel.packet_id)))?
                    }
                    Some(other) => bail!("expected SUBACK, got {}", other.kind()),
                    None => bail!("connection closed before SUBACK"),
                }
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
        Ok(early)
    }

    /// Sends DISCONNECT (normal disconnection), flushes and closes our side, bounded by
    /// [`SETUP_TIMEOUT`].
    pub(crate) async fn disconnect(mut self) -> Result<()> {
        let mut disconnect = Disconnect::default();
        if self.end_session {
            // [MQTT-3.14.2.2.2]: a non-zero interval from CONNECT may be set to 0 here.
            disconnect.properties.session_expiry_interval = Some(0);
        }
        self.queue(&Packet::Disconnect(disconnect))?;
        let close = async {
            self.flush().await?;
            self.stream.shutdown().await.context("shutdown failed")
        };
        tokio::time::timeout(SETUP_TIMEOUT, close)
            .await
            .map_err(|_| anyhow!("disconnect not written within {SETUP_TIMEOUT:?}"))?
    }
}

/// What one [`Client::poll_progress`] did: bytes written (0: the stream refuses more) and bytes
/// read (0: end of stream); `None` where that direction could not progress.
struct Progress {
    wrote: Option<usize>,
    read: Option<usize>,
}

/// The id after `last`: 1..=65535, wrapping from 65,535 to 1, never 0 ([MQTT-2.2.1-3]).
fn following_packet_id(last: u16) -> u16 {
    last % u16::MAX + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_node::SecureNode;
    use crate::transport::TransportKind;
    use roost_codec::Publish;
    use roost_testkit::TestNode;

    fn options(id: &str) -> ConnectOptions {
        ConnectOptions {
            dialer: Dialer::Tcp,
            client_id: id.to_owned(),
            protocol: Protocol::V5,
            keep_alive: 30,
            read_chunk: 256,
            session_expiry: None,
        }
    }

    /// What CONNECT asks for: v5 carries the expiry and always starts clean; v3.1.1 has only
    /// clean session, 0 for a persistent session, and an expiry of 0 is a clean one.
    #[test]
    fn connect_asks_for_a_persistent_session_only_with_an_expiry_above_0() {
        let with = |protocol, session_expiry| ConnectOptions {
            protocol,
            session_expiry,
            ..options("c")
        };
        let v5 = with(Protocol::V5, Some(60)).connect_packet();
        assert!(v5.clean_start);
        assert_eq!(v5.properties.session_expiry_interval, Some(60));
        for (expiry, clean) in [(None, true), (Some(0), true), (Some(60), false)] {
            let c = with(Protocol::V311, expiry).connect_packet();
            assert_eq!(c.clean_start, clean, "v3.1.1, expiry {expiry:?}");
            assert_eq!(c.properties.session_expiry_interval, None);
        }
    }

    /// With `session_expiry` the session outlives its connection until DISCONNECT, which ends
    /// it (v5); without, it ends with the connection. Told by the next connection's CONNACK
    /// Session Present ([MQTT-3.2.2-2]).
    #[tokio::test]
    async fn a_session_expiry_makes_the_session_persistent_until_disconnect() -> Result<()> {
        let node = TestNode::start().await?;
        let persistent = |id: &str| ConnectOptions {
            session_expiry: Some(60),
            ..options(id)
        };
        let addr = node.addr();
        let present = |id: &'static str| async move {
            let mut c = roost_testkit::RawClient::open(addr, Protocol::V5).await?;
            let ack = c
                .handshake(roost_testkit::connect_packet(Protocol::V5, id, false))
                .await?;
            anyhow::Ok(ack.session_present)
        };
        // Closed without DISCONNECT: the session stays.
        let mut c = Client::connect(node.addr(), &persistent("kept")).await?;
        c.subscribe(&["t/#".to_owned()], QoS::AtMostOnce).await?;
        drop(c);
        assert!(
            present("kept").await?,
            "a persistent session outlives its connection"
        );
        // DISCONNECT sets the interval to 0: the session ends.
        let mut c = Client::connect(node.addr(), &persistent("ended")).await?;
        c.subscribe(&["t/#".to_owned()], QoS::AtMostOnce).await?;
        c.disconnect().await?;
        assert!(!present("ended").await?, "DISCONNECT ended it");
        // No expiry: a clean, non-persistent session, gone with the connection.
        let mut c = Client::connect(node.addr(), &options("clean")).await?;
        c.subscribe(&["t/#".to_owned()], QoS::AtMostOnce).await?;
        drop(c);
        assert!(!present("clean").await?);
        node.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn publish_reaches_a_subscriber_and_ping_is_answered() -> Result<()> {
        let node = TestNode::start().await?;
        round_trip(node.addr(), &options("sub"), &options("pub")).await?;
        node.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn the_same_round_trip_runs_over_tls_and_quic() -> Result<()> {
        let node = SecureNode::start().await?;
        for kind in [TransportKind::Tls, TransportKind::Quic] {
            let dialer = node.args(kind).dialer()?;
            let sub = ConnectOptions {
                dialer: dialer.clone(),
                ..options(&format!("sub-{}", kind.name()))
            };
            let publisher = ConnectOptions {
                dialer,
                ..options(&format!("pub-{}", kind.name()))
            };
            round_trip(node.addr(kind), &sub, &publisher)
                .await
                .with_context(|| kind.name())?;
        }
        node.node.stop().await;
        Ok(())
    }

    /// A subscriber and a publisher: QoS 1 publish acknowledged, PINGREQ answered, the publish
    /// delivered, both disconnect cleanly.
    async fn round_trip(
        addr: SocketAddr,
        sub_options: &ConnectOptions,
        pub_options: &ConnectOptions,
    ) -> Result<()> {
        let mut sub = Client::connect(addr, sub_options).await?;
        sub.subscribe(&["t/#".to_owned()], QoS::AtLeastOnce).await?;
        let mut publisher = Client::connect(addr, pub_options).await?;
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
        Ok(())
    }

    /// A server that sends a matching PUBLISH before the SUBACK, as MQTT allows (§3.8.4).
    #[tokio::test]
    async fn publishes_before_the_suback_are_acknowledged_and_skipped() -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await?;
            let mut buf = vec![0u8; 1024];
            let _connect = s.read(&mut buf).await?;
            s.write_all(&[0x20, 0x03, 0x00, 0x00, 0x00]).await?; // CONNACK v5, success
            let _subscribe = s.read(&mut buf).await?;
            // PUBLISH QoS 1 "t" id 7 payload "x", then SUBACK for packet id 1 granting QoS 0.
            s.write_all(&[0x32, 0x07, 0x00, 0x01, b't', 0x00, 0x07, 0x00, b'x'])
                .await?;
            s.write_all(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x00]).await?;
            let n = s.read(&mut buf).await?;
            Ok::<_, anyhow::Error>(buf[..n].to_vec())
        });
        let mut client = Client::connect(addr, &options("early")).await?;
        let early = client.subscribe(&["t".to_owned()], QoS::AtMostOnce).await?;
        assert_eq!(early, 1);
        client.flush().await?;
        let after = tokio::time::timeout(SETUP_TIMEOUT, server).await???;
        assert_eq!(
            after.first(),
            Some(&0x40),
            "PUBACK expected, got {after:02X?}"
        );
        assert_eq!(&after[2..4], &[0x00, 0x07], "{after:02X?}");
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
