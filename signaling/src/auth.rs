//! Access tokens: HS256 JWTs naming one identity, one room and what it may do there, signed by
//! one of the server's API keys (`iss` names the key; several keys allow rotation).
//!
//! [`Claims`] is the basic token most tools mint (publish and subscribe); [`AccessClaims`] is
//! every claim the server reads. Both serialize to the same JSON shape, so either mints a token.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use moien_protocol::TrackSource;
use serde::{Deserialize, Serialize};

/// Longest identity, room or name accepted in a token.
pub const MAX_CLAIM_LEN: usize = 128;

/// Longest participant metadata a token may carry.
pub const MAX_METADATA_LEN: usize = 4096;

/// `room` of an administrator token that may administer every room (and create and list rooms).
pub const ANY_ROOM: &str = "*";

/// What a basic token allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    pub publish: bool,
    pub subscribe: bool,
}

/// Basic token claims (identity, room, publish/subscribe). `docs/PROTOCOL.md` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Identity of the participant.
    pub sub: String,
    pub room: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default)]
    pub grants: Grants,
}

fn yes() -> bool {
    true
}

/// Everything a token may grant. Absent fields keep protocol version 1 meanings: `join` is true,
/// `publish_data` follows `publish`, `sources` empty allows every source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessGrants {
    /// May join the room (false: an administrator token only).
    #[serde(default = "yes")]
    pub join: bool,
    pub publish: bool,
    pub subscribe: bool,
    /// May send data messages; absent: same as `publish`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_data: Option<bool>,
    /// Sources it may publish (`camera`, `microphone`, `screen`; `screen` covers screen audio);
    /// empty: any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<TrackSource>,
    /// Observer: receives but is never announced to the room.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
    /// May use the room admin API for `room` (every room when `room` is `*`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub room_admin: bool,
    /// Recording: there is no recording path; a token asking for it is refused.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recorder: bool,
}

impl Default for AccessGrants {
    fn default() -> Self {
        AccessGrants {
            join: true,
            publish: false,
            subscribe: false,
            publish_data: None,
            sources: Vec::new(),
            hidden: false,
            room_admin: false,
            recorder: false,
        }
    }
}

impl AccessGrants {
    /// May send data messages.
    pub fn can_publish_data(&self) -> bool {
        self.publish_data.unwrap_or(self.publish)
    }

    /// May publish a track of `source`.
    pub fn allows_source(&self, source: TrackSource) -> bool {
        if !self.publish {
            return false;
        }
        if self.sources.is_empty() {
            return true;
        }
        let wanted = match source {
            TrackSource::ScreenAudio => TrackSource::Screen,
            s => s,
        };
        self.sources.contains(&wanted)
    }
}

/// Every claim of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The API key that signed the token; empty: the `[auth] secret`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iss: String,
    /// Identity of the participant (or of the administrator).
    pub sub: String,
    /// The one room this token is for (`*`: every room, administrator tokens only).
    pub room: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Application metadata of the participant, shown to the room.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(default)]
    pub grants: AccessGrants,
}

impl From<Claims> for AccessClaims {
    fn from(c: Claims) -> Self {
        AccessClaims {
            iss: String::new(),
            sub: c.sub,
            room: c.room,
            exp: c.exp,
            nbf: c.nbf,
            iat: c.iat,
            name: c.name,
            metadata: String::new(),
            grants: AccessGrants {
                publish: c.grants.publish,
                subscribe: c.grants.subscribe,
                ..AccessGrants::default()
            },
        }
    }
}

impl AccessClaims {
    /// A token for administering `room` (`*` for every room), joining nothing.
    pub fn admin(issuer: &str, subject: &str, room: &str, ttl_secs: u64) -> Self {
        let now = now_unix();
        AccessClaims {
            iss: issuer.to_string(),
            sub: subject.to_string(),
            room: room.to_string(),
            exp: now + ttl_secs,
            nbf: None,
            iat: Some(now),
            name: String::new(),
            metadata: String::new(),
            grants: AccessGrants {
                join: false,
                room_admin: true,
                ..AccessGrants::default()
            },
        }
    }

    /// May administer `room`.
    pub fn administers(&self, room: &str) -> bool {
        self.grants.room_admin && (self.room == ANY_ROOM || self.room == room)
    }

    /// May administer every room (create, list).
    pub fn administers_all(&self) -> bool {
        self.grants.room_admin && self.room == ANY_ROOM
    }
}

/// Why a token was refused. Each maps to `unauthorized`; the reason is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token claims out of bounds")]
    BadClaims,
    /// `iss` names no key this server has (never had, or retired).
    #[error("unknown API key")]
    UnknownKey,
}

