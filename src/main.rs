//! `moien`: the command line. `serve` runs the roles, `token` mints access tokens, `probe`
//! places synthetic calls and exports their quality as metrics.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use moien::probe::{DEFAULT_PROBE_LISTEN, ProbeConfig, ProbeMetrics};
use moien::{Config, Node, Role, config::DEV_SECRET};
use moien_signaling::auth;

mod admin_cli;

/// jemalloc instead of glibc's malloc: 2-6.5 % more forwarded packets per CPU-second, measured
/// side by side (docs/PERFORMANCE.md, "Fourteenth pass"), for about a third more memory per
/// video participant, still under the 1 MiB goal.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "moien",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("MOIEN_GIT_COMMIT"), ")"),
    about = "Sovereign media backend for end-to-end encrypted calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (signaling, media; all roles in one process).
    Serve(ServeArgs),
    /// Print an access token (HS256 JWT) the server accepts.
    Token(TokenArgs),
    /// Rooms through the admin API: list, create, delete.
    #[command(subcommand)]
    Rooms(admin_cli::RoomsCommand),
    /// Participants through the admin API: list, remove.
    #[command(subcommand)]
    Participants(admin_cli::ParticipantsCommand),
    /// Place a two-party test call every interval and export its quality as metrics.
    Probe(ProbeArgs),
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// The server's HTTP address, e.g. http://127.0.0.1:7880 (or its ws://.../rtc URL).
    #[arg(long)]
    url: String,
    /// API secret of that server: the probe mints its own short-lived tokens.
    #[arg(long, env = "MOIEN_SECRET", hide_env_values = true)]
    secret: String,
    /// Time between calls.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Tone measured per call.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// A call taking longer than this fails.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Listener of the probe's own /metrics and /status; port 0 picks a free one.
    #[arg(long, default_value_t = DEFAULT_PROBE_LISTEN)]
    listen: SocketAddr,
    /// `node` label of the probe's metrics: the name of the node it probes (default: the URL's
    /// host name, or `probe` when that is an address).
    #[arg(long)]
    node: Option<String>,
    /// The receiving side relays through the server's TURN (checks TURN as well).
    #[arg(long)]
    relay: bool,
    /// Drop this fraction of media packets at the receiver (an alerting drill).
    #[arg(long, default_value_t = 0.0)]
    inject_loss: f64,
    /// Local address of the probe's media sockets.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// PEM certificates of the CA that signed an https:// server's certificate, trusted besides
    /// the system's roots (a private CA).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Place one call, print its figures as JSON and exit (non-zero if it failed).
    #[arg(long)]
    once: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Development mode: loopback only, a fixed printed secret, the dev token endpoint.
    #[arg(long)]
    dev: bool,
    /// Configuration file (TOML); see docs/CONFIG.md.
    #[arg(long, env = "MOIEN_CONFIG")]
    config: Option<PathBuf>,
    /// API secret that signs access tokens (overrides [auth] secret).
    #[arg(long, env = "MOIEN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Address advertised in ICE candidates (repeat for several); default: the media bind address.
    #[arg(long = "public-ip")]
    public_ip: Vec<IpAddr>,
    /// HTTP listen address (overrides [signaling] listen). Port 0 picks a free port.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Media bind address (overrides [media] bind).
    #[arg(long)]
    media_bind: Option<IpAddr>,
    /// First media UDP port (overrides [media] port). 0 picks free ports.
    #[arg(long)]
    media_port: Option<u16>,
    /// Media worker threads (overrides [media] workers); 0 = one per core.
    #[arg(long)]
    workers: Option<usize>,
    /// Roles to run: `all` (default) or `turn` (the TURN/STUN server alone).
    #[arg(long, value_enum, default_value_t = Role::All)]
    role: Role,
    /// TURN REST-API shared secret (default: the API secret).
    #[arg(long, env = "MOIEN_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// TEST ONLY: let TURN relay to loopback peers (e.g. turnutils_peer). Refused outside --dev.
    #[arg(long)]
    turn_allow_loopback_peers: bool,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The room; `*` with --admin for an every-room admin token.
    #[arg(long)]
    room: String,
    #[arg(long)]
    identity: String,
    /// Display name.
    #[arg(long, default_value = "")]
    name: String,
    /// Application metadata of the participant (shown to the room).
    #[arg(long, default_value = "")]
    metadata: String,
    /// Grant publishing.
    #[arg(long)]
    publish: bool,
    /// Grant subscribing.
    #[arg(long)]
    subscribe: bool,
    /// Grant sending data messages (without it, data follows --publish).
    #[arg(long)]
    publish_data: bool,
    /// Sources it may publish (default: any): camera, microphone, screen.
    #[arg(long, value_delimiter = ',', value_parser = parse_source)]
    sources: Vec<moien_protocol::TrackSource>,
    /// Observer: receives, never announced to the room.
    #[arg(long)]
    hidden: bool,
    /// Grant the room admin API for --room (every room with --room '*').
    #[arg(long)]
    admin: bool,
    /// Lifetime, e.g. 30m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Valid only from this long from now on, e.g. 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    not_before: Option<Duration>,
    #[command(flatten)]
    key: admin_cli::KeyArgs,
}

