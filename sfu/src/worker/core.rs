//! The sans-IO heart of a media worker: its rooms, participants, sessions, tracks and
//! subscriptions, the demultiplexer and the timer heap. Time and datagrams come in as arguments;
//! datagrams to send and signaling messages go out. No socket, clock or thread in here.

use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use moien_protocol::{
    LeaveReason, ParticipantInfo, PublishTrack, PublishedTrack, ServerMessage, SubscribedTrack,
    TrackKind, TrackSource,
};
use rand::Rng;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, IceConnectionState, Input, Output};
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, info, warn};

use crate::api::{
    Answer, Joined, Offer, ParticipantKind, ParticipantSpec, Reply, Request, SfuError,
};
use crate::config::MediaConfig;
use crate::demux::{Demux, Route};
use crate::keyframe::KeyframeThrottle;
use crate::layer::SimulcastSelector;
use crate::rewrite::Rewriter;
use crate::room::{
    Participant, ParticipantId, Room, Subscription, SubscriptionId, Track, TrackId, TrackLayer,
    participant_info,
};
use crate::session::{
    MAX_ADDRS_PER_SESSION, PreparedSession, Session, SessionId, SessionRole, is_rtp_with_pt,
};
use crate::stats::WorkerStats;

/// A signaling message and the place reserved for it in its participant's queue.
pub(crate) type Signal = (tokio::sync::mpsc::OwnedPermit<ServerMessage>, ServerMessage);

mod admin;
mod allocation;
mod data;
mod forward;
mod resume;
mod speakers;

pub(crate) use data::{Channels, DataLimiter};

/// A subscribe offer unanswered this long is abandoned and offered again.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often housekeeping (throttled keyframe requests, timeouts) runs.
const HOUSEKEEPING: Duration = Duration::from_millis(50);

/// Commands from the node to a worker.
pub(crate) enum Command {
    Join {
        spec: ParticipantSpec,
        sid: String,
        sessions: Vec<PreparedSession>,
        events: Option<crate::api::EventSender>,
        offer: Option<Offer>,
        reply: Reply<Joined>,
    },
    Participant {
        sid: String,
        request: Request,
    },
    Admin(crate::api::AdminRequest),
}

/// Per-room placement shared by the node and its workers: which worker owns a room and how
/// many participants it has there. The worker updates it when participants leave.
pub(crate) type Placement = Arc<DashMap<String, (usize, usize)>>;

/// Most packets kept for retransmission per subscription (the time bound usually rules).
const RTX_HISTORY_PACKETS: usize = 1024;

/// Gives the send streams of `mids` a retransmission history of `history`.
fn set_rtx_history(rtc: &mut str0m::Rtc, mids: impl IntoIterator<Item = Mid>, history: Duration) {
    let mut api = rtc.direct_api();
    for mid in mids {
        if let Some(tx) = api.stream_tx_by_mid(mid, None) {
            tx.set_rtx_cache(RTX_HISTORY_PACKETS, history, RTX_RATIO_CAP);
        }
    }
}

/// How long a subscription keeps sent packets for retransmission, from the subscriber's
/// round-trip time: three round trips (a NACK, its retransmission and one retry), at least
/// 500 ms and at most 2 s, in 250 ms steps so that RTT noise does not rebuild the history.
/// A packet resent later arrives after its frame was due. str0m keeps 3 s by default; these
/// histories (and the publishers' payloads they keep alive) were the largest memory per
/// participant (docs/PERFORMANCE.md).
pub(crate) fn rtx_history(rtt: Option<Duration>) -> Duration {
    const STEP_MS: u128 = 250;
    let three = rtt.unwrap_or(Duration::ZERO).as_millis() * 3;
    let stepped = three.div_ceil(STEP_MS) * STEP_MS;
    Duration::from_millis(stepped.clamp(500, 2_000) as u64)
}
/// str0m's default: resends stop when they exceed 15 % of what a stream sends.
const RTX_RATIO_CAP: Option<f32> = Some(0.15);

pub(crate) struct WorkerCore {
    index: usize,
    config: MediaConfig,
    /// Our addresses as advertised in candidates; `Receive::destination` uses them.
    local_addrs: Vec<SocketAddr>,
    placement: Placement,
    sessions: FxHashMap<SessionId, Session>,
    demux: Demux,
    participants: FxHashMap<ParticipantId, Participant>,
    by_sid: HashMap<String, ParticipantId>,
    rooms: HashMap<String, Room>,
    tracks: FxHashMap<TrackId, Track>,
    subs: FxHashMap<SubscriptionId, Subscription>,
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Events drained from sessions, handled in order after each mutation.
    events: VecDeque<(SessionId, Event)>,
    transmits: Vec<Transmit>,
    /// Signaling messages with room reserved in their participant's queue, for the I/O shell
    /// to deliver off this thread ([`WorkerCore::take_signals`]).
    signals: Vec<Signal>,
    /// Subscriber sessions that need a new offer once the current operation is done.
    renegotiate: HashSet<SessionId>,
    /// Participants to remove once the current operation is done (found mid-operation).
    removals: Vec<(ParticipantId, LeaveReason)>,
    /// Reused per forwarded packet so fan-out allocates nothing.
    scratch: Vec<SubscriptionId>,
    /// Some session was marked failed since the last removal pass (saves a scan per packet).
    failed_pending: bool,
    /// Active speaker detection per room, and the levels noted since the last pass.
    speakers: HashMap<String, crate::speaker::SpeakerDetector>,
    levels: Vec<(Instant, ParticipantId, u8)>,
    next_allocation: Option<Instant>,
    /// Room events for webhooks (bounded; dropped when full).
    node_events: Option<tokio::sync::mpsc::Sender<crate::api::NodeEvent>>,
    next_id: u64,
    next_housekeeping: Option<Instant>,
    pub stats: WorkerStats,
}