impl AuthError {
    /// Low-cardinality label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadClaims => "bad_claims",
            AuthError::UnknownKey => "unknown_key",
        }
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs claims ([`Claims`], [`AccessClaims`] or a resume token) with a secret.
pub fn mint<C: Serialize>(secret: &str, claims: &C) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Verifies a token signed with `secret` (whatever its `iss`): signature, expiry, not-before.
pub fn verify(secret: &str, token: &str) -> Result<AccessClaims, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    let claims: AccessClaims = decode(secret, token)?;
    check_bounds(&claims)?;
    Ok(claims)
}

/// Decodes and checks signature, `exp` and `nbf` (no leeway: clocks of one deployment agree).
fn decode<C: serde::de::DeserializeOwned>(secret: &str, token: &str) -> Result<C, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<C>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
        _ => AuthError::Malformed,
    })?;
    Ok(data.claims)
}

fn check_bounds(c: &AccessClaims) -> Result<(), AuthError> {
    let ok = |s: &str| !s.is_empty() && s.len() <= MAX_CLAIM_LEN;
    if !ok(&c.sub) || !ok(&c.room) || c.name.len() > MAX_CLAIM_LEN {
        return Err(AuthError::BadClaims);
    }
    if c.metadata.len() > MAX_METADATA_LEN || c.grants.recorder {
        return Err(AuthError::BadClaims);
    }
    // The wildcard room administers; it admits nobody.
    if c.room == ANY_ROOM && c.grants.join && !c.grants.room_admin {
        return Err(AuthError::BadClaims);
    }
    Ok(())
}

/// The server's API keys: key id → secret, plus the unnamed `[auth] secret` (tokens without
/// `iss`). Removing a key from the configuration retires it: its tokens are refused.
#[derive(Clone, Default)]
pub struct KeyRing {
    legacy: Option<String>,
    keys: BTreeMap<String, String>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("KeyRing")
            .field("legacy", &self.legacy.is_some())
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The part of a token read before its signature is checked: which key to check it with.
#[derive(Deserialize)]
struct Issuer {
    #[serde(default)]
    iss: String,
}

impl KeyRing {
    /// `secret` is the `[auth] secret` (empty: none); `keys` the `[auth] keys` table.
    pub fn new(secret: &str, keys: &BTreeMap<String, String>) -> Self {
        KeyRing {
            legacy: (!secret.is_empty()).then(|| secret.to_string()),
            keys: keys
                .iter()
                .filter(|(k, s)| !k.is_empty() && !s.is_empty())
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.legacy.is_none() && self.keys.is_empty()
    }

    /// The secret of key `id` (empty id: the `[auth] secret`).
    pub fn secret(&self, id: &str) -> Option<&str> {
        if id.is_empty() {
            self.legacy.as_deref()
        } else {
            self.keys.get(id).map(String::as_str)
        }
    }

    /// The key the server signs with (resume tokens, webhooks): `preferred` when it names a key,
    /// else the `[auth] secret`, else the first key. Returns (key id, secret).
    pub fn signing(&self, preferred: &str) -> Option<(&str, &str)> {
        if let Some((k, s)) = self.keys.get_key_value(preferred) {
            return Some((k.as_str(), s.as_str()));
        }
        if let Some(s) = &self.legacy {
            return Some(("", s.as_str()));
        }
        self.keys
            .iter()
            .next()
            .map(|(k, s)| (k.as_str(), s.as_str()))
    }

    /// The same key ids with secrets derived by `f` (tokens of another kind).
    pub fn derive(&self, f: impl Fn(&str) -> String) -> KeyRing {
        KeyRing {
            legacy: self.legacy.as_deref().map(&f),
            keys: self.keys.iter().map(|(k, s)| (k.clone(), f(s))).collect(),
        }
    }

    /// Verifies an access token with the key its `iss` names.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let id = peek_issuer(token)?;
        let secret = self.secret(&id).ok_or(AuthError::UnknownKey)?;
        verify(secret, token)
    }

    /// Verifies a token of another kind (resume tokens) signed by one of our keys.
    pub fn verify_as<C: serde::de::DeserializeOwned>(&self, token: &str) -> Result<C, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let id = peek_issuer(token)?;
        let secret = self.secret(&id).ok_or(AuthError::UnknownKey)?;
        decode(secret, token)
    }
}

