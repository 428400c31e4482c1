//! The admin subcommands (`moien rooms ...`, `moien participants ...`) and the signing-key choice
//! they share with `moien token`: they mint a short-lived every-room admin token and call the
//! server's REST API (`/api/v1/`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use moien::Config;
use moien::config::DEV_SECRET;
use moien_signaling::auth::{self, ANY_ROOM, AccessClaims};

/// Lifetime of the admin token a command mints for itself.
const ADMIN_TOKEN_TTL: u64 = 60;

/// Which key signs: `--key`/`--secret`, else the configuration, else the dev secret.
#[derive(clap::Args, Debug, Clone)]
pub struct KeyArgs {
    /// API secret (default: the secret of --key in --config, else [auth] secret, else the
    /// first of [auth] keys, else the dev secret).
    #[arg(long, env = "MOIEN_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// API key id (the token's `iss`); its secret comes from --secret or [auth] keys.
    #[arg(long, env = "MOIEN_API_KEY")]
    pub key: Option<String>,
    #[arg(long, env = "MOIEN_CONFIG")]
    pub config: Option<PathBuf>,
}

impl KeyArgs {
    /// (key id, secret) to sign with.
    pub fn signing(&self) -> anyhow::Result<(String, String)> {
        if let Some(secret) = &self.secret {
            return Ok((self.key.clone().unwrap_or_default(), secret.clone()));
        }
        let c = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(key) = &self.key {
            return match c.auth.keys.get(key) {
                Some(s) => Ok((key.clone(), s.clone())),
                None => bail!("no key {key:?} in [auth] keys (give its secret with --secret)"),
            };
        }
        if !c.auth.secret.is_empty() {
            return Ok((String::new(), c.auth.secret));
        }
        if let Some((k, s)) = c.auth.keys.iter().next() {
            return Ok((k.clone(), s.clone()));
        }
        Ok((String::new(), DEV_SECRET.to_string()))
    }
}

/// Where the server is and how to sign.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server's base URL, e.g. https://moien.example.org (default: [signaling] listen of
    /// --config, on loopback when it listens on every address).
    #[arg(long, env = "MOIEN_URL")]
    pub url: Option<String>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum RoomsCommand {
    /// List every room.
    List(ServerArgs),
    /// Create a room (or show it, if it exists).
    Create {
        room: String,
        /// Join cap (0: none).
        #[arg(long)]
        max_participants: Option<u32>,
        /// A room nobody joins is finished after this long.
        #[arg(long, value_parser = humantime::parse_duration)]
        empty_timeout: Option<Duration>,
        /// A room is finished this long after its last participant left.
        #[arg(long, value_parser = humantime::parse_duration)]
        departure_timeout: Option<Duration>,
        #[arg(long)]
        metadata: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a room: ends the call for everyone in it.
    Delete {
        room: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ParticipantsCommand {
    /// List the participants of a room.
    List {
        room: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a participant from a room.
    Remove {
        room: String,
        identity: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    json: bool,
}

impl Api {
    fn new(args: &ServerArgs) -> anyhow::Result<Api> {
        let base = match &args.url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let c = Config::load(args.key.config.as_deref(), std::env::vars())?;
                let mut addr = c.signaling.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let scheme = if c.signaling.tls_cert_path.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{addr}")
            }
        };
        let (kid, secret) = args.key.signing()?;
        let claims = AccessClaims::admin(&kid, "moien-cli", ANY_ROOM, ADMIN_TOKEN_TTL);
        let token = auth::mint(&secret, &claims)?;
        let http = moien_signaling::webhook::http_client(Duration::from_secs(15))?;
        Ok(Api {
            base,
            token,
            http,
            json: args.json,
        })
    }

    fn url(&self, path: &[&str]) -> String {
        let mut u = format!("{}/api/v1", self.base);
        for p in path {
            u.push('/');
            u.push_str(&encode(p));
        }
        u
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &[&str],
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = self.url(path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: serde_json::Value = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        if !status.is_success() {
            let code = value["code"].as_str().unwrap_or("error");
            let msg = value["message"].as_str().unwrap_or("");
            bail!("{status}: {code}: {msg}");
        }
        Ok(value)
    }
}

/// Percent-encodes one path segment.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_rooms(api: &Api, v: &serde_json::Value) {
    if api.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let rooms: Vec<&serde_json::Value> = match v.as_array() {
        Some(a) => a.iter().collect(),
        None => vec![v],
    };
    println!("{:<32} {:>12} {:>7}  SID", "ROOM", "PARTICIPANTS", "TRACKS");
    for r in rooms {
        println!(
            "{:<32} {:>12} {:>7}  {}",
            r["name"].as_str().unwrap_or(""),
            r["num_participants"].as_u64().unwrap_or(0),
            r["num_published_tracks"].as_u64().unwrap_or(0),
            r["sid"].as_str().unwrap_or(""),
        );
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

pub fn rooms(cmd: RoomsCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            RoomsCommand::List(server) => {
                let api = Api::new(&server)?;
                let v = api.call(reqwest::Method::GET, &["rooms"], None).await?;
                print_rooms(&api, &v);
            }
            RoomsCommand::Create {
                room,
                max_participants,
                empty_timeout,
                departure_timeout,
                metadata,
                server,
            } => {
                let api = Api::new(&server)?;
                let body = serde_json::json!({
                    "name": room,
                    "max_participants": max_participants,
                    "empty_timeout": empty_timeout.map(|d| d.as_secs()),
                    "departure_timeout": departure_timeout.map(|d| d.as_secs()),
                    "metadata": metadata,
                });
                let v = api
                    .call(reqwest::Method::POST, &["rooms"], Some(body))
                    .await?;
                print_rooms(&api, &v);
            }
            RoomsCommand::Delete { room, server } => {
                let api = Api::new(&server)?;
                api.call(reqwest::Method::DELETE, &["rooms", &room], None)
                    .await?;
                println!("deleted room {room}");
            }
        }
        Ok(())
    })
}

pub fn participants(cmd: ParticipantsCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            ParticipantsCommand::List { room, server } => {
                let api = Api::new(&server)?;
                let v = api
                    .call(
                        reqwest::Method::GET,
                        &["rooms", &room, "participants"],
                        None,
                    )
                    .await?;
                if api.json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!("{:<32} {:<24} {:>7}  SID", "IDENTITY", "NAME", "TRACKS");
                    for p in v.as_array().into_iter().flatten() {
                        println!(
                            "{:<32} {:<24} {:>7}  {}",
                            p["identity"].as_str().unwrap_or(""),
                            p["name"].as_str().unwrap_or(""),
                            p["tracks"].as_array().map_or(0, Vec::len),
                            p["sid"].as_str().unwrap_or(""),
                        );
                    }
                }
            }
            ParticipantsCommand::Remove {
                room,
                identity,
                server,
            } => {
                let api = Api::new(&server)?;
                api.call(
                    reqwest::Method::DELETE,
                    &["rooms", &room, "participants", &identity],
                    None,
                )
                .await?;
                println!("removed {identity} from {room}");
            }
        }
        Ok(())
    })
}
