//! Call quality through the SFU: simulcast layers chosen per subscriber downlink, switches on
//! keyframes with continuous numbering, E2EE-safe switching, dynacast.

mod common;

use std::time::Duration;

use common::*;
use moien_client::{Client, ClientConfig, Report};
use moien_protocol::TrackKind;

/// These tests load both cores; run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn publisher(node: &moien::Node, room: &str, e2ee: Option<u64>) -> Client {
    let mut c = ClientConfig::new(ws_url(node), token(room, "pub", true, false));
    c.simulcast = true;
    c.e2ee_key = e2ee;
    Client::connect(c).await.expect("publisher joins")
}

async fn viewer(
    node: &moien::Node,
    room: &str,
    name: &str,
    downlink: Option<u64>,
    e2ee: Option<u64>,
) -> Client {
    let mut c = viewer_config(node, room, name, downlink);
    c.e2ee_key = e2ee;
    Client::connect(c).await.expect("viewer joins")
}

/// A subscriber that publishes nothing, behind a downlink of `downlink` bit/s if given.
fn viewer_config(
    node: &moien::Node,
    room: &str,
    name: &str,
    downlink: Option<u64>,
) -> ClientConfig {
    let mut c = ClientConfig::new(ws_url(node), token(room, name, false, true));
    c.publish_audio = false;
    c.publish_video = false;
    c.downlink_bps = downlink;
    c
}

fn layer_of(r: &Report, publisher: &str) -> Option<u8> {
    r.track_of(publisher, TrackKind::Video)
        .and_then(|t| t.layer)
}

/// Holds `layer` for the last second of received video.
fn settled_on(r: &Report, publisher: &str, layer: u8) -> bool {
    r.track_of(publisher, TrackKind::Video).is_some_and(|t| {
        t.layer == Some(layer)
            && t.layer_history
                .last()
                .is_some_and(|c| c.at.elapsed() > Duration::from_secs(1))
            && t.last_packet_at
                .is_some_and(|l| l.elapsed() < Duration::from_millis(300))
    })
}

