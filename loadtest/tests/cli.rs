//! The `moien-loadtest` binary: absurd parameters are refused with a message naming the
//! parameter (before anything starts), and Ctrl-C stops a run cleanly with a partial report. The
//! binary runs against a Moien node started in this test process (`--url`), so no other binary
//! has to be built.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

mod common;
use common::{SECRET, node};
use moien_loadtest::priority::of_thread;

const BIN: &str = env!("CARGO_BIN_EXE_moien-loadtest");

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "moien-loadtest-cli-{name}-{}-{nanos:x}",
        std::process::id()
    ))
}

#[tokio::test]
async fn absurd_parameters_are_refused_with_a_message() {
    // (arguments after `run`, what the message must name)
    let cases: &[(&[&str], &str)] = &[
        (&["video-conference", "--room-size", "1000"], "--room-size"),
        (&["video-conference", "--room-size", "1"], "--room-size"),
        (&["audio-conference", "--talk-share", "0"], "--talk-share"),
        (&["audio-conference", "--talk-share", "1.5"], "--talk-share"),
        (
            &["video-conference", "--video-layers", "4k"],
            "--video-layers",
        ),
        (
            &["video-conference", "--video-layers", "640x360@500:500"],
            "--video-layers 640x360@500:500: fps must be",
        ),
        (&["audio-conference", "--rooms", "1000000000000"], "--rooms"),
        (
            &["audio-conference", "--rooms", "300", "--room-size", "10"],
            "3000 participants",
        ),
        (&["livestream", "--viewers", "1000000"], "--viewers"),
        (&["livestream", "--viewers", "0"], "--viewers"),
        (&["video-conference", "--duration", "0s"], "--duration"),
        (&["audio-conference", "--nice=20"], "--nice"),
        (&["audio-conference", "--nice=-5"], "--nice"),
        (
            &["video-conference", "--ramp", "--ramp-step", "1000000000"],
            "--ramp-step",
        ),
        (
            &["video-conference", "--ramp", "--max-p99-ms", "NaN"],
            "--max-p99-ms",
        ),
        (
            &[
                "livestream",
                "--target",
                "bare",
                "--viewer-protocol",
                "whep",
            ],
            "--viewer-protocol",
        ),
        (&["video-conference", "--target", "nowhere"], "--target"),
        (&["dinner-party"], "dinner-party"),
    ];
    let out = temp_dir("refused");
    for (args, names) in cases {
        let child = Command::new(BIN)
            .arg("run")
            .args(*args)
            // Were a case accepted, it must not start a server or wait on one for long.
            .args(["--url", "http://127.0.0.1:9", "--quiet", "--out"])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let o = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{args:?} was not refused within 10 s"))
            .expect("waits");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{args:?} was accepted: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(
            stderr.contains(names),
            "{args:?}: the message does not name {names:?}: {stderr}"
        );
    }
    assert!(!out.exists(), "a refused run writes no report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_run_with_a_partial_report() {
    let node = node().await;
    let out = temp_dir("ctrl-c");

    let mut child = Command::new(BIN)
        .args([
            "run",
            "video-conference",
            "--rooms",
            "1",
            "--room-size",
            "2",
            "--video-layers",
            "180p",
            "--warmup",
            "1s",
            // Far longer than the test: only Ctrl-C ends this run.
            "--duration",
            "10m",
            "--quiet",
        ])
        .arg("--url")
        .arg(format!("http://{}", node.http))
        .args(["--secret", SECRET, "--sfu-pid"])
        .arg(std::process::id().to_string())
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let pid = child.id().expect("running") as libc::pid_t;
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();

    // The binary announces its phases on stderr; Ctrl-C once it measures.
    let mut seen = Vec::new();
    let measuring = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.expect("stderr") {
            let found = line == "moien-loadtest: phase measuring";
            seen.push(line);
            if found {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(measuring, Ok(true)),
        "no `phase measuring` line: {seen:?}"
    );
    for phase in ["starting", "joining", "warmup"] {
        assert!(
            seen.contains(&format!("moien-loadtest: phase {phase}")),
            "phase {phase} not announced: {seen:?}"
        );
    }
    // While it runs, every thread of the load tester yields to the server (default --nice 10).
    let own = of_thread(std::process::id()).expect("own niceness");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the child's threads");
    // A thread that ended since the listing (ESRCH) is skipped.
    let nices: Vec<i32> = tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|tid| of_thread(tid).ok())
        .collect();
    assert!(nices.len() > 1, "{nices:?}");
    assert!(nices.iter().all(|&n| n == own.max(10)), "{nices:?}");

    // SAFETY: sends a signal to the child this test started (and still holds).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0, "kill -INT");

    let rest = async {
        let mut lines = Vec::new();
        while let Ok(Some(l)) = stderr.next_line().await {
            lines.push(l);
        }
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        (lines, text)
    };
    let ((lines, table), status) = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::join!(rest, child.wait())
    })
    .await
    .expect("the run stops within 15 s of Ctrl-C");
    node.shutdown().await;
    let status = status.expect("exit status");
    // Like any program that handled Ctrl-C, it ends by SIGINT once the report is written (so
    // a calling shell script stops too).
    assert_eq!(
        status.signal(),
        Some(libc::SIGINT),
        "{status:?}; stderr: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "moien-loadtest: phase stopping"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("interrupted")), "{lines:?}");
    assert!(table.contains("video-conference on moien"), "{table}");

    let json_path = out.join("video-conference-moien.json");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(&json_path)
            .unwrap_or_else(|e| panic!("{}: {e}; stdout: {table}", json_path.display())),
    )
    .expect("the partial report parses");
    let html = out.join("video-conference-moien.html");
    let html_ok = std::fs::read_to_string(&html).is_ok_and(|h| h.contains("<svg"));
    let _ = std::fs::remove_dir_all(&out);

    assert_eq!(json["interrupted"], true);
    assert_eq!(json["scenario"], "video-conference");
    assert_eq!(json["participants"], 2);
    assert_eq!(
        json["receivers_with_media"], 2,
        "media flowed before the interruption"
    );
    assert_eq!(json["streams_received"], json["streams"]);
    assert!(json["window_seconds"].as_f64().is_some_and(|w| w > 0.0));
    assert!(json["errors"].as_array().is_some_and(Vec::is_empty));
    assert!(json["timeline"].as_array().is_some_and(|t| !t.is_empty()));
    assert!(html_ok, "the HTML report is written too");
}

