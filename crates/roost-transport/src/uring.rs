//! Plain TCP through io_uring (`node.io = "io_uring"`, RFC 0010): a [`ByteStream`] over
//! `tokio_uring::net::TcpStream`, for connections that run on an io_uring connection shard.
//!
//! io_uring is completion style (hand the kernel a buffer, learn later what was read into it);
//! [`ByteStream`] is readiness style (wait, then take what is there). The stream bridges the two
//! by keeping the one read and the one write in flight inside itself:
//!
//! ```text
//!  readable() ── no read in flight ─▶ submit read(own buffer) ─▶ poll it ─▶ completed: Ok
//!  try_read_buf ── completed bytes ─▶ caller's buffer (the rest stays for the next call)
//!  try_write ── no write in flight ─▶ copy into own buffer ─▶ submit write_all ─▶ n taken
//!  writable() / try_flush ── the write in flight (the next try_write waits for it)
//! ```
//!
//! Cancel safety: the operations in flight are boxed futures owned by the stream, so dropping a
//! `readable()` or `writable()` future (a `select!` that took another arm) drops nothing but a
//! poll; the kernel keeps writing into the stream's buffer and the next call picks the result up.
//!
//! Memory: unlike epoll, an idle connection always has a read in flight, and that read holds a
//! buffer the kernel may write into. It is [`IDLE_READ`] bytes; a read that fills its buffer
//! is followed by one of [`BUSY_READ`]. tokio-uring 0.5 has no provided-buffer rings
//! (`IORING_OP_PROVIDE_BUFFERS` / `IORING_REGISTER_PBUF_RING`), which would let idle reads
//! share a pool and hold nothing.
//!
//! Closing: an in-flight read keeps the file descriptor open (tokio-uring closes it once every
//! operation on it has completed). Dropping the stream therefore shuts the socket down first,
//! which completes the read (and a write stuck on a client that stopped reading) at once.
//!
//! Not `Send`: tokio-uring's types hold `Rc`s, so the stream lives on the shard thread that
//! made it and its connection task is spawned there with `tokio_uring::spawn`.

use crate::ByteStream;
use bytes::{Buf, BytesMut};
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The buffer of a read on a connection that has been quiet: every idle connection has one in
/// flight, so it is small (issue 10's target is 2 KiB per idle connection in all).
pub const IDLE_READ: usize = 512;
/// The buffer of a read after one that filled its buffer (a large packet, a burst).
pub const BUSY_READ: usize = 16 * 1024;
/// The most one write takes from the caller (the driver's write batch is 64 KiB).
const MAX_WRITE: usize = 64 * 1024;

type ReadOp = Pin<Box<dyn Future<Output = (io::Result<usize>, BytesMut)>>>;
type WriteOp = Pin<Box<dyn Future<Output = (io::Result<()>, Vec<u8>)>>>;

/// A TCP connection whose reads and writes are io_uring operations.
pub struct UringStream {
    socket: Rc<tokio_uring::net::TcpStream>,
    /// The read in flight, if any.
    read: Option<ReadOp>,
    /// A completed read's bytes not yet taken by `try_read_buf`.
    got: BytesMut,
    /// A completed read's outcome that `try_read_buf` has not reported yet: end of stream or
    /// an error.
    ended: Option<io::Result<()>>,
    /// The last read filled its buffer: the next one is [`BUSY_READ`] bytes.
    busy: bool,
    /// The write in flight, if any (it writes its whole buffer: `write_all`).
    write: Option<WriteOp>,
    /// A write that failed; reported by the next write call.
    write_err: Option<io::Error>,
}

impl std::fmt::Debug for UringStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringStream")
            .field("reading", &self.read.is_some())
            .field("got", &self.got.len())
            .field("writing", &self.write.is_some())
            .finish()
    }
}

impl UringStream {
    /// Wraps an accepted socket. Must run on a tokio-uring runtime's thread (a shard's).
    /// The socket is put back in blocking mode: io_uring never blocks the thread, and a
    /// non-blocking socket could answer `EAGAIN` to a read instead of waiting in the kernel.
    pub fn from_std(socket: std::net::TcpStream) -> io::Result<UringStream> {
        socket.set_nonblocking(false)?;
        socket.set_nodelay(true)?;
        Ok(UringStream {
            socket: Rc::new(tokio_uring::net::TcpStream::from_std(socket)),
            read: None,
            got: BytesMut::new(),
            ended: None,
            busy: false,
            write: None,
            write_err: None,
        })
    }

