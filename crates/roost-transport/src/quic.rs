//! MQTT over QUIC with quinn (RFC 0007, the QUIC step), in EMQX's single-stream mode: a client
//! connects with ALPN `mqtt`, opens one bidirectional stream, and MQTT's bytes travel on it as on
//! a TCP connection.
//!
//! ```text
//!  UdpSocket ◀─ quinn::Endpoint ◀─ QuicListener::accept ─▶ QuicIncoming (address known, no state)
//!                                                            └─ handshake (TLS 1.3 + first bidi
//!                                                               stream) ─▶ QuicStream ─▶ driver
//! ```
//!
//! Who calls it: the node's QUIC listener task calls [`QuicListener::accept`] in a loop and
//! hands each [`QuicIncoming`] to a connection task, which runs [`QuicIncoming::handshake`]
//! under its connect timeout and then the driver over the [`QuicStream`]. Tests and the load
//! generator use [`connect`] for the client side.
//!
//! Concurrency model: quinn runs one endpoint driver task per listener (the UDP socket, packet
//! dispatch) and one connection driver task per connection (loss recovery, timers, sending). A
//! [`QuicStream`] is owned by its connection task; it talks to quinn's connection state through
//! quinn's stream handles, which take a short lock. Nothing here spawns tasks of its own.
//!
//! Readiness: quinn offers futures (`read_chunk`, `write`), not readiness. [`QuicStream`] keeps
//! what a future returned inside itself, so the driver's `select!` never loses data:
//!
//! - `readable()` awaits one `read_chunk` and keeps the chunk (a `Bytes` slice of the received
//!   packet, no copy); `try_read_buf` copies from it, then polls `read_chunk` once more with a
//!   no-op waker for what else quinn already holds.
//! - `try_write` polls quinn's `write` once with a no-op waker; if quinn has no room it copies
//!   (at most [`OUT_LIMIT`] of) the bytes into a small outgoing buffer and reports them through
//!   `pending_output()`; `writable()` pushes that buffer with the task's real waker. There is no
//!   way to wait for room on a quinn send stream without offering it bytes, and these are the
//!   bytes the driver already handed over, so no probe write is ever made.
//!
//! Cancel safety (checked in quinn 0.11's `recv_stream.rs` / `send_stream.rs`): a `read_chunk`
//! or `write` poll either returns `Ready` with what it took, or returns `Pending` having only
//! stored the waker (`blocked_readers` / `blocked_writers`) and taken nothing. Every `Ready`
//! result is stored in `self` in the same poll, before our future returns, so dropping any of
//! our futures loses nothing. A later poll with the real waker replaces a no-op waker left by a
//! `try_*` call, and the driver always awaits `readable()` / `writable()` before sleeping.
//!
//! Security choices:
//! - TLS 1.3 only (QUIC requires it), the same certificate files and client-certificate rules
//!   as the TLS listener ([`TlsSettings::load_tls13`]).
//! - No 0-RTT: `max_early_data_size` stays 0, so the server never accepts early data. 0-RTT data
//!   can be replayed by an attacker, and neither CONNECT (a session takeover) nor PUBLISH is
//!   idempotent: a replayed PUBLISH would be delivered twice. What a client sends arrives after
//!   the handshake, as on TLS.
//! - Connection migration is on (quinn's default): a device that changes networks keeps its
//!   session; [`QuicStream::remote_address`] reads the current address each time.

