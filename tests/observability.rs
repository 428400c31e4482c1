//! Observability end to end: the metrics a running `moien serve --dev` and `moien probe` expose
//! under a small load (Rust clients, one relayed through TURN, WHIP and WHEP, a few refusals),
//! scraped by a real Prometheus (Debian's `prometheus`), against every dashboard panel query and
//! every alert expression; the naming and privacy rules of the exposition; promtool on the shipped
//! files; the probe's figures on a clean and on a lossy call.
//!
//! Needs `prometheus` and `promtool` (`make test` installs Debian's `prometheus`); without them
//! the tests fail and say so. Every process a test starts is killed when the test ends.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use moien_client::{Client, ClientConfig, RelayConfig};
use moien_protocol::TrackKind;
use moien_signaling::auth::{self, Claims, Grants};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_moien");
const REPO: &str = env!("CARGO_MANIFEST_DIR");
const DEV_SECRET: &str = "moien-dev-secret";

/// Names in the load that must never show up in metrics.
const ROOM: &str = "obs-room-7f3a9c";
const PEOPLE: &[&str] = &[
    "alice-7f3a9c",
    "bob-7f3a9c",
    "carol-7f3a9c",
    "dave-7f3a9c",
    "erin-7f3a9c",
    "frank-7f3a9c",
];
const NODE: &str = "obs-node";

/// Labels a Moien metric may carry (`le` on histogram buckets; `version`/`commit` on build info).
const ALLOWED_LABELS: &[&str] = &[
    "node",
    "worker",
    "kind",
    "direction",
    "codec",
    "reason",
    "route",
    "status",
    "type",
    "layer",
];
/// The process collector's standard families (the `prometheus` crate, feature `process`).
const PROCESS_FAMILIES: &[&str] = &[
    "process_cpu_seconds_total",
    "process_max_fds",
    "process_open_fds",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
    "process_virtual_memory_bytes",
];
/// The alerts the issue asks for (alerts.yml may hold more).
const REQUIRED_ALERTS: &[&str] = &[
    "MoienNodeOverloaded",
    "MoienPacketLossHigh",
    "MoienJitterHigh",
    "MoienProbeFailing",
    "MoienTurnUnauthorizedStorm",
    "MoienTurnPolicyDenials",
    "MoienMetricsMissing",
];

/// The two tests that place real calls load both cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A child process killed and reaped however the test ends.
struct Proc {
    child: Child,
    what: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "moien-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
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

/// The path of a tool the tests need, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed. These tests run a real Prometheus: `make test` installs \
             Debian's `prometheus` package (scripts/install-deps.sh), or run \
             `sudo apt-get install -y prometheus`."
        )
    })
}

/// Starts `cmd` and reads its stdout banner until a line starting with `last` (after trimming).
fn start_with_banner(mut cmd: Command, what: &'static str, last: &str) -> (Proc, Vec<String>) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let proc = Proc { child, what };
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let done = line.trim_start().starts_with(last);
        lines.push(line);
        if done {
            return (proc, lines);
        }
    }
    panic!("{} exited before printing its banner: {lines:?}", proc.what);
}

/// The first `http://...` word of the banner line that starts with `key`.
fn banner_url(lines: &[String], key: &str) -> String {
    lines
        .iter()
        .filter(|l| l.trim_start().starts_with(key))
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no {key} URL in {lines:?}"))
        .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn dev_token(identity: &str, publish: bool, subscribe: bool, ttl: i64) -> String {
    let now = auth::now_unix() as i64;
    auth::mint(
        DEV_SECRET,
        &Claims {
            sub: identity.into(),
            room: ROOM.into(),
            exp: (now + ttl).max(0) as u64,
            nbf: None,
            iat: Some(now as u64),
            name: identity.to_uppercase(),
            grants: Grants { publish, subscribe },
        },
    )
    .expect("token")
}

/// reqwest's rustls needs the process's crypto provider (aws-lc-rs, as the rest of Moien).
fn crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

async fn get(url: &str) -> (u16, String) {
    crypto_provider();
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// One sample of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
}

/// Families (name → type) and samples of a text exposition.
fn parse_exposition(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                types.insert(n.to_string(), t.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        if line[name_end..].starts_with('{') {
            let mut chars = line[name_end + 1..].chars().peekable();
            loop {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                let key = key.trim_start_matches(',').trim().to_string();
                if key.is_empty() || key.starts_with('}') {
                    break;
                }
                assert_eq!(chars.next(), Some('"'), "label {key} of {line}");
                let mut value = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(if n == 'n' { '\n' } else { n });
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
                if chars.peek() == Some(&'}') {
                    break;
                }
            }
        }
        samples.push(Sample { name, labels });
    }
    (types, samples)
}

/// The sum of the values of every sample named `name` in a text exposition.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The family a sample belongs to (histogram series carry suffixes).
fn family_of<'a>(types: &'a BTreeMap<String, String>, sample: &str) -> Option<&'a str> {
    if let Some((k, _)) = types.get_key_value(sample) {
        return Some(k);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && let Some((k, t)) = types.get_key_value(base)
            && t == "histogram"
        {
            return Some(k);
        }
    }
    None
}

