//! The Janus adapter against Debian's Janus: the test starts Janus itself the way
//! `--target janus` does (generated configuration, its own network namespace), runs a tiny video
//! conference through the VideoRoom plugin and checks that media went everywhere. Janus is a
//! test dependency (`scripts/install-deps.sh test` installs it): without it this test fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use moien_loadtest::runner::{self, RunOptions, TargetSpec};
use moien_loadtest::scenario::{Scenario, ScenarioKind};

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_video_conference_on_janus_delivers_media() {
    let Some(janus) = on_path("janus") else {
        panic!(
            "janus is not installed: it is a test dependency. Run `scripts/install-deps.sh test` \
             (what `make test` does first; it installs the Debian package janus) or \
             `apt-get install -y janus`"
        );
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the Janus target runs Janus in a network namespace of its own (`ip netns`): run this \
         test as root"
    );

    let mut scenario = Scenario::defaults(ScenarioKind::VideoConference);
    scenario.rooms = 1;
    scenario.room_size = 3;
    scenario.video_layers = vec!["180p".parse().expect("layer")];
    let opts = RunOptions {
        scenario,
        target: TargetSpec::Janus {
            bin: janus,
            config_dir: Path::new("/etc/janus").to_path_buf(),
        },
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(3),
        ramp: None,
        sender_pacing: false,
        nice: 0,
        progress: false,
        announce_phases: false,
    };
    let r = runner::run(opts).await.expect("run on Janus completes");

    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.target, "janus");
    assert_eq!(r.participants, 3);
    assert_eq!(
        r.streams,
        3 * 2 * 2,
        "each of 3 receives 2 tracks from 2 others"
    );
    assert_eq!(r.receivers_with_media, 3, "every receiver got media");
    assert_eq!(
        r.streams_received, r.streams,
        "every stream delivered through Janus"
    );
    let rates = &r.rates;
    // 180p at 15 fps is 2 packets a frame: 30 pkt/s per video stream alone.
    assert!(
        rates.forwarded_packets_per_s > 6.0 * 30.0 * 0.8,
        "forwarded {} pkt/s",
        rates.forwarded_packets_per_s
    );
    assert!(rates.expected_packets > 0);
    assert!(rates.loss_percent < 1.0, "loss through Janus: {rates:?}");
    assert!(
        rates.sfu_cpu_seconds.is_some_and(|c| c > 0.0),
        "Janus's CPU is read from its own process: {rates:?}"
    );
    assert!(r.latency.samples > 50, "{:?}", r.latency);
    assert!(r.join.count == 3 && r.join.p95_ms > 0.0, "{:?}", r.join);
    assert!(r.cpu_note.contains("server process only"), "{}", r.cpu_note);

    // Janus's namespace and veth pair are gone with it.
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let ours = format!("moienlt{}", std::process::id());
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&ours),
        "namespace {ours} left behind"
    );

    let record = serde_json::to_value(r.bench_record()).expect("serializes");
    assert_eq!(record["target"], "janus");
    assert_eq!(record["scenario"], "video-conference");
}
