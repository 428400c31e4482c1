//! Prometheus metrics of the signaling service: HTTP requests by route and status, WebSocket
//! connections, auth refusals by reason, sessions by door (WebSocket, WHIP, WHEP) and protocol
//! messages by type.
//!
//! Owns the metric names and their label values. Every label value comes from a closed set
//! (the router's route templates, status codes, protocol message types, refusal reasons): never
//! a room name, an identity, a token or an address, whatever a client sends.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use moien_protocol::ClientMessage;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Why a request was refused before it reached the media plane (label `reason`).
pub const AUTH_REASONS: &[&str] = &[
    "missing",
    "malformed",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "bad_claims",
    "unknown_key",
    "wrong_room",
    "no_grant",
];

/// The doors a participant comes through (label `kind`).
pub const SESSION_KINDS: &[&str] = &["websocket", "whip", "whep"];

/// Route label of requests no route matched: the raw path would be unbounded.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Request durations: from sub-millisecond static files to a WHIP join of a second or more.
const HTTP_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The signaling metrics. Cheap to clone (the metrics are shared); created unregistered, so a
/// server without a registry (tests, embedders) counts into the void.
#[derive(Clone)]
pub struct SignalingMetrics {
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    websockets_active: IntGauge,
    websockets_total: IntCounter,
    auth_failures: IntCounterVec,
    sessions: IntCounterVec,
    messages: IntCounterVec,
}

impl Default for SignalingMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SignalingMetrics {
    pub fn new() -> Self {
        // The names and label sets are constants: construction cannot fail at run time.
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
        };
        let m = SignalingMetrics {
            http_requests: counter(
                "moien_signaling_http_requests_total",
                "HTTP requests answered, by route template and status code",
                &["route", "status"],
            ),
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "moien_signaling_http_request_duration_seconds",
                    "Time to answer an HTTP request (a WebSocket until its upgrade), by route",
                )
                .buckets(HTTP_SECONDS.to_vec()),
                &["route"],
            )
            .expect("valid metric definition"),
            websockets_active: IntGauge::new(
                "moien_signaling_websocket_connections_active",
                "WebSocket connections open now",
            )
            .expect("valid metric definition"),
            websockets_total: IntCounter::new(
                "moien_signaling_websocket_connections_total",
                "WebSocket connections accepted",
            )
            .expect("valid metric definition"),
            auth_failures: counter(
                "moien_signaling_auth_failures_total",
                "Joins and WHIP/WHEP requests refused by token checks, by reason",
                &["reason"],
            ),
            sessions: counter(
                "moien_signaling_sessions_total",
                "Participants that joined, by door (websocket, whip, whep)",
                &["kind"],
            ),
            messages: counter(
                "moien_signaling_messages_total",
                "WebSocket protocol messages, by direction and message type",
                &["direction", "type"],
            ),
        };
        // Series at zero from the start: dashboards and alerts see every reason and door.
        for r in AUTH_REASONS {
            m.auth_failures.with_label_values(&[r]);
        }
        for k in SESSION_KINDS {
            m.sessions.with_label_values(&[k]);
        }
        m
    }

    /// Registers every metric on `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.http_requests.clone()))?;
        registry.register(Box::new(self.http_duration.clone()))?;
        registry.register(Box::new(self.websockets_active.clone()))?;
        registry.register(Box::new(self.websockets_total.clone()))?;
        registry.register(Box::new(self.auth_failures.clone()))?;
        registry.register(Box::new(self.sessions.clone()))?;
        registry.register(Box::new(self.messages.clone()))?;
        Ok(())
    }

    pub fn http_request(&self, route: &str, status: u16, started: Instant) {
        let status = status.to_string();
        self.http_requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        let h: Histogram = self.http_duration.with_label_values(&[route]);
        h.observe(started.elapsed().as_secs_f64());
    }

    /// A WebSocket opened; the gauge goes down when the guard is dropped.
    pub fn websocket_opened(&self) -> WebSocketGuard {
        self.websockets_total.inc();
        self.websockets_active.inc();
        WebSocketGuard(self.websockets_active.clone())
    }

    /// `reason` is one of [`AUTH_REASONS`].
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// `kind` is one of [`SESSION_KINDS`].
    pub fn session(&self, kind: &'static str) {
        self.sessions.with_label_values(&[kind]).inc();
    }

    /// A protocol message from a client, by its type (taken from our own serialization, so
    /// only the protocol's tags ever become label values).
    pub fn message_in(&self, m: &ClientMessage) {
        let json = serde_json::to_string(m).unwrap_or_default();
        self.messages
            .with_label_values(&["in", message_type(&json)])
            .inc();
    }

    /// A message from the client that was not a protocol message.
    pub fn invalid_message_in(&self) {
        self.messages.with_label_values(&["in", "invalid"]).inc();
    }

    /// An outgoing message, by the `type` tag at the start of its JSON text.
    pub fn message_out(&self, json: &str) {
        self.messages
            .with_label_values(&["out", message_type(json)])
            .inc();
    }
}

/// Keeps the open-WebSocket gauge right however the session ends.
pub struct WebSocketGuard(IntGauge);

impl Drop for WebSocketGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The serde tag of a serialized protocol message: internally tagged enums write `"type"`
/// first. Anything unexpected is `other`, so the label set stays closed.
fn message_type(json: &str) -> &str {
    let Some(rest) = json.strip_prefix("{\"type\":\"") else {
        return "other";
    };
    let tag = rest.split('"').next().unwrap_or("");
    if (1..=32).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        tag
    } else {
        "other"
    }
}

/// Middleware on every routed request: counts it by route template (never the raw path, which
/// carries room names and identities) and status.
pub async fn track_http(
    State(metrics): State<SignalingMetrics>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let response = next.run(req).await;
    metrics.http_request(&route, response.status().as_u16(), started);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types_come_from_the_tag_only() {
        assert_eq!(message_type(r#"{"type":"joined","room":"x"}"#), "joined");
        assert_eq!(message_type(r#"{"room":"x","type":"joined"}"#), "other");
        assert_eq!(message_type(r#"{"type":"Alice's room"}"#), "other");
        assert_eq!(message_type(""), "other");
    }

    #[test]
    fn registers_and_counts() {
        let reg = Registry::new();
        let m = SignalingMetrics::new();
        m.register(&reg).unwrap();
        {
            let _g = m.websocket_opened();
            assert_eq!(m.websockets_active.get(), 1);
        }
        assert_eq!(m.websockets_active.get(), 0);
        m.auth_failure("expired");
        m.message_in(&ClientMessage::Leave);
        m.message_out(r#"{"type":"pong","timestamp":1}"#);
        m.http_request("/whip/{room}", 201, Instant::now());
        let names: Vec<String> = reg.gather().iter().map(|f| f.name().to_owned()).collect();
        assert!(names.contains(&"moien_signaling_http_requests_total".to_owned()));
        assert!(names.contains(&"moien_signaling_messages_total".to_owned()));
        assert!(
            m.register(&reg).is_err(),
            "a second registration is refused"
        );
    }
}
