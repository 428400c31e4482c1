//! The `/rtc` WebSocket: one task per participant connection that authenticates the `join` (or
//! `resume`), relays requests to the media plane and its events back, and, when the socket ends,
//! leaves the room (the client said so) or detaches from it for the resume window (the
//! connection dropped; the client may come back with `resume`).

use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use moien_protocol::{
    ClientMessage, ErrorCode, LeaveReason, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, ServerMessage,
};
use moien_sfu::{Joined, Offer, ParticipantKind, ParticipantRef, ParticipantSpec};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::auth::{self, AccessGrants};
use crate::limits::Bucket;
use crate::metrics::SignalingMetrics;
use crate::{AppState, ClientAddr, resume, whip};

/// Hard ceiling for one frame or message at the WebSocket layer; anything between
/// [`MAX_MESSAGE_BYTES`] and this is read, then refused with close code 1009.
const WS_HARD_LIMIT: usize = 1024 * 1024;
/// Initial read buffer per connection (it grows for a larger message); tungstenite's 128 KiB
/// default was a tenth of a participant's memory on a node.
const WS_READ_BUFFER: usize = 8 * 1024;
/// How long a closed session waits for the client's close frame before dropping the connection.
const LINGER: Duration = Duration::from_secs(2);

pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    headers: HeaderMap,
    addr: Option<Extension<ConnectInfo<ClientAddr>>>,
) -> Response {
    if *state.closing.borrow() {
        return whip::error(ErrorCode::Unavailable, "the server is shutting down");
    }
    // Browsers say where the page came from: only our own pages and configured origins.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if !crate::origin_allowed(&state.config, origin, host) {
            return whip::error(ErrorCode::Forbidden, "pages of this origin may not connect");
        }
    }
    if whip::rate_limited(&state, &addr, &headers) {
        return whip::error(
            ErrorCode::RateLimited,
            "too many connections from this address",
        );
    }
    ws.max_message_size(WS_HARD_LIMIT)
        .max_frame_size(WS_HARD_LIMIT)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| session(socket, state))
}

/// What came off the socket.
enum Incoming {
    Message(ClientMessage),
    /// Not JSON or not a known message.
    Bad(String),
    TooBig,
    /// The socket ended, with the close code if the client sent a close frame.
    Closed(Option<u16>),
}

/// Close codes with which a client ends its session on purpose (leave), rather than losing it.
fn deliberate(code: Option<u16>) -> bool {
    matches!(code, Some(CLOSE_NORMAL | CLOSE_GOING_AWAY))
}

