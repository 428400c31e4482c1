//! WHIP (publish) and WHEP (play) with RFC 9725 conventions: `POST` an offer, get `201 Created`
//! with the answer and a session `Location`; `DELETE` that location to leave.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use moien_protocol::{ErrorCode, LeaveReason, PublishTrack, TrackKind, TrackSource};
use moien_sfu::{Offer, ParticipantKind, ParticipantRef, ParticipantSpec, SfuError};
use str0m::change::SdpOffer;
use tracing::debug;

use crate::auth::AccessClaims;
use crate::{AppState, ClientAddr};

/// A JSON error body with the protocol's stable code.
pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({
        "code": code.as_str(),
        "status": code.status(),
        "message": message.into(),
    });
    (status, axum::Json(body)).into_response()
}

fn sfu_error(e: SfuError) -> Response {
    error(e.code(), e.to_string())
}

/// A refused request, rendered by [`IntoResponse`] (kept small: handlers return it in `Err`).
pub enum Refusal {
    Code(ErrorCode, String),
    Unauthorized(String),
    UnsupportedMediaType,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Code(code, message) => error(code, message),
            Refusal::Unauthorized(message) => {
                let mut r = error(ErrorCode::Unauthorized, message);
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            Refusal::UnsupportedMediaType => {
                let body = serde_json::json!({
                    "code": "unsupported_media_type",
                    "status": 415,
                    "message": "Content-Type must be application/sdp",
                });
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, axum::Json(body)).into_response()
            }
        }
    }
}

/// The sources of the tracks an offer would publish: every m-line the client sends on, with the
/// source its description gives (default: microphone for audio, camera for video).
pub fn offered_sources(sdp: &str, described: &[PublishTrack]) -> Vec<TrackSource> {
    let mut out = Vec::new();
    // One m= section at a time: kind, whether it sends, its mid.
    let mut section: Option<(TrackKind, bool, Option<String>)> = None;
    let finish = |sec: Option<(TrackKind, bool, Option<String>)>, out: &mut Vec<TrackSource>| {
        if let Some((kind, sending, mid)) = sec
            && sending
        {
            let source = described
                .iter()
                .find(|d| Some(&d.mid) == mid.as_ref())
                .and_then(|d| d.source)
                .unwrap_or_else(|| TrackSource::default_for(kind));
            out.push(source);
        }
    };
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            finish(section.take(), &mut out);
            let mut parts = m.split_whitespace();
            let kind = match parts.next() {
                Some("audio") => Some(TrackKind::Audio),
                Some("video") => Some(TrackKind::Video),
                _ => None,
            };
            // Port 0 rejects the m-line.
            let open = parts.next().is_some_and(|p| p != "0");
            section = kind.map(|k| (k, open, None));
        } else if let Some((_, sending, mid)) = section.as_mut() {
            if let Some(v) = line.strip_prefix("a=mid:") {
                *mid = Some(v.trim().to_string());
            } else if line == "a=recvonly" || line == "a=inactive" {
                *sending = false;
            }
        }
    }
    finish(section.take(), &mut out);
    out
}

/// Verifies the bearer token and that it is for `room`.
fn authorize(state: &AppState, headers: &HeaderMap, room: &str) -> Result<AccessClaims, Refusal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let claims = state.keys.verify(token.trim()).map_err(|e| {
        debug!(reason = e.reason(), "WHIP/WHEP token refused");
        state.metrics.auth_failure(e.reason());
        Refusal::Unauthorized(e.to_string())
    })?;
    if claims.room != room {
        state.metrics.auth_failure("wrong_room");
        let msg = "the token is for another room".to_string();
        return Err(Refusal::Code(ErrorCode::Forbidden, msg));
    }
    if !claims.grants.join {
        state.metrics.auth_failure("no_grant");
        let msg = "the token does not grant joining a room".to_string();
        return Err(Refusal::Code(ErrorCode::Forbidden, msg));
    }
    Ok(claims)
}

/// The per-address limit of session starts (`/rtc`, WHIP, WHEP).
pub(crate) fn rate_limited(
    state: &AppState,
    addr: &Option<Extension<ConnectInfo<ClientAddr>>>,
    headers: &HeaderMap,
) -> bool {
    match addr {
        Some(Extension(ConnectInfo(ClientAddr(a)))) => {
            let ip = crate::client_ip(&state.config, a.ip(), headers);
            !state.limits.join_per_ip.allow(&ip)
        }
        None => false,
    }
}

/// The offer body: `application/sdp`, parseable, with at least one m-line.
fn read_offer(headers: &HeaderMap, body: &Bytes) -> Result<String, Refusal> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/sdp")
    {
        return Err(Refusal::UnsupportedMediaType);
    }
    let sdp = std::str::from_utf8(body)
        .map_err(|_| Refusal::Code(ErrorCode::InvalidSdp, "the SDP is not UTF-8".into()))?;
    match SdpOffer::from_sdp_string(sdp) {
        Ok(_) => Ok(sdp.to_string()),
        Err(e) => {
            // The parser's message names memory offsets: log it, answer plainly.
            debug!("malformed SDP: {e}");
            Err(Refusal::Code(ErrorCode::InvalidSdp, "malformed SDP".into()))
        }
    }
}

