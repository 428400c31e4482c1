//! Smoke runs of every scenario (and a tiny ramp) through a real Moien node started in this
//! process: every forwarded stream reaches its receiver, loss, latency and join times are
//! measured, and the JSON and HTML reports are written as the binary writes them. The machine
//! has few cores, so the runs take turns (one lock): a few seconds each, small sizes.

use std::path::PathBuf;
use std::time::Duration;

use moien_loadtest::report::RunResult;
use moien_loadtest::runner::{self, RampOptions, RunOptions, TargetSpec};
use moien_loadtest::scenario::{Scenario, ScenarioKind, ViewerProtocol};
use serde_json::Value;

mod common;
use common::{SECRET, node};

const WARMUP: Duration = Duration::from_secs(2);
const DURATION: Duration = Duration::from_secs(3);

/// One run at a time: the node and the simulated participants share this process's cores.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A folder under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "moien-loadtest-e2e-{name}-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn small(kind: ScenarioKind) -> Scenario {
    let mut s = Scenario::defaults(kind);
    s.video_layers = vec!["180p".parse().expect("layer")];
    s
}

/// Runs `scenario` against a fresh in-process node, writes the reports the way the binary does
/// into a temp dir and checks they are there; returns the result and the JSON report as read
/// back from disk.
async fn smoke(scenario: Scenario, ramp: Option<RampOptions>) -> (RunResult, Value) {
    let _turn = TURN.lock().await;
    let node = node().await;
    let opts = RunOptions {
        scenario,
        target: TargetSpec::MoienExternal {
            http: format!("http://{}", node.http),
            secret: SECRET.into(),
            pid: Some(std::process::id()),
            metrics: Some(format!("http://{}/metrics", node.metrics_addr)),
        },
        warmup: WARMUP,
        duration: DURATION,
        ramp,
        sender_pacing: false,
        nice: 0,
        progress: false,
        announce_phases: false,
    };
    let result = runner::run(opts).await;
    node.shutdown().await;
    let result = result.expect("run completes");

    let dir = TempDir::new(&result.file_stem());
    let (json_path, html_path) = result.write_reports(&dir.0).expect("reports written");
    assert_eq!(
        json_path.file_name().and_then(|n| n.to_str()),
        Some(format!("{}.json", result.file_stem()).as_str())
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).expect("read"))
        .expect("the JSON report parses");
    let html = std::fs::read_to_string(&html_path).expect("read");
    assert!(html.contains("<svg"), "the HTML report has its charts");
    assert!(
        !html.contains("<script") && !html.contains("src=\"http"),
        "the HTML report opens from disk with no script and no network"
    );
    (result, json)
}

/// What a smoke run must have delivered.
struct Expect {
    participants: usize,
    receivers: usize,
    /// Forwarded streams (publisher track → receiver).
    streams: usize,
    /// Lower bound of the forwarded packet rate, packets/s.
    min_packets_per_s: f64,
}

