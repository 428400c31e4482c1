//! `TurnConfig`: what the binary deserialises and passes to [`crate::start`].
//!
//! Owns the option names, their defaults and their validation. Validation fails closed: no
//! secret, an empty secret, a malformed CIDR or an empty port range stops startup.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::CoreConfig;
use crate::policy::{Cidr, RelayPolicy};

/// Why a configuration cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "TURN needs at least one non-empty shared secret (`secrets`); refusing to run an open relay"
    )]
    NoSecret,
    #[error(transparent)]
    Cidr(#[from] crate::policy::CidrError),
    #[error("relay port range {0}-{1} is empty or includes port 0")]
    PortRange(u16, u16),
    #[error("a TLS listener needs `tls_cert_path` and `tls_key_path`")]
    TlsPaths,
    #[error("no relay address: set `relay_ipv4` and/or `relay_ipv6`")]
    NoRelay,
    #[error("no listener configured")]
    NoListener,
    #[error("invalid setting: {0}")]
    Invalid(&'static str),
}

/// TURN server settings. Every field has a default (see [`Default`]); `secrets` has none and
/// must be set.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// UDP listener addresses (STUN Binding and TURN). Default `["127.0.0.1:3478"]`.
    pub listen_udp: Vec<SocketAddr>,
    /// TCP listener addresses. Default `["127.0.0.1:3478"]`.
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS (TURNS) listener addresses; need `tls_cert_path`/`tls_key_path`. Default none.
    pub listen_tls: Vec<SocketAddr>,
    /// PEM certificate chain for TURNS.
    pub tls_cert_path: Option<PathBuf>,
    /// PEM private key for TURNS.
    pub tls_key_path: Option<PathBuf>,
    /// Long-term credential realm. Default `"moien"`.
    pub realm: String,
    /// TURN REST API shared secrets (coturn `static-auth-secret`). The first mints credentials;
    /// all are accepted, for rotation. Required.
    pub secrets: Vec<String>,
    /// Separator between expiry and user id in REST usernames (coturn `rest-api-separator`).
    /// Default `':'`.
    pub rest_separator: char,
    /// Check credential expiry on every request instead of only on Allocate. Default `false`
    /// (an allocation made with valid credentials may be refreshed past their expiry, as in
    /// LiveKit and eturnal; it still dies when the client stops refreshing).
    pub strict_expiry: bool,
    /// Local IPv4 address relay sockets bind to; `None` disables IPv4 relaying. Default
    /// `127.0.0.1` (set the host's public address in production).
    pub relay_ipv4: Option<Ipv4Addr>,
    /// Local IPv6 address relay sockets bind to; `None` disables IPv6 relaying. Default none.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// IPv4 address advertised in XOR-RELAYED-ADDRESS when it differs from `relay_ipv4`
    /// (1:1 NAT). Default none.
    pub advertised_ipv4: Option<Ipv4Addr>,
    /// IPv6 address advertised in XOR-RELAYED-ADDRESS. Default none.
    pub advertised_ipv6: Option<Ipv6Addr>,
    /// Lowest relay port. Default 49152.
    pub relay_port_min: u16,
    /// Highest relay port. Default 65535.
    pub relay_port_max: u16,
    /// Peer addresses or CIDRs always allowed (the SFU's media addresses), even in denied
    /// ranges. Unspecified, multicast, broadcast and the server's own listeners stay denied.
    pub allowed_peers: Vec<String>,
    /// Exact peer addresses (`ip:port`) always allowed, even on loopback: the SFU's own media
    /// sockets. `moien serve` adds its media addresses here by itself.
    pub allowed_peer_addrs: Vec<SocketAddr>,
    /// Extra peer addresses or CIDRs to deny on top of the built-in list.
    pub denied_peers: Vec<String>,
    /// TEST ONLY: allow relaying to loopback peers (for `turnutils_peer`). Default `false`.
    pub allow_loopback_peers: bool,
    /// Cap on live allocations. Default 10,000.
    pub max_allocations: usize,
    /// Cap on live allocations per REST user id (486 beyond). Default 10.
    pub max_allocations_per_user: u32,
    /// Cap on permissions per allocation (508 beyond). Default 32.
    pub max_permissions_per_allocation: usize,
    /// Cap on channels per allocation (508 beyond). Default 32.
    pub max_channels_per_allocation: usize,
    /// Relayed bits per second per allocation, both directions together; 0 = unlimited.
    /// Default 20,000,000.
    pub max_allocation_bandwidth_bps: u64,
    /// 401/438/400 answers per source IP per second; 0 = unlimited. Default 100.
    pub unauthorized_rate_per_ip: u32,
    /// Cap on concurrent TCP+TLS connections. Default 10,000.
    pub max_stream_connections: usize,
    /// Default allocation lifetime, seconds. Default 600.
    pub allocation_lifetime_secs: u64,
    /// Maximum allocation lifetime, seconds. Default 3600.
    pub allocation_max_lifetime_secs: u64,
    /// Permission lifetime, seconds. Default 300.
    pub permission_lifetime_secs: u64,
    /// Channel binding lifetime, seconds. Default 600.
    pub channel_lifetime_secs: u64,
    /// Nonce lifetime before 438 Stale Nonce, seconds. Default 600.
    pub nonce_lifetime_secs: u64,
    /// SOFTWARE attribute value; `None` sends none. Default none.
    pub software: Option<String>,
    /// UDP listener sockets per address (SO_REUSEPORT); 0 = one per CPU. Default 0.
    pub udp_workers: usize,
    /// Log client IP addresses and usernames instead of `[redacted]`. Default `false`.
    pub log_identities: bool,
}

