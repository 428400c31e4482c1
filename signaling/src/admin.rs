//! The room admin REST API under `/api/v1/`: rooms (create, list, get, delete), participants
//! (list, get, remove, update permissions or metadata), track mute and server data messages.
//!
//! Authentication: `Authorization: Bearer <access token>` with the `room_admin` grant. A token
//! whose `room` is `*` administers every room (and may list them); one naming a room administers
//! that room only. Anything else is `403 forbidden`; a missing or invalid token `401`.
//!
//! The OpenAPI 3 description at `/api/v1/openapi.json` is generated from these handlers and
//! types (utoipa), so it cannot drift from what the server does.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use moien_protocol::{ErrorCode, MAX_DATA_MESSAGE_BYTES, ParticipantInfo, TrackInfo};
use moien_sfu::{ParticipantUpdate, SfuError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::debug;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::auth::{self, AccessClaims};
use crate::rooms::{CreateError, RoomEntry, RoomOptions};
use crate::{AppState, ClientAddr};

/// Longest room name, identity or track sid in a path or body (characters).
const MAX_NAME_CHARS: usize = 128;
/// Longest timeout a room may set: 30 days.
const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

/// An error answer: the protocol's stable code and status, and a message for people.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Stable error code (`unauthorized`, `forbidden`, `not_found`, `bad_request`,
    /// `rate_limited`, ...): match on this.
    pub code: String,
    /// The HTTP status, repeated.
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code: code.as_str().to_string(),
            status: code.status(),
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<SfuError> for ApiError {
    fn from(e: SfuError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

/// A JSON body whose refusals are [`ApiError`]s (400) rather than axum's plain-text ones.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::bad("Content-Type must be application/json"))
            }
            Err(e) => Err(ApiError::bad(e.body_text())),
        }
    }
}

/// Path parameters whose refusals are [`ApiError`]s.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e: PathRejection| ApiError::bad(e.body_text()))
    }
}

// ---------------------------------------------------------------------------------- types

/// A room as the registry and the media plane know it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Room {
    pub name: String,
    /// Id of this incarnation of the room (`RM_...`); empty for a room the registry has not
    /// seen start yet.
    pub sid: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Participants in it now (observers excluded; reconnecting ones included).
    pub num_participants: u64,
    pub num_published_tracks: u64,
    /// Join cap; 0: none.
    pub max_participants: u32,
    /// Seconds a room nobody joined stays open.
    pub empty_timeout: u64,
    /// Seconds a room stays open after its last participant left.
    pub departure_timeout: u64,
    pub metadata: String,
}

/// Creates a room. Options left out take the server's `[rooms]` defaults.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CreateRoom {
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    #[serde(default)]
    pub max_participants: Option<u32>,
    /// Seconds.
    #[serde(default)]
    #[schema(maximum = 2592000)]
    pub empty_timeout: Option<u64>,
    /// Seconds.
    #[serde(default)]
    #[schema(maximum = 2592000)]
    pub departure_timeout: Option<u64>,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Audio,
    Video,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Camera,
    Microphone,
    Screen,
    ScreenAudio,
    Unknown,
}

/// A published track.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Track {
    pub sid: String,
    pub kind: Kind,
    pub source: Source,
    pub muted: bool,
    /// `opus`, `vp8`, `vp9`, `h264`, `av1`; empty until known.
    pub codec: String,
}

/// A participant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Participant {
    pub sid: String,
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub tracks: Vec<Track>,
}

/// What a participant may do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct Permissions {
    pub publish: bool,
    pub subscribe: bool,
    pub publish_data: bool,
}

/// Changes to a participant; fields left out keep their value.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct UpdateParticipant {
    #[serde(default)]
    pub permissions: Option<Permissions>,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub metadata: Option<String>,
}

/// Mutes or unmutes a published track.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct MuteTrack {
    pub muted: bool,
}

/// A data message from the server to the room (or to some participants).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct SendData {
    /// The payload (base64 for binary data); with `topic`, at most about 16 KiB.
    #[schema(max_length = 16000)]
    pub data: String,
    #[serde(default)]
    #[schema(max_length = 128)]
    pub topic: Option<String>,
    /// Identities or participant sids; absent or empty: everyone.
    #[serde(default)]
    pub to: Option<Vec<String>>,
}

/// How many participants a data message reached.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DataSent {
    pub recipients: u64,
}

