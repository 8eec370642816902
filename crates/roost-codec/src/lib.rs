//! MQTT 3.1.1 and 5.0 packet codec.
//!
//! Owns the wire format and nothing else: no tokio, no sockets, no clock. The connection driver
//! in `roost-node` reads bytes into a `BytesMut`, calls [`Decoder::decode`] until it returns
//! `Ok(None)` (need more bytes), and writes outbound packets with [`encode`].
//!
//! ```text
//!  socket bytes -> BytesMut -> Decoder::decode -> Packet -> (roost-core session)
//!  Packet -> encode -> BytesMut (batched) -> socket
//! ```
//!
//! Contract (house style, convention 2):
//! - an incomplete packet is `Ok(None)`, never an error, and consumes nothing;
//! - the remaining length is checked against the maximum packet size before anything is
//!   allocated;
//! - the first packet a server decoder sees must be CONNECT, whose protocol name and level select
//!   the version for the rest of the connection, so one listener serves 3.1.1 and 5.0;
//! - every malformed-packet error cites its normative statement and maps to the reason code the
//!   client is sent ([`DecodeError::reason_code`]).

mod decode;
mod encode;
mod error;
mod packet;

pub use decode::Decoder;
pub use encode::{encode, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use packet::*;

/// The largest remaining length the variable-byte-integer encoding can express (268,435,455).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