impl Default for TurnConfig {
    fn default() -> Self {
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3478);
        TurnConfig {
            listen_udp: vec![local],
            listen_tcp: vec![local],
            listen_tls: vec![],
            tls_cert_path: None,
            tls_key_path: None,
            realm: "moien".into(),
            secrets: vec![],
            rest_separator: ':',
            strict_expiry: false,
            relay_ipv4: Some(Ipv4Addr::LOCALHOST),
            relay_ipv6: None,
            advertised_ipv4: None,
            advertised_ipv6: None,
            relay_port_min: 49152,
            relay_port_max: 65535,
            allowed_peers: vec![],
            allowed_peer_addrs: vec![],
            denied_peers: vec![],
            allow_loopback_peers: false,
            max_allocations: 10_000,
            max_allocations_per_user: 10,
            max_permissions_per_allocation: 32,
            max_channels_per_allocation: 32,
            max_allocation_bandwidth_bps: 20_000_000,
            unauthorized_rate_per_ip: 100,
            max_stream_connections: 10_000,
            allocation_lifetime_secs: 600,
            allocation_max_lifetime_secs: 3600,
            permission_lifetime_secs: 300,
            channel_lifetime_secs: 600,
            nonce_lifetime_secs: 600,
            software: None,
            udp_workers: 0,
            log_identities: false,
        }
    }
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("listen_udp", &self.listen_udp)
            .field("listen_tcp", &self.listen_tcp)
            .field("listen_tls", &self.listen_tls)
            .field("realm", &self.realm)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("relay_ipv4", &self.relay_ipv4)
            .field("relay_ipv6", &self.relay_ipv6)
            .field("relay_ports", &(self.relay_port_min..=self.relay_port_max))
            .field("allowed_peers", &self.allowed_peers)
            .field("allowed_peer_addrs", &self.allowed_peer_addrs)
            .field("allow_loopback_peers", &self.allow_loopback_peers)
            .finish_non_exhaustive()
    }
}

impl TurnConfig {
    /// Mints credentials with the first secret (what signaling hands out as `iceServers`).
    pub fn mint_credentials(
        &self,
        user_id: &str,
        ttl: Duration,
    ) -> Result<crate::Credentials, ConfigError> {
        let secret = self
            .secrets
            .iter()
            .find(|s| !s.is_empty())
            .ok_or(ConfigError::NoSecret)?;
        Ok(crate::auth::mint_credentials(secret, user_id, ttl))
    }

