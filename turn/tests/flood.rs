//! Unauthenticated flood over real UDP: 100,000 Allocate requests from 5,000 source ports
//! create no allocation, no per-source state, only rate-limited 401s, and flat memory.

mod common;

use std::time::Instant;

use common::{TIMEOUT, start_server};
use tokio::net::UdpSocket;
use turn::client::{TurnClient, binding_request, parse_response};

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

const PORTS: usize = 5_000;
const PER_PORT: usize = 20;
const RATE: u32 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_unauthenticated_allocates() {
    let srv = start_server(|c| c.unauthorized_rate_per_ip = RATE).await;
    let server = srv.udp();
    let before_tables = srv.handle.table_sizes();
    let mut c = TurnClient::new("1:flood", "x");
    // One request without credentials, one with a forged nonce and integrity: both kinds must
    // stay stateless.
    let plain = c.allocate(false);
    let _ = c.on_response(&{
        let mut out = Vec::new();
        turn::stun::MessageBuilder::new(
            &mut out,
            turn::stun::method::ALLOCATE,
            turn::stun::Class::Error,
            [0; 12],
        )
        .error_code(401, "Unauthorized")
        .attr(turn::stun::attr::REALM, b"moien")
        .attr(turn::stun::attr::NONCE, b"00000000forgedforgedforgedforged");
        out
    });
    let forged = c.allocate(false);
    let started = Instant::now();
    let mut answered_401 = 0u64;
    let mut rss_after_warmup = 0;
    let mut buf = vec![0u8; 2048];
    for p in 0..PORTS {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..PER_PORT {
            let m = if i % 2 == 0 { &plain } else { &forged };
            sock.send_to(m, server).await.unwrap();
        }
        // Binding is answered to everyone and travels behind the flood on this socket, so its
        // answer means the server has processed this port's requests.
        let tid = [(p % 251) as u8; 12];
        sock.send_to(&binding_request(tid), server).await.unwrap();
        loop {
            let (n, _) = tokio::time::timeout(TIMEOUT, sock.recv_from(&mut buf))
                .await
                .expect("server still answers Binding under flood")
                .unwrap();
            let r = parse_response(&buf[..n], None).unwrap();
            if r.method == turn::stun::method::BINDING {
                assert_eq!(r.transaction_id, tid);
                break;
            }
            assert!(
                matches!(r.code, Some(401 | 438)),
                "only challenges: {:?}",
                r.code
            );
            answered_401 += 1;
        }
        if p == PORTS / 10 {
            rss_after_warmup = rss_kib();
        }
    }
    let elapsed = started.elapsed();
    let rss_end = rss_kib();

    assert_eq!(srv.handle.allocation_count(), 0);
    let after = srv.handle.table_sizes();
    assert_eq!(after, before_tables, "no server table grew");
    assert_eq!(after.slots + after.tuples + after.users, 0);
    assert!(
        after.ratelimit_bytes <= 64 * 1024,
        "limiter is a fixed table"
    );
    assert_eq!(srv.metrics.allocations_created.get(), 0);
    let secs = elapsed.as_secs() + 2;
    assert!(
        answered_401 <= u64::from(RATE) * secs,
        "401/438 rate-limited per IP: {answered_401} answers in {elapsed:?}"
    );
    let suppressed = srv
        .metrics
        .dropped_packets
        .with_label_values(&["rate_limited"])
        .get();
    assert_eq!(
        suppressed + answered_401,
        (PORTS * PER_PORT) as u64,
        "every request was seen and answered or suppressed"
    );
    assert!(srv.metrics.unauthorized_suppressed.get() > 0);
    let growth = rss_end.saturating_sub(rss_after_warmup);
    assert!(
        growth < 16 * 1024,
        "memory flat under flood: grew {growth} KiB"
    );
    srv.handle.shutdown().await;
}
