//! Calls that outlive a dead network, and the chat backend's view of calls: a participant whose
//! WebSocket and UDP path are cut resumes as itself (others see it reconnecting, never leaving),
//! and webhooks report a scripted call in order, signed, retried through a failing receiver,
//! without holding up media when the receiver hangs.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use moien_client::{Client, ClientConfig};
use moien_protocol::{ConnectionState, ServerMessage, TrackKind};
use moien_signaling::webhook::{self, EventKind, WebhookEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_participant_resumes_as_itself() {
    let node = start_node().await;
    let room = "tunnel";
    let mut alice = Client::connect_resumable(ClientConfig::new(
        ws_url(&node),
        token(room, "alice", true, true),
    ))
    .await
    .unwrap();
    let mut bob = join(&node, room, "bob").await;
    let (a, b) = (alice.participant.sid.clone(), bob.participant.sid.clone());
    let flowing = |sid: String| {
        move |r: &moien_client::Report| {
            [TrackKind::Audio, TrackKind::Video]
                .iter()
                .all(|k| r.track_of(&sid, *k).is_some_and(|t| t.packets > 20))
        }
    };
    bob.wait_until("bob receives alice", MEDIA_TIMEOUT, flowing(a.clone()))
        .await
        .unwrap();
    alice
        .wait_until("alice receives bob", MEDIA_TIMEOUT, flowing(b.clone()))
        .await
        .unwrap();
    let sids_before: Vec<String> = bob.report(|r| {
        let mut v: Vec<String> = r
            .tracks
            .iter()
            .filter(|(_, t)| t.participant_sid == a)
            .map(|(s, _)| s.clone())
            .collect();
        v.sort();
        v
    });

    // Five seconds without network.
    let cut = Duration::from_secs(5);
    alice.cut_network(cut).await.unwrap();
    let back = Instant::now() + cut;
    bob.wait_until("bob sees alice reconnecting", Duration::from_secs(5), |r| {
        r.messages.iter().any(|m| {
            matches!(m, ServerMessage::ParticipantConnection { participant_sid, state: ConnectionState::Reconnecting } if *participant_sid == a)
        })
    })
    .await
    .unwrap();

    // Media flows again within 2 s of the path returning, both ways.
    let since = |sid: String, kind: TrackKind| {
        move |r: &moien_client::Report| {
            r.track_of(&sid, kind)
                .and_then(|t| t.last_packet_at)
                .is_some_and(|t| t > back)
        }
    };
    let limit = cut + Duration::from_secs(2);
    bob.wait_until(
        "alice's video reaches bob again",
        limit,
        since(a.clone(), TrackKind::Video),
    )
    .await
    .unwrap();
    bob.wait_until(
        "alice's audio reaches bob again",
        Duration::from_secs(1),
        since(a.clone(), TrackKind::Audio),
    )
    .await
    .unwrap();
    alice
        .wait_until(
            "bob's media reaches alice again",
            Duration::from_secs(2),
            since(b.clone(), TrackKind::Video),
        )
        .await
        .unwrap();
    let after = Instant::now().saturating_duration_since(back);
    assert!(
        after < Duration::from_secs(3),
        "media back {after:?} after the path returned"
    );

    // Same participant, same tracks; bob saw it reconnect, never leave.
    alice
        .wait_until("alice resumed", Duration::from_secs(2), |r| {
            r.messages.iter().skip(1).any(
                |m| matches!(m, ServerMessage::Joined { participant, .. } if participant.sid == a),
            )
        })
        .await
        .unwrap();
    bob.wait_until("bob sees alice connected", Duration::from_secs(2), |r| {
        r.messages.iter().any(|m| {
            matches!(m, ServerMessage::ParticipantConnection { participant_sid, state: ConnectionState::Connected } if *participant_sid == a)
        })
    })
    .await
    .unwrap();
    bob.report(|r| {
        for m in &r.messages {
            assert!(
                !matches!(m, ServerMessage::ParticipantLeft { participant_sid, .. } if *participant_sid == a),
                "bob saw alice leave"
            );
            assert!(
                !matches!(m, ServerMessage::ParticipantJoined { participant } if participant.sid == a),
                "bob saw alice join again"
            );
        }
        let mut now: Vec<String> = r
            .tracks
            .iter()
            .filter(|(_, t)| t.participant_sid == a)
            .map(|(s, _)| s.clone())
            .collect();
        now.sort();
        assert_eq!(now, sids_before, "the same tracks");
    });
    alice.leave().await.unwrap();
    bob.leave().await.unwrap();
    node.shutdown().await;
}

/// What the test receiver does with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    Fail,
    Hang,
}

#[derive(Clone)]
struct Receiver {
    mode: Arc<Mutex<Mode>>,
    /// Failures still to give before accepting (Mode::Accept).
    failures: Arc<Mutex<u32>>,
    accepted: Arc<Mutex<Vec<WebhookEvent>>>,
    refused: Arc<Mutex<u32>>,
    bad_signatures: Arc<Mutex<u32>>,
}