/// The naming rules of the issue, on one exposition; returns every violation.
fn naming_violations(text: &str) -> Vec<String> {
    let (types, samples) = parse_exposition(text);
    let mut bad = Vec::new();
    let non_base = [
        "ms",
        "milliseconds",
        "microseconds",
        "us",
        "ns",
        "nanoseconds",
        "minutes",
        "hours",
        "kb",
        "kilobytes",
        "mb",
        "megabytes",
        "bits",
        "kbps",
        "mbps",
        "bps",
        "percent",
    ];
    for (name, kind) in &types {
        if PROCESS_FAMILIES.contains(&name.as_str()) {
            continue;
        }
        let Some(rest) = name.strip_prefix("moien_") else {
            bad.push(format!(
                "{name}: not moien_<area>_... nor a standard process metric"
            ));
            continue;
        };
        let area = rest.split('_').next().unwrap_or("");
        if name != "moien_build_info" && !["sfu", "signaling", "turn", "probe"].contains(&area) {
            bad.push(format!("{name}: unknown area {area}"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            bad.push(format!("{name}: not snake_case"));
        }
        if rest.split('_').count() < 2 {
            bad.push(format!("{name}: no <what> after the area"));
        }
        if (kind == "counter") != name.ends_with("_total") {
            bad.push(format!("{name}: {kind}; only counters end in _total"));
        }
        if kind == "histogram"
            && !["_seconds", "_bytes", "_ratio", "_bytes_per_second"]
                .iter()
                .any(|u| name.ends_with(u))
        {
            bad.push(format!("{name}: histogram without a base unit"));
        }
        if let Some(w) = name.split('_').find(|w| non_base.contains(w)) {
            bad.push(format!("{name}: non-base unit {w}"));
        }
    }
    for s in &samples {
        let Some(family) = family_of(&types, &s.name) else {
            bad.push(format!("{}: sample without # TYPE", s.name));
            continue;
        };
        if s.labels.get("node").map(String::as_str) != Some(NODE) {
            bad.push(format!("{}: node label {:?}", s.name, s.labels.get("node")));
        }
        for key in s.labels.keys() {
            let ok = ALLOWED_LABELS.contains(&key.as_str())
                || (key == "le" && s.name.ends_with("_bucket"))
                || (family == "moien_build_info" && (key == "version" || key == "commit"));
            let ok = ok && (!PROCESS_FAMILIES.contains(&family) || key == "node");
            if !ok {
                bad.push(format!("{}: label {key} not allowed", s.name));
            }
        }
        for (k, v) in &s.labels {
            if v.len() > 64 {
                bad.push(format!("{}: label {k} value of {} bytes", s.name, v.len()));
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

/// Room names, identities and addresses in an exposition: anywhere in the text, and as label
/// values (an IP in any spelling).
fn privacy_violations(text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for secret in std::iter::once(&ROOM).chain(PEOPLE.iter()) {
        if text.contains(secret) {
            bad.push(format!("the exposition contains {secret}"));
        }
    }
    if text.contains("127.0.0.1") {
        bad.push("the exposition contains 127.0.0.1".into());
    }
    let (_, samples) = parse_exposition(text);
    for s in &samples {
        for (k, v) in &s.labels {
            let host = v.rsplit_once(':').map_or(v.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if v.parse::<IpAddr>().is_ok()
                || host.parse::<IpAddr>().is_ok()
                || v.parse::<SocketAddr>().is_ok()
            {
                bad.push(format!("{}: label {k}={v} is an address", s.name));
            }
        }
    }
    bad
}

/// A PromQL expression with every comparison turned into a `bool` comparison, so an alert
/// expression returns its series (0 or 1) whether or not it fires right now. Label matchers and
/// strings are left alone.
fn with_bool_comparisons(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let (mut braces, mut quote) = (0usize, None::<char>);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' && i + 1 < chars.len() {
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            _ => {}
        }
        let next = chars.get(i + 1).copied();
        let op_len = match (c, next) {
            _ if braces > 0 => 0,
            ('=', Some('=')) | ('!', Some('=')) | ('>', Some('=')) | ('<', Some('=')) => 2,
            ('>', _) | ('<', _) => 1,
            _ => 0,
        };
        if op_len == 0 {
            out.push(c);
            i += 1;
            continue;
        }
        out.extend(&chars[i..i + op_len]);
        i += op_len;
        let rest: String = chars[i..].iter().collect();
        if !rest.trim_start().starts_with("bool") {
            out.push_str(" bool");
        }
    }
    out
}

/// The Prometheus HTTP API of one server.
struct PromApi {
    base: String,
    http: reqwest::Client,
}

impl PromApi {
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        r.json().await.unwrap_or(Value::Null)
    }

    /// `Ok(number of series)` or the error Prometheus gave.
    async fn query(&self, q: &str) -> Result<usize, String> {
        let v = self.get("/api/v1/query", &[("query", q)]).await;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(match &v["data"]["result"] {
            Value::Array(a) => a.len(),
            Value::Null => 0,
            // Scalars and strings are one value.
            _ => 1,
        })
    }
}

/// Grafana's template variables and built-ins, as the dashboards would get them with every
/// node and worker selected.
fn substitute(expr: &str) -> String {
    let mut e = expr.to_string();
    for (from, to) in [
        ("$__rate_interval", "15s"),
        ("${__rate_interval}", "15s"),
        ("$__interval", "5s"),
        ("${__interval}", "5s"),
        ("$__range", "5m"),
        ("${__range}", "5m"),
        ("${node}", ".*"),
        ("$node", ".*"),
        ("${worker}", ".*"),
        ("$worker", ".*"),
    ] {
        e = e.replace(from, to);
    }
    e
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(REPO).join("dashboards/grafana");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards/grafana") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("dashboard");
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel, also those nested in rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for inner in p["panels"].as_array().into_iter().flatten() {
            out.push(inner);
        }
    }
    out
}

/// The static checks of the dashboards: variables, descriptions, units, the `$node` filter.
fn dashboard_violations() -> Vec<String> {
    let mut bad = Vec::new();
    let boards = dashboards();
    let titles: BTreeSet<&str> = boards
        .iter()
        .filter_map(|(_, d)| d["title"].as_str())
        .collect();
    for want in [
        "Fleet overview",
        "Call quality",
        "Media node",
        "TURN",
        "Signaling",
    ] {
        if !titles.iter().any(|t| t.ends_with(want)) {
            bad.push(format!("no dashboard titled ... {want}"));
        }
    }
    let mut uids = BTreeSet::new();
    for (file, d) in &boards {
        if !uids.insert(d["uid"].as_str().unwrap_or("").to_string()) {
            bad.push(format!("{file}: duplicate or missing uid"));
        }
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let var = |n: &str| vars.iter().find(|v| v["name"] == n).cloned();
        match var("datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => bad.push(format!(
                "{file}: no $datasource variable of Prometheus sources"
            )),
        }
        match var("node") {
            Some(v) if v["includeAll"] == true && v["multi"] == true => {}
            _ => bad.push(format!("{file}: no multi-value $node variable with All")),
        }
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or("?");
            if p["type"] == "row" {
                continue;
            }
            if p["description"]
                .as_str()
                .is_none_or(|s| s.trim().len() < 10)
            {
                bad.push(format!("{file} / {title}: no description"));
            }
            if p["datasource"]["uid"] != "${datasource}" {
                bad.push(format!("{file} / {title}: datasource is not $datasource"));
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                bad.push(format!("{file} / {title}: no unit"));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                bad.push(format!("{file} / {title}: no query"));
            }
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or("");
                // Prometheus's own `up` has no node label; everything of ours is filtered.
                if !expr.contains("$node") && !expr.starts_with("count(up{") {
                    bad.push(format!("{file} / {title}: query ignores $node: {expr}"));
                }
            }
        }
    }
    bad
}