fn track(t: &TrackInfo) -> Track {
    use moien_protocol::{TrackKind, TrackSource};
    Track {
        sid: t.sid.clone(),
        kind: match t.kind {
            TrackKind::Audio => Kind::Audio,
            TrackKind::Video => Kind::Video,
        },
        source: match t.source {
            TrackSource::Camera => Source::Camera,
            TrackSource::Microphone => Source::Microphone,
            TrackSource::Screen => Source::Screen,
            TrackSource::ScreenAudio => Source::ScreenAudio,
            TrackSource::Unknown => Source::Unknown,
        },
        muted: t.muted,
        codec: t.codec.clone(),
    }
}

fn participant(p: &ParticipantInfo) -> Participant {
    Participant {
        sid: p.sid.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
        metadata: p.metadata.clone(),
        tracks: p.tracks.iter().map(track).collect(),
    }
}

fn room(
    name: &str,
    entry: Option<&RoomEntry>,
    summary: Option<&moien_sfu::RoomSummary>,
    state: &AppState,
) -> Room {
    let defaults = &state.config.rooms;
    Room {
        name: name.to_string(),
        sid: entry.map(|e| e.sid.clone()).unwrap_or_default(),
        created_at: entry.map_or(0, |e| e.created_at),
        num_participants: summary.map_or(0, |s| s.participants as u64),
        num_published_tracks: summary.map_or(0, |s| s.published_tracks as u64),
        max_participants: entry.map_or(defaults.max_participants, |e| e.max_participants),
        empty_timeout: entry
            .map_or(defaults.empty_timeout, |e| e.empty_timeout)
            .as_secs(),
        departure_timeout: entry
            .map_or(defaults.departure_timeout, |e| e.departure_timeout)
            .as_secs(),
        metadata: entry.map(|e| e.metadata.clone()).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------- auth

/// The verified admin token of a request, if it may administer `room` (`None`: every room).
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    room: Option<&str>,
) -> Result<AccessClaims, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    let claims = state.keys.verify(token).map_err(|e| {
        debug!(reason = e.reason(), "admin API token refused");
        state.metrics.auth_failure(e.reason());
        ApiError::new(ErrorCode::Unauthorized, e.to_string())
    })?;
    let allowed = match room {
        Some(r) => claims.administers(r),
        None => claims.administers_all(),
    };
    if !allowed {
        state.metrics.auth_failure("no_grant");
        let what = if claims.grants.room_admin {
            "the token administers another room"
        } else {
            "the token has no room_admin grant"
        };
        return Err(ApiError::new(ErrorCode::Forbidden, what));
    }
    Ok(claims)
}

fn check_name(what: &str, s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n == 0 || n > MAX_NAME_CHARS {
        return Err(ApiError::bad(format!(
            "{what}: 1-{MAX_NAME_CHARS} characters"
        )));
    }
    Ok(())
}

fn check_metadata(m: &str) -> Result<(), ApiError> {
    if m.chars().count() > auth::MAX_METADATA_LEN {
        return Err(ApiError::bad(format!(
            "metadata: at most {} characters",
            auth::MAX_METADATA_LEN
        )));
    }
    Ok(())
}

fn check_timeout(what: &str, t: Option<u64>) -> Result<Option<Duration>, ApiError> {
    match t {
        Some(s) if s > MAX_TIMEOUT_SECS => Err(ApiError::bad(format!(
            "{what}: at most {MAX_TIMEOUT_SECS} seconds"
        ))),
        Some(s) => Ok(Some(Duration::from_secs(s))),
        None => Ok(None),
    }
}

/// The room as seen now, or 404 when neither the registry nor the media plane has it.
async fn find_room(state: &AppState, name: &str) -> Result<Room, ApiError> {
    let entry = state.rooms.get(name);
    let summary = state
        .media
        .rooms()
        .await
        .into_iter()
        .find(|r| r.name == name);
    if entry.is_none() && summary.is_none() {
        return Err(ApiError::new(ErrorCode::NotFound, "no such room"));
    }
    Ok(room(name, entry.as_ref(), summary.as_ref(), state))
}

// ---------------------------------------------------------------------------------- handlers

