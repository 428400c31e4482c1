//! Interoperability with Debian coturn's `turnutils_uclient` and `turnutils_peer`: UDP, TCP and
//! TLS, with channels and with Send indications, 50 clients x 500 messages, every message
//! echoed back (0 lost); a wrong secret and the secure default (no loopback peers) refused.
//!
//! The tools come from `apt-get install -y coturn`. A missing tool FAILS the test: a silent
//! pass would hide that the interop suite did not run.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{SECRET, TestServer, start_server};
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// The runs share two cores; one at a time keeps them from starving each other.
static SERIAL: Mutex<()> = Mutex::const_new(());

const CLIENTS: u64 = 50;
const MESSAGES: u64 = 500;

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: install Debian's coturn package (`apt-get install -y coturn`, \
                 as the project's Makefile does) to run the TURN interop suite"
            )
        })
}

/// Starts `turnutils_peer` on a free loopback port and waits until it echoes.
async fn start_peer() -> (Child, SocketAddr) {
    for _ in 0..10 {
        let port = {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = Command::new(tool("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn turnutils_peer");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..50 {
            sock.send_to(b"ping", addr).await.unwrap();
            let echoed =
                tokio::time::timeout(Duration::from_millis(100), sock.recv_from(&mut buf)).await;
            if let Ok(Ok((n, _))) = echoed
                && &buf[..n] == b"ping"
            {
                return (child, addr);
            }
        }
        // The port was taken meanwhile, or the peer did not come up: try another port.
    }
    panic!("turnutils_peer did not start");
}

struct Outcome {
    success: bool,
    /// How the process ended ("exit status: 1", "signal: 11 (SIGSEGV)").
    status: String,
    /// Killed by a signal: the tool crashed, and its piped (block-buffered) output is lost.
    crashed: bool,
    sent: u64,
    received: u64,
    lost: Option<u64>,
    output: String,
}

fn number_after(s: &str, key: &str) -> Option<u64> {
    let i = s.rfind(key)? + key.len();
    s[i..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

async fn uclient(
    srv: &TestServer,
    peer: SocketAddr,
    extra: &[&str],
    port: u16,
    secret: &str,
    clients: u64,
    messages: u64,
) -> Outcome {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "-m",
            &clients.to_string(),
            "-n",
            &messages.to_string(),
            "-l",
            "500",
            "-c",
            "-X",
            "-g",
            "-e",
            "127.0.0.1",
            "-r",
            &peer.port().to_string(),
            "-u",
            "loadtest",
            "-W",
            secret,
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ]
        .map(String::from),
    );
    let child = Command::new(tool("turnutils_uclient"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn turnutils_uclient");
    let out = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
        .await
        .expect("turnutils_uclient finished in time")
        .expect("turnutils_uclient output");
    let _ = srv;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::process::ExitStatusExt;
    Outcome {
        success: out.status.success(),
        status: out.status.to_string(),
        crashed: out.status.signal().is_some(),
        sent: number_after(&output, "tot_send_msgs=").unwrap_or(0),
        received: number_after(&output, "tot_recv_msgs=").unwrap_or(0),
        lost: number_after(&output, "Total lost packets"),
        output,
    }
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

async fn full_run(transport: &str, send_indications: bool) {
    let _serial = SERIAL.lock().await;
    let srv = start_server(|c| c.allow_loopback_peers = true).await;
    let (mut peer_proc, peer) = start_peer().await;
    let mut extra = match transport {
        "udp" => vec![],
        "tcp" => vec!["-t"],
        _ => vec!["-S", "-t"],
    };
    if send_indications {
        extra.push("-s");
    }
    let port = match transport {
        "udp" => srv.udp().port(),
        "tcp" => srv.tcp().port(),
        _ => srv.tls().port(),
    };
    let mut o = uclient(&srv, peer, &extra, port, SECRET, CLIENTS, MESSAGES).await;
    let what = format!("{transport} send_indications={send_indications}");
    // Two ways the tool can end a run early that are not the server's fault. The server is
    // still checked: it must then serve a second run in full.
    // - turnutils_uclient crashed (seen once in a full `make test`, with no output to show why;
    //   5 of 5 reruns passed).
    // - Each client binds a random channel number (0x4000-0x7FFF) to the peer's port + 1, then
    //   a fresh random one to the peer; when the second equals the first (about 1 run in 330
    //   with 50 clients) the server must answer 400 (RFC 8656 §11), and the tool gives up. The
    //   server counts exactly these refusals, so only a counted conflict earns a second run.
    let mut conflicts = srv.metrics.channel_conflicts.get();
    let collided = !o.success
        && o.output.contains("channel bind: error 400")
        && conflicts > 0
        && !send_indications;
    if o.crashed || collided {
        eprintln!(
            "{what}: turnutils_uclient ended early ({}, {conflicts} channel conflicts); \
             running it again",
            o.status
        );
        o = uclient(&srv, peer, &extra, port, SECRET, CLIENTS, MESSAGES).await;
        conflicts = srv.metrics.channel_conflicts.get() - conflicts;
    }
    let _ = peer_proc.kill().await;
    assert!(
        o.success,
        "{what}: uclient failed ({}):\n{}",
        o.status,
        tail(&o.output)
    );
    assert_eq!(o.sent, CLIENTS * MESSAGES, "{what}:\n{}", tail(&o.output));
    assert_eq!(
        o.received,
        CLIENTS * MESSAGES,
        "{what}: not every message came back:\n{}",
        tail(&o.output)
    );
    assert_eq!(o.lost, Some(0), "{what}:\n{}", tail(&o.output));
    // Refreshing a binding (same number, same peer), as every client does, is no conflict.
    assert_eq!(conflicts, 0, "{what}: a complete run saw channel conflicts");
    assert!(srv.metrics.relayed_packets("client_to_peer") >= CLIENTS * MESSAGES);
    assert!(srv.metrics.relayed_packets("peer_to_client") >= CLIENTS * MESSAGES);
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_udp_channels() {
    full_run("udp", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_udp_send_indications() {
    full_run("udp", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_tcp_channels() {
    full_run("tcp", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_tcp_send_indications() {
    full_run("tcp", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_tls_channels() {
    full_run("tls", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_tls_send_indications() {
    full_run("tls", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_wrong_secret_refused() {
    let _serial = SERIAL.lock().await;
    let srv = start_server(|c| c.allow_loopback_peers = true).await;
    let (mut peer_proc, peer) = start_peer().await;
    let port = srv.udp().port();
    let o = uclient(&srv, peer, &[], port, "wrong-secret", 1, 5).await;
    let _ = peer_proc.kill().await;
    assert!(!o.success, "a wrong secret must fail:\n{}", tail(&o.output));
    assert_eq!(o.received, 0);
    assert_eq!(srv.handle.allocation_count(), 0);
    assert!(srv.metrics.unauthorized.get() >= 2, "401s counted");
    srv.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_loopback_peer_refused_by_default() {
    let _serial = SERIAL.lock().await;
    let srv = start_server(|_| {}).await;
    let (mut peer_proc, peer) = start_peer().await;
    let port = srv.udp().port();
    let o = uclient(&srv, peer, &[], port, SECRET, 1, 5).await;
    let _ = peer_proc.kill().await;
    assert!(
        !o.success,
        "relaying to loopback must be refused by default:\n{}",
        tail(&o.output)
    );
    assert!(o.output.contains("403"), "{}", tail(&o.output));
    assert!(srv.metrics.policy_denials_total() >= 1);
    srv.handle.shutdown().await;
}