/// Runs a promtool subcommand in `dir`; panics with its output if it fails.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Waits until `f` holds, checking every 250 ms.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn hears(c: &Client, sid: &str, frames: u64) -> bool {
    c.report(|r| {
        r.track_of(sid, TrackKind::Audio)
            .is_some_and(|t| t.audio_frames_decoded >= frames)
    })
}

#[test]
fn shipped_prometheus_files_pass_promtool() {
    let dir = Path::new(REPO).join("dashboards");
    let rules = promtool(&dir, &["check", "rules", "alerts.yml"]);
    assert!(rules.contains("SUCCESS"), "{rules}");
    promtool(&dir, &["check", "config", "prometheus.yml"]);
    // Each alert fires on the condition it names and stays quiet on a healthy node.
    promtool(&dir, &["test", "rules", "alerts_test.yml"]);
}

#[test]
fn dashboards_follow_the_house_rules() {
    let bad = dashboard_violations();
    assert!(bad.is_empty(), "dashboard problems:\n{}", bad.join("\n"));
    for f in [
        "provisioning/datasources/moien.yml",
        "provisioning/dashboards/moien.yml",
        "prometheus.yml",
        "alerts.yml",
    ] {
        assert!(
            Path::new(REPO).join("dashboards").join(f).is_file(),
            "dashboards/{f} missing"
        );
    }
}

