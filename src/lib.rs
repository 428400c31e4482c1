//! The `moien` binary's library half: configuration and the wiring that starts the roles in one
//! process. Tests start a whole node through [`Node::start`] exactly as `moien serve` does.

pub mod config;
pub mod metrics;
pub mod probe;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use moien_protocol::IceServer;
use moien_sfu::MediaNode;
use moien_signaling::metrics::SignalingMetrics;
use moien_signaling::{IceProvider, Server};

pub use config::Config;

/// Which roles a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// Signaling, media and TURN.
    #[default]
    All,
    /// The TURN/STUN server alone.
    Turn,
}

/// How long the TURN credentials handed to a client stay valid.
const TURN_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);

/// A running node.
pub struct Node {
    /// Signaling HTTP address (absent with `--role turn`).
    pub http: SocketAddr,
    /// Whether `http` serves HTTPS/WSS (a certificate is configured).
    pub https: bool,
    pub media_addrs: Vec<SocketAddr>,
    pub media: Option<Arc<MediaNode>>,
    pub turn: Option<turn::TurnHandle>,
    /// Every metric of this node, labelled `node`.
    pub registry: prometheus::Registry,
    /// Where `/metrics` and `/status` are served (never the signaling port).
    pub metrics_addr: SocketAddr,
    server: Option<Server>,
    metrics: metrics::MetricsServer,
}

impl Node {
    /// Starts every role. `config.auth.secret` must be set (the CLI fills in the dev secret).
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        Self::start_roles(config, Role::All).await
    }

    pub async fn start_roles(config: Config, role: Role) -> anyhow::Result<Node> {
        anyhow::ensure!(
            !config.auth.secret.is_empty()
                || !config.auth.keys.is_empty()
                || !config.turn.secrets.is_empty(),
            "no API secret: set [auth] secret, MOIEN_SECRET or --secret (or use --dev)"
        );
        let registry = metrics::node_registry(&metrics::node_name(&config.metrics))
            .context("metrics registry")?;
        metrics::register_process(&registry).context("process metrics")?;
        // Bound first: a configured metrics address that is taken stops the start here.
        let metrics =
            metrics::MetricsServer::start(config.metrics.listen, registry.clone()).await?;
        let media = if role == Role::All {
            anyhow::ensure!(
                !config.auth.secret.is_empty() || !config.auth.keys.is_empty(),
                "no API secret: set [auth] secret, MOIEN_SECRET or --secret (or use --dev)"
            );
            Some(MediaNode::start(config.media.clone()).context("starting media workers")?)
        } else {
            None
        };
        let media_addrs = media.as_ref().map(|m| m.media_addrs()).unwrap_or_default();
        if let Some(m) = &media {
            let collector = metrics::SfuCollector::new(m.clone()).context("SFU metrics")?;
            registry
                .register(Box::new(collector))
                .context("SFU metrics")?;
        }

        let turn = start_turn(&config, &media_addrs, &registry).await?;
        let ice = turn
            .as_ref()
            .map(|t| ice_provider(&config, &media_addrs, t));

        let (server, http) = match &media {
            Some(media) => {
                let mut signaling = config.signaling.clone();
                signaling.secret = config.auth.secret.clone();
                signaling.keys = config.auth.keys.clone();
                signaling.rooms = config.rooms.clone();
                signaling.webhooks = config.webhooks.clone();
                signaling.limits = config.limits.clone();
                let signaling_metrics = SignalingMetrics::new();
                signaling_metrics
                    .register(&registry)
                    .context("signaling metrics")?;
                let server = Server::start(signaling, media.clone(), ice, signaling_metrics)
                    .await
                    .with_context(|| format!("binding HTTP {}", config.signaling.listen))?;
                let http = server.local_addr;
                (Some(server), http)
            }
            None => (None, SocketAddr::from(([0, 0, 0, 0], 0))),
        };
        let https = server.as_ref().is_some_and(|s| s.tls);
        Ok(Node {
            http,
            https,
            media_addrs,
            media,
            turn,
            registry,
            metrics_addr: metrics.local_addr,
            server,
            metrics,
        })
    }

    /// Stops accepting requests, then lets the roles wind down.
    pub async fn shutdown(self) {
        if let Some(s) = self.server {
            s.shutdown().await;
        }
        if let Some(t) = self.turn {
            t.shutdown().await;
        }
        drop(self.media);
        self.metrics.shutdown().await;
    }
}

/// The TURNS port (RFC 7065) used when a certificate is configured and no TLS listener is.
const DEFAULT_TURNS_PORT: u16 = 5349;

/// TURN with the API secret unless it has its own, allowing relays to our own media sockets.
async fn start_turn(
    config: &Config,
    media_addrs: &[SocketAddr],
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<turn::TurnHandle>> {
    let mut tc = config.turn.clone();
    if tc.listen_udp.is_empty() && tc.listen_tcp.is_empty() && tc.listen_tls.is_empty() {
        return Ok(None);
    }
    if tc.secrets.is_empty() {
        tc.secrets = vec![api_secret(config)];
    }
    // A certificate is all it takes to get TURNS: on 5349 beside the first UDP listener's address.
    if tc.listen_tls.is_empty() && tc.tls_cert_path.is_some() && tc.tls_key_path.is_some() {
        let ip = tc
            .listen_udp
            .first()
            .or(tc.listen_tcp.first())
            .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip());
        tc.listen_tls = vec![SocketAddr::new(ip, DEFAULT_TURNS_PORT)];
    }
    // Relayed calls reach the SFU's media sockets (also on loopback or a private network),
    // and only those of our own ports.
    // Checked when the media plane started.
    let advertised = config.media.advertised_ips().unwrap_or_default();
    for a in media_addrs {
        tc.allowed_peer_addrs.push(*a);
        for ip in &advertised {
            tc.allowed_peer_addrs.push(SocketAddr::new(*ip, a.port()));
        }
    }
    let metrics = turn::TurnMetrics::new(registry).context("TURN metrics")?;
    let handle = turn::start(tc, metrics).await.context("starting TURN")?;
    Ok(Some(handle))
}

/// Short-lived TURN credentials for each participant, with URLs of the address clients reach.
fn ice_provider(
    config: &Config,
    media_addrs: &[SocketAddr],
    turn: &turn::TurnHandle,
) -> IceProvider {
    let host = config
        .media
        .public_ips
        .first()
        .copied()
        .or_else(|| turn.udp_addrs.first().map(|a| a.ip()))
        .or_else(|| media_addrs.first().map(|a| a.ip()))
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let urls = turn.ice_urls(&host);
    let secret = config
        .turn
        .secrets
        .first()
        .cloned()
        .unwrap_or_else(|| api_secret(config));
    Arc::new(move |identity: &str| {
        // A pseudonymous user id: TURN usernames travel in clear.
        let user = pseudonym(identity);
        let c = turn::mint_credentials(&secret, &user, TURN_CREDENTIAL_TTL);
        vec![IceServer {
            urls: urls.clone(),
            username: Some(c.username),
            credential: Some(c.password),
        }]
    })
}

/// The API secret other roles borrow: `[auth] secret`, else the first of `[auth] keys`.
fn api_secret(config: &Config) -> String {
    if config.auth.secret.is_empty() {
        config
            .auth
            .keys
            .values()
            .next()
            .cloned()
            .unwrap_or_default()
    } else {
        config.auth.secret.clone()
    }
}

/// A stable, non-reversible stand-in for an identity in TURN usernames.
fn pseudonym(identity: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    identity.hash(&mut h);
    format!("u{:016x}", h.finish())
}