fn assert_sane(r: &RunResult, json: &Value, e: &Expect) {
    let name = format!("{} on {}", r.scenario, r.target);
    assert!(r.errors.is_empty(), "{name}: {:?}", r.errors);
    assert!(!r.interrupted, "{name}");
    assert_eq!(r.participants, e.participants, "{name}: participants");
    assert_eq!(r.receivers, e.receivers, "{name}: receivers");
    assert_eq!(
        r.receivers_with_media, e.receivers,
        "{name}: every receiver got media"
    );
    assert_eq!(r.streams, e.streams, "{name}: forwarded streams");
    assert_eq!(
        r.streams_received, r.streams,
        "{name}: every forwarded stream delivered"
    );

    let rates = &r.rates;
    assert!(
        rates.forwarded_packets_per_s >= e.min_packets_per_s,
        "{name}: forwarded {:.0} pkt/s, expected at least {}",
        rates.forwarded_packets_per_s,
        e.min_packets_per_s
    );
    assert!(rates.forwarded_mbit_per_s > 0.0, "{name}: {rates:?}");
    // Loss is computed from sequence numbers over what was expected; on loopback it stays
    // (far) under the ramp's own 1% limit.
    assert!(rates.expected_packets > 0, "{name}: {rates:?}");
    assert!(rates.lost_packets <= rates.expected_packets);
    let computed = rates.lost_packets as f64 * 100.0 / rates.expected_packets as f64;
    assert!(
        (rates.loss_percent - computed).abs() < 1e-9,
        "{name}: loss {}% is lost/expected ({computed}%)",
        rates.loss_percent
    );
    assert!(
        rates.loss_percent < 1.0,
        "{name}: loss on loopback: {rates:?}"
    );
    assert!(
        rates.sfu_cpu_seconds.is_some_and(|c| c > 0.0),
        "{name}: server CPU measured: {rates:?}"
    );
    assert!(rates.packets_per_cpu_second.is_some_and(|p| p > 0.0));
    if std::path::Path::new("/proc/self/schedstat").exists() {
        assert!(
            rates.sfu_cpu_wait_ms_per_s.is_some_and(|w| w >= 0.0),
            "{name}: the server's waits for a CPU measured: {rates:?}"
        );
    }
    assert!(r.rss_bytes_end.is_some(), "{name}: server memory measured");
    assert!(
        r.anon_rss_bytes_end
            .zip(r.rss_bytes_end)
            .is_some_and(|(anon, all)| anon > 0 && anon <= all),
        "{name}: the anonymous part of the server's memory measured"
    );
    assert!(r.rss_bytes_per_participant.is_some(), "{name}");

    // Video carries its send time; audio's is found by payload (the Opus bytes are untouched),
    // so an audio-only run measures latency too.
    let l = &r.latency;
    assert!(l.samples > 50, "{name}: latency samples {l:?}");
    assert!(
        l.p50_ms > 0.0 && l.p50_ms < 1_000.0 && l.p99_ms >= l.p50_ms && l.max_ms >= l.p99_ms,
        "{name}: {l:?}"
    );
    assert_eq!(
        r.join.count, e.receivers,
        "{name}: a join time per receiver"
    );
    assert!(
        r.join.p50_ms > 0.0 && r.join.p95_ms >= r.join.p50_ms && r.join.p95_ms < 10_000.0,
        "{name}: {:?}",
        r.join
    );
    assert!(
        r.subscriber_kbps.min > 0.0,
        "{name}: {:?}",
        r.subscriber_kbps
    );
    assert!(!r.timeline.is_empty(), "{name}: a timeline");

    // The server's own forwarding delay, read from its metrics at the window's edges: about
    // one timed copy per packet the receivers got in the window (the edges are read a moment
    // apart from the receivers' counts, and the worker publishes its counts every 250 ms).
    if let Some(ramp) = &r.ramp {
        assert!(
            ramp.steps
                .iter()
                .all(|s| s.sfu_forwarding_delay_p99_ms.is_some_and(|p| p > 0.0)),
            "{name}: the server's delay per ramp step: {:?}",
            ramp.steps
        );
    } else {
        let d = r
            .sfu_forwarding_delay
            .unwrap_or_else(|| panic!("{name}: the server's forwarding delay was read"));
        let ratio = d.copies as f64 / rates.forwarded_packets.max(1) as f64;
        assert!(
            (0.3..2.0).contains(&ratio),
            "{name}: {} copies timed by the server for {} packets received",
            d.copies,
            rates.forwarded_packets
        );
        assert!(
            0.0 < d.p50_ms && d.p50_ms <= d.p90_ms && d.p90_ms <= d.p99_ms && d.p99_ms < 100.0,
            "{name}: {d:?}"
        );
        // serde_json's default float parsing may be one unit in the last place off.
        let in_json = json["sfu_forwarding_delay"]["p99_ms"].as_f64();
        assert!(
            in_json.is_some_and(|p| (p - d.p99_ms).abs() < 1e-9),
            "{name}: the JSON report carries it ({in_json:?})"
        );
    }

    // The record scripts and dashboards read.
    let record = serde_json::to_value(r.bench_record()).expect("serializes");
    for key in [
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
        assert!(
            record.get(key).is_some(),
            "{name}: results record lacks {key}"
        );
    }
    assert_eq!(record["scenario"], r.scenario.as_str());
    assert_eq!(record["target"], "moien");
    assert_eq!(record["participants"], e.participants);

    // The JSON report on disk holds the same figures.
    assert_eq!(json["scenario"], r.scenario.as_str());
    assert_eq!(json["interrupted"], false);
    assert_eq!(json["streams"], e.streams);
    assert_eq!(json["streams_received"], e.streams);
    assert_eq!(json["receivers_with_media"], e.receivers);
    assert!(json["rates"]["loss_percent"].is_number(), "{name}");
    assert!(json["join"]["p95_ms"].is_number(), "{name}");
    assert!(json["timeline"].as_array().is_some_and(|t| !t.is_empty()));
}