async fn next(stream: &mut Stream) -> Incoming {
    loop {
        match stream.next().await {
            None => return Incoming::Closed(None),
            Some(Err(e)) => {
                let text = e.to_string();
                // tungstenite reports its own size limit as a capacity error.
                return if text.contains("too long") || text.contains("Space limit") {
                    Incoming::TooBig
                } else {
                    Incoming::Closed(None)
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
            Some(Ok(Message::Close(frame))) => {
                return Incoming::Closed(Some(frame.map_or(1005, |f| f.code)));
            }
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

/// A participant session on this socket: who, and what it may do.
struct Ctx {
    me: ParticipantRef,
    identity: String,
    grants: AccessGrants,
    /// The detach/resume generation this connection started with.
    generation: u64,
}

async fn session(socket: WebSocket, state: AppState) {
    let (mut sink, mut stream) = socket.split();
    converse(&mut sink, &mut stream, state).await;
    linger(&mut stream).await;
}

/// Reads until the client's close frame (the reply to ours) or the end of the connection, for a
/// short while. Dropping a TCP connection with unread data in it makes the kernel reset it, and
/// a reset can discard what the client had not read yet: the last `leave` and our close frame.
async fn linger(stream: &mut Stream) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn converse(sink: &mut Sink, stream: &mut Stream, state: AppState) {
    let metrics = state.metrics.clone();
    let _open = metrics.websocket_opened();
    let _tracked = state.sessions.open();
    let join_timeout = state.config.join_timeout;
    let first = match tokio::time::timeout(join_timeout, next(stream)).await {
        Ok(m) => m,
        Err(_) => {
            fail(
                sink,
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
        Incoming::TooBig | Incoming::Closed(_) => {}
    }
    let (events_tx, mut events) = mpsc::channel(state.config.event_queue);
    let started = match first {
        Incoming::Message(ClientMessage::Join {
            version,
            token,
            room,
        }) => join(&state, sink, version, &token, room, events_tx).await,
        Incoming::Message(ClientMessage::Resume { version, token }) => {
            resume(&state, sink, version, &token, events_tx).await
        }
        Incoming::Message(_) => {
            fail(
                sink,
                &metrics,
                ErrorCode::InvalidState,
                "join first",
                CLOSE_POLICY,
            )
            .await;
            return;
        }
        Incoming::Bad(e) => {
            fail(sink, &metrics, ErrorCode::BadRequest, e, CLOSE_POLICY).await;
            return;
        }
        Incoming::TooBig => {
            fail(
                sink,
                &metrics,
                ErrorCode::TooLarge,
                "message over 64 KiB",
                CLOSE_TOO_BIG,
            )
            .await;
            return;
        }
        Incoming::Closed(_) => return,
    };
    let Some((ctx, hello)) = started else {
        return;
    };
    if !send(sink, &metrics, &hello).await {
        // It never got its resume token: nothing can come back.
        let _ = state.media.leave(&ctx.me, LeaveReason::ClientRequest).await;
        state.slots.forget(&ctx.me.sid);
        return;
    }
    match run(&state, &ctx, sink, stream, &mut events).await {
        End::Left | End::Removed => state.slots.forget(&ctx.me.sid),
        End::Dropped => detach(&state, &ctx).await,
        End::Shutdown => {
            let reason = LeaveReason::ServerShutdown;
            send(sink, &metrics, &ServerMessage::Leave { reason }).await;
            close(sink, CLOSE_GOING_AWAY, "server shutting down").await;
            let _ = state.media.leave(&ctx.me, reason).await;
            state.slots.forget(&ctx.me.sid);
        }
    }
}

/// Refuses a session start whose protocol version is not ours.
async fn check_version(sink: &mut Sink, metrics: &SignalingMetrics, version: u32) -> bool {
    if version == PROTOCOL_VERSION {
        return true;
    }
    let msg = format!("this server speaks protocol version {PROTOCOL_VERSION}");
    fail(
        sink,
        metrics,
        ErrorCode::UnsupportedVersion,
        msg,
        CLOSE_POLICY,
    )
    .await;
    false
}

/// A resume token for the session, when resumption is on.
fn resume_token(state: &AppState, ctx: &Ctx) -> Option<String> {
    if state.config.resume_window.is_zero() {
        return None;
    }
    resume::mint(
        &state.keys,
        &resume::ResumeGrant {
            identity: &ctx.identity,
            room: &ctx.me.room,
            sid: &ctx.me.sid,
            grants: &ctx.grants,
        },
        state.config.resume_token_ttl,
    )
}

fn hello(state: &AppState, ctx: &Ctx, joined: Joined) -> ServerMessage {
    ServerMessage::Joined {
        version: PROTOCOL_VERSION,
        room: ctx.me.room.clone(),
        participant: joined.participant,
        participants: joined.others,
        ice_servers: state.ice_servers(&ctx.identity),
        resume_token: resume_token(state, ctx),
    }
}

/// `join`: checks the token and its grants, adds the participant.
async fn join(
    state: &AppState,
    sink: &mut Sink,
    version: u32,
    token: &str,
    room: Option<String>,
    events: mpsc::Sender<ServerMessage>,
) -> Option<(Ctx, ServerMessage)> {
    let metrics = &state.metrics;
    if !check_version(sink, metrics, version).await {
        return None;
    }
    let claims = match state.keys.verify(token) {
        Ok(c) => c,
        Err(e) => {
            debug!(reason = e.reason(), "join refused");
            metrics.auth_failure(e.reason());
            fail(
                sink,
                metrics,
                ErrorCode::Unauthorized,
                e.to_string(),
                CLOSE_POLICY,
            )
            .await;
            return None;
        }
    };
    if room.as_deref().is_some_and(|r| r != claims.room) {
        metrics.auth_failure("wrong_room");
        let msg = "the token is for another room";
        fail(sink, metrics, ErrorCode::Forbidden, msg, CLOSE_POLICY).await;
        return None;
    }
    if !claims.grants.join || claims.room == auth::ANY_ROOM {
        metrics.auth_failure("no_grant");
        let msg = "the token does not grant joining a room";
        fail(sink, metrics, ErrorCode::Forbidden, msg, CLOSE_POLICY).await;
        return None;
    }
    if !state.limits.join_per_identity.allow(&claims.sub) {
        let msg = "this identity joins too often";
        fail(sink, metrics, ErrorCode::RateLimited, msg, CLOSE_POLICY).await;
        return None;
    }
    let cap = state.rooms.max_participants(&claims.room);
    let spec = ParticipantSpec {
        identity: claims.sub.clone(),
        name: claims.name.clone(),
        room: claims.room.clone(),
        kind: ParticipantKind::Regular,
        can_publish: claims.grants.publish,
        can_subscribe: claims.grants.subscribe,
        can_publish_data: claims.grants.can_publish_data(),
        hidden: claims.grants.hidden,
        metadata: claims.metadata.clone(),
        max_participants: (cap > 0).then_some(cap),
    };
    let (me, joined) = match state.media.join(spec, Some(events), None).await {
        Ok(j) => j,
        Err(e) => {
            fail(sink, metrics, e.code(), e.to_string(), CLOSE_GOING_AWAY).await;
            return None;
        }
    };
    metrics.session("websocket");
    let ctx = Ctx {
        me,
        identity: claims.sub,
        grants: claims.grants,
        generation: 0,
    };
    let hello = hello(state, &ctx, joined);
    Some((ctx, hello))
}

/// `resume`: the same participant on a new socket, within its resume window.
async fn resume(
    state: &AppState,
    sink: &mut Sink,
    version: u32,
    token: &str,
    events: mpsc::Sender<ServerMessage>,
) -> Option<(Ctx, ServerMessage)> {
    let metrics = &state.metrics;
    if !check_version(sink, metrics, version).await {
        return None;
    }
    let claims = match resume::verify(&state.keys, token) {
        Ok(c) => c,
        Err(e) => {
            debug!(reason = e.reason(), "resume refused");
            metrics.auth_failure(e.reason());
            fail(
                sink,
                metrics,
                ErrorCode::Unauthorized,
                e.to_string(),
                CLOSE_POLICY,
            )
            .await;
            return None;
        }
    };
    let me = ParticipantRef {
        room: claims.room,
        sid: claims.sid,
    };
    let slot = state.slots.slot(&me.sid);
    let mut slot = slot.lock().await;
    let joined = match state.media.resume(&me, events).await {
        Ok(j) => j,
        Err(e) => {
            drop(slot);
            state.slots.forget(&me.sid);
            debug!("resume of a gone session: {e}");
            let msg = "the session is gone (resume window passed?): join again";
            fail(sink, metrics, ErrorCode::NotFound, msg, CLOSE_NORMAL).await;
            return None;
        }
    };
    slot.generation += 1;
    slot.detached_at = None;
    let ctx = Ctx {
        me,
        identity: claims.sub,
        grants: claims.grants,
        generation: slot.generation,
    };
    drop(slot);
    metrics.session("websocket");
    let hello = hello(state, &ctx, joined);
    Some((ctx, hello))
}

/// The connection dropped: keep the participant for the resume window (unless a newer connection
/// of it already resumed, or resumption is off).
async fn detach(state: &AppState, ctx: &Ctx) {
    let window = state.config.resume_window;
    if window.is_zero() {
        let _ = state.media.leave(&ctx.me, LeaveReason::ClientRequest).await;
        state.slots.forget(&ctx.me.sid);
        return;
    }
    let slot = state.slots.slot(&ctx.me.sid);
    let mut slot = slot.lock().await;
    if slot.generation != ctx.generation {
        return;
    }
    if state.media.detach(&ctx.me, window).await.is_ok() {
        slot.detached_at = Some(Instant::now());
    }
}

/// How a session's socket loop ended.
enum End {
    /// The client left (`leave`, or a deliberate close); it is out of the room.
    Left,
    /// The media plane removed the participant (it said why).
    Removed,
    /// The connection dropped or went silent: resumable.
    Dropped,
    /// The server is shutting down.
    Shutdown,
}

/// Relays until the session ends.
async fn run(
    state: &AppState,
    ctx: &Ctx,
    sink: &mut Sink,
    stream: &mut Stream,
    events: &mut mpsc::Receiver<ServerMessage>,
) -> End {
    // A client that neither pings nor sends anything for this long is gone.
    let idle = state.config.idle_timeout;
    let me = &ctx.me;
    let mut closing = state.closing.clone();
    let (rate, burst) = (state.limits.message_rate, state.limits.message_burst);
    let mut bucket = Bucket::full(burst, Instant::now());
    // Fresh resume tokens before the current one expires.
    let refresh = (state.config.resume_token_ttl / 2).max(Duration::from_secs(1));
    let mut refresh_timer =
        tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
    loop {
        tokio::select! {
            _ = crate::stopped(&mut closing) => return End::Shutdown,
            _ = refresh_timer.tick() => {
                if let Some(token) = resume_token(state, ctx)
                    && !send(sink, &state.metrics, &ServerMessage::ResumeToken { token }).await
                {
                    return End::Dropped;
                }
            }
            ev = events.recv() => {
                let Some(ev) = ev else {
                    // The media plane removed us (and said why in a `leave` first), or a newer
                    // connection of this participant resumed it.
                    close(sink, CLOSE_NORMAL, "removed").await;
                    return End::Removed;
                };
                let last = matches!(ev, ServerMessage::Leave { .. });
                if !send(sink, &state.metrics, &ev).await {
                    return if last { End::Removed } else { End::Dropped };
                }
                if last {
                    close(sink, CLOSE_NORMAL, "removed").await;
                    return End::Removed;
                }
            }
            incoming = tokio::time::timeout(idle, next(stream)) => {
                let Ok(incoming) = incoming else {
                    close(sink, CLOSE_GOING_AWAY, "idle").await;
                    return End::Dropped;
                };
                match incoming {
                    Incoming::Closed(code) if deliberate(code) => {
                        let _ = state.media.leave(me, LeaveReason::ClientRequest).await;
                        return End::Left;
                    }
                    Incoming::Closed(_) => return End::Dropped,
                    Incoming::TooBig => {
                        send(sink, &state.metrics, &ServerMessage::error(ErrorCode::TooLarge, "message over 64 KiB")).await;
                        close(sink, CLOSE_TOO_BIG, "message too big").await;
                        let _ = state.media.leave(me, LeaveReason::ClientRequest).await;
                        return End::Left;
                    }
                    Incoming::Bad(e) => {
                        state.metrics.invalid_message_in();
                        if !send(sink, &state.metrics, &ServerMessage::error(ErrorCode::BadRequest, e)).await {
                            return End::Dropped;
                        }
                    }
                    Incoming::Message(m) => {
                        state.metrics.message_in(&m);
                        if rate > 0.0 && !bucket.take(rate, burst, Instant::now()) {
                            let refusal = ServerMessage::error(ErrorCode::RateLimited, "too many messages");
                            if !send(sink, &state.metrics, &refusal).await {
                                return End::Dropped;
                            }
                            continue;
                        }
                        match handle(state, ctx, m).await {
                            Reply::None => {}
                            Reply::Send(msg) => {
                                if !send(sink, &state.metrics, &msg).await {
                                    return End::Dropped;
                                }
                            }
                            Reply::Leave => {
                                let _ = state.media.leave(me, LeaveReason::ClientRequest).await;
                                close(sink, CLOSE_NORMAL, "left").await;
                                return End::Left;
                            }
                        }
                    }
                }
            }
        }
    }
}

// One short-lived value per client message: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Reply {
    None,
    Send(ServerMessage),
    Leave,
}

async fn handle(state: &AppState, ctx: &Ctx, msg: ClientMessage) -> Reply {
    let media = &state.media;
    let me = &ctx.me;
    match msg {
        ClientMessage::Join { .. } | ClientMessage::Resume { .. } => Reply::Send(
            ServerMessage::error(ErrorCode::InvalidState, "already joined"),
        ),
        ClientMessage::PublishOffer { sdp, tracks } => {
            if let Some(source) = whip::offered_sources(&sdp, &tracks)
                .into_iter()
                .find(|s| ctx.grants.publish && !ctx.grants.allows_source(*s))
            {
                state.metrics.auth_failure("no_grant");
                return Reply::Send(ServerMessage::error(
                    ErrorCode::Forbidden,
                    format!("the token does not allow publishing {source:?} tracks"),
                ));
            }
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
