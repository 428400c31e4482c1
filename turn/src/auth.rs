//! Credentials and nonces: coturn's `use-auth-secret` TURN REST API scheme and stateless nonces.
//!
//! Owns minting (`username = <expiry>:<user>`, `password = base64(HMAC-SHA1(secret, username))`),
//! deriving the RFC 8489 long-term key `MD5(username:realm:password)` for every configured
//! secret (rotation), and the nonce: `hex(ts) || hex(HMAC-SHA256(server key, src|ts)[..12])`.
//! The nonce carries its own proof, so the server keeps no state for a client that has not yet
//! authenticated. Pure functions: time is an argument.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

/// A username/password pair for a WebRTC `iceServers` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &"<redacted>")
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The coturn REST password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail; an empty tag would only ever
    // produce a password nobody can match.
    let tag = Hmac::<Sha1>::new_from_slice(secret)
        .map(|mut m| {
            m.update(username.as_bytes());
            m.finalize().into_bytes().to_vec()
        })
        .unwrap_or_default();
    B64.encode(tag)
}

/// Mints credentials valid until `now_unix + ttl_secs`, with coturn's default `:` separator.
/// Pure: the binary and tests pass the time.
pub fn mint_credentials_at(
    secret: &str,
    user_id: &str,
    ttl_secs: u64,
    now_unix: u64,
) -> Credentials {
    let expiry = now_unix.saturating_add(ttl_secs);
    let username = if user_id.is_empty() {
        expiry.to_string()
    } else {
        format!("{expiry}:{user_id}")
    };
    let password = rest_password(secret.as_bytes(), &username);
    Credentials { username, password }
}

/// Mints credentials for `user_id` valid for `ttl` from now, signed with `secret` (pass the
/// first of [`crate::TurnConfig::secrets`]). Signaling calls this to hand out `iceServers`.
/// Keep `user_id` pseudonymous: it travels in clear in every TURN request.
pub fn mint_credentials(secret: &str, user_id: &str, ttl: Duration) -> Credentials {
    mint_credentials_at(secret, user_id, ttl.as_secs(), unix_now())
}

/// Seconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 8489 §9.2.2 long-term key: MD5(username ":" realm ":" password).
pub fn long_term_key(username: &[u8], realm: &[u8], password: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username);
    h.update(b":");
    h.update(realm);
    h.update(b":");
    h.update(password);
    h.finalize().into()
}

/// A parsed REST username.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestUser<'a> {
    /// Unix expiry time.
    pub expiry: u64,
    /// The user part after the separator; the whole username when there is none. Used for the
    /// per-user allocation quota.
    pub user: &'a str,
}

/// Splits `<expiry>[sep<user>]`. The expiry must be all ASCII digits.
pub fn parse_rest_username(username: &str, separator: char) -> Option<RestUser<'_>> {
    let (ts, user) = match username.split_once(separator) {
        Some((ts, user)) => (ts, user),
        None => (username, username),
    };
    if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let expiry = ts.parse().ok()?;
    Some(RestUser { expiry, user })
}

/// Shared-secret authenticator: every configured secret is tried, newest first as configured.
#[derive(Clone)]
pub struct RestAuth {
    secrets: Vec<Vec<u8>>,
    realm: String,
    separator: char,
}

impl RestAuth {
    pub fn new(secrets: &[String], realm: &str, separator: char) -> Self {
        RestAuth {
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            realm: realm.to_owned(),
            separator,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn separator(&self) -> char {
        self.separator
    }

    /// Long-term keys for `username` under each secret, for MESSAGE-INTEGRITY checks.
    pub fn candidate_keys<'s>(&'s self, username: &'s str) -> impl Iterator<Item = [u8; 16]> + 's {
        self.secrets.iter().map(move |s| {
            let pw = rest_password(s, username);
            long_term_key(username.as_bytes(), self.realm.as_bytes(), pw.as_bytes())
        })
    }
}

/// Outcome of checking a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Genuine but older than the nonce lifetime: answer 438.
    Stale,
    /// Not one of ours (or for another source): also answered with 438 and a fresh nonce.
    Invalid,
}

const NONCE_MAC_LEN: usize = 12;
/// Nonce length in characters: 8 hex digits of time and 24 of MAC.
pub const NONCE_LEN: usize = 8 + 2 * NONCE_MAC_LEN;

/// Issues and checks stateless nonces bound to the client's transport address.
#[derive(Clone)]
pub struct NonceKey {
    key: [u8; 32],
}

impl NonceKey {
    pub fn new(key: [u8; 32]) -> Self {
        NonceKey { key }
    }

    fn mac(&self, src: SocketAddr, ts: u32) -> [u8; NONCE_MAC_LEN] {
        let mut out = [0u8; NONCE_MAC_LEN];
        if let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.key) {
            match src.ip() {
                IpAddr::V4(ip) => m.update(&ip.octets()),
                IpAddr::V6(ip) => m.update(&ip.octets()),
            }
            m.update(&src.port().to_be_bytes());
            m.update(&ts.to_be_bytes());
            let tag = m.finalize().into_bytes();
            out.copy_from_slice(&tag[..NONCE_MAC_LEN]);
        }
        out
    }

