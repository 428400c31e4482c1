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
}

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
                if self.highest_out_seq.is_none() {
                    self.ts_delta = self.out_ts_start.wrapping_sub(in_ts);
                }
                d
            }
        };
        let out_seq = in_seq.wrapping_add(delta);
        if self.highest_out_seq.is_none_or(|h| out_seq > h) {
            self.highest_out_seq = Some(out_seq);
        }
        Some((out_seq, in_ts.wrapping_add(self.ts_delta)))
    }

    /// The highest outgoing sequence number written so far.
    pub fn highest_out_seq(&self) -> Option<u64> {
        self.highest_out_seq
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
    fn timestamps_wrap() {
        let mut r = Rewriter::new(1, u32::MAX - 10);
        let (_, ts0) = r.rewrite(1, 100).unwrap();
        assert_eq!(ts0, u32::MAX - 10);
        let (_, ts1) = r.rewrite(2, 100 + 960).unwrap();
        assert_eq!(ts1, (u32::MAX - 10).wrapping_add(960));
    }
}
