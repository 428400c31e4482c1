//! Moien patch 17: the acknowledged bitrate, measured over a sliding window of acknowledged
//! packets, as libWebRTC's `RobustThroughputEstimator` (its default) does.
//!
//! str0m shipped libWebRTC's older Bayesian estimator, which weighs a sample by how far it is
//! from the current estimate: after a sender padded from 52 to 327 kbit/s, it read 52-150
//! kbit/s for 1.5 s. The delay controller reads this figure on overuse (0.85 times it) and caps
//! increases at 1.5 times it, so an SFU that padded up to a layer's rate and then switched to
//! that layer fell back to a third of what the link had just carried
//! (docs/PERFORMANCE.md, "Twenty-first pass").

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Bitrate;
use crate::rtp_::DataSize;

/// The window holds at least this many packets...
const WINDOW_PACKETS: usize = 20;
/// ...and at least the packets received in this long...
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// ...but never more than this many packets...
const MAX_WINDOW_PACKETS: usize = 500;
/// ...nor packets received longer ago than this before the newest (a pause in sending).
const MAX_WINDOW: Duration = Duration::from_secs(5);
/// No estimate from fewer packets than this.
const REQUIRED_PACKETS: usize = 10;
/// A packet received this long before the newest one in the window means reordered feedback
/// or a changed remote clock: the window starts again.
const MAX_REORDERING: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Acked {
    send: Instant,
    recv: Instant,
    size: DataSize,
    /// Sent before a packet received earlier (or moved into place by receive time): the
    /// window is then not in send order, and the estimate takes the full computation.
    out_of_order: bool,
}

/// A receive gap: its length and the receive time of the packet that ends it.
type Gap = (Duration, Instant);

/// The estimate is read after every feedback (20 a second per subscriber), and reading a
/// second of packets each time cost 2.5 % of a video conference's server CPU, most of it cold
/// memory. So the sums are kept as packets come and go, and the two longest receive gaps are
/// found again only when one of them leaves the window; a window out of send order (rare:
/// reordered feedback) takes the full computation.
#[derive(Default)]
pub struct AckedBitrateEstimator {
    /// Acknowledged packets in remote receive order.
    window: VecDeque<Acked>,
    /// Latest send time of the packets that left the window: a packet still in it that was sent
    /// earlier was reordered, and its send time would stretch the send rate's duration.
    latest_discarded_send: Option<Instant>,
    /// Sum of the sizes in the window.
    size: DataSize,
    /// Latest send time added since the window was last empty.
    latest_send: Option<Instant>,
    /// Packets in the window marked `out_of_order`.
    out_of_order: usize,
    /// The two longest receive gaps in the window, longest first; `None` until found again.
    gaps: Option<[Gap; 2]>,
    estimate: Option<Bitrate>,
}

impl AckedBitrateEstimator {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Adds the acknowledged packets of one feedback, in remote receive order, and updates the
    /// estimate.
    pub(super) fn update(&mut self, packets: impl Iterator<Item = (Instant, Instant, DataSize)>) {
        for (send, recv, size) in packets {
            self.push(send, recv, size);
        }
        while self.first_outside_window() {
            self.pop();
        }
        self.estimate = self.compute();
    }

    pub(super) fn current_estimate(&self) -> Option<Bitrate> {
        self.estimate
    }

    fn push(&mut self, send: Instant, recv: Instant, size: DataSize) {
        let out_of_order = self.latest_send.is_some_and(|t| send < t);
        self.latest_send = self.latest_send.max(Some(send));
        let prev = self.window.back().map(|p| p.recv);
        self.window.push_back(Acked {
            send,
            recv,
            size,
            out_of_order,
        });
        self.size += size;
        self.out_of_order += usize::from(out_of_order);
        // Feedback reordered between reports: keep the window sorted by receive time.
        let mut i = self.window.len() - 1;
        while i > 0 && self.window[i].recv < self.window[i - 1].recv {
            self.window.swap(i, i - 1);
            i -= 1;
        }
        if i + 1 < self.window.len() {
            if !self.window[i].out_of_order {
                self.window[i].out_of_order = true;
                self.out_of_order += 1;
            }
            self.gaps = None;
        } else if let (Some(prev), Some(gaps)) = (prev, self.gaps.as_mut()) {
            let gap = (recv.saturating_duration_since(prev), recv);
            if gap.0 > gaps[0].0 {
                *gaps = [gap, gaps[0]];
            } else if gap.0 > gaps[1].0 {
                gaps[1] = gap;
            }
        } else if prev.is_none() {
            self.gaps = Some([(Duration::ZERO, recv); 2]);
        }
        let newest = self.window.back().map_or(recv, |p| p.recv);
        if newest.saturating_duration_since(recv) > MAX_REORDERING {
            *self = Self::default();
        }
    }

