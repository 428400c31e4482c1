//! What receivers measure and how it is summed: per-stream loss and RFC 3550 jitter, one-way
//! latency in HDR histograms, join times, and the once-a-second harvest the timeline is made of.
//! One `Recorder` per simulated receiver keeps lock contention to one receiver's task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Latencies above this are clamped (they are lost packets in all but name).
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// A receiver tracks at most this many streams; more is a bug in the scenario, not load.
const MAX_STREAMS: usize = 4_096;

/// Media kind of a received stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    pub fn clock_rate(self) -> u32 {
        match self {
            Kind::Audio => 48_000,
            Kind::Video => 90_000,
        }
    }
}

/// One received packet, as any target's receiver sees it.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub stream: &'a str,
    pub kind: Kind,
    /// Extended sequence number.
    pub seq: u64,
    pub rtp_time: u32,
    /// Bytes on the wire we count: RTP payload plus a 12-byte RTP header.
    pub bytes: usize,
    pub arrival: Instant,
    /// Sender's wall clock at write time, when the packet carries it (video).
    pub sent_at_us: Option<u64>,
    /// Receiver's wall clock now.
    pub now_us: u64,
}

/// Loss and jitter of one stream (one publisher's track at one receiver).
#[derive(Debug, Clone)]
pub struct StreamStats {
    pub kind: Kind,
    pub first_seq: u64,
    pub max_seq: u64,
    pub received: u64,
    pub bytes: u64,
    /// RFC 3550 interarrival jitter, in RTP clock units.
    jitter: f64,
    last_transit: Option<u32>,
    epoch: Instant,
}

impl StreamStats {
    pub fn new(kind: Kind, seq: u64, epoch: Instant) -> Self {
        StreamStats {
            kind,
            first_seq: seq,
            max_seq: seq,
            received: 0,
            bytes: 0,
            jitter: 0.0,
            last_transit: None,
            epoch,
        }
    }

    pub fn on_packet(&mut self, seq: u64, rtp_time: u32, arrival: Instant, bytes: usize) {
        self.received += 1;
        self.bytes += bytes as u64;
        self.first_seq = self.first_seq.min(seq);
        self.max_seq = self.max_seq.max(seq);
        let clock = u128::from(self.kind.clock_rate());
        let arrival_ts =
            (arrival.saturating_duration_since(self.epoch).as_micros() * clock / 1_000_000) as u32;
        let transit = arrival_ts.wrapping_sub(rtp_time);
        if let Some(last) = self.last_transit {
            let d = f64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// Packets the sender numbered between the first and the highest seen.
    pub fn expected(&self) -> u64 {
        self.max_seq - self.first_seq + 1
    }

    /// Never negative: duplicates are dropped by the receiver stack before they reach us.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1_000.0 / f64::from(self.kind.clock_rate())
    }
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that are valid: 1 us .. 60 s at 3 significant figures.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
    })
}

#[derive(Debug)]
struct RecvState {
    streams: HashMap<String, StreamStats>,
    window_latency: Histogram<u64>,
    total_latency: Histogram<u64>,
    first_packet: Option<Instant>,
    /// When its signaling started (WebSocket open, WHEP POST, Janus attach, bare hello): the
    /// start of its join time.
    signaling_started: Instant,
}

/// Everything one simulated receiver measured.
#[derive(Debug)]
pub struct Recorder {
    /// Who: identity, for the per-subscriber report.
    pub name: String,
    epoch: Instant,
    state: Mutex<RecvState>,
}

impl Recorder {
    /// A receiver created at `started`, which is also when its signaling starts unless
    /// [`Recorder::signaling_starts`] says otherwise.
    pub fn new(name: impl Into<String>, started: Instant) -> Arc<Self> {
        Arc::new(Recorder {
            name: name.into(),
            epoch: started,
            state: Mutex::new(RecvState {
                streams: HashMap::new(),
                window_latency: new_histogram(),
                total_latency: new_histogram(),
                first_packet: None,
                signaling_started: started,
            }),
        })
    }

