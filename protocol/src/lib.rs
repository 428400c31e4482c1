//! The Moien signaling protocol: every JSON message that crosses the `/rtc` WebSocket, and the
//! room vocabulary (participants, tracks) shared by the media plane, signaling and clients.
//!
//! `docs/PROTOCOL.md` is the prose description of these types; a change here is a change there.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. A `join` with another version is refused with
/// [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest WebSocket message the server accepts; larger ones close the socket with code 1009.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What a participant publishes: audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

/// Where a track comes from, as the publisher declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Camera,
    Microphone,
    Screen,
    ScreenAudio,
    #[default]
    Unknown,
}

impl TrackSource {
    /// The source assumed when the publisher did not say.
    pub fn default_for(kind: TrackKind) -> Self {
        match kind {
            TrackKind::Audio => TrackSource::Microphone,
            TrackKind::Video => TrackSource::Camera,
        }
    }
}

/// A published track as other participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Server-assigned track id, unique in the room (`TR_...`).
    pub sid: String,
    pub kind: TrackKind,
    pub source: TrackSource,
    pub muted: bool,
    /// Negotiated codec, e.g. `opus`, `vp8`, `vp9`, `h264`, `av1`; empty until known.
    #[serde(default)]
    pub codec: String,
}

/// A room participant as other participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Server-assigned participant id for this session (`PA_...`).
    pub sid: String,
    /// Identity from the access token (`sub`).
    pub identity: String,
    /// Display name from the access token, empty when absent.
    #[serde(default)]
    pub name: String,
    /// Application metadata (set by the token or the admin API), opaque to Moien.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(default)]
    pub tracks: Vec<TrackInfo>,
}

/// A publisher's description of one m-line of its publish offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTrack {
    /// The transceiver's mid in the offer.
    pub mid: String,
    pub kind: TrackKind,
    #[serde(default)]
    pub source: Option<TrackSource>,
    #[serde(default)]
    pub muted: bool,
}

/// Which of the participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    /// Client offers, server answers; carries what the participant publishes.
    Publisher,
    /// Server offers, client answers; carries what the participant receives.
    Subscriber,
}

/// Maps one m-line of a subscriber offer to the track it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedTrack {
    pub mid: String,
    pub participant_sid: String,
    pub track_sid: String,
    pub kind: TrackKind,
}

/// An ICE server handed to the client (RFC 7064/7065 URLs), e.g. our bundled TURN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Client → server messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message on a socket. The room comes from the token; `room`, when given, must match.
    Join {
        version: u32,
        token: String,
        #[serde(default)]
        room: Option<String>,
    },
    /// SDP offer of the publisher peer connection (sent again whenever tracks change).
    PublishOffer {
        sdp: String,
        #[serde(default)]
        tracks: Vec<PublishTrack>,
    },
    /// SDP answer to the last `subscribe_offer`.
    SubscribeAnswer {
        sdp: String,
    },
    /// Trickled ICE candidate (`a=candidate` value without the prefix). Optional: the server is
    /// ICE-lite and learns client addresses from connectivity checks.
    Candidate {
        role: PeerRole,
        candidate: String,
    },
    /// The publisher muted or unmuted one of its tracks.
    Mute {
        track_sid: String,
        muted: bool,
    },
    /// How this participant wants one of its subscriptions: paused (a hidden tile needs
    /// nothing), at most some layer (0 = lowest; a small tile needs no full resolution), or
    /// pinned (more allocation priority). `max_layer` is the simulcast layer, or the spatial
    /// layer of an SVC stream; `max_temporal` caps an SVC stream's temporal layer (frame rate).
    /// Absent fields keep their value.
    UpdateSubscription {
        track_sid: String,
        #[serde(default)]
        paused: Option<bool>,
        #[serde(default)]
        max_layer: Option<u8>,
        #[serde(default)]
        max_temporal: Option<u8>,
        #[serde(default)]
        pinned: Option<bool>,
    },
    Ping {
        timestamp: u64,
    },
    Leave,
    /// First message on a new socket of a participant whose connection dropped: comes back into
    /// the room as the same participant (same identity, sid and tracks) with the latest
    /// `resume_token`, within the server's resume window. Answered by `joined`.
    Resume {
        version: u32,
        token: String,
    },
}

