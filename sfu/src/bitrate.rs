//! Measured bitrate of one stream (a simulcast layer, an audio track): bytes over a sliding
//! window of fixed slots, so a reading costs nothing and memory is constant.

use std::time::{Duration, Instant};

const SLOTS: usize = 10;
const SLOT: Duration = Duration::from_millis(100);

/// Bitrate over the last second, in 100 ms slots.
#[derive(Debug, Clone)]
pub struct BitrateMeter {
    slots: [u64; SLOTS],
    /// Start of the current slot.
    slot_start: Option<Instant>,
    current: usize,
    /// When the first byte was counted, to avoid reading a half-empty window as a low rate.
    first: Option<Instant>,
}

impl Default for BitrateMeter {
    fn default() -> Self {
        BitrateMeter {
            slots: [0; SLOTS],
            slot_start: None,
            current: 0,
            first: None,
        }
    }
}

impl BitrateMeter {
    pub fn add(&mut self, now: Instant, bytes: usize) {
        self.advance(now);
        self.first.get_or_insert(now);
        self.slots[self.current] += bytes as u64;
    }

    /// Bits per second over the window (or over the time since the first byte, if shorter).
    pub fn bps(&mut self, now: Instant) -> u64 {
        self.advance(now);
        let Some(first) = self.first else {
            return 0;
        };
        let total: u64 = self.slots.iter().sum();
        let window = SLOT * SLOTS as u32;
        let span = now.saturating_duration_since(first).clamp(SLOT, window);
        (total * 8 * 1000) / span.as_millis().max(1) as u64
    }

    fn advance(&mut self, now: Instant) {
        let Some(start) = self.slot_start else {
            self.slot_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        let steps = (elapsed.as_millis() / SLOT.as_millis()) as usize;
        if steps == 0 {
            return;
        }
        for i in 1..=steps.min(SLOTS) {
            self.slots[(self.current + i) % SLOTS] = 0;
        }
        self.current = (self.current + steps) % SLOTS;
        self.slot_start = Some(start + SLOT * steps as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_is_measured() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        // 1,250 bytes every 10 ms = 1 Mbit/s, for 3 s.
        for i in 0..300u32 {
            m.add(t0 + Duration::from_millis(10 * u64::from(i)), 1_250);
        }
        let bps = m.bps(t0 + Duration::from_millis(3_000));
        assert!((900_000..=1_100_000).contains(&bps), "{bps}");
    }

    #[test]
    fn silence_decays_to_zero() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        for i in 0..100u32 {
            m.add(t0 + Duration::from_millis(10 * u64::from(i)), 1_000);
        }
        assert!(m.bps(t0 + Duration::from_millis(1_000)) > 0);
        assert_eq!(m.bps(t0 + Duration::from_secs(5)), 0);
    }

    #[test]
    fn a_young_stream_is_not_underestimated() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        for i in 0..20u32 {
            m.add(t0 + Duration::from_millis(10 * u64::from(i)), 1_250);
        }
        let bps = m.bps(t0 + Duration::from_millis(200));
        assert!(bps > 800_000, "{bps}");
    }
}
