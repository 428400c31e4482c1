//! Shared by the load tester's end-to-end tests: a whole Moien node in the test process, on
//! free loopback ports only (tests and other nodes run side by side on this machine).

use moien::{Config, Node};

pub const SECRET: &str = "loadtest-e2e-secret";

/// Signaling, media and metrics on free loopback ports; no TURN listener (the simulated
/// participants reach the media ports directly).
pub async fn node() -> Node {
    let mut config = Config::default();
    config.auth.secret = SECRET.into();
    config.signaling.listen = "127.0.0.1:0".parse().expect("address");
    config.media.port = 0;
    config.media.workers = 1;
    config.metrics.listen = "127.0.0.1:0".parse().expect("address");
    config.turn.listen_udp = vec![];
    config.turn.listen_tcp = vec![];
    config.turn.listen_tls = vec![];
    Node::start(config).await.expect("node starts")
}
