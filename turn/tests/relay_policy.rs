//! Relay-policy suite over real sockets: CreatePermission, ChannelBind and Send toward every
//! denied encoding are refused (403, or dropped and counted for Send) over UDP, TCP and TLS.

mod common;

use std::net::SocketAddr;

use common::{ALL_KINDS, Kind, Session, start_server};
use turn::policy::DENIED_EXAMPLES;

async fn check_transport(kind: Kind, allow_loopback: bool) {
    let srv = start_server(|c| c.allow_loopback_peers = allow_loopback).await;
    let mut v4 = Session::open(kind, &srv, "policy4").await;
    v4.allocate(false).await;
    let mut v6 = Session::open(kind, &srv, "policy6").await;
    v6.allocate(true).await;
    let listener = match kind {
        Kind::Udp => srv.udp(),
        Kind::Tcp => srv.tcp(),
        Kind::Tls => srv.tls(),
    };
    let mut targets: Vec<SocketAddr> = if allow_loopback {
        // With the test-only switch, loopback opens but our own listeners must not.
        srv.handle
            .udp_addrs
            .iter()
            .chain(&srv.handle.tcp_addrs)
            .chain(&srv.handle.tls_addrs)
            .copied()
            .collect()
    } else {
        DENIED_EXAMPLES
            .iter()
            .map(|s| SocketAddr::new(s.parse().unwrap(), 5000))
            .collect()
    };
    targets.push(listener);
    let before = srv.metrics.policy_denials_total();
    let mut sends = 0;
    for t in &targets {
        let s = if t.is_ipv4() { &mut v4 } else { &mut v6 };
        let m = s.client.create_permission(&[*t]);
        let r = s.request(m).await;
        assert_eq!(r.code, Some(403), "{kind:?} CreatePermission {t}");
        let m = s.client.channel_bind(0x4000, *t);
        let r = s.request(m).await;
        assert_eq!(r.code, Some(403), "{kind:?} ChannelBind {t}");
        let m = s.client.send_indication(*t, b"should never leave");
        s.conn.send(&m).await;
        sends += 1;
    }
    // A request after the Send indications on each connection: its answer proves they were
    // processed (same connection, same worker, in order).
    for s in [&mut v4, &mut v6] {
        let m = s.client.refresh(None);
        assert!(s.request(m).await.code.is_none());
    }
    let denied = srv.metrics.policy_denials_total() - before;
    assert_eq!(
        denied,
        2 * targets.len() as u64 + sends,
        "{kind:?}: every refusal counted"
    );
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_encodings_udp() {
    check_transport(Kind::Udp, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_encodings_tcp() {
    check_transport(Kind::Tcp, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_encodings_tls() {
    check_transport(Kind::Tls, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_listeners_denied_even_with_loopback_switch() {
    for kind in ALL_KINDS {
        check_transport(kind, true).await;
    }
}
