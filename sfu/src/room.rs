//! The SFU vocabulary as data: Room, Participant, Track (what a participant publishes) and
//! Subscription (one track delivered to one participant). The worker owns all of them; the
//! behaviour lives in `worker::core`.

use std::collections::HashMap;
use std::time::Instant;

use moien_protocol::{ParticipantInfo, TrackInfo, TrackKind, TrackSource};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Mid, Pt};

use crate::api::{EventSender, ParticipantKind};
use crate::keyframe::KeyframeThrottle;
use crate::rewrite::Rewriter;
use crate::session::SessionId;

pub(crate) type ParticipantId = u64;
pub(crate) type TrackId = u64;
pub(crate) type SubscriptionId = u64;

pub(crate) struct Room {
    pub participants: Vec<ParticipantId>,
}

pub(crate) struct Participant {
    pub sid: String,
    pub identity: String,
    pub name: String,
    pub room: String,
    pub kind: ParticipantKind,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub publisher: Option<SessionId>,
    /// The subscriber session (WebSocket participants) or the WHEP session.
    pub subscriber: Option<SessionId>,
    pub tracks: Vec<TrackId>,
    pub subscriptions: Vec<SubscriptionId>,
    pub events: Option<EventSender>,
}

impl Participant {
    /// WHEP viewers are nobody's business but their own.
    pub fn hidden(&self) -> bool {
        matches!(self.kind, ParticipantKind::Whep { .. })
    }
}

pub(crate) struct Track {
    pub sid: String,
    pub participant: ParticipantId,
    pub session: SessionId,
    pub mid: Mid,
    pub kind: TrackKind,
    pub source: TrackSource,
    pub muted: bool,
    /// Codec of the last packet, for the keyframe detector and `TrackInfo.codec`.
    pub codec: Option<Codec>,
    pub subscriptions: Vec<SubscriptionId>,
    pub keyframes: KeyframeThrottle,
}

impl Track {
    pub fn info(&self) -> TrackInfo {
        TrackInfo {
            sid: self.sid.clone(),
            kind: self.kind,
            source: self.source,
            muted: self.muted,
            codec: self.codec.map(codec_name).unwrap_or_default(),
        }
    }
}

pub(crate) fn codec_name(c: Codec) -> String {
    c.to_string().to_ascii_lowercase()
}

pub(crate) struct Subscription {
    pub track: TrackId,
    pub subscriber: ParticipantId,
    pub session: SessionId,
    /// The m-line carrying it; `None` until an offer adds one.
    pub mid: Option<Mid>,
    /// True once the m-line is negotiated (answer accepted, or WHEP answer sent).
    pub negotiated: bool,
    pub rewriter: Rewriter,
    /// Video subscriptions wait for a keyframe before forwarding anything.
    pub waiting_keyframe: bool,
    pub waiting_since: Option<Instant>,
    /// Publisher PT → subscriber PT, learned on first use.
    pub pt_map: Vec<(Pt, Option<Pt>)>,
}

impl Subscription {
    /// The subscriber's payload type for the publisher's `params`, computed once per PT.
    pub fn map_pt(
        &mut self,
        params: &PayloadParams,
        subscriber: &str0m::format::CodecConfig,
    ) -> Option<Pt> {
        if let Some((_, out)) = self.pt_map.iter().find(|(pt, _)| *pt == params.pt()) {
            return *out;
        }
        let out = subscriber.match_params(*params).map(|p| p.pt());
        if self.pt_map.len() < 16 {
            self.pt_map.push((params.pt(), out));
        }
        out
    }
}

pub(crate) fn participant_info(
    p: &Participant,
    tracks: &HashMap<TrackId, Track>,
) -> ParticipantInfo {
    ParticipantInfo {
        sid: p.sid.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
        tracks: p
            .tracks
            .iter()
            .filter_map(|t| tracks.get(t))
            .map(Track::info)
            .collect(),
    }
}
