//! What a media worker counts about itself: plain counters and fixed-bucket histograms owned by
//! the worker thread. The node copies them into [`crate::WorkerSnapshot`]s a few times a second;
//! the metrics exporter turns snapshots into Prometheus metrics (base units: seconds, bytes).

use std::collections::BTreeMap;

/// A histogram with fixed upper bounds (Prometheus `le` semantics; the last bucket is +Inf).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; one more than `bounds` for +Inf.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        self.observe_n(v, 1);
    }

    /// `n` observations of the same value.
    pub fn observe_n(&mut self, v: f64, n: u64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += n;
        self.sum += v * n as f64;
        self.count += n;
    }

    /// Cumulative counts per bound, as Prometheus wants them.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.counts
            .iter()
            .map(|c| {
                total += c;
                total
            })
            .collect()
    }
}

/// Seconds: forwarding inside the SFU (arrival in the socket to hand-off to the kernel),
/// sub-millisecond to tens of ms; fine around the 1-3 ms where a busy worker's p99 sits.
pub const FORWARDING_DELAY_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025,
    0.05, 0.1,
];
/// Seconds: round-trip times and join durations.
pub const RTT_SECONDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2];
pub const JOIN_SECONDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0];
/// Seconds: interarrival jitter as receivers report it.
pub const JITTER_SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16];
/// Fraction 0..1 of packets lost, as receivers report it.
pub const LOSS_RATIO: &[f64] = &[0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];
/// Bits per second: bandwidth estimates toward subscribers.
pub const BITRATE_BPS: &[f64] = &[
    100_000.0,
    250_000.0,
    500_000.0,
    1_000_000.0,
    2_000_000.0,
    4_000_000.0,
    8_000_000.0,
    16_000_000.0,
];

/// Plain counters and histograms, owned by one worker thread.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// Datagrams no session took: unknown address, garbage, failed ICE check.
    pub datagrams_dropped: u64,
    /// RTP packets received from publishers.
    pub packets_in: u64,
    /// RTP packets written to subscribers.
    pub packets_out: u64,
    pub unknown_pt: u64,
    /// Dependency Descriptors that could not be read (truncated, or before any structure).
    pub dd_unreadable: u64,
    /// Keyframe requests from subscribers (PLI, FIR) and to publishers (always PLI).
    pub plis_in: u64,
    pub firs_in: u64,
    pub plis_out: u64,
    /// RTX retransmissions received from publishers and sent to subscribers.
    pub rtx_in: u64,
    pub rtx_out: u64,
    /// NACKs received from subscribers and sent to publishers (from str0m's stream stats).
    pub nacks_in: u64,
    pub nacks_out: u64,
    pub slow_consumers: u64,
    pub layer_switches: u64,
    pub dynacast_updates: u64,
    /// Data messages relayed, dropped for a full recipient channel, refused (limits, grants).
    pub data_messages: u64,
    pub data_dropped: u64,
    pub data_refused: u64,
    pub send_errors: u64,
    /// System calls made to send (one per GSO train or `sendmmsg` batch).
    pub send_syscalls: u64,
    /// Room events (for webhooks) dropped because nobody read them.
    pub events_dropped: u64,
    /// Peer connections that ended badly, by reason (`ice_timeout`, `connect_timeout`, `dtls`,
    /// `panic`).
    pub session_failures: BTreeMap<&'static str, u64>,
    /// Time the worker spent handling input, in nanoseconds (the rest it waited).
    pub busy_nanos: u64,
    pub forwarding_delay_seconds: Histogram,
    pub rtt_seconds: Histogram,
    pub jitter_seconds: Histogram,
    pub loss_ratio: Histogram,
    pub bwe_bps: Histogram,
    pub join_seconds: Histogram,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            datagrams_in: 0,
            bytes_in: 0,
            datagrams_out: 0,
            bytes_out: 0,
            datagrams_dropped: 0,
            packets_in: 0,
            packets_out: 0,
            unknown_pt: 0,
            dd_unreadable: 0,
            plis_in: 0,
            firs_in: 0,
            plis_out: 0,
            rtx_in: 0,
            rtx_out: 0,
            nacks_in: 0,
            nacks_out: 0,
            slow_consumers: 0,
            layer_switches: 0,
            dynacast_updates: 0,
            data_messages: 0,
            data_dropped: 0,
            data_refused: 0,
            send_errors: 0,
            send_syscalls: 0,
            events_dropped: 0,
            session_failures: BTreeMap::new(),
            busy_nanos: 0,
            forwarding_delay_seconds: Histogram::new(FORWARDING_DELAY_SECONDS),
            rtt_seconds: Histogram::new(RTT_SECONDS),
            jitter_seconds: Histogram::new(JITTER_SECONDS),
            loss_ratio: Histogram::new(LOSS_RATIO),
            bwe_bps: Histogram::new(BITRATE_BPS),
            join_seconds: Histogram::new(JOIN_SECONDS),
        }
    }
}

impl WorkerStats {
    pub fn session_failed(&mut self, reason: &'static str) {
        *self.session_failures.entry(reason).or_default() += 1;
    }
}

/// The state a worker hosts right now (gauges).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerGauges {
    pub rooms: usize,
    pub participants: usize,
    pub published_tracks: usize,
    pub subscriptions: usize,
    /// Video subscriptions paused (bandwidth or the subscriber's wish).
    pub paused_subscriptions: usize,
    /// Video subscriptions by the layer they receive now (simulcast stream or SVC spatial
    /// layer: 0, 1, 2 and above counted as 2).
    pub video_subscriptions_by_layer: [usize; 3],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_le() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.cumulative(), vec![2, 3, 4]);
        assert_eq!(h.count, 4);
        assert!((h.sum - 6.0).abs() < 1e-9);
    }
}
