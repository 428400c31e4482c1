//! `moien`: the command line. `serve` runs the roles, `token` mints access tokens.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use moien::{Config, Node, Role, config::DEV_SECRET};
use moien_signaling::auth;

#[derive(Parser)]
#[command(
    name = "moien",
    version,
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
    #[arg(long)]
    room: String,
    #[arg(long)]
    identity: String,
    /// Display name.
    #[arg(long, default_value = "")]
    name: String,
    /// Grant publishing.
    #[arg(long)]
    publish: bool,
    /// Grant subscribing.
    #[arg(long)]
    subscribe: bool,
    /// Lifetime, e.g. 30m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// API secret (default: [auth] secret of --config, else the dev secret).
    #[arg(long, env = "MOIEN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    #[arg(long, env = "MOIEN_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match args.secret {
        Some(s) => s,
        None => {
            let c = Config::load(args.config.as_deref(), std::env::vars())?;
            if c.auth.secret.is_empty() {
                DEV_SECRET.to_string()
            } else {
                c.auth.secret
            }
        }
    };
    let now = auth::now_unix();
    let claims = auth::Claims {
        sub: args.identity,
        room: args.room,
        exp: now + args.ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        name: args.name,
        grants: auth::Grants {
            publish: args.publish,
            subscribe: args.subscribe,
        },
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
            "  http     http://{}  call page, /rtc, /whip, /whep",
            node.http
        );
    }
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
    println!("  media    {}", media.join(", "));
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
