//! `moien-loadtest`: the command line. `run` drives a scenario against a target and writes the
//! reports; `bare-forwarder` is the bare target's server process; `compare` prints the ratios of
//! a results file; `median` reduces repeated runs to their median; `capacity` turns a ramp's
//! capacity into a run size.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use moien_loadtest::report::{self, BenchRecord};
use moien_loadtest::runner::{self, RampOptions, RunOptions, TargetKind, TargetSpec};
use moien_loadtest::scenario::{Scenario, ScenarioKind, VideoLayer, ViewerProtocol};

#[derive(Parser)]
#[command(
    name = "moien-loadtest",
    version,
    about = "Load tester for Moien: realistic simulated participants, capacity search, comparison with Janus and a bare forwarder"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario against a target and write the reports.
    Run(Box<RunArgs>),
    /// The bare UDP forwarder process (started by `run --target bare`).
    BareForwarder {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Print the comparison table (ratios to Moien) of a results file.
    Compare { file: PathBuf },
    /// Write to --out, for each scenario, target and size in the results files, the run with
    /// the median packets per CPU-second, with the number of runs and their range.
    Median {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print how many groups (rooms of --group-size, or calls, or viewers) make --share of the
    /// capacity the latest ramp of the scenario in a results file found.
    Capacity {
        file: PathBuf,
        #[arg(long, value_enum)]
        scenario: ScenarioKind,
        #[arg(long, default_value_t = 0.7)]
        share: f64,
        #[arg(long, default_value_t = 1)]
        group_size: usize,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: ScenarioKind,
    /// Server under test.
    #[arg(long, value_enum, default_value_t = TargetKind::Moien)]
    target: TargetKind,
    /// Conference rooms (or calls, for many-small-rooms). Default depends on the scenario.
    #[arg(long)]
    rooms: Option<usize>,
    /// Participants per conference room.
    #[arg(long)]
    room_size: Option<usize>,
    /// Livestream viewers.
    #[arg(long)]
    viewers: Option<usize>,
    /// How livestream viewers receive (Moien only; Janus viewers use its VideoRoom API).
    #[arg(long, value_enum, default_value_t = ViewerProtocol::Ws)]
    viewer_protocol: ViewerProtocol,
    /// Video layers each publisher sends, comma-separated, lowest first: 180p, 360p, 720p,
    /// 1080p or WxH@FPS:KBPS. One layer until the SFU forwards simulcast.
    #[arg(long, value_delimiter = ',')]
    video_layers: Option<Vec<VideoLayer>>,
    /// Publishers send three simulcast layers (the client's q/h/f ladder, about 40/340/860
    /// kbit/s); Moien forwards one per subscriber. Moien only.
    #[arg(long)]
    simulcast: bool,
    /// Fraction of the time each participant talks.
    #[arg(long)]
    talk_share: Option<f64>,
    /// Mean talk-spurt length in milliseconds.
    #[arg(long)]
    talk_ms: Option<u32>,
    /// Send every audio frame while silent (no Opus DTX).
    #[arg(long)]
    no_dtx: bool,
    /// many-small-rooms: share of 3-party calls (the rest are 1:1).
    #[arg(long)]
    three_party_share: Option<f64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Measurement window after warm-up.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Ramp mode: add groups step by step until a limit is crossed; report the capacity.
    #[arg(long)]
    ramp: bool,
    /// Ramp: groups per step (rooms, calls, or viewers for livestream).
    #[arg(long)]
    ramp_step: Option<usize>,
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    step_duration: Duration,
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    step_settle: Duration,
    #[arg(long, default_value_t = 500)]
    max_participants: usize,
    #[arg(long, default_value_t = 1.0)]
    max_loss_percent: f64,
    #[arg(long, default_value_t = 50.0)]
    max_p99_ms: f64,
    /// Ramp: keep adding participants after server and load tester fill 90% of the cores.
    #[arg(long)]
    past_saturation: bool,
    /// Publishers pace their media with str0m's pacer (as browsers do). Off by default so the
    /// one-way latency shows the server's share, not the sender's pacer.
    #[arg(long)]
    sender_pacing: bool,
    /// Niceness of the load tester's own threads once the target runs (0-19; 0 leaves it
    /// unchanged). On a machine it shares with the server under test, the server then gets
    /// the cores when packets arrive, as it would running alone.
    #[arg(long, default_value_t = 10)]
    nice: i32,
    /// Moien: media workers of the started server (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Moien: the `moien` binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Moien: use a running server at this HTTP origin instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// Moien with --url: the server's metrics URL (`http://host:9464/metrics`), to report its
    /// own forwarding delay beside the one-way latency.
    #[arg(long, requires = "url")]
    metrics_url: Option<String>,
    /// Moien: API secret of the running server.
    #[arg(
        long,
        default_value = "moien-dev-secret",
        env = "MOIEN_SECRET",
        hide_env_values = true
    )]
    secret: String,
    /// Moien: pid of the running server, for its CPU and memory.
    #[arg(long)]
    sfu_pid: Option<u32>,
    /// Janus: the binary.
    #[arg(long, default_value = "janus")]
    janus_bin: PathBuf,
    /// Janus: the reference configuration folder (module paths are read from it).
    #[arg(long, default_value = "/etc/janus")]
    janus_config: PathBuf,
    /// Folder for the JSON and HTML reports.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
    /// Also add this run's record to a results file (a JSON array; bench.sh uses it).
    #[arg(long)]
    results: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found next to {}: build it (cargo build --release -p moien) or pass --server-bin",
            name,
            exe.display()
        );
    }
    Ok(p)
}

