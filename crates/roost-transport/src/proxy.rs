//! The PROXY protocol (HAProxy's, versions 1 and 2) on listeners behind a TCP load balancer:
//! the balancer sends one header with the client's real address before anything else, and the
//! broker logs and reports that address instead of the balancer's. Parsed with `ppp`.
//!
//! The header is read with `peek` and then consumed exactly, so the bytes after it (a TLS
//! ClientHello, a WebSocket upgrade, a CONNECT) stay in the socket for the next layer. A
//! listener that expects the header refuses a connection without one: a client reaching
//! the port directly cannot then claim any address.

use ppp::{v1, v2, HeaderResult, PartialResult};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header: v2's 16 bytes plus at most 216 address bytes; v1's 107. TLVs beyond
/// that are not expected from a balancer in front of MQTT and are refused.
pub const MAX_HEADER: usize = 536;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket failed or closed first.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// Not a PROXY header, or a malformed one.
    #[error("bad PROXY protocol header: {0}")]
    Invalid(String),
}

/// Reads the PROXY header at the start of `tcp`. Returns the client's address, or `None` when
/// the header says it has none (v1 `UNKNOWN`, v2 `LOCAL`: a balancer's health check).
/// Not bounded in time: the caller wraps it in its handshake timeout.
pub async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    let mut buf = [0u8; MAX_HEADER];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the PROXY header",
            )
            .into());
        }
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n == MAX_HEADER {
                return Err(ProxyError::Invalid("header too long".into()));
            }
            // More of the header is on its way (it nearly always comes in one segment):
            // peeking again at once would return the same bytes.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let (len, addr) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (
                h.len(),
                match h.command {
                    v2::Command::Local => None,
                    v2::Command::Proxy => v2_source(&h.addresses),
                },
            ),
            HeaderResult::V1(Err(e)) => return Err(ProxyError::Invalid(e.to_string())),
            HeaderResult::V2(Err(e)) => return Err(ProxyError::Invalid(e.to_string())),
        };
        // Consume exactly the header.
        let mut header = vec![0u8; len];
        tcp.read_exact(&mut header).await?;
        return Ok(addr);
    }
}

fn v1_source(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(a: &v2::Addresses) -> Option<SocketAddr> {
    match a {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}
