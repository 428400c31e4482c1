//! Moien's bundled TURN/STUN server (RFC 8489, RFC 8656) with coturn-compatible REST
//! credentials and a default-deny relay policy.
//!
//! Layout: a sans-IO core ([`stun`] codec, [`framing`], [`auth`], [`policy`], [`ratelimit`],
//! [`core`] state machine) that takes time and bytes and returns decisions, and a thin tokio
//! shell ([`start`]) that owns the sockets. The binary calls [`start`] with a [`TurnConfig`]
//! and [`TurnMetrics`], and signaling calls [`mint_credentials`] to hand out `iceServers`.

pub mod auth;
pub mod client;
pub mod config;
pub mod core;
pub mod framing;
mod io;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod redact;
pub mod stun;

#[cfg(test)]
mod core_tests;

pub use auth::{Credentials, mint_credentials, mint_credentials_at};
pub use config::{ConfigError, TurnConfig};
pub use io::{StartError, TurnHandle, start};
pub use metrics::TurnMetrics;

/// Batched UDP helpers, exposed for the benchmark tool.
pub mod udp_batch {
    pub use crate::io::{RecvBatch, UDP_BATCH, send_batch};
}
