//! Webhooks: room events POSTed as JSON to the chat backend, signed, retried with backoff, in
//! order per receiver, from bounded queues that never hold up the media plane.
//!
//! Signature: `Moien-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! with the secret of the API key named in `Moien-Key` (absent: the `[auth] secret`). The
//! timestamp is signed with the body so a captured request cannot be replayed later; receivers
//! refuse timestamps older than a few minutes and deduplicate on the event `id`
//! (`docs/PROTOCOL.md`, "Webhooks").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use moien_protocol::{LeaveReason, ParticipantInfo, TrackInfo};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::WebhookConfig;

/// Header carrying `t=...,v1=...`.
pub const SIGNATURE_HEADER: &str = "moien-signature";
/// Header naming the API key whose secret signed the request (absent: the `[auth] secret`).
pub const KEY_HEADER: &str = "moien-key";

/// What happened, as the receiver reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RoomStarted,
    RoomFinished,
    ParticipantJoined,
    ParticipantLeft,
    TrackPublished,
    TrackUnpublished,
}

/// The room an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRef {
    pub name: String,
    /// Server id of this incarnation of the room (`RM_...`): a room finished and started again
    /// under the same name gets a new one.
    pub sid: String,
    /// Unix seconds.
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
}

/// One webhook request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event (`EV_...`); the same on every retry, for deduplication.
    pub id: String,
    pub event: EventKind,
    /// Node-wide, increasing by one per event: gaps mean dropped events.
    pub sequence: u64,
    /// Unix seconds when the event happened.
    pub created_at: u64,
    pub room: RoomRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<ParticipantInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<TrackInfo>,
    /// Why the participant left (`participant_left`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<LeaveReason>,
}

/// Computes the `Moien-Signature` value of `body` at time `t`.
pub fn sign(secret: &str, t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex(&mac(secret, t, body)))
}

fn mac(secret: &str, t: u64, body: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// Checks a `Moien-Signature` header against `body`: the MAC (in constant time) and that `t` is
/// within `tolerance` of `now`. What a receiver does; used by the tests and the docs' example.
pub fn verify(secret: &str, header: &str, body: &[u8], now: u64, tolerance: u64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = unhex(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if now.abs_diff(t) > tolerance {
        return false;
    }
    use subtle::ConstantTimeEq;
    mac(secret, t, body).ct_eq(&v1).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A serialized event, shared by every receiver's queue.
struct Delivery {
    id: String,
    body: Vec<u8>,
    queued: Instant,
}

/// The webhook sender: one queue and one delivery task per receiver.
pub struct Webhooks {
    queues: Vec<mpsc::Sender<Arc<Delivery>>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    sequence: AtomicU64,
    dropped: AtomicU64,
}

impl Webhooks {
    /// Starts a delivery task per URL; `None` without URLs. `signing` is (key id, secret).
    pub fn start(config: &WebhookConfig, signing: (String, String)) -> Option<Arc<Webhooks>> {
        if config.urls.is_empty() {
            return None;
        }
        let client = match http_client(config.timeout) {
            Ok(c) => c,
            Err(e) => {
                warn!("webhooks disabled: cannot build the HTTP client: {e}");
                return None;
            }
        };
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for url in &config.urls {
            let (tx, rx) = mpsc::channel(config.queue.max(1));
            queues.push(tx);
            let receiver = Receiver {
                url: url.clone(),
                client: client.clone(),
                key: signing.0.clone(),
                secret: signing.1.clone(),
                config: config.clone(),
            };
            tasks.push(tokio::spawn(receiver.run(rx)));
        }
        info!(receivers = queues.len(), "webhooks on");
        Some(Arc::new(Webhooks {
            queues,
            tasks: std::sync::Mutex::new(tasks),
            sequence: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
        }))
    }

    /// The next sequence number (also for events built elsewhere).
    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues an event for every receiver; never waits (a full queue drops it, counted).
    pub fn send(&self, event: &WebhookEvent) {
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(e) => {
                warn!("webhook event not serializable: {e}");
                return;
            }
        };
        let d = Arc::new(Delivery {
            id: event.id.clone(),
            body,
            queued: Instant::now(),
        });
        for q in &self.queues {
            if q.try_send(d.clone()).is_err() {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(dropped = n, "webhook queue full: event dropped");
            }
        }
    }

    /// Events dropped because a queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Gives the queues `grace` to drain, then stops the delivery tasks.
    pub async fn shutdown(&self, grace: Duration) {
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + grace;
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// An HTTP client for webhooks and the admin CLI: rustls with aws-lc-rs and the system's roots.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    // One provider in the process (aws-lc-rs, as the rest of Moien); a second install is a no-op.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

struct Receiver {
    url: String,
    client: reqwest::Client,
    key: String,
    secret: String,
    config: WebhookConfig,
}

impl Receiver {
    /// Delivers one event at a time, retrying it until it is accepted or `retry_for` passed:
    /// events reach the receiver in the order they happened.
    async fn run(self, mut rx: mpsc::Receiver<Arc<Delivery>>) {
        while let Some(d) = rx.recv().await {
            let mut delay = self.config.retry_initial;
            let mut attempt = 1u32;
            loop {
                match self.post(&d).await {
                    Ok(()) => break,
                    Err(e) => {
                        if d.queued.elapsed() + delay > self.config.retry_for {
                            warn!(event = %d.id, attempts = attempt, "webhook given up: {e}");
                            break;
                        }
                        debug!(event = %d.id, attempt, ?delay, "webhook failed, retrying: {e}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(self.config.retry_max);
                        attempt += 1;
                    }
                }
            }
        }
    }

    async fn post(&self, d: &Delivery) -> Result<(), String> {
        // Signed at every attempt: the timestamp says when this request was made.
        let t = crate::auth::now_unix();
        let mut req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(&self.secret, t, &d.body))
            .body(d.body.clone());
        if !self.key.is_empty() {
            req = req.header(KEY_HEADER, &self.key);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("status {}", resp.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_expire() {
        let body = br#"{"event":"room_started"}"#;
        let h = sign("s", 1000, body);
        assert!(h.starts_with("t=1000,v1="));
        assert!(verify("s", &h, body, 1000, 300));
        assert!(verify("s", &h, body, 1200, 300));
        assert!(!verify("s", &h, body, 1400, 300), "too old");
        assert!(!verify("other", &h, body, 1000, 300));
        assert!(!verify("s", &h, b"{}", 1000, 300));
        let forged = h.replace("t=1000", "t=1100");
        assert!(
            !verify("s", &forged, body, 1100, 300),
            "the timestamp is signed"
        );
        assert!(!verify("s", "garbage", body, 1000, 300));
    }
}
