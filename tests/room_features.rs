//! Room features around the media: active speaker announcements from audio levels, and data
//! messages between participants with their limits.

mod common;

use std::time::{Duration, Instant};

use common::*;
use moien_client::{Client, ClientConfig, Report};
use moien_protocol::{DataSend, ErrorCode, ServerMessage};

async fn audio_only(node: &moien::Node, room: &str, name: &str, level: u8) -> Client {
    let mut c = ClientConfig::new(ws_url(node), token(room, name, true, true));
    c.publish_video = false;
    c.tone_level = level;
    Client::connect(c).await.expect("joins")
}

fn first_speaker(r: &Report) -> Option<String> {
    r.messages.iter().rev().find_map(|m| match m {
        ServerMessage::ActiveSpeakers { speakers } => Some(
            speakers
                .first()
                .map(|s| s.participant_sid.clone())
                .unwrap_or_default(),
        ),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loudest_is_announced_first_within_a_second() {
    let node = start_node().await;
    // Levels in -dBov: c is clearly (more than the 6 dB hysteresis) louder than a and b.
    let mut a = audio_only(&node, "talk", "a", 58).await;
    let b = audio_only(&node, "talk", "b", 55).await;
    let c = audio_only(&node, "talk", "c", 35).await;
    let d = audio_only(&node, "talk", "d", 127).await;
    let (cs, ds) = (c.participant.sid.clone(), d.participant.sid.clone());
    // The quiet ones speak; c is the loudest of them.
    a.wait_until("c has the floor", Duration::from_secs(10), |r| {
        first_speaker(r).as_deref() == Some(cs.as_str())
    })
    .await
    .unwrap();
    // d starts speaking loudly.
    let started = Instant::now();
    d.set_tone_level(10).await;
    a.wait_until("d announced first", Duration::from_secs(1), |r| {
        first_speaker(r).as_deref() == Some(ds.as_str())
    })
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_millis(1_100));
    // The announcement lists speakers only, loudest first, with levels in 0..=1.
    a.report(|r| {
        let Some(ServerMessage::ActiveSpeakers { speakers }) = r
            .messages
            .iter()
            .rev()
            .find(|m| matches!(m, ServerMessage::ActiveSpeakers { .. }))
        else {
            panic!("no announcement")
        };
        assert!(
            speakers
                .windows(2)
                .all(|w| w[0].level >= w[1].level || w[0].participant_sid == ds)
        );
        assert!(speakers.iter().all(|s| (0.0..=1.0).contains(&s.level)));
    });
    for c in [a, b, c, d] {
        c.leave().await.unwrap();
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_learns_of_a_steady_speaker() {
    let node = start_node().await;
    let mut a = audio_only(&node, "steady", "a", 20).await;
    let asid = a.participant.sid.clone();
    a.wait_until("a hears itself announced", Duration::from_secs(10), |r| {
        first_speaker(r).as_deref() == Some(asid.as_str())
    })
    .await
    .unwrap();
    // a keeps speaking at one level and b stays silent: the ranking never changes again, so
    // only the announcement made to a newcomer can tell b.
    let mut b = audio_only(&node, "steady", "b", 127).await;
    b.wait_until("b told a speaks", Duration::from_secs(5), |r| {
        first_speaker(r).as_deref() == Some(asid.as_str())
    })
    .await
    .unwrap();
    for c in [a, b] {
        c.leave().await.unwrap();
    }
    node.shutdown().await;
}

fn texts(r: &Report) -> Vec<(String, String, bool)> {
    r.data_received
        .iter()
        .map(|(m, reliable)| (m.from.clone(), m.data.clone(), *reliable))
        .collect()
}

fn msg(data: &str, to: &[&str]) -> DataSend {
    DataSend {
        to: to.iter().map(|s| s.to_string()).collect(),
        topic: "chat".into(),
        data: data.into(),
    }
}

fn has_error(r: &Report, code: ErrorCode) -> bool {
    r.messages
        .iter()
        .any(|m| matches!(m, ServerMessage::Error { code: c, .. } if *c == code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_messages_broadcast_directed_and_limited() {
    let node = start_node().await;
    let mut a = audio_only(&node, "chat", "a", 60).await;
    let mut b = audio_only(&node, "chat", "b", 60).await;
    let mut c = audio_only(&node, "chat", "c", 60).await;
    let (asid, bsid) = (a.participant.sid.clone(), b.participant.sid.clone());
    for x in [&mut a, &mut b, &mut c] {
        x.wait_until("data channels open", Duration::from_secs(10), |r| {
            r.data_channels.len() == 2
        })
        .await
        .unwrap();
    }

    // Broadcast on the reliable channel.
    a.send_data(msg("hello", &[]), true).await;
    for x in [&mut b, &mut c] {
        x.wait_until("broadcast", Duration::from_secs(5), |r| {
            texts(r).contains(&(asid.clone(), "hello".into(), true))
        })
        .await
        .unwrap();
    }
    // Directed to b only; then a broadcast, which c receives after anything a sent it before.
    a.send_data(msg("psst", &[&bsid]), true).await;
    a.send_data(msg("after", &[]), true).await;
    b.wait_until("directed", Duration::from_secs(5), |r| {
        texts(r).iter().any(|t| t.1 == "psst")
    })
    .await
    .unwrap();
    c.wait_until("after", Duration::from_secs(5), |r| {
        texts(r).iter().any(|t| t.1 == "after")
    })
    .await
    .unwrap();
    c.report(|r| assert!(!texts(r).iter().any(|t| t.1 == "psst"), "c got b's message"));
    // The lossy channel.
    a.send_data(msg("fast", &[]), false).await;
    b.wait_until("lossy", Duration::from_secs(5), |r| {
        texts(r).contains(&(asid.clone(), "fast".into(), false))
    })
    .await
    .unwrap();

    // Oversized: refused with an error, not a disconnect.
    a.send_data(msg(&"x".repeat(20 * 1024), &[]), true).await;
    a.wait_until("too_large", Duration::from_secs(5), |r| {
        has_error(r, ErrorCode::TooLarge)
    })
    .await
    .unwrap();
    // Flooding: limited with an error; some get through, the sender stays.
    for i in 0..150 {
        a.send_data(msg(&format!("flood {i}"), &[&bsid]), true)
            .await;
    }
    a.wait_until("rate_limited", Duration::from_secs(5), |r| {
        has_error(r, ErrorCode::RateLimited)
    })
    .await
    .unwrap();
    // Once the bucket refills, messages flow again (retry until one passes).
    let mut through = false;
    for _ in 0..25 {
        a.send_data(msg("still here", &[&bsid]), true).await;
        let got = b
            .wait_until("after the flood", Duration::from_millis(200), |r| {
                texts(r).iter().any(|t| t.1 == "still here")
            })
            .await;
        if got.is_ok() {
            through = true;
            break;
        }
    }
    assert!(through, "messages flow again after the flood");
    b.report(|r| {
        let flood = texts(r).iter().filter(|t| t.1.starts_with("flood")).count();
        assert!((20..150).contains(&flood), "{flood} flood messages passed");
        assert!(!texts(r).iter().any(|t| t.1.len() > 16 * 1024));
    });
    assert!(
        a.report(|r| r.closed.is_none()),
        "the flooder was not disconnected"
    );
    for x in [a, b, c] {
        x.leave().await.unwrap();
    }
    node.shutdown().await;
}

/// Participants per worker once the workers' snapshots (every 250 ms) show `expected` in all.
async fn participants_per_worker(node: &moien::Node, expected: usize) -> Vec<usize> {
    let media = node.media.as_ref().expect("media role");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let per: Vec<usize> = media
            .snapshots()
            .iter()
            .map(|s| s.gauges.participants)
            .collect();
        if per.iter().sum::<usize>() == expected {
            return per;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers report {per:?}, expected {expected} in all"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_pack_on_the_first_worker_until_it_is_busy() {
    // Default: two quiet rooms share the first worker.
    let node = start_node().await;
    let _a = audio_only(&node, "pack-a", "alice", 30).await;
    let _b = audio_only(&node, "pack-b", "bob", 30).await;
    assert_eq!(participants_per_worker(&node, 2).await, vec![2, 0]);
    node.shutdown().await;

    // A threshold the first worker's own work crosses: once it reports being busy, the next
    // room goes to the second worker. This is the worker's measured figure reaching placement.
    let node = start_node_with(|c| c.media.pack_load = 1e-9).await;
    let _a = audio_only(&node, "pack-a", "alice", 30).await;
    assert_eq!(participants_per_worker(&node, 1).await, vec![1, 0]);
    let media = node.media.as_ref().expect("media role");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while media.snapshots()[0].busy <= 1e-9 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker 0 never reported work"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _b = audio_only(&node, "pack-b", "bob", 30).await;
    assert_eq!(participants_per_worker(&node, 2).await, vec![1, 1]);
    // A room that exists stays where it is.
    let _c = audio_only(&node, "pack-a", "carol", 30).await;
    assert_eq!(participants_per_worker(&node, 3).await, vec![2, 1]);
    node.shutdown().await;

    // pack_load = 0 spreads rooms from the first one.
    let node = start_node_with(|c| c.media.pack_load = 0.0).await;
    let _a = audio_only(&node, "pack-a", "alice", 30).await;
    let _b = audio_only(&node, "pack-b", "bob", 30).await;
    assert_eq!(participants_per_worker(&node, 2).await, vec![1, 1]);
    node.shutdown().await;
}
