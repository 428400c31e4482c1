//! The `moien` binary's library half: configuration and the wiring that starts every role in
//! one process. Tests start a whole node through [`Node::start`] exactly as `moien serve` does.

pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use moien_sfu::MediaNode;
use moien_signaling::Server;

pub use config::Config;

/// A running node: signaling and media (and, later, TURN) in one process.
pub struct Node {
    pub http: SocketAddr,
    pub media_addrs: Vec<SocketAddr>,
    pub media: Arc<MediaNode>,
    server: Server,
}

impl Node {
    /// Starts every role. `config.auth.secret` must be set (the CLI fills in the dev secret).
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        anyhow::ensure!(
            !config.auth.secret.is_empty(),
            "no API secret: set [auth] secret, MOIEN_SECRET or --secret (or use --dev)"
        );
        let media = MediaNode::start(config.media.clone()).context("starting media workers")?;
        let mut signaling = config.signaling.clone();
        signaling.secret = config.auth.secret.clone();
        let server = Server::start(signaling, media.clone())
            .await
            .with_context(|| format!("binding HTTP {}", config.signaling.listen))?;
        Ok(Node {
            http: server.local_addr,
            media_addrs: media.media_addrs(),
            media,
            server,
        })
    }

    /// Stops accepting requests, then lets the media workers wind down.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        drop(self.media);
    }
}