/// Server → client messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        version: u32,
        room: String,
        participant: ParticipantInfo,
        /// Everyone else already in the room, with their tracks.
        participants: Vec<ParticipantInfo>,
        ice_servers: Vec<IceServer>,
        /// Signed, short-lived token to come back with (`resume`) if the connection drops.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
    },
    /// A fresh resume token, sent before the previous one expires.
    ResumeToken {
        token: String,
    },
    PublishAnswer {
        sdp: String,
        /// The tracks the server created for the offer's m-lines.
        tracks: Vec<PublishedTrack>,
    },
    SubscribeOffer {
        sdp: String,
        /// Every active m-line of the offer and the track it carries.
        tracks: Vec<SubscribedTrack>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_sid: String,
        identity: String,
        reason: LeaveReason,
    },
    TrackPublished {
        participant_sid: String,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant_sid: String,
        track_sid: String,
    },
    TrackMuted {
        participant_sid: String,
        track_sid: String,
        muted: bool,
    },
    /// A participant lost its signaling connection and may come back within the resume window
    /// (`reconnecting`), or came back (`connected`). Its tracks stay in place meanwhile.
    ParticipantConnection {
        participant_sid: String,
        state: ConnectionState,
    },
    /// A participant's metadata or permissions changed (also sent to the participant itself).
    ParticipantUpdated {
        participant: ParticipantInfo,
        /// Present in the message to the participant itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        permissions: Option<Permissions>,
    },
    Pong {
        timestamp: u64,
    },
    /// The server paused or resumed a video subscription (bandwidth, or the client's wish), or
    /// moved it to another layer.
    SubscriptionState {
        participant_sid: String,
        track_sid: String,
        paused: bool,
        /// Layer now forwarded (0 = lowest); absent while paused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer: Option<u8>,
        reason: PauseReason,
    },
    /// Who speaks, loudest first (at most a few updates per second). Empty when nobody does.
    ActiveSpeakers {
        speakers: Vec<ActiveSpeaker>,
    },
    /// Dynacast: which layers of one of your tracks anybody receives. Stop encoding inactive
    /// ones (e.g. `RTCRtpEncodingParameters.active = false`); resume when told.
    PublishLayers {
        track_sid: String,
        layers: Vec<PublishLayer>,
    },
    /// The server ends this participant's session (it is followed by a close).
    Leave {
        reason: LeaveReason,
    },
    Error {
        code: ErrorCode,
        /// The HTTP status that matches `code`, for clients that map errors uniformly.
        status: u16,
        message: String,
    },
}

/// The server's track for one m-line of a publish offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTrack {
    pub mid: String,
    pub track: TrackInfo,
}

/// Whether a participant's signaling connection is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    Connected,
    Reconnecting,
}

/// What a participant may do (from its token; changed by the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub publish: bool,
    pub subscribe: bool,
    pub publish_data: bool,
}

/// One entry of `active_speakers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveSpeaker {
    pub participant_sid: String,
    /// Smoothed loudness from the audio-level header extension, 0 (silence) to 1 (loudest).
    pub level: f32,
}

/// A message a participant sends on its data channel (`moien` reliable and ordered,
/// `moien-lossy` unordered without retransmissions), as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSend {
    /// Participant sids to deliver to; absent or empty: everyone else in the room.
    #[serde(default)]
    pub to: Vec<String>,
    /// Application-defined kind (`chat`, `reaction`, `hand`, ...).
    #[serde(default)]
    pub topic: String,
    /// The payload (base64 for binary data).
    pub data: String,
}

