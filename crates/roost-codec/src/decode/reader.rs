//! The bounds-checked cursor every packet parser reads through.
//!
//! A [`Reader`] owns the frozen bytes of one packet body (split off the connection buffer once
//! the whole packet is there) or of one property block; `binary` and `rest` hand out slices of
//! that same buffer, so payloads are not copied. Reading past the end is
//! [`DecodeError::LengthOverrun`], never a panic.

use bytes::{Buf, Bytes};

use super::{decode_vbi, Result};
use crate::error::DecodeError;
use crate::packet::PacketId;

/// A cursor over one packet's body (or one property block). Every read is bounds-checked;
/// running past the end is [`DecodeError::LengthOverrun`].
pub(super) struct Reader {
    buf: Bytes,
}

impl Reader {
    /// A cursor over `buf`, which holds exactly one packet body or one property block.
    pub(super) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes left to read.
    pub(super) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        if self.buf.is_empty() {
            return Err(DecodeError::LengthOverrun);
        }
        Ok(self.buf.get_u8())
    }

    pub(super) fn u16(&mut self) -> Result<u16> {
        if self.buf.len() < 2 {
            return Err(DecodeError::LengthOverrun);
        }
        Ok(self.buf.get_u16())
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        if self.buf.len() < 4 {
            return Err(DecodeError::LengthOverrun);
        }
        Ok(self.buf.get_u32())
    }

    pub(super) fn vbi(&mut self) -> Result<u32> {
        match decode_vbi(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::LengthOverrun),
        }
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<Bytes> {
        if self.buf.len() < n {
            return Err(DecodeError::LengthOverrun);
        }
        Ok(self.buf.split_to(n))
    }

    /// Binary Data: 2-byte length then bytes (shares the packet buffer).
    pub(super) fn binary(&mut self) -> Result<Bytes> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    /// UTF-8 Encoded String ([MQTT-1.5.4-1/2]).
    pub(super) fn string(&mut self) -> Result<String> {
        let n = usize::from(self.u16()?);
        if self.buf.len() < n {
            return Err(DecodeError::LengthOverrun);
        }
        let s = std::str::from_utf8(&self.buf[..n]).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::NullCharacter);
        }
        let s = s.to_owned();
        self.buf.advance(n);
        Ok(s)
    }

    pub(super) fn packet_id(&mut self) -> Result<PacketId> {
        PacketId::new(self.u16()?).ok_or(DecodeError::ZeroPacketId)
    }

    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    pub(super) fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}
