//! A real call through the SFU with Rust clients: media arrives intact, numbering is continuous,
//! late joiners get a keyframe, leavers are announced.

mod common;

use std::time::Duration;

use common::*;
use moien_protocol::{ServerMessage, TrackKind};

/// Every other participant's audio and video arrive, byte for byte.
fn receives_all(r: &moien_client::Report, others: &[&str]) -> bool {
    others.iter().all(|sid| {
        let audio = r.track_of(sid, TrackKind::Audio);
        let video = r.track_of(sid, TrackKind::Video);
        audio.is_some_and(|a| a.audio_frames_decoded >= 25)
            && video.is_some_and(|v| v.packets >= 60 && v.first_keyframe_complete_at.is_some())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_then_a_late_joiner_then_a_leaver() {
    let node = start_node().await;
    let mut a = join(&node, "call", "alice").await;
    let mut b = join(&node, "call", "bob").await;
    let mut c = join(&node, "call", "carol").await;
    let sids = [
        a.participant.sid.clone(),
        b.participant.sid.clone(),
        c.participant.sid.clone(),
    ];

    for (i, client) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        let others: Vec<&str> = sids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| s.as_str())
            .collect();
        client
            .wait_until("media from both others", MEDIA_TIMEOUT, |r| {
                receives_all(r, &others)
            })
            .await
            .unwrap();
    }

    // Payload bytes equal the sent ones; numbering is continuous; nothing corrupt.
    let sent: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|cl| cl.report(|r| r.sent_hashes.clone()))
        .collect();
    for (i, client) in [&a, &b, &c].iter().enumerate() {
        client.report(|r| {
            for (j, sid) in sids.iter().enumerate() {
                if i == j {
                    continue;
                }
                for t in r.tracks_of(sid) {
                    assert_eq!(t.corrupt_payloads, 0, "corrupt payload from {sid}");
                    assert_eq!(t.audio_decode_errors, 0);
                    assert_eq!(
                        t.seq_discontinuities, 0,
                        "sequence gap in {sid}'s {:?}",
                        t.kind
                    );
                    assert!(t.first_seq.unwrap() < 30_000 + 100, "numbering starts low");
                    let missing = t
                        .payload_hashes
                        .iter()
                        .filter(|h| !sent[j].contains(h))
                        .count();
                    assert_eq!(missing, 0, "payloads not sent by {sid}");
                    if t.kind == Some(TrackKind::Video) {
                        assert!(t.first_packet_keyframe, "video starts on a keyframe");
                    }
                }
            }
        });
    }

    // A fourth client joins mid-call: a decodable keyframe from each publisher within 1 s.
    let mut d = join(&node, "call", "dave").await;
    let joined = std::time::Instant::now();
    d.wait_until("keyframes for the late joiner", MEDIA_TIMEOUT, |r| {
        sids.iter().all(|sid| {
            r.track_of(sid, TrackKind::Video)
                .is_some_and(|v| v.first_keyframe_complete_at.is_some())
        })
    })
    .await
    .unwrap();
    d.report(|r| {
        for sid in &sids {
            let v = r.track_of(sid, TrackKind::Video).unwrap();
            assert!(v.first_packet_keyframe, "first packet is a keyframe start");
            let first = v.first_packet_at.unwrap();
            let complete = v.first_keyframe_complete_at.unwrap();
            assert!(complete >= first);
            // From `joined`: connection setup, the keyframe request and the keyframe itself.
            assert!(
                complete.duration_since(joined) < Duration::from_secs(1),
                "keyframe complete {:?} after joining",
                complete.duration_since(joined)
            );
        }
    });

    // Carol leaves: the others are told and her tracks stop.
    let carol = sids[2].clone();
    c.leave().await.unwrap();
    for client in [&mut a, &mut b, &mut d] {
        client
            .wait_until("carol's departure", Duration::from_secs(5), |r| {
                let left = r.messages.iter().any(|m| {
                    matches!(m, ServerMessage::ParticipantLeft { participant_sid, .. } if *participant_sid == carol)
                });
                let unpublished = r
                    .messages
                    .iter()
                    .filter(|m| matches!(m, ServerMessage::TrackUnpublished { participant_sid, .. } if *participant_sid == carol))
                    .count();
                left && unpublished == 2
            })
            .await
            .unwrap();
    }
    let before = a.report(|r| r.tracks_of(&carol).map(|t| t.packets).sum::<u64>());
    // Other media keeps flowing while carol's stays stopped.
    let bob_before = a.report(|r| r.tracks_of(&sids[1]).map(|t| t.packets).sum::<u64>());
    a.wait_until("more media from bob", MEDIA_TIMEOUT, |r| {
        r.tracks_of(&sids[1]).map(|t| t.packets).sum::<u64>() > bob_before + 50
    })
    .await
    .unwrap();
    let after = a.report(|r| r.tracks_of(&carol).map(|t| t.packets).sum::<u64>());
    assert!(
        after <= before + 5,
        "carol's tracks stopped ({before} -> {after})"
    );

    a.leave().await.unwrap();
    b.leave().await.unwrap();
    d.leave().await.unwrap();
    node.shutdown().await;
}

/// One dual-stack media socket (`bind = "::"`) carries an IPv4 and an IPv6 participant in one
/// call: the IPv4 one reaches it as IPv4-mapped IPv6 and is answered from the IPv4 candidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_and_ipv6_participants_share_a_dual_stack_node() {
    let node = start_node_with(|c| {
        c.media.bind = "::".parse().unwrap();
        c.media.public_ips = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    })
    .await;
    let connect = |identity: &str, ip: &str| {
        let mut config =
            moien_client::ClientConfig::new(ws_url(&node), token("dual", identity, true, true));
        config.bind_ip = ip.parse().unwrap();
        moien_client::Client::connect(config)
    };
    let mut v4 = connect("four", "127.0.0.1").await.expect("IPv4 joins");
    let mut v6 = connect("six", "::1").await.expect("IPv6 joins");
    let (sid4, sid6) = (v4.participant.sid.clone(), v6.participant.sid.clone());
    v4.wait_until("media over IPv6", MEDIA_TIMEOUT, |r| {
        receives_all(r, &[&sid6])
    })
    .await
    .unwrap();
    v6.wait_until("media over IPv4", MEDIA_TIMEOUT, |r| {
        receives_all(r, &[&sid4])
    })
    .await
    .unwrap();
    for (client, from) in [(&v4, &sid6), (&v6, &sid4)] {
        client.report(|r| {
            for t in r.tracks_of(from) {
                assert_eq!(t.corrupt_payloads, 0, "corrupt payload from {from}");
            }
        });
    }
}