/// A fixed run's window is the requested measurement duration.
fn assert_window(r: &RunResult) {
    let w = r.window_seconds;
    let d = DURATION.as_secs_f64();
    assert!(
        w > d - 0.5 && w < d + 1.5,
        "window of {w} s for a {d} s duration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_conference_smoke() {
    let mut s = small(ScenarioKind::AudioConference);
    s.rooms = 1;
    s.room_size = 3;
    let (r, json) = smoke(s, None).await;
    assert_sane(
        &r,
        &json,
        &Expect {
            participants: 3,
            receivers: 3,
            streams: 3 * 2,
            // Even a silent participant sends comfort noise (one packet per ~400 ms).
            min_packets_per_s: 6.0 * 2.0,
        },
    );
    assert_window(&r);
    assert_eq!(r.rates.video_mbit_per_s, 0.0, "audio only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_conference_smoke() {
    let mut s = small(ScenarioKind::VideoConference);
    s.rooms = 1;
    s.room_size = 3;
    let (r, json) = smoke(s, None).await;
    assert_sane(
        &r,
        &json,
        &Expect {
            participants: 3,
            receivers: 3,
            // Each of 3 receives 2 tracks from 2 others.
            streams: 3 * 2 * 2,
            // 180p at 15 fps is 2 packets a frame: 30 pkt/s per video stream alone.
            min_packets_per_s: 6.0 * 30.0 * 0.8,
        },
    );
    assert_window(&r);
    assert!(r.rates.video_mbit_per_s > 0.0);
    assert_eq!(json["target"], "moien");
    assert_eq!(json["params"]["room_size"], 3);
}

async fn livestream(protocol: ViewerProtocol) {
    let mut s = small(ScenarioKind::Livestream);
    s.viewers = 3;
    s.viewer_protocol = protocol;
    let (r, json) = smoke(s, None).await;
    assert_sane(
        &r,
        &json,
        &Expect {
            participants: 1 + 3,
            receivers: 3,
            // Every viewer gets the broadcaster's audio and video.
            streams: 3 * 2,
            min_packets_per_s: 3.0 * 30.0 * 0.8,
        },
    );
    assert_window(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livestream_smoke_over_websocket() {
    livestream(ViewerProtocol::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livestream_smoke_over_whep() {
    livestream(ViewerProtocol::Whep).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_rooms_smoke() {
    let mut s = small(ScenarioKind::ManySmallRooms);
    s.rooms = 2;
    s.three_party_share = 0.5;
    let (r, json) = smoke(s, None).await;
    assert_sane(
        &r,
        &json,
        &Expect {
            // A 1:1 call and a 3-party call.
            participants: 2 + 3,
            receivers: 5,
            // 1:1: each of 2 gets 2 tracks of 1 other; 3-party: each of 3 gets 2 tracks of 2.
            streams: 2 * 2 + 3 * 2 * 2,
            min_packets_per_s: 8.0 * 30.0 * 0.8,
        },
    );
    assert_window(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_smoke_stops_at_max_participants() {
    let mut s = small(ScenarioKind::VideoConference);
    s.room_size = 2;
    s.ramp_step = 1;
    // Limits a smoke run on a busy machine does not cross: this checks the steps, not capacity.
    let ramp = RampOptions {
        step_seconds: 2.0,
        settle_seconds: 1.0,
        max_participants: 4,
        max_loss_percent: 5.0,
        max_p99_ms: 5_000.0,
        stop_when_saturated: false,
    };
    let (r, json) = smoke(s, Some(ramp)).await;
    let ramp = r.ramp.as_ref().expect("a ramp result");
    assert_eq!(ramp.stop_reason, "max participants reached", "{ramp:?}");
    assert_eq!(
        ramp.steps.len(),
        2,
        "a room of 2 per step up to 4: {ramp:?}"
    );
    for (i, step) in ramp.steps.iter().enumerate() {
        assert_eq!(step.step, i);
        assert_eq!(step.participants, 2 * (i + 1));
        assert_eq!(step.streams, 4 * (i + 1), "2 receivers x 2 tracks per room");
        assert!(step.within_limits, "{step:?}");
        assert!(step.rates.forwarded_packets_per_s > 0.0, "{step:?}");
        assert!(step.p99_ms > 0.0, "video carries latency: {step:?}");
        assert!(
            step.rates.window_seconds > 1.5 && step.rates.window_seconds < 3.5,
            "{step:?}"
        );
    }
    assert_eq!(ramp.capacity_participants, 4);
    assert_eq!(ramp.capacity_streams, 8);
    // The headline figures are the last step's.
    assert_sane(
        &r,
        &json,
        &Expect {
            participants: 4,
            receivers: 4,
            streams: 8,
            min_packets_per_s: 4.0 * 30.0 * 0.8,
        },
    );
    let record = r.bench_record();
    assert_eq!(record.mode, "ramp");
    assert_eq!(record.capacity_participants, Some(4));
    assert_eq!(json["ramp"]["capacity_participants"], 4);
    assert_eq!(json["ramp"]["steps"].as_array().map(Vec::len), Some(2));
    assert!(r.file_stem().ends_with("-ramp"));
}
