//! Moien signaling: the axum service in front of the media plane. It owns the HTTP surface:
//! the `/rtc` WebSocket protocol (with resumption), WHIP/WHEP, access tokens, the room admin API
//! and its room registry, webhooks, TLS, rate limits, the embedded browser SDK and call page,
//! and (in dev mode only) a token endpoint for that page.

pub mod admin;
pub mod auth;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod resume;
pub mod rooms;
pub mod tls;
pub mod web;
pub mod webhook;
pub mod whip;
pub mod ws;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use moien_protocol::{ErrorCode, IceServer};
use moien_sfu::MediaNode;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::set_header::SetResponseHeaderLayer;

pub use config::SignalingConfig;

/// Largest HTTP request body (an SDP offer is a few KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Mints the ICE servers (our TURN, with short-lived credentials) for one participant.
pub type IceProvider = Arc<dyn Fn(&str) -> Vec<IceServer> + Send + Sync>;

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<SignalingConfig>,
    pub media: Arc<MediaNode>,
    pub ice: Option<IceProvider>,
    pub metrics: metrics::SignalingMetrics,
    /// The API keys tokens are checked with.
    pub keys: Arc<auth::KeyRing>,
    pub rooms: Arc<rooms::Registry>,
    pub limits: Arc<limits::Limits>,
    /// Detach/resume order per participant.
    pub slots: Arc<resume::Slots>,
    /// Turns true when the server shuts down: sessions tell their clients to go elsewhere.
    pub closing: watch::Receiver<bool>,
    /// Open WebSocket sessions, waited for at shutdown.
    pub sessions: Arc<SessionTracker>,
}

/// The address of the client of a connection (plain or TLS), for per-IP limits.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::TlsListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tls::TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// Counts open WebSocket sessions so that shutdown can wait for them to say goodbye.
#[derive(Default)]
pub struct SessionTracker {
    open: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One open session; dropping it closes it in the tracker.
pub struct SessionGuard(Arc<SessionTracker>);

impl SessionTracker {
    pub fn open(self: &Arc<Self>) -> SessionGuard {
        self.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        SessionGuard(self.clone())
    }

    /// Waits until no session is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self
            .0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

impl AppState {
    /// ICE servers for one participant: the bundled TURN server when it runs, never a
    /// third-party STUN server.
    pub fn ice_servers(&self, identity: &str) -> Vec<IceServer> {
        self.ice.as_ref().map(|f| f(identity)).unwrap_or_default()
    }
}

pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/", get(|| async { web::asset("") }))
        .route("/rtc", get(ws::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/whip/{room}",
            axum::routing::post(whip::whip_post).options(whip::options),
        )
        .route(
            "/whip/{room}/{sid}",
            axum::routing::delete(whip::whip_delete)
                .patch(whip::patch)
                .options(whip::resource_options),
        )
        .route(
            "/whep/{room}/{identity}",
            axum::routing::post(whip::whep_post).options(whip::options),
        )
        .route(
            "/whep/{room}/{identity}/{sid}",
            axum::routing::delete(whip::whep_delete)
                .patch(whip::patch)
                .options(whip::resource_options),
        )
        .route(
            "/{file}",
            get(|Path(file): Path<String>| async move { web::asset(&file) }),
        )
        .merge(admin::routes(state.clone()));
    if state.config.dev {
        app = app.route("/dev/token", get(dev_token));
    }
    // Counted by route template; unmatched paths under one label (raw paths name rooms).
    let app = app
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track_http,
        ))
        .fallback(not_found);
    let app = match cors(&state.config.cors_origins) {
        Some(layer) => app.layer(layer),
        None => app,
    };
    app.layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(web::CSP),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .with_state(state)
}

/// CORS for browser pages of other origins (`[signaling] cors_origins`); none by default, so
/// browsers allow the same origin only.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::PATCH,
                axum::http::Method::DELETE,
                axum::http::Method::OPTIONS,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::LOCATION, header::ETAG, header::LINK])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The address a request is attributed to for per-address limits: the connection's peer or, when
/// that peer is a trusted proxy, the nearest untrusted address of `X-Forwarded-For` (proxies append
/// on the right, so addresses left of the first untrusted one are the client's to invent).
pub fn client_ip(config: &SignalingConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: &IpAddr| config.trusted_proxies.iter().any(|n| n.contains(ip));
    let mut client = peer.to_canonical();
    if !trusted(&client) {
        return client;
    }
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for hop in line.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip.to_canonical();
            if !trusted(&client) {
                return client;
            }
        }
    }
    client
}

/// Whether a browser page of `origin` may open `/rtc`: its own origin, or one configured.
pub fn origin_allowed(config: &SignalingConfig, origin: &str, host: Option<&str>) -> bool {
    let origin = origin.trim_end_matches('/');
    if config
        .cors_origins
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/') == origin)
    {
        return true;
    }
    // Same origin: the page's host:port is the one the request was sent to.
    let page_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((page_host, host), (Some(p), Some(h)) if p.eq_ignore_ascii_case(h))
}

#[derive(Deserialize)]
struct DevTokenQuery {
    room: String,
    identity: String,
    #[serde(default)]
    name: String,
}

