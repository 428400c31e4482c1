//! The message boundary between signaling and the media plane.
//!
//! Signaling drives media only through these requests and receives only [`ServerMessage`]s back
//! (the room vocabulary of `moien-protocol`). In one process they travel over channels; the
//! prepared `Rtc`s are the only part that cannot cross a network, and a remote media node would
//! build those itself.

use moien_protocol::{LeaveReason, ParticipantInfo, PublishTrack, PublishedTrack, ServerMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Who is joining and what it may do; filled by signaling from a verified token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParticipantSpec {
    pub identity: String,
    pub name: String,
    pub room: String,
    pub kind: ParticipantKind,
    pub can_publish: bool,
    pub can_subscribe: bool,
    /// May send data messages.
    pub can_publish_data: bool,
    /// Not announced to the room (an observer), though it receives everything.
    pub hidden: bool,
    /// Application metadata, shown to the room.
    pub metadata: String,
    /// Refuse the join (`room_full`) when the room already has this many participants.
    pub max_participants: Option<u32>,
}

impl ParticipantSpec {
    /// A participant with the usual grants: publish and subscribe as given, data with publish.
    pub fn new(
        identity: impl Into<String>,
        room: impl Into<String>,
        kind: ParticipantKind,
        can_publish: bool,
        can_subscribe: bool,
    ) -> Self {
        ParticipantSpec {
            identity: identity.into(),
            name: String::new(),
            room: room.into(),
            kind,
            can_publish,
            can_subscribe,
            can_publish_data: can_publish,
            hidden: false,
            metadata: String::new(),
            max_participants: None,
        }
    }
}

/// What happened in a room, for webhooks and the room registry. Bounded: if nobody reads, events
/// are dropped (and counted), never the media.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NodeEvent {
    ParticipantJoined {
        room: String,
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        room: String,
        participant: ParticipantInfo,
        reason: LeaveReason,
    },
    TrackPublished {
        room: String,
        participant: ParticipantInfo,
        track: moien_protocol::TrackInfo,
    },
    TrackUnpublished {
        room: String,
        participant: ParticipantInfo,
        track: moien_protocol::TrackInfo,
    },
    /// The last participant left the room on this node.
    RoomEmpty { room: String },
}

/// A room as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub name: String,
    pub participants: usize,
    pub published_tracks: usize,
}

/// Changes an administrator makes to a participant; `None` keeps the value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantUpdate {
    pub permissions: Option<moien_protocol::Permissions>,
    pub metadata: Option<String>,
}

/// How a participant reaches us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantKind {
    /// WebSocket protocol: a publisher and a subscriber peer connection.
    Regular,
    /// WHIP: one client-offered peer connection that publishes.
    Whip,
    /// WHEP: one client-offered peer connection that plays one participant; hidden from others.
    Whep { target_identity: String },
}

/// An SDP offer and the client's description of its m-lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Offer {
    pub sdp: String,
    pub tracks: Vec<PublishTrack>,
}

/// The answer to an [`Offer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub sdp: String,
    pub tracks: Vec<PublishedTrack>,
}

/// What a successful join returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    pub participant: ParticipantInfo,
    pub others: Vec<ParticipantInfo>,
    /// The answer to the offer carried by a WHIP/WHEP join.
    pub answer: Option<Answer>,
}

/// Media-plane failures, each mapping to a protocol error code.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum SfuError {
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("not valid now: {0}")]
    InvalidState(String),
    #[error("media node unavailable: {0}")]
    Unavailable(String),
    #[error("the room is full ({0} participants)")]
    RoomFull(u32),
}

impl SfuError {
    pub fn code(&self) -> moien_protocol::ErrorCode {
        use moien_protocol::ErrorCode;
        match self {
            SfuError::InvalidSdp(_) => ErrorCode::InvalidSdp,
            SfuError::NotFound(_) => ErrorCode::NotFound,
            SfuError::Forbidden(_) => ErrorCode::Forbidden,
            SfuError::InvalidState(_) => ErrorCode::InvalidState,
            SfuError::Unavailable(_) => ErrorCode::Unavailable,
            SfuError::RoomFull(_) => ErrorCode::RoomFull,
        }
    }
}

/// A subscriber's wishes for one subscription; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionPrefs {
    pub paused: Option<bool>,
    /// Simulcast layer, or spatial layer of an SVC stream.
    pub max_layer: Option<u8>,
    /// Temporal layer of an SVC stream.
    pub max_temporal: Option<u8>,
    pub pinned: Option<bool>,
}

/// Where a participant's [`ServerMessage`]s go. Bounded: a participant that does not keep up is
/// removed as a slow consumer rather than letting the queue grow.
pub type EventSender = mpsc::Sender<ServerMessage>;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, SfuError>>;

/// Requests for one participant, addressed by its `sid`.
#[derive(Debug)]
pub(crate) enum Request {
    /// A publish offer (WebSocket participants re-offer whenever their tracks change).
    Offer(Offer, Reply<Answer>),
    SubscribeAnswer(String, Reply<()>),
    Candidate(moien_protocol::PeerRole, String),
    Mute {
        track_sid: String,
        muted: bool,
    },
    UpdateSubscription {
        track_sid: String,
        prefs: SubscriptionPrefs,
    },
    Leave(LeaveReason, Reply<()>),
    /// The signaling connection dropped: keep the participant for `window`, others see it
    /// reconnecting.
    Detach(std::time::Duration, Reply<()>),
    /// The participant came back: new event sink; the answer is a fresh room snapshot, and the
    /// subscriber connection is offered again with an ICE restart.
    Resume(EventSender, Reply<Joined>),
}

/// Requests about a room or the node, for the admin API.
#[derive(Debug)]
pub(crate) enum AdminRequest {
    ListRooms(Reply<Vec<RoomSummary>>),
    Participants(String, Reply<Vec<ParticipantInfo>>),
    Remove {
        room: String,
        identity: String,
        reply: Reply<()>,
    },
    MuteTrack {
        room: String,
        identity: String,
        track_sid: String,
        muted: bool,
        reply: Reply<()>,
    },
    Update {
        room: String,
        identity: String,
        update: ParticipantUpdate,
        reply: Reply<ParticipantInfo>,
    },
    SendData {
        room: String,
        to: Vec<String>,
        topic: String,
        data: String,
        reply: Reply<usize>,
    },
    CloseRoom(String, Reply<usize>),
}
