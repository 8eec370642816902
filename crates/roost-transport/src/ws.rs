//! MQTT over WebSocket (RFC 6455; MQTT 5.0 §6, MQTT 3.1.1 §6), over TCP or TLS.
//!
//! The opening handshake is an HTTP/1.1 `GET` with `Upgrade: websocket` on the configured path
//! (`/mqtt` by default) and the subprotocol `mqtt` (also `mqttv3.1`, which old clients send);
//! the answer is `101 Switching Protocols` with `Sec-WebSocket-Accept`. Then MQTT bytes travel
//! in binary frames; a packet may span frames and a frame may hold several packets
//! ([MQTT-6.0.0-2]), so the frames are only an envelope: [`WsStream`] strips their headers and
//! unmasks their payload in the driver's own read buffer, in place, and answers ping and close
//! frames itself. A text frame closes the connection with status 1003 ([MQTT-6.0.0-1]); an
//! unmasked client frame with 1002 (RFC 6455 §5.1).
//!
//! Like TLS, it keeps no buffer while idle: what it holds between reads is a frame header of
//! at most 14 bytes and a control frame's payload (at most 125 bytes) while one is arriving;
//! frames going out are built in a write buffer freed when drained.

use crate::ByteStream;
use base64::Engine as _;
use bytes::{Buf, BufMut, BytesMut};
use std::io;
use std::task::{Context, Poll};

/// The largest opening handshake request accepted (request line and headers).
pub const MAX_HANDSHAKE_BYTES: usize = 8 * 1024;
/// A write buffer larger than this is freed once drained.
const KEEP_OUT: usize = 1024;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an opening handshake failed (the HTTP answer, if any, has been sent).
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The socket failed or closed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// Not a WebSocket upgrade request this listener serves; the client got `status`.
    #[error("refused with HTTP {status}: {why}")]
    Refused {
        /// The HTTP status sent.
        status: u16,
        /// Why.
        why: &'static str,
    },
}

impl WsError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            WsError::Io(_) => "io",
            WsError::Refused { .. } => "bad_request",
        }
    }
}

