//! What a run produced and how it is shown: the result types (serialized as the JSON report),
//! the plain-text table, the `results.json` bench record, and a self-contained HTML report with
//! inline SVG charts (no script, no network).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::forwarding_delay::ForwardingDelay;
use crate::runner::RampOptions;
use crate::scenario::Scenario;
use crate::stats;

/// Rates over the measurement window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RateStats {
    pub window_seconds: f64,
    pub forwarded_packets: u64,
    pub forwarded_packets_per_s: f64,
    pub forwarded_mbit_per_s: f64,
    pub video_mbit_per_s: f64,
    pub sfu_cpu_seconds: Option<f64>,
    /// 100 = one core busy.
    pub sfu_cpu_percent: Option<f64>,
    /// Milliseconds a second the server's threads were ready to run but waited for a CPU,
    /// summed over its threads. On a machine the server shares (with the load tester, here),
    /// this is what its latency pays for the other work on its cores: a packet that arrives
    /// while its worker waits, waits too.
    pub sfu_cpu_wait_ms_per_s: Option<f64>,
    pub packets_per_cpu_second: Option<f64>,
    pub mbit_per_cpu_second: Option<f64>,
    pub video_mbit_per_cpu_second: Option<f64>,
    pub loadtester_cpu_seconds: Option<f64>,
    pub loss_percent: f64,
    pub lost_packets: u64,
    pub expected_packets: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyStats {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencyStats {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        LatencyStats {
            samples: h.len(),
            p50_ms: stats::percentile_ms(h, 0.50),
            p90_ms: stats::percentile_ms(h, 0.90),
            p99_ms: stats::percentile_ms(h, 0.99),
            p999_ms: stats::percentile_ms(h, 0.999),
            max_ms: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1_000.0
            },
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinStats {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

impl JoinStats {
    pub fn from_samples(ms: &[f64]) -> Self {
        JoinStats {
            count: ms.len(),
            p50_ms: stats::percentile(ms, 0.50),
            p95_ms: stats::percentile(ms, 0.95),
            max_ms: stats::percentile(ms, 1.0),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(v: &[f64]) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        Spread {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    pub t_s: f64,
    pub phase: String,
    pub participants: usize,
    pub packets_per_s: f64,
    pub mbit_per_s: f64,
    pub loss_percent: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub sfu_cpu_percent: Option<f64>,
    /// The server's waits for a CPU over the second, summed over its threads (100 = one
    /// thread-second a second); see [`RateStats::sfu_cpu_wait_ms_per_s`].
    pub sfu_cpu_wait_percent: Option<f64>,
    pub sfu_rss_bytes: Option<u64>,
    pub loadtester_cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    pub step: usize,
    pub participants: usize,
    pub streams: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The server's own forwarding delay p99 over the step (Moien's metrics).
    pub sfu_forwarding_delay_p99_ms: Option<f64>,
    pub rates: RateStats,
    pub within_limits: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RampResult {
    /// Participants at the last step within the limits.
    pub capacity_participants: usize,
    pub capacity_streams: usize,
    pub stop_reason: String,
    pub steps: Vec<RampStep>,
    pub options: RampOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            cpu,
        }
    }
}

/// The whole report of one run (the JSON file).
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub target: String,
    pub params: Scenario,
    pub participants: usize,
    pub receivers: usize,
    pub receivers_with_media: usize,
    pub streams: usize,
    /// Streams that delivered at least one packet (a stream never received is not "loss").
    pub streams_received: usize,
    pub window_seconds: f64,
    pub rates: RateStats,
    /// The server's own forwarding delay over the measured window, read from its metrics
    /// (Moien only): the part of the one-way latency the server adds, measured inside it.
    pub sfu_forwarding_delay: Option<ForwardingDelay>,
    pub latency: LatencyStats,
    pub jitter_ms: f64,
    pub join: JoinStats,
    pub subscriber_kbps: Spread,
    pub rss_bytes_start: Option<u64>,
    pub rss_bytes_end: Option<u64>,
    /// The anonymous part of the RSS (heap, stacks), without the file-backed code pages.
    pub anon_rss_bytes_start: Option<u64>,
    pub anon_rss_bytes_end: Option<u64>,
    /// Growth of the anonymous RSS from before the first join to the end of the measured
    /// window, divided by the participants.
    pub rss_bytes_per_participant: Option<u64>,
    pub cpu_note: String,
    pub sender_pacing: bool,
    /// Niceness the load tester ran its own threads at (0: unchanged); see `--nice`.
    #[serde(default)]
    pub load_tester_nice: i32,
    pub interrupted: bool,
    pub errors: Vec<String>,
    pub ramp: Option<RampResult>,
    pub timeline: Vec<TimelinePoint>,
    pub machine: Machine,
}

/// One line of `target/bench/results.json` (scripts and dashboards read these names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchRecord {
    pub scenario: String,
    pub target: String,
    pub mode: String,
    pub participants: usize,
    pub streams: usize,
    #[serde(default)]
    pub streams_received: usize,
    pub forwarded_packets_per_s: f64,
    pub forwarded_mbit_per_s: f64,
    pub sfu_cpu_seconds: Option<f64>,
    pub sfu_cpu_percent: Option<f64>,
    pub packets_per_cpu_second: Option<f64>,
    pub mbit_per_cpu_second: Option<f64>,
    pub video_mbit_per_cpu_second: Option<f64>,
    pub p50_latency_ms: f64,
    pub p99_latency_ms: f64,
    /// The server's own forwarding delay p99 (Moien only; see [`RunResult`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfu_forwarding_delay_p99_ms: Option<f64>,
    /// The server's waits for a CPU, ms a second summed over its threads (see [`RateStats`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfu_cpu_wait_ms_per_s: Option<f64>,
    pub loss_percent: f64,
    pub jitter_ms: f64,
    pub join_p95_ms: f64,
    pub rss_bytes_per_participant: Option<u64>,
    pub capacity_participants: Option<usize>,
    pub interrupted: bool,
    /// Set by [`median_runs`]: how many runs of this scenario and target the record is the
    /// median of, and the lowest and highest packets per CPU-second among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_per_cpu_second_range: Option<[f64; 2]>,
}

impl BenchRecord {
    /// Whether `other` measures the same thing: scenario, target and mode, and for a fixed run
    /// the same size (the bench adds one at 70 % of the ramp's capacity); ramps are one.
    pub fn same_measurement(&self, other: &BenchRecord) -> bool {
        self.scenario == other.scenario
            && self.target == other.target
            && self.mode == other.mode
            && (self.mode == "ramp" || self.participants == other.participants)
    }
}

impl RunResult {
    pub fn bench_record(&self) -> BenchRecord {
        BenchRecord {
            scenario: self.scenario.clone(),
            target: self.target.clone(),
            mode: if self.ramp.is_some() { "ramp" } else { "fixed" }.into(),
            participants: self.participants,
            streams: self.streams,
            streams_received: self.streams_received,
            forwarded_packets_per_s: round(self.rates.forwarded_packets_per_s, 1),
            forwarded_mbit_per_s: round(self.rates.forwarded_mbit_per_s, 3),
            sfu_cpu_seconds: self.rates.sfu_cpu_seconds.map(|v| round(v, 3)),
            sfu_cpu_percent: self.rates.sfu_cpu_percent.map(|v| round(v, 1)),
            packets_per_cpu_second: self.rates.packets_per_cpu_second.map(|v| round(v, 0)),
            mbit_per_cpu_second: self.rates.mbit_per_cpu_second.map(|v| round(v, 2)),
            video_mbit_per_cpu_second: self.rates.video_mbit_per_cpu_second.map(|v| round(v, 2)),
            p50_latency_ms: round(self.latency.p50_ms, 3),
            p99_latency_ms: round(self.latency.p99_ms, 3),
            sfu_forwarding_delay_p99_ms: self.sfu_forwarding_delay.map(|d| round(d.p99_ms, 3)),
            sfu_cpu_wait_ms_per_s: self.rates.sfu_cpu_wait_ms_per_s.map(|v| round(v, 1)),
            loss_percent: round(self.rates.loss_percent, 4),
            jitter_ms: round(self.jitter_ms, 3),
            join_p95_ms: round(self.join.p95_ms, 1),
            rss_bytes_per_participant: self.rss_bytes_per_participant,
            capacity_participants: self.ramp.as_ref().map(|r| r.capacity_participants),
            interrupted: self.interrupted,
            runs: None,
            packets_per_cpu_second_range: None,
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    pub fn write_html(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, html(self)).with_context(|| format!("writing {}", path.display()))
    }

    /// The reports' file stem: `<scenario>-<target>[-ramp]`.
    pub fn file_stem(&self) -> String {
        format!(
            "{}-{}{}",
            self.scenario,
            self.target,
            if self.ramp.is_some() { "-ramp" } else { "" }
        )
    }

    /// Writes the JSON and HTML reports into `dir` (what the binary does at the end of a run);
    /// returns their paths.
    pub fn write_reports(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        let stem = self.file_stem();
        let json = dir.join(format!("{stem}.json"));
        let html = dir.join(format!("{stem}.html"));
        self.write_json(&json)?;
        self.write_html(&html)?;
        Ok((json, html))
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// Adds (or replaces, same scenario/target/mode) a record in a results file (a JSON array).
pub fn append_record(path: &Path, rec: BenchRecord) -> anyhow::Result<()> {
    let mut all: Vec<BenchRecord> = match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => serde_json::from_str(&s)
            .with_context(|| format!("{} is not a results array", path.display()))?,
        _ => Vec::new(),
    };
    all.retain(|r| !r.same_measurement(&rec));
    all.push(rec);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&all)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The plain-text table printed at the end of a run.
pub fn text_table(r: &RunResult) -> String {
    let mut s = String::new();
    let rt = &r.rates;
    let _ = writeln!(
        s,
        "{} on {}: {} participants, {} of {} forwarded streams delivered, {:.0} s measured{}",
        r.scenario,
        r.target,
        r.participants,
        r.streams_received,
        r.streams,
        rt.window_seconds,
        if r.interrupted { " (interrupted)" } else { "" }
    );
    let rows: Vec<(&str, String)> = vec![
        (
            "forwarded packets/s",
            format!("{:.0}", rt.forwarded_packets_per_s),
        ),
        (
            "forwarded Mbit/s",
            format!(
                "{:.2} (video {:.2})",
                rt.forwarded_mbit_per_s, rt.video_mbit_per_s
            ),
        ),
        (
            "server CPU",
            format!(
                "{} s ({}% of one core)",
                opt(rt.sfu_cpu_seconds, 2),
                opt(rt.sfu_cpu_percent, 1)
            ),
        ),
        (
            "server's waits for a CPU",
            format!(
                "{} ms a second (summed over its threads)",
                opt(rt.sfu_cpu_wait_ms_per_s, 1)
            ),
        ),
        (
            "packets per server CPU-second",
            opt(rt.packets_per_cpu_second, 0),
        ),
        (
            "Mbit per server CPU-second",
            format!(
                "{} (video {})",
                opt(rt.mbit_per_cpu_second, 1),
                opt(rt.video_mbit_per_cpu_second, 1)
            ),
        ),
        (
            "one-way latency p50/p90/p99/max",
            if r.latency.samples == 0 {
                "n/a (no media packet received)".into()
            } else {
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2} ms ({} samples)",
                    r.latency.p50_ms,
                    r.latency.p90_ms,
                    r.latency.p99_ms,
                    r.latency.max_ms,
                    r.latency.samples
                )
            },
        ),
        (
            "loss",
            format!(
                "{:.3}% ({} of {})",
                rt.loss_percent, rt.lost_packets, rt.expected_packets
            ),
        ),
        (
            "server's own forwarding delay p50/p90/p99",
            match &r.sfu_forwarding_delay {
                Some(d) => format!(
                    "{:.2} / {:.2} / {:.2} ms ({:.2}% within 2 ms, {} copies)",
                    d.p50_ms, d.p90_ms, d.p99_ms, d.within_2ms_percent, d.copies
                ),
                None => "n/a (not exported by this target)".into(),
            },
        ),
        ("jitter (mean of streams)", format!("{:.2} ms", r.jitter_ms)),
        (
            "join time p50/p95/max",
            format!(
                "{:.0} / {:.0} / {:.0} ms ({} of {} receivers got media)",
                r.join.p50_ms, r.join.p95_ms, r.join.max_ms, r.receivers_with_media, r.receivers
            ),
        ),
        (
            "received kbit/s per subscriber",
            format!(
                "mean {:.0}, min {:.0}, max {:.0}",
                r.subscriber_kbps.mean, r.subscriber_kbps.min, r.subscriber_kbps.max
            ),
        ),
        (
            "server RSS start/end (anonymous), per participant",
            format!(
                "{} / {} MiB ({} / {} MiB), {} KiB",
                opt(r.rss_bytes_start.map(|b| b as f64 / 1_048_576.0), 1),
                opt(r.rss_bytes_end.map(|b| b as f64 / 1_048_576.0), 1),
                opt(r.anon_rss_bytes_start.map(|b| b as f64 / 1_048_576.0), 1),
                opt(r.anon_rss_bytes_end.map(|b| b as f64 / 1_048_576.0), 1),
                opt(r.rss_bytes_per_participant.map(|b| b as f64 / 1_024.0), 0)
            ),
        ),
        (
            "load tester CPU",
            format!("{} s", opt(rt.loadtester_cpu_seconds, 2)),
        ),
    ];
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        let _ = writeln!(s, "  {k:<w$}  {v}");
    }
    if let Some(ramp) = &r.ramp {
        let _ = writeln!(
            s,
            "ramp: capacity {} participants ({} streams); {}",
            ramp.capacity_participants, ramp.capacity_streams, ramp.stop_reason
        );
        let _ = writeln!(
            s,
            "  {:>5} {:>12} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
            "step",
            "participants",
            "streams",
            "pkt/s",
            "loss%",
            "p99 ms",
            "sfu p99",
            "wait ms",
            "server%",
            "tester%",
            "pkt/cpu-s"
        );
        for st in &ramp.steps {
            let _ = writeln!(
                s,
                "  {:>5} {:>12} {:>8} {:>10.0} {:>8.3} {:>8.2} {:>8} {:>8} {:>9} {:>9} {:>9} {}",
                st.step,
                st.participants,
                st.streams,
                st.rates.forwarded_packets_per_s,
                st.rates.loss_percent,
                st.p99_ms,
                opt(st.sfu_forwarding_delay_p99_ms, 2),
                opt(st.rates.sfu_cpu_wait_ms_per_s, 0),
                opt(st.rates.sfu_cpu_percent, 0),
                opt(
                    st.rates
                        .loadtester_cpu_seconds
                        .map(|c| c * 100.0 / st.rates.window_seconds.max(1e-3)),
                    0
                ),
                opt(st.rates.packets_per_cpu_second, 0),
                if st.within_limits { "" } else { "<- over" }
            );
        }
    }
    let _ = writeln!(s, "  note: {}", r.cpu_note);
    for e in &r.errors {
        let _ = writeln!(s, "  error: {e}");
    }
    s
}

/// How many groups of `group_size` make `share` of the capacity the latest ramp of `scenario`
/// found (at least one group).
pub fn groups_at_share(
    records: &[BenchRecord],
    scenario: &str,
    share: f64,
    group_size: usize,
) -> anyhow::Result<usize> {
    if !(share > 0.0 && share <= 1.0) || group_size == 0 {
        anyhow::bail!("the share must be in (0, 1] and the group size positive");
    }
    let capacity = records
        .iter()
        .rev()
        .filter(|r| r.scenario == scenario && r.mode == "ramp")
        .find_map(|r| r.capacity_participants)
        .with_context(|| format!("no ramp of {scenario} in the results"))?;
    Ok(((capacity as f64 * share / group_size as f64).floor() as usize).max(1))
}

/// One record per scenario, mode, target and size out of repeated runs of each: the run with
/// the median packets per CPU-second (a real run, so its other figures belong together), with
/// the number of runs and their range. On a shared machine one run can be 10-30 % off; the
/// median of runs interleaved across targets is what the ratios are taken from. Groups keep
/// the order of their first run.
pub fn median_runs(records: &[BenchRecord]) -> Vec<BenchRecord> {
    let mut out: Vec<BenchRecord> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if records[..i].iter().any(|e| e.same_measurement(r)) {
            continue;
        }
        let mut group: Vec<&BenchRecord> = records[i..]
            .iter()
            .filter(|e| e.same_measurement(r))
            .collect();
        // Runs without a CPU figure sort first and are never the median of measured ones.
        group.sort_by(|a, b| {
            let key = |r: &BenchRecord| r.packets_per_cpu_second.unwrap_or(f64::NEG_INFINITY);
            key(a).total_cmp(&key(b))
        });
        let measured: Vec<f64> = group
            .iter()
            .filter_map(|r| r.packets_per_cpu_second)
            .collect();
        let unmeasured = group.len() - measured.len();
        let pick = if measured.is_empty() {
            0
        } else {
            unmeasured + (measured.len() - 1) / 2
        };
        let mut median = group[pick].clone();
        median.runs = Some(group.len());
        median.packets_per_cpu_second_range = measured
            .first()
            .zip(measured.last())
            .map(|(lo, hi)| [*lo, *hi]);
        out.push(median);
    }
    out
}

