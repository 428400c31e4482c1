//! STUN message codec (RFC 8489) with the TURN attributes of RFC 8656.
//!
//! Owns the wire format only: a zero-copy, allocation-free [`Message`] view over received bytes,
//! a [`MessageBuilder`] that writes responses into a caller's `Vec`, XOR address coding,
//! MESSAGE-INTEGRITY (HMAC-SHA1), MESSAGE-INTEGRITY-SHA256 and FINGERPRINT. It knows nothing
//! about allocations, credentials or sockets. Every parse step is bounds-checked: a malformed
//! message is an `Err`, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// The fixed magic cookie of RFC 5389 and later.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;
/// XOR applied to the CRC32 in FINGERPRINT.
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// A STUN message can never be longer than this (16-bit length plus header).
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + 0xFFFF;
/// Attributes kept per parsed message; more than this is refused as a Bad Request. Real clients
/// send fewer than 15, and the bound keeps the view on the stack.
pub const MAX_ATTRIBUTES: usize = 32;

/// STUN/TURN methods we implement.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute type codes (RFC 8489 §18.3, RFC 8656 §18, RFC 8445 for the ICE ones).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const ICMP: u16 = 0x8004;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;

    /// Comprehension-required attributes (0x0000–0x7FFF) that the server understands. Any
    /// other comprehension-required attribute in a request earns a 420.
    pub fn is_understood(t: u16) -> bool {
        matches!(
            t,
            MAPPED_ADDRESS
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REALM
                | NONCE
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | DONT_FRAGMENT
                | MESSAGE_INTEGRITY_SHA256
                | PASSWORD_ALGORITHM
                | USERHASH
                | XOR_MAPPED_ADDRESS
                | RESERVATION_TOKEN
                | PRIORITY
                | USE_CANDIDATE
        ) || t >= 0x8000
    }
}

/// The four STUN message classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x000,
            Class::Indication => 0x010,
            Class::Success => 0x100,
            Class::Error => 0x110,
        }
    }

    fn from_type(t: u16) -> Self {
        match t & 0x0110 {
            0x000 => Class::Request,
            0x010 => Class::Indication,
            0x100 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// Packs a method and class into the 14-bit STUN message type.
pub fn message_type(method: u16, class: Class) -> u16 {
    let m = method & 0x0FFF;
    ((m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2)) | class.bits()
}

fn method_from_type(t: u16) -> u16 {
    (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2)
}

/// Why bytes are not a STUN message we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("not a STUN message (top bits or magic cookie)")]
    NotStun,
    #[error("length field disagrees with the bytes received")]
    BadLength,
    #[error("attribute runs past the end of the message")]
    TruncatedAttribute,
    #[error("too many attributes")]
    TooManyAttributes,
    #[error("attribute after FINGERPRINT")]
    AfterFingerprint,
    #[error("FINGERPRINT has a wrong length")]
    BadFingerprint,
}

/// Where one attribute's value sits inside the message bytes.
#[derive(Clone, Copy, Debug, Default)]
struct AttrRef {
    typ: u16,
    start: u32,
    len: u16,
}

/// A parsed STUN message borrowing the received bytes. Attribute lookups return the first
/// occurrence (duplicates are ignored, RFC 8489 §14), and attributes after MESSAGE-INTEGRITY
/// other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are ignored.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    raw: &'a [u8],
    typ: u16,
    attrs: [AttrRef; MAX_ATTRIBUTES],
    n_attrs: usize,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if present.
    integrity_at: Option<usize>,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute header, if present.
    integrity_sha256_at: Option<usize>,
    /// Offset of the FINGERPRINT attribute header, if present.
    fingerprint_at: Option<usize>,
}

/// Returns true if `buf` starts like a STUN message (top two bits zero and the magic cookie).
pub fn looks_like_stun(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN
        && buf[0] & 0xC0 == 0
        && u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) == MAGIC_COOKIE
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Rounds up to a multiple of four (attribute padding).
pub fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

