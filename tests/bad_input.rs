//! Bad input gets a clear error and the service survives: malformed messages and SDP, bad tokens,
//! oversized messages, garbage datagrams, and participants that vanish.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use moien_protocol::{ClientMessage, LeaveReason, ServerMessage, TrackKind};
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(node: &moien::Node) -> Ws {
    tokio_tungstenite::connect_async(ws_url(node))
        .await
        .unwrap()
        .0
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_string().into()))
        .await
        .unwrap();
}

/// The next protocol message, and the close code if the server closed instead.
async fn recv(ws: &mut Ws) -> Result<ServerMessage, Option<CloseCode>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(f)))) => return Err(f.map(|f| f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return Err(None),
            Err(_) => panic!("no message from the server within 10 s"),
        }
    }
}

/// The next error, skipping the room's ordinary traffic (offers, announcements).
async fn expect_error(ws: &mut Ws, code: &str, status: u16) {
    loop {
        match recv(ws).await {
            Ok(ServerMessage::Error {
                code: c, status: s, ..
            }) => {
                assert_eq!(c.as_str(), code);
                assert_eq!(s, status);
                return;
            }
            Ok(_) => continue,
            Err(close) => panic!("expected error {code}, got close {close:?}"),
        }
    }
}

async fn expect_close(ws: &mut Ws, code: u16) {
    match recv(ws).await {
        Err(Some(c)) => assert_eq!(u16::from(c), code),
        other => panic!("expected close {code}, got {other:?}"),
    }
}