use crate::tls::{PeerCert, TlsConfigError, TlsSettings};
use crate::ByteStream;
use bytes::{Buf, Bytes, BytesMut};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{
    Connection, ConnectionError, Endpoint, IdleTimeout, ReadError, RecvStream, SendStream,
    TransportConfig, VarInt,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::{poll_fn, Future};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The ALPN protocol id of MQTT over QUIC (what EMQX and its clients use). RFC 9001 §8.1 makes
/// ALPN mandatory on QUIC; a client that offers another id is refused with
/// `no_application_protocol`.
pub const ALPN_MQTT: &[u8] = b"mqtt";

/// How much the client may send on its stream before the broker has read it (QUIC stream flow
/// control). 256 KiB is ~2.6 MB/s at 100 ms RTT, far above what a device publishes; quinn's
/// default (1.25 MB) is sized for 100 Mbit/s bulk transfers, and every connection may fill it.
pub const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;

/// How much the client may send over the whole connection before the broker has read it.
/// Only one stream carries data; this caps a client that opens a second stream once the first
/// is gone. quinn's default is unlimited.
pub const RECEIVE_WINDOW: u32 = 512 * 1024;

/// Bytes quinn keeps per connection from our writes until the client acknowledges them. quinn's
/// default is 10 MB; with 100,000 connections to slow subscribers that is a terabyte of
/// possible buffering. The driver encodes at most 64 KiB at a time and disconnects a client
/// that stops reading (`mqtt.write_timeout_secs`), so 512 KiB keeps a fast subscriber busy
/// without letting a slow one cost much.
pub const SEND_WINDOW: u64 = 512 * 1024;

/// The idle timeout when the caller has no better figure: a connection with no packets either
/// way for this long is dropped by QUIC. QUIC sends no keep-alives of its own here (MQTT's
/// PINGREQ is the keep-alive, and QUIC pings would wake idle device radios), so the timeout
/// the node passes must be longer than 1.5 × the longest MQTT keep-alive it grants, or QUIC
/// would close connections MQTT still considers alive.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The most bytes [`QuicStream::try_write`] copies into its own buffer when quinn has no room
/// (the driver encodes at most 64 KiB at a time).
pub const OUT_LIMIT: usize = 64 * 1024;

/// An outgoing buffer larger than this is freed once drained.
const KEEP_OUT: usize = 1024;

/// The largest chunk taken from quinn at once (a chunk is a slice of one received packet, so
/// in practice it is at most a datagram).
const READ_CHUNK_MAX: usize = 64 * 1024;

/// Why a QUIC listener, handshake or client connection failed.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The certificate, key or CA files.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The rustls configuration lacks the cipher suite QUIC's initial packets use.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Crypto(#[from] NoInitialCipherSuite),
    /// The UDP socket could not be bound.
    #[error("binding UDP {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A client connection could not be started (bad server name, no usable configuration).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed or the connection closed before the stream was opened.
    #[error("connection: {0}")]
    Connection(#[from] ConnectionError),
}

impl QuicError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            QuicError::Tls(_) | QuicError::Crypto(_) => "config",
            QuicError::Bind { .. } => "bind",
            QuicError::Connect(_) => "connect",
            QuicError::Connection(ConnectionError::TimedOut) => "timeout",
            // TLS alerts travel as QUIC CRYPTO_ERROR codes 0x0100..=0x01ff (RFC 9001 §4.8).
            QuicError::Connection(ConnectionError::TransportError(e))
                if (0x100..=0x1ff).contains(&u64::from(e.code)) =>
            {
                "tls"
            }
            QuicError::Connection(ConnectionError::ConnectionClosed(c))
                if (0x100..=0x1ff).contains(&u64::from(c.error_code)) =>
            {
                "tls"
            }
            QuicError::Connection(_) => "closed",
        }
    }
}

/// The transport parameters of every Roost QUIC connection, sized for many idle devices rather
/// than for bulk transfers (see the constants). `peer_bidi`: how many streams the peer may open.
fn transport_config(idle_timeout: Duration, peer_bidi: u32) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        // Single-stream mode: one bidirectional stream, no unidirectional ones.
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // MQTT has its own keep-alive (PINGREQ).
        .keep_alive_interval(None)
        // No unreliable datagrams in MQTT: no buffer for them.
        .datagram_receive_buffer_size(None)
        // Beyond VarInt's range (2^62 ms) means "never": keep the longest one QUIC allows.
        .max_idle_timeout(Some(
            IdleTimeout::try_from(idle_timeout).unwrap_or(IdleTimeout::from(VarInt::MAX)),
        ));
    t
}

/// A QUIC listener: one UDP socket, one TLS configuration.
pub struct QuicListener {
    endpoint: Endpoint,
    settings: TlsSettings,
    transport: Arc<TransportConfig>,
}