fn scenario(a: &RunArgs) -> Scenario {
    let mut s = Scenario::defaults(a.scenario);
    if let Some(v) = a.rooms {
        s.rooms = v;
    }
    if let Some(v) = a.room_size {
        s.room_size = v;
    }
    if let Some(v) = a.viewers {
        s.viewers = v;
    }
    s.viewer_protocol = a.viewer_protocol;
    if let Some(v) = &a.video_layers {
        s.video_layers = v.clone();
    }
    s.simulcast = a.simulcast;
    if let Some(v) = a.talk_share {
        s.talk_share = v;
    }
    if let Some(v) = a.talk_ms {
        s.talk_ms = v;
    }
    s.dtx = !a.no_dtx;
    if let Some(v) = a.three_party_share {
        s.three_party_share = v;
    }
    if let Some(v) = a.ramp_step {
        s.ramp_step = v;
    }
    s.seed = a.seed;
    s
}

async fn run(a: RunArgs) -> anyhow::Result<Outcome> {
    let s = scenario(&a);
    s.validate()?;
    if a.duration < Duration::from_secs(1) || a.duration > Duration::from_secs(4 * 3_600) {
        bail!("--duration must be between 1s and 4h");
    }
    if a.warmup > Duration::from_secs(600) || a.step_duration > Duration::from_secs(600) {
        bail!("--warmup and --step-duration must be at most 10 minutes");
    }
    if a.step_duration < Duration::from_secs(1) {
        bail!("--step-duration must be at least 1s");
    }
    if a.max_participants == 0 || a.max_participants > moien_loadtest::scenario::MAX_PARTICIPANTS {
        bail!(
            "--max-participants must be 1..={}",
            moien_loadtest::scenario::MAX_PARTICIPANTS
        );
    }
    if !(0.0..=100.0).contains(&a.max_loss_percent) || a.max_p99_ms.is_nan() || a.max_p99_ms <= 0.0
    {
        bail!("--max-loss-percent must be 0..=100 and --max-p99-ms positive");
    }
    if !(0..=19).contains(&a.nice) {
        bail!("--nice must be 0..=19 (0 leaves the load tester's priority unchanged)");
    }
    if a.target != TargetKind::Moien && a.simulcast {
        bail!(
            "--simulcast is measured on Moien only for now (the Janus and bare targets send one layer)"
        );
    }
    if a.target != TargetKind::Moien && a.viewer_protocol == ViewerProtocol::Whep {
        bail!("--viewer-protocol whep is Moien's; Janus and bare viewers use their own protocol");
    }
    let target = match a.target {
        TargetKind::Moien => match &a.url {
            Some(url) => TargetSpec::MoienExternal {
                http: url.trim_end_matches('/').to_string(),
                secret: a.secret.clone(),
                pid: a.sfu_pid,
                metrics: a.metrics_url.clone(),
            },
            None => TargetSpec::MoienSpawn {
                bin: match &a.server_bin {
                    Some(b) => b.clone(),
                    None => sibling("moien")?,
                },
                workers: a.workers,
            },
        },
        TargetKind::Janus => TargetSpec::Janus {
            bin: a.janus_bin.clone(),
            config_dir: a.janus_config.clone(),
        },
        TargetKind::Bare => TargetSpec::Bare {
            bin: std::env::current_exe()?,
        },
    };
    let ramp = a.ramp.then_some(RampOptions {
        step_seconds: a.step_duration.as_secs_f64(),
        settle_seconds: a.step_settle.as_secs_f64(),
        max_participants: a.max_participants,
        max_loss_percent: a.max_loss_percent,
        max_p99_ms: a.max_p99_ms,
        stop_when_saturated: !a.past_saturation,
    });
    let opts = RunOptions {
        scenario: s,
        target,
        warmup: a.warmup,
        duration: a.duration,
        ramp,
        sender_pacing: a.sender_pacing,
        nice: a.nice,
        progress: !a.quiet,
        announce_phases: true,
    };
    let result = runner::run(opts).await?;
    let (json, html) = result.write_reports(&a.out)?;
    print!("{}", report::text_table(&result));
    println!("  reports: {} {}", json.display(), html.display());
    if let Some(path) = &a.results {
        report::append_record(path, result.bench_record())?;
    }
    if result.interrupted {
        return Ok(Outcome::Interrupted);
    }
    // A fixed run that could not bring everyone in failed; a ramp stopping on a failed join
    // has found its limit.
    Ok(if result.errors.is_empty() || result.ramp.is_some() {
        Outcome::Done
    } else {
        Outcome::Failed
    })
}

