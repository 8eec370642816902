//! Roost's transports: what turns an accepted connection into a byte stream for the connection
//! driver (RFC 0007).
//!
//! ```text
//!  TcpListener ─accept─▶ TcpStream ───────────────────────────────┐
//!                         └─ tls::TlsAcceptor::accept ─▶ TlsStream ├─▶ impl ByteStream ─▶ driver
//!                         └─ ws::accept (over either) ─▶ WsStream ─┤
//!  QuicListener ─accept─▶ QuicIncoming::handshake ─▶ QuicStream ───┘
//! ```
//!
//! Every transport offers the same readiness-style API as `tokio::net::TcpStream` itself
//! ([`ByteStream`]): wait until readable, then read what is there without waiting; write what
//! fits without waiting, then wait until writable. The driver depends on that shape for two
//! properties it keeps for every transport: an idle connection holds no read buffer of the
//! driver's (it allocates one when the stream turns readable and frees it when drained), and no
//! future in its `select!` ever holds data that cancellation would lose (convention 4).
//!
//! Transports that frame or encrypt (TLS, WebSocket) keep what they must inside themselves
//! (records not yet decrypted, a frame header half read, encrypted bytes the socket did not
//! take yet) and say so through [`ByteStream::pending_output`], so the driver's flush pushes
//! such bytes out even when its own write buffer is empty.

use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::task::{Context, Poll};

pub mod proxy;
pub mod quic;
pub mod tcp;
pub mod tls;
#[cfg(all(target_os = "linux", feature = "io-uring"))]
pub mod uring;
pub mod ws;

pub use quic::{QuicError, QuicIncoming, QuicListener, QuicStream};
pub use tls::{ClientAuth, PeerCert, TlsAcceptor, TlsConfigError, TlsSettings, TlsStream};
pub use ws::{WsError, WsStream};

/// A connection's bytes, readiness style (the shape of `tokio::net::TcpStream`'s `readable`,
/// `try_read_buf`, `writable`, `try_write`).
///
/// Cancel safety: `readable` (and `poll_readable`) and `writable` only wait for readiness and take no data; they may
/// be used in `select!`. The `try_*` methods never wait.
///
/// Neither the trait nor its futures require `Send`: the io_uring stream (`uring.rs`, RFC 0010)
/// holds `Rc`s and lives on one shard thread. The epoll streams' futures are still `Send`, and
/// a caller that names a concrete stream type sees it (auto traits leak through `impl Future`),
/// so their connection tasks are spawned on the work-stealing runtime as before.
pub trait ByteStream: 'static {
    /// Ready once [`ByteStream::try_read_buf`] may make progress (it may still answer
    /// `WouldBlock`: readiness can be stale, and a TLS record or WebSocket frame may be
    /// incomplete); otherwise the waker is kept and woken then. Only the waker of the latest
    /// call is kept (one reader per stream, as with `TcpStream::poll_read_ready`).
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Waits until [`ByteStream::try_read_buf`] may make progress: [`ByteStream::poll_readable`]
    /// as a future. It holds nothing but the stream's reference (a parked connection waits on
    /// it, RFC 0011; `TcpStream::readable`'s own future is 152 B).
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> {
        std::future::poll_fn(move |cx| self.poll_readable(cx))
    }

    /// Appends what can be read now to `buf` (at most its spare capacity; the caller reserves).
    /// `Ok(0)`: the peer closed the stream. `WouldBlock`: nothing yet.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize>;

    /// Waits until [`ByteStream::try_write`] or [`ByteStream::try_flush`] may make progress.
    fn writable(&mut self) -> impl Future<Output = io::Result<()>>;

    /// Takes some of `buf` without waiting and returns how much (at least 1 for a non-empty
    /// `buf`, or `WouldBlock`). Taken bytes may sit in the transport until the socket has room:
    /// see [`ByteStream::pending_output`].
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;

    /// Whether bytes already taken by [`ByteStream::try_write`] (or produced by the transport
    /// itself: a TLS alert, a WebSocket pong) still wait for the socket.
    fn pending_output(&self) -> bool {
        false
    }

    /// Pushes pending output to the socket without waiting: `Ok(())` once none is left,
    /// `WouldBlock` if the socket is full.
    fn try_flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Ends the stream politely (TLS close_notify, WebSocket close frame, TCP FIN). Best
    /// effort: callers bound it with a timeout.
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>>;

    /// Pushes all pending output to the socket, waiting for room as needed. Not for the
    /// driver's `select!` (it holds no data, but it does not return until the socket took
    /// everything); for handshakes, refusals and shutdown, bounded by the caller's timeout.
    fn flush_all(&mut self) -> impl Future<Output = io::Result<()>>
    where
        Self: Sized,
    {
        async move {
            loop {
                match self.try_flush() {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Writes all of `buf` and flushes it, waiting for room as needed (same use as
    /// [`ByteStream::flush_all`]; named apart from tokio's `write_all`, which `TcpStream` also
    /// has).
    fn write_all_flushed(&mut self, mut buf: &[u8]) -> impl Future<Output = io::Result<()>>
    where
        Self: Sized,
    {
        async move {
            while !buf.is_empty() {
                match self.try_write(buf) {
                    Ok(n) => buf = &buf[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            self.flush_all().await
        }
    }
}

/// Reads into `buf`'s spare capacity with `read` (which reads into a plain slice) and
/// keeps only what was read. Zero-filling the spare capacity costs one `memset` of at most
/// a read chunk; no `unsafe` is needed for it.
pub(crate) fn read_into(
    buf: &mut BytesMut,
    read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
) -> io::Result<usize> {
    let start = buf.len();
    let spare = buf.capacity() - start;
    if spare == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "read buffer has no spare capacity",
        ));
    }
    buf.resize(start + spare, 0);
    let r = read(&mut buf[start..]);
    let n = *r.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    r
}
