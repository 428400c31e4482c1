//! A development TURN server on loopback with the test-only loopback switch, for trying
//! `turnutils_uclient` by hand:
//!
//! `cargo run --release --example serve -- [secret] [udp/tcp port] [tls cert.pem key.pem]`

use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let secret = args.get(1).cloned().unwrap_or_else(|| "secret".into());
    let port: u16 = args.get(2).map(|p| p.parse()).transpose()?.unwrap_or(3478);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut cfg = turn::TurnConfig {
        listen_udp: vec![addr],
        listen_tcp: vec![addr],
        secrets: vec![secret],
        allow_loopback_peers: true,
        max_allocations_per_user: 1000,
        unauthorized_rate_per_ip: 10_000,
        ..turn::TurnConfig::default()
    };
    if let (Some(cert), Some(key)) = (args.get(3), args.get(4)) {
        cfg.listen_tls = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port + 1871))];
        cfg.tls_cert_path = Some(cert.into());
        cfg.tls_key_path = Some(key.into());
    }
    let registry = prometheus::Registry::new();
    let metrics = turn::TurnMetrics::new(&registry)?;
    let handle = turn::start(cfg, metrics.clone()).await?;
    println!(
        "udp {:?} tcp {:?} tls {:?}",
        handle.udp_addrs, handle.tcp_addrs, handle.tls_addrs
    );
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let dropped: Vec<String> = [
            "no_permission",
            "no_channel",
            "bandwidth",
            "malformed",
            "no_allocation",
        ]
        .iter()
        .map(|r| {
            format!(
                "{r}={}",
                metrics.dropped_packets.with_label_values(&[r]).get()
            )
        })
        .collect();
        println!(
            "allocations {} c2p {} p2c {} dropped {}",
            handle.allocation_count(),
            metrics.relayed_packets("client_to_peer"),
            metrics.relayed_packets("peer_to_client"),
            dropped.join(" ")
        );
    }
}
