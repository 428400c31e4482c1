//! The Moien target: starts `moien serve --dev` as its own process (so its CPU and memory are
//! its own), or uses a server that already runs, and joins simulated participants through the
//! Rust client over the WebSocket protocol or WHEP.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use moien_client::media::AudioSendTimes;
use moien_client::{Client, ClientConfig, PacketObserver, ReceivedPacket};
use moien_protocol::TrackKind;
use moien_signaling::auth::{self, Claims, Grants};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::scenario::{Group, Member};
use crate::stats::{Kind, Packet, Recorder};

pub const DEV_SECRET: &str = "moien-dev-secret";
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A Moien server the load tester talks to.
pub struct MoienTarget {
    /// HTTP origin, e.g. `http://127.0.0.1:7880`.
    pub http: String,
    pub secret: String,
    pub pid: Option<u32>,
    /// The node's `/metrics`, for its own forwarding delay ([`crate::forwarding_delay`]).
    pub metrics: Option<String>,
    child: Option<Child>,
}

impl MoienTarget {
    /// Starts `bin serve --dev` on free loopback ports and waits for its banner.
    pub async fn spawn(bin: &std::path::Path, workers: usize) -> anyhow::Result<MoienTarget> {
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--dev",
            "--http",
            "127.0.0.1:0",
            "--media-port",
            "0",
            "--workers",
            &workers.to_string(),
        ])
        .env("RUST_LOG", "warn")
        // Only signaling and media are under test: no TURN listener (its default port, 3478, may
        // be another server's), metrics on a free port.
        .env("MOIEN_TURN_LISTEN_UDP", "[]")
        .env("MOIEN_TURN_LISTEN_TCP", "[]")
        .env("MOIEN_METRICS_LISTEN", "127.0.0.1:0")
        // Every simulated participant comes from this one address: the per-address join limit
        // (there against floods) would refuse a room of more than 50 at once.
        .env("MOIEN_LIMITS_JOIN_RATE_PER_IP", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
        crate::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            bail!("no pipes to the server");
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
        // Read both streams to the end so the server never blocks on a full pipe.
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = tx.try_send(l);
                }
            });
        }
        drop(tx);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let (mut http, mut metrics) = (None, None);
        // The banner names the HTTP origin, then the metrics URL, and ends with `media`.
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(l)) => {
                    if let Some(url) = banner_url(&l, "http") {
                        http = Some(url);
                    } else if let Some(url) = banner_url(&l, "metrics") {
                        metrics = Some(url);
                    } else if http.is_some() && l.trim_start().starts_with("media") {
                        break;
                    } else if seen.len() < 20 {
                        seen.push(l);
                    }
                    if http.is_some() && metrics.is_some() {
                        break;
                    }
                }
                Ok(None) => bail!("the server exited before listening: {}", seen.join(" | ")),
                Err(_) => bail!("the server did not print its address within 20 s"),
            }
        }
        let Some(http) = http else {
            bail!("the server's banner has no http line");
        };
        // Keep draining (bounded channel, excess dropped).
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Ok(MoienTarget {
            http,
            secret: DEV_SECRET.into(),
            pid,
            metrics,
            child: Some(child),
        })
    }

    /// A server started by someone else (or in this process, by tests).
    pub fn external(
        http: String,
        secret: String,
        pid: Option<u32>,
        metrics: Option<String>,
    ) -> MoienTarget {
        MoienTarget {
            http,
            secret,
            pid,
            metrics,
            child: None,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("{}/rtc", self.http.replacen("http", "ws", 1))
    }

    pub fn token(&self, room: &str, identity: &str, publish: bool, subscribe: bool) -> String {
        let now = auth::now_unix();
        auth::mint(
            &self.secret,
            &Claims {
                sub: identity.into(),
                room: room.into(),
                exp: now + 24 * 3_600,
                nbf: None,
                iat: Some(now),
                name: identity.into(),
                grants: Grants { publish, subscribe },
            },
        )
        .unwrap_or_default()
    }

    /// Joins one member; returns its client (and its recorder, when it receives).
    pub async fn join(
        &self,
        room: &str,
        m: &Member,
        recorder: Option<Arc<Recorder>>,
        pace: bool,
    ) -> anyhow::Result<Client> {
        let token = self.token(room, &m.identity, m.publishes(), m.subscribe);
        let config = client_config(self.ws_url(), token, m, recorder, pace);
        let fut = async {
            match &m.whep_of {
                Some(of) => Client::whep(&self.http, room, of, config).await,
                None => Client::connect(config).await,
            }
        };
        match tokio::time::timeout(JOIN_TIMEOUT, fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => bail!("{} failed to join {room}: {e}", m.identity),
            Err(_) => bail!("{} did not join {room} within {JOIN_TIMEOUT:?}", m.identity),
        }
    }

    pub async fn join_group(
        &self,
        g: &Group,
        recorders: &[Option<Arc<Recorder>>],
        pace: bool,
    ) -> anyhow::Result<Vec<Client>> {
        let mut clients = Vec::new();
        for (m, r) in g.members.iter().zip(recorders) {
            if let Some(r) = r {
                r.signaling_starts(Instant::now());
            }
            clients.push(self.join(&g.room, m, r.clone(), pace).await?);
        }
        Ok(clients)
    }

    pub async fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
    }
}

