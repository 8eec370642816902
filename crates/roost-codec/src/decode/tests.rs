//! Unit tests for the pieces of the decoder that can be checked from a few bytes: the Variable
//! Byte Integer, topic filter validation and the fixed-header flags, as `test_case` tables.
//! Whole packets, malformed and well formed, are tested in `tests/decode_errors.rs` and
//! `tests/roundtrip.rs`.

#![allow(clippy::unwrap_used)]

use super::*;
use test_case::test_case;

#[test_case(&[0x00] => Ok(Some((0, 1))); "zero")]
#[test_case(&[0x7F] => Ok(Some((127, 1))); "one byte max")]
#[test_case(&[0x80, 0x01] => Ok(Some((128, 2))); "two bytes min")]
#[test_case(&[0xFF, 0x7F] => Ok(Some((16_383, 2))); "two bytes max")]
#[test_case(&[0x80, 0x80, 0x01] => Ok(Some((16_384, 3))); "three bytes min")]
#[test_case(&[0xFF, 0xFF, 0xFF, 0x7F] => Ok(Some((268_435_455, 4))); "four bytes max")]
#[test_case(&[0x80] => Ok(None); "incomplete")]
#[test_case(&[0xFF, 0xFF, 0xFF] => Ok(None); "incomplete three")]
#[test_case(&[0x80, 0x00] => Err(DecodeError::MalformedVariableByteInteger); "non minimal zero")]
#[test_case(&[0xFF, 0x80, 0x00] => Err(DecodeError::MalformedVariableByteInteger); "non minimal three")]
#[test_case(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01] => Err(DecodeError::MalformedVariableByteInteger); "five bytes")]
#[test_case(&[0xFF, 0xFF, 0xFF, 0xFF] => Err(DecodeError::MalformedVariableByteInteger); "fourth byte continues")]
fn vbi(bytes: &[u8]) -> Result<Option<(u32, usize)>> {
    decode_vbi(bytes)
}

#[test_case("a/b" => Ok(false); "plain")]
#[test_case("#" => Ok(false); "hash")]
#[test_case("a/+/#" => Ok(false); "both wildcards")]
#[test_case("$share/g/a/+" => Ok(true); "shared")]
#[test_case("$share/g/#" => Ok(true); "shared hash")]
#[test_case("$share" => Ok(false); "share prefix without slash")]
#[test_case("" => Err(DecodeError::EmptyTopicFilter); "empty")]
#[test_case("#/a" => Err(DecodeError::MisplacedMultiLevelWildcard); "hash first")]
#[test_case("a/+b" => Err(DecodeError::MisplacedSingleLevelWildcard); "plus joined")]
#[test_case("$share/a+/b" => Err(DecodeError::InvalidShareName); "plus in group")]
#[test_case("$share/" => Err(DecodeError::InvalidShareName); "share nothing")]
#[test_case("$share/g/" => Err(DecodeError::MissingSharedFilter); "share no filter")]
fn topic_filter(filter: &str) -> Result<bool> {
    check_topic_filter(filter)
}

#[test_case(3, 0b0110 => Err(DecodeError::InvalidQoS); "publish qos 3")]
#[test_case(3, 0b1000 => Err(DecodeError::DupWithQoS0); "publish dup qos 0")]
#[test_case(3, 0b1101 => Ok(()); "publish dup qos 2 retain")]
#[test_case(6, 0b0010 => Ok(()); "pubrel")]
#[test_case(8, 0b0010 => Ok(()); "subscribe")]
#[test_case(10, 0b0010 => Ok(()); "unsubscribe")]
#[test_case(10, 0b0000 => Err(DecodeError::InvalidFixedHeaderFlags { packet_type: 10, flags: 0 }); "unsubscribe 0")]
#[test_case(1, 0b0010 => Err(DecodeError::InvalidFixedHeaderFlags { packet_type: 1, flags: 2 }); "connect 2")]
#[test_case(15, 0b0001 => Err(DecodeError::InvalidFixedHeaderFlags { packet_type: 15, flags: 1 }); "auth 1")]
fn flags(packet_type: u8, flags: u8) -> Result<()> {
    check_flags(packet_type, flags)
}
