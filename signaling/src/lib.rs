//! Moien signaling: the axum service in front of the media plane. It owns the HTTP surface:
//! the `/rtc` WebSocket protocol, WHIP/WHEP, access tokens, the embedded browser SDK and call
//! page, and (in dev mode only) a token endpoint for that page.

pub mod auth;
pub mod config;
pub mod metrics;
pub mod web;
pub mod whip;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, header};
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
        );
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

#[derive(Deserialize)]
struct DevTokenQuery {
    room: String,
    identity: String,
    #[serde(default)]
    name: String,
}

/// Dev mode only: a token for the call page (publish + subscribe, one hour).
async fn dev_token(State(state): State<AppState>, Query(q): Query<DevTokenQuery>) -> Response {
    let claims = auth::Claims {
        sub: q.identity,
        room: q.room,
        exp: auth::now_unix() + 3600,
        nbf: None,
        iat: Some(auth::now_unix()),
        name: q.name,
        grants: auth::Grants {
            publish: true,
            subscribe: true,
        },
    };
    let ok = |s: &str| !s.is_empty() && s.len() <= auth::MAX_CLAIM_LEN;
    if !ok(&claims.sub) || !ok(&claims.room) || claims.name.len() > auth::MAX_CLAIM_LEN {
        return whip::error(ErrorCode::BadRequest, "room and identity: 1-128 characters");
    }
    match auth::mint(&state.config.secret, &claims) {
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

/// A running HTTP server.
pub struct Server {
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds `config.listen` and serves until [`Server::shutdown`].
    pub async fn start(
        config: SignalingConfig,
        media: Arc<MediaNode>,
        ice: Option<IceProvider>,
        metrics: metrics::SignalingMetrics,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let state = AppState {
            config: Arc::new(config),
            media,
            ice,
            metrics,
        };
        let app = router(state);
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        });
        Ok(Server {
            local_addr,
            shutdown: tx,
            task,
        })
    }

    /// Stops accepting, lets in-flight requests finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}