/// Every layer change started on a keyframe; numbering and time never went backwards.
fn assert_clean_switches(r: &Report, publisher: &str) {
    let t = r.track_of(publisher, TrackKind::Video).unwrap();
    assert!(!t.layer_history.is_empty());
    for c in &t.layer_history {
        assert!(
            c.keyframe_start,
            "switch to layer {} (frame {}) not on a keyframe; history {:?}",
            c.layer,
            c.frame,
            t.layer_history
                .iter()
                .map(|c| (c.layer, c.frame, c.keyframe_start))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(t.corrupt_payloads, 0, "payload bytes changed");
    assert!(
        t.max_seq_jump < 200,
        "sequence jumped by {}",
        t.max_seq_jump
    );
    assert_eq!(t.ts_backwards, 0, "timestamp went backwards");
    assert!(
        t.max_picture_id_jump < 30,
        "VP8 PictureID jumped by {}",
        t.max_picture_id_jump
    );
}

async fn simulcast_follows_downlinks(e2ee: Option<u64>) {
    let _serial = SERIAL.lock().await;
    let node = start_node().await;
    let room = if e2ee.is_some() { "sim-e2ee" } else { "sim" };
    let p = publisher(&node, room, e2ee).await;
    let ps = p.participant.sid.clone();
    let mut fast = viewer(&node, room, "fast", Some(2_000_000), e2ee).await;
    let mut mid = viewer(&node, room, "mid", Some(600_000), e2ee).await;
    let mut slow = viewer(&node, room, "slow", Some(150_000), e2ee).await;

    // Estimates converge in a few seconds alone; under `make test`'s load on two cores they
    // took past 10 s once (mid on layer 1), so the bound is wide. Speed is benchmarked, not
    // tested.
    let within = Duration::from_secs(20);
    fast.wait_until("fast on layer 2", within, |r| layer_of(r, &ps) == Some(2))
        .await
        .unwrap();
    mid.wait_until("mid on layer 1", within, |r| settled_on(r, &ps, 1))
        .await
        .unwrap();
    slow.wait_until("slow on layer 0", within, |r| settled_on(r, &ps, 0))
        .await
        .unwrap();
    // Audio kept flowing to the slowest one.
    slow.report(|r| {
        assert!(
            r.track_of(&ps, TrackKind::Audio)
                .unwrap()
                .audio_frames_decoded
                > 50
        );
    });

    // The slow link recovers. The estimate climbs by probes toward unmet demand (str0m patch
    // 16; if the cap lost packets, after a second without loss, a probe also ends the
    // loss-limited state), then the link carries padding at the next layer's rate for a second
    // before the switch (`allocator::Sustain`): 2.0-3.0 s to the next layer in 8 runs with
    // str0m patch 17 (2.0-5.6 s before it; 0.5-2.5 s without the padding second), against
    // 1-10 s (median 4 s) while the controller held the cap's losses for its whole window.
    // Since patch 18 counts each packet's headers, the estimate no longer overfills the cap,
    // and the cap seldom loses packets.
    // The bound covers the backoffs' worst case (a few failed probes during the cap make each
    // wait up to 8 s).
    slow.set_downlink(None).await;
    slow.wait_until("slow goes up", Duration::from_secs(20), |r| {
        layer_of(r, &ps).is_some_and(|l| l >= 1)
    })
    .await
    .unwrap();
    for v in [&fast, &mid, &slow] {
        v.report(|r| assert_clean_switches(r, &ps));
    }
    // The layer-distribution gauge sees the fast viewer on the top layer.
    // Snapshots refresh every 250 ms and the fast viewer's estimate may dip for a moment under
    // load: the gauge must show it on top again within a few seconds.
    let on_top = || -> usize {
        (node.media.as_ref().unwrap().snapshots().iter())
            .map(|s| s.gauges.video_subscriptions_by_layer[2])
            .sum()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while on_top() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody counted on layer 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in [p, fast, mid, slow] {
        c.leave().await.unwrap();
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_layer_per_subscriber_downlink() {
    simulcast_follows_downlinks(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_switching_with_end_to_end_encrypted_payloads() {
    simulcast_follows_downlinks(Some(0x5eed_cafe)).await;
}

/// Downlinks that carry the middle layer but not the top one settle on the middle layer and
/// stay there. Before str0m patch 17 and the exact layer meter, a 600 kbit/s viewer fell back
/// to the base layer within seconds of reaching the middle one (an overuse read a lagging
/// acknowledged rate), and viewers at 800 kbit/s to 1 Mbit/s switched up to 16 times in 30 s
/// (docs/PERFORMANCE.md, "Twenty-first pass").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_downlinks_hold_their_layer() {
    let _serial = SERIAL.lock().await;
    let node = start_node().await;
    let p = publisher(&node, "held", None).await;
    let ps = p.participant.sid.clone();
    let mut viewers = vec![
        viewer(&node, "held", "600k", Some(600_000), None).await,
        viewer(&node, "held", "800k", Some(800_000), None).await,
    ];
    for v in viewers.iter_mut() {
        v.wait_until("on layer 1", Duration::from_secs(20), |r| {
            settled_on(r, &ps, 1)
        })
        .await
        .unwrap();
    }
    let switches = |v: &Client| {
        v.report(|r| {
            r.track_of(&ps, TrackKind::Video)
                .unwrap()
                .layer_history
                .len()
        })
    };
    let before: Vec<usize> = viewers.iter().map(switches).collect();
    // Stability is the absence of events: watch a while.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (v, before) in viewers.iter().zip(before) {
        v.report(|r| {
            let t = r.track_of(&ps, TrackKind::Video).unwrap();
            let late: Vec<_> = t.layer_history[before..].iter().map(|c| c.layer).collect();
            assert!(
                late.is_empty(),
                "switched to layers {late:?} after settling on 1"
            );
            assert!(
                t.last_packet_at
                    .is_some_and(|l| l.elapsed() < Duration::from_millis(300))
            );
        });
        v.report(|r| assert_clean_switches(r, &ps));
    }
    p.leave().await.unwrap();
    for v in viewers {
        v.leave().await.unwrap();
    }
    node.shutdown().await;
}

/// A downlink that loses packets at random (a mobile last mile) still gets the layer its rate
/// carries. Before str0m patch 18 the probes that find the rate were counted by payload alone:
/// small padding packets read 72 % of the link, and a 600 kbit/s viewer at 2 % loss reached
/// its middle layer after 7-14 s, or not in 30 s (docs/PERFORMANCE.md, "Twenty-second pass");
/// with it, at 3.1 s in every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_downlink_gets_the_layer_it_carries() {
    let _serial = SERIAL.lock().await;
    let node = start_node().await;
    let p = publisher(&node, "lossy", None).await;
    let ps = p.participant.sid.clone();
    let mut c = viewer_config(&node, "lossy", "viewer", Some(600_000));
    c.downlink_loss = 0.03;
    let mut v = Client::connect(c).await.expect("viewer joins");
    v.wait_until("on layer 1", Duration::from_secs(10), |r| {
        settled_on(r, &ps, 1)
    })
    .await
    .unwrap();
    v.report(|r| assert_clean_switches(r, &ps));
    p.leave().await.unwrap();
    v.leave().await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynacast_stops_and_resumes_unused_layers() {
    let _serial = SERIAL.lock().await;
    let node = start_node().await;
    let mut p = publisher(&node, "dyn", None).await;
    let ps = p.participant.sid.clone();
    let mut slow = viewer(&node, "dyn", "slow", Some(150_000), None).await;
    slow.wait_until("slow on layer 0", Duration::from_secs(10), |r| {
        settled_on(r, &ps, 0)
    })
    .await
    .unwrap();
    // Nobody needs h or f: the publisher is told to stop them.
    p.wait_until("h and f paused", Duration::from_secs(10), |r| {
        r.active_layers == [true, false, false]
    })
    .await
    .unwrap();
    // The subscriber's link recovers: the publisher is asked for a layer above the base again.
    // Which one depends on how fast the estimate climbs: a probe that finds the whole link at
    // once grants f straight away, and h stays off (nobody needs it). 2.0-3.0 s in 4 runs with
    // str0m patch 17 (2.0 s before it, 1.0-2.5 s in 12 runs before the padding second); the
    // bound is the one of `simulcast_follows_downlinks`.
    slow.set_downlink(None).await;
    p.wait_until("layers resumed", Duration::from_secs(20), |r| {
        r.active_layers.iter().skip(1).any(|a| *a)
    })
    .await
    .unwrap();
    slow.wait_until("slow back up", Duration::from_secs(15), |r| {
        layer_of(r, &ps).is_some_and(|l| l >= 1)
    })
    .await
    .unwrap();
    // What the subscriber receives is a layer the publisher was asked to send.
    let layer = slow.report(|r| layer_of(r, &ps)).unwrap();
    p.wait_until("received layer is on", Duration::from_secs(5), |r| {
        r.active_layers.get(usize::from(layer)) == Some(&true)
    })
    .await
    .unwrap();
    slow.report(|r| assert_clean_switches(r, &ps));
    p.leave().await.unwrap();
    slow.leave().await.unwrap();
    node.shutdown().await;
}

fn video_track_sid(r: &Report, publisher: &str) -> Option<String> {
    r.tracks
        .iter()
        .find(|(_, t)| t.participant_sid == publisher && t.kind == Some(TrackKind::Video))
        .map(|(sid, _)| sid.clone())
}

fn temporal(r: &Report, publisher: &str) -> [u64; 8] {
    r.track_of(publisher, TrackKind::Video)
        .map_or([0; 8], |t| t.temporal_packets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svc_temporal_layers_follow_the_subscribers_wish() {
    let _serial = SERIAL.lock().await;
    let node = start_node().await;
    let mut c = ClientConfig::new(ws_url(&node), token("svc", "pub", true, false));
    c.vp9_temporal = Some(3);
    let p = Client::connect(c).await.unwrap();
    let ps = p.participant.sid.clone();
    let mut v = viewer(&node, "svc", "viewer", None, None).await;
    v.wait_until("all three temporal layers", Duration::from_secs(10), |r| {
        temporal(r, &ps)[..3].iter().all(|n| *n > 20)
    })
    .await
    .unwrap();
    let track_sid = v.report(|r| video_track_sid(r, &ps)).unwrap();
    let cap = |max_temporal| moien_protocol::ClientMessage::UpdateSubscription {
        track_sid: track_sid.clone(),
        paused: None,
        max_layer: None,
        max_temporal: Some(max_temporal),
        pinned: None,
    };

    // Base layer only: a quarter of the pictures, and no gap in the numbering. The first window
    // lets the wish reach the server; in the second, nothing above the base layer may arrive.
    v.send(cap(0)).await;
    let first = v.report(|r| temporal(r, &ps));
    v.wait_until("base layer keeps flowing", Duration::from_secs(10), |r| {
        temporal(r, &ps)[0] > first[0] + 20
    })
    .await
    .unwrap();
    let before = v.report(|r| temporal(r, &ps));
    v.wait_until("base layer still flowing", Duration::from_secs(10), |r| {
        temporal(r, &ps)[0] > before[0] + 40
    })
    .await
    .unwrap();
    let (after, discontinuities) = v.report(|r| {
        let t = r.track_of(&ps, TrackKind::Video).unwrap();
        (t.temporal_packets, t.seq_discontinuities)
    });
    assert_eq!(
        (after[1], after[2]),
        (before[1], before[2]),
        "upper layers kept flowing: {before:?} -> {after:?}"
    );
    assert_eq!(
        discontinuities, 0,
        "dropped layers must leave no sequence gaps"
    );

    // All layers again, from the next base-layer picture on.
    v.send(cap(2)).await;
    v.wait_until("upper layers resume", Duration::from_secs(10), |r| {
        let now = temporal(r, &ps);
        now[1] > after[1] + 20 && now[2] > after[2] + 20
    })
    .await
    .unwrap();
    v.report(|r| {
        let t = r.track_of(&ps, TrackKind::Video).unwrap();
        assert_eq!(t.seq_discontinuities, 0);
        assert_eq!(t.corrupt_payloads, 0);
    });
    p.leave().await.unwrap();
    v.leave().await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_loss_keeps_video_decoding_and_red_audio_whole() {
    let _serial = SERIAL.lock().await;
    let node = start_node().await;
    let mut c = ClientConfig::new(ws_url(&node), token("lossy", "pub", true, false));
    c.red = true;
    let p = Client::connect(c).await.unwrap();
    let ps = p.participant.sid.clone();
    let mut c = ClientConfig::new(ws_url(&node), token("lossy", "viewer", false, true));
    c.publish_audio = false;
    c.publish_video = false;
    c.downlink_loss = 0.10;
    let mut v = Client::connect(c).await.unwrap();
    v.wait_until(
        "media through the lossy link",
        Duration::from_secs(10),
        |r| {
            r.track_of(&ps, TrackKind::Video)
                .is_some_and(|t| t.frames_complete > 30)
                && r.track_of(&ps, TrackKind::Audio)
                    .is_some_and(|t| t.audio_frames_decoded > 50)
        },
    )
    .await
    .unwrap();
    // Video goes on decoding: four more seconds of complete frames (30 fps) in at most ten.
    let start = v.report(|r| r.track_of(&ps, TrackKind::Video).unwrap().frames_complete);
    v.wait_until("frames keep completing", Duration::from_secs(10), |r| {
        r.track_of(&ps, TrackKind::Video).unwrap().frames_complete >= start + 120
    })
    .await
    .unwrap();
    v.report(|r| {
        let video = r.track_of(&ps, TrackKind::Video).unwrap();
        assert_eq!(video.corrupt_payloads, 0);
        let audio = r.track_of(&ps, TrackKind::Audio).unwrap();
        assert_eq!(audio.audio_decode_errors, 0);
        let gap = audio.max_audio_gap_ms();
        assert!(gap <= 100, "audio gap of {gap} ms despite RED");
        assert!(audio.audio_timestamps.len() > 200, "audio flowed");
        assert!(audio.red_recovered > 0, "RED filled losses");
    });
    // The SFU answered the viewer's NACKs with RTX and counted them.
    let (rtx_out, nacks_in) = node
        .media
        .as_ref()
        .unwrap()
        .snapshots()
        .iter()
        .fold((0, 0), |(r, n), s| {
            (r + s.stats.rtx_out, n + s.stats.nacks_in)
        });
    assert!(nacks_in > 0, "the lossy viewer sent NACKs");
    assert!(rtx_out > 0, "retransmissions sent and counted");
    p.leave().await.unwrap();
    v.leave().await.unwrap();
    node.shutdown().await;
}

/// Transport-wide congestion feedback to a publisher stays within an RTCP budget (libwebrtc's
/// rule, str0m patch 10): an audio-only publisher is acknowledged about 4 times a second, a
/// video publisher every 50 ms as before, so its sender's estimator loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twcc_feedback_within_an_rtcp_budget() {
    let _serial = SERIAL.lock().await;
    let node = start_node().await;
    let audio = control_datagrams_per_second(&node, "budget-audio", false).await;
    let video = control_datagrams_per_second(&node, "budget-video", true).await;
    assert!(
        audio < 11.0,
        "{audio:.1} RTCP datagrams a second to an audio-only publisher"
    );
    assert!(
        video > 15.0,
        "{video:.1} RTCP datagrams a second to a video publisher"
    );
    node.shutdown().await;
}

/// What the node sends a lone publisher besides media (its RTCP and connectivity checks: it
/// forwards nothing), a second, over 4 s of its media after the first 2 s.
async fn control_datagrams_per_second(node: &moien::Node, room: &str, video: bool) -> f64 {
    let mut c = ClientConfig::new(ws_url(node), token(room, "alone", true, false));
    c.publish_video = video;
    let client = Client::connect(c).await.expect("publisher joins");
    let totals = || {
        node.media
            .as_ref()
            .unwrap()
            .snapshots()
            .iter()
            .fold((0, 0), |(i, o), s| {
                (
                    i + s.stats.packets_in,
                    o + s.stats.datagrams_out - s.stats.packets_out,
                )
            })
    };
    // Audio alone is 50 packets a second; video adds more, so the windows are shorter there.
    let per_second: u64 = if video { 100 } else { 50 };
    let mut start = totals();
    let deadline = std::time::Instant::now() + MEDIA_TIMEOUT;
    while start.0 < 2 * per_second {
        assert!(std::time::Instant::now() < deadline, "no media from {room}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        start = totals();
    }
    let t0 = std::time::Instant::now();
    let mut end = start;
    while end.0 < start.0 + 4 * per_second {
        assert!(
            std::time::Instant::now() < deadline,
            "media from {room} stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        end = totals();
    }
    let rate = (end.1 - start.1) as f64 / t0.elapsed().as_secs_f64();
    client.leave().await.unwrap();
    rate
}

/// A subscriber that gets everything it wants is sent the media and the estimator's probes,
/// not padding to hold the estimate at the rate the media already has (that filled every quiet
/// frame with packets nobody needs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_padding_for_a_subscriber_with_all_it_wants() {
    let _serial = SERIAL.lock().await;
    let node = start_node().await;
    let c = ClientConfig::new(ws_url(&node), token("unpadded", "pub", true, false));
    let p = Client::connect(c).await.expect("publisher joins");
    let ps = p.participant.sid.clone();
    let mut v = viewer(&node, "unpadded", "viewer", None, None).await;
    let frames = |v: &Client| {
        v.report(|r| {
            r.track_of(&ps, TrackKind::Video)
                .map_or(0, |t| t.frames_complete)
        })
    };
    let sent = || {
        node.media
            .as_ref()
            .unwrap()
            .snapshots()
            .iter()
            .fold((0, 0, 0), |(r, o, n), s| {
                (
                    r + s.stats.rtx_out,
                    o + s.stats.packets_out,
                    n + s.stats.nacks_in,
                )
            })
    };
    v.wait_until("video flows", MEDIA_TIMEOUT, |r| {
        r.track_of(&ps, TrackKind::Video)
            .is_some_and(|t| t.frames_complete >= 30)
    })
    .await
    .unwrap();
    let (rtx0, out0, nacks0) = sent();
    // Four seconds of video at 30 frames a second.
    let start = frames(&v);
    v.wait_until("four seconds of video", Duration::from_secs(10), |r| {
        r.track_of(&ps, TrackKind::Video)
            .is_some_and(|t| t.frames_complete >= start + 120)
    })
    .await
    .unwrap();
    let (rtx1, out1, nacks1) = sent();
    assert_eq!(
        nacks1, nacks0,
        "a loopback link loses nothing, so nothing to resend"
    );
    assert!(
        out1 - out0 >= 120,
        "the media went out ({} packets)",
        out1 - out0
    );
    // What remains are the estimator's probes, bursts of about 14 packets toward what the
    // subscriber could use (two in a row at most here). Padding to the media's own rate sent
    // 68-84 packets in the same window.
    let padding = rtx1 - rtx0;
    assert!(
        padding <= 32,
        "{padding} padding packets among {} sent to a subscriber with all it wants",
        out1 - out0
    );
    p.leave().await.unwrap();
    v.leave().await.unwrap();
    node.shutdown().await;
}
