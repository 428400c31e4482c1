//! Who may do what, and the service's hygiene: token grants and refusals (keys, expiry, grants,
//! sources, hidden observers), the room admin API and its OpenAPI description, the admin CLI,
//! rate limits, graceful shutdown and TLS with certificate reload.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use moien_protocol::{
    ClientMessage, LeaveReason, PublishTrack, ServerMessage, TrackKind, TrackSource,
};
use moien_signaling::auth::AccessGrants;
use tokio_tungstenite::tungstenite::Message;

type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

async fn connect(
    node: &moien::Node,
) -> Ws<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(ws_url(node))
        .await
        .unwrap()
        .0
}

async fn send<S>(ws: &mut Ws<S>, m: &ClientMessage)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::Text(serde_json::to_string(m).unwrap().into()))
        .await
        .unwrap();
}

/// The next protocol message, or the close code.
async fn recv<S>(ws: &mut Ws<S>) -> Result<ServerMessage, Option<u16>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(f)))) => return Err(f.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return Err(None),
            Err(_) => panic!("no message from the server within 10 s"),
        }
    }
}

/// Waits for the first message `f` picks, skipping the rest.
async fn wait_for<S, T>(
    ws: &mut Ws<S>,
    what: &str,
    mut f: impl FnMut(&ServerMessage) -> Option<T>,
) -> T
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match recv(ws).await {
            Ok(m) => {
                if let Some(t) = f(&m) {
                    return t;
                }
            }
            Err(c) => panic!("closed ({c:?}) while waiting for {what}"),
        }
    }
}

fn join_msg(token: &str) -> ClientMessage {
    ClientMessage::Join {
        version: 1,
        token: token.into(),
        room: None,
    }
}

/// Joins with `token` and expects `error {code}` then a close.
async fn refused(node: &moien::Node, token: &str, code: &str) {
    let mut ws = connect(node).await;
    send(&mut ws, &join_msg(token)).await;
    match recv(&mut ws).await {
        Ok(ServerMessage::Error {
            code: c, status, ..
        }) => {
            assert_eq!(c.as_str(), code);
            assert_eq!(status, c.status());
        }
        other => panic!("expected {code}, got {other:?}"),
    }
    assert!(recv(&mut ws).await.is_err(), "the socket closes");
}

/// Joins and returns the socket after `joined`.
async fn joined(
    node: &moien::Node,
    token: &str,
) -> (
    Ws<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
) {
    let mut ws = connect(node).await;
    send(&mut ws, &join_msg(token)).await;
    let sid = wait_for(&mut ws, "joined", |m| match m {
        ServerMessage::Joined { participant, .. } => Some(participant.sid.clone()),
        ServerMessage::Error { code, .. } => panic!("join refused: {code:?}"),
        _ => None,
    })
    .await;
    (ws, sid)
}

/// A publish offer with one audio and one video m-line, as a browser would send it.
fn offer(audio: bool, video: bool) -> (String, Vec<PublishTrack>) {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::RtcConfig::new().build(Instant::now());
    let mut api = rtc.sdp_api();
    let mut tracks = Vec::new();
    if audio {
        let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        tracks.push((mid, TrackKind::Audio));
    }
    if video {
        let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        tracks.push((mid, TrackKind::Video));
    }
    let (offer, _) = api.apply().unwrap();
    let tracks = tracks
        .into_iter()
        .map(|(mid, kind)| PublishTrack {
            mid: mid.to_string(),
            kind,
            source: None,
            muted: false,
        })
        .collect();
    (offer.to_sdp_string(), tracks)
}

