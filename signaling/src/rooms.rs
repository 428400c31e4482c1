//! The room registry: rooms created by the admin API or by their first join, with their limits,
//! metadata and empty-timeout semantics, and the one task that turns the media plane's room
//! events into registry changes and webhooks.
//!
//! A room is *waiting* (created, nobody joined yet: finished after `empty_timeout`), *active*
//! (someone is in it, reconnecting participants included), or *departed* (the last one left:
//! finished after `departure_timeout`). `room_finished` is sent when it is finished or deleted.
//! The media plane is the truth about who is in a room; the registry reconciles with it every
//! tick, so lost events cannot leave a room open forever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moien_sfu::{MediaNode, NodeEvent};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::auth::now_unix;
use crate::config::RoomsConfig;
use crate::webhook::{EventKind, RoomRef, WebhookEvent, Webhooks};

/// How often timeouts are checked and the registry reconciled with the media plane.
const TICK: Duration = Duration::from_millis(500);

/// Control messages to the event task (ordered after the media events already queued).
const CONTROL_QUEUE: usize = 256;

/// A room's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting(Instant),
    Active,
    Departed(Instant),
}

/// What the registry knows of one room.
#[derive(Debug, Clone)]
pub struct RoomEntry {
    pub name: String,
    pub sid: String,
    pub created_at: u64,
    pub max_participants: u32,
    pub empty_timeout: Duration,
    pub departure_timeout: Duration,
    pub metadata: String,
    state: State,
    /// Deleted by the admin API: finished as soon as its participants are out.
    closing: bool,
}

impl RoomEntry {
    pub fn room_ref(&self) -> RoomRef {
        RoomRef {
            name: self.name.clone(),
            sid: self.sid.clone(),
            created_at: self.created_at,
            metadata: self.metadata.clone(),
        }
    }
}

/// Options of a room created by the admin API; `None` takes the `[rooms]` default.
#[derive(Debug, Clone, Default)]
pub struct RoomOptions {
    pub max_participants: Option<u32>,
    pub empty_timeout: Option<Duration>,
    pub departure_timeout: Option<Duration>,
    pub metadata: String,
}

enum Control {
    /// The admin API closed the room: finish it once the media events before this are handled.
    Finish(String),
}

/// Why a room could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateError {
    /// The registry holds `max_rooms` already.
    Full,
}

/// The registry, shared by the admin API, the join path and the event task.
pub struct Registry {
    rooms: Mutex<HashMap<String, RoomEntry>>,
    config: RoomsConfig,
    webhooks: Option<Arc<Webhooks>>,
    control: mpsc::Sender<Control>,
    /// Taken by [`Registry::run`].
    control_rx: Mutex<Option<mpsc::Receiver<Control>>>,
}