/// The comparison table of a results file: each target against Moien, per scenario.
pub fn comparison(records: &[BenchRecord]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<18} {:<6} {:<6} {:>5} {:>9} {:>10} {:>11} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "scenario",
        "mode",
        "target",
        "part",
        "streams",
        "pkt/s",
        "pkt/cpu-s",
        "Mb/cpu-s",
        "p99 ms",
        "sfu p99",
        "wait ms",
        "loss %",
        "join95",
        "KiB/part",
        "moien/x"
    );
    let repeated = records.iter().any(|r| r.runs.is_some_and(|n| n > 1));
    for r in records {
        let moien = records.iter().find(|m| {
            m.target == "moien"
                && m.scenario == r.scenario
                && m.mode == r.mode
                && (r.mode == "ramp" || m.participants == r.participants)
        });
        let ratio = match (
            moien.and_then(|m| m.packets_per_cpu_second),
            r.packets_per_cpu_second,
        ) {
            (Some(m), Some(x)) if x > 0.0 && r.target != "moien" => format!("{:.2}x", m / x),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "{:<18} {:<6} {:<6} {:>5} {:>9} {:>10.0} {:>11} {:>9} {:>8.2} {:>8} {:>8} {:>8.3} {:>8.0} {:>9} {:>9}",
            r.scenario,
            r.mode,
            r.target,
            r.participants,
            format!("{}/{}", r.streams_received, r.streams),
            r.forwarded_packets_per_s,
            opt(r.packets_per_cpu_second, 0),
            opt(r.mbit_per_cpu_second, 1),
            r.p99_latency_ms,
            opt(r.sfu_forwarding_delay_p99_ms, 2),
            opt(r.sfu_cpu_wait_ms_per_s, 0),
            r.loss_percent,
            r.join_p95_ms,
            opt(r.rss_bytes_per_participant.map(|b| b as f64 / 1_024.0), 0),
            ratio
        );
        if let (true, Some(n @ 2..), Some([lo, hi])) =
            (repeated, r.runs, r.packets_per_cpu_second_range)
        {
            let _ = writeln!(
                s,
                "{:<18} median of {n} runs, pkt/cpu-s {lo:.0}-{hi:.0}",
                ""
            );
        }
    }
    s
}