/// What recipients get on their data channel (same channel as the sender used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataReceive {
    pub from: String,
    pub identity: String,
    #[serde(default)]
    pub topic: String,
    pub data: String,
}

/// Largest data message (JSON text) the server relays.
pub const MAX_DATA_MESSAGE_BYTES: usize = 16 * 1024;

/// Labels of the two data channels of the subscriber connection.
pub const DATA_CHANNEL_RELIABLE: &str = "moien";
pub const DATA_CHANNEL_LOSSY: &str = "moien-lossy";

/// One layer of a published track as dynacast sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishLayer {
    /// The simulcast rid (`q`, `h`, `f`, ...); empty for a track without simulcast.
    pub rid: String,
    pub active: bool,
}

/// Why a subscription is in its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// The subscriber's downlink does not carry it (or, when resumed, carries it again).
    Bandwidth,
    /// The subscriber asked (`update_subscription`).
    Client,
    /// The publisher muted the track.
    Muted,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It said `leave`, closed its socket, or sent WHIP/WHEP `DELETE`.
    ClientRequest,
    /// Its media stopped arriving (ICE consent or DTLS timeout).
    ConnectionLost,
    /// It never completed ICE/DTLS after negotiating.
    ConnectTimeout,
    /// It could not keep up with its signaling messages.
    SlowConsumer,
    /// Another session joined with the same identity.
    DuplicateIdentity,
    /// The server is shutting down.
    ServerShutdown,
    /// An administrator removed it (admin API).
    RemovedByAdmin,
    /// The room was closed (admin API).
    RoomClosed,
    /// It was away longer than the resume window allows.
    ResumeExpired,
}

/// Stable error codes. Clients match on these, never on `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message was not valid JSON or not a known message.
    BadRequest,
    /// Missing, malformed, forged, expired or not-yet-valid token.
    Unauthorized,
    /// The token does not grant this (other room, no publish/subscribe grant).
    Forbidden,
    /// The target participant or session does not exist.
    NotFound,
    /// The SDP could not be parsed or negotiated.
    InvalidSdp,
    /// A message arrived that is not valid in the current state (e.g. anything before `join`).
    InvalidState,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion,
    /// The message exceeded a size limit.
    TooLarge,
    /// The client sends faster than the server allows.
    RateLimited,
    /// The room has as many participants as it may.
    RoomFull,
    /// The server could not serve the request (overloaded or shutting down).
    Unavailable,
    /// An unexpected server fault; the session may continue.
    Internal,
}

impl ErrorCode {
    /// The HTTP status that corresponds to the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidSdp => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::RoomFull => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::InvalidState => 409,
            ErrorCode::UnsupportedVersion => 426,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidSdp => "invalid_sdp",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            status: code.status(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_use_snake_case_type_tags() {
        let m = ClientMessage::PublishOffer {
            sdp: "v=0".into(),
            tracks: vec![PublishTrack {
                mid: "0".into(),
                kind: TrackKind::Audio,
                source: Some(TrackSource::Microphone),
                muted: false,
            }],
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["type"], "publish_offer");
        assert_eq!(json["tracks"][0]["kind"], "audio");
        assert_eq!(json["tracks"][0]["source"], "microphone");
        let back: ClientMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn error_carries_code_and_status() {
        let json = serde_json::to_value(ServerMessage::error(ErrorCode::Forbidden, "x")).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["code"], "forbidden");
        assert_eq!(json["status"], 403);
    }

    #[test]
    fn error_code_names_match_serde() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::InvalidSdp,
            ErrorCode::InvalidState,
            ErrorCode::UnsupportedVersion,
            ErrorCode::TooLarge,
            ErrorCode::RateLimited,
            ErrorCode::RoomFull,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn unknown_type_is_rejected() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"launch_missiles"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"leave"}"#).is_ok());
    }
}