    /// A nonce for `src` at `now_unix` (32 ASCII hex characters).
    pub fn issue(&self, src: SocketAddr, now_unix: u64) -> [u8; NONCE_LEN] {
        // Wraps in 2106; a wrapped nonce just reads as stale.
        let ts = now_unix as u32;
        let mut out = [0u8; NONCE_LEN];
        hex_into(&ts.to_be_bytes(), &mut out[..8]);
        hex_into(&self.mac(src, ts), &mut out[8..]);
        out
    }

    /// Checks `nonce` for `src`. The MAC comparison is constant time.
    pub fn check(
        &self,
        nonce: &[u8],
        src: SocketAddr,
        now_unix: u64,
        lifetime_secs: u64,
    ) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let Some(ts_bytes) = unhex::<4>(&nonce[..8]) else {
            return NonceCheck::Invalid;
        };
        let Some(mac) = unhex::<NONCE_MAC_LEN>(&nonce[8..]) else {
            return NonceCheck::Invalid;
        };
        let ts = u32::from_be_bytes(ts_bytes);
        let expected = self.mac(src, ts);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &mac[..])) {
            return NonceCheck::Invalid;
        }
        let now = now_unix as u32;
        // A nonce from the future (clock stepped back) is treated as stale, not trusted.
        match now.checked_sub(ts) {
            Some(age) if u64::from(age) <= lifetime_secs => NonceCheck::Valid,
            _ => NonceCheck::Stale,
        }
    }
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xF)];
    }
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(s[2 * i])? << 4) | nib(s[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_openssl_reference() {
        // printf %s "1700000000:alice" | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password(b"secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
    }

    #[test]
    fn minted_credentials_have_expiry_and_verify() {
        let c = mint_credentials_at("s3cret", "user-42", 3600, 1_000);
        assert_eq!(c.username, "4600:user-42");
        assert_eq!(c.password, rest_password(b"s3cret", "4600:user-42"));
        let u = parse_rest_username(&c.username, ':').unwrap();
        assert_eq!(
            u,
            RestUser {
                expiry: 4600,
                user: "user-42"
            }
        );
        let bare = mint_credentials_at("s", "", 10, 5);
        assert_eq!(bare.username, "15");
        assert!(!format!("{c:?}").contains("user-42"), "Debug redacts");
    }

    #[test]
    fn username_parsing_rejects_non_numeric_expiry() {
        assert_eq!(parse_rest_username("abc:def", ':'), None);
        assert_eq!(parse_rest_username(":def", ':'), None);
        assert_eq!(parse_rest_username("", ':'), None);
        assert_eq!(parse_rest_username("123456789012345678901:x", ':'), None);
        assert_eq!(
            parse_rest_username("12:a:b", ':'),
            Some(RestUser {
                expiry: 12,
                user: "a:b"
            })
        );
        assert_eq!(
            parse_rest_username("12", ':'),
            Some(RestUser {
                expiry: 12,
                user: "12"
            })
        );
        assert_eq!(
            parse_rest_username("12|bob", '|'),
            Some(RestUser {
                expiry: 12,
                user: "bob"
            })
        );
    }

    #[test]
    fn candidate_keys_cover_every_secret() {
        let a = RestAuth::new(&["old".into(), "new".into()], "moien", ':');
        let keys: Vec<_> = a.candidate_keys("99:u").collect();
        assert_eq!(keys.len(), 2);
        let pw = rest_password(b"new", "99:u");
        assert_eq!(keys[1], long_term_key(b"99:u", b"moien", pw.as_bytes()));
        assert_ne!(keys[0], keys[1]);
    }

    #[test]
    fn nonce_valid_stale_and_bound_to_source() {
        let k = NonceKey::new([9; 32]);
        let src: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let n = k.issue(src, 1000);
        assert_eq!(k.check(&n, src, 1000, 600), NonceCheck::Valid);
        assert_eq!(k.check(&n, src, 1600, 600), NonceCheck::Valid);
        assert_eq!(k.check(&n, src, 1601, 600), NonceCheck::Stale);
        assert_eq!(k.check(&n, src, 999, 600), NonceCheck::Stale);
        let other: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        assert_eq!(k.check(&n, other, 1000, 600), NonceCheck::Invalid);
        let k2 = NonceKey::new([8; 32]);
        assert_eq!(k2.check(&n, src, 1000, 600), NonceCheck::Invalid);
        let mut bad = n;
        bad[NONCE_LEN - 1] = if bad[NONCE_LEN - 1] == b'0' {
            b'1'
        } else {
            b'0'
        };
        assert_eq!(k.check(&bad, src, 1000, 600), NonceCheck::Invalid);
        assert_eq!(k.check(b"short", src, 1000, 600), NonceCheck::Invalid);
        let mut upper = n;
        upper[0] = b'G';
        assert_eq!(k.check(&upper, src, 1000, 600), NonceCheck::Invalid);
    }
}