fn grants(publish: bool, subscribe: bool) -> AccessGrants {
    AccessGrants {
        publish,
        subscribe,
        ..AccessGrants::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_grants_and_refusals() {
    let node = start_node_with(|c| {
        c.auth.keys.insert("key-2025".into(), "secret-2025".into());
    })
    .await;
    let room = "grants";

    // Keys: the current key and the [auth] secret are accepted; a retired key is not, nor a
    // known key id with another key's signature.
    let (ws, _) = joined(
        &node,
        &access_token("secret-2025", "key-2025", room, "k", grants(true, true)),
    )
    .await;
    drop(ws);
    refused(
        &node,
        &access_token("secret-2024", "key-2024", room, "r", grants(true, true)),
        "unauthorized",
    )
    .await;
    refused(
        &node,
        &access_token("secret-2024", "key-2025", room, "r", grants(true, true)),
        "unauthorized",
    )
    .await;
    // Expired, not yet valid.
    refused(
        &node,
        &token_with(room, "old", true, true, -5),
        "unauthorized",
    )
    .await;
    let now = moien_signaling::auth::now_unix();
    let early = moien_signaling::auth::mint(
        SECRET,
        &moien_signaling::auth::AccessClaims {
            iss: String::new(),
            sub: "early".into(),
            room: room.into(),
            exp: now + 600,
            nbf: Some(now + 300),
            iat: Some(now),
            name: String::new(),
            metadata: String::new(),
            grants: grants(true, true),
        },
    )
    .unwrap();
    refused(&node, &early, "unauthorized").await;
    // No join grant, a recorder token.
    let no_join = AccessGrants {
        join: false,
        ..grants(true, true)
    };
    refused(
        &node,
        &access_token(SECRET, "", room, "nj", no_join),
        "forbidden",
    )
    .await;
    let recorder = AccessGrants {
        recorder: true,
        ..grants(false, true)
    };
    refused(
        &node,
        &access_token(SECRET, "", room, "rec", recorder),
        "unauthorized",
    )
    .await;

    // Without the publish grant: publish_offer is refused.
    let (mut viewer, _) = joined(
        &node,
        &access_token(SECRET, "", room, "viewer", grants(false, true)),
    )
    .await;
    let (sdp, tracks) = offer(true, true);
    send(
        &mut viewer,
        &ClientMessage::PublishOffer {
            sdp: sdp.clone(),
            tracks: tracks.clone(),
        },
    )
    .await;
    let code = wait_for(&mut viewer, "a refusal", |m| match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code.as_str(), "forbidden");

    // Allowed sources: microphone only; a camera track is refused, the microphone alone is not.
    let mic_only = AccessGrants {
        sources: vec![TrackSource::Microphone],
        ..grants(true, true)
    };
    let (mut mic, _) = joined(&node, &access_token(SECRET, "", room, "mic", mic_only)).await;
    send(&mut mic, &ClientMessage::PublishOffer { sdp, tracks }).await;
    let code = wait_for(&mut mic, "a refusal", |m| match m {
        ServerMessage::Error { code, .. } => Some(*code),
        ServerMessage::PublishAnswer { .. } => panic!("a camera track was accepted"),
        _ => None,
    })
    .await;
    assert_eq!(code.as_str(), "forbidden");
    let (sdp, tracks) = offer(true, false);
    send(&mut mic, &ClientMessage::PublishOffer { sdp, tracks }).await;
    wait_for(&mut mic, "the answer", |m| match m {
        ServerMessage::PublishAnswer { tracks, .. } => {
            assert_eq!(tracks.len(), 1);
            Some(())
        }
        ServerMessage::Error { code, message, .. } => panic!("{code:?}: {message}"),
        _ => None,
    })
    .await;

    // A hidden observer is never announced; the participant after it is.
    let hidden = AccessGrants {
        hidden: true,
        ..grants(false, true)
    };
    let (_observer, observer_sid) =
        joined(&node, &access_token(SECRET, "", room, "observer", hidden)).await;
    let (_late, late_sid) = joined(&node, &token(room, "late", true, true)).await;
    wait_for(&mut viewer, "the late participant", |m| match m {
        ServerMessage::ParticipantJoined { participant } => {
            assert_ne!(participant.sid, observer_sid, "the observer was announced");
            (participant.sid == late_sid).then_some(())
        }
        _ => None,
    })
    .await;
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/rooms/{room}/participants",
            http_url(&node)
        ))
        .bearer_auth(admin_token(room))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"late") && !ids.contains(&"observer"),
        "{ids:?}"
    );
    node.shutdown().await;
}