/// Create a room (or get it, if it exists).
#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms",
    request_body = CreateRoom,
    responses(
        (status = 201, description = "Created", body = Room),
        (status = 200, description = "It existed already; returned as it is", body = Room),
        (status = 400, description = "Invalid body", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "No room_admin grant for this room", body = ApiError),
        (status = 413, description = "Body too large", body = ApiError),
        (status = 429, description = "Too many requests", body = ApiError),
        (status = 503, description = "Too many rooms", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn create_room(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<CreateRoom>, ApiError>,
) -> Result<(StatusCode, Json<Room>), ApiError> {
    // Authentication first: an anonymous caller learns nothing about the body's validity.
    authorize(&state, &headers, None).or_else(|e| {
        // A token for one room may create that room.
        match &body {
            Ok(ApiJson(b)) if e.code == "forbidden" => {
                authorize(&state, &headers, Some(&b.name)).map_err(|_| e)
            }
            _ => Err(e),
        }
    })?;
    let ApiJson(body) = body?;
    check_name("name", &body.name)?;
    check_metadata(body.metadata.as_deref().unwrap_or(""))?;
    let opts = RoomOptions {
        max_participants: body.max_participants,
        empty_timeout: check_timeout("empty_timeout", body.empty_timeout)?,
        departure_timeout: check_timeout("departure_timeout", body.departure_timeout)?,
        metadata: body.metadata.unwrap_or_default(),
    };
    let (entry, created) = state.rooms.create(&body.name, opts).map_err(|e| match e {
        CreateError::Full => ApiError::new(ErrorCode::Unavailable, "too many rooms"),
    })?;
    let summary = state
        .media
        .rooms()
        .await
        .into_iter()
        .find(|r| r.name == body.name);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(room(&body.name, Some(&entry), summary.as_ref(), &state)),
    ))
}