impl WorkerCore {
    pub fn new(
        index: usize,
        config: MediaConfig,
        local_addrs: Vec<SocketAddr>,
        placement: Placement,
        node_events: Option<tokio::sync::mpsc::Sender<crate::api::NodeEvent>>,
    ) -> Self {
        WorkerCore {
            index,
            config,
            local_addrs,
            placement,
            sessions: FxHashMap::default(),
            demux: Demux::default(),
            participants: FxHashMap::default(),
            by_sid: HashMap::new(),
            rooms: HashMap::new(),
            tracks: FxHashMap::default(),
            subs: FxHashMap::default(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            transmits: Vec::new(),
            signals: Vec::new(),
            renegotiate: HashSet::new(),
            removals: Vec::new(),
            scratch: Vec::new(),
            failed_pending: false,
            speakers: HashMap::new(),
            levels: Vec::new(),
            next_allocation: None,
            node_events,
            next_id: 1,
            next_housekeeping: None,
            stats: WorkerStats::default(),
        }
    }

    /// Signaling messages produced since the last call, in order, each with its place in its
    /// participant's queue already reserved: sending one cannot fail or block.
    pub fn take_signals(&mut self) -> Vec<Signal> {
        std::mem::take(&mut self.signals)
    }

    /// Datagrams to send; the I/O shell sends them, then clears them.
    pub fn transmits(&self) -> &[Transmit] {
        &self.transmits
    }

    pub fn clear_transmits(&mut self) {
        self.transmits.clear();
    }

    pub fn gauges(&self) -> crate::stats::WorkerGauges {
        crate::stats::WorkerGauges {
            rooms: self.rooms.len(),
            participants: self.participants.len(),
            published_tracks: self.tracks.len(),
            subscriptions: self.subs.len(),
            paused_subscriptions: self
                .subs
                .values()
                .filter(|s| s.told_paused == Some(true))
                .count(),
            video_subscriptions_by_layer: self.layer_distribution(),
        }
    }

    fn layer_distribution(&self) -> [usize; 3] {
        let mut by_layer = [0; 3];
        for sub in self.subs.values() {
            if sub.told_paused == Some(true) {
                continue;
            }
            let layer = match &sub.svc {
                Some(svc) => svc.current().map(|(s, _)| usize::from(s)),
                None => sub.last_layer,
            };
            if let Some(l) = layer {
                by_layer[l.min(2)] += 1;
            }
        }
        by_layer
    }

    /// The next instant at which [`WorkerCore::handle_timeout`] must run.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        // Drop stale heap entries so the top is a real deadline.
        while let Some(Reverse((t, sid))) = self.timers.peek().copied() {
            match self.sessions.get(&sid) {
                Some(s) if s.timeout == Some(t) => break,
                _ => {
                    self.timers.pop();
                }
            }
        }
        let session = self.timers.peek().map(|Reverse((t, _))| *t);
        match (session, self.next_housekeeping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ------------------------------------------------------------------ input: network

    /// One datagram arrived on this worker's socket.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let session_id = match self.demux.route(source, data) {
            Route::Session(id) => id,
            Route::Drop => {
                self.stats.datagrams_dropped += 1;
                return;
            }
        };
        let destination = self.local_addr_for(source);
        let Ok(contents) = Receive::new(Protocol::Udp, source, destination, data) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        if is_rtp_with_pt(data, session.rtx_pts) {
            self.stats.rtx_in += 1;
        }
        let input = Input::Receive(now, contents);
        // The ufrag routed this datagram, but only str0m can verify it (MESSAGE-INTEGRITY).
        if !session.rtc.accepts(&input) {
            self.stats.datagrams_dropped += 1;
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| session.rtc.handle_input(input)));
        match result {
            Ok(Ok(())) => {
                if !session.addrs.contains(&source) && session.addrs.len() < MAX_ADDRS_PER_SESSION {
                    session.addrs.push(source);
                    self.demux.learn(source, session_id);
                }
            }
            Ok(Err(e)) => debug!(session = session_id, "input rejected: {e}"),
            Err(_) => {
                warn!(
                    session = session_id,
                    "str0m panicked on input; dropping session"
                );
                session.failed = true;
                self.failed_pending = true;
            }
        }
        self.drain(session_id, now);
        self.process(now);
    }

    fn local_addr_for(&self, source: SocketAddr) -> SocketAddr {
        // A dual-stack socket (`bind = "::"`) reports IPv4 peers as IPv4-mapped IPv6: they
        // sent to the IPv4 candidate.
        let ipv4 = source.ip().to_canonical().is_ipv4();
        self.local_addrs
            .iter()
            .find(|a| a.is_ipv4() == ipv4)
            .or_else(|| self.local_addrs.first())
            .copied()
            .unwrap_or(source)
    }

    // ------------------------------------------------------------------ input: time

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, sid))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let due = self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.timeout == Some(t));
            if !due {
                continue;
            }
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.timeout = None;
                let r = catch_unwind(AssertUnwindSafe(|| s.rtc.handle_input(Input::Timeout(now))));
                if !matches!(r, Ok(Ok(()))) {
                    s.failed = true;
                    self.failed_pending = true;
                }
            }
            self.drain(sid, now);
        }
        if self.next_housekeeping.is_none_or(|t| t <= now) {
            self.housekeeping(now);
            self.next_housekeeping = (!self.participants.is_empty()).then(|| now + HOUSEKEEPING);
        }
        self.process(now);
    }

    // ------------------------------------------------------------------ input: commands

    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Join {
                spec,
                sid,
                sessions,
                events,
                offer,
                reply,
            } => {
                let result = self.join(now, spec, sid, sessions, events, offer);
                let _ = reply.send(result);
            }
            Command::Participant { sid, request } => {
                let Some(&pid) = self.by_sid.get(&sid) else {
                    reply_not_found(request, &sid);
                    return;
                };
                self.handle_request(now, pid, request);
            }
            Command::Admin(request) => self.handle_admin(now, request),
        }
        self.process(now);
        if self.next_housekeeping.is_none() && !self.participants.is_empty() {
            self.next_housekeeping = Some(now + HOUSEKEEPING);
        }
    }

    fn join(
        &mut self,
        now: Instant,
        spec: ParticipantSpec,
        sid: String,
        sessions: Vec<PreparedSession>,
        events: Option<crate::api::EventSender>,
        offer: Option<Offer>,
    ) -> Result<Joined, SfuError> {
        let room_name = spec.room.clone();
        if self.participants.len() >= self.config.max_participants_per_worker {
            self.release_placement(&room_name);
            return Err(SfuError::Unavailable("media worker is full".into()));
        }
        // A WHEP viewer needs its target present.
        if let ParticipantKind::Whep { target_identity } = &spec.kind
            && self.find_identity(&room_name, target_identity).is_none()
        {
            self.release_placement(&room_name);
            return Err(SfuError::NotFound(format!(
                "no participant {target_identity:?} in the room"
            )));
        }
        // One identity, one session: a rejoin (reload, second device) replaces the old one.
        if !matches!(spec.kind, ParticipantKind::Whep { .. })
            && let Some(old) = self.find_identity(&room_name, &spec.identity)
        {
            self.remove_participant(now, old, LeaveReason::DuplicateIdentity);
        }
        if let Some(max) = spec.max_participants {
            let present = self.rooms.get(&room_name).map_or(0, |r| {
                r.participants
                    .iter()
                    .filter(|id| self.participants.get(id).is_some_and(|p| !p.hidden()))
                    .count()
            });
            let counts = !spec.hidden && !matches!(spec.kind, ParticipantKind::Whep { .. });
            if counts && present >= max as usize {
                self.release_placement(&room_name);
                return Err(SfuError::RoomFull(max));
            }
        }

        let pid = self.new_id();
        let mut participant = Participant {
            sid: sid.clone(),
            identity: spec.identity,
            name: spec.name,
            room: room_name.clone(),
            kind: spec.kind,
            can_publish: spec.can_publish,
            can_subscribe: spec.can_subscribe,
            can_publish_data: spec.can_publish_data,
            observer: spec.hidden,
            metadata: spec.metadata,
            publisher: None,
            subscriber: None,
            tracks: Vec::new(),
            subscriptions: Vec::new(),
            joined_at: Some(now),
            detached: None,
            data_limiter: Default::default(),
            events,
        };
        for prepared in sessions {
            let id = prepared.id;
            match prepared.role {
                SessionRole::Publisher => participant.publisher = Some(id),
                SessionRole::Subscriber | SessionRole::Whep => participant.subscriber = Some(id),
            }
            self.demux.register_ufrag(prepared.ufrag.clone(), id);
            self.sessions.insert(id, Session::new(prepared, pid));
        }
        self.participants.insert(pid, participant);
        self.by_sid.insert(sid, pid);

        let answer = match offer {
            Some(offer) => match self.accept_offer(now, pid, offer) {
                Ok(a) => Some(a),
                Err(e) => {
                    self.forget_participant(pid);
                    return Err(e);
                }
            },
            None => None,
        };

        let others: Vec<ParticipantInfo> = self
            .rooms
            .get(&room_name)
            .map(|r| {
                r.participants
                    .iter()
                    .filter_map(|id| self.participants.get(id))
                    .filter(|p| !p.hidden())
                    .map(|p| participant_info(p, &self.tracks))
                    .collect()
            })
            .unwrap_or_default();
        self.rooms
            .entry(room_name.clone())
            .or_insert_with(|| Room {
                participants: Vec::new(),
            })
            .participants
            .push(pid);

        let p = &self.participants[&pid];
        let info = participant_info(p, &self.tracks);
        info!(worker = self.index, participant = %p.sid, "participant joined");
        if !p.hidden() {
            self.broadcast(
                &room_name,
                pid,
                ServerMessage::ParticipantJoined {
                    participant: info.clone(),
                },
            );
            self.emit(crate::api::NodeEvent::ParticipantJoined {
                room: room_name.clone(),
                participant: info.clone(),
            });
        }
        // Subscribe the newcomer to everything already published (the first subscribe offer
        // goes out even if there is nothing yet: it opens the data channel).
        if let Some(sub) = self.participants.get(&pid).and_then(|p| p.subscriber)
            && self
                .sessions
                .get(&sub)
                .is_some_and(|s| s.role == SessionRole::Subscriber)
        {
            self.renegotiate.insert(sub);
        }
        self.subscribe_to_room(now, pid);
        self.announce_speakers_to(pid);
        Ok(Joined {
            participant: info,
            others,
            answer,
        })
    }

    fn find_identity(&self, room: &str, identity: &str) -> Option<ParticipantId> {
        self.rooms
            .get(room)?
            .participants
            .iter()
            .copied()
            .find(|id| {
                self.participants
                    .get(id)
                    .is_some_and(|p| p.identity == identity && !p.hidden())
            })
    }

    fn handle_request(&mut self, now: Instant, pid: ParticipantId, request: Request) {
        match request {
            Request::Offer(offer, reply) => {
                let r = self.accept_offer(now, pid, offer);
                let _ = reply.send(r);
            }
            Request::SubscribeAnswer(sdp, reply) => {
                let r = self.accept_subscribe_answer(now, pid, &sdp);
                let _ = reply.send(r);
            }
            Request::Candidate(role, candidate) => {
                let p = &self.participants[&pid];
                let sid = match role {
                    moien_protocol::PeerRole::Publisher => p.publisher,
                    moien_protocol::PeerRole::Subscriber => p.subscriber,
                };
                let parsed = str0m::Candidate::from_sdp_string(&candidate);
                if let (Some(sid), Ok(c)) = (sid, parsed)
                    && let Some(s) = self.sessions.get_mut(&sid)
                {
                    s.rtc.add_remote_candidate(c);
                    self.drain(sid, now);
                }
            }
            Request::Mute { track_sid, muted } => {
                if let Err(e) = self.set_muted(now, pid, &track_sid, muted, false) {
                    self.send_to(pid, ServerMessage::error(e.code(), e.to_string()));
                }
            }
            Request::UpdateSubscription { track_sid, prefs } => {
                let found = self.participants[&pid]
                    .subscriptions
                    .iter()
                    .copied()
                    .find(|s| {
                        self.subs
                            .get(s)
                            .and_then(|s| self.tracks.get(&s.track))
                            .is_some_and(|t| t.sid == track_sid)
                    });
                match found {
                    Some(sub_id) => self.update_subscription(now, sub_id, prefs),
                    None => self.send_to(
                        pid,
                        ServerMessage::error(
                            moien_protocol::ErrorCode::NotFound,
                            "no subscription to that track",
                        ),
                    ),
                }
            }
            Request::Leave(reason, reply) => {
                self.remove_participant(now, pid, reason);
                let _ = reply.send(Ok(()));
            }
            Request::Detach(window, reply) => {
                self.detach(pid, now, window);
                let _ = reply.send(Ok(()));
            }
            Request::Resume(events, reply) => {
                let r = self.resume(pid, events, now);
                let _ = reply.send(r);
            }
        }
    }

    // ------------------------------------------------------------------ negotiation

    /// A client offer: the publisher session of a WebSocket or WHIP participant, or a WHEP
    /// session.
    fn accept_offer(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        offer: Offer,
    ) -> Result<Answer, SfuError> {
        let p = &self.participants[&pid];
        let session_id = match p.kind {
            ParticipantKind::Whep { .. } => p.subscriber,
            _ => {
                if !p.can_publish {
                    return Err(SfuError::Forbidden("the token has no publish grant".into()));
                }
                p.publisher
            }
        }
        .ok_or_else(|| SfuError::InvalidState("no session accepts offers".into()))?;
        let sdp = SdpOffer::from_sdp_string(&offer.sdp).map_err(|e| {
            debug!("malformed offer: {e}");
            SfuError::InvalidSdp("malformed SDP offer".into())
        })?;
        let session = self
            .sessions
            .get_mut(&session_id)
            .ok_or_else(|| SfuError::InvalidState("session gone".into()))?;
        let answer = catch_unwind(AssertUnwindSafe(|| session.rtc.sdp_api().accept_offer(sdp)));
        let answer = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                // A rejected offer must not kill a session that was working.
                return Err(SfuError::InvalidSdp(e.to_string()));
            }
            Err(_) => {
                session.failed = true;
                self.failed_pending = true;
                return Err(SfuError::InvalidSdp("offer could not be negotiated".into()));
            }
        };
        if session.negotiated_at.is_none() {
            session.negotiated_at = Some(now);
        }
        session.rtx_pts = rtx_pts(&session.rtc);
        // An offer that restarts ICE gives us new credentials too: route them here.
        let ufrag = session.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag != session.ufrag {
            let old = std::mem::replace(&mut session.ufrag, ufrag.clone());
            session.old_ufrags.push(old);
            self.demux.register_ufrag(ufrag, session_id);
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Err(SfuError::InvalidState("session gone".into()));
        };
        let role = session.role;
        self.drain(session_id, now);
        self.sync_media(now, pid, session_id, &offer_mids(&offer.sdp), &offer.tracks);
        self.process(now);
        let tracks = match role {
            SessionRole::Publisher => self.sessions[&session_id]
                .recv_tracks
                .iter()
                .filter_map(|(mid, tid)| {
                    self.tracks.get(tid).map(|t| PublishedTrack {
                        mid: mid.to_string(),
                        track: t.info(),
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        if role == SessionRole::Whep {
            self.fill_whep_slots(now, pid);
        }
        Ok(Answer {
            sdp: answer.to_sdp_string(),
            tracks,
        })
    }

    /// Brings tracks (publisher sessions) and slots (WHEP sessions) in line with the m-lines of
    /// an accepted offer. str0m only reports MediaAdded once DTLS is up, which is too late for the
    /// answer, so the offer's mids are read here.
    fn sync_media(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        session_id: SessionId,
        mids: &[Mid],
        described: &[PublishTrack],
    ) {
        for &mid in mids {
            let Some(session) = self.sessions.get(&session_id) else {
                return;
            };
            // A stopped m-line may be gone from str0m's list: it receives nothing either way.
            let media = session.rtc.media(mid);
            let kind = media.map_or(MediaKind::Audio, |m| m.kind());
            let direction = media.map_or(Direction::Inactive, |m| m.direction());
            let stopped = media.is_none_or(|m| m.stopped() || m.disabled());
            match session.role {
                SessionRole::Publisher => {
                    let existing = session.recv_tracks.get(&mid).copied();
                    match (direction.is_receiving() && !stopped, existing) {
                        (true, None) => self.add_track(now, pid, session_id, mid, kind, described),
                        (false, Some(tid)) => self.remove_track(now, tid),
                        _ => {}
                    }
                }
                SessionRole::Whep => {
                    let known = session.whep_slots.iter().any(|(m, _)| *m == mid);
                    if direction.is_sending()
                        && !stopped
                        && !known
                        && let Some(s) = self.sessions.get_mut(&session_id)
                    {
                        s.whep_slots.push((mid, track_kind(kind)));
                    }
                }
                SessionRole::Subscriber => {}
            }
        }
    }

    fn add_track(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        session_id: SessionId,
        mid: Mid,
        kind: MediaKind,
        described: &[PublishTrack],
    ) {
        let kind = track_kind(kind);
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let desc = described.iter().find(|d| d.mid == mid.to_string());
        let source = desc
            .and_then(|d| d.source)
            .unwrap_or_else(|| TrackSource::default_for(kind));
        let muted = desc.is_some_and(|d| d.muted);
        let codec = session.rtc.media(mid).and_then(|media| {
            let pt = *media.remote_pts().first()?;
            let params = session.rtc.codec_config().find(|p| p.pt() == pt)?;
            Some(params.spec().codec)
        });
        // Simulcast layers in the publisher's rid order (lowest first by convention).
        let rids: Vec<Option<str0m::media::Rid>> = match session.rtc.media(mid).map(|m| m.rids_rx())
        {
            Some(str0m::media::Rids::Specific(r)) if !r.is_empty() => {
                r.iter().copied().map(Some).collect()
            }
            _ => vec![None],
        };
        let interval = self.config.keyframe_interval;
        let layers = rids
            .into_iter()
            .map(|rid| TrackLayer::new(rid, KeyframeThrottle::new(interval)))
            .collect();
        let tid = self.next_id;
        self.next_id += 1;
        session.recv_tracks.insert(mid, tid);
        let track = Track {
            sid: format!("TR_{}", random_id()),
            participant: pid,
            session: session_id,
            mid,
            kind,
            source,
            muted,
            codec,
            svc: false,
            subscriptions: Vec::new(),
            layers,
        };
        let info = track.info();
        self.tracks.insert(tid, track);
        let Some(p) = self.participants.get_mut(&pid) else {
            return;
        };
        p.tracks.push(tid);
        let room = p.room.clone();
        let psid = p.sid.clone();
        debug!(participant = %psid, track = %info.sid, "track published");
        self.broadcast(
            &room,
            pid,
            ServerMessage::TrackPublished {
                participant_sid: psid,
                track: info.clone(),
            },
        );
        if let Some(p) = self.participants.get(&pid)
            && !p.hidden()
        {
            let participant = participant_info(p, &self.tracks);
            self.emit(crate::api::NodeEvent::TrackPublished {
                room,
                participant,
                track: info,
            });
        }
        self.subscribe_room_to_track(now, tid);
    }

    fn accept_subscribe_answer(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        sdp: &str,
    ) -> Result<(), SfuError> {
        let session_id = self.participants[&pid]
            .subscriber
            .ok_or_else(|| SfuError::InvalidState("no subscriber session".into()))?;
        let session = self
            .sessions
            .get_mut(&session_id)
            .ok_or_else(|| SfuError::InvalidState("session gone".into()))?;
        if session.role != SessionRole::Subscriber {
            return Err(SfuError::InvalidState("not a subscriber session".into()));
        }
        let Some(pending) = session.pending_offer.take() else {
            return Err(SfuError::InvalidState(
                "no subscribe offer outstanding".into(),
            ));
        };
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => {
                debug!("malformed answer: {e}");
                // Keep the offer outstanding: the client may still send a valid answer.
                session.pending_offer = Some(pending);
                return Err(SfuError::InvalidSdp("malformed SDP answer".into()));
            }
        };
        let r = catch_unwind(AssertUnwindSafe(|| {
            session.rtc.sdp_api().accept_answer(pending, answer)
        }));
        let result = match r {
            Ok(Ok(())) => {
                if session.negotiated_at.is_none() {
                    session.negotiated_at = Some(now);
                }
                session.rtx_pts = rtx_pts(&session.rtc);
                let sub_ids: Vec<SubscriptionId> = session.send_subs.values().copied().collect();
                let fresh = (sub_ids.iter().filter_map(|id| self.subs.get(id)))
                    .filter(|sub| !sub.negotiated)
                    .filter_map(|sub| sub.mid);
                set_rtx_history(&mut session.rtc, fresh, session.rtx_history);
                for sub_id in sub_ids {
                    if let Some(sub) = self.subs.get_mut(&sub_id)
                        && !sub.negotiated
                    {
                        sub.negotiated = true;
                        self.request_keyframe_for_sub(now, sub_id);
                    }
                }
                Ok(())
            }
            Ok(Err(e)) => {
                // The offer is gone: offer again what it carried.
                self.reset_unnegotiated(session_id);
                Err(SfuError::InvalidSdp(e.to_string()))
            }
            Err(_) => {
                session.failed = true;
                self.failed_pending = true;
                Err(SfuError::InvalidSdp("answer could not be applied".into()))
            }
        };
        self.drain(session_id, now);
        if self
            .sessions
            .get(&session_id)
            .is_some_and(|s| s.needs_offer)
        {
            self.renegotiate.insert(session_id);
        }
        result
    }

    /// Forgets the m-lines of a rejected offer so the next offer carries them again.
    fn reset_unnegotiated(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let mut dropped = Vec::new();
        session.send_subs.retain(|mid, sub_id| {
            let keep = self.subs.get(sub_id).is_some_and(|s| s.negotiated);
            if !keep {
                dropped.push((*mid, *sub_id));
            }
            keep
        });
        for (_, sub_id) in dropped {
            if let Some(sub) = self.subs.get_mut(&sub_id) {
                sub.mid = None;
            }
        }
        session.needs_offer = true;
        self.renegotiate.insert(session_id);
    }

    /// Creates (or updates) the offer of every subscriber session whose m-lines changed.
    fn flush_offers(&mut self, now: Instant) {
        let ids: Vec<SessionId> = self.renegotiate.drain().collect();
        for session_id in ids {
            self.offer(now, session_id);
        }
    }

    fn offer(&mut self, now: Instant, session_id: SessionId) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        if session.role != SessionRole::Subscriber || session.failed {
            return;
        }
        if session.pending_offer.is_some() {
            // One offer at a time; the answer handler offers again.
            session.needs_offer = true;
            return;
        }
        session.needs_offer = false;
        let pid = session.participant;
        let Some(p) = self.participants.get(&pid) else {
            return;
        };
        let mut api = session.rtc.sdp_api();
        // The first offer carries the data channel: it keeps the BUNDLE group non-empty when
        // every media m-line is stopped (Chrome refuses max-bundle offers without one), and it
        // connects the session before the first track arrives.
        let add_channel = !session.channel_added;
        let channels = add_channel.then(|| data::Channels {
            reliable: Some(api.add_channel(moien_protocol::DATA_CHANNEL_RELIABLE.to_string())),
            lossy: Some(api.add_channel_with_config(data::lossy_config())),
        });
        for mid in session.to_stop.drain(..) {
            api.stop_media(mid);
        }
        let restart = std::mem::take(&mut session.ice_restart).then(|| api.ice_restart(true));
        let mut added = Vec::new();
        for &sub_id in &p.subscriptions {
            let Some(sub) = self.subs.get(&sub_id) else {
                continue;
            };
            if sub.mid.is_some() {
                continue;
            }
            let Some(track) = self.tracks.get(&sub.track) else {
                continue;
            };
            let Some(publisher) = self.participants.get(&track.participant) else {
                continue;
            };
            let kind = match track.kind {
                TrackKind::Audio => MediaKind::Audio,
                TrackKind::Video => MediaKind::Video,
            };
            let mid = api.add_media(
                kind,
                Direction::SendOnly,
                Some(publisher.sid.clone()),
                Some(track.sid.clone()),
                None,
            );
            added.push((sub_id, mid));
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        for (sub_id, mid) in added {
            session.send_subs.insert(mid, sub_id);
            if let Some(sub) = self.subs.get_mut(&sub_id) {
                sub.mid = Some(mid);
            }
        }
        session.pending_offer = Some(pending);
        session.offer_sent_at = Some(now);
        if let Some(creds) = restart {
            // The client answers to the new credentials: route them here too.
            let old = std::mem::replace(&mut session.ufrag, creds.ufrag.clone());
            session.old_ufrags.push(old);
            self.demux.register_ufrag(creds.ufrag, session_id);
        }
        if let Some(c) = channels {
            session.channel_added = true;
            session.channels = c;
        }
        let tracks = self.subscribed_tracks(session_id);
        let sdp = offer.to_sdp_string();
        self.send_to(pid, ServerMessage::SubscribeOffer { sdp, tracks });
    }

    fn subscribed_tracks(&self, session_id: SessionId) -> Vec<SubscribedTrack> {
        let Some(session) = self.sessions.get(&session_id) else {
            return Vec::new();
        };
        let mut out: Vec<SubscribedTrack> = session
            .send_subs
            .iter()
            .filter_map(|(mid, sub_id)| {
                let sub = self.subs.get(sub_id)?;
                let track = self.tracks.get(&sub.track)?;
                let publisher = self.participants.get(&track.participant)?;
                Some(SubscribedTrack {
                    mid: mid.to_string(),
                    participant_sid: publisher.sid.clone(),
                    track_sid: track.sid.clone(),
                    kind: track.kind,
                })
            })
            .collect();
        out.sort_by(|a, b| a.mid.cmp(&b.mid));
        out
    }

    // ------------------------------------------------------------------ subscriptions

    fn subscribe_to_room(&mut self, now: Instant, pid: ParticipantId) {
        let Some(p) = self.participants.get(&pid) else {
            return;
        };
        if p.kind != ParticipantKind::Regular || !p.can_subscribe {
            return;
        }
        let Some(room) = self.rooms.get(&p.room) else {
            return;
        };
        let tracks: Vec<TrackId> = room
            .participants
            .iter()
            .filter(|&&other| other != pid)
            .filter_map(|other| self.participants.get(other))
            .flat_map(|o| o.tracks.iter().copied())
            .collect();
        for tid in tracks {
            self.subscribe(now, pid, tid);
        }
    }

    fn subscribe_room_to_track(&mut self, now: Instant, tid: TrackId) {
        let Some(track) = self.tracks.get(&tid) else {
            return;
        };
        let publisher = track.participant;
        let Some(room) = self
            .participants
            .get(&publisher)
            .and_then(|p| self.rooms.get(&p.room))
        else {
            return;
        };
        let subscribers: Vec<ParticipantId> = room
            .participants
            .iter()
            .copied()
            .filter(|&id| id != publisher)
            .collect();
        for pid in subscribers {
            let Some(p) = self.participants.get(&pid) else {
                continue;
            };
            match &p.kind {
                ParticipantKind::Regular if p.can_subscribe => self.subscribe(now, pid, tid),
                ParticipantKind::Whep { .. } => self.fill_whep_slots(now, pid),
                _ => {}
            }
        }
    }

    /// Subscribes a WebSocket participant to a track; the m-line comes with the next offer.
    fn subscribe(&mut self, now: Instant, pid: ParticipantId, tid: TrackId) {
        let Some(session_id) = self.participants.get(&pid).and_then(|p| p.subscriber) else {
            return;
        };
        let sub_id = self.new_subscription(now, pid, tid, session_id, None);
        if sub_id.is_some() {
            self.renegotiate.insert(session_id);
        }
    }

    fn new_subscription(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        tid: TrackId,
        session_id: SessionId,
        mid: Option<Mid>,
    ) -> Option<SubscriptionId> {
        let track = self.tracks.get_mut(&tid)?;
        let mut rng = rand::thread_rng();
        let sub = Subscription {
            track: tid,
            subscriber: pid,
            session: session_id,
            mid,
            negotiated: mid.is_some(),
            rewriter: Rewriter::new(rng.gen_range(1..30_000), rng.r#gen()),
            vp8: Default::default(),
            selector: SimulcastSelector::default(),
            svc: track.svc.then(Default::default),
            keyframe_wait_since: None,
            last_forward: None,
            last_layer: None,
            max_layer: None,
            max_temporal: None,
            client_paused: false,
            pinned: false,
            bandwidth_paused_since: None,
            resume_backoff: allocation::RESUME_BACKOFF_MIN,
            trial_started: None,
            told_paused: None,
            pt_map: Vec::new(),
        };
        let video = track.kind == TrackKind::Video;
        let sub_id = self.next_id;
        self.next_id += 1;
        track.subscriptions.push(sub_id);
        self.subs.insert(sub_id, sub);
        if let Some(p) = self.participants.get_mut(&pid) {
            p.subscriptions.push(sub_id);
        }
        if let (Some(mid), Some(s)) = (mid, self.sessions.get_mut(&session_id)) {
            s.send_subs.insert(mid, sub_id);
        }
        if video {
            // Start on the lowest layer: it starts fastest; allocation upgrades it.
            if let Some(sub) = self.subs.get_mut(&sub_id) {
                sub.selector.set_target(Some(0));
                sub.apply_svc_target();
            }
            // A newcomer needs a keyframe to start decoding.
            self.request_keyframe_for_sub(now, sub_id);
        }
        self.allocate_session(now, session_id);
        Some(sub_id)
    }

    /// Puts the WHEP target's tracks on the viewer's free recvonly m-lines.
    fn fill_whep_slots(&mut self, now: Instant, pid: ParticipantId) {
        let Some(p) = self.participants.get(&pid) else {
            return;
        };
        let ParticipantKind::Whep { target_identity } = &p.kind else {
            return;
        };
        let Some(session_id) = p.subscriber else {
            return;
        };
        let Some(target) = self.find_identity(&p.room, target_identity) else {
            return;
        };
        let target_tracks = self.participants[&target].tracks.clone();
        for tid in target_tracks {
            let Some(track) = self.tracks.get(&tid) else {
                continue;
            };
            if track
                .subscriptions
                .iter()
                .any(|s| self.subs.get(s).is_some_and(|s| s.subscriber == pid))
            {
                continue;
            }
            let kind = track.kind;
            let Some(session) = self.sessions.get(&session_id) else {
                return;
            };
            let free = session
                .whep_slots
                .iter()
                .find(|(mid, k)| *k == kind && !session.send_subs.contains_key(mid))
                .map(|(mid, _)| *mid);
            if let Some(mid) = free {
                self.new_subscription(now, pid, tid, session_id, Some(mid));
            }
        }
    }

    fn remove_subscription(&mut self, sub_id: SubscriptionId) {
        let Some(sub) = self.subs.remove(&sub_id) else {
            return;
        };
        if let Some(t) = self.tracks.get_mut(&sub.track) {
            t.subscriptions.retain(|s| *s != sub_id);
        }
        if let Some(p) = self.participants.get_mut(&sub.subscriber) {
            p.subscriptions.retain(|s| *s != sub_id);
        }
        if let Some(session) = self.sessions.get_mut(&sub.session)
            && let Some(mid) = sub.mid
        {
            session.send_subs.remove(&mid);
            if session.role == SessionRole::Subscriber {
                session.to_stop.push(mid);
                self.renegotiate.insert(sub.session);
            }
        }
    }

    fn remove_track(&mut self, now: Instant, tid: TrackId) {
        let Some(track) = self.tracks.remove(&tid) else {
            return;
        };
        for sub_id in &track.subscriptions {
            self.remove_subscription(*sub_id);
        }
        if let Some(s) = self.sessions.get_mut(&track.session) {
            s.recv_tracks.remove(&track.mid);
            s.ssrc_tracks.retain(|_, (t, _)| *t != tid);
        }
        let _ = now;
        let info = track.info();
        if let Some(p) = self.participants.get_mut(&track.participant) {
            p.tracks.retain(|t| *t != tid);
            let room = p.room.clone();
            let psid = p.sid.clone();
            self.broadcast(
                &room,
                track.participant,
                ServerMessage::TrackUnpublished {
                    participant_sid: psid,
                    track_sid: track.sid,
                },
            );
            if let Some(p) = self.participants.get(&track.participant)
                && !p.hidden()
            {
                let participant = participant_info(p, &self.tracks);
                self.emit(crate::api::NodeEvent::TrackUnpublished {
                    room,
                    participant,
                    track: info,
                });
            }
        }
    }

    // ------------------------------------------------------------------ participants

    pub(crate) fn remove_participant(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        reason: LeaveReason,
    ) {
        let Some(p) = self.participants.get(&pid) else {
            return;
        };
        info!(worker = self.index, participant = %p.sid, ?reason, "participant left");
        let tracks = p.tracks.clone();
        let subs = p.subscriptions.clone();
        for tid in tracks {
            self.remove_track(now, tid);
        }
        for sub_id in subs {
            self.remove_subscription(sub_id);
        }
        let Some(p) = self.participants.get(&pid) else {
            return;
        };
        let (room, sid, identity, hidden) = (
            p.room.clone(),
            p.sid.clone(),
            p.identity.clone(),
            p.hidden(),
        );
        if let Some(d) = self.speakers.get_mut(&room) {
            d.forget(pid);
        }
        if !hidden {
            let participant = participant_info(p, &self.tracks);
            self.emit(crate::api::NodeEvent::ParticipantLeft {
                room: room.clone(),
                participant,
                reason,
            });
        }
        if reason != LeaveReason::ClientRequest {
            self.send_to(pid, ServerMessage::Leave { reason });
        }
        if !hidden {
            self.broadcast(
                &room,
                pid,
                ServerMessage::ParticipantLeft {
                    participant_sid: sid,
                    identity: identity.clone(),
                    reason,
                },
            );
        }
        self.forget_participant(pid);
        // WHEP viewers of a departed participant have nothing left to watch.
        if !hidden {
            let viewers: Vec<ParticipantId> = self
                .rooms
                .get(&room)
                .map(|r| {
                    r.participants
                        .iter()
                        .copied()
                        .filter(|id| {
                            self.participants.get(id).is_some_and(|v| {
                                matches!(&v.kind, ParticipantKind::Whep { target_identity } if *target_identity == identity)
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            for v in viewers {
                self.remove_participant(now, v, reason);
            }
        }
    }

    /// Drops a participant's state without telling anyone (the caller has).
    fn forget_participant(&mut self, pid: ParticipantId) {
        let Some(p) = self.participants.remove(&pid) else {
            return;
        };
        self.by_sid.remove(&p.sid);
        for sid in [p.publisher, p.subscriber].into_iter().flatten() {
            if let Some(mut s) = self.sessions.remove(&sid) {
                self.demux.forget(&s.ufrag, &s.addrs);
                for old in &s.old_ufrags {
                    self.demux.forget(old, &[]);
                }
                s.rtc.disconnect();
            }
        }
        let mut room_empty = false;
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.participants.retain(|id| *id != pid);
            room_empty = room.participants.is_empty();
        }
        if room_empty {
            self.rooms.remove(&p.room);
            self.speakers.remove(&p.room);
            self.emit(crate::api::NodeEvent::RoomEmpty {
                room: p.room.clone(),
            });
        }
        self.release_placement(&p.room);
    }

    /// One participant fewer in `room` on this worker; the room's placement goes with the last.
    fn release_placement(&self, room: &str) {
        self.placement.remove_if_mut(room, |_, (_, count)| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }

    fn send_to(&mut self, pid: ParticipantId, msg: ServerMessage) {
        let Some(p) = self.participants.get_mut(&pid) else {
            return;
        };
        let Some(tx) = &p.events else {
            return;
        };
        // Only the room in the queue is taken here. Sending wakes the participant's signaling
        // task, which costs this thread microseconds a message (a futex, at times a preemption):
        // an active-speaker change alone is a message to every member of a room, and packets
        // wait while the worker is busy. The shell delivers from another thread.
        match tx.clone().try_reserve_owned() {
            Ok(permit) => self.signals.push((permit, msg)),
            Err(TrySendError::Full(_)) => {
                warn!(participant = %p.sid, "signaling queue full; removing participant");
                p.events = None;
                self.stats.slow_consumers += 1;
                // Removal happens in housekeeping: we may be inside another removal now.
                self.removals.push((pid, LeaveReason::SlowConsumer));
            }
            Err(TrySendError::Closed(_)) => {
                p.events = None;
                self.removals.push((pid, LeaveReason::ClientRequest));
            }
        }
    }

    fn broadcast(&mut self, room: &str, except: ParticipantId, msg: ServerMessage) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let targets: Vec<ParticipantId> = r
            .participants
            .iter()
            .copied()
            .filter(|id| *id != except)
            .filter(|id| {
                self.participants
                    .get(id)
                    .is_some_and(|p| p.kind == ParticipantKind::Regular)
            })
            .collect();
        for pid in targets {
            self.send_to(pid, msg.clone());
        }
    }

    // ------------------------------------------------------------------ str0m plumbing

    /// Polls a session until it only has a timeout left (str0m's drain rule).
    fn drain(&mut self, session_id: SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        loop {
            let out = catch_unwind(AssertUnwindSafe(|| session.rtc.poll_output()));
            match out {
                Ok(Ok(Output::Timeout(t))) => {
                    let t = t.max(now);
                    if session.timeout != Some(t) {
                        session.timeout = Some(t);
                        self.timers.push(Reverse((t, session_id)));
                    }
                    break;
                }
                Ok(Ok(Output::Transmit(t))) => {
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += t.contents.len() as u64;
                    if is_rtp_with_pt(&t.contents, session.rtx_pts) {
                        self.stats.rtx_out += 1;
                    }
                    self.transmits.push(t);
                }
                Ok(Ok(Output::Event(e))) => self.events.push_back((session_id, e)),
                Ok(Err(e)) => {
                    debug!(session = session_id, "session ended: {e}");
                    session.failed = true;
                    self.failed_pending = true;
                    break;
                }
                Err(_) => {
                    warn!(session = session_id, "str0m panicked; dropping session");
                    session.failed = true;
                    self.failed_pending = true;
                    break;
                }
            }
        }
    }

    /// Handles queued session events, then offers and removals they caused.
    fn process(&mut self, now: Instant) {
        loop {
            while let Some((sid, ev)) = self.events.pop_front() {
                self.handle_event(now, sid, ev);
            }
            let failed: Vec<ParticipantId> = if std::mem::take(&mut self.failed_pending) {
                self.sessions
                    .values()
                    .filter(|s| s.failed)
                    .map(|s| s.participant)
                    .collect()
            } else {
                Vec::new()
            };
            for pid in failed {
                self.stats.session_failed("rtc_error");
                self.remove_participant(now, pid, LeaveReason::ConnectionLost);
            }
            for (pid, reason) in std::mem::take(&mut self.removals) {
                self.remove_participant(now, pid, reason);
            }
            self.flush_offers(now);
            if self.events.is_empty() && self.removals.is_empty() {
                break;
            }
        }
    }

    /// Resizes a session's retransmission histories when its round-trip time moves them to
    /// another step of [`rtx_history`] (rebuilding one drops its packets, so only then).
    fn follow_rtt(&mut self, session_id: SessionId, rtt: Duration) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let history = rtx_history(Some(rtt));
        if history == session.rtx_history {
            return;
        }
        session.rtx_history = history;
        let mids: Vec<Mid> = (session.send_subs.iter())
            .filter(|(_, id)| self.subs.get(id).is_some_and(|s| s.negotiated))
            .map(|(mid, _)| *mid)
            .collect();
        set_rtx_history(&mut session.rtc, mids, history);
    }

    fn handle_event(&mut self, now: Instant, session_id: SessionId, event: Event) {
        match event {
            Event::RtpPacket(pkt) => self.forward(now, session_id, pkt),
            Event::KeyframeRequest(req) => {
                let sub = self
                    .sessions
                    .get(&session_id)
                    .and_then(|s| s.send_subs.get(&req.mid))
                    .and_then(|id| self.subs.get(id));
                // The subscriber lost its picture: a keyframe of what it receives.
                let wanted = sub.and_then(|s| {
                    let layer = s.selector.current().or(s.selector.target())?;
                    Some((s.track, layer))
                });
                if let Some((track, layer)) = wanted {
                    match req.kind {
                        KeyframeRequestKind::Pli => self.stats.plis_in += 1,
                        KeyframeRequestKind::Fir => self.stats.firs_in += 1,
                    }
                    self.request_keyframe(now, track, layer);
                }
            }
            Event::Connected => {
                let Some(s) = self.sessions.get_mut(&session_id) else {
                    return;
                };
                s.connected = true;
                s.connected_at = Some(now);
                let pid = s.participant;
                if let Some(p) = self.participants.get_mut(&pid)
                    && let Some(joined) = p.joined_at.take()
                {
                    self.stats
                        .join_seconds
                        .observe(now.saturating_duration_since(joined).as_secs_f64());
                }
                let Some(s) = self.sessions.get_mut(&session_id) else {
                    return;
                };
                debug!(session = session_id, "connected");
                // Subscriptions of a freshly connected session need a keyframe now.
                let waiting: Vec<SubscriptionId> = s
                    .send_subs
                    .values()
                    .copied()
                    .filter(|id| self.subs.get(id).is_some_and(|sub| sub.needs_keyframe()))
                    .collect();
                for sub_id in waiting {
                    self.request_keyframe_for_sub(now, sub_id);
                }
            }
            Event::EgressBitrateEstimate(str0m::bwe::BweKind::Twcc { estimate, .. }) => {
                self.stats.bwe_bps.observe(estimate.as_f64());
                self.on_estimate(now, session_id, estimate.as_u64());
            }
            Event::PeerStats(p) => {
                if let Some(rtt) = p.rtt {
                    self.stats.rtt_seconds.observe(rtt.as_secs_f64());
                }
            }
            Event::MediaEgressStats(m) => {
                // What a subscriber reports about what we send it.
                let video = self
                    .sessions
                    .get(&session_id)
                    .and_then(|s| s.send_subs.get(&m.mid))
                    .and_then(|id| self.subs.get(id))
                    .and_then(|sub| self.tracks.get(&sub.track))
                    .is_some_and(|t| t.kind == TrackKind::Video);
                if let Some(loss) = m.loss {
                    self.stats.loss_ratio.observe(f64::from(loss));
                }
                if let Some(r) = &m.remote {
                    let clock = if video { 90_000.0 } else { 48_000.0 };
                    self.stats
                        .jitter_seconds
                        .observe(f64::from(r.jitter) / clock);
                }
                if let Some(s) = self.sessions.get_mut(&session_id) {
                    let last = s
                        .nack_counts
                        .insert((m.mid, m.rid, true), m.nacks)
                        .unwrap_or(0);
                    self.stats.nacks_in += m.nacks.saturating_sub(last);
                    if let Some(rtt) = m.rtt {
                        self.follow_rtt(session_id, rtt);
                    }
                }
            }
            Event::MediaIngressStats(m) => {
                if let Some(s) = self.sessions.get_mut(&session_id) {
                    let last = s
                        .nack_counts
                        .insert((m.mid, m.rid, false), m.nacks)
                        .unwrap_or(0);
                    self.stats.nacks_out += m.nacks.saturating_sub(last);
                }
            }
            Event::IceConnectionStateChange(state) => {
                if let Some(s) = self.sessions.get_mut(&session_id) {
                    if state == IceConnectionState::Disconnected {
                        s.disconnected_since.get_or_insert(now);
                    } else {
                        s.disconnected_since = None;
                    }
                }
            }
            // Client offers are reconciled when accepted (`sync_media`); these come later.
            Event::MediaAdded(_) | Event::MediaChanged(_) => {}
            Event::ChannelData(cd) => self.on_channel_data(now, session_id, cd),
            Event::Closed => {
                if let Some(s) = self.sessions.get_mut(&session_id) {
                    s.failed = true;
                    self.failed_pending = true;
                }
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------------ timers

    fn housekeeping(&mut self, now: Instant) {
        for t in self.tracks.values_mut() {
            allocation::refresh_layer_rates(&mut t.layers, now);
        }
        self.keyframe_housekeeping(now);
        self.speaker_housekeeping(now);
        self.resume_housekeeping(now);
        if self.next_allocation.is_none_or(|t| t <= now) {
            self.next_allocation = Some(now + allocation::ALLOCATION_INTERVAL);
            self.allocation_housekeeping(now);
        }
        // Offers nobody answered: offer again (a client may have dropped one).
        let stale: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.pending_offer.is_some()
                    && s.offer_sent_at
                        .is_some_and(|t| now.saturating_duration_since(t) >= OFFER_TIMEOUT)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.pending_offer = None;
            }
            self.reset_unnegotiated(id);
        }
        // Vanished and never-connected participants.
        let limit = self.config.disconnect_grace;
        let connect_timeout = self.config.connect_timeout;
        let mut gone = Vec::new();
        for s in self.sessions.values() {
            // A participant away within its resume window is judged by the window, not by ICE:
            // its network changed, and it comes back with an ICE restart.
            let detached = self
                .participants
                .get(&s.participant)
                .is_some_and(|p| p.detached.is_some());
            if detached {
                continue;
            }
            if s.disconnected_since
                .is_some_and(|t| now.saturating_duration_since(t) >= limit)
            {
                gone.push((s.participant, LeaveReason::ConnectionLost, "ice_timeout"));
            } else if !s.connected
                && s.negotiated_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= connect_timeout)
            {
                gone.push((
                    s.participant,
                    LeaveReason::ConnectTimeout,
                    "connect_timeout",
                ));
            } else if !s.rtc.is_alive() {
                gone.push((s.participant, LeaveReason::ConnectionLost, "closed"));
            }
        }
        for (pid, reason, label) in gone {
            if self.participants.contains_key(&pid) {
                self.stats.session_failed(label);
            }
            self.remove_participant(now, pid, reason);
        }
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

fn track_kind(kind: MediaKind) -> TrackKind {
    match kind {
        MediaKind::Audio => TrackKind::Audio,
        MediaKind::Video => TrackKind::Video,
    }
}

/// The mids of an SDP, in order (`a=mid:` lines).
fn offer_mids(sdp: &str) -> Vec<Mid> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(|m| Mid::from(m.trim()))
        .collect()
}

fn reply_not_found(request: Request, sid: &str) {
    let err = || SfuError::NotFound(format!("participant {sid} is not here"));
    match request {
        Request::Offer(_, reply) => {
            let _ = reply.send(Err(err()));
        }
        Request::SubscribeAnswer(_, reply) | Request::Leave(_, reply) => {
            let _ = reply.send(Err(err()));
        }
        Request::Detach(_, reply) => {
            let _ = reply.send(Err(err()));
        }
        Request::Resume(_, reply) => {
            let _ = reply.send(Err(err()));
        }
        Request::Candidate(..) | Request::Mute { .. } | Request::UpdateSubscription { .. } => {}
    }
}

pub(crate) fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..12)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The negotiated RTX payload types of a session, as a bit set.
fn rtx_pts(rtc: &str0m::Rtc) -> u128 {
    rtc.codec_config()
        .iter()
        .filter_map(|p| p.resend())
        .fold(0u128, |set, pt| set | (1u128 << (*pt & 0x7f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtx_history_is_three_round_trips_in_steps_between_half_a_second_and_two() {
        let ms = |v| Some(Duration::from_millis(v));
        assert_eq!(rtx_history(None), Duration::from_millis(500));
        assert_eq!(rtx_history(ms(20)), Duration::from_millis(500));
        assert_eq!(rtx_history(ms(170)), Duration::from_millis(750));
        assert_eq!(rtx_history(ms(200)), Duration::from_millis(750));
        assert_eq!(rtx_history(ms(251)), Duration::from_millis(1000));
        assert_eq!(rtx_history(ms(5_000)), Duration::from_secs(2));
    }
}
