//! Reconnection: a participant whose signaling connection dropped stays in the room for a
//! resume window (others see it reconnecting, its media keeps flowing or waits), and comes back
//! with a fresh room snapshot and an ICE restart instead of a leave and a new join.

use std::time::{Duration, Instant};

use moien_protocol::{ConnectionState, LeaveReason, ParticipantInfo, ServerMessage};

use super::WorkerCore;
use crate::api::{EventSender, Joined, SfuError};
use crate::room::{ParticipantId, participant_info};
use crate::session::SessionRole;

impl WorkerCore {
    pub(super) fn detach(&mut self, pid: ParticipantId, now: Instant, window: Duration) {
        let Some(p) = self.participants.get_mut(&pid) else {
            return;
        };
        p.events = None;
        p.detached = Some((now, window));
        let (room, sid, hidden) = (p.room.clone(), p.sid.clone(), p.hidden());
        if !hidden {
            self.broadcast(
                &room,
                pid,
                ServerMessage::ParticipantConnection {
                    participant_sid: sid,
                    state: ConnectionState::Reconnecting,
                },
            );
        }
    }

    pub(super) fn resume(
        &mut self,
        pid: ParticipantId,
        events: EventSender,
        now: Instant,
    ) -> Result<Joined, SfuError> {
        let p = self
            .participants
            .get_mut(&pid)
            .ok_or_else(|| SfuError::NotFound("participant gone".into()))?;
        p.events = Some(events);
        p.detached = None;
        let (room, sid, hidden, subscriber, publisher) = (
            p.room.clone(),
            p.sid.clone(),
            p.hidden(),
            p.subscriber,
            p.publisher,
        );
        // ICE that broke while away gets a fresh grace: the ICE restart this resume starts
        // needs a moment, and a long absence must not count against it.
        for session_id in [subscriber, publisher].into_iter().flatten() {
            if let Some(s) = self.sessions.get_mut(&session_id)
                && s.disconnected_since.is_some()
            {
                s.disconnected_since = Some(now);
            }
        }
        let info = participant_info(p, &self.tracks);
        let others: Vec<ParticipantInfo> = self
            .rooms
            .get(&room)
            .map(|r| {
                r.participants
                    .iter()
                    .filter(|id| **id != pid)
                    .filter_map(|id| self.participants.get(id))
                    .filter(|o| !o.hidden())
                    .map(|o| participant_info(o, &self.tracks))
                    .collect()
            })
            .unwrap_or_default();
        // Whatever was offered while away is lost: offer the current state again, with new ICE
        // credentials (the client's network may have changed).
        if let Some(session_id) = subscriber
            && let Some(s) = self.sessions.get_mut(&session_id)
            && s.role == SessionRole::Subscriber
        {
            s.pending_offer = None;
            s.ice_restart = true;
            self.reset_unnegotiated(session_id);
        }
        if !hidden {
            self.broadcast(
                &room,
                pid,
                ServerMessage::ParticipantConnection {
                    participant_sid: sid,
                    state: ConnectionState::Connected,
                },
            );
        }
        self.announce_speakers_to(pid);
        Ok(Joined {
            participant: info,
            others,
            answer: None,
        })
    }

    /// Participants away longer than their window leave for good.
    pub(super) fn resume_housekeeping(&mut self, now: Instant) {
        let expired: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| {
                p.detached
                    .is_some_and(|(since, window)| now.saturating_duration_since(since) >= window)
            })
            .map(|(id, _)| *id)
            .collect();
        for pid in expired {
            self.remove_participant(now, pid, LeaveReason::ResumeExpired);
        }
    }
}