impl std::fmt::Debug for QuicListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicListener")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl QuicListener {
    /// Loads the certificate and key (TLS 1.3 only, ALPN `mqtt`) and binds `addr` (UDP).
    /// `idle_timeout`: see [`DEFAULT_IDLE_TIMEOUT`]; it is an upper bound, the connection uses
    /// the smaller of the client's and the server's, and `Duration::ZERO` sets none on the
    /// server's side (RFC 9000 §10.1). Must be called inside a tokio runtime (quinn spawns its
    /// endpoint task on it).
    pub fn bind(
        addr: SocketAddr,
        settings: TlsSettings,
        idle_timeout: Duration,
    ) -> Result<QuicListener, QuicError> {
        let transport = Arc::new(transport_config(idle_timeout, 1));
        let config = server_config(&settings, &transport)?;
        let endpoint =
            Endpoint::server(config, addr).map_err(|source| QuicError::Bind { addr, source })?;
        Ok(QuicListener {
            endpoint,
            settings,
            transport,
        })
    }

    /// The next connection attempt; `None` once the endpoint is closed. Cheap: nothing is
    /// decided or allocated for the connection until [`QuicIncoming::handshake`].
    ///
    /// Cancel safety: quinn's `Accept` future takes an attempt only when it returns it.
    pub async fn accept(&self) -> Option<QuicIncoming> {
        let incoming = self.endpoint.accept().await?;
        Some(QuicIncoming { incoming })
    }

    /// Re-reads the certificate files. On error the old configuration stays in use. New
    /// handshakes use the new one; open connections keep theirs.
    pub fn reload(&self) -> Result<(), QuicError> {
        let config = server_config(&self.settings, &self.transport)?;
        self.endpoint.set_server_config(Some(config));
        Ok(())
    }

    /// The bound UDP address (with the port chosen for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The files this listener reads.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The quinn endpoint (stats, `close`, `wait_idle` at shutdown).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

fn server_config(
    settings: &TlsSettings,
    transport: &Arc<TransportConfig>,
) -> Result<quinn::ServerConfig, QuicError> {
    let mut tls = settings.load_tls13()?;
    tls.alpn_protocols = vec![ALPN_MQTT.to_vec()];
    // No 0-RTT (see the module doc): MQTT's CONNECT and PUBLISH are not idempotent.
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::clone(transport));
    // Connection migration stays on (quinn's default): devices move between networks.
    config.migration(true);
    Ok(config)
}

/// A connection attempt that has not been answered yet.
#[derive(Debug)]
pub struct QuicIncoming {
    incoming: quinn::Incoming,
}

impl QuicIncoming {
    /// The client's UDP address as the attempt arrived.
    pub fn remote_address(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Refuses the attempt (connection limit reached): the client gets CONNECTION_REFUSED at
    /// once instead of a timeout.
    pub fn refuse(self) {
        self.incoming.refuse();
    }

    /// Runs the server side of the handshake and takes the client's first bidirectional stream
    /// (EMQX single-stream mode; the client opens it by sending CONNECT on it). Not bounded in
    /// time: the caller wraps it in its connect timeout.
    ///
    /// Cancel safety: not cancel safe, and need not be: dropping it abandons the connection.
    pub async fn handshake(self) -> Result<QuicStream, QuicError> {
        let conn = self.incoming.accept()?.await?;
        let (send, recv) = conn.accept_bi().await?;
        Ok(QuicStream {
            conn,
            send,
            recv,
            chunk: Bytes::new(),
            end: None,
            out: BytesMut::new(),
        })
    }
}

/// How the receive side ended.
#[derive(Debug)]
enum ReadEnd {
    /// The client finished its stream (or closed the connection politely).
    Eof,
    /// The stream or connection failed; kept so every later read sees it.
    Failed(ReadError),
}

/// The MQTT byte stream of one QUIC connection (its first bidirectional stream).
pub struct QuicStream {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    /// Received bytes taken from quinn and not read yet (a slice of a received packet).
    chunk: Bytes,
    /// Set once quinn reported the end of the receive side; `chunk` is then drained first.
    end: Option<ReadEnd>,
    /// Bytes `try_write` took while quinn had no room (at most [`OUT_LIMIT`]).
    out: BytesMut,
}

impl std::fmt::Debug for QuicStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicStream")
            .field("remote", &self.conn.remote_address())
            .field("stream", &self.send.id())
            .finish_non_exhaustive()
    }
}

