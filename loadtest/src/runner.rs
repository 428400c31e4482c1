//! Runs a scenario against a target: starts the target, joins the plan's groups (all at once, or
//! step by step in ramp mode), samples receivers and the server process once a second, stops
//! on time, on Ctrl-C or at capacity, and turns the samples into a [`RunResult`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use moien_client::Client;
use serde::Serialize;

use crate::bare::BareTarget;
use crate::forwarding_delay::{self, ForwardingDelay};
use crate::janus::{JanusMember, JanusTarget};
use crate::moien::MoienTarget;
use crate::procstat::{self, ProcSample};
use crate::report::{
    JoinStats, LatencyStats, RampResult, RampStep, RateStats, RunResult, TimelinePoint,
};
use crate::scenario::{Group, Scenario};
use crate::stats::{self, Collector, Harvest, Recorder};

/// Which server is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Moien,
    Janus,
    Bare,
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetKind::Moien => "moien",
            TargetKind::Janus => "janus",
            TargetKind::Bare => "bare",
        })
    }
}

/// How to reach or start the target.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// Start `moien serve --dev` from this binary with this many media workers.
    MoienSpawn { bin: PathBuf, workers: usize },
    /// A Moien server that already runs (`pid` for its CPU and memory, when known).
    MoienExternal {
        http: String,
        secret: String,
        pid: Option<u32>,
        /// Its `/metrics`, for the server's own forwarding delay.
        metrics: Option<String>,
    },
    /// Start Janus from this binary with a config generated from `config_dir`.
    Janus { bin: PathBuf, config_dir: PathBuf },
    /// Start the bare forwarder (this binary's `bare-forwarder` subcommand).
    Bare { bin: PathBuf },
}

impl TargetSpec {
    pub fn kind(&self) -> TargetKind {
        match self {
            TargetSpec::MoienSpawn { .. } | TargetSpec::MoienExternal { .. } => TargetKind::Moien,
            TargetSpec::Janus { .. } => TargetKind::Janus,
            TargetSpec::Bare { .. } => TargetKind::Bare,
        }
    }
}

/// Ramp thresholds and pacing.
#[derive(Debug, Clone, Serialize)]
pub struct RampOptions {
    pub step_seconds: f64,
    pub settle_seconds: f64,
    pub max_participants: usize,
    pub max_loss_percent: f64,
    pub max_p99_ms: f64,
    /// Stop when server and load tester together use 90% of the machine's cores.
    pub stop_when_saturated: bool,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: Scenario,
    pub target: TargetSpec,
    pub warmup: Duration,
    pub duration: Duration,
    pub ramp: Option<RampOptions>,
    /// Publishers pace their media through str0m's pacer (as browsers do).
    pub sender_pacing: bool,
    /// Niceness the load tester takes once the target runs (0: unchanged), so that a server
    /// sharing the machine gets the cores when packets arrive ([`crate::priority`]).
    pub nice: i32,
    pub progress: bool,
    /// Print `moien-loadtest: phase <name>` on stderr as the run moves on (`starting`,
    /// `joining`, `warmup`, `measuring`, `step <n>`, `stopping`), for scripts and tests that
    /// drive the binary.
    pub announce_phases: bool,
}

/// Prints a phase line (see [`RunOptions::announce_phases`]) without tearing the progress bar.
fn announce(opts: &RunOptions, bar: &ProgressBar, phase: &str) {
    if opts.announce_phases {
        bar.suspend(|| eprintln!("moien-loadtest: phase {phase}"));
    }
}

/// Ctrl-C (SIGINT), watched from the start of a run to its end: a signal that arrives between
/// two waits is kept, not lost, and the handler is in place before the target starts.
#[derive(Clone)]
struct Interrupt(tokio::sync::watch::Receiver<bool>);

impl Interrupt {
    /// Installs the handler now (not at a task's first poll) and returns the flag with the task
    /// that sets it (abort it when the run is over).
    fn watch() -> anyhow::Result<(Interrupt, tokio::task::JoinHandle<()>)> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sig = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            if sig.recv().await.is_some() {
                let _ = tx.send(true);
            }
        });
        Ok((Interrupt(rx), task))
    }

    /// Resolves once Ctrl-C was pressed (at once if it already was).
    async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|v| *v).await.is_err() {
            // The watcher is gone (end of the run): no Ctrl-C will come through it.
            std::future::pending::<()>().await;
        }
    }
}

