//! What the admin API may do to a room: list and inspect, remove a participant, mute a track,
//! change a participant's permissions or metadata, send a data message, close the room. And the
//! room events (joined, left, published, ...) the node reports for webhooks.

use std::time::Instant;

use moien_protocol::{DataReceive, LeaveReason, Permissions, ServerMessage};

use super::WorkerCore;
use crate::api::{
    AdminRequest, NodeEvent, ParticipantKind, ParticipantUpdate, RoomSummary, SfuError,
};
use crate::room::{ParticipantId, participant_info};

impl WorkerCore {
    pub(super) fn handle_admin(&mut self, now: Instant, request: AdminRequest) {
        match request {
            AdminRequest::ListRooms(reply) => {
                let rooms = self
                    .rooms
                    .iter()
                    .map(|(name, r)| RoomSummary {
                        name: name.clone(),
                        participants: r
                            .participants
                            .iter()
                            .filter(|id| self.participants.get(id).is_some_and(|p| !p.hidden()))
                            .count(),
                        published_tracks: r
                            .participants
                            .iter()
                            .filter_map(|id| self.participants.get(id))
                            .map(|p| p.tracks.len())
                            .sum(),
                    })
                    .collect();
                let _ = reply.send(Ok(rooms));
            }
            AdminRequest::Participants(room, reply) => {
                let r = self
                    .rooms
                    .get(&room)
                    .map(|r| {
                        r.participants
                            .iter()
                            .filter_map(|id| self.participants.get(id))
                            .filter(|p| !p.hidden())
                            .map(|p| participant_info(p, &self.tracks))
                            .collect()
                    })
                    .ok_or_else(|| not_found_room(&room));
                let _ = reply.send(r);
            }
            AdminRequest::Remove {
                room,
                identity,
                reply,
            } => {
                let r = self.find(&room, &identity).map(|pid| {
                    self.remove_participant(now, pid, LeaveReason::RemovedByAdmin);
                });
                let _ = reply.send(r);
            }
            AdminRequest::MuteTrack {
                room,
                identity,
                track_sid,
                muted,
                reply,
            } => {
                let r = self
                    .find(&room, &identity)
                    .and_then(|pid| self.set_muted(now, pid, &track_sid, muted, true));
                let _ = reply.send(r);
            }
            AdminRequest::Update {
                room,
                identity,
                update,
                reply,
            } => {
                let r = self
                    .find(&room, &identity)
                    .map(|pid| self.update_participant(now, pid, update));
                let _ = reply.send(r);
            }
            AdminRequest::SendData {
                room,
                to,
                topic,
                data,
                reply,
            } => {
                let msg = DataReceive {
                    from: String::new(),
                    identity: String::new(),
                    topic,
                    data,
                };
                let r = match serde_json::to_vec(&msg) {
                    Ok(bytes) if self.rooms.contains_key(&room) => {
                        Ok(self.relay_data(now, &room, None, &to, true, &bytes))
                    }
                    Ok(_) => Err(not_found_room(&room)),
                    Err(e) => Err(SfuError::InvalidState(e.to_string())),
                };
                let _ = reply.send(r);
            }
            AdminRequest::CloseRoom(room, reply) => {
                let ids: Vec<ParticipantId> = self
                    .rooms
                    .get(&room)
                    .map(|r| r.participants.clone())
                    .unwrap_or_default();
                let n = ids.len();
                for pid in ids {
                    self.remove_participant(now, pid, LeaveReason::RoomClosed);
                }
                let _ = reply.send(Ok(n));
            }
        }
    }

    /// The participant with `identity` in `room` (hidden WHEP viewers excluded).
    fn find(&self, room: &str, identity: &str) -> Result<ParticipantId, SfuError> {
        self.rooms
            .get(room)
            .ok_or_else(|| not_found_room(room))?
            .participants
            .iter()
            .copied()
            .find(|id| {
                self.participants.get(id).is_some_and(|p| {
                    p.identity == identity && !matches!(p.kind, ParticipantKind::Whep { .. })
                })
            })
            .ok_or_else(|| SfuError::NotFound(format!("no participant {identity:?} in the room")))
    }