/// The client configuration of a simulated member; received packets go to `recorder`.
pub fn client_config(
    url: String,
    token: String,
    m: &Member,
    recorder: Option<Arc<Recorder>>,
    pace: bool,
) -> ClientConfig {
    let mut c = ClientConfig::new(url, token);
    c.publish_audio = m.publish_audio;
    c.publish_video = m.video.is_some();
    if let Some(v) = m.video {
        c.video = v.shape();
    }
    c.simulcast = m.video.is_some() && m.simulcast;
    c.speech = m
        .publish_audio
        .then(|| crate::voices::voice(m.speech).ok())
        .flatten();
    c.verify = false;
    c.pace_publisher = pace;
    c.on_packet = recorder.map(observer);
    c.audio_send_times = Some(audio_send_times());
    c
}

/// The one table of audio send times all simulated participants of this process share.
fn audio_send_times() -> Arc<AudioSendTimes> {
    static TIMES: std::sync::OnceLock<Arc<AudioSendTimes>> = std::sync::OnceLock::new();
    TIMES.get_or_init(Default::default).clone()
}

/// Feeds a recorder from the client's packets.
pub fn observer(r: Arc<Recorder>) -> PacketObserver {
    PacketObserver::new(move |p: &ReceivedPacket<'_>| {
        r.record(&Packet {
            stream: p.track_sid,
            kind: match p.kind {
                TrackKind::Audio => Kind::Audio,
                TrackKind::Video => Kind::Video,
            },
            seq: p.seq,
            rtp_time: p.rtp_time,
            bytes: p.payload_len + 12,
            arrival: p.arrival,
            sent_at_us: p.sent_at_us,
            now_us: moien_client::media::unix_micros(),
        })
    })
}

/// The HTTP origin from the server's banner line (`  http   http://127.0.0.1:7880 ...`).
/// The URL on the banner line named `key` (`  metrics  http://127.0.0.1:9464/metrics  ...`).
pub fn banner_url(line: &str, key: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix(key)?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let url = rest.split_whitespace().next()?;
    url.starts_with("http://")
        .then(|| url.trim_end_matches('/').to_string())
}

/// Used by the runner to time joins.
pub fn now() -> Instant {
    Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_banner() {
        assert_eq!(
            banner_url(
                "  http     http://127.0.0.1:40123  (call page, /rtc, WHIP/WHEP)",
                "http"
            ),
            Some("http://127.0.0.1:40123".into())
        );
        assert_eq!(banner_url("https://x", "http"), None);
        assert_eq!(banner_url("media    udp 127.0.0.1:5000", "http"), None);
        assert_eq!(
            banner_url(
                "  metrics  http://127.0.0.1:9464/metrics  (and /status)",
                "metrics"
            ),
            Some("http://127.0.0.1:9464/metrics".into())
        );
    }
}
