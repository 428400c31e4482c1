//! Per-subscription RTP sequence number and timestamp rewriting.
//!
//! Every subscriber sees one continuous stream per subscription whose numbering starts below
//! 65,536 (so the subscriber's SRTP rollover counter starts at zero, str0m PR #1036), whatever
//! the publisher's own numbering and however long it has been sending. Gaps the publisher's
//! stream has are kept, so a subscriber's NACK still names the packet the SFU may yet receive.

/// Rewrites one source's extended sequence numbers and RTP timestamps into a subscriber's space.
#[derive(Debug, Clone)]
pub struct Rewriter {
    out_seq_start: u64,
    out_ts_start: u32,
    /// `out = in + seq_delta` (wrapping), set by the first packet of the current source.
    seq_delta: Option<u64>,
    ts_delta: u32,
    first_in_seq: u64,
    highest_out_seq: Option<u64>,
    /// Timestamp of the packet with the highest outgoing sequence number.
    last_out_ts: u32,
    /// After a source switch: how far the timestamp moves from `last_out_ts`.
    switch_advance: Option<u32>,
    /// Incoming sequence numbers deliberately not forwarded (SVC layers above the target),
    /// sorted: later packets close the gap so the subscriber never NACKs them.
    skipped: std::collections::VecDeque<u64>,
}

/// How many skipped numbers are remembered; older ones are folded into the offset.
const MAX_SKIPPED: usize = 2048;

impl Rewriter {
    /// `out_seq_start` must be below 65,536; `out_ts_start` is any value (random is best).
    pub fn new(out_seq_start: u16, out_ts_start: u32) -> Self {
        Rewriter {
            out_seq_start: u64::from(out_seq_start),
            out_ts_start,
            seq_delta: None,
            ts_delta: 0,
            first_in_seq: 0,
            highest_out_seq: None,
            last_out_ts: out_ts_start,
            switch_advance: None,
            skipped: std::collections::VecDeque::new(),
        }
    }

    /// The packet `in_seq` of the current source is dropped on purpose (an SVC layer the
    /// subscriber does not get): the numbering closes over it.
    pub fn skip(&mut self, in_seq: u64) {
        let Some(delta) = self.seq_delta else {
            return;
        };
        if in_seq < self.first_in_seq {
            return;
        }
        let pos = self.skipped.partition_point(|s| *s < in_seq);
        if self.skipped.get(pos) == Some(&in_seq) {
            return;
        }
        self.skipped.insert(pos, in_seq);
        if self.skipped.len() > MAX_SKIPPED
            && let Some(oldest) = self.skipped.pop_front()
        {
            // Fold it into the offset; packets older than it can no longer be placed.
            self.seq_delta = Some(delta.wrapping_sub(1));
            self.first_in_seq = oldest + 1;
        }
    }

    /// The next packet comes from another source (a simulcast layer switch): it continues the
    /// numbering at `highest + 1`, and its timestamp lands `ts_advance` after the last one sent
    /// (the wall-clock time between them, in the codec clock), so the subscriber's jitter buffer
    /// sees one stream.
    pub fn switch_source(&mut self, ts_advance: u32) {
        if self.highest_out_seq.is_some() {
            self.seq_delta = None;
            self.switch_advance = Some(ts_advance.max(1));
            self.skipped.clear();
        }
    }

    /// Maps an incoming (extended sequence number, RTP timestamp) to the outgoing pair.
    /// Returns `None` for packets older than the first one forwarded: the subscriber never
    /// saw their neighbours, so they could only confuse its jitter buffer.
    pub fn rewrite(&mut self, in_seq: u64, in_ts: u32) -> Option<(u64, u32)> {
        let delta = match self.seq_delta {
            Some(d) => {
                if in_seq < self.first_in_seq {
                    return None;
                }
                d
            }
            None => {
                let next = self.highest_out_seq.map_or(self.out_seq_start, |h| h + 1);
                let d = next.wrapping_sub(in_seq);
                self.seq_delta = Some(d);
                self.first_in_seq = in_seq;
                let base = match self.switch_advance.take() {
                    Some(advance) => self.last_out_ts.wrapping_add(advance),
                    None => self.out_ts_start,
                };
                self.ts_delta = base.wrapping_sub(in_ts);
                d
            }
        };
        let skipped = self.skipped.partition_point(|s| *s < in_seq);
        if self.skipped.get(skipped) == Some(&in_seq) {
            return None;
        }
        let out_seq = in_seq.wrapping_add(delta).wrapping_sub(skipped as u64);
        let out_ts = in_ts.wrapping_add(self.ts_delta);
        if self.highest_out_seq.is_none_or(|h| out_seq > h) {
            self.highest_out_seq = Some(out_seq);
            self.last_out_ts = out_ts;
        }
        Some((out_seq, out_ts))
    }