impl<'a> Message<'a> {
    /// Parses one complete STUN message. `buf` must hold exactly the message (a UDP datagram or
    /// one frame cut by the TCP framer); trailing bytes are an error.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        if !looks_like_stun(buf) {
            return Err(ParseError::NotStun);
        }
        let typ = be16(buf, 0).ok_or(ParseError::TooShort)?;
        let len = usize::from(be16(buf, 2).ok_or(ParseError::TooShort)?);
        if len % 4 != 0 || HEADER_LEN + len != buf.len() {
            return Err(ParseError::BadLength);
        }
        let mut msg = Message {
            raw: buf,
            typ,
            attrs: [AttrRef::default(); MAX_ATTRIBUTES],
            n_attrs: 0,
            integrity_at: None,
            integrity_sha256_at: None,
            fingerprint_at: None,
        };
        let mut at = HEADER_LEN;
        while at < buf.len() {
            let t = be16(buf, at).ok_or(ParseError::TruncatedAttribute)?;
            let l = usize::from(be16(buf, at + 2).ok_or(ParseError::TruncatedAttribute)?);
            let value_start = at + 4;
            let next = value_start + pad4(l);
            if next > buf.len() {
                return Err(ParseError::TruncatedAttribute);
            }
            if msg.fingerprint_at.is_some() {
                return Err(ParseError::AfterFingerprint);
            }
            match t {
                attr::FINGERPRINT => {
                    if l != 4 {
                        return Err(ParseError::BadFingerprint);
                    }
                    msg.fingerprint_at = Some(at);
                }
                attr::MESSAGE_INTEGRITY_SHA256 if msg.integrity_sha256_at.is_none() => {
                    msg.integrity_sha256_at = Some(at);
                }
                attr::MESSAGE_INTEGRITY if msg.integrity_at.is_none() => {
                    // MI after MI-SHA256 is ignored (RFC 8489 §14.6).
                    if msg.integrity_sha256_at.is_none() {
                        msg.integrity_at = Some(at);
                    }
                }
                _ if msg.integrity_at.is_some() || msg.integrity_sha256_at.is_some() => {
                    // Ignored: not covered by integrity.
                }
                _ => {
                    if msg.n_attrs == MAX_ATTRIBUTES {
                        return Err(ParseError::TooManyAttributes);
                    }
                    // Both fit: the buffer is at most 65,555 bytes and `l` came from a u16.
                    let start = u32::try_from(value_start).map_err(|_| ParseError::BadLength)?;
                    let len16 = u16::try_from(l).map_err(|_| ParseError::BadLength)?;
                    msg.attrs[msg.n_attrs] = AttrRef {
                        typ: t,
                        start,
                        len: len16,
                    };
                    msg.n_attrs += 1;
                }
            }
            at = next;
        }
        Ok(msg)
    }

    /// The whole message bytes.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn class(&self) -> Class {
        Class::from_type(self.typ)
    }

    pub fn method(&self) -> u16 {
        method_from_type(self.typ)
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.raw[8..20]);
        t
    }

    /// Value of the first attribute of type `t`.
    pub fn get(&self, t: u16) -> Option<&'a [u8]> {
        self.attrs[..self.n_attrs]
            .iter()
            .find(|a| a.typ == t)
            .and_then(|a| self.value(a))
    }

    /// Values of every attribute of type `t`, in order (for repeated XOR-PEER-ADDRESS).
    pub fn get_all(&self, t: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.attrs[..self.n_attrs]
            .iter()
            .filter(move |a| a.typ == t)
            .filter_map(|a| self.value(a))
    }

    /// Types of all (integrity-covered) attributes, in order.
    pub fn attribute_types(&self) -> impl Iterator<Item = u16> + '_ {
        self.attrs[..self.n_attrs].iter().map(|a| a.typ)
    }

    fn value(&self, a: &AttrRef) -> Option<&'a [u8]> {
        let s = a.start as usize;
        self.raw.get(s..s + usize::from(a.len))
    }

    pub fn has(&self, t: u16) -> bool {
        self.attrs[..self.n_attrs].iter().any(|a| a.typ == t)
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some() || self.integrity_sha256_at.is_some()
    }

    pub fn has_integrity_sha256(&self) -> bool {
        self.integrity_sha256_at.is_some()
    }

    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint_at.is_some()
    }

    /// Checks FINGERPRINT when present. A message without FINGERPRINT passes.
    pub fn fingerprint_ok(&self) -> bool {
        let Some(at) = self.fingerprint_at else {
            return true;
        };
        let Some(got) = be32(self.raw, at + 4) else {
            return false;
        };
        fingerprint_of(self.raw, at) == got
    }

    /// Verifies MESSAGE-INTEGRITY-SHA256 if present, otherwise MESSAGE-INTEGRITY, with `key`
    /// (the long-term key MD5(username:realm:password) or a short-term password). Constant
    /// time in the MAC comparison.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        if let Some(at) = self.integrity_sha256_at {
            let Some(l) = be16(self.raw, at + 2) else {
                return false;
            };
            let l = usize::from(l);
            // RFC 8489 §14.6: 16..=32 bytes, a multiple of 4.
            if !(16..=32).contains(&l) || l % 4 != 0 {
                return false;
            }
            let Some(expected) = self.raw.get(at + 4..at + 4 + l) else {
                return false;
            };
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                return false;
            };
            feed_adjusted(&mut mac, self.raw, at, at + 4 + pad4(l));
            return mac.verify_truncated_left(expected).is_ok();
        }
        if let Some(at) = self.integrity_at {
            if be16(self.raw, at + 2) != Some(20) {
                return false;
            }
            let Some(expected) = self.raw.get(at + 4..at + 24) else {
                return false;
            };
            let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
                return false;
            };
            feed_adjusted(&mut mac, self.raw, at, at + 24);
            return mac.verify_slice(expected).is_ok();
        }
        false
    }
}

