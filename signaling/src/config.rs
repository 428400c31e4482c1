//! Signaling configuration: the HTTP listener, the API secret and client-facing limits.

use std::net::SocketAddr;
use std::time::Duration;

use moien_sfu::config::humantime_serde_compat;
use serde::{Deserialize, Serialize};

/// `[signaling]` section of `moien.toml` (the secret lives in `[auth]`, filled in by the binary).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalingConfig {
    /// HTTP listener: call page, `/rtc`, WHIP/WHEP.
    pub listen: SocketAddr,
    /// Serve `/dev/token`. Set by `moien serve --dev`, never from a file.
    #[serde(skip)]
    pub dev: bool,
    /// HS256 secret that signs access tokens. Set from `[auth] secret`.
    #[serde(skip)]
    pub secret: String,
    /// How long a new WebSocket may take to send `join`.
    #[serde(with = "humantime_serde_compat")]
    pub join_timeout: Duration,
    /// A WebSocket silent for this long is closed (clients ping every 15 s).
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Signaling messages queued per participant before it is dropped as a slow consumer.
    pub event_queue: usize,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7880)),
            dev: false,
            secret: String::new(),
            join_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            event_queue: 256,
        }
    }
}