enum Target {
    Moien(MoienTarget),
    Janus(JanusTarget),
    Bare(BareTarget),
}

/// A joined participant, kept until the end.
enum Joined {
    Client(Client),
    Janus(JanusMember),
    Bare,
}

impl Target {
    async fn start(spec: &TargetSpec) -> anyhow::Result<Target> {
        Ok(match spec {
            TargetSpec::MoienSpawn { bin, workers } => {
                Target::Moien(MoienTarget::spawn(bin, *workers).await?)
            }
            TargetSpec::MoienExternal {
                http,
                secret,
                pid,
                metrics,
            } => Target::Moien(MoienTarget::external(
                http.clone(),
                secret.clone(),
                *pid,
                metrics.clone(),
            )),
            TargetSpec::Janus { bin, config_dir } => {
                Target::Janus(JanusTarget::spawn(bin, config_dir).await?)
            }
            TargetSpec::Bare { bin } => Target::Bare(BareTarget::spawn(bin).await?),
        })
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Target::Moien(t) => t.pid,
            Target::Janus(t) => t.pid,
            Target::Bare(t) => t.pid,
        }
    }

    /// Where the server's own forwarding delay can be read (Moien only).
    fn metrics(&self) -> Option<String> {
        match self {
            Target::Moien(t) => t.metrics.clone(),
            Target::Janus(_) | Target::Bare(_) => None,
        }
    }

    async fn join_group(
        &mut self,
        g: &Group,
        recorders: &[Option<Arc<Recorder>>],
        pace: bool,
    ) -> anyhow::Result<Vec<Joined>> {
        Ok(match self {
            Target::Moien(t) => t
                .join_group(g, recorders, pace)
                .await?
                .into_iter()
                .map(Joined::Client)
                .collect(),
            Target::Janus(t) => t
                .join_group(g, recorders, pace)
                .await?
                .into_iter()
                .map(Joined::Janus)
                .collect(),
            Target::Bare(t) => {
                t.join_group(g, recorders).await?;
                vec![Joined::Bare]
            }
        })
    }

    async fn stop(self) {
        match self {
            Target::Moien(t) => t.stop().await,
            Target::Janus(t) => t.stop().await,
            Target::Bare(t) => t.stop().await,
        }
    }
}

async fn leave_all(joined: Vec<Joined>) {
    let mut set = tokio::task::JoinSet::new();
    for j in joined {
        match j {
            Joined::Client(c) => {
                set.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(3), c.leave()).await;
                });
            }
            Joined::Janus(m) => {
                set.spawn(async move { m.leave().await });
            }
            Joined::Bare => {}
        }
    }
    while set.join_next().await.is_some() {}
}

/// One second of the run as sampled.
struct Sample {
    harvest: Harvest,
    sfu: Option<ProcSample>,
    me: Option<ProcSample>,
    participants: usize,
    phase: &'static str,
}

/// The run's state while it goes.
struct Run {
    started: Instant,
    collector: Arc<Collector>,
    pid: Option<u32>,
    samples: Vec<Sample>,
    participants: usize,
    progress: ProgressBar,
    interrupt: Interrupt,
    /// The server's `/metrics` and a client to read it at window edges.
    metrics: Option<(String, reqwest::Client)>,
}

impl Run {
    /// The server's forwarding delay histogram now, at a window's edge (not every second:
    /// each read costs the server a little CPU inside the measured window).
    async fn forwarding_delay(&self) -> Option<forwarding_delay::Buckets> {
        let (url, client) = self.metrics.as_ref()?;
        forwarding_delay::scrape(client, url).await
    }

    fn sample(&mut self, phase: &'static str) -> usize {
        let s = Sample {
            harvest: self.collector.harvest(),
            sfu: self.pid.and_then(procstat::sample),
            me: procstat::sample(std::process::id()),
            participants: self.participants,
            phase,
        };
        self.samples.push(s);
        self.samples.len() - 1
    }