impl Registry {
    pub fn new(config: RoomsConfig, webhooks: Option<Arc<Webhooks>>) -> Arc<Registry> {
        let (control, rx) = mpsc::channel(CONTROL_QUEUE);
        Arc::new(Registry {
            rooms: Mutex::new(HashMap::new()),
            config,
            webhooks,
            control,
            control_rx: Mutex::new(Some(rx)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomEntry>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_entry(&self, name: &str, opts: RoomOptions, state: State) -> RoomEntry {
        RoomEntry {
            name: name.to_string(),
            sid: format!("RM_{}", random_id()),
            created_at: now_unix(),
            max_participants: opts
                .max_participants
                .unwrap_or(self.config.max_participants),
            empty_timeout: opts.empty_timeout.unwrap_or(self.config.empty_timeout),
            departure_timeout: opts
                .departure_timeout
                .unwrap_or(self.config.departure_timeout),
            metadata: opts.metadata,
            state,
            closing: false,
        }
    }

    /// Creates a room (admin API). Returns the entry and whether it is new; an existing room is
    /// returned as it is.
    pub fn create(&self, name: &str, opts: RoomOptions) -> Result<(RoomEntry, bool), CreateError> {
        let entry = {
            let mut rooms = self.lock();
            if let Some(e) = rooms.get(name) {
                return Ok((e.clone(), false));
            }
            if rooms.len() >= self.config.max_rooms {
                return Err(CreateError::Full);
            }
            let e = self.new_entry(name, opts, State::Waiting(Instant::now()));
            rooms.insert(name.to_string(), e.clone());
            e
        };
        info!(room_sid = %entry.sid, "room created");
        self.emit(EventKind::RoomStarted, &entry, None, None, None);
        Ok((entry, true))
    }

    pub fn get(&self, name: &str) -> Option<RoomEntry> {
        self.lock().get(name).cloned()
    }

    pub fn list(&self) -> Vec<RoomEntry> {
        let mut v: Vec<RoomEntry> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The participant cap a join into `name` must respect (0: none).
    pub fn max_participants(&self, name: &str) -> u32 {
        self.lock()
            .get(name)
            .map_or(self.config.max_participants, |e| e.max_participants)
    }

    /// The admin API is deleting the room: once empty, it is finished at once. Returns whether
    /// the registry knew it.
    pub fn mark_closing(&self, name: &str) -> bool {
        match self.lock().get_mut(name) {
            Some(e) => {
                e.closing = true;
                true
            }
            None => false,
        }
    }

    /// After the media plane removed everyone: `room_finished` follows the `participant_left`
    /// events already queued.
    pub async fn finish_closed(&self, name: &str) {
        let _ = self.control.send(Control::Finish(name.to_string())).await;
    }

    fn emit(
        &self,
        kind: EventKind,
        room: &RoomEntry,
        participant: Option<moien_protocol::ParticipantInfo>,
        track: Option<moien_protocol::TrackInfo>,
        reason: Option<moien_protocol::LeaveReason>,
    ) {
        let Some(w) = &self.webhooks else {
            return;
        };
        let event = WebhookEvent {
            id: format!("EV_{}", random_id()),
            event: kind,
            sequence: w.next_sequence(),
            created_at: now_unix(),
            room: room.room_ref(),
            participant,
            track,
            reason,
        };
        w.send(&event);
    }

    /// The room of an event, created (and started) if it is new.
    fn ensure_active(&self, name: &str) -> RoomEntry {
        let (entry, started) = {
            let mut rooms = self.lock();
            match rooms.get_mut(name) {
                Some(e) => {
                    e.state = State::Active;
                    (e.clone(), false)
                }
                None => {
                    let e = self.new_entry(name, RoomOptions::default(), State::Active);
                    rooms.insert(name.to_string(), e.clone());
                    (e, true)
                }
            }
        };
        if started {
            self.emit(EventKind::RoomStarted, &entry, None, None, None);
        }
        entry
    }

    /// The room of a departure event; one the registry no longer holds (finished meanwhile) is
    /// described without being started again.
    fn get_or_transient(&self, name: &str) -> RoomEntry {
        self.get(name).unwrap_or_else(|| {
            self.new_entry(
                name,
                RoomOptions::default(),
                State::Departed(Instant::now()),
            )
        })
    }

    fn finish(&self, name: &str) {
        let removed = self.lock().remove(name);
        if let Some(e) = removed {
            info!(room_sid = %e.sid, "room finished");
            self.emit(EventKind::RoomFinished, &e, None, None, None);
        }
    }

    fn on_event(&self, event: NodeEvent) {
        match event {
            NodeEvent::ParticipantJoined { room, participant } => {
                let e = self.ensure_active(&room);
                self.emit(
                    EventKind::ParticipantJoined,
                    &e,
                    Some(participant),
                    None,
                    None,
                );
            }
            NodeEvent::ParticipantLeft {
                room,
                participant,
                reason,
            } => {
                let e = self.get_or_transient(&room);
                self.emit(
                    EventKind::ParticipantLeft,
                    &e,
                    Some(participant),
                    None,
                    Some(reason),
                );
            }
            NodeEvent::TrackPublished {
                room,
                participant,
                track,
            } => {
                let e = self.ensure_active(&room);
                self.emit(
                    EventKind::TrackPublished,
                    &e,
                    Some(participant),
                    Some(track),
                    None,
                );
            }
            NodeEvent::TrackUnpublished {
                room,
                participant,
                track,
            } => {
                let e = self.get_or_transient(&room);
                self.emit(
                    EventKind::TrackUnpublished,
                    &e,
                    Some(participant),
                    Some(track),
                    None,
                );
            }
            NodeEvent::RoomEmpty { room } => {
                let closing = {
                    let mut rooms = self.lock();
                    match rooms.get_mut(&room) {
                        Some(e) => {
                            e.state = State::Departed(Instant::now());
                            e.closing
                        }
                        None => false,
                    }
                };
                if closing {
                    self.finish(&room);
                }
            }
        }
    }

    /// Finishes rooms whose timeout passed; brings states in line with the media plane.
    async fn tick(&self, media: &MediaNode) {
        let present: HashMap<String, usize> = media
            .rooms()
            .await
            .into_iter()
            .map(|r| (r.name, r.participants))
            .collect();
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut rooms = self.lock();
            for e in rooms.values_mut() {
                let here = present.get(&e.name).copied().unwrap_or(0) > 0;
                match (e.state, here) {
                    (State::Active, false) => e.state = State::Departed(now),
                    (State::Waiting(_) | State::Departed(_), true) => e.state = State::Active,
                    _ => {}
                }
                let finished = match e.state {
                    State::Waiting(since) => now.duration_since(since) >= e.empty_timeout,
                    State::Departed(since) => {
                        e.closing || now.duration_since(since) >= e.departure_timeout
                    }
                    State::Active => false,
                };
                if finished {
                    due.push(e.name.clone());
                }
            }
        }
        for name in due {
            debug!("room timed out");
            self.finish(&name);
        }
    }

    /// Consumes the media plane's room events until `stop` turns true. Room events come first:
    /// a control message is handled only after the events queued before it.
    pub async fn run(
        self: Arc<Self>,
        media: Arc<MediaNode>,
        mut events: mpsc::Receiver<NodeEvent>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(mut control) = self.control_rx.lock().ok().and_then(|mut c| c.take()) else {
            return;
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => break,
                },
                c = control.recv() => match c {
                    Some(Control::Finish(name)) => {
                        // Finished now if nobody is left; else when the room empties.
                        let empty = media.participants(&name).await.map_or(true, |p| p.is_empty());
                        if empty {
                            self.finish(&name);
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.tick(&media).await,
                _ = crate::stopped(&mut stop) => {
                    // What happened before the stop still counts.
                    while let Ok(ev) = events.try_recv() {
                        self.on_event(ev);
                    }
                    break;
                }
            }
        }
    }
}

fn random_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..12)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}