    /// Checks the settings that need no I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.secrets.is_empty() || self.secrets.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::NoSecret);
        }
        if self.relay_port_min == 0 || self.relay_port_min > self.relay_port_max {
            return Err(ConfigError::PortRange(
                self.relay_port_min,
                self.relay_port_max,
            ));
        }
        if !self.listen_tls.is_empty()
            && (self.tls_cert_path.is_none() || self.tls_key_path.is_none())
        {
            return Err(ConfigError::TlsPaths);
        }
        if self.relay_ipv4.is_none() && self.relay_ipv6.is_none() {
            return Err(ConfigError::NoRelay);
        }
        if self.listen_udp.is_empty() && self.listen_tcp.is_empty() && self.listen_tls.is_empty() {
            return Err(ConfigError::NoListener);
        }
        if self.realm.is_empty() || self.realm.len() > 763 {
            return Err(ConfigError::Invalid("realm must be 1..=763 bytes"));
        }
        if self.allocation_lifetime_secs == 0
            || self.allocation_max_lifetime_secs < self.allocation_lifetime_secs
        {
            return Err(ConfigError::Invalid("allocation lifetimes"));
        }
        if self.permission_lifetime_secs == 0
            || self.channel_lifetime_secs == 0
            || self.nonce_lifetime_secs == 0
        {
            return Err(ConfigError::Invalid("lifetimes must be positive"));
        }
        self.parse_cidrs()?;
        Ok(())
    }

    fn parse_cidrs(&self) -> Result<(Vec<Cidr>, Vec<Cidr>), ConfigError> {
        let allow = self
            .allowed_peers
            .iter()
            .map(|s| s.parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()?;
        let deny = self
            .denied_peers
            .iter()
            .map(|s| s.parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok((allow, deny))
    }

    /// The core's configuration, given the addresses the listeners actually bound (they join
    /// the deny list) and a random nonce key.
    pub fn core_config(
        &self,
        own: Vec<SocketAddr>,
        nonce_key: [u8; 32],
    ) -> Result<CoreConfig, ConfigError> {
        self.validate()?;
        let (allow, deny) = self.parse_cidrs()?;
        Ok(CoreConfig {
            realm: self.realm.clone(),
            secrets: self.secrets.clone(),
            rest_separator: self.rest_separator,
            strict_expiry: self.strict_expiry,
            ipv4_relay: self.relay_ipv4.is_some(),
            ipv6_relay: self.relay_ipv6.is_some(),
            allocation_default_lifetime: Duration::from_secs(self.allocation_lifetime_secs),
            allocation_max_lifetime: Duration::from_secs(self.allocation_max_lifetime_secs),
            permission_lifetime: Duration::from_secs(self.permission_lifetime_secs),
            channel_lifetime: Duration::from_secs(self.channel_lifetime_secs),
            nonce_lifetime: Duration::from_secs(self.nonce_lifetime_secs),
            max_allocations: self.max_allocations,
            max_allocations_per_user: self.max_allocations_per_user,
            max_permissions_per_allocation: self.max_permissions_per_allocation,
            max_channels_per_allocation: self.max_channels_per_allocation,
            allocation_bandwidth_bytes_per_sec: self.max_allocation_bandwidth_bps / 8,
            unauthorized_per_ip_per_sec: self.unauthorized_rate_per_ip,
            software: self.software.clone(),
            policy: RelayPolicy::new(allow, deny, own, self.allow_loopback_peers)
                .with_exact(self.allowed_peer_addrs.clone()),
            nonce_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_refuse_to_start_without_secret() {
        let c = TurnConfig::default();
        assert!(matches!(c.validate(), Err(ConfigError::NoSecret)));
        let c = TurnConfig {
            secrets: vec!["".into()],
            ..TurnConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::NoSecret)));
        let c = TurnConfig {
            secrets: vec!["s".into()],
            ..TurnConfig::default()
        };
        assert!(c.validate().is_ok());
    }

    #[test]
    fn malformed_cidr_and_bad_ranges_refused() {
        let base = TurnConfig {
            secrets: vec!["s".into()],
            ..TurnConfig::default()
        };
        let c = TurnConfig {
            allowed_peers: vec!["10.0.0.0/99".into()],
            ..base.clone()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Cidr(_))));
        let c = TurnConfig {
            relay_port_min: 5000,
            relay_port_max: 4000,
            ..base.clone()
        };
        assert!(matches!(c.validate(), Err(ConfigError::PortRange(..))));
        let c = TurnConfig {
            listen_tls: vec!["127.0.0.1:5349".parse().unwrap()],
            ..base
        };
        assert!(matches!(c.validate(), Err(ConfigError::TlsPaths)));
    }

    #[test]
    fn deserialises_with_defaults_and_rejects_unknown_fields() {
        let c: TurnConfig = serde_json::from_str(
            r#"{"secrets":["a","b"],"realm":"example.lu","allowed_peers":["10.0.0.5"]}"#,
        )
        .unwrap();
        assert_eq!(c.secrets, vec!["a", "b"]);
        assert_eq!(c.realm, "example.lu");
        assert_eq!(c.relay_port_min, 49152);
        assert!(!c.allow_loopback_peers);
        assert!(c.validate().is_ok());
        assert!(serde_json::from_str::<TurnConfig>(r#"{"secret":"typo"}"#).is_err());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("\"a\""), "secrets are not printed: {dbg}");
    }

    #[test]
    fn mints_with_first_secret() {
        let c = TurnConfig {
            secrets: vec!["first".into(), "second".into()],
            ..TurnConfig::default()
        };
        let cred = c.mint_credentials("u1", Duration::from_secs(60)).unwrap();
        assert_eq!(
            cred.password,
            crate::auth::rest_password(b"first", &cred.username)
        );
        assert!(
            TurnConfig::default()
                .mint_credentials("u", Duration::from_secs(1))
                .is_err()
        );
    }
}
