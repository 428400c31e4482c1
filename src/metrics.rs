//! The node's Prometheus metrics and the listener that serves them.
//!
//! Owns the node registry (every metric carries a `node` label), the media-plane collector that
//! turns [`WorkerSnapshot`]s into metric families at scrape time, process metrics and build info,
//! and the metrics HTTP listener: `/metrics` (text exposition) and `/status` (a few live plots for
//! an operator without Grafana). The listener is separate from the signaling port, so metrics
//! are never exposed to call clients.
//!
//! Naming: `moien_<area>_<what>_<unit>`, base units (seconds, bytes, ratios), counters end in
//! `_total`, labels from closed sets only (worker index, direction, reason): never a room, an
//! identity or an address. `tests/observability.rs` checks these rules on the live exposition.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use moien_sfu::{MediaNode, WorkerSnapshot};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use crate::config::{DEFAULT_METRICS_LISTEN, MetricsConfig};

/// The version and git commit this binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("MOIEN_GIT_COMMIT");

/// The `node` label value: the configured name, else the host name; only characters that are
/// safe in a label and in a Grafana variable.
pub fn node_name(config: &MetricsConfig) -> String {
    let raw = if config.node.trim().is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default()
    } else {
        config.node.clone()
    };
    sanitize_label(&raw).unwrap_or_else(|| "moien".into())
}

/// Keeps `[A-Za-z0-9_.-]`, at most 64 characters; `None` if nothing is left.
pub fn sanitize_label(raw: &str) -> Option<String> {
    let s: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    (!s.is_empty()).then_some(s)
}

/// A registry whose every metric carries `node="<node>"`.
pub fn node_registry(node: &str) -> prometheus::Result<Registry> {
    let labels = HashMap::from([("node".to_string(), node.to_string())]);
    Registry::new_custom(None, Some(labels))
}

/// Process metrics (CPU, memory, open file descriptors, threads) and `moien_build_info`.
pub fn register_process(registry: &Registry) -> prometheus::Result<()> {
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let info = IntGaugeVec::new(
        Opts::new(
            "moien_build_info",
            "The running build: version and git commit (always 1)",
        ),
        &["version", "commit"],
    )?;
    info.with_label_values(&[VERSION, GIT_COMMIT]).set(1);
    registry.register(Box::new(info))
}

/// Session failure reasons the media plane reports; exported at zero before the first one.
const SESSION_FAILURE_REASONS: &[&str] = &["ice_timeout", "connect_timeout", "closed", "rtc_error"];

