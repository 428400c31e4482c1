//! Shared helpers of the end-to-end tests: a whole node in-process on free ports, tokens, and
//! Rust clients.
#![allow(dead_code)]

use std::time::Duration;

use moien::{Config, Node};
use moien_client::{Client, ClientConfig};
use moien_signaling::auth::{self, Claims, Grants};

pub const SECRET: &str = "test-secret";

/// Starts signaling and media on 127.0.0.1 with free ports.
pub async fn start_node() -> Node {
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
    Node::start(config).await.expect("node starts")
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