async fn hook(
    axum::extract::State(r): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mode = *r.mode.lock().unwrap();
    if mode == Mode::Hang {
        std::future::pending::<()>().await;
    }
    let sig = headers
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !webhook::verify(SECRET, sig, &body, moien_signaling::auth::now_unix(), 300) {
        *r.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    {
        let mut f = r.failures.lock().unwrap();
        if mode == Mode::Fail || *f > 0 {
            *f = f.saturating_sub(1);
            *r.refused.lock().unwrap() += 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    let Ok(event) = serde_json::from_slice::<WebhookEvent>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut a = r.accepted.lock().unwrap();
    // Retries carry the same id: count each event once.
    if !a.iter().any(|e| e.id == event.id) {
        a.push(event);
    }
    StatusCode::OK
}

async fn start_receiver(
    mode: Mode,
    failures: u32,
) -> (Receiver, SocketAddr, tokio::task::JoinHandle<()>) {
    let r = Receiver {
        mode: Arc::new(Mutex::new(mode)),
        failures: Arc::new(Mutex::new(failures)),
        accepted: Default::default(),
        refused: Default::default(),
        bad_signatures: Default::default(),
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (r, addr, task)
}

async fn webhook_node(receiver: SocketAddr) -> moien::Node {
    start_node_with(|c| {
        c.webhooks.urls = vec![format!("http://{receiver}/hook")];
        c.webhooks.timeout = Duration::from_millis(500);
        c.webhooks.retry_initial = Duration::from_millis(100);
        c.webhooks.retry_max = Duration::from_millis(400);
        c.rooms.departure_timeout = Duration::from_millis(500);
    })
    .await
}

fn position(events: &[WebhookEvent], f: impl Fn(&WebhookEvent) -> bool) -> usize {
    events.iter().position(f).unwrap_or_else(|| {
        let kinds: Vec<_> = events.iter().map(|e| e.event).collect();
        panic!("event missing from {kinds:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_report_a_call_in_order_through_failures() {
    // The receiver fails the first deliveries: they are retried and arrive after it recovers.
    let (receiver, addr, task) = start_receiver(Mode::Accept, 4).await;
    let node = webhook_node(addr).await;
    let room = "hooked";
    let mut alice = join(&node, room, "alice").await;
    alice
        .wait_until("alice publishes", MEDIA_TIMEOUT, |r| {
            r.messages.iter().any(
                |m| matches!(m, ServerMessage::PublishAnswer { tracks, .. } if tracks.len() == 2),
            )
        })
        .await
        .unwrap();
    let mut bob = join(&node, room, "bob").await;
    bob.wait_until("bob receives alice", MEDIA_TIMEOUT, |r| {
        r.tracks.values().any(|t| t.packets > 10)
    })
    .await
    .unwrap();
    let (a, b) = (alice.participant.sid.clone(), bob.participant.sid.clone());
    bob.leave().await.unwrap();
    alice
        .wait_until("bob is gone", MEDIA_TIMEOUT, |r| {
            r.messages.iter().any(|m| matches!(m, ServerMessage::ParticipantLeft { participant_sid, .. } if *participant_sid == b))
        })
        .await
        .unwrap();
    alice.leave().await.unwrap();

    // Every event, once, in order, ending with room_finished after the departure timeout.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = receiver
            .accepted
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.event == EventKind::RoomFinished);
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "room_finished never arrived: {:?}",
            receiver
                .accepted
                .lock()
                .unwrap()
                .iter()
                .map(|e| e.event)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = receiver.accepted.lock().unwrap().clone();
    assert!(
        *receiver.refused.lock().unwrap() >= 4,
        "the failures happened"
    );
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    assert!(
        events.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "in order"
    );
    assert!(events.iter().all(|e| e.room.name == room));
    let sid = &events[0].room.sid;
    assert!(
        events.iter().all(|e| &e.room.sid == sid),
        "one room incarnation"
    );
    assert_eq!(events[0].event, EventKind::RoomStarted);
    assert_eq!(events.last().unwrap().event, EventKind::RoomFinished);
    let of = |kind: EventKind, who: &str| {
        let who = who.to_string();
        move |e: &WebhookEvent| {
            e.event == kind && e.participant.as_ref().is_some_and(|p| p.sid == who)
        }
    };
    for p in [&a, &b] {
        let joined = position(&events, of(EventKind::ParticipantJoined, p));
        let left = position(&events, of(EventKind::ParticipantLeft, p));
        let published: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| of(EventKind::TrackPublished, p)(e))
            .map(|(i, _)| i)
            .collect();
        let unpublished: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| of(EventKind::TrackUnpublished, p)(e))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            (published.len(), unpublished.len()),
            (2, 2),
            "two tracks each"
        );
        assert!(published.iter().all(|&i| joined < i && i < left));
        assert!(unpublished.iter().all(|&i| i < left));
        assert!(events[left].reason.is_some());
    }
    assert!(
        position(&events, of(EventKind::ParticipantLeft, &b))
            < position(&events, of(EventKind::ParticipantLeft, &a)),
        "bob left first"
    );
    node.shutdown().await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_does_not_hold_up_media() {
    let (receiver, addr, task) = start_receiver(Mode::Hang, 0).await;
    let node = webhook_node(addr).await;
    let mut alice = join(&node, "hang", "alice").await;
    let mut bob = join(&node, "hang", "bob").await;
    let (a, b) = (alice.participant.sid.clone(), bob.participant.sid.clone());
    for (client, other) in [(&mut alice, b.clone()), (&mut bob, a.clone())] {
        client
            .wait_until("media both ways", MEDIA_TIMEOUT, |r| {
                [TrackKind::Audio, TrackKind::Video]
                    .iter()
                    .all(|k| r.track_of(&other, *k).is_some_and(|t| t.packets > 50))
            })
            .await
            .unwrap();
    }
    // The receiver comes back: the queued events arrive, in order.
    *receiver.mode.lock().unwrap() = Mode::Accept;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = receiver
            .accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.event == EventKind::ParticipantJoined)
            .count();
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the queued events never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = receiver.accepted.lock().unwrap().clone();
    assert_eq!(events[0].event, EventKind::RoomStarted);
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    alice.leave().await.unwrap();
    bob.leave().await.unwrap();
    node.shutdown().await;
    task.abort();
}