/// One metric family the collector produces.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const fn family(
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
) -> Family {
    Family {
        name,
        help,
        kind,
        labels,
    }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

const W: &[&str] = &["worker"];
const WD: &[&str] = &["worker", "direction"];
const WR: &[&str] = &["worker", "reason"];
const WDT: &[&str] = &["worker", "direction", "type"];
const WL: &[&str] = &["worker", "layer"];

/// Every family of the media plane, in exposition order.
const SFU_FAMILIES: &[Family] = &[
    family(
        "moien_sfu_rooms",
        "Rooms hosted, per media worker",
        GAUGE,
        W,
    ),
    family(
        "moien_sfu_participants",
        "Participants (WebSocket, WHIP and WHEP sessions) hosted, per media worker",
        GAUGE,
        W,
    ),
    family(
        "moien_sfu_published_tracks",
        "Tracks published, per media worker",
        GAUGE,
        W,
    ),
    family(
        "moien_sfu_subscriptions",
        "Subscriptions (one subscriber receiving one track), per media worker",
        GAUGE,
        W,
    ),
    family(
        "moien_sfu_paused_subscriptions",
        "Video subscriptions paused (bandwidth or the subscriber's wish), per media worker",
        GAUGE,
        W,
    ),
    family(
        "moien_sfu_video_subscriptions",
        "Video subscriptions receiving media, by the layer they receive (0 lowest; 2 for 2 and above)",
        GAUGE,
        WL,
    ),
    family(
        "moien_sfu_udp_datagrams_total",
        "UDP datagrams received (in) and sent (out) on the media sockets",
        COUNTER,
        WD,
    ),
    family(
        "moien_sfu_udp_bytes_total",
        "UDP payload bytes received (in) and sent (out) on the media sockets",
        COUNTER,
        WD,
    ),
    family(
        "moien_sfu_udp_datagrams_dropped_total",
        "Datagrams no session took: unknown address, garbage, failed connectivity checks",
        COUNTER,
        W,
    ),
    family(
        "moien_sfu_rtp_packets_total",
        "RTP packets received from publishers (in) and written to subscribers (out)",
        COUNTER,
        WD,
    ),
    family(
        "moien_sfu_rtp_unknown_payload_type_total",
        "RTP packets dropped because their payload type was not negotiated",
        COUNTER,
        W,
    ),
    family(
        "moien_sfu_dependency_descriptor_unreadable_total",
        "Dependency Descriptors that could not be read (truncated, or no structure seen yet)",
        COUNTER,
        W,
    ),
    family(
        "moien_sfu_nacks_total",
        "NACKs received from subscribers (in) and sent to publishers (out)",
        COUNTER,
        WD,
    ),
    family(
        "moien_sfu_keyframe_requests_total",
        "Keyframe requests received from subscribers (in) and sent to publishers (out), by type (pli, fir)",
        COUNTER,
        WDT,
    ),
    family(
        "moien_sfu_rtx_packets_total",
        "RTX retransmissions received from publishers (in) and sent to subscribers (out)",
        COUNTER,
        WD,
    ),
    family(
        "moien_sfu_layer_switches_total",
        "Simulcast/SVC layer switches of subscriptions",
        COUNTER,
        W,
    ),
    family(
        "moien_sfu_dynacast_updates_total",
        "Changes of the layers publishers are asked to send (dynacast)",
        COUNTER,
        W,
    ),
    family(
        "moien_sfu_slow_consumers_total",
        "Participants removed because they did not read their signaling queue",
        COUNTER,
        W,
    ),
    family(
        "moien_sfu_data_messages_total",
        "Data-channel messages relayed",
        COUNTER,
        W,
    ),
    family(
        "moien_sfu_data_messages_rejected_total",
        "Data-channel messages not relayed: recipient queue full, or refused (limits, grants)",
        COUNTER,
        WR,
    ),
    family(
        "moien_sfu_send_errors_total",
        "Datagrams the kernel refused to send",
        COUNTER,
        W,
    ),
    family(
        "moien_sfu_session_failures_total",
        "Peer connections that ended badly (ICE, DTLS, timeouts), by reason",
        COUNTER,
        WR,
    ),
    family(
        "moien_sfu_busy_seconds_total",
        "Time the media worker spent handling input; its rate is the worker's busy fraction",
        COUNTER,
        W,
    ),
    family(
        "moien_sfu_forwarding_delay_seconds",
        "Time a forwarded datagram spent in the SFU: from the arrival of the packet it copies \
         (the kernel's receive timestamp) to its hand-off to the kernel",
        HISTOGRAM,
        W,
    ),
    family(
        "moien_sfu_round_trip_time_seconds",
        "Round-trip times to peers, from RTCP",
        HISTOGRAM,
        W,
    ),
    family(
        "moien_sfu_jitter_seconds",
        "Interarrival jitter that receivers report in RTCP",
        HISTOGRAM,
        W,
    ),
    family(
        "moien_sfu_packet_loss_ratio",
        "Fraction of packets lost that receivers report in RTCP (0 to 1)",
        HISTOGRAM,
        W,
    ),
    family(
        "moien_sfu_bandwidth_estimate_bytes_per_second",
        "Bandwidth estimates toward subscribers (multiply by 8 for bit/s)",
        HISTOGRAM,
        W,
    ),
    family(
        "moien_sfu_join_duration_seconds",
        "Time from a join request to the participant's media being connected",
        HISTOGRAM,
        W,
    ),
];

/// Turns the media workers' snapshots into metric families when Prometheus scrapes. The workers
/// count in plain integers on their own threads and publish a copy a few times a second; a
/// scrape copies those, so the packet path never touches a lock or an atomic for metrics.
pub struct SfuCollector {
    media: Arc<MediaNode>,
    descs: Vec<Desc>,
}

impl SfuCollector {
    pub fn new(media: Arc<MediaNode>) -> prometheus::Result<Self> {
        let descs = SFU_FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    f.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(SfuCollector { media, descs })
    }
}

impl Collector for SfuCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.media.snapshots())
    }
}

