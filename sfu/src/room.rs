//! The SFU vocabulary as data: Room, Participant, Track (what a participant publishes) and
//! Subscription (one track delivered to one participant). The worker owns all of them; the
//! behaviour lives in `worker::core`.

use rustc_hash::FxHashMap;
use std::time::Instant;

use moien_protocol::{ParticipantInfo, TrackInfo, TrackKind, TrackSource};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Mid, Pt, Rid};

use crate::api::{EventSender, ParticipantKind};
use crate::bitrate::BitrateMeter;
use crate::keyframe::KeyframeThrottle;
use crate::layer::{SimulcastSelector, SvcSelector};
use crate::rewrite::{Rewriter, Vp8Rewriter};
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
    pub can_publish_data: bool,
    /// Observer: not announced (set by the token's `hidden` grant; WHEP viewers always are).
    pub observer: bool,
    pub metadata: String,
    pub publisher: Option<SessionId>,
    /// The subscriber session (WebSocket participants) or the WHEP session.
    pub subscriber: Option<SessionId>,
    pub tracks: Vec<TrackId>,
    pub subscriptions: Vec<SubscriptionId>,
    /// When it joined, until its first connection is up (then the join time is measured).
    pub joined_at: Option<Instant>,
    /// Signaling dropped at this time; the participant may resume within the window.
    pub detached: Option<(Instant, std::time::Duration)>,
    /// Rate limit of the data messages it sends.
    pub data_limiter: crate::worker::core::DataLimiter,
    pub events: Option<EventSender>,
}

impl Participant {
    /// WHEP viewers are nobody's business but their own.
    pub fn hidden(&self) -> bool {
        self.observer || matches!(self.kind, ParticipantKind::Whep { .. })
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
    /// The stream carries SVC layers (a VP9 descriptor with layer indices, or a Dependency
    /// Descriptor structure with several layers, was seen).
    pub svc: bool,
    pub subscriptions: Vec<SubscriptionId>,
    /// Simulcast layers, lowest first (the publisher's rid order); one layer without simulcast.
    pub layers: Vec<TrackLayer>,
}

/// One simulcast layer of a track (or the track itself without simulcast).
pub(crate) struct TrackLayer {
    pub rid: Option<Rid>,
    pub meter: BitrateMeter,
    /// The meter's reading at the last housekeeping pass (0 while the layer is idle).
    pub meter_bps: u64,
    /// Last non-zero measured rate: what the layer costs while it is not flowing.
    pub last_bps: u64,
    pub keyframes: KeyframeThrottle,
    pub last_packet: Option<Instant>,
    /// Since when the layer flows without a gap.
    pub flowing_since: Option<Instant>,
    /// Dynacast: whether the publisher was last told to send it.
    pub active: bool,
    /// Dynacast: since when no subscriber needs it.
    pub unneeded_since: Option<Instant>,
    /// The Dependency Descriptor structure of this stream's last keyframe.
    pub dd: Option<std::sync::Arc<crate::dependency_descriptor::Structure>>,
}

impl TrackLayer {
    pub fn new(rid: Option<Rid>, keyframes: KeyframeThrottle) -> Self {
        TrackLayer {
            rid,
            meter: BitrateMeter::default(),
            meter_bps: 0,
            last_bps: 0,
            keyframes,
            last_packet: None,
            flowing_since: None,
            active: true,
            unneeded_since: None,
            dd: None,
        }
    }
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
    /// VP8 picture numbering across simulcast switches.
    pub vp8: Vp8Rewriter,
    /// Which layer flows (video); audio always flows. For simulcast and single-stream video it
    /// decides; for an SVC track it carries the allocation's grant and `svc` decides.
    pub selector: SimulcastSelector,
    pub svc: Option<SvcSelector>,
    /// Since when the selector waits for a keyframe, for retries.
    pub keyframe_wait_since: Option<Instant>,
    /// When the last packet was forwarded, to keep timestamps moving across a switch.
    pub last_forward: Option<Instant>,
    pub last_layer: Option<usize>,
    /// The client's wishes.
    pub max_layer: Option<usize>,
    /// SVC: highest temporal layer the client wants.
    pub max_temporal: Option<u8>,
    pub client_paused: bool,
    pub pinned: bool,
    /// Bandwidth pauses: since when, how long until the next resume trial, when the last began.
    pub bandwidth_paused_since: Option<Instant>,
    pub resume_backoff: std::time::Duration,
    pub trial_started: Option<Instant>,
    /// The paused state the client was last told (`subscription_state`).
    pub told_paused: Option<bool>,
    /// Publisher PT → (subscriber PT, unwrap RED), learned on first use.
    pub pt_map: Vec<(Pt, Option<(Pt, bool)>)>,
}

impl Subscription {
    /// Whether forwarding waits for a keyframe.
    pub fn needs_keyframe(&self) -> bool {
        match &self.svc {
            Some(s) => s.needs_keyframe(),
            None => self.selector.needs_keyframe(),
        }
    }

    /// Applies the allocation's grant (`None`: paused) and the client's caps to the SVC
    /// selector, if the track is SVC.
    pub fn apply_svc_target(&mut self) {
        let grant = self.selector.target();
        let max_s = self.max_layer.map_or(u8::MAX, |l| l.min(7) as u8);
        let max_t = self.max_temporal.unwrap_or(u8::MAX);
        if let Some(svc) = self.svc.as_mut() {
            svc.set_target(grant.map(|_| (max_s, max_t)));
        }
    }

    /// The subscriber's payload type for a publisher packet of `pt`, whose codec is `params`
    /// (`red` when `pt` is the RFC 2198 wrapper of that codec). Returns the outgoing PT and
    /// whether the RED wrapper must come off because the subscriber did not negotiate RED.
    /// Computed once per PT.
    pub fn map_pt(
        &mut self,
        pt: Pt,
        params: &PayloadParams,
        red: bool,
        subscriber: &str0m::format::CodecConfig,
    ) -> Option<(Pt, bool)> {
        if let Some((_, out)) = self.pt_map.iter().find(|(p, _)| *p == pt) {
            return *out;
        }
        let out = subscriber
            .match_params(*params)
            .map(|p| match (red, p.red()) {
                (true, Some(r)) => (r, false),
                (true, None) => (p.pt(), true),
                (false, _) => (p.pt(), false),
            });
        if self.pt_map.len() < 16 {
            self.pt_map.push((pt, out));
        }
        out
    }
}

pub(crate) fn participant_info(
    p: &Participant,
    tracks: &FxHashMap<TrackId, Track>,
) -> ParticipantInfo {
    ParticipantInfo {
        sid: p.sid.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
        metadata: p.metadata.clone(),
        tracks: p
            .tracks
            .iter()
            .filter_map(|t| tracks.get(t))
            .map(Track::info)
            .collect(),
    }
}