/// Polls `f` once with a waker that does nothing (for the `try_*` methods, which never wait).
fn poll_once<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    let mut cx = Context::from_waker(Waker::noop());
    f(&mut cx)
}

/// Whether a read error is a polite end of the stream rather than a failure.
fn is_polite_end(e: &ReadError) -> bool {
    // The client closed the connection without finishing the stream: most clients just close.
    // MQTT frames its own packets, so a truncated one is visible to the decoder.
    matches!(
        e,
        ReadError::ConnectionLost(ConnectionError::ApplicationClosed(_))
    )
}

impl QuicStream {
    /// The client's current UDP address (it changes when the client migrates).
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The verified client certificate's identity, if the client sent one.
    pub fn peer_cert(&self) -> Option<PeerCert> {
        let identity = self.conn.peer_identity()?;
        let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        PeerCert::from_der(chain.first()?)
    }

    /// The quinn connection (statistics, RTT, closing with an error code).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Takes the next chunk from quinn into `self` unless one is held or the stream ended.
    /// `Ready` once there is something for `try_read_buf` (data, the end, or an error).
    ///
    /// Cancel safety: quinn's `read_chunk` takes nothing unless it returns `Ready`, and what it
    /// returns is stored in `self` before this returns.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.chunk.is_empty() && self.end.is_none() {
            let r = pin!(self.recv.read_chunk(READ_CHUNK_MAX, true)).poll(cx);
            match r {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(chunk))) => self.chunk = chunk.bytes,
                Poll::Ready(Ok(None)) => self.end = Some(ReadEnd::Eof),
                Poll::Ready(Err(e)) => {
                    self.end = Some(if is_polite_end(&e) {
                        ReadEnd::Eof
                    } else {
                        ReadEnd::Failed(e)
                    })
                }
            }
        }
        Poll::Ready(())
    }

    /// Pushes the outgoing buffer into quinn. `Ready(Ok)` once it is empty, or, when
    /// `progress_is_enough`, as soon as quinn took some of it.
    ///
    /// Cancel safety: quinn's `write` takes no bytes unless it returns `Ready` with how many it
    /// took, and the buffer is advanced by that in the same poll.
    fn poll_push(
        &mut self,
        cx: &mut Context<'_>,
        progress_is_enough: bool,
    ) -> Poll<io::Result<()>> {
        let mut progressed = false;
        while !self.out.is_empty() {
            match Pin::new(&mut self.send).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.out.advance(n);
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending if progressed && progress_is_enough => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.out.capacity() > KEEP_OUT {
            self.out = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl ByteStream for QuicStream {
    /// Cancel safety: see `QuicStream::poll_fill`; a chunk received is kept in `self`.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_fill(cx).map(Ok)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let spare = buf.capacity() - buf.len();
        if spare == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "read buffer has no spare capacity",
            ));
        }
        let mut n = 0;
        loop {
            if !self.chunk.is_empty() {
                let take = self.chunk.len().min(spare - n);
                buf.extend_from_slice(&self.chunk[..take]);
                self.chunk.advance(take);
                n += take;
                if n == spare {
                    return Ok(n);
                }
                continue;
            }
            // What came before the end is returned first; the next call sees the end.
            if n > 0 && self.end.is_some() {
                return Ok(n);
            }
            match &self.end {
                Some(ReadEnd::Eof) => return Ok(0),
                Some(ReadEnd::Failed(e)) => return Err(io::Error::from(e.clone())),
                None => {}
            }
            if poll_once(|cx| self.poll_fill(cx)).is_pending() {
                return if n > 0 {
                    Ok(n)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
        }
    }

    /// Resolves at once when nothing is buffered (`try_write` can always take bytes then);
    /// otherwise pushes the buffer and resolves when quinn took some of it.
    ///
    /// Cancel safety: see `QuicStream::poll_push`; bytes quinn took are removed from the
    /// buffer in the same poll, bytes it did not take stay in it.
    async fn writable(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_push(cx, true)).await
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Earlier bytes first; while some wait, the caller waits on `writable()`.
        self.try_flush()?;
        match poll_once(|cx| Pin::new(&mut self.send).poll_write(cx, buf)) {
            Poll::Ready(Ok(n)) => Ok(n),
            Poll::Ready(Err(e)) => Err(e.into()),
            Poll::Pending => {
                // quinn's send window or the client's flow control is full: keep a bounded
                // copy, so that `writable()` has bytes to wait with.
                let n = buf.len().min(OUT_LIMIT);
                self.out.extend_from_slice(&buf[..n]);
                Ok(n)
            }
        }
    }

    fn pending_output(&self) -> bool {
        !self.out.is_empty()
    }

    fn try_flush(&mut self) -> io::Result<()> {
        match poll_once(|cx| self.poll_push(cx, false)) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Writes what is buffered, finishes the send stream (the client reads its end), waits
    /// until the client has acknowledged everything, then closes the connection with code 0.
    /// Best effort: the caller bounds it; dropping the stream closes the connection anyway.
    async fn shutdown(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_push(cx, false)).await?;
        // Already finished or reset: nothing more to say.
        let _ = self.send.finish();
        // `Ok(None)`: all acknowledged; `Some(code)`: the client stopped reading; `Err`: the
        // connection is gone. In every case there is nothing left to wait for.
        let _ = self.send.stopped().await;
        self.conn.close(VarInt::from_u32(0), b"");
        Ok(())
    }
}

