//! Measured bitrate of one stream (a simulcast layer, an audio track): bytes over a sliding
//! window of fixed slots, so a reading costs nothing and memory is constant.

use std::time::{Duration, Instant};

/// What a forwarded packet adds on the subscriber's link beyond its RTP header and payload:
/// the SRTP tag (16 bytes with AES-GCM) and the IPv4 and UDP headers (28). The estimate the
/// layers are fitted into counts them too (str0m patch 18). A layer's rate is one figure for
/// all its subscribers; to an IPv6 one (48 bytes of headers, str0m patch 19) it costs 1-3 %
/// more than counted, inside the allocator's 10 % upgrade margin.
pub const PACKET_OVERHEAD: usize = 44;

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
    /// When the last byte was counted.
    last: Option<Instant>,
}

impl Default for BitrateMeter {
    fn default() -> Self {
        BitrateMeter {
            slots: [0; SLOTS],
            slot_start: None,
            current: 0,
            first: None,
            last: None,
        }
    }
}

impl BitrateMeter {
    pub fn add(&mut self, now: Instant, bytes: usize) {
        self.advance(now);
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.slots[self.current] += bytes as u64;
    }

    /// Bits per second over the window, from its start (or the first byte, if later) to the
    /// last byte counted. Dividing by the whole window read the current slot's unfilled part
    /// as silence (0-10 % low), and a layer the publisher had just stopped as a slower one: an
    /// 864 kbit/s layer read 686 kbit/s 200 ms after its last packet, and the allocator
    /// upgraded to it on that figure (docs/PERFORMANCE.md, "Twenty-first pass").
    pub fn bps(&mut self, now: Instant) -> u64 {
        self.advance(now);
        let (Some(first), Some(last), Some(slot_start)) = (self.first, self.last, self.slot_start)
        else {
            return 0;
        };
        let total: u64 = self.slots.iter().sum();
        if total == 0 {
            return 0;
        }
        let window_start = slot_start
            .checked_sub(SLOT * (SLOTS as u32 - 1))
            .map_or(first, |s| s.max(first));
        let span = last.saturating_duration_since(window_start).max(SLOT);
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
        for at in [3_000, 3_040, 3_099] {
            let bps = m.bps(t0 + Duration::from_millis(at));
            assert!((980_000..=1_020_000).contains(&bps), "at {at} ms: {bps}");
        }
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
    fn a_stream_that_just_stopped_reads_its_rate() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        // 3,600 bytes every 33 ms (a 864 kbit/s video layer) for 2 s, then nothing.
        let frames = 2_000 / 33;
        for i in 0..frames {
            m.add(t0 + Duration::from_millis(33 * i), 3_600);
        }
        let stopped = t0 + Duration::from_millis(33 * (frames - 1));
        for after in [0, 50, 150, 250] {
            let bps = m.bps(stopped + Duration::from_millis(after));
            assert!(
                (850_000..=900_000).contains(&bps),
                "{after} ms after: {bps}"
            );
        }
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
