//! End-to-end relaying through the in-process server over UDP, TCP and TLS, with our own
//! client and a UDP echo peer on loopback: channels, Send/Data indications, IPv4 and IPv6,
//! and the lifecycle edges (Refresh 0, connection close, wrong secret, Binding).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{ALL_KINDS, Conn, Kind, SECRET, Session, echo_peer, start_server};
use turn::client::{
    TurnClient, binding_request, channel_data, parse_data_indication, parse_response,
};
use turn::framing::ChannelData;

async fn relay_round_trips(kind: Kind, v6: bool) {
    let srv = start_server(|c| c.allow_loopback_peers = true).await;
    let (peer, _task) = echo_peer(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).await;
    let mut s = Session::open(kind, &srv, "relay").await;
    let relayed = s.allocate(v6).await;
    assert_eq!(relayed.is_ipv6(), v6);

    // Send indication → peer → Data indication back.
    let m = s.client.create_permission(&[peer]);
    assert!(s.request(m).await.code.is_none());
    for i in 0..20u8 {
        let payload = vec![i; 33 + usize::from(i)];
        let m = s.client.send_indication(peer, &payload);
        s.conn.send(&m).await;
        let back = s.conn.recv().await.expect("Data indication");
        let (from, data) = parse_data_indication(&back).expect("a Data indication");
        assert_eq!(from, peer);
        assert_eq!(data, payload);
    }

    // ChannelBind → ChannelData both ways, padded on streams.
    let m = s.client.channel_bind(0x4abc, peer);
    assert!(s.request(m).await.code.is_none());
    let pad = s.conn.is_stream();
    for i in 0..50u16 {
        let payload: Vec<u8> = (0..(i % 7 + 1) * 13).map(|x| x as u8).collect();
        s.conn.send(&channel_data(0x4abc, &payload, pad)).await;
        let back = s.conn.recv().await.expect("ChannelData");
        if pad {
            assert_eq!(back.len() % 4, 0, "padded over streams");
        }
        let cd = ChannelData::parse(&back).expect("ChannelData");
        assert_eq!(cd.channel, 0x4abc);
        assert_eq!(cd.data, &payload[..]);
    }
    assert!(srv.metrics.relayed_packets("client_to_peer") >= 70);

    // Refresh 0 deletes the allocation; relaying stops.
    let m = s.client.refresh(Some(0));
    assert_eq!(s.request(m).await.lifetime, Some(0));
    assert_eq!(srv.handle.allocation_count(), 0);
    s.conn.send(&channel_data(0x4abc, b"gone", pad)).await;
    assert!(
        s.conn
            .recv_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_ipv4() {
    relay_round_trips(Kind::Udp, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_ipv6_relay() {
    relay_round_trips(Kind::Udp, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_ipv4() {
    relay_round_trips(Kind::Tcp, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_ipv4() {
    relay_round_trips(Kind::Tls, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_ipv6_relay() {
    relay_round_trips(Kind::Tls, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_peer_refused_without_test_switch() {
    let srv = start_server(|_| {}).await;
    let (peer, _task) = echo_peer("127.0.0.1:0").await;
    let mut s = Session::open(Kind::Udp, &srv, "secure-default").await;
    s.allocate(false).await;
    let m = s.client.channel_bind(0x4000, peer);
    assert_eq!(s.request(m).await.code, Some(403));
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_close_deletes_allocation() {
    let srv = start_server(|_| {}).await;
    for kind in [Kind::Tcp, Kind::Tls] {
        let mut s = Session::open(kind, &srv, "closer").await;
        s.allocate(false).await;
        assert_eq!(srv.handle.allocation_count(), 1);
        let mut active = srv.handle.watch_allocations();
        drop(s);
        tokio::time::timeout(Duration::from_secs(5), active.wait_for(|n| *n == 0))
            .await
            .unwrap_or_else(|_| panic!("{kind:?} allocation outlived its connection"))
            .unwrap();
        assert_eq!(srv.handle.allocation_count(), 0);
    }
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_refused_on_every_transport() {
    let srv = start_server(|_| {}).await;
    for kind in ALL_KINDS {
        let c = turn::mint_credentials("not-the-secret", "mallory", Duration::from_secs(600));
        let mut s = Session {
            conn: Conn::open(kind, &srv).await,
            client: TurnClient::new(&c.username, &c.password),
        };
        let m = s.client.allocate(false);
        assert_eq!(s.request(m).await.code, Some(401));
        let m = s.client.allocate(false);
        assert_eq!(s.request(m).await.code, Some(401), "{kind:?}");
    }
    assert_eq!(srv.handle.allocation_count(), 0);
    assert!(srv.metrics.unauthorized.get() >= 6);
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_on_every_transport() {
    let srv = start_server(|_| {}).await;
    for kind in ALL_KINDS {
        let mut c = Conn::open(kind, &srv).await;
        c.send(&binding_request([9; 12])).await;
        let r = parse_response(&c.recv().await.unwrap(), None).unwrap();
        let mapped: SocketAddr = r.mapped.unwrap();
        assert_eq!(mapped.ip().to_string(), "127.0.0.1", "{kind:?}");
    }
    let urls = srv.handle.ice_urls("turn.example.lu");
    assert_eq!(
        urls,
        vec![
            format!("turn:turn.example.lu:{}?transport=udp", srv.udp().port()),
            format!("turn:turn.example.lu:{}?transport=tcp", srv.tcp().port()),
            format!("turns:turn.example.lu:{}?transport=tcp", srv.tls().port()),
        ]
    );
    assert!(srv.handle.ice_urls("2001:db8::1")[0].starts_with("turn:[2001:db8::1]:"));
    let _ = SECRET;
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_without_secret_and_with_bad_cidr() {
    let reg = prometheus::Registry::new();
    let m = turn::TurnMetrics::new(&reg).unwrap();
    let cfg = turn::TurnConfig {
        listen_udp: vec!["127.0.0.1:0".parse().unwrap()],
        listen_tcp: vec![],
        ..turn::TurnConfig::default()
    };
    assert!(matches!(
        turn::start(cfg.clone(), m.clone()).await,
        Err(turn::StartError::Config(turn::ConfigError::NoSecret))
    ));
    let cfg = turn::TurnConfig {
        secrets: vec!["s".into()],
        allowed_peers: vec!["10.0.0.0/40".into()],
        ..cfg
    };
    assert!(turn::start(cfg, m).await.is_err());
}