    fn point(&self, i: usize) -> Option<TimelinePoint> {
        let prev = self.samples.get(i.checked_sub(1)?)?;
        let s = self.samples.get(i)?;
        let dt = s
            .harvest
            .at
            .saturating_duration_since(prev.harvest.at)
            .as_secs_f64();
        // Back-to-back samples (phase boundaries) make rates of noise.
        if dt < 0.5 {
            return None;
        }
        let d = s.harvest.totals.minus(&prev.harvest.totals);
        let cpu = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
            (Some(a), Some(b)) => Some((b.cpu_seconds - a.cpu_seconds).max(0.0) * 100.0 / dt),
            _ => None,
        };
        Some(TimelinePoint {
            t_s: s
                .harvest
                .at
                .saturating_duration_since(self.started)
                .as_secs_f64(),
            phase: s.phase.to_string(),
            participants: s.participants,
            packets_per_s: d.packets as f64 / dt,
            mbit_per_s: d.bytes as f64 * 8.0 / 1e6 / dt,
            loss_percent: d.loss_percent(),
            p50_ms: stats::percentile_ms(&s.harvest.window_latency, 0.50),
            p95_ms: stats::percentile_ms(&s.harvest.window_latency, 0.95),
            p99_ms: stats::percentile_ms(&s.harvest.window_latency, 0.99),
            sfu_cpu_percent: cpu(prev.sfu, s.sfu),
            sfu_cpu_wait_percent: waited(prev.sfu, s.sfu).map(|w| w * 100.0 / dt),
            sfu_rss_bytes: s.sfu.map(|p| p.rss_bytes),
            loadtester_cpu_percent: cpu(prev.me, s.me),
        })
    }

    /// Samples once a second for `d` (or until Ctrl-C, then once more so that the figures run
    /// up to the interruption); false when interrupted.
    async fn hold(&mut self, d: Duration, phase: &'static str, interrupted: &mut bool) -> bool {
        let end = tokio::time::Instant::now() + d;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                return true;
            }
            let next = (now + Duration::from_secs(1)).min(end);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.interrupt.wait() => {
                    *interrupted = true;
                    self.sample(phase);
                    return false;
                }
            }
            let i = self.sample(phase);
            if let Some(p) = self.point(i) {
                self.progress.set_message(format!(
                    "{phase}: {} participants, {:.0} pkt/s, loss {:.2}%, p99 {:.1} ms{}",
                    p.participants,
                    p.packets_per_s,
                    p.loss_percent,
                    p.p99_ms,
                    p.sfu_cpu_percent
                        .map(|c| format!(", server CPU {c:.0}%"))
                        .unwrap_or_default()
                ));
            }
            self.progress.inc(1);
        }
    }

    /// Aggregates samples `a..=b` (indices) into window figures.
    fn window(&self, a: usize, b: usize) -> Window {
        let (sa, sb) = (&self.samples[a], &self.samples[b]);
        let secs = sb
            .harvest
            .at
            .saturating_duration_since(sa.harvest.at)
            .as_secs_f64()
            .max(1e-3);
        let d = sb.harvest.totals.minus(&sa.harvest.totals);
        let latency = stats::merged(
            self.samples[a + 1..=b]
                .iter()
                .map(|s| s.harvest.window_latency.clone()),
        );
        let cpu = match (sa.sfu, sb.sfu) {
            (Some(x), Some(y)) => Some((y.cpu_seconds - x.cpu_seconds).max(0.0)),
            _ => None,
        };
        let me = match (sa.me, sb.me) {
            (Some(x), Some(y)) => Some((y.cpu_seconds - x.cpu_seconds).max(0.0)),
            _ => None,
        };
        Window {
            secs,
            totals: d,
            latency,
            sfu_cpu_seconds: cpu,
            sfu_cpu_wait_seconds: waited(sa.sfu, sb.sfu),
            loadtester_cpu_seconds: me,
            rss_end: sb.sfu.map(|p| p.rss_bytes),
            anon_end: sb.sfu.map(|p| p.anon_bytes),
            forwarding_delay: None,
        }
    }
}