fn parse_source(s: &str) -> Result<moien_protocol::TrackSource, String> {
    use moien_protocol::TrackSource;
    match s.trim() {
        "camera" => Ok(TrackSource::Camera),
        "microphone" => Ok(TrackSource::Microphone),
        "screen" => Ok(TrackSource::Screen),
        other => Err(format!("{other:?}: one of camera, microphone, screen")),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::Rooms(c) => admin_cli::rooms(c),
        Command::Participants(c) => admin_cli::participants(c),
        Command::Probe(args) => probe(args),
    }
}

fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..1.0).contains(&args.inject_loss),
        "--inject-loss is a fraction in [0, 1)"
    );
    let mut cfg = ProbeConfig::new(args.url.clone(), args.secret);
    cfg.duration = args.duration;
    cfg.timeout = args.timeout;
    cfg.relay = args.relay;
    cfg.inject_loss = args.inject_loss;
    cfg.bind_ip = args.bind;
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?;
        cfg.tls = Some(moien_client::tls_config(Some(&pem))?);
    }
    cfg.ws_url()?;
    init_logging(&moien::config::LogConfig::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("moien-probe")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        if args.once {
            let r = moien::probe::call_once(&cfg).await;
            return match r {
                Ok(c) => {
                    println!("{}", serde_json::to_string(&c)?);
                    Ok(())
                }
                Err(e) => Err(anyhow::anyhow!("probe call failed: {e}")),
            };
        }
        let node = args
            .node
            .as_deref()
            .and_then(moien::metrics::sanitize_label)
            .unwrap_or_else(|| probe_node_name(&args.url));
        // Only moien_probe_*: process metrics and build info would pass the probe off as a node
        // (its `node` label is the probed node's name).
        let registry = moien::metrics::node_registry(&node)?;
        let metrics = ProbeMetrics::new(&registry)?;
        let server = moien::metrics::MetricsServer::start(args.listen, registry).await?;
        println!("moien probe {} of {}", env!("CARGO_PKG_VERSION"), args.url);
        println!("  node     {node}");
        // The metrics line comes last: scripts wait for it.
        println!("  metrics  http://{}/metrics", server.local_addr);
        moien::probe::run(cfg, args.interval, metrics, shutdown_signal()).await;
        server.shutdown().await;
        Ok(())
    })
}