/// Reads `iss` without checking the signature: it only picks the key the signature is then
/// checked with.
fn peek_issuer(token: &str) -> Result<String, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Issuer>(token, &DecodingKey::from_secret(b"unused"), &validation)
            .map_err(|_| AuthError::Malformed)?;
    Ok(data.claims.iss)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            room: "r".into(),
            exp,
            nbf: None,
            iat: None,
            name: String::new(),
            grants: Grants {
                publish: true,
                subscribe: true,
            },
        }
    }

    #[test]
    fn round_trip() {
        let t = mint("s", &claims(now_unix() + 60)).unwrap();
        assert_eq!(verify("s", &t).unwrap().sub, "alice");
    }

    #[test]
    fn refusals_have_reasons() {
        let t = mint("s", &claims(now_unix() + 60)).unwrap();
        assert_eq!(verify("other", &t), Err(AuthError::BadSignature));
        assert_eq!(verify("s", ""), Err(AuthError::Missing));
        assert_eq!(verify("s", "a.b.c"), Err(AuthError::Malformed));
        let old = mint("s", &claims(now_unix() - 10)).unwrap();
        assert_eq!(verify("s", &old), Err(AuthError::Expired));
        let mut future = claims(now_unix() + 600);
        future.nbf = Some(now_unix() + 300);
        assert_eq!(
            verify("s", &mint("s", &future).unwrap()),
            Err(AuthError::NotYetValid)
        );
        let mut long = claims(now_unix() + 60);
        long.sub = "x".repeat(MAX_CLAIM_LEN + 1);
        assert_eq!(
            verify("s", &mint("s", &long).unwrap()),
            Err(AuthError::BadClaims)
        );
    }

    #[test]
    fn none_algorithm_is_refused() {
        // {"alg":"none"} header with valid-looking claims and no signature.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let body = "eyJzdWIiOiJhIiwicm9vbSI6InIiLCJleHAiOjQxMDI0NDQ4MDB9";
        let forged = format!("{header}.{body}.");
        assert!(verify("s", &forged).is_err());
    }
    fn access(iss: &str) -> AccessClaims {
        let mut c = AccessClaims::from(claims(now_unix() + 60));
        c.iss = iss.to_string();
        c
    }

    #[test]
    fn keys_rotate_and_retire() {
        let mut keys = BTreeMap::new();
        keys.insert("k-old".to_string(), "s-old".to_string());
        keys.insert("k-new".to_string(), "s-new".to_string());
        let ring = KeyRing::new("legacy", &keys);
        let by_old = mint("s-old", &access("k-old")).unwrap();
        let by_new = mint("s-new", &access("k-new")).unwrap();
        let by_legacy = mint("legacy", &claims(now_unix() + 60)).unwrap();
        assert_eq!(ring.verify(&by_old).unwrap().iss, "k-old");
        assert_eq!(ring.verify(&by_new).unwrap().iss, "k-new");
        assert!(ring.verify(&by_legacy).is_ok());
        // A key claimed but signed with another one's secret.
        let forged = mint("s-old", &access("k-new")).unwrap();
        assert_eq!(ring.verify(&forged), Err(AuthError::BadSignature));
        // The old key retired: its tokens are refused.
        keys.remove("k-old");
        let ring = KeyRing::new("", &keys);
        assert_eq!(ring.verify(&by_old), Err(AuthError::UnknownKey));
        assert_eq!(ring.verify(&by_legacy), Err(AuthError::UnknownKey));
        assert_eq!(ring.signing(""), Some(("k-new", "s-new")));
        assert!(
            !format!("{ring:?}").contains("s-new"),
            "Debug shows no secret"
        );
    }

    #[test]
    fn grants_default_to_version_one_meanings() {
        let c: AccessClaims =
            serde_json::from_str(r#"{"sub":"a","room":"r","exp":1,"grants":{"publish":true}}"#)
                .unwrap();
        assert!(c.grants.join && c.grants.can_publish_data());
        assert!(c.grants.allows_source(TrackSource::Screen));
        let mut g = AccessGrants {
            publish: true,
            sources: vec![TrackSource::Microphone, TrackSource::Screen],
            ..AccessGrants::default()
        };
        assert!(g.allows_source(TrackSource::ScreenAudio));
        assert!(!g.allows_source(TrackSource::Camera));
        assert!(!g.allows_source(TrackSource::Unknown));
        g.publish = false;
        assert!(!g.allows_source(TrackSource::Microphone));
    }

    #[test]
    fn recorder_and_wildcard_joins_are_refused() {
        let mut c = access("");
        c.grants.recorder = true;
        assert_eq!(
            verify("s", &mint("s", &c).unwrap()),
            Err(AuthError::BadClaims)
        );
        let mut c = access("");
        c.room = ANY_ROOM.into();
        assert_eq!(
            verify("s", &mint("s", &c).unwrap()),
            Err(AuthError::BadClaims)
        );
        let admin = AccessClaims::admin("", "ops", ANY_ROOM, 60);
        let back = verify("s", &mint("s", &admin).unwrap()).unwrap();
        assert!(back.administers_all() && back.administers("any") && !back.grants.join);
    }
}
