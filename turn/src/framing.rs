//! ChannelData messages (RFC 8656 §12) and the stream framing used over TCP and TLS.
//!
//! Owns the demultiplexing of what arrives on a TURN listener (STUN vs ChannelData by the first
//! two bits), the ChannelData header, and [`frame_len`], the pure function a TCP/TLS reader
//! uses to cut a byte stream into messages. ChannelData over a stream is padded to a multiple of
//! four bytes; over UDP padding is optional and ignored.

use crate::stun::{HEADER_LEN, MAGIC_COOKIE, pad4};

/// Lowest and highest channel numbers a client may bind: RFC 5766 §11's 0x4000–0x7FFF. RFC 8656
/// §12 narrowed the range to 0x4000–0x4FFF, but RFC 5766 clients (coturn's `turnutils_uclient`
/// among them, which draws any number up to 0x7FFF) still use the whole range, and coturn
/// accepts it; so do we.
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x7FFF;
/// ChannelData header size.
pub const CHANNEL_HEADER_LEN: usize = 4;

/// What kind of message a buffer starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Other,
}

/// Classifies by the first byte: 0b00 is STUN, 0b01 is ChannelData (RFC 8656 §12; RFC 7983).
pub fn classify(buf: &[u8]) -> Kind {
    match buf.first() {
        Some(b) if b & 0xC0 == 0x00 => Kind::Stun,
        Some(b) if b & 0xC0 == 0x40 => Kind::ChannelData,
        _ => Kind::Other,
    }
}

/// A parsed ChannelData message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message. Trailing bytes (padding) are ignored; a length running past
    /// the buffer is refused. Channel numbers outside [`CHANNEL_MIN`]..=[`CHANNEL_MAX`] are refused.
    pub fn parse(buf: &'a [u8]) -> Option<Self> {
        let hdr = buf.get(..CHANNEL_HEADER_LEN)?;
        let channel = u16::from_be_bytes([hdr[0], hdr[1]]);
        let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
            return None;
        }
        let data = buf.get(CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + len)?;
        // Anything beyond the padding is not ours to accept.
        if buf.len() > CHANNEL_HEADER_LEN + pad4(len) {
            return None;
        }
        Some(ChannelData { channel, data })
    }
}

/// Writes a ChannelData header for `len` payload bytes.
pub fn channel_header(channel: u16, len: u16) -> [u8; 4] {
    let c = channel.to_be_bytes();
    let l = len.to_be_bytes();
    [c[0], c[1], l[0], l[1]]
}

/// Why a stream cannot be framed; the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("stream data is neither STUN nor ChannelData")]
    NotTurn,
}

/// Length of the first complete frame in `buf`, `Ok(None)` if more bytes are needed. STUN
/// frames are `20 + length`; ChannelData frames are `4 + length` rounded up to four. The result
/// is never larger than [`MAX_FRAME_LEN`], so a reader's buffer stays bounded.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return match classify(buf) {
            Kind::Other if !buf.is_empty() => Err(FrameError::NotTurn),
            _ => Ok(None),
        };
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    match classify(buf) {
        Kind::Stun => {
            if buf.len() >= 8
                && u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE
            {
                return Err(FrameError::NotTurn);
            }
            let n = HEADER_LEN + len;
            Ok((buf.len() >= n).then_some(n))
        }
        Kind::ChannelData => {
            let n = CHANNEL_HEADER_LEN + pad4(len);
            Ok((buf.len() >= n).then_some(n))
        }
        Kind::Other => Err(FrameError::NotTurn),
    }
}

/// Largest frame [`frame_len`] can return.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + 0xFFFF + 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_first_bits() {
        assert_eq!(classify(&[0x00]), Kind::Stun);
        assert_eq!(classify(&[0x40]), Kind::ChannelData);
        assert_eq!(classify(&[0x7F]), Kind::ChannelData);
        assert_eq!(classify(&[0x80]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
    }

    #[test]
    fn channel_data_parse_bounds() {
        let mut m = channel_header(0x4001, 5).to_vec();
        m.extend_from_slice(b"hello");
        let c = ChannelData::parse(&m).unwrap();
        assert_eq!(c.channel, 0x4001);
        assert_eq!(c.data, b"hello");
        m.extend_from_slice(&[0, 0, 0]);
        assert!(ChannelData::parse(&m).is_some(), "padding accepted");
        m.push(0);
        assert!(
            ChannelData::parse(&m).is_none(),
            "junk past padding refused"
        );
        assert!(ChannelData::parse(&channel_header(0x4001, 9)).is_none());
        assert!(ChannelData::parse(&channel_header(0x3FFF, 0)).is_none());
        assert!(ChannelData::parse(&channel_header(0x7FFF, 0)).is_some());
        assert!(ChannelData::parse(&channel_header(0x8000, 0)).is_none());
        assert!(ChannelData::parse(&[0x40, 0x00]).is_none());
    }

    #[test]
    fn framing_cuts_stun_and_padded_channel_data() {
        let mut s = Vec::new();
        crate::stun::MessageBuilder::new(
            &mut s,
            crate::stun::method::BINDING,
            crate::stun::Class::Request,
            [0; 12],
        )
        .attr(crate::stun::attr::USERNAME, b"ab");
        let stun_len = s.len();
        s.extend_from_slice(&channel_header(0x4000, 5));
        s.extend_from_slice(b"hello\0\0\0");
        assert_eq!(frame_len(&s[..3]), Ok(None));
        assert_eq!(frame_len(&s[..stun_len - 1]), Ok(None));
        assert_eq!(frame_len(&s), Ok(Some(stun_len)));
        let rest = &s[stun_len..];
        assert_eq!(frame_len(&rest[..8]), Ok(None), "padding is awaited");
        assert_eq!(frame_len(rest), Ok(Some(12)));
        assert_eq!(frame_len(&[0xFF, 0, 0, 0]), Err(FrameError::NotTurn));
        assert_eq!(frame_len(&[0x80]), Err(FrameError::NotTurn));
        assert_eq!(
            frame_len(&[0, 1, 0, 0, 1, 2, 3, 4]),
            Err(FrameError::NotTurn),
            "STUN without cookie"
        );
    }
}
