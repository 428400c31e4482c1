//! Access tokens: HS256 JWTs naming one identity, one room and what it may do there.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest identity, room or name accepted in a token.
pub const MAX_CLAIM_LEN: usize = 128;

/// What the token allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    pub publish: bool,
    pub subscribe: bool,
}

/// Token claims. `docs/PROTOCOL.md` lists them.
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
        }
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs claims with the API secret.
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Verifies signature, expiry and not-before (no leeway: clocks of one deployment agree).
pub fn verify(secret: &str, token: &str) -> Result<Claims, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(
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
    let c = data.claims;
    let ok = |s: &str| !s.is_empty() && s.len() <= MAX_CLAIM_LEN;
    if !ok(&c.sub) || !ok(&c.room) || c.name.len() > MAX_CLAIM_LEN {
        return Err(AuthError::BadClaims);
    }
    Ok(c)
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
}