/// Seconds the server's threads waited for a CPU between two readings.
fn waited(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some((b?.cpu_wait_seconds? - a?.cpu_wait_seconds?).max(0.0))
}

/// The server's forwarding delay between two edges of a window.
fn delay_between(
    start: Option<forwarding_delay::Buckets>,
    end: Option<forwarding_delay::Buckets>,
) -> Option<ForwardingDelay> {
    end?.since(&start?).summary()
}

struct Window {
    secs: f64,
    totals: stats::Totals,
    latency: Histogram<u64>,
    sfu_cpu_seconds: Option<f64>,
    sfu_cpu_wait_seconds: Option<f64>,
    loadtester_cpu_seconds: Option<f64>,
    rss_end: Option<u64>,
    anon_end: Option<u64>,
    /// The server's own forwarding delay over the window, when it exports it.
    forwarding_delay: Option<ForwardingDelay>,
}

impl Window {
    fn rates(&self) -> RateStats {
        let per_cpu = |x: f64| match self.sfu_cpu_seconds {
            Some(c) if c > 0.0 => Some(x / c),
            _ => None,
        };
        let bits = self.totals.bytes as f64 * 8.0 / 1e6;
        let vbits = self.totals.video_bytes as f64 * 8.0 / 1e6;
        RateStats {
            window_seconds: self.secs,
            forwarded_packets: self.totals.packets,
            forwarded_packets_per_s: self.totals.packets as f64 / self.secs,
            forwarded_mbit_per_s: bits / self.secs,
            video_mbit_per_s: vbits / self.secs,
            sfu_cpu_seconds: self.sfu_cpu_seconds,
            sfu_cpu_percent: self.sfu_cpu_seconds.map(|c| c * 100.0 / self.secs),
            sfu_cpu_wait_ms_per_s: self.sfu_cpu_wait_seconds.map(|w| w * 1e3 / self.secs),
            packets_per_cpu_second: per_cpu(self.totals.packets as f64),
            mbit_per_cpu_second: per_cpu(bits),
            video_mbit_per_cpu_second: per_cpu(vbits),
            loadtester_cpu_seconds: self.loadtester_cpu_seconds,
            loss_percent: self.totals.loss_percent(),
            lost_packets: self.totals.lost,
            expected_packets: self.totals.expected,
        }
    }
}

/// Runs the scenario; always stops the target, also on error. Ctrl-C ends the run early with a
/// partial result (`interrupted`); participants leave and the target stops either way.
pub async fn run(opts: RunOptions) -> anyhow::Result<RunResult> {
    opts.scenario.validate()?;
    raise_fd_limit();
    let (interrupt, watcher) = Interrupt::watch()?;
    let r = run_with(&opts, interrupt).await;
    watcher.abort();
    r
}

async fn run_with(opts: &RunOptions, interrupt: Interrupt) -> anyhow::Result<RunResult> {
    let quiet = ProgressBar::hidden();
    announce(opts, &quiet, "starting");
    // Dropping a half-started target kills its process (kill_on_drop) and its namespace.
    let mut target = tokio::select! {
        t = Target::start(&opts.target) => {
            t.with_context(|| format!("starting target {}", opts.target.kind()))?
        }
        _ = interrupt.wait() => anyhow::bail!("interrupted while starting target {}", opts.target.kind()),
    };
    // After the start, so that a server this process started keeps its own priority.
    if opts.nice > 0
        && let Err(e) = crate::priority::lower_own(opts.nice)
    {
        eprintln!("moien-loadtest: could not lower its own priority: {e}");
    }
    let r = drive(opts, &mut target, interrupt).await;
    announce(opts, &quiet, "stopping");
    let (result, joined) = match r {
        Ok(x) => x,
        Err(e) => {
            target.stop().await;
            return Err(e);
        }
    };
    leave_all(joined).await;
    target.stop().await;
    Ok(result)
}