/// One line of a chart: name, colour, points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart as inline SVG.
pub fn svg_chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 260.0;
    const L: f64 = 64.0;
    const R: f64 = 16.0;
    const T: f64 = 28.0;
    const B: f64 = 40.0;
    let pts = series.iter().flat_map(|s| s.2.iter().copied());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for (x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        x0 = 0.0;
        x1 = 1.0;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { nice_ceiling(y1) };
    let sx = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let sy = |y: f64| H - B - y / y1 * (H - T - B);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img"><title>{t}</title><rect width="100%" height="100%" fill="#fff"/><text x="{L}" y="18" font-size="14" font-weight="bold">{t}</text>"##,
        t = esc(title)
    );
    for i in 0..=4 {
        let y = y1 * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{L}" x2="{x2}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end">{v}</text>"##,
            x2 = W - R,
            py = sy(y),
            tx = L - 6.0,
            ty = sy(y) + 4.0,
            v = short(y)
        );
    }
    for i in 0..=4 {
        let x = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r#"<text x="{px:.1}" y="{py}" font-size="11" text-anchor="middle">{v}</text>"#,
            px = sx(x),
            py = H - B + 16.0,
            v = short(x)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{cx}" y="{by}" font-size="12" text-anchor="middle">{xl}</text><text x="14" y="{cy}" font-size="12" transform="rotate(-90 14 {cy})" text-anchor="middle">{yl}</text>"#,
        cx = (L + W - R) / 2.0,
        by = H - 6.0,
        cy = (T + H - B) / 2.0,
        xl = esc(x_label),
        yl = esc(y_label)
    );
    for (i, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if !path.is_empty() {
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            for p in &path {
                if let Some((x, y)) = p.split_once(',') {
                    let _ = write!(s, r#"<circle cx="{x}" cy="{y}" r="2" fill="{colour}"/>"#);
                }
            }
        }
        let lx = L + 10.0 + i as f64 * 150.0;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{ly}" width="12" height="3" fill="{colour}"/><text x="{tx}" y="{ty}" font-size="11">{n}</text>"#,
            ly = T + 4.0,
            tx = lx + 16.0,
            ty = T + 8.0,
            n = esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The self-contained HTML report.
pub fn html(r: &RunResult) -> String {
    let tl = &r.timeline;
    let xy = |f: &dyn Fn(&TimelinePoint) -> Option<f64>| -> Vec<(f64, f64)> {
        tl.iter().filter_map(|p| Some((p.t_s, f(p)?))).collect()
    };
    let mut charts = vec![
        svg_chart(
            "One-way latency percentiles (per second)",
            "seconds",
            "ms",
            &[
                ("p50", "#1f77b4", xy(&|p| Some(p.p50_ms))),
                ("p95", "#ff7f0e", xy(&|p| Some(p.p95_ms))),
                ("p99", "#d62728", xy(&|p| Some(p.p99_ms))),
            ],
        ),
        svg_chart(
            "Loss and server CPU over time",
            "seconds",
            "% (CPU: 100 = one core)",
            &[
                ("loss %", "#d62728", xy(&|p| Some(p.loss_percent))),
                ("server CPU %", "#2ca02c", xy(&|p| p.sfu_cpu_percent)),
                (
                    "server's waits for a CPU %",
                    "#8c564b",
                    xy(&|p| p.sfu_cpu_wait_percent),
                ),
                (
                    "load tester CPU %",
                    "#9467bd",
                    xy(&|p| p.loadtester_cpu_percent),
                ),
            ],
        ),
        svg_chart(
            "Forwarded packets per second (received by all subscribers)",
            "seconds",
            "packets/s",
            &[
                ("packets/s", "#1f77b4", xy(&|p| Some(p.packets_per_s))),
                (
                    "participants x 10",
                    "#7f7f7f",
                    xy(&|p| Some(p.participants as f64 * 10.0)),
                ),
            ],
        ),
    ];
    if let Some(ramp) = &r.ramp {
        let pts = |f: &dyn Fn(&RampStep) -> Option<f64>| -> Vec<(f64, f64)> {
            ramp.steps
                .iter()
                .filter_map(|s| Some((s.participants as f64, f(s)?)))
                .collect()
        };
        charts.push(svg_chart(
            "Capacity curve: forwarded packets/s and server CPU by participants",
            "participants",
            "packets/s (CPU % x 100)",
            &[
                (
                    "packets/s",
                    "#1f77b4",
                    pts(&|s| Some(s.rates.forwarded_packets_per_s)),
                ),
                (
                    "server CPU % x 100",
                    "#2ca02c",
                    pts(&|s| s.rates.sfu_cpu_percent.map(|c| c * 100.0)),
                ),
            ],
        ));
        charts.push(svg_chart(
            "Capacity curve: p99 latency and loss by participants",
            "participants",
            "ms / %",
            &[
                ("p99 ms", "#d62728", pts(&|s| Some(s.p99_ms))),
                ("loss %", "#ff7f0e", pts(&|s| Some(s.rates.loss_percent))),
            ],
        ));
    }
    let table = esc(&text_table(r));
    let params = esc(&serde_json::to_string_pretty(&r.params).unwrap_or_default());
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>moien-loadtest: {s} on {t}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:760px}}pre{{background:#f6f6f6;padding:12px;overflow-x:auto;font-size:12px}}svg{{display:block;margin:16px 0;border:1px solid #eee}}</style></head><body>
<h1>{s} on {t}</h1>
<p>{p} participants, {st} forwarded streams. Headline: <b>{ppc} forwarded packets per server CPU-second</b>.</p>
<h2>Summary</h2><pre>{table}</pre>
<h2>Charts</h2>{charts}
<h2>Parameters</h2><pre>{params}</pre>
<p>Machine: {cores} cores, {cpu}, kernel {kernel}. One-way latency is measured from the sender's write to the receiver's handling of the packet on the same clock; it includes both ends' network stacks.</p>
</body></html>
"#,
        s = esc(&r.scenario),
        t = esc(&r.target),
        p = r.participants,
        st = r.streams,
        ppc = opt(r.rates.packets_per_cpu_second, 0),
        charts = charts.join("\n"),
        cores = r.machine.cores,
        cpu = esc(&r.machine.cpu),
        kernel = esc(&r.machine.kernel),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, ScenarioKind};

    fn sample() -> RunResult {
        RunResult {
            scenario: "audio-conference".into(),
            target: "moien".into(),
            params: Scenario::defaults(ScenarioKind::AudioConference),
            participants: 8,
            receivers: 8,
            receivers_with_media: 8,
            streams: 56,
            streams_received: 56,
            window_seconds: 10.0,
            rates: RateStats {
                window_seconds: 10.0,
                forwarded_packets: 10_000,
                forwarded_packets_per_s: 1_000.0,
                forwarded_mbit_per_s: 1.0,
                sfu_cpu_seconds: Some(0.5),
                sfu_cpu_percent: Some(5.0),
                packets_per_cpu_second: Some(20_000.0),
                mbit_per_cpu_second: Some(20.0),
                sfu_cpu_wait_ms_per_s: Some(12.4),
                ..Default::default()
            },
            latency: LatencyStats {
                samples: 10,
                p99_ms: 1.5,
                ..Default::default()
            },
            sfu_forwarding_delay: Some(ForwardingDelay {
                copies: 9_000,
                p50_ms: 0.1,
                p90_ms: 0.6,
                p99_ms: 1.7,
                within_2ms_percent: 99.4,
            }),
            jitter_ms: 0.3,
            join: JoinStats::from_samples(&[100.0, 200.0]),
            subscriber_kbps: Spread::of(&[10.0, 30.0]),
            rss_bytes_start: Some(10 << 20),
            rss_bytes_end: Some(12 << 20),
            anon_rss_bytes_start: Some(6 << 20),
            anon_rss_bytes_end: Some(8 << 20),
            rss_bytes_per_participant: Some(262_144),
            cpu_note: "n".into(),
            sender_pacing: false,
            load_tester_nice: 0,
            interrupted: false,
            errors: vec![],
            ramp: None,
            timeline: vec![TimelinePoint {
                t_s: 1.0,
                phase: "measure".into(),
                participants: 8,
                packets_per_s: 1_000.0,
                mbit_per_s: 1.0,
                loss_percent: 0.0,
                p50_ms: 0.5,
                p95_ms: 1.0,
                p99_ms: 1.5,
                sfu_cpu_percent: Some(5.0),
                sfu_cpu_wait_percent: Some(1.2),
                sfu_rss_bytes: Some(12 << 20),
                loadtester_cpu_percent: Some(20.0),
            }],
            machine: Machine::detect(),
        }
    }

    #[test]
    fn bench_record_has_the_required_fields() {
        let v = serde_json::to_value(sample().bench_record()).unwrap();
        for k in [
            "scenario",
            "target",
            "participants",
            "forwarded_packets_per_s",
            "sfu_cpu_seconds",
            "packets_per_cpu_second",
            "mbit_per_cpu_second",
            "p99_latency_ms",
            "loss_percent",
            "join_p95_ms",
            "rss_bytes_per_participant",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["packets_per_cpu_second"], 20_000.0);
        assert_eq!(v["join_p95_ms"], 200.0);
    }

    #[test]
    fn html_is_self_contained() {
        let h = html(&sample());
        assert!(h.starts_with("<!doctype html>"));
        assert!(h.contains("<svg") && h.contains("polyline"));
        assert!(h.contains("server's waits for a CPU %"));
        assert!(
            !h.contains("http://") || !h.contains("src=\"http"),
            "no remote assets"
        );
        assert!(!h.contains("<script src"));
        assert!(!h.contains("https://"));
    }

    #[test]
    fn table_and_comparison() {
        let r = sample();
        let t = text_table(&r);
        assert!(t.contains("packets per server CPU-second"));
        assert!(t.contains("20000"));
        assert!(
            t.contains("0.10 / 0.60 / 1.70 ms (99.40% within 2 ms, 9000 copies)"),
            "{t}"
        );
        assert_eq!(r.bench_record().sfu_forwarding_delay_p99_ms, Some(1.7));
        assert!(
            t.contains("12.4 ms a second (summed over its threads)"),
            "{t}"
        );
        assert_eq!(r.bench_record().sfu_cpu_wait_ms_per_s, Some(12.4));
        let mut j = r.bench_record();
        j.target = "janus".into();
        j.packets_per_cpu_second = Some(8_000.0);
        j.sfu_forwarding_delay_p99_ms = None;
        let c = comparison(&[r.bench_record(), j]);
        assert!(c.contains("2.50x"), "{c}");
        assert!(c.contains("sfu p99") && c.contains("1.70"), "{c}");
        assert!(c.contains("wait ms") && c.contains("      12 "), "{c}");
    }

    #[test]
    fn repeated_runs_give_the_median_run_and_ratios_of_medians() {
        let run = |target: &str, ppcs: Option<f64>, p99: f64| {
            let mut r = sample().bench_record();
            r.target = target.into();
            r.packets_per_cpu_second = ppcs;
            r.p99_latency_ms = p99;
            r
        };
        let mut bigger = run("moien", Some(1.0), 9.0);
        bigger.participants += 1;
        let runs = [
            run("moien", Some(30_000.0), 1.0),
            run("janus", Some(10_000.0), 2.0),
            run("moien", Some(20_000.0), 3.0),
            run("janus", Some(16_000.0), 4.0),
            run("moien", Some(26_000.0), 5.0),
            run("janus", None, 6.0),
            bigger.clone(),
        ];
        let m = median_runs(&runs);
        assert_eq!(m.len(), 3, "moien, janus, and moien at another size");
        // The median run is a real run: its latency comes with its CPU figure.
        assert_eq!(m[0].packets_per_cpu_second, Some(26_000.0));
        assert_eq!(m[0].p99_latency_ms, 5.0);
        assert_eq!(m[0].runs, Some(3));
        assert_eq!(
            m[0].packets_per_cpu_second_range,
            Some([20_000.0, 30_000.0])
        );
        // A run without a CPU figure counts as a run but is never the median of measured ones.
        assert_eq!(m[1].packets_per_cpu_second, Some(10_000.0));
        assert_eq!(m[1].runs, Some(3));
        assert_eq!(
            m[1].packets_per_cpu_second_range,
            Some([10_000.0, 16_000.0])
        );
        assert_eq!(m[2].participants, bigger.participants);
        assert_eq!(m[2].runs, Some(1));
        let c = comparison(&m);
        assert!(c.contains("2.60x"), "26k / 10k: {c}");
        assert!(c.contains("median of 3 runs, pkt/cpu-s 20000-30000"), "{c}");
        assert!(!c.contains("median of 1 runs"), "{c}");
        // The file format carries the new fields and reads back.
        let json = serde_json::to_string(&m).unwrap();
        let back: Vec<BenchRecord> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let single = serde_json::to_string(&runs[0]).unwrap();
        assert!(
            !single.contains("\"runs\""),
            "absent when not a median: {single}"
        );
    }

    #[test]
    fn groups_at_a_share_of_the_ramps_capacity() {
        let mut ramp = sample().bench_record();
        ramp.mode = "ramp".into();
        ramp.capacity_participants = Some(160);
        let fixed = sample().bench_record();
        let all = [ramp, fixed];
        // 70 % of 160 is 112: 14 rooms of 8.
        assert_eq!(
            groups_at_share(&all, "audio-conference", 0.7, 8).unwrap(),
            14
        );
        assert_eq!(
            groups_at_share(&all, "audio-conference", 0.01, 8).unwrap(),
            1
        );
        let e = groups_at_share(&all, "livestream", 0.7, 1).unwrap_err();
        assert!(e.to_string().contains("no ramp of livestream"), "{e}");
        assert!(groups_at_share(&all, "audio-conference", 1.5, 8).is_err());
        assert!(groups_at_share(&all, "audio-conference", 0.7, 0).is_err());
    }

    #[test]
    fn results_file_replaces_same_run() {
        let dir = std::env::temp_dir().join(format!("moien-lt-{}", std::process::id()));
        let path = dir.join("results.json");
        let _ = std::fs::remove_file(&path);
        let r = sample().bench_record();
        append_record(&path, r.clone()).unwrap();
        append_record(&path, r.clone()).unwrap();
        let mut other = r.clone();
        other.target = "bare".into();
        append_record(&path, other).unwrap();
        let mut bigger = r.clone();
        bigger.participants = 112;
        append_record(&path, bigger).unwrap();
        let all: Vec<BenchRecord> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            all.len(),
            3,
            "a fixed run of another size is kept beside the first"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn chart_scales_and_escapes() {
        let s = svg_chart(
            "a<b",
            "x",
            "y",
            &[("s", "#000", vec![(0.0, 1.0), (2.0, 3.0)])],
        );
        assert!(s.contains("a&lt;b"));
        assert!(s.contains("<polyline"));
        let empty = svg_chart("e", "x", "y", &[("s", "#000", vec![])]);
        assert!(empty.ends_with("</svg>"));
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(0.18), 0.2);
    }
}
