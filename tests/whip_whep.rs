//! WHIP and WHEP through the SFU with Rust peers, and every refusal they must give.

mod common;

use std::time::Duration;

use common::*;
use moien_client::{Client, ClientConfig};
use moien_protocol::{ServerMessage, TrackKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publisher_is_a_participant_and_whep_plays_it() {
    let node = start_node().await;
    let base = http_url(&node);
    let mut watcher = join(&node, "stage", "watcher").await;

    let whip = Client::whip(
        &base,
        "stage",
        ClientConfig::new("", token("stage", "whip-pub", true, false)),
    )
    .await
    .expect("WHIP publish");
    let pub_sid = whip.participant.sid.clone();
    assert!(pub_sid.starts_with("PA_"), "Location names the participant");

    // The WebSocket participant sees it join and receives its media.
    watcher
        .wait_until("WHIP media on the call", MEDIA_TIMEOUT, |r| {
            let joined = r.messages.iter().any(|m| {
                matches!(m, ServerMessage::ParticipantJoined { participant } if participant.identity == "whip-pub")
            });
            let audio = r.track_of(&pub_sid, TrackKind::Audio).is_some_and(|t| t.audio_frames_decoded > 20);
            let video = r.track_of(&pub_sid, TrackKind::Video).is_some_and(|t| t.first_keyframe_complete_at.is_some() && t.packets > 30);
            joined && audio && video
        })
        .await
        .unwrap();

    // A WHEP viewer plays the WHIP publisher.
    let mut viewer = Client::whep(
        &base,
        "stage",
        "whip-pub",
        ClientConfig::new("", token("stage", "viewer", false, true)),
    )
    .await
    .expect("WHEP play");
    viewer
        .wait_until("WHEP media", MEDIA_TIMEOUT, |r| {
            let audio = r
                .track_of("whip-pub", TrackKind::Audio)
                .is_some_and(|t| t.audio_frames_decoded > 20);
            let video = r.track_of("whip-pub", TrackKind::Video).is_some_and(|t| {
                t.first_packet_keyframe && t.first_keyframe_complete_at.is_some() && t.packets > 30
            });
            audio && video
        })
        .await
        .unwrap();
    viewer.report(|r| {
        for t in r.tracks.values() {
            assert_eq!(t.corrupt_payloads, 0);
            assert_eq!(t.seq_discontinuities, 0);
        }
    });
    // The viewer is hidden: nobody was told about it.
    watcher.report(|r| {
        assert!(!r.messages.iter().any(|m| {
            matches!(m, ServerMessage::ParticipantJoined { participant } if participant.identity == "viewer")
        }));
    });

    // DELETE on the WHIP session: the publisher leaves the call.
    whip.leave().await.unwrap();
    watcher
        .wait_until("WHIP publisher left", Duration::from_secs(5), |r| {
            r.messages.iter().any(|m| {
                matches!(m, ServerMessage::ParticipantLeft { participant_sid, .. } if *participant_sid == pub_sid)
            })
        })
        .await
        .unwrap();
    // Its WHEP viewer has nothing left to play and is ended too.
    viewer
        .wait_until("viewer ended", Duration::from_secs(10), |r| {
            r.tracks.values().all(|t| {
                t.last_packet_at
                    .is_some_and(|l| l.elapsed() > Duration::from_millis(500))
            })
        })
        .await
        .unwrap();
    watcher.leave().await.unwrap();
    node.shutdown().await;
}

async fn post(url: &str, token: Option<&str>, content_type: &str, body: &str) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A syntactically valid offer taken from a real str0m peer.
async fn valid_offer(node: &moien::Node) -> String {
    // A WHIP session through the client yields a valid offer; capture one by hand instead.
    let mut rtc = str0m::RtcConfig::new().build(std::time::Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(
        str0m::media::MediaKind::Audio,
        str0m::media::Direction::SendOnly,
        None,
        None,
        None,
    );
    let (offer, _) = api.apply().unwrap();
    let _ = node;
    offer.to_sdp_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_refusals() {
    let node = start_node().await;
    let base = http_url(&node);
    let sdp = valid_offer(&node).await;
    let whip = format!("{base}/whip/room-a");
    let good = token("room-a", "p", true, true);

    // Token problems: 401.
    assert_eq!(post(&whip, None, "application/sdp", &sdp).await.0, 401);
    let forged = {
        let mut t = good.clone();
        t.pop();
        t.push(if good.ends_with('A') { 'B' } else { 'A' });
        t
    };
    assert_eq!(
        post(&whip, Some(&forged), "application/sdp", &sdp).await.0,
        401
    );
    let wrong_key = moien_signaling::auth::mint(
        "not-the-secret",
        &moien_signaling::auth::verify(SECRET, &good).unwrap(),
    )
    .unwrap();
    assert_eq!(
        post(&whip, Some(&wrong_key), "application/sdp", &sdp)
            .await
            .0,
        401
    );
    let expired = token_with("room-a", "p", true, true, -60);
    let (status, body) = post(&whip, Some(&expired), "application/sdp", &sdp).await;
    assert_eq!(status, 401);
    assert!(body.contains("\"code\":\"unauthorized\""), "{body}");

    // Room A's token on room B, or no publish grant: 403.
    let (status, body) = post(
        &format!("{base}/whip/room-b"),
        Some(&good),
        "application/sdp",
        &sdp,
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("forbidden"));
    let viewer = token("room-a", "v", false, true);
    assert_eq!(
        post(&whip, Some(&viewer), "application/sdp", &sdp).await.0,
        403
    );

    // Bad SDP: 400; wrong content type: 415.
    for bad in [
        "",
        "v=0",
        "this is not sdp",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio",
    ] {
        let (status, body) = post(&whip, Some(&good), "application/sdp", bad).await;
        assert_eq!(status, 400, "SDP {bad:?}: {body}");
        assert!(body.contains("invalid_sdp"));
    }
    assert_eq!(post(&whip, Some(&good), "text/plain", &sdp).await.0, 415);

    // Oversized body: 413.
    let huge = "a".repeat(200 * 1024);
    assert_eq!(
        post(&whip, Some(&good), "application/sdp", &huge).await.0,
        413
    );

    // WHEP for a participant who is not there: 404.
    let whep = format!("{base}/whep/room-a/nobody");
    let (status, body) = post(&whep, Some(&viewer), "application/sdp", &sdp).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"));

    // DELETE of an unknown session: 404; PATCH: 405.
    let resp = reqwest::Client::new()
        .delete(format!("{base}/whip/room-a/PA_nope"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let resp = reqwest::Client::new()
        .patch(format!("{base}/whip/room-a/PA_nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);

    // After all that the server still serves a real call.
    let mut a = join(&node, "room-a", "alice").await;
    let b = join(&node, "room-a", "bob").await;
    let bob = b.participant.sid.clone();
    a.wait_until("media after refusals", MEDIA_TIMEOUT, |r| {
        r.track_of(&bob, TrackKind::Video)
            .is_some_and(|t| t.packets > 30)
    })
    .await
    .unwrap();
    a.leave().await.unwrap();
    b.leave().await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_answers_carry_turn_servers_in_link_headers() {
    let node = start_node().await;
    let base = http_url(&node);
    let sdp = valid_offer(&node).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/whip/links"))
        .bearer_auth(token("links", "cam", true, false))
        .header("content-type", "application/sdp")
        .body(sdp)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let links: Vec<String> = resp
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    // RFC 9725 section 4.6: our own TURN server, with short-lived credentials; nothing else.
    assert!(!links.is_empty(), "no Link header");
    let turn = node.turn.as_ref().unwrap();
    for l in &links {
        assert!(l.contains("rel=\"ice-server\""), "{l}");
        assert!(
            l.starts_with("<turn:127.0.0.1:") || l.starts_with("<turns:"),
            "{l}"
        );
        assert!(
            l.contains("username=\"") && l.contains("credential=\""),
            "{l}"
        );
    }
    let udp_port = turn.udp_addrs[0].port();
    assert!(
        links
            .iter()
            .any(|l| l.contains(&format!(":{udp_port}?transport=udp"))),
        "{links:?}"
    );
    // The username is `<expiry>:<pseudonym>`, never the identity, and expires within a day.
    let user = links[0]
        .split("username=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let (expiry, pseudonym) = user.split_once(':').unwrap();
    assert_ne!(pseudonym, "cam");
    let expiry: u64 = expiry.parse().unwrap();
    let now = moien_signaling::auth::now_unix();
    assert!(expiry > now && expiry <= now + 86_400);
    node.shutdown().await;
}
