//! Active speakers per room: audio levels noted while forwarding, ranked in housekeeping,
//! announced to the room, and used by allocation (the first speaker's video gets priority).

use std::time::Instant;

use moien_protocol::{ActiveSpeaker, ServerMessage};

use super::WorkerCore;
use crate::room::ParticipantId;

/// Level samples kept between two housekeeping passes, at most.
const MAX_PENDING_LEVELS: usize = 50_000;

impl WorkerCore {
    /// Notes one audio packet's RFC 6464 level (forwarding path: no lookups here).
    pub(super) fn note_level(&mut self, now: Instant, participant: ParticipantId, dbov: u8) {
        if self.levels.len() < MAX_PENDING_LEVELS {
            self.levels.push((now, participant, dbov));
        }
    }

    pub(super) fn speaker_housekeeping(&mut self, now: Instant) {
        // One sample per forwarded audio packet: drained in place (the buffer keeps its
        // capacity) and the room's name cloned only for a room's first detector.
        for (t, pid, dbov) in self.levels.drain(..) {
            let Some(room) = self.participants.get(&pid).map(|p| &p.room) else {
                continue;
            };
            match self.speakers.get_mut(room) {
                Some(detector) => detector.observe(t, pid, dbov),
                None => self
                    .speakers
                    .entry(room.clone())
                    .or_default()
                    .observe(t, pid, dbov),
            }
        }
        let changed: Vec<String> = self
            .speakers
            .iter_mut()
            .filter_map(|(room, detector)| detector.update(now).map(|_| room.clone()))
            .collect();
        for room in changed {
            let msg = self.speakers_message(&room);
            self.broadcast(&room, 0, msg);
        }
    }

    /// Tells a participant who just joined or resumed who is speaking: announcements go out
    /// only on change, so without this a newcomer to a room with a steady speaker would wait
    /// for the next change to learn of it.
    pub(super) fn announce_speakers_to(&mut self, pid: ParticipantId) {
        let Some(room) = self.participants.get(&pid).map(|p| p.room.clone()) else {
            return;
        };
        if self
            .speakers
            .get(&room)
            .is_some_and(|d| !d.ranking().is_empty())
        {
            let msg = self.speakers_message(&room);
            self.send_to(pid, msg);
        }
    }

    /// `active_speakers` with the room's current ranking, loudest first.
    fn speakers_message(&self, room: &str) -> ServerMessage {
        let speakers = self.speakers.get(room).map_or_else(Vec::new, |detector| {
            detector
                .ranking()
                .iter()
                .filter_map(|pid| {
                    self.participants.get(pid).map(|p| ActiveSpeaker {
                        participant_sid: p.sid.clone(),
                        level: (detector.level(*pid) / 70.0).clamp(0.0, 1.0),
                    })
                })
                .collect()
        });
        ServerMessage::ActiveSpeakers { speakers }
    }

    /// The participant with the floor in `room`, if anybody speaks.
    pub(super) fn top_speaker(&self, room: &str) -> Option<ParticipantId> {
        self.speakers.get(room)?.ranking().first().copied()
    }
}