    fn pop(&mut self) {
        let Some(p) = self.window.pop_front() else {
            return;
        };
        self.latest_discarded_send = self.latest_discarded_send.max(Some(p.send));
        self.size = self.size.saturating_sub(p.size);
        self.out_of_order -= usize::from(p.out_of_order);
        // The gap that left ended at the new first packet.
        let ended = self.window.front().map(|f| f.recv);
        if self
            .gaps
            .is_some_and(|g| g.iter().any(|(_, end)| Some(*end) == ended))
        {
            self.gaps = None;
        }
        if self.window.is_empty() {
            self.latest_send = None;
            self.out_of_order = 0;
            self.gaps = None;
        }
    }

    fn first_outside_window(&self) -> bool {
        let (Some(first), Some(last)) = (self.window.front(), self.window.back()) else {
            return false;
        };
        let span = last.recv.saturating_duration_since(first.recv);
        self.window.len() > MAX_WINDOW_PACKETS
            || span > MAX_WINDOW
            || (self.window.len() > WINDOW_PACKETS && span > MIN_WINDOW)
    }

    /// The two longest receive gaps in the window.
    fn find_gaps(&self) -> [Gap; 2] {
        let first = self.window.front().map_or_else(Instant::now, |p| p.recv);
        let mut gaps = [(Duration::ZERO, first); 2];
        for (a, b) in self.window.iter().zip(self.window.iter().skip(1)) {
            let gap = (b.recv.saturating_duration_since(a.recv), b.recv);
            if gap.0 > gaps[0].0 {
                gaps = [gap, gaps[0]];
            } else if gap.0 > gaps[1].0 {
                gaps[1] = gap;
            }
        }
        gaps
    }

    /// The lower of the receive rate and the send rate over the window.
    fn compute(&mut self) -> Option<Bitrate> {
        if self.window.len() < REQUIRED_PACKETS {
            return None;
        }
        let gaps = match self.gaps {
            Some(g) => g,
            None => *self.gaps.insert(self.find_gaps()),
        };
        let first = *self.window.front()?;
        let last = *self.window.back()?;
        // One long gap in the receive times is a delay spike (the link stalled, then delivered
        // a burst): it is counted as the second longest gap instead. That may overestimate,
        // which the send rate bounds.
        let recv_span = last
            .recv
            .saturating_duration_since(first.recv)
            .saturating_sub(gaps[0].0)
            + gaps[1].0;
        let recv_span = recv_span.max(Duration::from_millis(1));
        // N packets span N-1 intervals: the receive rate leaves out the first packet's size
        // (it arrived before the span starts), the send rate the last one's (it was sent as
        // the span ends).
        let recv_rate = self.size.saturating_sub(first.size) / recv_span;
        let in_send_order =
            self.out_of_order == 0 && self.latest_discarded_send.is_none_or(|t| first.send >= t);
        let send_rate = if in_send_order {
            let span = last.send.saturating_duration_since(first.send);
            self.size.saturating_sub(last.size) / span.max(Duration::from_millis(1))
        } else {
            match self.reordered_send_rate() {
                Some(rate) => rate,
                None => return Some(recv_rate),
            }
        };
        Some(recv_rate.min(send_rate))
    }