    /// Its member's own signaling starts now: members of a call join one after the other, and
    /// a member's join time must not include the joins of those before it.
    pub fn signaling_starts(&self, at: Instant) {
        self.lock().signaling_started = at;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecvState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, p: &Packet<'_>) {
        let mut s = self.lock();
        if s.first_packet.is_none() {
            s.first_packet = Some(p.arrival);
        }
        let full = s.streams.len() >= MAX_STREAMS;
        match s.streams.get_mut(p.stream) {
            Some(st) => st.on_packet(p.seq, p.rtp_time, p.arrival, p.bytes),
            None if !full => {
                let mut st = StreamStats::new(p.kind, p.seq, self.epoch);
                st.on_packet(p.seq, p.rtp_time, p.arrival, p.bytes);
                s.streams.insert(p.stream.to_string(), st);
            }
            None => {}
        }
        if let Some(sent) = p.sent_at_us {
            let us = p.now_us.saturating_sub(sent).clamp(1, MAX_LATENCY_US);
            // In bounds by the clamp; a failure would only drop one sample.
            let _ = s.window_latency.record(us);
            let _ = s.total_latency.record(us);
        }
    }

    /// Time from the start of signaling to the first media packet, if one arrived.
    pub fn join_time(&self) -> Option<std::time::Duration> {
        let s = self.lock();
        s.first_packet
            .map(|f| f.saturating_duration_since(s.signaling_started))
    }

    /// Cumulative counters and this receiver's latency since the last harvest.
    fn harvest(&self, into: &mut Totals, window: &mut Histogram<u64>) {
        let mut s = self.lock();
        for st in s.streams.values() {
            into.add_stream(st);
        }
        let _ = window.add(&s.window_latency);
        s.window_latency.reset();
    }

    pub fn summary(&self) -> ReceiverSummary {
        let s = self.lock();
        let mut t = Totals::default();
        for st in s.streams.values() {
            t.add_stream(st);
        }
        ReceiverSummary {
            name: self.name.clone(),
            streams: s.streams.len(),
            totals: t,
            jitter_ms: s.streams.values().map(StreamStats::jitter_ms).collect(),
            latency: s.total_latency.clone(),
            join_time: s
                .first_packet
                .map(|f| f.saturating_duration_since(s.signaling_started)),
        }
    }
}

/// Sums over streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    pub video_packets: u64,
    pub video_bytes: u64,
    pub expected: u64,
    pub lost: u64,
}

impl Totals {
    fn add_stream(&mut self, st: &StreamStats) {
        self.packets += st.received;
        self.bytes += st.bytes;
        if st.kind == Kind::Video {
            self.video_packets += st.received;
            self.video_bytes += st.bytes;
        }
        self.expected += st.expected();
        self.lost += st.lost();
    }

    pub fn minus(&self, earlier: &Totals) -> Totals {
        Totals {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            video_packets: self.video_packets.saturating_sub(earlier.video_packets),
            video_bytes: self.video_bytes.saturating_sub(earlier.video_bytes),
            expected: self.expected.saturating_sub(earlier.expected),
            lost: self.lost.saturating_sub(earlier.lost),
        }
    }

    pub fn loss_percent(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.expected as f64
        }
    }
}

/// One receiver's whole run.
#[derive(Debug, Clone)]
pub struct ReceiverSummary {
    pub name: String,
    pub streams: usize,
    pub totals: Totals,
    pub jitter_ms: Vec<f64>,
    pub latency: Histogram<u64>,
    pub join_time: Option<std::time::Duration>,
}

/// All receivers of a run; the runner harvests it once per sample period.
#[derive(Debug, Default)]
pub struct Collector {
    recorders: Mutex<Vec<Arc<Recorder>>>,
}

/// A harvest: cumulative totals and the latency of the window since the previous harvest.
#[derive(Debug, Clone)]
pub struct Harvest {
    pub at: Instant,
    pub totals: Totals,
    pub window_latency: Histogram<u64>,
    pub receivers: usize,
}

impl Collector {
    pub fn add(&self, r: Arc<Recorder>) {
        self.recorders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }

    pub fn recorders(&self) -> Vec<Arc<Recorder>> {
        self.recorders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn harvest(&self) -> Harvest {
        let mut totals = Totals::default();
        let mut window = new_histogram();
        let recorders = self.recorders();
        for r in &recorders {
            r.harvest(&mut totals, &mut window);
        }
        Harvest {
            at: Instant::now(),
            totals,
            window_latency: window,
            receivers: recorders.len(),
        }
    }
}

/// Percentile of a histogram in milliseconds (0 when empty).
pub fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1_000.0
    }
}

pub fn merged(hs: impl IntoIterator<Item = Histogram<u64>>) -> Histogram<u64> {
    let mut out = new_histogram();
    for h in hs {
        let _ = out.add(&h);
    }
    out
}

