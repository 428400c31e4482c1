//! Media plane configuration: where workers listen, what they advertise, and their timeouts.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[media]` section of `moien.toml`. Documented in `docs/CONFIG.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Address the media UDP sockets bind to.
    pub bind: IpAddr,
    /// First UDP port; worker `i` listens on `port + i`. `0` picks free ports.
    pub port: u16,
    /// Number of media worker threads; `0` means one per CPU core.
    pub workers: usize,
    /// Addresses advertised in ICE candidates. Empty means the bind address.
    pub public_ips: Vec<IpAddr>,
    /// Minimum interval between two keyframe requests to one publisher track.
    #[serde(with = "humantime_serde_compat")]
    pub keyframe_interval: Duration,
    /// How long a session may stay ICE-disconnected before its participant is removed. ICE-lite
    /// consent expires after 15 s without connectivity checks; this grace comes on top.
    #[serde(with = "humantime_serde_compat")]
    pub disconnect_grace: Duration,
    /// How long a negotiated session may take to connect before its participant is removed.
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Largest number of participants one worker hosts.
    pub max_participants_per_worker: usize,
    /// New rooms go to the first worker busy less than this share of one core (0 to 1);
    /// `0` spreads rooms over the worker with the fewest participants. See `placement`.
    pub pack_load: f64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 7882,
            workers: 0,
            public_ips: Vec::new(),
            keyframe_interval: Duration::from_millis(300),
            disconnect_grace: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(30),
            max_participants_per_worker: 5000,
            pack_load: 0.5,
        }
    }
}

impl MediaConfig {
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }

    /// The addresses put in ICE candidates; an error if one is a wildcard, which no client can
    /// send to (a node bound to `0.0.0.0` or `::` without `public_ips` used to start and
    /// then fail every call's ICE).
    pub fn advertised_ips(&self) -> Result<Vec<IpAddr>, String> {
        let ips = if self.public_ips.is_empty() {
            vec![self.bind]
        } else {
            self.public_ips.clone()
        };
        match ips.iter().find(|ip| ip.is_unspecified()) {
            Some(ip) if self.public_ips.is_empty() => Err(format!(
                "[media] bind {ip} listens on every address, and clients need one to send to: \
                 set [media] public_ips (MOIEN_MEDIA_PUBLIC_IPS, --public-ip) to the addresses \
                 clients reach"
            )),
            Some(ip) => Err(format!(
                "[media] public_ips lists {ip}, which no client can send to: list the addresses \
                 clients reach"
            )),
            None => Ok(ips),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_needs_public_ips() {
        let mut c = MediaConfig {
            bind: "::".parse().unwrap(),
            ..MediaConfig::default()
        };
        let e = c.advertised_ips().unwrap_err();
        assert!(e.contains("public_ips"), "{e}");
        c.public_ips = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        assert_eq!(c.advertised_ips().unwrap(), c.public_ips);
        c.public_ips.push("0.0.0.0".parse().unwrap());
        let e = c.advertised_ips().unwrap_err();
        assert!(e.contains("lists 0.0.0.0"), "{e}");
        assert_eq!(
            MediaConfig::default().advertised_ips().unwrap(),
            vec![IpAddr::from([127, 0, 0, 1])]
        );
    }
}

/// Durations in the config file are written the human way: `300ms`, `2s`, `1m`.
pub mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}