    /// The send rate of a window out of send order, from the packets sent after every packet
    /// that left it; `None` if fewer than `REQUIRED_PACKETS` remain.
    fn reordered_send_rate(&self) -> Option<Bitrate> {
        let mut size = DataSize::ZERO;
        let mut sent: Option<(Instant, Instant)> = None;
        let mut last_size = DataSize::ZERO;
        let mut count = 0;
        for p in &self.window {
            if self.latest_discarded_send.is_some_and(|t| p.send < t) {
                continue;
            }
            sent = Some(match sent {
                None => {
                    last_size = p.size;
                    (p.send, p.send)
                }
                Some((lo, hi)) => {
                    if p.send > hi {
                        last_size = p.size;
                    }
                    (lo.min(p.send), hi.max(p.send))
                }
            });
            size += p.size;
            count += 1;
        }
        let (lo, hi) = sent.filter(|_| count >= REQUIRED_PACKETS)?;
        let span = hi
            .saturating_duration_since(lo)
            .max(Duration::from_millis(1));
        Some(size.saturating_sub(last_size) / span)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn feed(e: &mut AckedBitrateEstimator, packets: &[(u64, u64, i64)], t0: Instant) {
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        e.update(
            packets
                .iter()
                .map(|&(send, recv, size)| (at(send), at(recv), DataSize::bytes(size))),
        );
    }

    fn kbps(e: &AckedBitrateEstimator) -> Option<u64> {
        e.current_estimate()
            .map(|b| (b.as_f64() / 1000.0).round() as u64)
    }

    /// 1,000-byte packets every `every` ms from `from` ms, received 20 ms later.
    fn paced(from: u64, count: u64, every: u64) -> Vec<(u64, u64, i64)> {
        (0..count)
            .map(|i| (from + i * every, from + i * every + 20, 1_000))
            .collect()
    }

    #[test]
    fn no_estimate_before_enough_packets() {
        let t0 = Instant::now();
        let mut e = AckedBitrateEstimator::new();
        feed(&mut e, &paced(0, 9, 10), t0);
        assert_eq!(e.current_estimate(), None);
        feed(&mut e, &paced(90, 1, 10), t0);
        // 1,000 bytes every 10 ms.
        assert_eq!(kbps(&e), Some(800));
    }

    #[test]
    fn follows_a_rise_within_the_window() {
        // The case the Bayesian estimator got wrong: 52 kbit/s for seconds, then a sender
        // padding to six times that. One window (1 s) later the estimate is the new rate.
        let t0 = Instant::now();
        let mut e = AckedBitrateEstimator::new();
        // 1,000 bytes every 150 ms: 53 kbit/s, for 3 s.
        for batch in paced(0, 20, 150).chunks(2) {
            feed(&mut e, batch, t0);
        }
        let slow = kbps(&e).unwrap();
        assert!(slow < 60, "{slow}");
        // Then every 25 ms: 320 kbit/s, fed in 50 ms reports.
        let fast = paced(3_000, 48, 25);
        let mut estimates = vec![];
        for batch in fast.chunks(2) {
            feed(&mut e, batch, t0);
            estimates.push(kbps(&e).unwrap());
        }
        // Half a window in: 190 kbit/s, the old packets still in the window.
        assert!(estimates[9] > 150, "{estimates:?}");
        assert_eq!(estimates[23], 320, "{estimates:?}");
    }

    #[test]
    fn a_stall_in_the_receive_times_is_not_a_fall_in_rate() {
        let t0 = Instant::now();
        let mut e = AckedBitrateEstimator::new();
        // Sent every 10 ms; the link held the last ten for 300 ms and delivered them at once.
        let packets: Vec<_> = (0..100)
            .map(|i| {
                let send = i * 10;
                let recv = if i >= 90 { 1_200 } else { send + 20 };
                (send, recv, 1_000)
            })
            .collect();
        feed(&mut e, &packets, t0);
        // Counted in full, the stall would read 648 kbit/s. Counted as the second longest gap
        // the receive rate reads 900, which the send rate caps at 800.
        assert_eq!(kbps(&e), Some(800));
    }

    #[test]
    fn the_send_rate_bounds_a_burst_received_faster_than_sent() {
        let t0 = Instant::now();
        let mut e = AckedBitrateEstimator::new();
        // Sent over 1 s, all received within 100 ms (the link buffered them): the link's
        // rate is unknown, the sender's is 160 kbit/s.
        let packets: Vec<_> = (0..20).map(|i| (i * 50, 1_000 + i * 5, 1_000)).collect();
        feed(&mut e, &packets, t0);
        assert_eq!(kbps(&e), Some(160));
    }

    #[test]
    fn the_window_forgets_an_older_faster_rate() {
        let t0 = Instant::now();
        let mut e = AckedBitrateEstimator::new();
        feed(&mut e, &paced(0, 200, 10), t0);
        // 2 s at 800 kbit/s, then 20 packets over 2 s at 80 kbit/s: the window keeps those 20
        // only.
        feed(&mut e, &paced(2_000, 20, 100), t0);
        assert_eq!(kbps(&e), Some(80));
    }

    /// The whole computation over the window, as libWebRTC does it on every read.
    fn full(e: &AckedBitrateEstimator) -> Option<Bitrate> {
        if e.window.len() < REQUIRED_PACKETS {
            return None;
        }
        let gaps = e.find_gaps();
        let first = e.window.front()?;
        let last = e.window.back()?;
        let size: DataSize = e.window.iter().map(|p| p.size).sum();
        let span =
            (last.recv.saturating_duration_since(first.recv)).saturating_sub(gaps[0].0) + gaps[1].0;
        let recv = size.saturating_sub(first.size) / span.max(Duration::from_millis(1));
        Some(e.reordered_send_rate().map_or(recv, |send| recv.min(send)))
    }

    #[test]
    fn kept_sums_match_the_full_computation() {
        let t0 = Instant::now();
        let mut e = AckedBitrateEstimator::new();
        let mut x: u64 = 0x2545_f491;
        let mut send = 0;
        for report in 0..400 {
            let mut batch = vec![];
            for _ in 0..(x % 9) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                send += x % 40;
                // Queueing delay that wanders, a stall now and then, varied sizes; every
                // 50th report a packet from before the previous one (reordered feedback).
                let delay = 20 + (x >> 8) % 30 + if (x >> 20) % 50 == 0 { 200 } else { 0 };
                let size = 100 + ((x >> 12) % 1_100) as i64;
                batch.push((send, send + delay, size));
            }
            if report % 50 == 49 {
                batch.push((send.saturating_sub(300), send + 5, 500));
            }
            batch.sort_by_key(|p| p.1);
            feed(&mut e, &batch, t0);
            assert_eq!(e.current_estimate(), full(&e), "report {report}");
            let size: DataSize = e.window.iter().map(|p| p.size).sum();
            assert_eq!(e.size, size);
        }
    }

    #[test]
    fn reordered_feedback_beyond_a_second_starts_again() {
        let t0 = Instant::now();
        let mut e = AckedBitrateEstimator::new();
        feed(&mut e, &paced(2_000, 20, 10), t0);
        assert!(e.current_estimate().is_some());
        // A packet received 2 s before the newest: the remote clock moved.
        feed(&mut e, &[(100, 120, 1_000)], t0);
        assert_eq!(e.current_estimate(), None);
    }
}
