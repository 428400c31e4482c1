//! A tiny scenario through a real Moien node started in this process: media is forwarded with no
//! loss, latency and join times are measured, and the JSON report has the fields scripts read.

use std::time::Duration;

use moien::{Config, Node};
use moien_loadtest::runner::{self, RunOptions, TargetSpec};
use moien_loadtest::scenario::{Scenario, ScenarioKind};

const SECRET: &str = "loadtest-e2e-secret";

async fn node() -> Node {
    let mut config = Config::default();
    config.auth.secret = SECRET.into();
    config.signaling.listen = "127.0.0.1:0".parse().expect("address");
    config.media.port = 0;
    config.media.workers = 1;
    Node::start(config).await.expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_video_conference_is_forwarded_without_loss() {
    let node = node().await;
    let mut scenario = Scenario::defaults(ScenarioKind::VideoConference);
    scenario.rooms = 1;
    scenario.room_size = 3;
    scenario.video_layers = vec!["180p".parse().expect("layer")];
    let opts = RunOptions {
        scenario,
        target: TargetSpec::MoienExternal {
            http: format!("http://{}", node.http),
            secret: SECRET.into(),
            pid: Some(std::process::id()),
        },
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(3),
        ramp: None,
        sender_pacing: false,
        progress: false,
    };
    let result = runner::run(opts).await.expect("run completes");
    node.shutdown().await;

    assert!(result.errors.is_empty(), "{:?}", result.errors);
    assert_eq!(result.participants, 3);
    assert_eq!(
        result.streams,
        3 * 2 * 2,
        "each of 3 receives 2 tracks from 2 others"
    );
    assert_eq!(result.receivers_with_media, 3);
    assert_eq!(
        result.streams_received, result.streams,
        "every stream delivered"
    );
    let r = &result.rates;
    // 180p at 15 fps is 2 packets a frame: 30 pkt/s per video stream alone.
    assert!(
        r.forwarded_packets_per_s > 6.0 * 30.0 * 0.8,
        "forwarded {} pkt/s",
        r.forwarded_packets_per_s
    );
    assert_eq!(r.lost_packets, 0, "loss on loopback: {r:?}");
    assert!(r.expected_packets > 0);
    assert!(result.latency.samples > 100, "{:?}", result.latency);
    assert!(result.latency.p50_ms > 0.0 && result.latency.p50_ms < 1_000.0);
    assert!(result.join.p95_ms > 0.0 && result.join.p95_ms < 10_000.0);
    assert!(r.sfu_cpu_seconds.is_some_and(|c| c > 0.0));
    assert!(result.rss_bytes_end.is_some());

    let json = serde_json::to_value(result.bench_record()).expect("serializes");
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
        assert!(json.get(key).is_some(), "results record lacks {key}");
    }
    assert_eq!(json["scenario"], "video-conference");
    assert_eq!(json["target"], "moien");
    assert_eq!(json["loss_percent"], 0.0);

    let dir = std::env::temp_dir().join(format!("moien-loadtest-e2e-{}", std::process::id()));
    result.write_json(&dir.join("r.json")).expect("json");
    result.write_html(&dir.join("r.html")).expect("html");
    let full: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("r.json")).expect("read"))
            .expect("valid JSON");
    assert!(full["timeline"].as_array().is_some_and(|t| !t.is_empty()));
    let html = std::fs::read_to_string(dir.join("r.html")).expect("read");
    assert!(html.contains("<svg"));
    let _ = std::fs::remove_dir_all(dir);
}