/// The URL's host when it is a name (one probe per node), else `probe`: label values never
/// carry addresses.
fn probe_node_name(url: &str) -> String {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_ok() {
        return "probe".into();
    }
    moien::metrics::sanitize_label(host).unwrap_or_else(|| "probe".into())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let (kid, secret) = args.key.signing()?;
    let now = auth::now_unix();
    let claims = auth::AccessClaims {
        iss: kid,
        sub: args.identity,
        exp: now + args.not_before.map_or(0, |d| d.as_secs()) + args.ttl.as_secs(),
        nbf: args.not_before.map(|d| now + d.as_secs()),
        iat: Some(now),
        name: args.name,
        metadata: args.metadata,
        grants: auth::AccessGrants {
            // An every-room token administers; it joins nothing.
            join: args.room != auth::ANY_ROOM,
            publish: args.publish,
            subscribe: args.subscribe,
            publish_data: args.publish_data.then_some(true),
            sources: args.sources,
            hidden: args.hidden,
            room_admin: args.admin,
            recorder: false,
        },
        room: args.room,
    };
    println!("{}", auth::mint(&secret, &claims)?);
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(s) = args.secret {
        config.auth.secret = s;
    }
    if args.dev {
        config.signaling.dev = true;
        if config.auth.secret.is_empty() {
            config.auth.secret = DEV_SECRET.to_string();
        }
    }
    if !args.public_ip.is_empty() {
        config.media.public_ips = args.public_ip;
    }
    if let Some(a) = args.http {
        config.signaling.listen = a;
    }
    if let Some(b) = args.media_bind {
        config.media.bind = b;
    }
    if let Some(p) = args.media_port {
        config.media.port = p;
    }
    if let Some(w) = args.workers {
        config.media.workers = w;
    }
    if let Some(t) = args.turn_secret {
        config.turn.secrets = vec![t];
    }
    if args.turn_allow_loopback_peers {
        config.turn.allow_loopback_peers = true;
    }
    anyhow::ensure!(
        !config.turn.allow_loopback_peers || args.dev,
        "--turn-allow-loopback-peers (allow_loopback_peers) is a test switch: only with --dev"
    );
    init_logging(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("moien-control")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let dev = config.signaling.dev;
        let secret = config.auth.secret.clone();
        let node = Node::start_roles(config, args.role).await?;
        print_banner(&node, dev, &secret);
        shutdown_signal().await;
        println!("moien: shutting down");
        node.shutdown().await;
        Ok(())
    })
}

fn print_banner(node: &Node, dev: bool, secret: &str) {
    let mode = if dev {
        " (dev mode: every role on this machine)"
    } else {
        ""
    };
    println!("moien {}{mode}", env!("CARGO_PKG_VERSION"));
    if node.media.is_some() {
        println!(
            "  http     {}://{}  call page, /rtc, /whip, /whep, /api/v1",
            if node.https { "https" } else { "http" },
            node.http
        );
    }
    println!(
        "  metrics  http://{}/metrics  (and /status)",
        node.metrics_addr
    );
    if let Some(t) = &node.turn {
        let mut listeners: Vec<String> = Vec::new();
        listeners.extend(t.udp_addrs.iter().map(|a| format!("udp {a}")));
        listeners.extend(t.tcp_addrs.iter().map(|a| format!("tcp {a}")));
        listeners.extend(t.tls_addrs.iter().map(|a| format!("tls {a}")));
        println!("  turn     {}", listeners.join(", "));
    }
    if dev {
        println!("  secret   {secret}  (dev only; --secret or MOIEN_SECRET to change)");
        println!("  token    moien token --room demo --identity alice --publish --subscribe");
    }
    // The media line comes last: scripts wait for it to know the server is up.
    let media: Vec<String> = node
        .media_addrs
        .iter()
        .map(|a| format!("udp {a}"))
        .collect();
    if media.is_empty() {
        println!("  media    none (role without media)");
    } else {
        println!("  media    {}", media.join(", "));
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn init_logging(log: &moien::config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    // Logs on stderr; stdout carries only the banner, which scripts parse.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if log.format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
