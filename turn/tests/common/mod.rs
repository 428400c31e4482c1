//! Shared helpers for the integration tests: an in-process server on loopback, and UDP, TCP
//! and TLS client connections speaking through `turn::client::TurnClient`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use prometheus::Registry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use turn::client::{Response, TurnClient};
use turn::{TurnConfig, TurnHandle, TurnMetrics};

pub const SECRET: &str = "integration-secret";
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "moien-turn-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct TestServer {
    pub handle: TurnHandle,
    pub metrics: TurnMetrics,
    pub registry: Registry,
    pub cert_der: Vec<u8>,
    pub cert_pem: PathBuf,
    _dir: TempDir,
}

impl TestServer {
    pub fn udp(&self) -> SocketAddr {
        self.handle.udp_addrs[0]
    }
    pub fn tcp(&self) -> SocketAddr {
        self.handle.tcp_addrs[0]
    }
    pub fn tls(&self) -> SocketAddr {
        self.handle.tls_addrs[0]
    }
}

/// Starts a server on 127.0.0.1 ephemeral ports (UDP, TCP, TLS with a fresh self-signed
/// certificate), IPv4 relays on 127.0.0.1 and IPv6 relays on ::1.
pub async fn start_server(tweak: impl FnOnce(&mut TurnConfig)) -> TestServer {
    let dir = TempDir::new("tls");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = dir.0.join("cert.pem");
    let key_pem = dir.0.join("key.pem");
    std::fs::write(&cert_pem, ck.cert.pem()).unwrap();
    std::fs::write(&key_pem, ck.signing_key.serialize_pem()).unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cfg = TurnConfig {
        listen_udp: vec![local],
        listen_tcp: vec![local],
        listen_tls: vec![local],
        tls_cert_path: Some(cert_pem.clone()),
        tls_key_path: Some(key_pem),
        secrets: vec![SECRET.into()],
        relay_ipv4: Some("127.0.0.1".parse().unwrap()),
        relay_ipv6: Some("::1".parse().unwrap()),
        udp_workers: 2,
        max_allocations_per_user: 1000,
        unauthorized_rate_per_ip: 10_000,
        ..TurnConfig::default()
    };
    tweak(&mut cfg);
    let registry = Registry::new();
    let metrics = TurnMetrics::new(&registry).unwrap();
    let handle = turn::start(cfg, metrics.clone()).await.unwrap();
    TestServer {
        handle,
        metrics,
        registry,
        cert_der: ck.cert.der().to_vec(),
        cert_pem,
        _dir: dir,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Udp,
    Tcp,
    Tls,
}

pub const ALL_KINDS: [Kind; 3] = [Kind::Udp, Kind::Tcp, Kind::Tls];

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A client connection of any transport, exchanging whole messages.
pub enum Conn {
    Udp { sock: UdpSocket, server: SocketAddr },
    Stream { s: Box<dyn Stream>, buf: Vec<u8> },
}

impl Conn {
    pub async fn open(kind: Kind, srv: &TestServer) -> Conn {
        match kind {
            Kind::Udp => {
                let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                Conn::Udp {
                    sock,
                    server: srv.udp(),
                }
            }
            Kind::Tcp => {
                let s = TcpStream::connect(srv.tcp()).await.unwrap();
                Conn::Stream {
                    s: Box::new(s),
                    buf: Vec::new(),
                }
            }
            Kind::Tls => {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(rustls::pki_types::CertificateDer::from(
                        srv.cert_der.clone(),
                    ))
                    .unwrap();
                let cfg = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
                let tcp = TcpStream::connect(srv.tls()).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let s = conn.connect(name, tcp).await.unwrap();
                Conn::Stream {
                    s: Box::new(s),
                    buf: Vec::new(),
                }
            }
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, Conn::Stream { .. })
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        match self {
            Conn::Udp { sock, server } => {
                sock.send_to(bytes, *server).await.unwrap();
            }
            Conn::Stream { s, .. } => {
                s.write_all(bytes).await.unwrap();
                s.flush().await.unwrap();
            }
        }
    }

    /// Next message, or `None` after `TIMEOUT` (or a closed stream).
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.recv_within(TIMEOUT).await
    }

    pub async fn recv_within(&mut self, t: Duration) -> Option<Vec<u8>> {
        match self {
            Conn::Udp { sock, .. } => {
                let mut b = vec![0u8; 65536];
                let (n, _) = tokio::time::timeout(t, sock.recv_from(&mut b))
                    .await
                    .ok()?
                    .ok()?;
                b.truncate(n);
                Some(b)
            }
            Conn::Stream { s, buf } => loop {
                if let Ok(Some(n)) = turn::framing::frame_len(buf) {
                    return Some(buf.drain(..n).collect());
                }
                let mut chunk = [0u8; 8192];
                let n = tokio::time::timeout(t, s.read(&mut chunk))
                    .await
                    .ok()?
                    .ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            },
        }
    }
}

/// A TURN client session over one connection.
pub struct Session {
    pub conn: Conn,
    pub client: TurnClient,
}

impl Session {
    pub async fn open(kind: Kind, srv: &TestServer, user: &str) -> Session {
        let c = turn::mint_credentials(SECRET, user, Duration::from_secs(3600));
        Session {
            conn: Conn::open(kind, srv).await,
            client: TurnClient::new(&c.username, &c.password),
        }
    }

    /// Sends a request and returns the response with its transaction id, skipping anything
    /// else (Data indications, ChannelData).
    pub async fn request(&mut self, msg: Vec<u8>) -> Response {
        let tid: [u8; 12] = msg[8..20].try_into().unwrap();
        self.conn.send(&msg).await;
        loop {
            let bytes = self.conn.recv().await.expect("response before timeout");
            if let Some(r) = self.client.on_response(&bytes)
                && r.transaction_id == tid
            {
                return r;
            }
        }
    }

    /// The 401 dance and an Allocate; returns the relayed address.
    pub async fn allocate(&mut self, v6: bool) -> SocketAddr {
        let m = self.client.allocate(v6);
        let r = self.request(m).await;
        assert_eq!(r.code, Some(401), "first Allocate must be challenged");
        let m = self.client.allocate(v6);
        let r = self.request(m).await;
        assert!(r.code.is_none(), "Allocate refused: {:?}", r.code);
        assert!(r.integrity_ok);
        r.relayed.expect("XOR-RELAYED-ADDRESS")
    }
}

/// A UDP echo peer on loopback (what turnutils_peer does), for our own relay tests.
pub async fn echo_peer(addr: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind(addr).await.unwrap();
    let local = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut b = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut b).await {
            let _ = sock.send_to(&b[..n], from).await;
        }
    });
    (local, task)
}