/// List every room.
#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms",
    responses(
        (status = 200, description = "Every room, by name", body = [Room]),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "Not an every-room (`*`) admin token", body = ApiError),
        (status = 429, description = "Too many requests", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn list_rooms(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Room>>, ApiError> {
    authorize(&state, &headers, None)?;
    let summaries = state.media.rooms().await;
    let mut out: Vec<Room> = Vec::new();
    let entries = state.rooms.list();
    for e in &entries {
        let s = summaries.iter().find(|s| s.name == e.name);
        out.push(room(&e.name, Some(e), s, &state));
    }
    for s in &summaries {
        if !entries.iter().any(|e| e.name == s.name) {
            out.push(room(&s.name, None, Some(s), &state));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

/// Get one room.
#[utoipa::path(get, path = "/api/v1/rooms/{room}", tag = "rooms",
    params(("room" = String, Path, description = "Room name")),
    responses(
        (status = 200, description = "The room", body = Room),
        (status = 400, description = "Invalid room name", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "No room_admin grant for this room", body = ApiError),
        (status = 404, description = "No such room", body = ApiError),
        (status = 429, description = "Too many requests", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn get_room(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<ApiPath<String>, ApiError>,
) -> Result<Json<Room>, ApiError> {
    let ApiPath(name) = path?;
    authorize(&state, &headers, Some(&name))?;
    check_name("room", &name)?;
    Ok(Json(find_room(&state, &name).await?))
}

/// Delete a room: ends the call for everyone in it (`leave {reason: room_closed}`).
#[utoipa::path(delete, path = "/api/v1/rooms/{room}", tag = "rooms",
    params(("room" = String, Path, description = "Room name")),
    responses(
        (status = 204, description = "Deleted; everyone was removed"),
        (status = 400, description = "Invalid room name", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "No room_admin grant for this room", body = ApiError),
        (status = 404, description = "No such room", body = ApiError),
        (status = 429, description = "Too many requests", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn delete_room(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<ApiPath<String>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let ApiPath(name) = path?;
    authorize(&state, &headers, Some(&name))?;
    check_name("room", &name)?;
    let known = state.rooms.mark_closing(&name);
    let removed = state.media.close_room(&name).await?;
    if !known && removed == 0 {
        return Err(ApiError::new(ErrorCode::NotFound, "no such room"));
    }
    state.rooms.finish_closed(&name).await;
    Ok(StatusCode::NO_CONTENT)
}

/// List the participants of a room (observers excluded).
#[utoipa::path(get, path = "/api/v1/rooms/{room}/participants", tag = "participants",
    params(("room" = String, Path, description = "Room name")),
    responses(
        (status = 200, description = "The participants", body = [Participant]),
        (status = 400, description = "Invalid room name", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "No room_admin grant for this room", body = ApiError),
        (status = 404, description = "No such room", body = ApiError),
        (status = 429, description = "Too many requests", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn list_participants(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<ApiPath<String>, ApiError>,
) -> Result<Json<Vec<Participant>>, ApiError> {
    let ApiPath(name) = path?;
    authorize(&state, &headers, Some(&name))?;
    check_name("room", &name)?;
    match state.media.participants(&name).await {
        Ok(list) => Ok(Json(list.iter().map(participant).collect())),
        Err(SfuError::NotFound(_)) if state.rooms.get(&name).is_some() => Ok(Json(Vec::new())),
        Err(e) => Err(e.into()),
    }
}

async fn one_participant(
    state: &AppState,
    room: &str,
    identity: &str,
) -> Result<Participant, ApiError> {
    let list = state.media.participants(room).await?;
    list.iter()
        .find(|p| p.identity == identity)
        .map(participant)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such participant"))
}

/// Get one participant by identity.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/participants/{identity}", tag = "participants",
    params(("room" = String, Path, description = "Room name"),
           ("identity" = String, Path, description = "Participant identity")),
    responses(
        (status = 200, description = "The participant", body = Participant),
        (status = 400, description = "Invalid name", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "No room_admin grant for this room", body = ApiError),
        (status = 404, description = "No such room or participant", body = ApiError),
        (status = 429, description = "Too many requests", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn get_participant(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<ApiPath<(String, String)>, ApiError>,
) -> Result<Json<Participant>, ApiError> {
    let ApiPath((name, identity)) = path?;
    authorize(&state, &headers, Some(&name))?;
    check_name("room", &name)?;
    check_name("identity", &identity)?;
    Ok(Json(one_participant(&state, &name, &identity).await?))
}

/// Remove a participant (it gets `leave {reason: removed_by_admin}`).
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/participants/{identity}", tag = "participants",
    params(("room" = String, Path, description = "Room name"),
           ("identity" = String, Path, description = "Participant identity")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Invalid name", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "No room_admin grant for this room", body = ApiError),
        (status = 404, description = "No such room or participant", body = ApiError),
        (status = 429, description = "Too many requests", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn remove_participant(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<ApiPath<(String, String)>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let ApiPath((name, identity)) = path?;
    authorize(&state, &headers, Some(&name))?;
    check_name("room", &name)?;
    check_name("identity", &identity)?;
    state.media.remove_participant(&name, &identity).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change a participant's permissions or metadata (it and the room get `participant_updated`).
#[utoipa::path(patch, path = "/api/v1/rooms/{room}/participants/{identity}", tag = "participants",
    params(("room" = String, Path, description = "Room name"),
           ("identity" = String, Path, description = "Participant identity")),
    request_body = UpdateParticipant,
    responses(
        (status = 200, description = "The participant as it is now", body = Participant),
        (status = 400, description = "Invalid body or name", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "No room_admin grant for this room", body = ApiError),
        (status = 404, description = "No such room or participant", body = ApiError),
        (status = 413, description = "Body too large", body = ApiError),
        (status = 429, description = "Too many requests", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn update_participant(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<ApiPath<(String, String)>, ApiError>,
    body: Result<ApiJson<UpdateParticipant>, ApiError>,
) -> Result<Json<Participant>, ApiError> {
    let ApiPath((name, identity)) = path?;
    authorize(&state, &headers, Some(&name))?;
    let ApiJson(body) = body?;
    check_name("room", &name)?;
    check_name("identity", &identity)?;
    check_metadata(body.metadata.as_deref().unwrap_or(""))?;
    let update = ParticipantUpdate {
        permissions: body.permissions.map(|p| moien_protocol::Permissions {
            publish: p.publish,
            subscribe: p.subscribe,
            publish_data: p.publish_data,
        }),
        metadata: body.metadata,
    };
    let info = state
        .media
        .update_participant(&name, &identity, update)
        .await?;
    Ok(Json(participant(&info)))
}

/// Mute or unmute a published track (its publisher and the room get `track_muted`).
#[utoipa::path(post, path = "/api/v1/rooms/{room}/participants/{identity}/tracks/{track}/mute",
    tag = "participants",
    params(("room" = String, Path, description = "Room name"),
           ("identity" = String, Path, description = "Participant identity"),
           ("track" = String, Path, description = "Track sid (`TR_...`)")),
    request_body = MuteTrack,
    responses(
        (status = 204, description = "Done"),
        (status = 400, description = "Invalid body or name", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "No room_admin grant for this room", body = ApiError),
        (status = 404, description = "No such room, participant or track", body = ApiError),
        (status = 413, description = "Body too large", body = ApiError),
        (status = 429, description = "Too many requests", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn mute_track(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<ApiPath<(String, String, String)>, ApiError>,
    body: Result<ApiJson<MuteTrack>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let ApiPath((name, identity, track_sid)) = path?;
    authorize(&state, &headers, Some(&name))?;
    let ApiJson(body) = body?;
    check_name("room", &name)?;
    check_name("identity", &identity)?;
    check_name("track", &track_sid)?;
    state
        .media
        .mute_track(&name, &identity, &track_sid, body.muted)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a data message to the room, from the server (`from` is empty).
#[utoipa::path(post, path = "/api/v1/rooms/{room}/data", tag = "rooms",
    params(("room" = String, Path, description = "Room name")),
    request_body = SendData,
    responses(
        (status = 200, description = "Sent", body = DataSent),
        (status = 400, description = "Invalid body or name", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "No room_admin grant for this room", body = ApiError),
        (status = 404, description = "No such room", body = ApiError),
        (status = 413, description = "Message too large", body = ApiError),
        (status = 429, description = "Too many requests", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn send_data(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<ApiPath<String>, ApiError>,
    body: Result<ApiJson<SendData>, ApiError>,
) -> Result<Json<DataSent>, ApiError> {
    let ApiPath(name) = path?;
    authorize(&state, &headers, Some(&name))?;
    let ApiJson(body) = body?;
    check_name("room", &name)?;
    let topic = body.topic.unwrap_or_default();
    if topic.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::bad("topic: at most 128 characters"));
    }
    let to = body.to.unwrap_or_default();
    // The envelope recipients get: `{"from":"","identity":"","topic":..,"data":..}`.
    let size = serde_json::to_string(&moien_protocol::DataReceive {
        from: String::new(),
        identity: String::new(),
        topic: topic.clone(),
        data: body.data.clone(),
    })
    .map_or(usize::MAX, |s| s.len());
    if size > MAX_DATA_MESSAGE_BYTES {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("the message is {size} bytes; at most {MAX_DATA_MESSAGE_BYTES}"),
        ));
    }
    let n = state.media.send_data(&name, to, topic, body.data).await?;
    Ok(Json(DataSent {
        recipients: n as u64,
    }))
}

// ---------------------------------------------------------------------------------- OpenAPI

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token with the room_admin grant; room `*` for every room",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Moien room admin API", version = "1",
        description = "Rooms, participants and tracks of a Moien node. docs/PROTOCOL.md has the overview."),
    paths(create_room, list_rooms, get_room, delete_room, list_participants, get_participant,
        remove_participant, update_participant, mute_track, send_data),
    components(schemas(Room, CreateRoom, Participant, Track, Kind, Source, Permissions,
        UpdateParticipant, MuteTrack, SendData, DataSent, ApiError)),
    modifiers(&BearerAuth),
    tags((name = "rooms", description = "Rooms and data messages"),
        (name = "participants", description = "Participants and their tracks")))]
pub struct ApiDoc;

/// The OpenAPI description, serialized once.
pub fn openapi_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default())
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_json(),
    )
        .into_response()
}

/// Per-IP rate limit of the admin API.
async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<ClientAddr>>()
        .map(|c| crate::client_ip(&state.config, c.0.0.ip(), req.headers()));
    if let Some(ip) = ip
        && !state.limits.api_per_ip.allow(&ip)
    {
        return ApiError::new(ErrorCode::RateLimited, "too many requests").into_response();
    }
    next.run(req).await
}

/// The `/api/v1/` routes.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/rooms", post(create_room).get(list_rooms))
        .route("/api/v1/rooms/{room}", get(get_room).delete(delete_room))
        .route("/api/v1/rooms/{room}/participants", get(list_participants))
        .route(
            "/api/v1/rooms/{room}/participants/{identity}",
            get(get_participant)
                .delete(remove_participant)
                .patch(update_participant),
        )
        .route(
            "/api/v1/rooms/{room}/participants/{identity}/tracks/{track}/mute",
            post(mute_track),
        )
        .route("/api/v1/rooms/{room}/data", post(send_data))
        .route_layer(axum::middleware::from_fn_with_state(state, limit))
}