#[tokio::test]
async fn capacity_turns_a_ramp_into_a_run_size() {
    let dir = temp_dir("capacity");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("results.json");
    let record = |mode: &str, participants: u64, capacity: Option<u64>| {
        serde_json::json!({
            "scenario": "audio-conference", "target": "moien", "mode": mode,
            "participants": participants, "streams": 7, "streams_received": 7,
            "forwarded_packets_per_s": 1.0, "forwarded_mbit_per_s": 1.0,
            "sfu_cpu_seconds": 1.0, "sfu_cpu_percent": 1.0, "packets_per_cpu_second": 1.0,
            "mbit_per_cpu_second": 1.0, "video_mbit_per_cpu_second": 0.0,
            "p50_latency_ms": 0.2, "p99_latency_ms": 1.0, "loss_percent": 0.0, "jitter_ms": 0.1,
            "join_p95_ms": 50.0, "rss_bytes_per_participant": 1024,
            "capacity_participants": capacity, "interrupted": false
        })
    };
    let all = serde_json::json!([record("fixed", 32, None), record("ramp", 160, Some(160))]);
    std::fs::write(&file, all.to_string()).expect("write results");
    let run = |scenario: &'static str| {
        let file = file.clone();
        async move {
            Command::new(BIN)
                .args(["capacity", "--scenario", scenario, "--share", "0.7"])
                .args(["--group-size", "8"])
                .arg(&file)
                .output()
                .await
                .expect("run moien-loadtest capacity")
        }
    };
    let out = run("audio-conference").await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "14",
        "70 % of 160 in rooms of 8"
    );
    let out = run("livestream").await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no ramp of livestream"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn median_reduces_repeated_rounds_to_one_record_per_target() {
    let dir = temp_dir("median");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let record = |target: &str, packets_per_cpu_second: f64| {
        serde_json::json!({
            "scenario": "audio-conference", "target": target, "mode": "fixed",
            "participants": 32, "streams": 224, "streams_received": 224,
            "forwarded_packets_per_s": 7000.0, "forwarded_mbit_per_s": 5.0,
            "sfu_cpu_seconds": 1.0, "sfu_cpu_percent": 10.0,
            "packets_per_cpu_second": packets_per_cpu_second,
            "mbit_per_cpu_second": 1.0, "video_mbit_per_cpu_second": 0.0,
            "p50_latency_ms": 0.2, "p99_latency_ms": 1.0, "loss_percent": 0.0, "jitter_ms": 0.1,
            "join_p95_ms": 50.0, "rss_bytes_per_participant": 1024,
            "capacity_participants": null, "interrupted": false
        })
    };
    let rounds = [
        [record("moien", 80_000.0), record("janus", 40_000.0)],
        [record("moien", 60_000.0), record("janus", 45_000.0)],
        [record("moien", 90_000.0), record("janus", 30_000.0)],
    ];
    let mut files = Vec::new();
    for (i, round) in rounds.iter().enumerate() {
        let file = dir.join(format!("round-{}.json", i + 1));
        std::fs::write(&file, serde_json::json!(round).to_string()).expect("write round");
        files.push(file);
    }
    let results = dir.join("results.json");
    let out = Command::new(BIN)
        .arg("median")
        .arg("--out")
        .arg(&results)
        .args(&files)
        .output()
        .await
        .expect("run moien-loadtest median");
    assert!(out.status.success(), "{out:?}");
    let medians: Value =
        serde_json::from_str(&std::fs::read_to_string(&results).expect("results")).expect("json");
    let medians = medians.as_array().expect("an array");
    assert_eq!(medians.len(), 2, "one record per target: {medians:?}");
    assert_eq!(medians[0]["target"], "moien");
    assert_eq!(medians[0]["packets_per_cpu_second"], 80_000.0);
    assert_eq!(medians[0]["runs"], 3);
    assert_eq!(medians[1]["packets_per_cpu_second"], 40_000.0);
    let out = Command::new(BIN)
        .arg("compare")
        .arg(&results)
        .output()
        .await
        .expect("run moien-loadtest compare");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("2.00x"), "80k / 40k: {table}");
    assert!(
        table.contains("median of 3 runs, pkt/cpu-s 60000-90000"),
        "{table}"
    );

    // A file that is not a results array is named in the error.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"not\": \"an array\"}").expect("write bad");
    let out = Command::new(BIN)
        .arg("median")
        .arg("--out")
        .arg(dir.join("never.json"))
        .arg(&bad)
        .output()
        .await
        .expect("run moien-loadtest median");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json is not a results array"), "{err}");
    assert!(!dir.join("never.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