/// Nearest-rank percentile of plain samples (join times); 0 when empty.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pkt(stream: &str, kind: Kind, seq: u64, ts: u32, at: Instant) -> Packet<'_> {
        Packet {
            stream,
            kind,
            seq,
            rtp_time: ts,
            bytes: 112,
            arrival: at,
            sent_at_us: None,
            now_us: 0,
        }
    }

    #[test]
    fn loss_counts_gaps_not_reordering() {
        let t0 = Instant::now();
        let mut s = StreamStats::new(Kind::Audio, 10, t0);
        for seq in [10, 11, 13, 12, 15] {
            s.on_packet(seq, 0, t0, 100);
        }
        assert_eq!(s.expected(), 6);
        assert_eq!(s.lost(), 1, "14 is missing; 12 arrived late but arrived");
        assert_eq!(s.bytes, 500);
    }

    #[test]
    fn jitter_is_zero_for_perfect_pacing_and_grows_with_variation() {
        let t0 = Instant::now();
        let mut s = StreamStats::new(Kind::Audio, 0, t0);
        for i in 0..100u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 20);
            s.on_packet(u64::from(i), 1_000 + i * 960, at, 100);
        }
        assert!(s.jitter_ms() < 0.05, "{}", s.jitter_ms());
        let mut s = StreamStats::new(Kind::Audio, 0, t0);
        for i in 0..200u32 {
            // Every other packet 4 ms late.
            let late = if i % 2 == 1 { 4 } else { 0 };
            let at = t0 + Duration::from_millis(u64::from(i) * 20 + late);
            s.on_packet(u64::from(i), i * 960, at, 100);
        }
        // |D| is 4 ms every packet, so J converges to 4 ms.
        assert!((s.jitter_ms() - 4.0).abs() < 0.3, "{}", s.jitter_ms());
    }

    #[test]
    fn jitter_survives_rtp_timestamp_wrap() {
        let t0 = Instant::now();
        let mut s = StreamStats::new(Kind::Video, 0, t0);
        let start = u32::MAX - 3_000 * 5;
        for i in 0..20u32 {
            let at = t0 + Duration::from_micros(u64::from(i) * 33_333);
            s.on_packet(u64::from(i), start.wrapping_add(i * 3_000), at, 1_000);
        }
        assert!(s.jitter_ms() < 0.1, "{}", s.jitter_ms());
    }

    #[test]
    fn join_time_starts_at_the_members_own_signaling() {
        // Created with its group, but the member before it took 50 ms to join.
        let t0 = Instant::now();
        let r = Recorder::new("carol", t0);
        r.signaling_starts(t0 + Duration::from_millis(50));
        r.record(&pkt(
            "a",
            Kind::Audio,
            1,
            0,
            t0 + Duration::from_millis(120),
        ));
        assert_eq!(r.join_time(), Some(Duration::from_millis(70)));
        assert_eq!(r.summary().join_time, Some(Duration::from_millis(70)));
    }

    #[test]
    fn recorder_harvests_windows_and_join_time() {
        let t0 = Instant::now();
        let r = Recorder::new("bob", t0);
        let c = Collector::default();
        c.add(r.clone());
        assert!(r.join_time().is_none());
        let mut p = pkt("a", Kind::Video, 1, 0, t0 + Duration::from_millis(120));
        p.sent_at_us = Some(1_000);
        p.now_us = 3_500;
        r.record(&p);
        r.record(&pkt(
            "a",
            Kind::Video,
            3,
            0,
            t0 + Duration::from_millis(130),
        ));
        r.record(&pkt(
            "b",
            Kind::Audio,
            7,
            0,
            t0 + Duration::from_millis(140),
        ));
        assert_eq!(r.join_time(), Some(Duration::from_millis(120)));
        let h = c.harvest();
        assert_eq!(h.totals.packets, 3);
        assert_eq!(h.totals.video_packets, 2);
        assert_eq!((h.totals.expected, h.totals.lost), (4, 1));
        assert_eq!(h.window_latency.len(), 1);
        assert!((percentile_ms(&h.window_latency, 0.99) - 2.5).abs() < 0.01);
        let h2 = c.harvest();
        assert!(h2.window_latency.is_empty(), "the window resets");
        assert_eq!(h2.totals, h.totals, "totals are cumulative");
        let d = h2.totals.minus(&Totals::default());
        assert!((d.loss_percent() - 25.0).abs() < 1e-9);
        assert_eq!(
            r.summary().latency.len(),
            1,
            "the run's histogram keeps everything"
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }
}