    /// The highest outgoing sequence number written so far.
    pub fn highest_out_seq(&self) -> Option<u64> {
        self.highest_out_seq
    }
}

/// Rewrites VP8 PictureID and TL0PICIDX (RFC 7741) so that a simulcast switch continues the
/// subscriber's picture numbering: libwebrtc's frame reference finder reads a jump as lost
/// frames. Both fields sit in the payload descriptor, which E2EE leaves clear.
#[derive(Debug, Clone, Default)]
pub struct Vp8Rewriter {
    /// `out = in + delta` (modulo the field width), fixed by the first packet after a switch.
    pid_delta: Option<u16>,
    tl0_delta: Option<u8>,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
}

/// The VP8 fields of one packet: PictureID with its width (`true` = 15-bit), TL0PICIDX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Fields {
    pub picture_id: Option<(u16, bool)>,
    pub tl0_pic_idx: Option<u8>,
}

impl Vp8Rewriter {
    /// The next packet comes from another simulcast layer.
    pub fn switch_source(&mut self) {
        self.pid_delta = None;
        self.tl0_delta = None;
    }

    /// The outgoing fields for a packet; `newest` says it is the highest sequence number sent
    /// so far (only those advance the numbering a later switch continues from).
    pub fn rewrite(&mut self, fields: Vp8Fields, newest: bool) -> Vp8Fields {
        let picture_id = fields.picture_id.map(|(pid, wide)| {
            let mask: u16 = if wide { 0x7fff } else { 0x7f };
            let delta = *self.pid_delta.get_or_insert_with(|| {
                self.last_pid
                    .map_or(0, |last| last.wrapping_add(1).wrapping_sub(pid))
            });
            let out = pid.wrapping_add(delta) & mask;
            if newest {
                self.last_pid = Some(out);
            }
            (out, wide)
        });
        let tl0_pic_idx = fields.tl0_pic_idx.map(|tl0| {
            let delta = *self.tl0_delta.get_or_insert_with(|| {
                self.last_tl0
                    .map_or(0, |last| last.wrapping_add(1).wrapping_sub(tl0))
            });
            let out = tl0.wrapping_add(delta);
            if newest {
                self.last_tl0 = Some(out);
            }
            out
        });
        Vp8Fields {
            picture_id,
            tl0_pic_idx,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_below_65536_and_stays_continuous() {
        let mut r = Rewriter::new(1000, 5);
        // A long-running publisher: extended numbers far above 65,536.
        let base = 3 * 65_536 + 65_530;
        let mut last = None;
        for i in 0..20u64 {
            let (seq, ts) = r.rewrite(base + i, 90_000 + (i as u32) * 3000).unwrap();
            assert!(seq < 65_536 + 20);
            if let Some(prev) = last {
                assert_eq!(seq, prev + 1);
            }
            assert_eq!(ts, 5 + (i as u32) * 3000);
            last = Some(seq);
        }
        assert_eq!(r.rewrite(base, 90_000).unwrap().0, 1000);
    }

    #[test]
    fn keeps_gaps_and_late_packets() {
        let mut r = Rewriter::new(10, 0);
        assert_eq!(r.rewrite(500, 0).unwrap().0, 10);
        assert_eq!(r.rewrite(502, 0).unwrap().0, 12);
        // The retransmission of 501 arrives late: it fills the gap.
        assert_eq!(r.rewrite(501, 0).unwrap().0, 11);
        assert_eq!(r.highest_out_seq(), Some(12));
    }

    #[test]
    fn drops_packets_older_than_the_start() {
        let mut r = Rewriter::new(10, 0);
        r.rewrite(500, 0).unwrap();
        assert!(r.rewrite(499, 0).is_none());
    }

    #[test]
    fn a_source_switch_continues_numbering_and_time() {
        let mut r = Rewriter::new(100, 1_000);
        assert_eq!(r.rewrite(5_000, 90_000), Some((100, 1_000)));
        assert_eq!(r.rewrite(5_001, 93_000), Some((101, 4_000)));
        // Another layer: its own numbering and timestamp base; 33 ms later = 3,000 ticks.
        r.switch_source(3_000);
        assert_eq!(r.rewrite(70_000, 7_777_000), Some((102, 7_000)));
        assert_eq!(r.rewrite(70_001, 7_780_000), Some((103, 10_000)));
        // Packets of the old source after the switch are older than the new start: dropped.
        assert_eq!(r.rewrite(69_999, 7_774_000), None);
        // A switch before anything was sent changes nothing.
        let mut fresh = Rewriter::new(7, 0);
        fresh.switch_source(500);
        assert_eq!(fresh.rewrite(10, 10), Some((7, 0)));
    }

    #[test]
    fn skipped_packets_leave_no_gap() {
        let mut r = Rewriter::new(100, 0);
        assert_eq!(r.rewrite(10, 0).unwrap().0, 100);
        r.skip(11);
        r.skip(12);
        assert_eq!(r.rewrite(13, 0).unwrap().0, 101);
        // A late retransmission of a skipped packet stays out.
        assert!(r.rewrite(12, 0).is_none());
        // A late packet from before the skips keeps its place.
        r.skip(15);
        assert_eq!(r.rewrite(14, 0).unwrap().0, 102);
        assert_eq!(r.rewrite(16, 0).unwrap().0, 103);
    }

    fn vp8(pid: u16, tl0: u8) -> Vp8Fields {
        Vp8Fields {
            picture_id: Some((pid, true)),
            tl0_pic_idx: Some(tl0),
        }
    }

    #[test]
    fn vp8_numbering_continues_across_a_switch() {
        let mut r = Vp8Rewriter::default();
        // The first source passes unchanged.
        assert_eq!(r.rewrite(vp8(100, 7), true), vp8(100, 7));
        assert_eq!(r.rewrite(vp8(101, 8), true), vp8(101, 8));
        // Another layer with its own numbering: it continues at 102 / 9.
        r.switch_source();
        assert_eq!(r.rewrite(vp8(30_000, 200), true), vp8(102, 9));
        assert_eq!(r.rewrite(vp8(30_001, 200), true), vp8(103, 9));
        // A late retransmission maps the same way but does not move the numbering.
        assert_eq!(r.rewrite(vp8(29_999, 199), false), vp8(101, 8));
        r.switch_source();
        assert_eq!(r.rewrite(vp8(5, 0), true), vp8(104, 10));
    }

    #[test]
    fn vp8_numbering_wraps_in_the_field_width() {
        let mut r = Vp8Rewriter::default();
        r.rewrite(vp8(0x7fff, 255), true);
        r.switch_source();
        assert_eq!(r.rewrite(vp8(10, 3), true), vp8(0, 0));
        // A 7-bit PictureID stays within 7 bits.
        let mut short = Vp8Rewriter::default();
        let seven = |pid| Vp8Fields {
            picture_id: Some((pid, false)),
            tl0_pic_idx: None,
        };
        short.rewrite(seven(127), true);
        short.switch_source();
        assert_eq!(short.rewrite(seven(50), true), seven(0));
    }

    #[test]
    fn timestamps_wrap() {
        let mut r = Rewriter::new(1, u32::MAX - 10);
        let (_, ts0) = r.rewrite(1, 100).unwrap();
        assert_eq!(ts0, u32::MAX - 10);
        let (_, ts1) = r.rewrite(2, 100 + 960).unwrap();
        assert_eq!(ts1, (u32::MAX - 10).wrapping_add(960));
    }
}