async fn drive(
    opts: &RunOptions,
    target: &mut Target,
    interrupt: Interrupt,
) -> anyhow::Result<(RunResult, Vec<Joined>)> {
    let collector = Arc::new(Collector::default());
    let progress = if opts.progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut run = Run {
        started: Instant::now(),
        collector: collector.clone(),
        pid: target.pid(),
        samples: Vec::new(),
        participants: 0,
        progress,
        interrupt: interrupt.clone(),
        metrics: target.metrics().map(|url| (url, reqwest::Client::new())),
    };
    let baseline = run.pid.and_then(procstat::sample);
    run.sample("start");
    let mut joined: Vec<Joined> = Vec::new();
    let mut errors = Vec::new();
    let mut interrupted = false;
    let mut groups_in: Vec<Group> = Vec::new();
    let mut ramp_result = None;

    if let Some(ramp) = &opts.ramp {
        let mut steps: Vec<RampStep> = Vec::new();
        let mut stop_reason = String::from("max participants reached");
        let mut step = 0;
        let mut last_good = 0usize;
        loop {
            let groups = opts.scenario.ramp_groups(step);
            let adding: usize = groups.iter().map(|g| g.members.len()).sum();
            if run.participants + adding > ramp.max_participants {
                break;
            }
            run.progress
                .set_length(run.progress.length().unwrap_or(0) + 1);
            run.progress
                .set_message(format!("step {step}: joining {adding} participants"));
            announce(opts, &run.progress, &format!("step {step}"));
            let r = tokio::select! {
                r = join_groups(opts, target, &collector, &groups, &mut run, &mut joined) => r,
                _ = interrupt.wait() => {
                    interrupted = true;
                    stop_reason = "interrupted".into();
                    break;
                }
            };
            if let Err(e) = r {
                stop_reason = format!("join failed: {e:#}");
                errors.push(stop_reason.clone());
                break;
            }
            groups_in.extend(groups);
            run.progress.inc(1);
            let settle = Duration::from_secs_f64(ramp.settle_seconds);
            let hold = Duration::from_secs_f64(ramp.step_seconds);
            run.progress
                .set_length(run.progress.length().unwrap_or(0) + hold.as_secs() + settle.as_secs());
            if !run.hold(settle, "settle", &mut interrupted).await {
                stop_reason = "interrupted".into();
                break;
            }
            let delay_start = run.forwarding_delay().await;
            let a = run.sample("step");
            if !run.hold(hold, "step", &mut interrupted).await {
                stop_reason = "interrupted".into();
                break;
            }
            let b = run.samples.len() - 1;
            let delay = delay_between(delay_start, run.forwarding_delay().await);
            let w = run.window(a, b);
            let p99 = stats::percentile_ms(&w.latency, 0.99);
            let rates = w.rates();
            let ok = rates.loss_percent <= ramp.max_loss_percent && p99 <= ramp.max_p99_ms;
            steps.push(RampStep {
                step,
                participants: run.participants,
                streams: Scenario::streams_of(&groups_in),
                p50_ms: stats::percentile_ms(&w.latency, 0.5),
                p99_ms: p99,
                sfu_forwarding_delay_p99_ms: delay.map(|d| d.p99_ms),
                rates,
                within_limits: ok,
            });
            if !ok {
                stop_reason = format!(
                    "limit crossed at {} participants: loss {:.2}% (max {}), p99 {:.1} ms (max {})",
                    run.participants,
                    steps.last().map_or(0.0, |s| s.rates.loss_percent),
                    ramp.max_loss_percent,
                    p99,
                    ramp.max_p99_ms
                );
                break;
            }
            last_good = run.participants;
            // On one machine the load tester usually fills it before the server does: past
            // that point more participants only measure the load tester.
            let busy = |c: Option<f64>| c.unwrap_or(0.0) * 100.0 / w.secs;
            let machine = busy(w.sfu_cpu_seconds) + busy(w.loadtester_cpu_seconds);
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            if ramp.stop_when_saturated && machine >= 0.9 * cores * 100.0 {
                stop_reason = format!(
                    "machine saturated at {} participants (server {:.0}% + load tester {:.0}% \
                     of {cores} cores): the limit found is this machine's, not the server's",
                    run.participants,
                    busy(w.sfu_cpu_seconds),
                    busy(w.loadtester_cpu_seconds)
                );
                break;
            }
            step += 1;
        }
        let last_ok = steps.iter().rev().find(|s| s.within_limits);
        ramp_result = Some(RampResult {
            capacity_participants: last_good,
            capacity_streams: last_ok.map_or(0, |s| s.streams),
            stop_reason,
            steps,
            options: ramp.clone(),
        });
    } else {
        let groups = opts.scenario.plan();
        let total: usize = groups.iter().map(|g| g.members.len()).sum();
        run.progress.set_length(total as u64);
        run.progress
            .set_message(format!("joining {total} participants"));
        announce(opts, &run.progress, "joining");
        let mut joined_ok = true;
        tokio::select! {
            r = join_groups(opts, target, &collector, &groups, &mut run, &mut joined) => {
                if let Err(e) = r {
                    errors.push(format!("{e:#}"));
                    joined_ok = false;
                }
            }
            _ = interrupt.wait() => {
                interrupted = true;
                run.sample("joining");
            }
        }
        groups_in = groups;
        run.progress.set_position(0);
        run.progress
            .set_length(opts.warmup.as_secs() + opts.duration.as_secs());
        let mut measured = None;
        if joined_ok && !interrupted {
            announce(opts, &run.progress, "warmup");
        }
        if joined_ok && !interrupted && run.hold(opts.warmup, "warmup", &mut interrupted).await {
            let delay_start = run.forwarding_delay().await;
            let a = run.sample("measure");
            announce(opts, &run.progress, "measuring");
            run.hold(opts.duration, "measure", &mut interrupted).await;
            let b = run.samples.len() - 1;
            let delay = delay_between(delay_start, run.forwarding_delay().await);
            if b > a {
                let mut w = run.window(a, b);
                w.forwarding_delay = delay;
                measured = Some(w);
            }
        }
        if let Some(w) = measured {
            run.progress.finish_and_clear();
            return Ok((
                finish(
                    opts,
                    &run,
                    baseline,
                    Some(&w),
                    &groups_in,
                    None,
                    errors,
                    interrupted,
                ),
                joined,
            ));
        }
    }
    run.progress.finish_and_clear();
    // Ramp, or a fixed run that ended before its window: summarize what there is.
    let last = run.samples.len() - 1;
    let first = run
        .samples
        .iter()
        .position(|s| s.phase != "start")
        .unwrap_or(0)
        .min(last);
    // Interrupted before a second sample after the joins: what there is since the start.
    let first = if first == last { 0 } else { first };
    let w = (last > first).then(|| run.window(first, last));
    let mut result = finish(
        opts,
        &run,
        baseline,
        w.as_ref(),
        &groups_in,
        ramp_result.clone(),
        errors,
        interrupted,
    );
    if let Some(r) = &ramp_result
        && let Some(s) = r.steps.iter().rev().find(|s| s.within_limits)
    {
        // Headline figures of a ramp: the last step within limits.
        result.participants = s.participants;
        result.rates = s.rates.clone();
        result.latency.p50_ms = s.p50_ms;
        result.latency.p99_ms = s.p99_ms;
    }
    Ok((result, joined))
}

