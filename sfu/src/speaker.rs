//! Active speaker detection from the RFC 6464 audio-level header extension, never from audio.
//!
//! Each participant's level is smoothed; the ranking lists who speaks, loudest first. The
//! current first speaker keeps the floor unless someone is clearly louder (hysteresis) or they
//! fall silent, and the ranking is announced at most a few times per second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// RFC 6464 level at or above which a packet counts as silence (dBov below -70).
const SILENCE_DBOV: f32 = 70.0;
/// Smoothing time constant of the level.
const TAU: Duration = Duration::from_millis(300);
/// A participant without audio packets for this long is silent (DTX sends nothing).
const QUIET_AFTER: Duration = Duration::from_millis(600);
/// A challenger must be this much louder (dB) to take the floor from the first speaker.
const HYSTERESIS_DB: f32 = 6.0;
/// Announcements at most this often.
const MIN_INTERVAL: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
struct Level {
    /// Smoothed loudness in dB above the silence floor (0 = silent).
    db: f32,
    last_packet: Instant,
    last_update: Instant,
}

#[derive(Debug, Default)]
pub struct SpeakerDetector {
    levels: HashMap<u64, Level>,
    ranking: Vec<u64>,
    last_announce: Option<Instant>,
}

impl SpeakerDetector {
    /// One audio packet of `participant` carried level `dbov` (0 loudest, 127 silence).
    pub fn observe(&mut self, now: Instant, participant: u64, dbov: u8) {
        let loud = (SILENCE_DBOV - f32::from(dbov.min(127))).max(0.0);
        let e = self.levels.entry(participant).or_insert(Level {
            db: 0.0,
            last_packet: now,
            last_update: now,
        });
        let dt = now.saturating_duration_since(e.last_update).as_secs_f32();
        // Rise fast (a word starts) and fall with the time constant.
        let alpha = if loud > e.db {
            1.0
        } else {
            1.0 - (-dt / TAU.as_secs_f32()).exp()
        };
        e.db += alpha * (loud - e.db);
        e.last_packet = now;
        e.last_update = now;
    }

    pub fn forget(&mut self, participant: u64) {
        self.levels.remove(&participant);
        self.ranking.retain(|p| *p != participant);
    }

    /// The current ranking, loudest first.
    pub fn ranking(&self) -> &[u64] {
        &self.ranking
    }

    /// Smoothed level of a participant in dB above silence.
    pub fn level(&self, participant: u64) -> f32 {
        self.levels.get(&participant).map_or(0.0, |l| l.db)
    }

    /// Recomputes the ranking; returns it when it changed and may be announced.
    pub fn update(&mut self, now: Instant) -> Option<Vec<u64>> {
        if self
            .last_announce
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL)
        {
            return None;
        }
        let speaking =
            |l: &Level| now.saturating_duration_since(l.last_packet) < QUIET_AFTER && l.db >= 10.0;
        let mut list: Vec<(u64, f32)> = self
            .levels
            .iter()
            .filter(|(_, l)| speaking(l))
            .map(|(p, l)| (*p, l.db))
            .collect();
        list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // The first speaker keeps the floor against a challenger that is not clearly louder.
        if let (Some(&first), Some(&(top, top_db))) = (self.ranking.first(), list.first())
            && top != first
            && let Some(pos) = list.iter().position(|(p, _)| *p == first)
            && top_db - list[pos].1 < HYSTERESIS_DB
        {
            let kept = list.remove(pos);
            list.insert(0, kept);
        }
        let ranking: Vec<u64> = list.into_iter().map(|(p, _)| p).collect();
        if ranking == self.ranking {
            return None;
        }
        self.ranking = ranking.clone();
        self.last_announce = Some(now);
        Some(ranking)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut SpeakerDetector, t: Instant, ms: u64, who: &[(u64, u8)]) {
        for i in 0..ms / 20 {
            let now = t + Duration::from_millis(i * 20);
            for (p, level) in who {
                d.observe(now, *p, *level);
            }
        }
    }

    #[test]
    fn loudest_first_and_silence_excluded() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::default();
        feed(&mut d, t0, 400, &[(1, 50), (2, 20), (3, 127)]);
        let r = d.update(t0 + Duration::from_millis(400)).unwrap();
        assert_eq!(r, vec![2, 1], "3 is silent");
    }

    #[test]
    fn floor_changes_only_for_a_clearly_louder_speaker() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::default();
        feed(&mut d, t0, 400, &[(1, 30), (2, 40)]);
        assert_eq!(
            d.update(t0 + Duration::from_millis(400)).unwrap(),
            vec![1, 2]
        );
        // 2 gets a little louder than 1: not enough to take the floor.
        let t1 = t0 + Duration::from_millis(400);
        feed(&mut d, t1, 600, &[(1, 30), (2, 27)]);
        assert_eq!(d.update(t1 + Duration::from_millis(600)), None);
        // Much louder: it does.
        let t2 = t1 + Duration::from_millis(600);
        feed(&mut d, t2, 400, &[(1, 30), (2, 5)]);
        assert_eq!(
            d.update(t2 + Duration::from_millis(400)).unwrap(),
            vec![2, 1]
        );
    }

    #[test]
    fn announcements_are_rate_limited_and_dtx_decays() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::default();
        feed(&mut d, t0, 200, &[(1, 20)]);
        assert!(d.update(t0 + Duration::from_millis(200)).is_some());
        feed(&mut d, t0 + Duration::from_millis(200), 100, &[(2, 5)]);
        assert_eq!(d.update(t0 + Duration::from_millis(300)), None, "too soon");
        // Nobody sends (DTX): after the quiet time the ranking empties.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(d.update(later).unwrap(), Vec::<u64>::new());
    }
}