/// Label pairs in the order of the family's label names.
fn labels(names: &[&str], values: &[&str]) -> Vec<proto::LabelPair> {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name((*n).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

fn gauge(names: &[&str], values: &[&str], v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_label(labels(names, values));
    m.set_gauge(g);
    m
}

fn counter(names: &[&str], values: &[&str], v: f64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v);
    let mut m = proto::Metric::from_label(labels(names, values));
    m.set_counter(c);
    m
}

/// A worker histogram in Prometheus form; `scale` converts its unit (bits to bytes).
fn histogram(
    names: &[&str],
    values: &[&str],
    h: &moien_sfu::stats::Histogram,
    scale: f64,
) -> proto::Metric {
    let cumulative = h.cumulative();
    let mut ph = proto::Histogram::default();
    ph.set_sample_count(h.count);
    ph.set_sample_sum(h.sum * scale);
    // The last cumulative count is +Inf, which the exposition adds from sample_count.
    ph.bucket = h
        .bounds
        .iter()
        .zip(&cumulative)
        .map(|(bound, count)| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(bound * scale);
            b.set_cumulative_count(*count);
            b
        })
        .collect();
    let mut m = proto::Metric::from_label(labels(names, values));
    m.set_histogram(ph);
    m
}

/// Every family for these snapshots (worker `i` is `snapshots[i]`).
pub fn families(snapshots: &[WorkerSnapshot]) -> Vec<MetricFamily> {
    let mut out: Vec<MetricFamily> = SFU_FAMILIES
        .iter()
        .map(|f| {
            let mut mf = MetricFamily::default();
            mf.set_name(f.name.to_string());
            mf.set_help(f.help.to_string());
            mf.set_field_type(f.kind);
            mf
        })
        .collect();
    for (i, snap) in snapshots.iter().enumerate() {
        let w = i.to_string();
        let w = w.as_str();
        let s = &snap.stats;
        let g = &snap.gauges;
        let mut k = 0;
        let mut push = |metrics: Vec<proto::Metric>| {
            out[k].mut_metric().extend(metrics);
            k += 1;
        };
        push(vec![gauge(W, &[w], g.rooms as f64)]);
        push(vec![gauge(W, &[w], g.participants as f64)]);
        push(vec![gauge(W, &[w], g.published_tracks as f64)]);
        push(vec![gauge(W, &[w], g.subscriptions as f64)]);
        push(vec![gauge(W, &[w], g.paused_subscriptions as f64)]);
        push(
            ["0", "1", "2"]
                .iter()
                .zip(g.video_subscriptions_by_layer)
                .map(|(l, n)| gauge(WL, &[w, l], n as f64))
                .collect(),
        );
        let in_out = |a: u64, b: u64| {
            vec![
                counter(WD, &[w, "in"], a as f64),
                counter(WD, &[w, "out"], b as f64),
            ]
        };
        push(in_out(s.datagrams_in, s.datagrams_out));
        push(in_out(s.bytes_in, s.bytes_out));
        push(vec![counter(W, &[w], s.datagrams_dropped as f64)]);
        push(in_out(s.packets_in, s.packets_out));
        push(vec![counter(W, &[w], s.unknown_pt as f64)]);
        push(vec![counter(W, &[w], s.dd_unreadable as f64)]);
        push(in_out(s.nacks_in, s.nacks_out));
        push(vec![
            counter(WDT, &[w, "in", "pli"], s.plis_in as f64),
            counter(WDT, &[w, "in", "fir"], s.firs_in as f64),
            counter(WDT, &[w, "out", "pli"], s.plis_out as f64),
        ]);
        push(in_out(s.rtx_in, s.rtx_out));
        push(vec![counter(W, &[w], s.layer_switches as f64)]);
        push(vec![counter(W, &[w], s.dynacast_updates as f64)]);
        push(vec![counter(W, &[w], s.slow_consumers as f64)]);
        push(vec![counter(W, &[w], s.data_messages as f64)]);
        push(vec![
            counter(WR, &[w, "queue_full"], s.data_dropped as f64),
            counter(WR, &[w, "refused"], s.data_refused as f64),
        ]);
        push(vec![counter(W, &[w], s.send_errors as f64)]);
        let mut failures: Vec<proto::Metric> = SESSION_FAILURE_REASONS
            .iter()
            .filter(|r| !s.session_failures.contains_key(*r))
            .map(|r| counter(WR, &[w, r], 0.0))
            .collect();
        failures.extend(
            s.session_failures
                .iter()
                .map(|(r, n)| counter(WR, &[w, r], *n as f64)),
        );
        push(failures);
        push(vec![counter(W, &[w], s.busy_nanos as f64 / 1e9)]);
        push(vec![histogram(W, &[w], &s.forwarding_delay_seconds, 1.0)]);
        push(vec![histogram(W, &[w], &s.rtt_seconds, 1.0)]);
        push(vec![histogram(W, &[w], &s.jitter_seconds, 1.0)]);
        push(vec![histogram(W, &[w], &s.loss_ratio, 1.0)]);
        push(vec![histogram(W, &[w], &s.bwe_bps, 1.0 / 8.0)]);
        push(vec![histogram(W, &[w], &s.join_seconds, 1.0)]);
        debug_assert_eq!(k, SFU_FAMILIES.len(), "one push per family");
    }
    out
}