fn join_msg(token: &str) -> String {
    serde_json::to_string(&ClientMessage::Join {
        version: 1,
        token: token.into(),
        room: None,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_auth_refusals() {
    let node = start_node().await;
    let cases: Vec<(String, &str, u16)> = vec![
        (join_msg(""), "unauthorized", 401),
        (join_msg("not.a.jwt"), "unauthorized", 401),
        (
            join_msg(&token_with("r", "a", true, true, -30)),
            "unauthorized",
            401,
        ),
        (
            join_msg(
                &moien_signaling::auth::mint(
                    "forged",
                    &moien_signaling::auth::verify(SECRET, &token("r", "a", true, true)).unwrap(),
                )
                .unwrap(),
            ),
            "unauthorized",
            401,
        ),
        (
            serde_json::to_string(&ClientMessage::Join {
                version: 1,
                token: token("room-a", "a", true, true),
                room: Some("room-b".into()),
            })
            .unwrap(),
            "forbidden",
            403,
        ),
        (
            serde_json::to_string(&ClientMessage::Join {
                version: 99,
                token: token("r", "a", true, true),
                room: None,
            })
            .unwrap(),
            "unsupported_version",
            426,
        ),
        (
            r#"{"type":"ping","timestamp":1}"#.into(),
            "invalid_state",
            409,
        ),
        ("{not json".into(), "bad_request", 400),
    ];
    for (msg, code, status) in cases {
        let mut s = ws(&node).await;
        send(&mut s, &msg).await;
        expect_error(&mut s, code, status).await;
        expect_close(&mut s, 1008).await;
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_and_sdp_keep_the_session_and_the_call() {
    let node = start_node().await;
    // A call in progress that must not notice anything.
    let mut a = join(&node, "busy", "alice").await;
    let b = join(&node, "busy", "bob").await;
    let bob = b.participant.sid.clone();
    a.wait_until("call running", MEDIA_TIMEOUT, |r| {
        r.track_of(&bob, TrackKind::Video)
            .is_some_and(|t| t.packets > 30)
    })
    .await
    .unwrap();

    let mut s = ws(&node).await;
    send(&mut s, &join_msg(&token("busy", "mallory", true, true))).await;
    assert!(matches!(
        recv(&mut s).await,
        Ok(ServerMessage::Joined { .. })
    ));
    // Malformed and empty SDP: invalid_sdp, session continues.
    for sdp in ["", "garbage", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"] {
        let m = serde_json::to_string(&ClientMessage::PublishOffer {
            sdp: sdp.into(),
            tracks: vec![],
        })
        .unwrap();
        send(&mut s, &m).await;
        expect_error(&mut s, "invalid_sdp", 400).await;
    }
    // A malformed answer to the outstanding subscribe offer.
    send(&mut s, r#"{"type":"subscribe_answer","sdp":"v=0"}"#).await;
    expect_error(&mut s, "invalid_sdp", 400).await;
    // Unknown type and bad JSON: bad_request; the session lives on.
    send(&mut s, r#"{"type":"launch","x":1}"#).await;
    expect_error(&mut s, "bad_request", 400).await;
    send(&mut s, "{{{").await;
    expect_error(&mut s, "bad_request", 400).await;
    send(
        &mut s,
        r#"{"type":"mute","track_sid":"TR_nope","muted":true}"#,
    )
    .await;
    expect_error(&mut s, "not_found", 404).await;
    send(&mut s, r#"{"type":"ping","timestamp":42}"#).await;
    loop {
        match recv(&mut s).await.unwrap() {
            ServerMessage::Pong { timestamp } => {
                assert_eq!(timestamp, 42);
                break;
            }
            _ => continue,
        }
    }

    // A message over 64 KiB closes with 1009.
    let big = format!(
        r#"{{"type":"publish_offer","sdp":"{}","tracks":[]}}"#,
        "a".repeat(65 * 1024)
    );
    send(&mut s, &big).await;
    loop {
        match recv(&mut s).await {
            Ok(ServerMessage::Error { code, .. }) if code.as_str() == "too_large" => continue,
            Ok(_) => continue,
            Err(code) => {
                assert_eq!(code.map(u16::from), Some(1009));
                break;
            }
        }
    }

    // The call went on throughout.
    let before = a.report(|r| r.track_of(&bob, TrackKind::Video).unwrap().packets);
    a.wait_until("call still running", MEDIA_TIMEOUT, |r| {
        r.track_of(&bob, TrackKind::Video).unwrap().packets > before + 30
    })
    .await
    .unwrap();
    a.report(|r| {
        for t in r.tracks_of(&bob) {
            assert_eq!(t.seq_discontinuities, 0);
            assert_eq!(t.corrupt_payloads, 0);
        }
    });
    a.leave().await.unwrap();
    b.leave().await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_datagrams_are_dropped_and_calls_continue() {
    let node = start_node().await;
    let mut a = join(&node, "udp", "alice").await;
    let b = join(&node, "udp", "bob").await;
    let bob = b.participant.sid.clone();
    a.wait_until("call running", MEDIA_TIMEOUT, |r| {
        r.track_of(&bob, TrackKind::Video)
            .is_some_and(|t| t.packets > 30)
            && r.track_of(&bob, TrackKind::Audio)
                .is_some_and(|t| t.packets > 30)
    })
    .await
    .unwrap();
    let before_video = a.report(|r| r.track_of(&bob, TrackKind::Video).unwrap().packets);

    let targets = node.media_addrs.clone();
    let sent = tokio::task::spawn_blocking(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let sockets: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut sent = 0;
        for i in 0..10_000 {
            let len = rng.gen_range(0..1400);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            // Make many look like STUN, DTLS and RTP so every demux branch is exercised.
            if let Some(b0) = buf.first_mut() {
                *b0 = match i % 4 {
                    0 => 0x00,
                    1 => 0x16,
                    2 => 0x80,
                    _ => *b0,
                };
            }
            if i % 4 == 0 && buf.len() >= 8 {
                buf[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            }
            let target = targets[i % targets.len()];
            if sockets[i % sockets.len()].send_to(&buf, target).is_ok() {
                sent += 1;
            }
        }
        sent
    })
    .await
    .unwrap();
    assert_eq!(sent, 10_000);

    // Media keeps flowing, intact and continuous.
    a.wait_until("call survives the garbage", MEDIA_TIMEOUT, |r| {
        r.track_of(&bob, TrackKind::Video).unwrap().packets > before_video + 60
    })
    .await
    .unwrap();
    a.report(|r| {
        for t in r.tracks_of(&bob) {
            assert_eq!(t.seq_discontinuities, 0);
            assert_eq!(t.corrupt_payloads, 0);
        }
    });
    // Every garbage datagram was counted as dropped, none reached a session.
    let dropped: u64 = node
        .media
        .as_ref()
        .unwrap()
        .snapshots()
        .iter()
        .map(|s| s.stats.datagrams_dropped)
        .sum();
    // The kernel may drop part of a 10,000-datagram burst before the worker reads it; what
    // arrived was dropped by the demultiplexer (unknown source addresses).
    assert!(dropped >= 2_000, "dropped {dropped}");
    // And the server still admits new participants.
    let mut c = join(&node, "udp", "carol").await;
    c.wait_until("newcomer gets media", MEDIA_TIMEOUT, |r| {
        r.track_of(&bob, TrackKind::Video)
            .is_some_and(|t| t.packets > 10)
    })
    .await
    .unwrap();
    for client in [a, b, c] {
        client.leave().await.unwrap();
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_participant_is_removed_and_announced() {
    let node = start_node().await;
    let mut a = join(&node, "gone", "alice").await;
    let mut b = join(&node, "gone", "bob").await;
    let bob = b.participant.sid.clone();
    a.wait_until("call running", MEDIA_TIMEOUT, |r| {
        r.track_of(&bob, TrackKind::Video)
            .is_some_and(|t| t.packets > 30)
    })
    .await
    .unwrap();
    // Bob's network dies; his WebSocket stays open.
    b.go_silent().await;
    // ICE consent lapses after 15 s without checks, plus the 2 s grace.
    a.wait_until("bob removed", Duration::from_secs(30), |r| {
        r.messages.iter().any(|m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_sid, reason: LeaveReason::ConnectionLost, .. } if *participant_sid == bob)
        })
    })
    .await
    .unwrap();
    // Bob is told too, on the socket he still has.
    b.wait_until("bob told", Duration::from_secs(5), |r| {
        r.messages.iter().any(|m| {
            matches!(
                m,
                ServerMessage::Leave {
                    reason: LeaveReason::ConnectionLost
                }
            )
        })
    })
    .await
    .unwrap();
    a.leave().await.unwrap();
    node.shutdown().await;
}
