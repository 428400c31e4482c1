//! Shared helpers of the end-to-end tests: a whole node in-process on free ports, tokens, and
//! Rust clients.
#![allow(dead_code)]

use std::time::Duration;

use moien::{Config, Node};
use moien_client::{Client, ClientConfig};
use moien_signaling::auth::{self, Claims, Grants};

pub const SECRET: &str = "test-secret";

/// `moien serve --dev` with signaling and media on free ports.
pub const DEV_ON_FREE_PORTS: [&str; 6] = [
    "serve",
    "--dev",
    "--http",
    "127.0.0.1:0",
    "--media-port",
    "0",
];

/// Starts signaling and media on 127.0.0.1 with free ports.
pub async fn start_node() -> Node {
    start_node_with(|_| {}).await
}

/// Like [`start_node`], with the test's changes to the configuration.
pub async fn start_node_with(change: impl FnOnce(&mut Config)) -> Node {
    // RUST_LOG=moien_sfu=debug shows the server's side of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = Config::default();
    config.auth.secret = SECRET.into();
    config.signaling.listen = "127.0.0.1:0".parse().unwrap();
    config.media.port = 0;
    config.media.workers = 2;
    // Tests run side by side: TURN on free ports too.
    let any = "127.0.0.1:0".parse().unwrap();
    config.turn.listen_udp = vec![any];
    config.turn.listen_tcp = vec![any];
    change(&mut config);
    Node::start(config).await.expect("node starts")
}

/// A token with any grants, signed with `secret` (key id `iss`, empty for the `[auth] secret`).
pub fn access_token(
    secret: &str,
    iss: &str,
    room: &str,
    identity: &str,
    grants: moien_signaling::auth::AccessGrants,
) -> String {
    let now = auth::now_unix();
    auth::mint(
        secret,
        &moien_signaling::auth::AccessClaims {
            iss: iss.into(),
            sub: identity.into(),
            room: room.into(),
            exp: now + 600,
            nbf: None,
            iat: Some(now),
            name: identity.to_uppercase(),
            metadata: String::new(),
            grants,
        },
    )
    .unwrap()
}

/// An admin API token for `room` (`*`: every room).
pub fn admin_token(room: &str) -> String {
    auth::mint(
        SECRET,
        &moien_signaling::auth::AccessClaims::admin("", "ops", room, 600),
    )
    .unwrap()
}

pub fn token(room: &str, identity: &str, publish: bool, subscribe: bool) -> String {
    token_with(room, identity, publish, subscribe, 600)
}

pub fn token_with(room: &str, identity: &str, publish: bool, subscribe: bool, ttl: i64) -> String {
    let now = auth::now_unix() as i64;
    auth::mint(
        SECRET,
        &Claims {
            sub: identity.into(),
            room: room.into(),
            exp: (now + ttl).max(0) as u64,
            nbf: None,
            iat: Some(now as u64),
            name: identity.to_uppercase(),
            grants: Grants { publish, subscribe },
        },
    )
    .unwrap()
}

pub fn ws_url(node: &Node) -> String {
    format!("ws://{}/rtc", node.http)
}

pub fn http_url(node: &Node) -> String {
    format!("http://{}", node.http)
}

pub async fn join(node: &Node, room: &str, identity: &str) -> Client {
    Client::connect(ClientConfig::new(
        ws_url(node),
        token(room, identity, true, true),
    ))
    .await
    .expect("client joins")
}

pub const MEDIA_TIMEOUT: Duration = Duration::from_secs(15);
