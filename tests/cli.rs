//! The command-line contract: `moien token` mints what the server accepts, and `moien serve`
//! reads its config file and `MOIEN_*` overrides and prints where it listens.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use moien_signaling::auth;

mod common;
use common::DEV_ON_FREE_PORTS;

const BIN: &str = env!("CARGO_BIN_EXE_moien");

#[test]
fn token_is_accepted_with_its_grants() {
    let out = Command::new(BIN)
        .args([
            "token",
            "--room",
            "r1",
            "--identity",
            "alice",
            "--name",
            "Alice",
        ])
        .args(["--publish", "--ttl", "2h", "--secret", "s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = auth::verify("s3cret", token.trim()).unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.room, "r1");
    assert_eq!(claims.name, "Alice");
    assert!(claims.grants.publish && !claims.grants.subscribe);
    let ttl = claims.exp - auth::now_unix();
    assert!((7000..=7200).contains(&ttl), "ttl {ttl}");
    assert!(auth::verify("other", token.trim()).is_err());
}

#[test]
fn token_defaults_to_the_dev_secret_and_env_overrides_it() {
    let out = Command::new(BIN)
        .args(["token", "--room", "r", "--identity", "i"])
        .env_remove("MOIEN_SECRET")
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(auth::verify("moien-dev-secret", token.trim()).is_ok());
    let out = Command::new(BIN)
        .args(["token", "--room", "r", "--identity", "i"])
        .env("MOIEN_SECRET", "from-env")
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(auth::verify("from-env", token.trim()).is_ok());
}

/// A server process that is killed however the test ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `moien serve` with the given args and env, returns the banner lines up to the media line.
fn serve_banner(args: &[&str], env: &[(&str, &str)]) -> (Server, Vec<String>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd.env_remove("MOIEN_SECRET");
    // Tests run side by side: TURN on free ports.
    cmd.env("MOIEN_TURN_LISTEN_UDP", "127.0.0.1:0");
    cmd.env("MOIEN_TURN_LISTEN_TCP", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Server(cmd.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.trim_start().starts_with("media");
        lines.push(line);
        if done {
            break;
        }
    }
    (child, lines)
}

#[test]
fn serve_reads_config_file_env_and_flags() {
    let dir = std::env::temp_dir().join(format!("moien-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("moien.toml");
    std::fs::write(
        &path,
        "[auth]\nsecret = \"file-secret\"\n[signaling]\nlisten = \"127.0.0.1:0\"\n[media]\nport = 0\nworkers = 3\n",
    )
    .unwrap();
    let (_server, lines) = serve_banner(
        &["--config", path.to_str().unwrap()],
        &[("MOIEN_MEDIA_WORKERS", "2")],
    );
    let media = lines
        .iter()
        .find(|l| l.trim_start().starts_with("media"))
        .unwrap();
    // The environment (2 workers) beat the file (3).
    assert_eq!(media.matches("udp 127.0.0.1:").count(), 2, "{media}");
    assert!(lines.iter().any(|l| l.contains("http://127.0.0.1:")));
    // Not dev mode: the secret is not printed.
    assert!(!lines.iter().any(|l| l.contains("file-secret")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_to_start_without_a_secret_outside_dev() {
    let out = Command::new(BIN)
        .args(["serve", "--http", "127.0.0.1:0", "--media-port", "0"])
        .env_remove("MOIEN_SECRET")
        .env_remove("MOIEN_AUTH_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secret"), "{err}");
}

#[test]
fn serve_refuses_a_wildcard_media_bind_without_public_ips() {
    let out = Command::new(BIN)
        .args(DEV_ON_FREE_PORTS)
        .args(["--media-bind", "0.0.0.0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set [media] public_ips"), "{err}");
}

#[test]
fn serve_rejects_unknown_options() {
    let out = Command::new(BIN)
        .args(DEV_ON_FREE_PORTS)
        .env("MOIEN_MEDIA_PROT", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MOIEN_MEDIA_PROT"));
}

#[test]
fn dev_mode_prints_the_secret_and_serves_the_dev_token() {
    let (_server, lines) = serve_banner(
        &["--dev", "--http", "127.0.0.1:0", "--media-port", "0"],
        &[],
    );
    assert!(
        lines.iter().any(|l| l.contains("moien-dev-secret")),
        "{lines:?}"
    );
    let url = lines
        .iter()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .unwrap()
        .to_string();
    let body = reqwest::blocking_get(&format!("{url}/dev/token?room=r&identity=i"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let claims = auth::verify("moien-dev-secret", v["token"].as_str().unwrap()).unwrap();
    assert!(claims.grants.publish && claims.grants.subscribe);
}

mod reqwest {
    /// A blocking GET without pulling in reqwest's blocking feature.
    pub fn blocking_get(url: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { ::reqwest::get(url).await.unwrap().text().await.unwrap() })
    }
}

#[test]
fn serve_role_turn_runs_turn_alone() {
    let (_server, lines) = serve_banner(
        &["--role", "turn", "--secret", "s3cret", "--media-port", "0"],
        &[],
    );
    assert!(
        !lines.iter().any(|l| l.trim_start().starts_with("http ")),
        "a TURN-only node serves no signaling: {lines:?}"
    );
    assert!(
        lines.last().is_some_and(|l| l.contains("none")),
        "{lines:?}"
    );
    let turn = lines
        .iter()
        .find(|l| l.trim_start().starts_with("turn"))
        .expect("a turn line");
    // Ask the UDP listener for our reflexive address (STUN Binding, RFC 8489).
    let addr = turn
        .split_whitespace()
        .skip_while(|w| *w != "udp")
        .nth(1)
        .unwrap()
        .trim_end_matches(',');
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(&[7u8; 12]);
    sock.send_to(&req, addr).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert!(n >= 20);
    assert_eq!(&buf[..2], &[0x01, 0x01], "a Binding success response");
    assert_eq!(&buf[8..20], &[7u8; 12], "same transaction id");
}

#[test]
fn a_turn_certificate_opens_turns_on_5349() {
    let dir = std::env::temp_dir().join(format!("moien-turns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    // A loopback address of its own, so 5349 is free whatever else runs.
    let (_server, lines) = serve_banner(
        &["--role", "turn", "--secret", "s3cret"],
        &[
            ("MOIEN_TURN_LISTEN_UDP", "127.0.0.77:0"),
            ("MOIEN_TURN_TLS_CERT_PATH", cert.to_str().unwrap()),
            ("MOIEN_TURN_TLS_KEY_PATH", key.to_str().unwrap()),
        ],
    );
    let turn = lines
        .iter()
        .find(|l| l.trim_start().starts_with("turn"))
        .expect("a turn line");
    assert!(turn.contains("tls 127.0.0.77:5349"), "{turn}");
    // Something accepts TCP there (the TLS handshake itself is covered by turnutils in turn/).
    std::net::TcpStream::connect("127.0.0.77:5349").expect("TURNS listener");
    let _ = std::fs::remove_dir_all(&dir);
}