    /// Whether a completed read's bytes or outcome wait for `try_read_buf`.
    fn read_ready(&self) -> bool {
        !self.got.is_empty() || self.ended.is_some()
    }

    /// Polls the read in flight, submitting one first if none is; `Ready` once a read
    /// completed (its bytes in `got`, or its end in `ended`).
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.read_ready() {
            return Poll::Ready(());
        }
        let op = self.read.get_or_insert_with(|| {
            let socket = Rc::clone(&self.socket);
            let size = if self.busy { BUSY_READ } else { IDLE_READ };
            let buf = BytesMut::with_capacity(size);
            Box::pin(async move { socket.read(buf).await })
        });
        let Poll::Ready((r, buf)) = op.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        self.read = None;
        match r {
            Ok(0) => self.ended = Some(Ok(())),
            Ok(n) => {
                self.busy = n == buf.capacity();
                self.got = buf;
            }
            Err(e) => self.ended = Some(Err(e)),
        }
        Poll::Ready(())
    }

    /// Polls the write in flight; `Ready` once none is (a failure is kept in `write_err`).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(op) = self.write.as_mut() else {
            return Poll::Ready(());
        };
        let Poll::Ready((r, _buf)) = op.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        self.write = None;
        if let Err(e) = r {
            self.write_err = Some(e);
        }
        Poll::Ready(())
    }

    /// Polls the write in flight once without waiting (no waker is kept: the caller waits
    /// with `writable()`, which polls it again with its own).
    fn check_write(&mut self) -> io::Result<bool> {
        let mut cx = Context::from_waker(Waker::noop());
        let idle = self.poll_write(&mut cx).is_ready();
        match self.write_err.take() {
            Some(e) => Err(e),
            None => Ok(idle),
        }
    }
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl ByteStream for UringStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read(cx).map(Ok)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if !self.got.is_empty() {
            let spare = buf.capacity() - buf.len();
            let n = spare.min(self.got.len());
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "read buffer has no spare capacity",
                ));
            }
            buf.extend_from_slice(&self.got[..n]);
            self.got.advance(n);
            if self.got.is_empty() {
                // Give the buffer back: an idle connection holds only the next read's.
                self.got = BytesMut::new();
            }
            return Ok(n);
        }
        match self.ended.take() {
            Some(Ok(())) => {
                // End of stream stays reported.
                self.ended = Some(Ok(()));
                Ok(0)
            }
            Some(Err(e)) => Err(e),
            None => Err(would_block()),
        }
    }

    async fn writable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write(cx)).await;
        match self.write_err.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.check_write()? {
            return Err(would_block());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(MAX_WRITE);
        let owned = buf[..n].to_vec();
        let socket = Rc::clone(&self.socket);
        self.write = Some(Box::pin(async move { socket.write_all(owned).await }));
        // Submit it now (an async block does nothing until polled); it may even complete.
        self.check_write()?;
        Ok(n)
    }

    // `pending_output` stays `false` while a write is in flight: once submitted, its bytes are
    // the kernel's, as bytes in a socket's send buffer are after an epoll `try_write`. Saying
    // `true` would make every flush of the driver wait for the completion (a park of the shard
    // thread, since tokio-uring submits when it parks), and a delivery that arrived meanwhile
    // would wait for the next wake-up. The next `try_write` waits for it (`WouldBlock`), and
    // `try_flush` / `flush_all` (goodbyes, shutdown) report it.

    fn try_flush(&mut self) -> io::Result<()> {
        if self.check_write()? {
            Ok(())
        } else {
            Err(would_block())
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.flush_all().await?;
        self.socket.shutdown(Shutdown::Write)
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        if self.read.is_some() || self.write.is_some() {
            // The operations in flight hold the descriptor open until they complete: end them.
            let _ = self.socket.shutdown(Shutdown::Both);
        }
    }
}
