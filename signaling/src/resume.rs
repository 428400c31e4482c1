//! Resume tokens and the per-participant order of detach and resume.
//!
//! A resume token names one participant session (room, sid, identity) and expires quickly. It is
//! signed with a key derived from an API secret, never with the secret itself, so it can never
//! pass as an access token, nor an access token as a resume token.
//!
//! When a connection drops, its task detaches the participant; when the client comes back on a
//! new socket, that task resumes it. The two can race (the server may notice the old socket's end
//! after the client already came back), so both go through a per-participant lock with a
//! generation number: a detach from an older connection than the latest resume is ignored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::auth::{self, AccessGrants, AuthError, KeyRing};

/// Claims of a resume token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeClaims {
    /// The API key whose derived secret signed it (empty: the `[auth] secret`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iss: String,
    pub sub: String,
    pub room: String,
    /// The participant session.
    pub sid: String,
    pub exp: u64,
    /// The access token's grants, still in force after the resume.
    #[serde(default)]
    pub grants: AccessGrants,
}

/// What a resume token is minted for.
pub struct ResumeGrant<'a> {
    pub identity: &'a str,
    pub room: &'a str,
    pub sid: &'a str,
    pub grants: &'a AccessGrants,
}

/// The secret resume tokens are signed with, derived from an API secret.
fn derived(secret: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    m.update(b"moien resume token v1");
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Mints a resume token with the server's signing key.
pub fn mint(keys: &KeyRing, what: &ResumeGrant<'_>, ttl: Duration) -> Option<String> {
    let (kid, secret) = keys.signing("")?;
    let claims = ResumeClaims {
        iss: kid.to_string(),
        sub: what.identity.to_string(),
        room: what.room.to_string(),
        sid: what.sid.to_string(),
        exp: auth::now_unix() + ttl.as_secs().max(1),
        grants: what.grants.clone(),
    };
    auth::mint(&derived(secret), &claims).ok()
}

/// Verifies a resume token against every key (a key retired meanwhile no longer resumes).
pub fn verify(keys: &KeyRing, token: &str) -> Result<ResumeClaims, AuthError> {
    // The derived keys form a ring of their own, under the same ids.
    let derived_ring = keys.derive(derived);
    derived_ring.verify_as::<ResumeClaims>(token)
}

/// One participant's order of detach/resume calls.
#[derive(Debug, Default)]
pub struct Slot {
    /// Bumped by every resume: a connection remembers the generation it started with.
    pub generation: u64,
    /// Since when it is detached (for forgetting slots of participants that never came back).
    pub detached_at: Option<Instant>,
}

/// The slots of every participant with a WebSocket, by sid.
#[derive(Default)]
pub struct Slots {
    map: DashMap<String, Arc<tokio::sync::Mutex<Slot>>>,
}

impl Slots {
    pub fn slot(&self, sid: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        self.map.entry(sid.to_string()).or_default().clone()
    }

    pub fn forget(&self, sid: &str) {
        self.map.remove(sid);
    }

    /// Forgets slots detached longer than `older_than` (their participants are gone).
    pub fn sweep(&self, older_than: Duration) {
        let now = Instant::now();
        self.map.retain(|_, slot| match slot.try_lock() {
            Ok(s) => s
                .detached_at
                .is_none_or(|t| now.saturating_duration_since(t) <= older_than),
            Err(_) => true,
        });
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn resume_tokens_are_not_access_tokens() {
        let ring = KeyRing::new("secret", &BTreeMap::new());
        let grants = AccessGrants::default();
        let what = ResumeGrant {
            identity: "alice",
            room: "r",
            sid: "PA_1",
            grants: &grants,
        };
        let t = mint(&ring, &what, Duration::from_secs(60)).unwrap();
        let c = verify(&ring, &t).unwrap();
        assert_eq!((c.sub.as_str(), c.sid.as_str()), ("alice", "PA_1"));
        assert!(ring.verify(&t).is_err(), "not an access token");
        let access = auth::mint("secret", &auth::AccessClaims::admin("", "a", "r", 60)).unwrap();
        assert!(verify(&ring, &access).is_err(), "not a resume token");
        let other = KeyRing::new("other", &BTreeMap::new());
        assert!(verify(&other, &t).is_err());
    }
}