/// Feeds `raw[..upto]` into `mac` with the header length rewritten so that the message appears
/// to end at `end` (the end of the integrity attribute), as RFC 8489 §14.5 requires.
fn feed_adjusted<M: Mac>(mac: &mut M, raw: &[u8], upto: usize, end: usize) {
    let adj = u16::try_from(end.saturating_sub(HEADER_LEN)).unwrap_or(u16::MAX);
    mac.update(&raw[0..2]);
    mac.update(&adj.to_be_bytes());
    mac.update(&raw[4..upto]);
}

/// CRC32 of `raw[..at]` with the length field covering a FINGERPRINT attribute at `at`.
fn fingerprint_of(raw: &[u8], at: usize) -> u32 {
    let adj = u16::try_from(at + 8 - HEADER_LEN).unwrap_or(u16::MAX);
    let mut h = crc32fast::Hasher::new();
    h.update(&raw[0..2]);
    h.update(&adj.to_be_bytes());
    h.update(&raw[4..at]);
    h.finalize() ^ FINGERPRINT_XOR
}

/// Decodes an XOR-MAPPED-ADDRESS / XOR-PEER-ADDRESS / XOR-RELAYED-ADDRESS value.
pub fn decode_xor_address(value: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let port = be16(value, 2)? ^ (MAGIC_COOKIE >> 16) as u16;
    match (family, value.len()) {
        (0x01, 8) => {
            let a = be32(value, 4)? ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
        }
        (0x02, 20) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(tid);
            let mut a = [0u8; 16];
            for (i, b) in a.iter_mut().enumerate() {
                *b = value.get(4 + i)? ^ key[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        _ => None,
    }
}

/// Decodes a plain (non-XOR) MAPPED-ADDRESS value.
pub fn decode_address(value: &[u8]) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let port = be16(value, 2)?;
    match (family, value.len()) {
        (0x01, 8) => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(be32(value, 4)?)),
            port,
        )),
        (0x02, 20) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(value.get(4..20)?);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        _ => None,
    }
}

/// Writes the XOR-encoded address value (without attribute header) into `out`.
pub fn encode_xor_address(out: &mut Vec<u8>, addr: SocketAddr, tid: &[u8; 12]) {
    let xport = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[0, 0x01]);
            out.extend_from_slice(&xport.to_be_bytes());
            out.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[0, 0x02]);
            out.extend_from_slice(&xport.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(tid);
            let o = ip.octets();
            for i in 0..16 {
                out.push(o[i] ^ key[i]);
            }
        }
    }
}

/// Length of an encoded XOR address attribute including its 4-byte header.
pub fn xor_address_attr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 12,
        SocketAddr::V6(_) => 24,
    }
}

/// Decodes ERROR-CODE into (code, reason).
pub fn decode_error_code(value: &[u8]) -> Option<(u16, &str)> {
    let class = u16::from(*value.get(2)? & 0x07);
    let number = u16::from(*value.get(3)?);
    if !(3..=6).contains(&class) || number > 99 {
        return None;
    }
    let reason = std::str::from_utf8(value.get(4..)?).ok()?;
    Some((class * 100 + number, reason))
}

/// Builds a STUN message into a `Vec`. Attributes are appended in call order; integrity and
/// fingerprint must come last and in that order.
pub struct MessageBuilder<'v> {
    out: &'v mut Vec<u8>,
    start: usize,
    tid: [u8; 12],
}