fn created(answer: String, location: String, ice: &[moien_protocol::IceServer]) -> Response {
    let mut r = (StatusCode::CREATED, answer).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    // RFC 9725 section 4.6: the ICE servers the client may use, as Link headers.
    for server in ice {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(u), Some(c)) = (&server.username, &server.credential) {
                link.push_str(&format!(
                    "; username=\"{u}\"; credential=\"{c}\"; credential-type=\"password\""
                ));
            }
            if let Ok(v) = HeaderValue::from_str(&link) {
                h.append(header::LINK, v);
            }
        }
    }
    r
}

pub async fn whip_post(
    State(state): State<AppState>,
    Path(room): Path<String>,
    addr: Option<Extension<ConnectInfo<ClientAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if rate_limited(&state, &addr, &headers) {
        return error(
            ErrorCode::RateLimited,
            "too many sessions from this address",
        );
    }
    let claims = match authorize(&state, &headers, &room) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if !claims.grants.publish {
        state.metrics.auth_failure("no_grant");
        return error(ErrorCode::Forbidden, "the token has no publish grant");
    }
    let sdp = match read_offer(&headers, &body) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    if let Some(source) = offered_sources(&sdp, &[])
        .into_iter()
        .find(|s| !claims.grants.allows_source(*s))
    {
        state.metrics.auth_failure("no_grant");
        let msg = format!("the token does not allow publishing {source:?} tracks");
        return error(ErrorCode::Forbidden, msg);
    }
    let ice = state.ice_servers(&claims.sub);
    let cap = state.rooms.max_participants(&room);
    let spec = ParticipantSpec {
        identity: claims.sub,
        name: claims.name,
        room: room.clone(),
        kind: ParticipantKind::Whip,
        can_publish: true,
        can_subscribe: false,
        can_publish_data: false,
        hidden: claims.grants.hidden,
        metadata: claims.metadata,
        max_participants: (cap > 0).then_some(cap),
    };
    let offer = Offer {
        sdp,
        tracks: Vec::new(),
    };
    match state.media.join(spec, None, Some(offer)).await {
        Ok((me, joined)) => {
            state.metrics.session("whip");
            let answer = joined.answer.map(|a| a.sdp).unwrap_or_default();
            created(answer, format!("/whip/{}/{}", room, me.sid), &ice)
        }
        Err(e) => sfu_error(e),
    }
}

pub async fn whip_delete(
    State(state): State<AppState>,
    Path((room, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &room) {
        return r.into_response();
    }
    leave(&state, room, sid).await
}

pub async fn whep_post(
    State(state): State<AppState>,
    Path((room, identity)): Path<(String, String)>,
    addr: Option<Extension<ConnectInfo<ClientAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if rate_limited(&state, &addr, &headers) {
        return error(
            ErrorCode::RateLimited,
            "too many sessions from this address",
        );
    }
    let claims = match authorize(&state, &headers, &room) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if !claims.grants.subscribe {
        state.metrics.auth_failure("no_grant");
        return error(ErrorCode::Forbidden, "the token has no subscribe grant");
    }
    let sdp = match read_offer(&headers, &body) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let ice = state.ice_servers(&claims.sub);
    let spec = ParticipantSpec {
        identity: claims.sub,
        name: claims.name,
        room: room.clone(),
        kind: ParticipantKind::Whep {
            target_identity: identity.clone(),
        },
        can_publish: false,
        can_subscribe: true,
        can_publish_data: false,
        hidden: true,
        metadata: String::new(),
        max_participants: None,
    };
    let offer = Offer {
        sdp,
        tracks: Vec::new(),
    };
    match state.media.join(spec, None, Some(offer)).await {
        Ok((me, joined)) => {
            state.metrics.session("whep");
            let answer = joined.answer.map(|a| a.sdp).unwrap_or_default();
            created(
                answer,
                format!("/whep/{}/{}/{}", room, identity, me.sid),
                &ice,
            )
        }
        Err(e) => sfu_error(e),
    }
}

pub async fn whep_delete(
    State(state): State<AppState>,
    Path((room, _identity, sid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &room) {
        return r.into_response();
    }
    leave(&state, room, sid).await
}

async fn leave(state: &AppState, room: String, sid: String) -> Response {
    let me = ParticipantRef { room, sid };
    match state.media.leave(&me, LeaveReason::ClientRequest).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => sfu_error(e),
    }
}

/// Trickle ICE and ICE restarts over `PATCH` are not offered: the server is ICE-lite and its
/// answer carries every candidate it has (RFC 9725 §4.3.1 allows 405).
pub async fn patch() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "DELETE, OPTIONS")],
    )
        .into_response()
}

/// `OPTIONS` on the endpoint (`/whip/{room}`, `/whep/{room}/{identity}`).
pub async fn options() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, "POST, OPTIONS"),
            (
                header::HeaderName::from_static("accept-post"),
                "application/sdp",
            ),
        ],
    )
        .into_response()
}

/// `OPTIONS` on a session resource.
pub async fn resource_options() -> Response {
    (StatusCode::NO_CONTENT, [(header::ALLOW, "DELETE, OPTIONS")]).into_response()
}