/// Runs the server side of the opening handshake on `inner` and returns the stream of MQTT
/// bytes inside the frames. `path` is the only path served. Not bounded in time: the caller
/// wraps it in its handshake timeout.
pub async fn accept<S: ByteStream>(mut inner: S, path: &str) -> Result<WsStream<S>, WsError> {
    let mut req = BytesMut::with_capacity(1024);
    let (reply, leftover) = loop {
        if req.capacity() - req.len() < 256 {
            req.reserve(1024);
        }
        inner.readable().await?;
        match inner.try_read_buf(&mut req) {
            Ok(0) => {
                return Err(WsError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the WebSocket handshake",
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        match answer(&req, path) {
            Ok(Some((reply, used))) => break (reply, used),
            Ok(None) if req.len() >= MAX_HANDSHAKE_BYTES => {
                let e = refuse(431, "request headers too large");
                send_refusal(&mut inner, &e).await;
                return Err(e);
            }
            Ok(None) => {}
            Err(e) => {
                send_refusal(&mut inner, &e).await;
                return Err(e);
            }
        }
    };
    req.advance(leftover);
    let mut stream = WsStream {
        inner,
        out: BytesMut::from(reply.as_bytes()),
        hdr: [0; 14],
        hdr_len: 0,
        payload_left: 0,
        mask: [0; 4],
        mask_pos: 0,
        control: None,
        fragmented: false,
        closed: false,
        early: (!req.is_empty()).then_some(req),
    };
    stream.flush_all().await?;
    Ok(stream)
}

fn refuse(status: u16, why: &'static str) -> WsError {
    WsError::Refused { status, why }
}

async fn send_refusal<S: ByteStream>(inner: &mut S, e: &WsError) {
    let WsError::Refused { status, why } = e else {
        return;
    };
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let mut extra = "";
    if *status == 426 {
        extra = "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n";
    }
    let body = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}\n",
        why.len() + 1
    );
    // Best effort, bounded by the caller's handshake timeout.
    if inner.write_all_flushed(body.as_bytes()).await.is_err() {
        return;
    }
    let _ = inner.shutdown().await;
}

/// Parses the request in `req`: `Ok(None)` if incomplete, else the `101` answer and how many
/// bytes the request took.
fn answer(req: &[u8], path: &str) -> Result<Option<(String, usize)>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut r = httparse::Request::new(&mut headers);
    let used = match r.parse(req) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(431, "more than 48 request headers"))
        }
        Err(_) => return Err(refuse(400, "malformed HTTP request")),
    };
    if r.method != Some("GET") {
        return Err(refuse(405, "only GET upgrades to a WebSocket"));
    }
    let target = r.path.unwrap_or("");
    let target_path = target.split('?').next().unwrap_or("");
    if target_path != path {
        return Err(refuse(404, "no WebSocket endpoint at this path"));
    }
    let headers: &[httparse::Header<'_>] = r.headers;
    let header = |name: &'static str| header_values(headers, name);
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(refuse(426, "not a WebSocket upgrade request"));
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err(refuse(426, "only WebSocket version 13 is served"));
    }
    let Some(key) = header("sec-websocket-key").next().map(str::trim) else {
        return Err(refuse(400, "Sec-WebSocket-Key missing"));
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !decoded.is_ok_and(|k| k.len() == 16) {
        return Err(refuse(400, "Sec-WebSocket-Key is not 16 bytes in base64"));
    }
    // MQTT 5.0 §6: the client offers "mqtt"; MQTT 3.1 clients offered "mqttv3.1". A client that
    // offers only other subprotocols is not speaking MQTT; one that offers none is accepted
    // (some embedded stacks omit it) and gets none back.
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let chosen = ["mqtt", "mqttv3.1"]
        .into_iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)));
    if !offered.is_empty() && chosen.is_none() {
        return Err(refuse(400, "the subprotocol must be mqtt"));
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    let mut reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = chosen {
        reply.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    reply.push_str("\r\n");
    Ok(Some((reply, used)))
}

/// The values of the headers called `name`, as text.
fn header_values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

/// A control frame being read: its opcode and payload so far.
struct Control {
    opcode: u8,
    left: usize,
    payload: Vec<u8>,
}

/// The MQTT byte stream inside a WebSocket connection.
pub struct WsStream<S> {
    inner: S,
    /// Frames (and the handshake answer) not yet taken by the socket.
    out: BytesMut,
    /// A frame header being read.
    hdr: [u8; 14],
    hdr_len: usize,
    /// Payload bytes of the current data frame not read yet.
    payload_left: u64,
    mask: [u8; 4],
    mask_pos: usize,
    /// A control frame being read.
    control: Option<Control>,
    /// A data message without FIN is open: continuation frames are expected.
    fragmented: bool,
    /// A close frame came (or a protocol error closed the stream): reads return EOF.
    closed: bool,
    /// Bytes that came with the handshake request (a client that did not wait for the 101).
    early: Option<BytesMut>,
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// The header length implied by its first two bytes.
fn header_len(b1: u8) -> usize {
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    match b1 & 0x7f {
        126 => 4 + mask,
        127 => 10 + mask,
        _ => 2 + mask,
    }
}

impl<S: ByteStream> WsStream<S> {
    /// The stream the frames travel on (for a TLS peer certificate).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Queues a frame (server frames are not masked).
    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.out.reserve(payload.len() + 10);
        self.out.put_u8(0x80 | opcode);
        match payload.len() {
            n if n < 126 => self.out.put_u8(n as u8),
            n if n <= 0xffff => {
                self.out.put_u8(126);
                self.out.put_u16(n as u16);
            }
            n => {
                self.out.put_u8(127);
                self.out.put_u64(n as u64);
            }
        }
        self.out.extend_from_slice(payload);
    }

    /// Closes with `code` (1002 protocol error, 1003 unsupported data) and fails the read.
    fn fail(&mut self, code: u16, why: &'static str) -> io::Error {
        if !self.closed {
            self.queue_frame(0x8, &code.to_be_bytes());
            self.closed = true;
        }
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// A complete frame header in `hdr`.
    fn on_header(&mut self) -> io::Result<()> {
        let b0 = self.hdr[0];
        let b1 = self.hdr[1];
        if b0 & 0x70 != 0 {
            return Err(self.fail(
                1002,
                "WebSocket frame with reserved bits (no extension agreed)",
            ));
        }
        if b1 & 0x80 == 0 {
            return Err(self.fail(1002, "unmasked WebSocket frame from a client"));
        }
        let (len, mask_at) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.hdr[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        self.mask.copy_from_slice(&self.hdr[mask_at..mask_at + 4]);
        self.mask_pos = 0;
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        match opcode {
            0x0 if !self.fragmented => Err(self.fail(1002, "continuation frame without a message")),
            0x2 if self.fragmented => Err(self.fail(1002, "new message inside a fragmented one")),
            0x0 | 0x2 => {
                self.fragmented = !fin;
                self.payload_left = len;
                Ok(())
            }
            0x1 => Err(self.fail(1003, "text frame: MQTT travels in binary frames")),
            0x8..=0xa => {
                if !fin || len > 125 {
                    return Err(self.fail(1002, "fragmented or oversized control frame"));
                }
                self.control = Some(Control {
                    opcode,
                    left: len as usize,
                    payload: Vec::with_capacity(len as usize),
                });
                self.finish_control_if_done();
                Ok(())
            }
            _ => Err(self.fail(1002, "unknown WebSocket opcode")),
        }
    }

    fn finish_control_if_done(&mut self) {
        let Some(c) = self.control.as_ref() else {
            return;
        };
        if c.left > 0 {
            return;
        }
        let Some(c) = self.control.take() else {
            return;
        };
        match c.opcode {
            0x9 => self.queue_frame(0xa, &c.payload),
            // Echo the status code (RFC 6455 §5.5.1).
            0x8 if !self.closed => {
                let code = c.payload.get(..2).unwrap_or(&[]).to_vec();
                self.queue_frame(0x8, &code);
                self.closed = true;
            }
            _ => {} // pong: nothing to do
        }
    }

    /// Turns the raw bytes `raw` (frames) into payload in place, at its front; returns how many
    /// payload bytes there are.
    fn unframe(&mut self, raw: &mut [u8]) -> io::Result<usize> {
        let mut i = 0;
        let mut o = 0;
        while i < raw.len() && !self.closed {
            if self.payload_left > 0 {
                let take =
                    (raw.len() - i).min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                for k in 0..take {
                    raw[o + k] = raw[i + k] ^ self.mask[(self.mask_pos + k) & 3];
                }
                self.mask_pos = (self.mask_pos + take) & 3;
                self.payload_left -= take as u64;
                i += take;
                o += take;
                continue;
            }
            if let Some(c) = self.control.as_mut() {
                let take = (raw.len() - i).min(c.left);
                for k in 0..take {
                    c.payload
                        .push(raw[i + k] ^ self.mask[(self.mask_pos + k) & 3]);
                }
                self.mask_pos = (self.mask_pos + take) & 3;
                c.left -= take;
                i += take;
                self.finish_control_if_done();
                continue;
            }
            self.hdr[self.hdr_len] = raw[i];
            self.hdr_len += 1;
            i += 1;
            if self.hdr_len >= 2 && self.hdr_len == header_len(self.hdr[1]) {
                self.hdr_len = 0;
                self.on_header()?;
            }
        }
        Ok(o)
    }
}

impl<S: ByteStream> ByteStream for WsStream<S> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed || self.early.is_some() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_readable(cx)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            if self.closed {
                return Ok(0);
            }
            let start = buf.len();
            let n = match self.early.take() {
                Some(mut early) => {
                    let n = early.len().min(buf.capacity() - start);
                    buf.extend_from_slice(&early[..n]);
                    early.advance(n);
                    if !early.is_empty() {
                        self.early = Some(early);
                    }
                    n
                }
                None => match self.inner.try_read_buf(buf)? {
                    0 => return Ok(0),
                    n => n,
                },
            };
            let mut raw = buf.split_off(start);
            let got = self.unframe(&mut raw[..n]);
            raw.truncate(got.as_ref().map_or(0, |g| *g));
            buf.unsplit(raw);
            let got = got?;
            // Pongs and close answers go out now if the socket has room, else with the
            // driver's next flush (pending_output).
            match self.try_flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if got > 0 {
                return Ok(got);
            }
            // Only headers or control frames: read on.
        }
    }

    async fn writable(&mut self) -> io::Result<()> {
        self.inner.writable().await
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.try_flush()?;
        if buf.is_empty() {
            return Ok(0);
        }
        self.queue_frame(0x2, buf);
        match self.try_flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(buf.len())
    }

    fn pending_output(&self) -> bool {
        !self.out.is_empty() || self.inner.pending_output()
    }

    fn try_flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let n = self.inner.try_write(&self.out)?;
            self.out.advance(n);
        }
        if self.out.capacity() > KEEP_OUT {
            self.out = BytesMut::new();
        }
        self.inner.try_flush()
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        if !self.closed {
            self.queue_frame(0x8, &1000u16.to_be_bytes());
            self.closed = true;
        }
        self.flush_all().await?;
        self.inner.shutdown().await
    }
}