/// Dev mode only: a token for the call page (publish + subscribe, one hour).
async fn dev_token(State(state): State<AppState>, Query(q): Query<DevTokenQuery>) -> Response {
    let Some((kid, secret)) = state.keys.signing("") else {
        return whip::error(ErrorCode::Internal, "no API key");
    };
    let claims = auth::AccessClaims {
        iss: kid.to_string(),
        sub: q.identity,
        room: q.room,
        exp: auth::now_unix() + 3600,
        nbf: None,
        iat: Some(auth::now_unix()),
        name: q.name,
        metadata: String::new(),
        grants: auth::AccessGrants {
            publish: true,
            subscribe: true,
            publish_data: Some(true),
            ..auth::AccessGrants::default()
        },
    };
    let ok = |s: &str| !s.is_empty() && s.len() <= auth::MAX_CLAIM_LEN;
    if !ok(&claims.sub)
        || !ok(&claims.room)
        || claims.room == auth::ANY_ROOM
        || claims.name.len() > auth::MAX_CLAIM_LEN
    {
        return whip::error(ErrorCode::BadRequest, "room and identity: 1-128 characters");
    }
    match auth::mint(secret, &claims) {
        Ok(token) => axum::Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => whip::error(ErrorCode::Internal, e.to_string()),
    }
}

async fn not_found(State(state): State<AppState>) -> axum::http::StatusCode {
    let status = axum::http::StatusCode::NOT_FOUND;
    let now = std::time::Instant::now();
    state
        .metrics
        .http_request(metrics::UNMATCHED_ROUTE, status.as_u16(), now);
    status
}

/// Resolves once `rx` turns true (or its sender is gone). The watch guard stays inside, so the
/// future is `Send` wherever it is awaited.
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// How long shutdown waits for sessions to tell their clients before closing anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A running HTTP(S) server.
pub struct Server {
    pub local_addr: SocketAddr,
    /// Whether it serves HTTPS/WSS.
    pub tls: bool,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    sessions: Arc<SessionTracker>,
    webhooks: Option<Arc<webhook::Webhooks>>,
    events: Option<tokio::task::JoinHandle<()>>,
    events_stop: watch::Sender<bool>,
}

impl Server {
    /// Binds `config.listen` and serves until [`Server::shutdown`]. Plain HTTP is refused on an
    /// address other than loopback unless `allow_insecure_http` is set.
    pub async fn start(
        config: SignalingConfig,
        media: Arc<MediaNode>,
        ice: Option<IceProvider>,
        metrics: metrics::SignalingMetrics,
    ) -> std::io::Result<Server> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let keys = auth::KeyRing::new(&config.secret, &config.keys);
        if keys.is_empty() {
            return Err(invalid(
                "no API key: set [auth] secret or [auth] keys".into(),
            ));
        }
        let certs = match (&config.tls_cert_path, &config.tls_key_path) {
            (Some(cert), Some(key)) => Some(
                tls::CertStore::load(tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .map_err(invalid)?,
            ),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "TLS needs both tls_cert_path and tls_key_path".into(),
                ));
            }
        };
        if certs.is_none() && !config.listen.ip().is_loopback() && !config.allow_insecure_http {
            return Err(invalid(format!(
                "refusing plain HTTP on {}: set [signaling] tls_cert_path and tls_key_path, or \
                 allow_insecure_http = true behind a TLS-terminating proxy",
                config.listen
            )));
        }
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let (tx, mut rx) = watch::channel(false);
        let webhooks = match keys.signing(&config.webhooks.key) {
            Some((kid, secret)) => {
                webhook::Webhooks::start(&config.webhooks, (kid.to_string(), secret.to_string()))
            }
            None => None,
        };
        let registry = rooms::Registry::new(config.rooms.clone(), webhooks.clone());
        // Stopped after the sessions: their departures still become webhooks.
        let (events_stop, events_rx) = watch::channel(false);
        let events = media
            .take_events()
            .map(|events| tokio::spawn(registry.clone().run(media.clone(), events, events_rx)));
        let sessions = Arc::new(SessionTracker::default());
        let slots = Arc::new(resume::Slots::default());
        {
            // Slots of participants that never came back.
            let (slots, mut stop) = (slots.clone(), tx.subscribe());
            let forget_after = config.resume_window + std::time::Duration::from_secs(30);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
                loop {
                    tokio::select! {
                        _ = tick.tick() => slots.sweep(forget_after),
                        _ = stopped(&mut stop) => return,
                    }
                }
            });
        }
        let state = AppState {
            limits: Arc::new(limits::Limits::new(&config.limits)),
            config: Arc::new(config),
            media,
            ice,
            metrics,
            keys: Arc::new(keys),
            rooms: registry,
            slots,
            closing: tx.subscribe(),
            sessions: sessions.clone(),
        };
        let interval = state.config.tls_reload_interval;
        let app = router(state).into_make_service_with_connect_info::<ClientAddr>();
        let stopped = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let task = match &certs {
            Some(store) => {
                store.watch(interval, tx.subscribe());
                let listener =
                    tls::TlsListener::new(listener, store.server_config().map_err(invalid)?)?;
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await
                })
            }
            None => tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }),
        };
        Ok(Server {
            local_addr,
            tls: certs.is_some(),
            shutdown: tx,
            task,
            sessions,
            webhooks,
            events,
            events_stop,
        })
    }

    /// Tells every WebSocket client to reconnect elsewhere (`leave {reason: server_shutdown}`,
    /// close 1001), stops accepting, lets in-flight requests finish and webhooks drain briefly.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.sessions.idle()).await;
        let _ = self.task.await;
        let _ = self.events_stop.send(true);
        if let Some(e) = self.events {
            let _ = e.await;
        }
        if let Some(w) = self.webhooks {
            w.shutdown(std::time::Duration::from_secs(2)).await;
        }
    }
}
