//! Signaling configuration: the HTTP listener (and its TLS), the API keys, resumption, the room
//! registry, webhooks and client-facing limits.

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
    /// How long a participant whose connection dropped stays in the room, resumable.
    #[serde(with = "humantime_serde_compat")]
    pub resume_window: Duration,
    /// Lifetime of one resume token; a fresh one is sent at half of it.
    #[serde(with = "humantime_serde_compat")]
    pub resume_token_ttl: Duration,
    /// Origins (`https://chat.example.org`) allowed to call the HTTP API and open `/rtc` from a
    /// browser page served elsewhere; empty: the same origin only. `*` allows any.
    pub cors_origins: Vec<String>,
    /// PEM certificate chain and private key: HTTPS/WSS on `listen`. Reloaded when the files
    /// change (checked every `tls_reload_interval`) and on SIGHUP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_path: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_path: Option<std::path::PathBuf>,
    #[serde(with = "humantime_serde_compat")]
    pub tls_reload_interval: Duration,
    /// Serve plain HTTP on an address other than loopback (behind a TLS-terminating proxy).
    pub allow_insecure_http: bool,
    /// Networks of reverse proxies in front of the service (`10.0.0.0/8`, `::1/128`). A request
    /// from one of them is attributed, for per-address limits, to the nearest untrusted address
    /// of its `X-Forwarded-For`. Empty: the header is ignored (anyone could write it).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// API keys by id (`[auth] keys`). Set by the binary, never from this section.
    #[serde(skip)]
    pub keys: std::collections::BTreeMap<String, String>,
    /// `[rooms]`, `[webhooks]` and `[limits]`, set by the binary.
    #[serde(skip)]
    pub rooms: RoomsConfig,
    #[serde(skip)]
    pub webhooks: WebhookConfig,
    #[serde(skip)]
    pub limits: LimitsConfig,
}

/// `[rooms]`: the room registry of the admin API and webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// A room nobody joined is finished after this long (rooms created by the admin API).
    #[serde(with = "humantime_serde_compat")]
    pub empty_timeout: Duration,
    /// A room is finished this long after its last participant left.
    #[serde(with = "humantime_serde_compat")]
    pub departure_timeout: Duration,
    /// Participants per room unless the room says otherwise; 0: no limit.
    pub max_participants: u32,
    /// Rooms the registry holds at most; creating more answers `unavailable`.
    pub max_rooms: usize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            empty_timeout: Duration::from_secs(300),
            departure_timeout: Duration::from_secs(20),
            max_participants: 0,
            max_rooms: 10_000,
        }
    }
}

/// `[webhooks]`: room events POSTed to the chat backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Receivers; empty: no webhooks.
    pub urls: Vec<String>,
    /// The API key whose secret signs the requests; empty: the `[auth] secret`, else the first key.
    pub key: String,
    /// One delivery attempt's time limit.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Events waiting per receiver; beyond, the newest are dropped (and counted in logs).
    pub queue: usize,
    /// First retry delay; doubles on every failure up to `retry_max`.
    #[serde(with = "humantime_serde_compat")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub retry_max: Duration,
    /// An event still undelivered after this long is given up.
    #[serde(with = "humantime_serde_compat")]
    pub retry_for: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            urls: Vec::new(),
            key: String::new(),
            timeout: Duration::from_secs(5),
            queue: 1024,
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            retry_for: Duration::from_secs(600),
        }
    }
}

/// `[limits]`: rates per client address and per identity. A rate of 0 turns a limit off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Session starts (`/rtc` upgrades, WHIP/WHEP offers) per second per client IP, and burst.
    pub join_rate_per_ip: f64,
    pub join_burst_per_ip: u32,
    /// Joins per second per identity (a client stuck in a reconnect loop), and burst.
    pub join_rate_per_identity: f64,
    pub join_burst_per_identity: u32,
    /// WebSocket messages per second per participant, and burst.
    pub message_rate: f64,
    pub message_burst: u32,
    /// Admin API requests per second per client IP, and burst.
    pub api_rate_per_ip: f64,
    pub api_burst_per_ip: u32,
    /// Addresses and identities tracked at once (memory bound); the idlest are forgotten first.
    pub max_tracked: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            join_rate_per_ip: 10.0,
            join_burst_per_ip: 50,
            join_rate_per_identity: 2.0,
            join_burst_per_identity: 10,
            message_rate: 50.0,
            message_burst: 200,
            api_rate_per_ip: 50.0,
            api_burst_per_ip: 200,
            max_tracked: 100_000,
        }
    }
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
            resume_window: Duration::from_secs(30),
            resume_token_ttl: Duration::from_secs(600),
            cors_origins: Vec::new(),
            tls_cert_path: None,
            tls_key_path: None,
            tls_reload_interval: Duration::from_secs(5),
            allow_insecure_http: false,
            trusted_proxies: Vec::new(),
            keys: Default::default(),
            rooms: RoomsConfig::default(),
            webhooks: WebhookConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}
