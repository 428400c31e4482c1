//! Moien's media plane: a selective forwarding unit on str0m.
//!
//! [`MediaNode`] is what signaling talks to: it places rooms on media workers (one OS thread and
//! one UDP socket each), builds peer connections off the packet path, and routes requests to the
//! worker that owns a participant's room. Everything a worker decides lives in the sans-IO
//! `worker::core`; the vocabulary is in `room`.

pub mod allocator;
pub mod api;
pub mod bitrate;
pub mod config;
mod demux;
pub mod dependency_descriptor;
pub mod descriptor;
pub mod keyframe;
pub mod layer;
pub mod placement;
pub mod rewrite;
mod room;
mod session;
pub mod speaker;
pub mod stats;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use moien_protocol::{LeaveReason, PeerRole};
use tokio::sync::oneshot;
use tracing::info;

pub use api::{
    Answer, EventSender, Joined, NodeEvent, Offer, ParticipantKind, ParticipantSpec,
    ParticipantUpdate, RoomSummary, SfuError, SubscriptionPrefs,
};
pub use config::MediaConfig;
pub use session::{RtcFactory, SessionRole};
pub use worker::WorkerSnapshot;

use api::{AdminRequest, Request};
use moien_protocol::ParticipantInfo;
use session::PreparedSession;
use worker::WorkerHandle;
use worker::core::{Command, Placement};

/// Addresses one participant: the room routes to the worker, the sid to the participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantRef {
    pub room: String,
    pub sid: String,
}

/// The media plane of one node.
pub struct MediaNode {
    workers: Vec<WorkerHandle>,
    placement: Placement,
    /// `[media] pack_load`: see [`placement`].
    pack_load: f64,
    /// Each worker's joins whose load its busy figure does not show yet.
    recent_joins: std::sync::Mutex<Vec<placement::RecentJoins>>,
    factory: RtcFactory,
    next_session: AtomicU64,
    /// Room events of every worker, until someone takes them (webhooks).
    events: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<NodeEvent>>>,
}

/// Room events queued for the consumer (webhooks) before the oldest are dropped.
const NODE_EVENT_QUEUE: usize = 4096;

impl MediaNode {
    /// Binds every worker's socket and starts the worker threads.
    pub fn start(config: MediaConfig) -> std::io::Result<Arc<MediaNode>> {
        let placement: Placement = Arc::new(DashMap::new());
        let factory = RtcFactory::new();
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(NODE_EVENT_QUEUE);
        let advertised_ips = config
            .advertised_ips()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut workers = Vec::new();
        for index in 0..config.worker_count() {
            let socket = worker::bind(&config, index)?;
            let port = socket.local_addr()?.port();
            let advertised: Vec<SocketAddr> = advertised_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect();
            workers.push(worker::spawn(
                index,
                config.clone(),
                socket,
                advertised,
                placement.clone(),
                events_tx.clone(),
            )?);
        }
        info!(workers = workers.len(), "media plane started");
        let recent_joins = std::iter::repeat_with(Default::default)
            .take(workers.len())
            .collect();
        Ok(Arc::new(MediaNode {
            workers,
            placement,
            pack_load: config.pack_load,
            recent_joins: std::sync::Mutex::new(recent_joins),
            factory,
            next_session: AtomicU64::new(1),
            events: std::sync::Mutex::new(Some(events_rx)),
        }))
    }