/// The text exposition of `registry`.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// Status page and its script: self-contained, nothing fetched from elsewhere.
const STATUS_HTML: &str = include_str!("status.html");
const STATUS_JS: &str = include_str!("status.js");
/// Only our own origin: the page loads its script and fetches `/metrics`, nothing else.
const STATUS_CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                          style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; \
                          frame-ancestors 'none'";

/// The running metrics listener.
pub struct MetricsServer {
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl MetricsServer {
    /// Serves `registry` on `listen`. A busy *default* address falls back to a free loopback
    /// port with a warning (several dev servers and test runs share a machine); an address the
    /// operator configured must be free.
    pub async fn start(listen: SocketAddr, registry: Registry) -> anyhow::Result<MetricsServer> {
        let listener = match TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) if listen == DEFAULT_METRICS_LISTEN => {
                warn!(
                    "metrics: {listen} is busy ({e}); serving on a free loopback port instead \
                     (set [metrics] listen to choose)"
                );
                TcpListener::bind(SocketAddr::new(listen.ip(), 0)).await?
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "binding the metrics listener {listen}: {e}"
                ));
            }
        };
        let local_addr = listener.local_addr()?;
        let app = router(registry);
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        });
        Ok(MetricsServer {
            local_addr,
            shutdown: tx,
            task,
        })
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// `/metrics`, `/status`, `/status.js`.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status_page))
        .route("/status.js", get(status_script))
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/status") }),
        )
        .with_state(registry)
}

async fn metrics(State(registry): State<Registry>) -> Response {
    // Encoding walks every collector; keep it off the async workers' hot path.
    let rendered = tokio::task::spawn_blocking(move || render(&registry)).await;
    match rendered {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn status_page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(STATUS_CSP),
            ),
        ],
        STATUS_HTML,
    )
        .into_response()
}

async fn status_script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(STATUS_CSP),
            ),
        ],
        STATUS_JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_cover_every_worker_and_histograms_are_cumulative() {
        let mut a = WorkerSnapshot::default();
        a.gauges.participants = 3;
        a.stats.packets_in = 10;
        a.stats.bwe_bps.observe(800_000.0);
        a.stats.session_failed("ice_timeout");
        let b = WorkerSnapshot::default();
        let fams = families(&[a, b]);
        assert_eq!(fams.len(), SFU_FAMILIES.len());
        for f in &fams {
            assert!(!f.get_metric().is_empty(), "{} has no series", f.name());
        }
        let participants = fams
            .iter()
            .find(|f| f.name() == "moien_sfu_participants")
            .unwrap();
        assert_eq!(participants.get_metric().len(), 2);
        assert_eq!(participants.get_metric()[0].get_gauge().value(), 3.0);
        let bwe = fams
            .iter()
            .find(|f| f.name() == "moien_sfu_bandwidth_estimate_bytes_per_second")
            .unwrap();
        let h = bwe.get_metric()[0].get_histogram();
        assert_eq!(h.get_sample_count(), 1);
        assert!(
            (h.get_sample_sum() - 100_000.0).abs() < 1e-6,
            "bits became bytes"
        );
        let failures = fams
            .iter()
            .find(|f| f.name() == "moien_sfu_session_failures_total")
            .unwrap();
        // Every known reason of both workers, ice_timeout once each.
        assert_eq!(
            failures.get_metric().len(),
            2 * SESSION_FAILURE_REASONS.len()
        );
    }

    #[test]
    fn registry_adds_the_node_label_and_build_info() {
        let reg = node_registry("lux-1").unwrap();
        register_process(&reg).unwrap();
        let text = render(&reg).unwrap();
        let info = text
            .lines()
            .find(|l| l.starts_with("moien_build_info{"))
            .expect("build info");
        assert!(info.contains(&format!("version=\"{VERSION}\"")), "{info}");
        assert!(info.contains("commit=\""), "{info}");
        assert!(text.contains("node=\"lux-1\""), "{text}");
    }

    #[test]
    fn node_names_are_label_safe() {
        assert_eq!(sanitize_label(" lux 1\n").as_deref(), Some("lux1"));
        assert_eq!(sanitize_label("{\"}"), None);
        let c = MetricsConfig {
            node: "a/b".into(),
            ..MetricsConfig::default()
        };
        assert_eq!(node_name(&c), "ab");
    }
}
