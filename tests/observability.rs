//! scratch
mod common;
use common::*;
use moien_client::{Client, ClientConfig, RelayConfig};
use moien_protocol::TrackKind;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_client_calls_through_turn() {
    let node = start_node().await;
    let mut a = join(&node, "r", "a").await;
    let mut c = ClientConfig::new(ws_url(&node), token("r", "b", true, true));
    c.relay = Some(RelayConfig::FromServer);
    let mut b = Client::connect(c).await.expect("relayed joins");
    let bsid = b.participant.sid.clone();
    let asid = a.participant.sid.clone();
    a.wait_until("a hears b", MEDIA_TIMEOUT, |r| {
        r.track_of(&bsid, TrackKind::Audio)
            .is_some_and(|t| t.audio_frames_decoded > 20)
    })
    .await
    .unwrap();
    b.wait_until("b hears a", MEDIA_TIMEOUT, |r| {
        r.track_of(&asid, TrackKind::Audio)
            .is_some_and(|t| t.audio_frames_decoded > 20)
    })
    .await
    .unwrap();
    let m = node.turn.as_ref().unwrap();
    let _ = m;
    let text = moien::metrics::render(&node.registry).unwrap();
    for l in text.lines().filter(|l| {
        l.starts_with("moien_turn_relayed_packets_total")
            || l.starts_with("moien_turn_allocations_active")
    }) {
        println!("{l}");
    }
    b.leave().await.unwrap();
    a.leave().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = moien::metrics::render(&node.registry).unwrap();
    for l in text
        .lines()
        .filter(|l| l.starts_with("moien_turn_allocations_active"))
    {
        println!("after {l}");
    }
    node.shutdown().await;
}