    /// The UDP addresses the workers are bound to.
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.local).collect()
    }

    /// Counters of every worker.
    pub fn snapshots(&self) -> Vec<WorkerSnapshot> {
        self.workers
            .iter()
            .map(|w| w.stats.lock().map(|s| s.clone()).unwrap_or_default())
            .collect()
    }

    /// Adds a participant. `offer` carries the SDP of a WHIP/WHEP join; the answer comes back in
    /// [`Joined::answer`].
    pub async fn join(
        &self,
        spec: ParticipantSpec,
        events: Option<EventSender>,
        offer: Option<Offer>,
    ) -> Result<(ParticipantRef, Joined), SfuError> {
        let index = self.place(&spec.room);
        let worker = &self.workers[index];
        let roles: Vec<SessionRole> = match spec.kind {
            ParticipantKind::Regular => {
                let mut r = Vec::new();
                if spec.can_publish {
                    r.push(SessionRole::Publisher);
                }
                if spec.can_subscribe {
                    r.push(SessionRole::Subscriber);
                }
                r
            }
            ParticipantKind::Whip => vec![SessionRole::Publisher],
            ParticipantKind::Whep { .. } => vec![SessionRole::Whep],
        };
        let ids: Vec<u64> = roles
            .iter()
            .map(|_| self.next_session.fetch_add(1, Ordering::Relaxed))
            .collect();
        let factory = self.factory.clone();
        let advertised = worker.advertised.clone();
        // Building an Rtc costs about a millisecond of CPU: keep it off the media thread.
        let sessions: Vec<PreparedSession> = tokio::task::spawn_blocking(move || {
            let now = Instant::now();
            roles
                .into_iter()
                .zip(ids)
                .map(|(role, id)| factory.build(id, role, &advertised, now))
                .collect()
        })
        .await
        .map_err(|e| {
            self.release(&spec.room);
            SfuError::Unavailable(e.to_string())
        })?;
        let sid = format!("PA_{}", worker::core::random_id());
        let room = spec.room.clone();
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Join {
            spec,
            sid: sid.clone(),
            sessions,
            events,
            offer,
            reply,
        };
        if worker.commands.send(cmd).await.is_err() {
            self.release(&room);
            return Err(SfuError::Unavailable("media worker stopped".into()));
        }
        let joined = rx
            .await
            .map_err(|_| SfuError::Unavailable("media worker stopped".into()))??;
        Ok((ParticipantRef { room, sid }, joined))
    }

    pub async fn offer(&self, p: &ParticipantRef, offer: Offer) -> Result<Answer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.request(p, Request::Offer(offer, reply)).await?;
        rx.await
            .map_err(|_| SfuError::Unavailable("media worker stopped".into()))?
    }

    pub async fn subscribe_answer(&self, p: &ParticipantRef, sdp: String) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.request(p, Request::SubscribeAnswer(sdp, reply))
            .await?;
        rx.await
            .map_err(|_| SfuError::Unavailable("media worker stopped".into()))?
    }

    pub async fn candidate(
        &self,
        p: &ParticipantRef,
        role: PeerRole,
        candidate: String,
    ) -> Result<(), SfuError> {
        self.request(p, Request::Candidate(role, candidate)).await
    }

    pub async fn mute(
        &self,
        p: &ParticipantRef,
        track_sid: String,
        muted: bool,
    ) -> Result<(), SfuError> {
        self.request(p, Request::Mute { track_sid, muted }).await
    }

    /// The client's wishes for one subscription (pause, maximum layer, pin).
    pub async fn update_subscription(
        &self,
        p: &ParticipantRef,
        track_sid: String,
        prefs: SubscriptionPrefs,
    ) -> Result<(), SfuError> {
        let request = Request::UpdateSubscription { track_sid, prefs };
        self.request(p, request).await
    }

    pub async fn leave(&self, p: &ParticipantRef, reason: LeaveReason) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.request(p, Request::Leave(reason, reply)).await?;
        rx.await
            .map_err(|_| SfuError::Unavailable("media worker stopped".into()))?
    }

    async fn request(&self, p: &ParticipantRef, request: Request) -> Result<(), SfuError> {
        let Some(index) = self.placement.get(&p.room).map(|e| e.0) else {
            return Err(SfuError::NotFound(format!("room {:?} has nobody", p.room)));
        };
        let cmd = Command::Participant {
            sid: p.sid.clone(),
            request,
        };
        self.workers[index]
            .commands
            .send(cmd)
            .await
            .map_err(|_| SfuError::Unavailable("media worker stopped".into()))
    }

    /// The participant's signaling connection dropped: keep it for `window` (others see it
    /// reconnecting) so that it can [`MediaNode::resume`].
    pub async fn detach(
        &self,
        p: &ParticipantRef,
        window: std::time::Duration,
    ) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.request(p, Request::Detach(window, reply)).await?;
        rx.await
            .map_err(|_| SfuError::Unavailable("media worker stopped".into()))?
    }

    /// A detached participant is back with a new event sink: returns the room as it is now;
    /// a subscribe offer with an ICE restart follows on `events`.
    pub async fn resume(
        &self,
        p: &ParticipantRef,
        events: EventSender,
    ) -> Result<Joined, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.request(p, Request::Resume(events, reply)).await?;
        rx.await
            .map_err(|_| SfuError::Unavailable("media worker stopped".into()))?
    }

    /// Takes the stream of room events (once; later calls get `None`).
    pub fn take_events(&self) -> Option<tokio::sync::mpsc::Receiver<NodeEvent>> {
        self.events.lock().ok()?.take()
    }

    /// Every room on this node.
    pub async fn rooms(&self) -> Vec<RoomSummary> {
        let mut all = Vec::new();
        for w in &self.workers {
            let (reply, rx) = oneshot::channel();
            if w.commands
                .send(Command::Admin(AdminRequest::ListRooms(reply)))
                .await
                .is_ok()
                && let Ok(Ok(rooms)) = rx.await
            {
                all.extend(rooms);
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The participants of a room (observers and WHEP viewers excluded).
    pub async fn participants(&self, room: &str) -> Result<Vec<ParticipantInfo>, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.admin(
            room,
            AdminRequest::Participants(room.to_string(), reply),
            rx,
        )
        .await
    }

    pub async fn remove_participant(&self, room: &str, identity: &str) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        let req = AdminRequest::Remove {
            room: room.to_string(),
            identity: identity.to_string(),
            reply,
        };
        self.admin(room, req, rx).await
    }

    pub async fn mute_track(
        &self,
        room: &str,
        identity: &str,
        track_sid: &str,
        muted: bool,
    ) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        let req = AdminRequest::MuteTrack {
            room: room.to_string(),
            identity: identity.to_string(),
            track_sid: track_sid.to_string(),
            muted,
            reply,
        };
        self.admin(room, req, rx).await
    }

    pub async fn update_participant(
        &self,
        room: &str,
        identity: &str,
        update: ParticipantUpdate,
    ) -> Result<ParticipantInfo, SfuError> {
        let (reply, rx) = oneshot::channel();
        let req = AdminRequest::Update {
            room: room.to_string(),
            identity: identity.to_string(),
            update,
            reply,
        };
        self.admin(room, req, rx).await
    }

    /// Sends a data message from the server to the room (or to the named identities/sids).
    /// Returns how many participants got it.
    pub async fn send_data(
        &self,
        room: &str,
        to: Vec<String>,
        topic: String,
        data: String,
    ) -> Result<usize, SfuError> {
        let (reply, rx) = oneshot::channel();
        let req = AdminRequest::SendData {
            room: room.to_string(),
            to,
            topic,
            data,
            reply,
        };
        self.admin(room, req, rx).await
    }

    /// Ends the call for everyone in the room. Returns how many were removed.
    pub async fn close_room(&self, room: &str) -> Result<usize, SfuError> {
        let (reply, rx) = oneshot::channel();
        match self
            .admin(room, AdminRequest::CloseRoom(room.to_string(), reply), rx)
            .await
        {
            Err(SfuError::NotFound(_)) => Ok(0),
            r => r,
        }
    }

    async fn admin<T>(
        &self,
        room: &str,
        request: AdminRequest,
        rx: oneshot::Receiver<Result<T, SfuError>>,
    ) -> Result<T, SfuError> {
        let Some(index) = self.placement.get(room).map(|e| e.0) else {
            return Err(SfuError::NotFound(format!("room {room:?} has nobody")));
        };
        self.workers[index]
            .commands
            .send(Command::Admin(request))
            .await
            .map_err(|_| SfuError::Unavailable("media worker stopped".into()))?;
        rx.await
            .map_err(|_| SfuError::Unavailable("media worker stopped".into()))?
    }

    /// Picks the worker for a room (the one that has it, else [`placement::choose`]) and counts
    /// one more participant there.
    fn place(&self, room: &str) -> usize {
        let now = std::time::Instant::now();
        // A poisoned lock only means another join panicked mid-count: the counts stay usable.
        let mut recent = self
            .recent_joins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut e) = self.placement.get_mut(room) {
            e.1 += 1;
            if let Some(r) = recent.get_mut(e.0) {
                r.record(now);
            }
            return e.0;
        }
        let mut loads: Vec<placement::WorkerLoad> = self
            .workers
            .iter()
            .zip(recent.iter_mut())
            .map(|(w, r)| placement::WorkerLoad {
                participants: 0,
                unsettled: r.count(now),
                busy: w.stats.lock().map_or(0.0, |s| s.busy),
            })
            .collect();
        for e in self.placement.iter() {
            if let Some(l) = loads.get_mut(e.0) {
                l.participants += e.1;
            }
        }
        let chosen = placement::choose(&loads, self.pack_load);
        // Another join may have placed the room meanwhile: the entry API settles it.
        let mut entry = self
            .placement
            .entry(room.to_string())
            .or_insert((chosen, 0));
        entry.1 += 1;
        if let Some(r) = recent.get_mut(entry.0) {
            r.record(now);
        }
        entry.0
    }

    fn release(&self, room: &str) {
        self.placement.remove_if_mut(room, |_, (_, count)| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

impl Drop for MediaNode {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Closing the command channel ends the worker loop.
            drop(std::mem::replace(
                &mut w.commands,
                worker::CommandSender::closed(),
            ));
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wiring of [`placement`] into the node: every join, into a new room or an existing
    /// one, counts as unsettled on its worker, so a burst into an idle node spills to the next
    /// worker before any busy figure could show it.
    #[test]
    fn a_burst_of_joins_spills_to_the_next_worker() {
        let node = MediaNode::start(MediaConfig {
            port: 0,
            workers: 2,
            ..MediaConfig::default()
        })
        .expect("media node on loopback");
        // Four rooms fill up one after the other, as calls do: 32 joins on the first worker.
        for room in ["a", "b", "c", "d"] {
            for _ in 0..8 {
                assert_eq!(node.place(room), 0, "room {room}");
            }
        }
        assert_eq!(node.place("e"), 1);
        // A room stays where it is, and its joins count there.
        assert_eq!(node.place("a"), 0);
        for _ in 0..(placement::PACK_UNSETTLED - 2) {
            assert_eq!(node.place("e"), 1);
        }
        assert_eq!(node.place("f"), 1);
        // Both workers took a burst: the one with fewer participants takes the next room
        // (33 on the first, 32 on the second; then 34 on the second).
        assert_eq!(node.place("g"), 1);
        assert_eq!(node.place("f"), 1);
        assert_eq!(node.place("h"), 0);
    }
}