#[test]
fn every_alert_has_a_runbook_line() {
    let ops = std::fs::read_to_string(Path::new(REPO).join("docs/OPERATIONS.md")).unwrap();
    let rules = std::fs::read_to_string(Path::new(REPO).join("dashboards/alerts.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    for a in REQUIRED_ALERTS {
        assert!(alerts.contains(a), "alerts.yml lacks {a}");
    }
    for a in alerts {
        assert!(
            ops.lines().any(|l| l.contains(&format!("`{a}`"))),
            "docs/OPERATIONS.md has no runbook line for {a}"
        );
    }
}

#[test]
fn bool_rewriting_leaves_matchers_alone() {
    assert_eq!(
        with_bool_comparisons(r#"up{job=~"a|b",x!="1"} == 0 or absent(up)"#),
        r#"up{job=~"a|b",x!="1"} == bool 0 or absent(up)"#
    );
    assert_eq!(with_bool_comparisons("a > bool 1"), "a > bool 1");
    assert_eq!(
        with_bool_comparisons("a >= 1 and b < 2"),
        "a >= bool 1 and b < bool 2"
    );
}

/// A TURN-relayed Rust client calls a direct one: media both ways through the relay, and the
/// allocation freed when it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_client_calls_through_turn() {
    let node = start_node().await;
    let a = join(&node, "relay-room", "a").await;
    let mut c = ClientConfig::new(ws_url(&node), token("relay-room", "b", true, true));
    c.relay = Some(RelayConfig::FromServer);
    let mut b = Client::connect(c).await.expect("relayed client joins");
    let (asid, bsid) = (a.participant.sid.clone(), b.participant.sid.clone());
    b.wait_until("b hears a through TURN", MEDIA_TIMEOUT, |r| {
        r.track_of(&asid, TrackKind::Audio)
            .is_some_and(|t| t.audio_frames_decoded > 20)
    })
    .await
    .unwrap();
    eventually("a hears b through TURN", MEDIA_TIMEOUT, || async {
        hears(&a, &bsid, 20)
    })
    .await;
    let metrics = |name: &str| -> f64 {
        let text = moien::metrics::render(&node.registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(metrics("moien_turn_relayed_packets_total") > 100.0);
    assert_eq!(
        metrics("moien_turn_allocations_active"),
        2.0,
        "one per peer connection"
    );
    b.leave().await.unwrap();
    eventually(
        "the relay allocations freed",
        Duration::from_secs(5),
        || async { metrics("moien_turn_allocations_active") == 0.0 },
    )
    .await;
    a.leave().await.unwrap();
    node.shutdown().await;
}

/// The probe on loopback: no loss and a clean tone; with 20% of the receiver's media packets
/// dropped, the loss shows and the tone is clearly worse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_measures_a_clean_call_and_a_lossy_one() {
    let _serial = SERIAL.lock().await;
    let node = start_node().await;
    let mut cfg = moien::probe::ProbeConfig::new(http_url(&node), SECRET);
    let clean = moien::probe::call_once(&cfg).await.expect("clean call");
    println!("clean: {clean:?}");
    assert_eq!(clean.loss_ratio, 0.0, "{clean:?}");
    assert!(clean.packets_expected >= 100, "{clean:?}");
    // The alert threshold (MoienProbeAudioDegraded); a clean loopback call measures about 30.
    assert!(clean.snr_db > 20.0, "{clean:?}");
    assert!(clean.one_way_latency_seconds < 0.1, "{clean:?}");
    assert!(clean.first_audio_seconds < 5.0, "{clean:?}");

    cfg.inject_loss = 0.2;
    let lossy = moien::probe::call_once(&cfg).await.expect("lossy call");
    println!("20% loss: {lossy:?}");
    assert!(
        // About 150 packets: 20% ± 3.3% (one standard deviation).
        (0.08..0.35).contains(&lossy.loss_ratio),
        "loss near 20%: {lossy:?}"
    );
    assert!(
        lossy.snr_db < clean.snr_db - 8.0,
        "clearly worse: {lossy:?} against {clean:?}"
    );

    // The metrics a probe exports for those two calls.
    let registry = moien::metrics::node_registry(NODE).unwrap();
    let m = moien::probe::ProbeMetrics::new(&registry).unwrap();
    m.record(&Ok(lossy.clone()));
    let text = moien::metrics::render(&registry).unwrap();
    assert!(
        text.contains("moien_probe_success{node=\"obs-node\"} 1"),
        "{text}"
    );
    assert!(text.contains("moien_probe_tone_snr_decibels"), "{text}");
    let bad = naming_violations(&text);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    node.shutdown().await;
}

/// The acceptance test of issue 6: a real server and probe under load, a real Prometheus
/// scraping them, every dashboard query and alert expression evaluated through its HTTP API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_query_a_live_node_through_prometheus() {
    let _serial = SERIAL.lock().await;
    crypto_provider();
    let started = Instant::now();
    let prometheus = tool("prometheus");
    tool("promtool");
    let tmp = TempDir::new("observability");

    // The node, every listener on a free port.
    let mut cmd = Command::new(BIN);
    cmd.args(common::DEV_ON_FREE_PORTS)
        .args(["--workers", "2"])
        .env_remove("MOIEN_SECRET")
        .env("MOIEN_TURN_LISTEN_UDP", "127.0.0.1:0")
        .env("MOIEN_TURN_LISTEN_TCP", "127.0.0.1:0")
        .env("MOIEN_METRICS_LISTEN", "127.0.0.1:0")
        .env("MOIEN_METRICS_NODE", NODE);
    let (_server, banner) = start_with_banner(cmd, "moien serve", "media");
    let http = banner_url(&banner, "http");
    let metrics_url = banner_url(&banner, "metrics");
    let ws = format!("{}/rtc", http.replacen("http://", "ws://", 1));

    // The probe, calling through TURN every second.
    let mut cmd = Command::new(BIN);
    cmd.args(["probe", "--url", &http, "--secret", DEV_SECRET])
        .args(["--interval", "1s", "--duration", "1s", "--relay"])
        .args(["--listen", "127.0.0.1:0", "--node", NODE]);
    let (_probe, probe_banner) = start_with_banner(cmd, "moien probe", "metrics");
    let probe_metrics_url = banner_url(&probe_banner, "metrics");

    // The load: two publishers, a viewer, a TURN-relayed participant, WHIP and WHEP.
    let client = |identity: &str, publish: bool| {
        let mut c = ClientConfig::new(&ws, dev_token(identity, publish, true, 600));
        c.publish_audio = publish;
        c.publish_video = publish;
        c
    };
    let alice = Client::connect(client(PEOPLE[0], true))
        .await
        .expect("alice");
    let bob = Client::connect(client(PEOPLE[1], true)).await.expect("bob");
    let carol = Client::connect(client(PEOPLE[2], false))
        .await
        .expect("carol");
    let mut relayed = client(PEOPLE[3], true);
    relayed.relay = Some(RelayConfig::FromServer);
    let dave = Client::connect(relayed).await.expect("dave (relayed)");
    let mut whip = ClientConfig::new(&ws, dev_token(PEOPLE[4], true, false, 600));
    whip.publish_audio = true;
    let erin = Client::whip(&http, ROOM, whip).await.expect("erin (WHIP)");
    let whep = ClientConfig::new(&ws, dev_token(PEOPLE[5], false, true, 600));
    let frank = Client::whep(&http, ROOM, PEOPLE[4], whep)
        .await
        .expect("frank (WHEP)");
    let (a, d) = (alice.participant.sid.clone(), dave.participant.sid.clone());
    eventually("media flows, relayed both ways", MEDIA_TIMEOUT, || async {
        hears(&dave, &a, 25) && hears(&alice, &d, 25) && hears(&carol, &d, 25)
    })
    .await;
    eventually(
        "the WHEP viewer hears the WHIP publisher",
        MEDIA_TIMEOUT,
        || async { frank.report(|r| r.tracks.values().any(|t| t.audio_frames_decoded > 10)) },
    )
    .await;
    // A few refusals: an expired token, a bad WHIP token, an unknown path.
    let expired = Client::connect(ClientConfig::new(&ws, dev_token("x", true, true, -60))).await;
    assert!(expired.is_err(), "an expired token is refused");
    let r = reqwest::Client::new()
        .post(format!("{http}/whip/{ROOM}"))
        .bearer_auth("not-a-token")
        .header("content-type", "application/sdp")
        .body("v=0")
        .send()
        .await
        .expect("WHIP POST");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(get(&format!("{http}/no/such/path")).await.0, 404);

    // The exposition during the call: naming rules, no room names, identities or addresses.
    let (status, node_text) = get(&metrics_url).await;
    assert_eq!(status, 200);
    let (status, probe_text) = get(&probe_metrics_url).await;
    assert_eq!(status, 200);
    for (what, text) in [("node", &node_text), ("probe", &probe_text)] {
        let bad = naming_violations(text);
        assert!(bad.is_empty(), "{what} naming:\n{}", bad.join("\n"));
        let bad = privacy_violations(text);
        assert!(bad.is_empty(), "{what} privacy:\n{}", bad.join("\n"));
    }
    for family in [
        "moien_sfu_participants",
        "moien_signaling_http_requests_total",
        "moien_turn_relayed_packets_total",
        "moien_build_info",
        "process_open_fds",
    ] {
        assert!(node_text.contains(family), "{family} missing");
    }
    // Every forwarded copy's time inside the node is counted, from the kernel's receive
    // timestamp to the hand-off: a wrong clock conversion would show as hours, not as the
    // sub-millisecond of a call this small.
    let delays = sum_of(&node_text, "moien_sfu_forwarding_delay_seconds_count");
    let delay_sum = sum_of(&node_text, "moien_sfu_forwarding_delay_seconds_sum");
    assert!(delays > 0.0, "forwarded copies were timed");
    let mean = delay_sum / delays;
    assert!(
        (0.0..0.25).contains(&mean),
        "mean forwarding delay {mean} s over {delays} copies"
    );
    // promtool's own linter on both expositions.
    for text in [&node_text, &probe_text] {
        let mut lint = Command::new(tool("promtool"))
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        lint.stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = lint.wait_with_output().expect("promtool check metrics");
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The status page: our own script, nothing from elsewhere.
    let base = metrics_url.trim_end_matches("/metrics");
    let (status, page) = get(&format!("{base}/status")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<script src=\"/status.js\"></script>"),
        "{page}"
    );
    let (status, script) = get(&format!("{base}/status.js")).await;
    assert_eq!(status, 200);
    for text in [&page, &script] {
        assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"));
    }
    assert!(
        script.contains("fetch('/metrics'"),
        "the page plots /metrics"
    );

    // A real Prometheus scraping both, with the shipped alert rules.
    let node_target = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let probe_target = probe_metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let rules = Path::new(REPO).join("dashboards/alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: moien\n    static_configs:\n      - targets: ['{node_target}']\n\
         \x20 - job_name: moien-probe\n    static_configs:\n      - targets: ['{probe_target}']\n",
        rules = rules.display()
    );
    let config_path = tmp.0.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("prometheus.yml");
    promtool(&tmp.0, &["check", "config", "prometheus.yml"]);
    let port = free_port();
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.0.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _prometheus = Proc {
        child: cmd.spawn().expect("prometheus starts"),
        what: "prometheus",
    };
    let api = PromApi {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    };
    eventually("Prometheus ready", Duration::from_secs(30), || async {
        matches!(
            api.http.get(format!("{}/-/ready", api.base)).send().await,
            Ok(r) if r.status().is_success()
        )
    })
    .await;
    // Enough scrapes for rates over the dashboards' 15 s windows, and a probe call recorded.
    eventually(
        "ten scrapes of each target",
        Duration::from_secs(60),
        || async {
            api.query(r#"count_over_time(up{job=~"moien|moien-probe"}[30s]) >= 10 and up == 1"#)
                .await
                == Ok(2)
        },
    )
    .await;
    eventually(
        "a successful probe call scraped",
        Duration::from_secs(60),
        || async { api.query("moien_probe_success == 1").await == Ok(1) },
    )
    .await;

    // Every dashboard query, with the template variables substituted.
    let mut failures = Vec::new();
    let mut queries = 0;
    for (file, d) in dashboards() {
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let Some(def) = v["definition"].as_str() else {
                continue;
            };
            // label_values(metric{...}, label): the metric must have series with that label.
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .and_then(|s| s.rsplit_once(','));
            let Some((metric, label)) = inner else {
                failures.push(format!(
                    "{file} / ${}: unknown variable query {def}",
                    v["name"]
                ));
                continue;
            };
            let q = format!("count by ({}) ({})", label.trim(), substitute(metric));
            queries += 1;
            match api.query(&q).await {
                Ok(n) if n > 0 => {}
                r => failures.push(format!("{file} / ${}: {q} → {r:?}", v["name"])),
            }
        }
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                let q = substitute(expr);
                queries += 1;
                match api.query(&q).await {
                    Ok(n) if n > 0 => {}
                    r => failures.push(format!("{file} / {}: {q} → {r:?}", p["title"])),
                }
            }
        }
    }
    assert!(queries > 80, "only {queries} dashboard queries");

    // Every alert rule as Prometheus loaded it: evaluated without error, and its expression
    // (comparisons as `bool`) returns series, so it watches metrics that exist.
    let mut alerts = BTreeSet::new();
    eventually(
        "the alert rules evaluated",
        Duration::from_secs(30),
        || async {
            let v = api.get("/api/v1/rules", &[]).await;
            let rules: Vec<Value> = v["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            !rules.is_empty()
                && rules.iter().all(|r| {
                    r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
                })
        },
    )
    .await;
    let v = api.get("/api/v1/rules", &[]).await;
    for g in v["data"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("?").to_string();
            if r["health"] != "ok" {
                failures.push(format!(
                    "alert {name}: health {} {}",
                    r["health"], r["lastError"]
                ));
            }
            let expr = r["query"].as_str().unwrap_or("");
            let q = with_bool_comparisons(expr);
            match api.query(&q).await {
                Ok(n) if n > 0 => {}
                res => failures.push(format!("alert {name}: {q} → {res:?}")),
            }
            alerts.insert(name);
        }
    }
    for a in REQUIRED_ALERTS {
        if !alerts.contains(*a) {
            failures.push(format!("Prometheus did not load alert {a}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {queries} dashboard queries and {} alerts failed:\n{}",
        failures.len(),
        alerts.len(),
        failures.join("\n")
    );

    for c in [alice, bob, carol, dave, erin, frank] {
        let _ = c.leave().await;
    }
    println!(
        "{queries} dashboard queries and {} alerts checked in {:.1} s",
        alerts.len(),
        started.elapsed().as_secs_f64()
    );
}