impl<'v> MessageBuilder<'v> {
    /// Starts a message at the end of `out` (which is not cleared, so a TCP writer can append).
    pub fn new(out: &'v mut Vec<u8>, method: u16, class: Class, tid: [u8; 12]) -> Self {
        let start = out.len();
        out.extend_from_slice(&message_type(method, class).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&tid);
        MessageBuilder { out, start, tid }
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        self.tid
    }

    fn set_len(&mut self) {
        let len = self.out.len() - self.start - HEADER_LEN;
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        self.out[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends a raw attribute with zero padding (RFC 8489 asks for zeros; CVE-2020-4067 was an
    /// uninitialised-padding leak).
    pub fn attr(&mut self, t: u16, value: &[u8]) -> &mut Self {
        let l = u16::try_from(value.len()).unwrap_or(u16::MAX);
        self.out.extend_from_slice(&t.to_be_bytes());
        self.out.extend_from_slice(&l.to_be_bytes());
        self.out.extend_from_slice(&value[..usize::from(l)]);
        let pad = pad4(usize::from(l)) - usize::from(l);
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self.set_len();
        self
    }

    /// Appends an attribute padded with `pad` bytes instead of zeros. RFC 5389 let senders pad
    /// with anything (RFC 5769's vectors use spaces); only the test vectors need this.
    pub fn attr_with_padding(&mut self, t: u16, value: &[u8], pad: u8) -> &mut Self {
        self.attr(t, value);
        let n = pad4(value.len()) - value.len();
        let end = self.out.len();
        self.out[end - n..].fill(pad);
        self
    }

    pub fn u32_attr(&mut self, t: u16, v: u32) -> &mut Self {
        self.attr(t, &v.to_be_bytes())
    }

    pub fn xor_address(&mut self, t: u16, addr: SocketAddr) -> &mut Self {
        let len: u16 = if addr.is_ipv4() { 8 } else { 20 };
        self.out.extend_from_slice(&t.to_be_bytes());
        self.out.extend_from_slice(&len.to_be_bytes());
        let tid = self.tid;
        encode_xor_address(self.out, addr, &tid);
        self.set_len();
        self
    }

    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = Vec::with_capacity(4 + reason.len());
        v.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 over the message so far).
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let at = self.out.len();
        self.out
            .extend_from_slice(&attr::MESSAGE_INTEGRITY.to_be_bytes());
        self.out.extend_from_slice(&20u16.to_be_bytes());
        self.out.extend_from_slice(&[0u8; 20]);
        self.set_len();
        if let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) {
            mac.update(&self.out[self.start..at]);
            let tag = mac.finalize().into_bytes();
            self.out[at + 4..at + 24].copy_from_slice(&tag);
        }
        self
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32-byte HMAC-SHA256).
    pub fn integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let at = self.out.len();
        self.out
            .extend_from_slice(&attr::MESSAGE_INTEGRITY_SHA256.to_be_bytes());
        self.out.extend_from_slice(&32u16.to_be_bytes());
        self.out.extend_from_slice(&[0u8; 32]);
        self.set_len();
        if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) {
            mac.update(&self.out[self.start..at]);
            let tag = mac.finalize().into_bytes();
            self.out[at + 4..at + 36].copy_from_slice(&tag);
        }
        self
    }

    /// Appends FINGERPRINT; must be the last attribute.
    pub fn fingerprint(&mut self) -> &mut Self {
        let at = self.out.len();
        self.out.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
        self.out.extend_from_slice(&4u16.to_be_bytes());
        self.out.extend_from_slice(&[0u8; 4]);
        self.set_len();
        let crc = fingerprint_of(&self.out[self.start..], at - self.start);
        self.out[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
        self
    }

    /// Length of the message written so far.
    pub fn len(&self) -> usize {
        self.out.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reason phrases for the error codes the server sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips_all_methods_and_classes() {
        for m in 0..0x1000u16 {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = message_type(m, c);
                assert_eq!(t & 0xC000, 0);
                assert_eq!(method_from_type(t), m);
                assert_eq!(Class::from_type(t), c);
            }
        }
        // Known values from RFC 8489/8656.
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
    }

    #[test]
    fn builder_output_parses_and_verifies() {
        let tid = [7u8; 12];
        let mut out = Vec::new();
        let peer: SocketAddr = "[2001:db8::1]:4242".parse().unwrap();
        MessageBuilder::new(&mut out, method::CHANNEL_BIND, Class::Request, tid)
            .u32_attr(attr::CHANNEL_NUMBER, 0x4001_0000)
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::USERNAME, b"abc")
            .integrity(b"key")
            .integrity_sha256(b"key")
            .fingerprint();
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.method(), method::CHANNEL_BIND);
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.transaction_id(), tid);
        assert_eq!(m.get(attr::USERNAME), Some(&b"abc"[..]));
        let pa = decode_xor_address(m.get(attr::XOR_PEER_ADDRESS).unwrap(), &tid).unwrap();
        assert_eq!(pa, peer);
        assert!(m.fingerprint_ok());
        // With both present the SHA-256 variant is the one checked (RFC 8489 §14.6).
        assert!(m.verify_integrity(b"key"));
        assert!(!m.verify_integrity(b"other"));
    }

    #[test]
    fn duplicate_attribute_keeps_first_occurrence() {
        let mut out = Vec::new();
        MessageBuilder::new(&mut out, method::BINDING, Class::Request, [1; 12])
            .attr(attr::USERNAME, b"first")
            .attr(attr::USERNAME, b"second");
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.get(attr::USERNAME), Some(&b"first"[..]));
        assert_eq!(m.get_all(attr::USERNAME).count(), 2);
    }

    #[test]
    fn attributes_after_integrity_are_ignored_and_after_fingerprint_refused() {
        let mut out = Vec::new();
        MessageBuilder::new(&mut out, method::BINDING, Class::Request, [1; 12])
            .integrity(b"k")
            .attr(attr::USERNAME, b"late");
        let m = Message::parse(&out).unwrap();
        assert!(m.get(attr::USERNAME).is_none());

        let mut out = Vec::new();
        MessageBuilder::new(&mut out, method::BINDING, Class::Request, [1; 12])
            .fingerprint()
            .attr(attr::USERNAME, b"late");
        assert_eq!(
            Message::parse(&out).unwrap_err(),
            ParseError::AfterFingerprint
        );
    }

    #[test]
    fn bad_lengths_are_refused() {
        let mut out = Vec::new();
        MessageBuilder::new(&mut out, method::BINDING, Class::Request, [1; 12])
            .attr(attr::USERNAME, b"abcd");
        // Length field not a multiple of four.
        let mut b = out.clone();
        b[3] = 5;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadLength);
        // Datagram shorter than the length field.
        assert_eq!(
            Message::parse(&out[..out.len() - 4]).unwrap_err(),
            ParseError::BadLength
        );
        // Attribute length running past the end.
        let mut b = out.clone();
        b[22..24].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(
            Message::parse(&b).unwrap_err(),
            ParseError::TruncatedAttribute
        );
        // Wrong cookie.
        let mut b = out.clone();
        b[4] ^= 1;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::NotStun);
    }

    #[test]
    fn too_many_attributes_refused() {
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, method::BINDING, Class::Request, [1; 12]);
        for _ in 0..=MAX_ATTRIBUTES {
            b.attr(attr::PRIORITY, &[0, 0, 0, 1]);
        }
        assert_eq!(
            Message::parse(&out).unwrap_err(),
            ParseError::TooManyAttributes
        );
    }

    #[test]
    fn xor_address_v4_and_v6_round_trip() {
        let tid = *b"0123456789ab";
        for a in [
            "192.0.2.1:32853",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            "[::]:1",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut v = Vec::new();
            encode_xor_address(&mut v, a, &tid);
            assert_eq!(v.len() + 4, xor_address_attr_len(&a));
            assert_eq!(decode_xor_address(&v, &tid), Some(a));
        }
        assert_eq!(decode_xor_address(&[0, 1, 0], &tid), None);
        assert_eq!(decode_xor_address(&[0, 3, 0, 0, 0, 0, 0, 0], &tid), None);
    }

    #[test]
    fn error_code_round_trip() {
        let mut out = Vec::new();
        MessageBuilder::new(&mut out, method::ALLOCATE, Class::Error, [2; 12])
            .error_code(438, "Stale Nonce");
        let m = Message::parse(&out).unwrap();
        assert_eq!(
            decode_error_code(m.get(attr::ERROR_CODE).unwrap()),
            Some((438, "Stale Nonce"))
        );
    }
}
