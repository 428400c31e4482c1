//! The `/rtc` WebSocket: one task per participant that authenticates the `join`, relays requests
//! to the media plane and its events back, and leaves the room when the socket ends.

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use moien_protocol::{
    ClientMessage, ErrorCode, LeaveReason, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, ServerMessage,
};
use moien_sfu::{Offer, ParticipantKind, ParticipantRef, ParticipantSpec};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::AppState;
use crate::auth;
use crate::metrics::SignalingMetrics;

/// Hard ceiling for one frame or message at the WebSocket layer; anything between
/// [`MAX_MESSAGE_BYTES`] and this is read, then refused with close code 1009.
const WS_HARD_LIMIT: usize = 1024 * 1024;

pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

pub async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    ws.max_message_size(WS_HARD_LIMIT)
        .max_frame_size(WS_HARD_LIMIT)
        .on_upgrade(move |socket| session(socket, state))
}

/// What came off the socket.
enum Incoming {
    Message(ClientMessage),
    /// Not JSON or not a known message.
    Bad(String),
    TooBig,
    Closed,
}

async fn next(stream: &mut Stream) -> Incoming {
    loop {
        match stream.next().await {
            None => return Incoming::Closed,
            Some(Err(e)) => {
                let text = e.to_string();
                // tungstenite reports its own size limit as a capacity error.
                return if text.contains("too long") || text.contains("Space limit") {
                    Incoming::TooBig
                } else {
                    Incoming::Closed
                };
            }
            Some(Ok(Message::Text(t))) => {
                if t.len() > MAX_MESSAGE_BYTES {
                    return Incoming::TooBig;
                }
                return match serde_json::from_str::<ClientMessage>(&t) {
                    Ok(m) => Incoming::Message(m),
                    Err(e) => Incoming::Bad(e.to_string()),
                };
            }
            Some(Ok(Message::Binary(b))) => {
                if b.len() > MAX_MESSAGE_BYTES {
                    return Incoming::TooBig;
                }
                return Incoming::Bad("binary messages are not part of the protocol".into());
            }
            Some(Ok(Message::Close(_))) => return Incoming::Closed,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
        }
    }
}

async fn send(sink: &mut Sink, metrics: &SignalingMetrics, msg: &ServerMessage) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => {
            metrics.message_out(&text);
            sink.send(Message::Text(text.into())).await.is_ok()
        }
        Err(_) => false,
    }
}

async fn close(sink: &mut Sink, code: u16, reason: &'static str) {
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
    let _ = sink.close().await;
}

async fn fail(
    sink: &mut Sink,
    metrics: &SignalingMetrics,
    code: ErrorCode,
    message: impl Into<String>,
    close_code: u16,
) {
    send(sink, metrics, &ServerMessage::error(code, message)).await;
    close(sink, close_code, code.as_str()).await;
}

async fn session(socket: WebSocket, state: AppState) {
    let metrics = state.metrics.clone();
    let _open = metrics.websocket_opened();
    let (mut sink, mut stream) = socket.split();
    let join_timeout = state.config.join_timeout;
    let first = match tokio::time::timeout(join_timeout, next(&mut stream)).await {
        Ok(m) => m,
        Err(_) => {
            fail(
                &mut sink,
                &metrics,
                ErrorCode::InvalidState,
                "no join in time",
                CLOSE_POLICY,
            )
            .await;
            return;
        }
    };
    match &first {
        Incoming::Message(m) => metrics.message_in(m),
        Incoming::Bad(_) => metrics.invalid_message_in(),
        Incoming::TooBig | Incoming::Closed => {}
    }
    let (version, token, room) = match first {
        Incoming::Message(ClientMessage::Join {
            version,
            token,
            room,
        }) => (version, token, room),
        Incoming::Message(_) => {
            fail(
                &mut sink,
                &metrics,
                ErrorCode::InvalidState,
                "join first",
                CLOSE_POLICY,
            )
            .await;
            return;
        }
        Incoming::Bad(e) => {
            fail(&mut sink, &metrics, ErrorCode::BadRequest, e, CLOSE_POLICY).await;
            return;
        }
        Incoming::TooBig => {
            fail(
                &mut sink,
                &metrics,
                ErrorCode::TooLarge,
                "message over 64 KiB",
                CLOSE_TOO_BIG,
            )
            .await;
            return;
        }
        Incoming::Closed => return,
    };
    if version != PROTOCOL_VERSION {
        let msg = format!("this server speaks protocol version {PROTOCOL_VERSION}");
        fail(
            &mut sink,
            &metrics,
            ErrorCode::UnsupportedVersion,
            msg,
            CLOSE_POLICY,
        )
        .await;
        return;
    }
    let claims = match auth::verify(&state.config.secret, &token) {
        Ok(c) => c,
        Err(e) => {
            debug!(reason = e.reason(), "join refused");
            metrics.auth_failure(e.reason());
            fail(
                &mut sink,
                &metrics,
                ErrorCode::Unauthorized,
                e.to_string(),
                CLOSE_POLICY,
            )
            .await;
            return;
        }
    };
    if room.as_deref().is_some_and(|r| r != claims.room) {
        metrics.auth_failure("wrong_room");
        let msg = "the token is for another room";
        fail(&mut sink, &metrics, ErrorCode::Forbidden, msg, CLOSE_POLICY).await;
        return;
    }
    let (events_tx, mut events) = mpsc::channel(state.config.event_queue);
    let spec = ParticipantSpec {
        identity: claims.sub.clone(),
        name: claims.name.clone(),
        room: claims.room.clone(),
        kind: ParticipantKind::Regular,
        can_publish: claims.grants.publish,
        can_subscribe: claims.grants.subscribe,
        can_publish_data: claims.grants.publish,
        hidden: false,
        metadata: String::new(),
        max_participants: None,
    };
    let (me, joined) = match state.media.join(spec, Some(events_tx), None).await {
        Ok(j) => j,
        Err(e) => {
            fail(
                &mut sink,
                &metrics,
                e.code(),
                e.to_string(),
                CLOSE_GOING_AWAY,
            )
            .await;
            return;
        }
    };
    let hello = ServerMessage::Joined {
        version: PROTOCOL_VERSION,
        room: claims.room.clone(),
        participant: joined.participant,
        participants: joined.others,
        ice_servers: state.ice_servers(&claims.sub),
    };
    metrics.session("websocket");
    if !send(&mut sink, &metrics, &hello).await {
        let _ = state.media.leave(&me, LeaveReason::ClientRequest).await;
        return;
    }
    let ended_by_server = run(&state, &me, &mut sink, &mut stream, &mut events).await;
    if !ended_by_server {
        let _ = state.media.leave(&me, LeaveReason::ClientRequest).await;
    }
}