/// Every route of the OpenAPI description, with its method and a path with parameters filled in.
fn described_routes(spec: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "x" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            out.push((method.to_uppercase(), concrete));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_crud_auth_and_openapi() {
    let node = start_node().await;
    let base = format!("{}/api/v1", http_url(&node));
    let http = reqwest::Client::new();
    let admin = admin_token("*");

    // The description: OpenAPI 3, every route of the API, each protected.
    let resp = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spec: serde_json::Value = resp.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let routes = described_routes(&spec);
    for expected in [
        ("POST", "/api/v1/rooms"),
        ("GET", "/api/v1/rooms"),
        ("GET", "/api/v1/rooms/x"),
        ("DELETE", "/api/v1/rooms/x"),
        ("GET", "/api/v1/rooms/x/participants"),
        ("GET", "/api/v1/rooms/x/participants/x"),
        ("DELETE", "/api/v1/rooms/x/participants/x"),
        ("PATCH", "/api/v1/rooms/x/participants/x"),
        ("POST", "/api/v1/rooms/x/participants/x/tracks/x/mute"),
        ("POST", "/api/v1/rooms/x/data"),
    ] {
        assert!(
            routes
                .iter()
                .any(|(m, p)| m == expected.0 && p == expected.1),
            "{expected:?} is not described"
        );
    }
    for (method, path) in &routes {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = http
            .request(m, format!("{}{path}", http_url(&node)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without a token");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
    }

    // A participant's token may not administer (403); a room admin token only its room.
    let participant = token("crud", "alice", true, true);
    let r = http
        .get(format!("{base}/rooms"))
        .bearer_auth(&participant)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "forbidden"
    );
    let scoped = admin_token("crud");
    let r = http
        .get(format!("{base}/rooms"))
        .bearer_auth(&scoped)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "listing every room needs the every-room token"
    );
    let r = http
        .get(format!("{base}/rooms/other"))
        .bearer_auth(&scoped)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .get(format!("{base}/rooms/crud"))
        .bearer_auth(&scoped)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nobody created it yet");

    // Create (201), again (200), list, get; invalid bodies are 400 with a code.
    let body = serde_json::json!({"name": "crud", "max_participants": 1, "metadata": "call 42"});
    let r = http
        .post(format!("{base}/rooms"))
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let room: serde_json::Value = r.json().await.unwrap();
    assert_eq!(room["metadata"], "call 42");
    assert!(room["sid"].as_str().unwrap().starts_with("RM_"));
    let r = http
        .post(format!("{base}/rooms"))
        .bearer_auth(&scoped)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for bad in [
        "{",
        r#"{"name": ""}"#,
        r#"{"name": 5}"#,
        r#"{"name":"a","empty_timeout":-1}"#,
    ] {
        let r = http
            .post(format!("{base}/rooms"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["code"],
            "bad_request"
        );
    }
    let list: serde_json::Value = http
        .get(format!("{base}/rooms"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.as_array().unwrap().iter().any(|r| r["name"] == "crud"));

    // A participant joins; the cap of 1 refuses a second one.
    let mut alice = join_client(&node, "crud", "alice").await;
    alice
        .wait_until("alice publishes and her data channel is open", MEDIA_TIMEOUT, |r| {
            r.messages.iter().any(|m| matches!(m, ServerMessage::PublishAnswer { tracks, .. } if tracks.len() == 2))
                && r.data_channels.iter().any(|l| l == "moien")
        })
        .await
        .unwrap();
    let refused = moien_client::Client::connect(moien_client::ClientConfig::new(
        ws_url(&node),
        token("crud", "bob", true, true),
    ))
    .await;
    match refused {
        Err(moien_client::ClientError::Refused { code, .. }) => assert_eq!(code, "room_full"),
        other => panic!("a second participant got in: {:?}", other.is_ok()),
    }
    let p: serde_json::Value = http
        .get(format!("{base}/rooms/crud/participants/alice"))
        .bearer_auth(&scoped)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["identity"], "alice");
    let audio_sid = p["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "audio")
        .unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_string();

    // Update metadata and permissions; mute a track; send data.
    let r = http
        .patch(format!("{base}/rooms/crud/participants/alice"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"metadata": "moderator", "permissions": {"publish": true, "subscribe": true, "publish_data": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["metadata"],
        "moderator"
    );
    let r = http
        .post(format!(
            "{base}/rooms/crud/participants/alice/tracks/{audio_sid}/mute"
        ))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"muted": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .post(format!(
            "{base}/rooms/crud/participants/alice/tracks/TR_nope/mute"
        ))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"muted": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(format!("{base}/rooms/crud/data"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"topic": "system", "data": "the call is recorded by nobody"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["recipients"],
        1
    );
    let big = "x".repeat(20_000);
    let r = http
        .post(format!("{base}/rooms/crud/data"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"data": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    alice
        .wait_until("alice is told", MEDIA_TIMEOUT, |r| {
            let updated = r.messages.iter().any(|m| matches!(m, ServerMessage::ParticipantUpdated { participant, permissions: Some(p) } if participant.metadata == "moderator" && !p.publish_data));
            let muted = r.messages.iter().any(|m| matches!(m, ServerMessage::TrackMuted { track_sid, muted: true, .. } if *track_sid == audio_sid));
            let data = r.data_received.iter().any(|(d, _)| d.topic == "system");
            updated && muted && data
        })
        .await
        .unwrap();

    // Remove her; delete the room (with someone in it): both are told why.
    let r = http
        .delete(format!("{base}/rooms/crud/participants/alice"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    alice
        .wait_until("alice removed", MEDIA_TIMEOUT, |r| {
            r.messages.iter().any(|m| {
                matches!(
                    m,
                    ServerMessage::Leave {
                        reason: LeaveReason::RemovedByAdmin
                    }
                )
            })
        })
        .await
        .unwrap();
    let r = http
        .delete(format!("{base}/rooms/crud/participants/alice"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let mut carol = join_client(&node, "crud", "carol").await;
    let r = http
        .delete(format!("{base}/rooms/crud"))
        .bearer_auth(&scoped)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    carol
        .wait_until("carol's call ends", MEDIA_TIMEOUT, |r| {
            r.messages.iter().any(|m| {
                matches!(
                    m,
                    ServerMessage::Leave {
                        reason: LeaveReason::RoomClosed
                    }
                )
            })
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .get(format!("{base}/rooms/crud"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the deleted room is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.shutdown().await;
}

async fn join_client(node: &moien::Node, room: &str, identity: &str) -> moien_client::Client {
    common::join(node, room, identity).await
}

/// Runs the `moien` binary with `args` and returns its stdout (asserting success).
async fn cli(args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_moien"))
        .args(args)
        .env_remove("MOIEN_SECRET")
        .env_remove("MOIEN_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "moien {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_lists_removes_and_deletes() {
    let node = start_node_with(|c| {
        c.auth.keys.insert("ops".into(), "ops-secret".into());
    })
    .await;
    let url = http_url(&node);
    let mut alice = join_client(&node, "cli-room", "alice").await;
    let listed = cli(&["rooms", "list", "--url", &url, "--secret", SECRET, "--json"]).await;
    let rooms: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert!(
        rooms
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "cli-room" && r["num_participants"] == 1),
        "{listed}"
    );
    // With a named key, and as a table.
    let table = cli(&[
        "rooms",
        "list",
        "--url",
        &url,
        "--key",
        "ops",
        "--secret",
        "ops-secret",
    ])
    .await;
    assert!(table.lines().any(|l| l.starts_with("cli-room")), "{table}");
    cli(&[
        "participants",
        "remove",
        "cli-room",
        "alice",
        "--url",
        &url,
        "--secret",
        SECRET,
    ])
    .await;
    alice
        .wait_until("alice removed", MEDIA_TIMEOUT, |r| {
            r.messages.iter().any(|m| {
                matches!(
                    m,
                    ServerMessage::Leave {
                        reason: LeaveReason::RemovedByAdmin
                    }
                )
            })
        })
        .await
        .unwrap();
    let mut bob = join_client(&node, "cli-room", "bob").await;
    cli(&[
        "rooms", "delete", "cli-room", "--url", &url, "--secret", SECRET,
    ])
    .await;
    bob.wait_until("bob's call ends", MEDIA_TIMEOUT, |r| {
        r.messages.iter().any(|m| {
            matches!(
                m,
                ServerMessage::Leave {
                    reason: LeaveReason::RoomClosed
                }
            )
        })
    })
    .await
    .unwrap();
    // A wrong secret is refused.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_moien"))
        .args(["rooms", "list", "--url", &url, "--secret", "wrong"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    // `moien token` mints every grant.
    let t = cli(&[
        "token",
        "--room",
        "r",
        "--identity",
        "i",
        "--publish",
        "--sources",
        "camera,microphone",
        "--hidden",
        "--admin",
        "--publish-data",
        "--not-before",
        "1m",
        "--secret",
        SECRET,
    ])
    .await;
    let payload = t.trim().split('.').nth(1).unwrap();
    let claims = decode_segment(payload);
    assert_eq!(
        claims["grants"]["sources"],
        serde_json::json!(["camera", "microphone"])
    );
    assert_eq!(claims["grants"]["hidden"], true);
    assert_eq!(claims["grants"]["room_admin"], true);
    assert_eq!(claims["grants"]["publish_data"], true);
    assert!(claims["nbf"].as_u64().unwrap() > moien_signaling::auth::now_unix());
    node.shutdown().await;
}

/// Decodes a base64url JWT segment.
fn decode_segment(s: &str) -> serde_json::Value {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = A.iter().position(|&a| a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    serde_json::from_slice(&out).unwrap()
}

/// Opens a WebSocket to the node from `source` (another loopback address).
async fn connect_from(
    node: &moien::Node,
    source: [u8; 4],
) -> Result<Ws<tokio::net::TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let tcp = socket.connect(node.http).await.unwrap();
    tokio_tungstenite::client_async(ws_url(node), tcp)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_rate_limited_and_the_service_survives() {
    let node = start_node_with(|c| {
        c.limits.join_rate_per_ip = 2.0;
        c.limits.join_burst_per_ip = 5;
        c.limits.message_rate = 10.0;
        c.limits.message_burst = 20;
        c.limits.api_rate_per_ip = 2.0;
        c.limits.api_burst_per_ip = 5;
    })
    .await;
    // One address floods connection attempts: after the burst, 429.
    let mut limited = 0;
    for _ in 0..30 {
        match connect_from(&node, [127, 0, 0, 2]).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 429);
                limited += 1;
            }
            Err(e) => panic!("{e}"),
            Ok(ws) => drop(ws),
        }
    }
    assert!(limited >= 20, "only {limited} of 30 were limited");
    // Another address joins normally meanwhile.
    let mut other = connect_from(&node, [127, 0, 0, 3]).await.unwrap();
    send(&mut other, &join_msg(&token("flood", "calm", false, true))).await;
    wait_for(&mut other, "joined", |m| {
        matches!(m, ServerMessage::Joined { .. }).then_some(())
    })
    .await;

    // One participant floods messages: refused with rate_limited, not disconnected.
    for i in 0..100 {
        send(&mut other, &ClientMessage::Ping { timestamp: i }).await;
    }
    wait_for(&mut other, "rate_limited", |m| match m {
        ServerMessage::Error { code, status, .. } if code.as_str() == "rate_limited" => {
            assert_eq!(*status, 429);
            Some(())
        }
        _ => None,
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut other, &ClientMessage::Ping { timestamp: 4242 }).await;
    wait_for(&mut other, "the pong after the flood", |m| {
        matches!(m, ServerMessage::Pong { timestamp: 4242 }).then_some(())
    })
    .await;

    // The admin API has its own per-address limit.
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = http
            .get(format!("{}/api/v1/rooms", http_url(&node)))
            .bearer_auth(admin_token("*"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );
    node.shutdown().await;
}

/// An admin API request as a proxy would forward it for the client `xff` names.
async fn api_status_via(node: &moien::Node, xff: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/api/v1/rooms", http_url(node)))
        .bearer_auth(admin_token("*"))
        .header("x-forwarded-for", xff)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Opens `/rtc` as a proxy would for the client `xff` names: the HTTP status of the upgrade.
async fn rtc_status_via(node: &moien::Node, xff: &str) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = ws_url(node).into_client_request().unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((_ws, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_limits_apply_per_forwarded_client() {
    // Slow refill: a drained bucket stays drained for the whole test.
    let limits = |c: &mut moien::config::Config| {
        c.limits.api_rate_per_ip = 0.1;
        c.limits.api_burst_per_ip = 3;
        c.limits.join_rate_per_ip = 0.1;
        c.limits.join_burst_per_ip = 3;
    };
    let node = start_node_with(|c| {
        limits(c);
        c.signaling.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    // One client behind the proxy floods the admin API: it alone is limited.
    let mut flood = Vec::new();
    for _ in 0..6 {
        flood.push(api_status_via(&node, "198.51.100.7").await);
    }
    assert_eq!(flood, [200, 200, 200, 429, 429, 429]);
    assert_eq!(api_status_via(&node, "198.51.100.8").await, 200);
    // What a client writes left of the proxy's entry buys no fresh bucket.
    assert_eq!(
        api_status_via(&node, "203.0.113.1, 198.51.100.7").await,
        429
    );
    // The address the proxy appended counts, whatever the client claimed before it.
    assert_eq!(
        api_status_via(&node, "198.51.100.7, 198.51.100.9").await,
        200
    );
    // A chain of trusted proxies: the nearest untrusted hop is the client.
    assert_eq!(
        api_status_via(&node, "198.51.100.7, 127.0.0.5, 127.0.0.9").await,
        429
    );
    // The same for session starts on /rtc.
    let mut starts = Vec::new();
    for _ in 0..5 {
        starts.push(rtc_status_via(&node, "198.51.100.30").await);
    }
    assert_eq!(starts, [101, 101, 101, 429, 429]);
    assert_eq!(rtc_status_via(&node, "198.51.100.31").await, 101);
    node.shutdown().await;

    // Without trusted proxies (the default) the header is ignored: anyone could forge it.
    let node = start_node_with(limits).await;
    let mut forged = Vec::new();
    for i in 0..5 {
        forged.push(api_status_via(&node, &format!("198.51.100.{i}")).await);
    }
    assert_eq!(forged, [200, 200, 200, 429, 429]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_clients_to_reconnect_elsewhere() {
    let node = start_node().await;
    let (mut a, _) = joined(&node, &token("bye", "a", true, true)).await;
    let (mut b, _) = joined(&node, &token("bye", "b", false, true)).await;
    let stop = tokio::spawn(node.shutdown());
    for ws in [&mut a, &mut b] {
        let close = loop {
            match recv(ws).await {
                Ok(ServerMessage::Leave { reason }) => {
                    assert_eq!(reason, LeaveReason::ServerShutdown);
                }
                Ok(_) => continue,
                Err(code) => break code,
            }
        };
        assert_eq!(close, Some(1001), "close code going away");
    }
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .unwrap()
        .unwrap();
}

/// A self-signed certificate for 127.0.0.1: (certificate PEM, key PEM, certificate DER).
fn certificate() -> (String, String, Vec<u8>) {
    let c =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    (
        c.cert.pem(),
        c.signing_key.serialize_pem(),
        c.cert.der().to_vec(),
    )
}

/// A TLS connection to `addr` trusting only `der`; returns the certificate the server showed.
async fn tls_connect(
    addr: SocketAddr,
    der: &[u8],
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    ),
    String,
> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
        .map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let shown = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok((tls, shown))
}

/// A node serving HTTPS/WSS with a fresh self-signed certificate (`cert.pem`, `key.pem` in the
/// returned directory, re-read every 200 ms); also returns the certificate as PEM and DER.
async fn start_tls_node(tag: &str) -> (moien::Node, std::path::PathBuf, (String, Vec<u8>)) {
    let dir = std::env::temp_dir().join(format!("moien-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (pem, key, der) = certificate();
    std::fs::write(&cert_path, &pem).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let node = start_node_with(|c| {
        c.signaling.tls_cert_path = Some(cert_path);
        c.signaling.tls_key_path = Some(key_path);
        c.signaling.tls_reload_interval = Duration::from_millis(200);
    })
    .await;
    assert!(node.https);
    (node, dir, (pem, der))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_calls_over_wss_trusting_a_private_ca() {
    let (node, dir, (pem, _)) = start_tls_node("probe").await;
    let mut cfg = moien::probe::ProbeConfig::new(format!("https://{}", node.http), SECRET);
    assert_eq!(cfg.ws_url().unwrap(), format!("wss://{}/rtc", node.http));

    // The system's roots do not know the private CA: refused, with a TLS reason.
    let refused = moien::probe::call_once(&cfg).await.expect_err("unknown CA");
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "{refused}"
    );
    // Trusting it (what `moien probe --ca-file` does), a whole call runs over WSS.
    cfg.tls = Some(moien_client::tls_config(Some(pem.as_bytes())).unwrap());
    let call = moien::probe::call_once(&cfg).await.expect("call over wss");
    assert_eq!(call.loss_ratio, 0.0, "{call:?}");
    assert!(call.snr_db > 20.0, "{call:?}");
    assert!(moien_client::tls_config(Some(b"not a certificate")).is_err());
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_with_certificate_reload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (node, dir, (_, der1)) = start_tls_node("reload").await;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));

    // HTTPS.
    let (mut tls, shown) = tls_connect(node.http, &der1).await.unwrap();
    assert_eq!(shown, der1);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");

    // WSS: a join over TLS.
    let (tls, _) = tls_connect(node.http, &der1).await.unwrap();
    let url = format!("wss://127.0.0.1:{}/rtc", node.http.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tls)
        .await
        .unwrap();
    send(&mut ws, &join_msg(&token("tls", "alice", false, true))).await;
    wait_for(&mut ws, "joined over WSS", |m| {
        matches!(m, ServerMessage::Joined { .. }).then_some(())
    })
    .await;

    // New certificate files: new connections see them, without a restart; the open socket stays.
    let (pem2, key2, der2) = certificate();
    std::fs::write(&key_path, &key2).unwrap();
    std::fs::write(&cert_path, &pem2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((_, shown)) = tls_connect(node.http, &der2).await {
            assert_eq!(shown, der2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tls_connect(node.http, &der1).await.is_err(),
        "the old certificate is gone"
    );
    send(&mut ws, &ClientMessage::Ping { timestamp: 7 }).await;
    wait_for(&mut ws, "pong on the old socket", |m| {
        matches!(m, ServerMessage::Pong { timestamp: 7 }).then_some(())
    })
    .await;
    drop(ws);
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_only_on_loopback_unless_allowed() {
    let mut config = moien::Config::default();
    config.auth.secret = SECRET.into();
    config.signaling.listen = "0.0.0.0:0".parse().unwrap();
    config.media.port = 0;
    config.media.workers = 1;
    config.turn.listen_udp = vec![];
    config.turn.listen_tcp = vec![];
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    let err = match moien::Node::start(config.clone()).await {
        Ok(_) => panic!("plain HTTP on every address was served"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("refusing plain HTTP"), "{err}");
    config.signaling.allow_insecure_http = true;
    let node = moien::Node::start(config).await.unwrap();
    node.shutdown().await;
}