/// How a run ended, for the exit status.
enum Outcome {
    Done,
    /// Some participants could not join: exit status 1.
    Failed,
    /// Ctrl-C: the partial report is written, then the process ends by SIGINT, as a shell (and
    /// `bench.sh`) expects of a program that handled Ctrl-C.
    Interrupted,
}

/// Ends the process by SIGINT with its default action (after the reports are written).
fn die_by_sigint() -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    // SAFETY: resetting a signal's disposition and raising it are plain syscalls.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::raise(libc::SIGINT);
    }
    std::process::exit(130)
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moien-loadtest: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::BareForwarder { port } => moien_loadtest::bare::forwarder_main(port),
        Cmd::Compare { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let records: Vec<BenchRecord> = serde_json::from_str(&text)?;
            print!("{}", report::comparison(&records));
            Ok(())
        }
        Cmd::Median { files, out } => {
            let mut records: Vec<BenchRecord> = Vec::new();
            for file in &files {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let more: Vec<BenchRecord> = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a results array", file.display()))?;
                records.extend(more);
            }
            let medians = report::median_runs(&records);
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&out, serde_json::to_string_pretty(&medians)?)
                .with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        }
        Cmd::Capacity {
            file,
            scenario,
            share,
            group_size,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let records: Vec<BenchRecord> = serde_json::from_str(&text)?;
            let groups = report::groups_at_share(&records, scenario.name(), share, group_size)?;
            println!("{groups}");
            Ok(())
        }
        Cmd::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "error".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let outcome = rt.block_on(run(*args))?;
            rt.shutdown_timeout(Duration::from_secs(2));
            match outcome {
                Outcome::Done => Ok(()),
                Outcome::Failed => std::process::exit(1),
                Outcome::Interrupted => {
                    eprintln!("moien-loadtest: interrupted; the partial report is written");
                    die_by_sigint()
                }
            }
        }
    }
}