/// Relays until the client leaves (returns false) or the server ends the session (true).
async fn run(
    state: &AppState,
    me: &ParticipantRef,
    sink: &mut Sink,
    stream: &mut Stream,
    events: &mut mpsc::Receiver<ServerMessage>,
) -> bool {
    // A client that neither pings nor sends anything for this long is gone.
    let idle = state.config.idle_timeout;
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else {
                    // The media plane removed us (and said why in a `leave` first).
                    close(sink, CLOSE_NORMAL, "removed").await;
                    return true;
                };
                let last = matches!(ev, ServerMessage::Leave { .. });
                if !send(sink, &state.metrics, &ev).await {
                    return false;
                }
                if last {
                    close(sink, CLOSE_NORMAL, "removed").await;
                    return true;
                }
            }
            incoming = tokio::time::timeout(idle, next(stream)) => {
                let Ok(incoming) = incoming else {
                    close(sink, CLOSE_GOING_AWAY, "idle").await;
                    return false;
                };
                match incoming {
                    Incoming::Closed => return false,
                    Incoming::TooBig => {
                        send(sink, &state.metrics, &ServerMessage::error(ErrorCode::TooLarge, "message over 64 KiB")).await;
                        close(sink, CLOSE_TOO_BIG, "message too big").await;
                        return false;
                    }
                    Incoming::Bad(e) => {
                        state.metrics.invalid_message_in();
                        if !send(sink, &state.metrics, &ServerMessage::error(ErrorCode::BadRequest, e)).await {
                            return false;
                        }
                    }
                    Incoming::Message(m) => {
                        state.metrics.message_in(&m);
                        match handle(state, me, m).await {
                            Reply::None => {}
                            Reply::Send(msg) => {
                                if !send(sink, &state.metrics, &msg).await {
                                    return false;
                                }
                            }
                            Reply::Leave => {
                                let _ = state.media.leave(me, LeaveReason::ClientRequest).await;
                                close(sink, CLOSE_NORMAL, "left").await;
                                return true;
                            }
                        }
                    }
                }
            }
        }
    }
}

enum Reply {
    None,
    Send(ServerMessage),
    Leave,
}

async fn handle(state: &AppState, me: &ParticipantRef, msg: ClientMessage) -> Reply {
    let media = &state.media;
    match msg {
        ClientMessage::Join { .. } => Reply::Send(ServerMessage::error(
            ErrorCode::InvalidState,
            "already joined",
        )),
        ClientMessage::PublishOffer { sdp, tracks } => {
            match media.offer(me, Offer { sdp, tracks }).await {
                Ok(a) => Reply::Send(ServerMessage::PublishAnswer {
                    sdp: a.sdp,
                    tracks: a.tracks,
                }),
                Err(e) => {
                    debug!("publish offer refused: {e}");
                    Reply::Send(ServerMessage::error(e.code(), e.to_string()))
                }
            }
        }
        ClientMessage::SubscribeAnswer { sdp } => match media.subscribe_answer(me, sdp).await {
            Ok(()) => Reply::None,
            Err(e) => Reply::Send(ServerMessage::error(e.code(), e.to_string())),
        },
        ClientMessage::Candidate { role, candidate } => {
            if candidate.len() > 1024 {
                return Reply::Send(ServerMessage::error(
                    ErrorCode::BadRequest,
                    "candidate too long",
                ));
            }
            if let Err(e) = media.candidate(me, role, candidate).await {
                warn!("candidate: {e}");
            }
            Reply::None
        }
        ClientMessage::Mute { track_sid, muted } => match media.mute(me, track_sid, muted).await {
            Ok(()) => Reply::None,
            Err(e) => Reply::Send(ServerMessage::error(e.code(), e.to_string())),
        },
        ClientMessage::UpdateSubscription {
            track_sid,
            paused,
            max_layer,
            max_temporal,
            pinned,
        } => {
            let prefs = moien_sfu::SubscriptionPrefs {
                paused,
                max_layer,
                max_temporal,
                pinned,
            };
            match media.update_subscription(me, track_sid, prefs).await {
                Ok(()) => Reply::None,
                Err(e) => Reply::Send(ServerMessage::error(e.code(), e.to_string())),
            }
        }
        ClientMessage::Ping { timestamp } => Reply::Send(ServerMessage::Pong { timestamp }),
        ClientMessage::Leave => Reply::Leave,
    }
}
