//! A minimal sans-IO TURN client: builds authenticated requests and reads responses.
//!
//! Owns nothing the server depends on. It exists for the tests, the benchmark, and other Moien
//! crates' tests (e.g. a relay-only call probe): it learns REALM and NONCE from a 401/438 and
//! signs every later request with the long-term key, like a browser does.

use std::net::SocketAddr;

use crate::auth::long_term_key;
use crate::framing::channel_header;
use crate::stun::{self, Class, Message, MessageBuilder, attr, method};

/// What a response said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub method: u16,
    pub class: Class,
    pub transaction_id: [u8; 12],
    /// ERROR-CODE, for error responses.
    pub code: Option<u16>,
    pub relayed: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub lifetime: Option<u32>,
    /// MESSAGE-INTEGRITY verified with the client's key (false if absent).
    pub integrity_ok: bool,
}

/// Parses any STUN response; `None` if `bytes` is not a STUN response.
pub fn parse_response(bytes: &[u8], key: Option<&[u8]>) -> Option<Response> {
    let m = Message::parse(bytes).ok()?;
    if !matches!(m.class(), Class::Success | Class::Error) {
        return None;
    }
    let tid = m.transaction_id();
    Some(Response {
        method: m.method(),
        class: m.class(),
        transaction_id: tid,
        code: m
            .get(attr::ERROR_CODE)
            .and_then(stun::decode_error_code)
            .map(|(c, _)| c),
        relayed: m
            .get(attr::XOR_RELAYED_ADDRESS)
            .and_then(|v| stun::decode_xor_address(v, &tid)),
        mapped: m
            .get(attr::XOR_MAPPED_ADDRESS)
            .and_then(|v| stun::decode_xor_address(v, &tid)),
        lifetime: m
            .get(attr::LIFETIME)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes),
        integrity_ok: key.is_some_and(|k| m.verify_integrity(k)),
    })
}

/// A STUN Binding request.
pub fn binding_request(tid: [u8; 12]) -> Vec<u8> {
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, method::BINDING, Class::Request, tid).fingerprint();
    out
}

/// A ChannelData message, padded to four bytes when `pad` (stream transports).
pub fn channel_data(channel: u16, data: &[u8], pad: bool) -> Vec<u8> {
    let mut out = channel_header(channel, data.len() as u16).to_vec();
    out.extend_from_slice(data);
    if pad {
        out.resize(stun::pad4(out.len()), 0);
    }
    out
}

/// Client state: credentials, the server's realm and nonce once learnt, a transaction counter.
pub struct TurnClient {
    username: String,
    password: String,
    realm: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
    counter: u64,
    /// Sign with MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY.
    pub use_sha256: bool,
}

impl TurnClient {
    pub fn new(username: &str, password: &str) -> Self {
        TurnClient {
            username: username.into(),
            password: password.into(),
            realm: None,
            nonce: None,
            counter: 0,
            use_sha256: false,
        }
    }

    /// The long-term key, once the realm is known.
    pub fn key(&self) -> Option<[u8; 16]> {
        let realm = self.realm.as_ref()?;
        Some(long_term_key(
            self.username.as_bytes(),
            realm,
            self.password.as_bytes(),
        ))
    }

    /// Overrides the nonce (for stale/forged nonce tests).
    pub fn set_nonce(&mut self, nonce: &[u8]) {
        self.nonce = Some(nonce.to_vec());
    }

    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }

    fn tid(&mut self) -> [u8; 12] {
        self.counter += 1;
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&self.counter.to_be_bytes());
        t[8..].copy_from_slice(b"moin");
        t
    }

    /// Learns REALM/NONCE from a 401 or 438 and returns the parsed response.
    pub fn on_response(&mut self, bytes: &[u8]) -> Option<Response> {
        let key = self.key();
        let r = parse_response(bytes, key.as_ref().map(|k| &k[..]))?;
        if matches!(r.code, Some(401 | 438))
            && let Ok(m) = Message::parse(bytes)
        {
            if let Some(realm) = m.get(attr::REALM) {
                self.realm = Some(realm.to_vec());
            }
            if let Some(nonce) = m.get(attr::NONCE) {
                self.nonce = Some(nonce.to_vec());
            }
        }
        Some(r)
    }

    fn request(&mut self, m: u16, fill: impl FnOnce(&mut MessageBuilder<'_>)) -> Vec<u8> {
        let tid = self.tid();
        let key = self.key();
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, m, Class::Request, tid);
        fill(&mut b);
        if let (Some(realm), Some(nonce), Some(key)) = (&self.realm, &self.nonce, key) {
            b.attr(attr::USERNAME, self.username.as_bytes());
            b.attr(attr::REALM, realm);
            b.attr(attr::NONCE, nonce);
            if self.use_sha256 {
                b.integrity_sha256(&key);
            } else {
                b.integrity(&key);
            }
        }
        b.fingerprint();
        out
    }

    /// Allocate (UDP transport); `v6` asks for an IPv6 relay.
    pub fn allocate(&mut self, v6: bool) -> Vec<u8> {
        self.request(method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            if v6 {
                b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
            }
        })
    }

    /// Allocate with REQUESTED-TRANSPORT `proto`, or none at all (for negative tests).
    pub fn allocate_transport(&mut self, proto: Option<u8>) -> Vec<u8> {
        self.request(method::ALLOCATE, |b| {
            if let Some(p) = proto {
                b.attr(attr::REQUESTED_TRANSPORT, &[p, 0, 0, 0]);
            }
        })
    }

    /// Allocate with extra raw attributes (for negative tests).
    pub fn allocate_with(&mut self, extra: &[(u16, &[u8])]) -> Vec<u8> {
        self.request(method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            for (t, v) in extra {
                b.attr(*t, v);
            }
        })
    }

    pub fn refresh(&mut self, lifetime: Option<u32>) -> Vec<u8> {
        self.request(method::REFRESH, |b| {
            if let Some(l) = lifetime {
                b.u32_attr(attr::LIFETIME, l);
            }
        })
    }

    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Vec<u8> {
        self.request(method::CREATE_PERMISSION, |b| {
            for p in peers {
                b.xor_address(attr::XOR_PEER_ADDRESS, *p);
            }
        })
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Vec<u8> {
        self.request(method::CHANNEL_BIND, |b| {
            b.u32_attr(attr::CHANNEL_NUMBER, u32::from(channel) << 16);
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    /// A Send indication (no integrity, as RFC 8656 §11 specifies).
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let tid = self.tid();
        let mut out = Vec::new();
        MessageBuilder::new(&mut out, method::SEND, Class::Indication, tid)
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data);
        out
    }
}

/// Decodes a Data indication into (peer, data).
pub fn parse_data_indication(bytes: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    let m = Message::parse(bytes).ok()?;
    if m.class() != Class::Indication || m.method() != method::DATA {
        return None;
    }
    let tid = m.transaction_id();
    let peer = stun::decode_xor_address(m.get(attr::XOR_PEER_ADDRESS)?, &tid)?;
    Some((peer, m.get(attr::DATA)?.to_vec()))
}