/// Joins groups one after the other (members of a group in order, as a call fills up).
async fn join_groups(
    opts: &RunOptions,
    target: &mut Target,
    collector: &Arc<Collector>,
    groups: &[Group],
    run: &mut Run,
    joined: &mut Vec<Joined>,
) -> anyhow::Result<()> {
    let speakers: Vec<_> = groups
        .iter()
        .flat_map(|g| &g.members)
        .filter(|m| m.publish_audio)
        .map(|m| m.speech)
        .collect();
    if !speakers.is_empty() {
        let message = run.progress.message();
        run.progress
            .set_message(format!("encoding the audio of {} speakers", speakers.len()));
        crate::voices::prepare(speakers).await?;
        run.progress.set_message(message);
    }
    for g in groups {
        let now = Instant::now();
        let recorders: Vec<Option<Arc<Recorder>>> = g
            .members
            .iter()
            .map(|m| {
                m.subscribe.then(|| {
                    let r = Recorder::new(m.identity.clone(), now);
                    collector.add(r.clone());
                    r
                })
            })
            .collect();
        let j = target.join_group(g, &recorders, opts.sender_pacing).await?;
        joined.extend(j);
        run.participants += g.members.len();
        if opts.ramp.is_none() {
            run.progress.inc(g.members.len() as u64);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn finish(
    opts: &RunOptions,
    run: &Run,
    baseline: Option<ProcSample>,
    w: Option<&Window>,
    groups: &[Group],
    ramp: Option<RampResult>,
    errors: Vec<String>,
    interrupted: bool,
) -> RunResult {
    let receivers: Vec<_> = run
        .collector
        .recorders()
        .iter()
        .map(|r| r.summary())
        .collect();
    let joins: Vec<f64> = receivers
        .iter()
        .filter_map(|r| r.join_time.map(|d| d.as_secs_f64() * 1_000.0))
        .collect();
    let expected_receivers = receivers.len();
    let latency = w
        .map(|w| w.latency.clone())
        .unwrap_or_else(|| stats::merged(receivers.iter().map(|r| r.latency.clone())));
    let mean = |v: Vec<f64>| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let secs = w.map_or(0.0, |w| w.secs);
    // Per-subscriber bitrate over the run (receivers that got anything).
    let active = run.samples.last().map_or(0.0, |s| {
        s.harvest
            .at
            .saturating_duration_since(run.started)
            .as_secs_f64()
    });
    let kbps: Vec<f64> = receivers
        .iter()
        .filter(|r| r.totals.packets > 0)
        .filter_map(|r| {
            let joined = r.join_time?.as_secs_f64();
            let d = (active - joined).max(1e-3);
            Some(r.totals.bytes as f64 * 8.0 / 1_000.0 / d)
        })
        .collect();
    let participants = run.participants;
    let rss_end = w.and_then(|w| w.rss_end);
    let rss_start = baseline.map(|b| b.rss_bytes);
    let anon_end = w.and_then(|w| w.anon_end);
    let anon_start = baseline.map(|b| b.anon_bytes);
    // Per participant counts the anonymous growth only: the file-backed rest of the growth is
    // the server's code paged in by the first call (2.8 of 10 MB in a 2x5 conference), the same
    // for ten participants or a thousand.
    let rss_per = match (anon_start, anon_end) {
        (Some(a), Some(b)) if participants > 0 => Some(b.saturating_sub(a) / participants as u64),
        _ => None,
    };
    let timeline = (1..run.samples.len())
        .filter_map(|i| run.point(i))
        .collect();
    let cpu_note = match (&opts.target, run.pid) {
        (TargetSpec::MoienExternal { pid: Some(p), .. }, _) if *p == std::process::id() => {
            "server runs inside the load tester: CPU includes the simulated participants".into()
        }
        (_, None) => "server CPU unknown (no pid)".into(),
        _ => "server CPU from /proc/<pid>/stat of the server process only".into(),
    };
    RunResult {
        scenario: opts.scenario.kind.name().into(),
        target: opts.target.kind().to_string(),
        params: opts.scenario.clone(),
        participants,
        receivers: expected_receivers,
        receivers_with_media: joins.len(),
        streams: Scenario::streams_of(groups),
        streams_received: receivers.iter().map(|r| r.streams).sum(),
        window_seconds: secs,
        rates: w.map(Window::rates).unwrap_or_default(),
        sfu_forwarding_delay: w.and_then(|w| w.forwarding_delay),
        latency: LatencyStats::from_histogram(&latency),
        jitter_ms: mean(
            receivers
                .iter()
                .flat_map(|r| r.jitter_ms.iter().copied())
                .collect(),
        ),
        join: JoinStats::from_samples(&joins),
        subscriber_kbps: crate::report::Spread::of(&kbps),
        rss_bytes_start: rss_start,
        rss_bytes_end: rss_end,
        anon_rss_bytes_start: anon_start,
        anon_rss_bytes_end: anon_end,
        rss_bytes_per_participant: rss_per,
        cpu_note,
        sender_pacing: opts.sender_pacing,
        load_tester_nice: opts.nice,
        interrupted,
        errors,
        ramp,
        timeline,
        machine: crate::report::Machine::detect(),
    }
}

/// Every participant holds two UDP sockets: make sure the soft limit allows the run.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
