//! `moien.toml`: every option of every role, with `MOIEN_<SECTION>_<KEY>` environment overrides.
//! `docs/CONFIG.md` documents each option; `config_doc_lists_every_option` keeps them in step.

use std::path::Path;

use anyhow::Context;
use moien_sfu::MediaConfig;
use moien_signaling::SignalingConfig;
use moien_signaling::config::{LimitsConfig, RoomsConfig, WebhookConfig};
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub auth: AuthConfig,
    pub signaling: SignalingConfig,
    pub media: MediaConfig,
    pub turn: turn::TurnConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub rooms: RoomsConfig,
    pub webhooks: WebhookConfig,
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret that signs access tokens without `iss`. Required outside dev mode unless
    /// `keys` has one.
    pub secret: String,
    /// API keys: key id (a token's `iss`) → secret. Several at once allow rotation; removing one
    /// retires its tokens.
    pub keys: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `info,moien_sfu=debug`. `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info,str0m=warn,is=warn,dimpl=warn".into(),
            format: "text".into(),
        }
    }
}

/// `[metrics]`: the Prometheus listener (`/metrics`, `/status`), never the signaling port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listener of `/metrics` and `/status`. Port 0 picks a free port.
    pub listen: std::net::SocketAddr,
    /// Value of the `node` label on every metric; empty = the host name.
    pub node: String,
}

/// Where metrics are served unless configured otherwise (the OpenTelemetry/Prometheus exporter
/// port, loopback only).
pub const DEFAULT_METRICS_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: DEFAULT_METRICS_LISTEN,
            node: String::new(),
        }
    }
}

/// The secret `moien serve --dev` uses unless told otherwise. Printed at start; never use it
/// on a reachable machine.
pub const DEV_SECRET: &str = "moien-dev-secret";

const ENV_PREFIX: &str = "MOIEN_";

/// Environment variables that belong to command-line flags, not to `MOIEN_<SECTION>_<KEY>`.
const CLI_VARIABLES: &[&str] = &["MOIEN_SECRET", "MOIEN_CONFIG", "MOIEN_TURN_SECRET"];

impl Config {
    /// Defaults, then the file (if any), then `MOIEN_<SECTION>_<KEY>` variables.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut value = toml::Value::try_from(Config::default())?;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file: toml::Value =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            merge(&mut value, file);
        }
        let unlisted = apply_env(&mut value, env)?;
        let config: Config = value.try_into().with_context(|| {
            if unlisted.is_empty() {
                "invalid configuration (see docs/CONFIG.md)".to_string()
            } else {
                // Most likely a misspelt variable: name it.
                format!(
                    "invalid configuration (see docs/CONFIG.md); check {}",
                    unlisted.join(", ")
                )
            }
        })?;
        let pack = config.media.pack_load;
        if !(0.0..=1.0).contains(&pack) {
            anyhow::bail!(
                "invalid configuration: [media] pack_load is {pack}, a share of one core between 0 and 1 (0 spreads rooms over the workers)"
            );
        }
        Ok(config)
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Applies `MOIEN_<SECTION>_<KEY>=value`. The value is read as TOML (numbers, booleans,
/// arrays) when it parses as such, as a comma-separated list for list options, else as a string.
/// Returns the variables whose option has no default value (and so could be a typo).
fn apply_env(
    value: &mut toml::Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<Vec<String>> {
    let mut unlisted = Vec::new();
    let Some(root) = value.as_table_mut() else {
        return Ok(unlisted);
    };
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        // Variables of the CLI itself have no section, or stand for a flag.
        if CLI_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        let Some((section, key)) = root
            .keys()
            .find(|s| rest.starts_with(&format!("{s}_")))
            .map(|s| (s.clone(), rest[s.len() + 1..].to_string()))
        else {
            continue;
        };
        let Some(table) = root.get_mut(&section).and_then(|t| t.as_table_mut()) else {
            continue;
        };
        // Options without a default value (none set) are absent from the table; serde's
        // `deny_unknown_fields` still refuses names that are no option at all.
        let current = table.get(&key);
        if current.is_none() {
            unlisted.push(name.clone());
        }
        let is_array = current.is_some_and(|c| c.is_array()) || key.ends_with('s');
        let parsed = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.clone())),
            Err(_) if is_array => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            ),
            Err(_) => toml::Value::String(raw.clone()),
        };
        // A string option keeps a value that happens to look like a number.
        let parsed = if current.is_none_or(|c| c.is_str()) && !parsed.is_str() && !is_array {
            toml::Value::String(raw)
        } else {
            parsed
        };
        table.insert(key, parsed);
    }
    Ok(unlisted)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_file_then_env() {
        let mut f = tempfile();
        writeln!(
            f.1,
            "[media]\nport = 9000\nworkers = 3\n[signaling]\nlisten = \"127.0.0.1:9999\""
        )
        .unwrap();
        let c = Config::load(
            Some(&f.0),
            env(&[
                ("MOIEN_MEDIA_PORT", "9100"),
                ("MOIEN_MEDIA_PUBLIC_IPS", "192.0.2.1, 192.0.2.2"),
                ("MOIEN_MEDIA_KEYFRAME_INTERVAL", "500ms"),
                ("MOIEN_AUTH_SECRET", "12345"),
                ("MOIEN_SECRET", "ignored here: a CLI variable"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.media.port, 9100);
        assert_eq!(c.media.workers, 3);
        assert_eq!(c.media.public_ips.len(), 2);
        assert_eq!(c.media.keyframe_interval, Duration::from_millis(500));
        assert_eq!(c.signaling.listen.port(), 9999);
        assert_eq!(c.auth.secret, "12345");
        let _ = std::fs::remove_file(&f.0);
    }

    #[test]
    fn pack_load_is_a_share_of_one_core() {
        let load = |v: &str| Config::load(None, env(&[("MOIEN_MEDIA_PACK_LOAD", v)]));
        assert_eq!(Config::default().media.pack_load, 0.5);
        assert_eq!(load("0").unwrap().media.pack_load, 0.0);
        assert_eq!(load("0.25").unwrap().media.pack_load, 0.25);
        assert_eq!(load("1").unwrap().media.pack_load, 1.0);
        for bad in ["1.5", "-0.1", "nan"] {
            let e = format!("{:#}", load(bad).unwrap_err());
            assert!(e.contains("pack_load"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_options_are_errors() {
        assert!(Config::load(None, env(&[("MOIEN_MEDIA_PROT", "1")])).is_err());
        let mut f = tempfile();
        writeln!(f.1, "[media]\nprot = 1").unwrap();
        assert!(Config::load(Some(&f.0), env(&[])).is_err());
        let _ = std::fs::remove_file(&f.0);
    }

    #[test]
    fn config_doc_lists_every_option() {
        let doc = include_str!("../docs/CONFIG.md");
        let value = toml::Value::try_from(Config::default()).unwrap();
        for (section, table) in value.as_table().unwrap() {
            for key in table.as_table().unwrap().keys() {
                let env = format!("MOIEN_{}_{}", section, key).to_ascii_uppercase();
                assert!(
                    doc.contains(&format!("`{key}`")) && doc.contains(&env),
                    "docs/CONFIG.md lacks [{section}] {key} / {env}"
                );
            }
        }
    }

    fn tempfile() -> (std::path::PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!(
            "moien-config-{}-{}.toml",
            std::process::id(),
            rand_suffix()
        ));
        let f = std::fs::File::create(&path).unwrap();
        (path, f)
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}
