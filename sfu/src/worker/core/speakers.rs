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
        let mut announce = Vec::new();
        for (room, detector) in self.speakers.iter_mut() {
            if let Some(ranking) = detector.update(now) {
                let speakers: Vec<ActiveSpeaker> = ranking
                    .iter()
                    .filter_map(|pid| {
                        self.participants.get(pid).map(|p| ActiveSpeaker {
                            participant_sid: p.sid.clone(),
                            level: (detector.level(*pid) / 70.0).clamp(0.0, 1.0),
                        })
                    })
                    .collect();
                announce.push((room.clone(), speakers));
            }
        }
        for (room, speakers) in announce {
            self.broadcast(&room, 0, ServerMessage::ActiveSpeakers { speakers });
        }
    }

    /// The participant with the floor in `room`, if anybody speaks.
    pub(super) fn top_speaker(&self, room: &str) -> Option<ParticipantId> {
        self.speakers.get(room)?.ranking().first().copied()
    }
}