    /// Mutes or unmutes a published track; `by_admin` also tells its publisher.
    pub(super) fn set_muted(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        track_sid: &str,
        muted: bool,
        by_admin: bool,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get(&pid)
            .ok_or_else(|| SfuError::NotFound("participant gone".into()))?;
        let tid = p
            .tracks
            .iter()
            .copied()
            .find(|t| self.tracks.get(t).is_some_and(|t| t.sid == track_sid))
            .ok_or_else(|| SfuError::NotFound("no such published track".into()))?;
        let (room, psid) = (p.room.clone(), p.sid.clone());
        if let Some(t) = self.tracks.get_mut(&tid) {
            t.muted = muted;
        }
        if !muted {
            // Subscribers resume on a fresh keyframe.
            let subs = self.tracks.get(&tid).map(|t| t.subscriptions.clone());
            for sub_id in subs.unwrap_or_default() {
                self.request_keyframe_for_sub(now, sub_id);
            }
        }
        let msg = ServerMessage::TrackMuted {
            participant_sid: psid,
            track_sid: track_sid.to_string(),
            muted,
        };
        if by_admin {
            self.send_to(pid, msg.clone());
        }
        self.broadcast(&room, pid, msg);
        Ok(())
    }

    fn update_participant(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        update: ParticipantUpdate,
    ) -> moien_protocol::ParticipantInfo {
        let mut unpublish = Vec::new();
        let mut unsubscribe = Vec::new();
        let mut subscribe = false;
        if let Some(p) = self.participants.get_mut(&pid) {
            if let Some(m) = update.metadata {
                p.metadata = m;
            }
            if let Some(perm) = update.permissions {
                if p.can_publish && !perm.publish {
                    unpublish = p.tracks.clone();
                }
                if p.can_subscribe && !perm.subscribe {
                    unsubscribe = p.subscriptions.clone();
                }
                subscribe = !p.can_subscribe && perm.subscribe;
                p.can_publish = perm.publish;
                p.can_subscribe = perm.subscribe;
                p.can_publish_data = perm.publish_data;
            }
        }
        for tid in unpublish {
            self.remove_track(now, tid);
        }
        for sub_id in unsubscribe {
            self.remove_subscription(sub_id);
        }
        if subscribe {
            self.subscribe_to_room(now, pid);
        }
        let Some(p) = self.participants.get(&pid) else {
            return moien_protocol::ParticipantInfo {
                sid: String::new(),
                identity: String::new(),
                name: String::new(),
                metadata: String::new(),
                tracks: Vec::new(),
            };
        };
        let info = participant_info(p, &self.tracks);
        let permissions = Permissions {
            publish: p.can_publish,
            subscribe: p.can_subscribe,
            publish_data: p.can_publish_data,
        };
        let room = p.room.clone();
        self.send_to(
            pid,
            ServerMessage::ParticipantUpdated {
                participant: info.clone(),
                permissions: Some(permissions),
            },
        );
        if !self.participants.get(&pid).is_some_and(|p| p.hidden()) {
            self.broadcast(
                &room,
                pid,
                ServerMessage::ParticipantUpdated {
                    participant: info.clone(),
                    permissions: None,
                },
            );
        }
        info
    }

    /// Reports a room event; drops it (counted) when nobody keeps up.
    pub(super) fn emit(&mut self, event: NodeEvent) {
        if let Some(tx) = &self.node_events
            && tx.try_send(event).is_err()
        {
            self.stats.events_dropped += 1;
        }
    }
}

fn not_found_room(room: &str) -> SfuError {
    SfuError::NotFound(format!("room {room:?} has nobody on this node"))
}