/// A rustls client configuration for [`connect`]: the CAs that sign the server certificate
/// (PEM), and optionally a client certificate chain and key (PEM). TLS 1.3, ring provider,
/// ALPN `mqtt`.
pub fn client_tls_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| TlsConfigError::Rustls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| bad("CA PEM", &e))?;
        roots.add(cert).map_err(|e| bad("CA certificate", &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("TLS versions", &e))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(chain_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate PEM", &e))?;
            let key =
                PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("client key PEM", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client certificate", &e))?
        }
    };
    config.alpn_protocols = vec![ALPN_MQTT.to_vec()];
    Ok(config)
}

/// Connects to a Roost QUIC listener and opens the MQTT stream (for tests and the load
/// generator). `tls` carries the trusted roots and any client certificate
/// ([`client_tls_config`] builds one); if it names no ALPN protocol, `mqtt` is used. The stream
/// reaches the server with the first bytes written (MQTT's CONNECT).
///
/// The endpoint is returned so the caller can keep it (one endpoint may carry many
/// connections, or be closed with `wait_idle` to let the last packets go out).
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    mut tls: rustls::ClientConfig,
) -> Result<(Endpoint, QuicClientStream), QuicError> {
    if tls.alpn_protocols.is_empty() {
        tls.alpn_protocols = vec![ALPN_MQTT.to_vec()];
    }
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    // The server opens no streams.
    config.transport_config(Arc::new(transport_config(DEFAULT_IDLE_TIMEOUT, 0)));
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = Endpoint::client(local).map_err(|source| QuicError::Bind {
        addr: local,
        source,
    })?;
    let conn = endpoint.connect_with(config, addr, server_name)?.await?;
    let (send, recv) = conn.open_bi().await?;
    Ok((endpoint, QuicClientStream { conn, send, recv }))
}

/// The client side of the MQTT stream: tokio's `AsyncRead`/`AsyncWrite` over quinn's stream
/// (`shutdown` finishes the send side).
#[derive(Debug)]
pub struct QuicClientStream {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

impl QuicClientStream {
    /// The quinn connection (to close it, read its stats, or see why it ended).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The two halves, for a reader and a writer in separate tasks.
    pub fn into_split(self) -> (Connection, SendStream, RecvStream) {
        (self.conn, self.send, self.recv)
    }
}

impl tokio::io::AsyncRead for QuicClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        tokio::io::AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf)
    }
}

impl tokio::io::AsyncWrite for QuicClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}
