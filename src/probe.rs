//! The synthetic call probe (`moien probe`): places a two-party call through a Moien server
//! every few seconds with the Rust participant library, sends an Opus tone one way, decodes it
//! on the other side and exports what a user would have heard as Prometheus metrics.
//!
//! Owns the call procedure, the measurements (join time, time to first audio, one-way latency,
//! packet loss, tone SNR) and the `moien_probe_*` metrics. The SNR is the power of the tone
//! (least-squares fit of a sinusoid at the known frequency) against everything else in the
//! decoded signal; lost packets are concealed by the decoder, as a real receiver does, so loss,
//! jitter-induced gaps and codec damage all lower it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moien_client::media::{OPUS_FRAME, OPUS_RATE, VideoShape, unix_micros};
use moien_client::{Client, ClientConfig, ClientError, PacketObserver, RelayConfig};
use moien_protocol::TrackKind;
use moien_signaling::auth::{self, Claims, Grants};
use prometheus::{Gauge, IntCounter, IntCounterVec, Opts, Registry};
use serde::Serialize;
use tracing::{info, warn};

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The server: `http(s)://host:port` (its `/rtc` is used) or a `ws(s)://` URL of `/rtc`.
    pub url: String,
    /// TLS for an `https://`/`wss://` server; `None`: the system's roots.
    pub tls: Option<Arc<moien_client::TlsClientConfig>>,
    /// API secret: the probe mints its own short-lived tokens.
    pub secret: String,
    /// Tone measured per call, after the first audio packet.
    pub duration: Duration,
    /// Longest a whole call may take before it counts as failed.
    pub timeout: Duration,
    pub tone_hz: f32,
    /// The receiving side relays through the TURN server the join hands out.
    pub relay: bool,
    /// Drop this fraction of media datagrams at the receiver (drills and tests).
    pub inject_loss: f64,
    pub bind_ip: IpAddr,
}

impl ProbeConfig {
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        ProbeConfig {
            url: url.into(),
            tls: None,
            secret: secret.into(),
            duration: Duration::from_secs(3),
            timeout: Duration::from_secs(20),
            tone_hz: 1_000.0,
            relay: false,
            inject_loss: 0.0,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
        }
    }

    /// The WebSocket URL of `/rtc`.
    pub fn ws_url(&self) -> Result<String, ProbeError> {
        let u = self.url.trim_end_matches('/');
        let ws = if let Some(rest) = u.strip_prefix("http://") {
            format!("ws://{rest}/rtc")
        } else if let Some(rest) = u.strip_prefix("https://") {
            format!("wss://{rest}/rtc")
        } else if u.starts_with("ws://") || u.starts_with("wss://") {
            u.to_string()
        } else {
            return Err(ProbeError::Config(format!(
                "not an http(s):// or ws(s):// URL: {u}"
            )));
        };
        Ok(ws)
    }
}

/// The figures of one successful call.
#[derive(Debug, Clone, Serialize)]
pub struct CallResult {
    /// Sender's WebSocket connect until `joined`.
    pub join_seconds: f64,
    /// Sender's connect until the receiver got the first audio packet (call set-up as users
    /// wait for it: signaling, ICE, DTLS, subscription).
    pub first_audio_seconds: f64,
    /// Median one-way latency sender → SFU → receiver (video packets carry their send time; both
    /// ends share the probe's clock).
    pub one_way_latency_seconds: f64,
    /// Audio packets missing from the measured window, 0 to 1.
    pub loss_ratio: f64,
    /// Tone power over the power of everything else in the decoded audio, dB.
    pub snr_db: f64,
    pub packets_expected: u64,
    pub packets_received: u64,
}

/// Why a call failed; `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the server refused the join: {0}")]
    Refused(String),
    #[error("no audio arrived in time")]
    NoMedia,
    #[error("the call took longer than its timeout")]
    Timeout,
}

impl ProbeError {
    pub const REASONS: &'static [&'static str] =
        &["config", "connect", "refused", "no_media", "timeout"];

    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::Config(_) => "config",
            ProbeError::Connect(_) => "connect",
            ProbeError::Refused(_) => "refused",
            ProbeError::NoMedia => "no_media",
            ProbeError::Timeout => "timeout",
        }
    }
}

impl From<ClientError> for ProbeError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused { code, .. } => ProbeError::Refused(code),
            ClientError::Timeout(_) => ProbeError::NoMedia,
            other => ProbeError::Connect(other.to_string()),
        }
    }
}

/// What the receiver collected, from its packet observer.
#[derive(Default)]
struct Capture {
    /// Audio payloads by extended sequence number, within the window.
    audio: BTreeMap<u64, Vec<u8>>,
    first_audio: Option<Instant>,
    window_end: Option<Instant>,
    latency_us: Vec<u64>,
}

fn token(secret: &str, room: &str, identity: &str, publish: bool) -> Result<String, ProbeError> {
    let now = auth::now_unix();
    auth::mint(
        secret,
        &Claims {
            sub: identity.into(),
            room: room.into(),
            exp: now + 300,
            nbf: None,
            iat: Some(now),
            name: String::new(),
            grants: Grants {
                publish,
                subscribe: !publish,
            },
        },
    )
    .map_err(|e| ProbeError::Config(e.to_string()))
}

/// Places one call and measures it.
pub async fn call_once(cfg: &ProbeConfig) -> Result<CallResult, ProbeError> {
    match tokio::time::timeout(cfg.timeout, call(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout),
    }
}

async fn call(cfg: &ProbeConfig) -> Result<CallResult, ProbeError> {
    let ws = cfg.ws_url()?;
    // A fresh room per call: nothing of an earlier call (or of real users) is in it.
    let room = format!("probe-{:016x}", rand::random::<u64>());
    let capture = Arc::new(Mutex::new(Capture::default()));

    let mut rx = ClientConfig::new(&ws, token(&cfg.secret, &room, "probe-rx", false)?);
    rx.tls = cfg.tls.clone();
    rx.bind_ip = cfg.bind_ip;
    rx.publish_audio = false;
    rx.publish_video = false;
    rx.verify = false;
    rx.downlink_loss = cfg.inject_loss;
    if cfg.relay {
        rx.relay = Some(RelayConfig::FromServer);
    }
    let window = cfg.duration;
    let sink = capture.clone();
    rx.on_packet = Some(PacketObserver::new(move |p| {
        let now = Instant::now();
        let mut c = sink.lock().unwrap_or_else(|e| e.into_inner());
        match p.kind {
            TrackKind::Audio => {
                let first = *c.first_audio.get_or_insert(now);
                let end = *c.window_end.get_or_insert(first + window);
                if now <= end {
                    c.audio.insert(p.seq, p.payload.to_vec());
                }
            }
            TrackKind::Video => {
                if let Some(sent) = p.sent_at_us
                    && c.latency_us.len() < 10_000
                {
                    c.latency_us.push(unix_micros().saturating_sub(sent));
                }
            }
        }
    }));
    let receiver = Client::connect(rx).await?;

    let mut tx = ClientConfig::new(&ws, token(&cfg.secret, &room, "probe-tx", true)?);
    tx.tls = cfg.tls.clone();
    tx.bind_ip = cfg.bind_ip;
    tx.tone_hz = cfg.tone_hz;
    tx.verify = false;
    // Packets leave when written: latency is the path's, not a pacer's.
    tx.pace_publisher = false;
    // A small video stream, for its timestamps: one packet per frame at 10 fps.
    tx.video = VideoShape {
        fps: 10,
        delta_packets: 1,
        key_packets: 2,
        packet_size: 300,
    };
    let started = Instant::now();
    let sender = match Client::connect(tx).await {
        Ok(s) => s,
        Err(e) => {
            let _ = receiver.leave().await;
            return Err(e.into());
        }
    };
    let join_seconds = started.elapsed().as_secs_f64();

    let result = measure(cfg, &capture, receiver, started).await;
    let _ = sender.leave().await;
    let (first_audio, receiver) = result?;
    let _ = receiver.leave().await;

    let c = std::mem::take(&mut *capture.lock().unwrap_or_else(|e| e.into_inner()));
    let (expected, received) = match (c.audio.keys().next(), c.audio.keys().next_back()) {
        (Some(lo), Some(hi)) => (hi - lo + 1, c.audio.len() as u64),
        _ => return Err(ProbeError::NoMedia),
    };
    let pcm = decode_with_concealment(&c.audio);
    // The first 200 ms hold the decoder's start-up; the tone is judged after it.
    let skip = (OPUS_RATE as usize / 5).min(pcm.len());
    let snr_db = tone_snr_db(&pcm[skip..], f64::from(OPUS_RATE), f64::from(cfg.tone_hz))
        .ok_or(ProbeError::NoMedia)?;
    let mut lat = c.latency_us;
    lat.sort_unstable();
    let one_way_latency_seconds = lat
        .get(lat.len() / 2)
        .map_or(f64::NAN, |us| *us as f64 / 1e6);
    Ok(CallResult {
        join_seconds,
        first_audio_seconds: first_audio.as_secs_f64(),
        one_way_latency_seconds,
        loss_ratio: 1.0 - received as f64 / expected as f64,
        snr_db,
        packets_expected: expected,
        packets_received: received,
    })
}

/// Waits for the first audio packet and then for the window to pass.
async fn measure(
    cfg: &ProbeConfig,
    capture: &Arc<Mutex<Capture>>,
    mut receiver: Client,
    started: Instant,
) -> Result<(Duration, Client), ProbeError> {
    let first = receiver
        .wait_until("first audio", cfg.timeout, |_| {
            capture
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first_audio
                .is_some()
        })
        .await;
    if first.is_err() {
        let _ = receiver.leave().await;
        return Err(ProbeError::NoMedia);
    }
    let (first_audio, end) = {
        let c = capture.lock().unwrap_or_else(|e| e.into_inner());
        let first = c.first_audio.unwrap_or_else(Instant::now);
        (first, c.window_end.unwrap_or(first + cfg.duration))
    };
    tokio::time::sleep_until((end + Duration::from_millis(100)).into()).await;
    Ok((first_audio.saturating_duration_since(started), receiver))
}

/// Decodes the packets in sequence order; a missing packet is concealed by the decoder (PLC),
/// as a receiver's jitter buffer does.
pub fn decode_with_concealment(packets: &BTreeMap<u64, Vec<u8>>) -> Vec<i16> {
    let Ok(mut decoder) = opus::Decoder::new(OPUS_RATE, opus::Channels::Mono) else {
        return Vec::new();
    };
    let (Some(lo), Some(hi)) = (packets.keys().next(), packets.keys().next_back()) else {
        return Vec::new();
    };
    let mut pcm = Vec::with_capacity(((hi - lo + 1) as usize) * OPUS_FRAME);
    let mut frame = vec![0i16; OPUS_FRAME * 6];
    for seq in *lo..=*hi {
        let n = match packets.get(&seq) {
            Some(p) => decoder.decode(p, &mut frame, false),
            // Concealment produces exactly as many samples as the buffer asks for.
            None => decoder.decode(&[], &mut frame[..OPUS_FRAME], false),
        };
        match n {
            Ok(n) => pcm.extend_from_slice(&frame[..n]),
            // Undecodable counts as silence, which the SNR then shows.
            Err(_) => pcm.extend(std::iter::repeat_n(0, OPUS_FRAME)),
        }
    }
    pcm
}

/// Signal-to-noise ratio of a tone at `freq` in `pcm`, in dB. In blocks of 100 ms, the tone is
/// the least-squares fit of `a·cos + b·sin` at `freq` (after removing the block's mean); the
/// noise is what the fit leaves. `None` for less than one block.
pub fn tone_snr_db(pcm: &[i16], rate: f64, freq: f64) -> Option<f64> {
    let block = (rate / 10.0) as usize;
    if block == 0 || pcm.len() < block {
        return None;
    }
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let (mut tone, mut noise) = (0.0f64, 0.0f64);
    for chunk in pcm.chunks_exact(block) {
        let mean = chunk.iter().map(|s| f64::from(*s)).sum::<f64>() / block as f64;
        // Normal equations of the 2x2 least-squares problem.
        let (mut cc, mut ss, mut cs, mut xc, mut xs) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (i, s) in chunk.iter().enumerate() {
            let x = f64::from(*s) - mean;
            let (sn, cn) = (w * i as f64).sin_cos();
            cc += cn * cn;
            ss += sn * sn;
            cs += cn * sn;
            xc += x * cn;
            xs += x * sn;
        }
        let det = cc * ss - cs * cs;
        let (a, b) = if det.abs() > f64::EPSILON {
            ((xc * ss - xs * cs) / det, (xs * cc - xc * cs) / det)
        } else {
            (0.0, 0.0)
        };
        for (i, s) in chunk.iter().enumerate() {
            let x = f64::from(*s) - mean;
            let (sn, cn) = (w * i as f64).sin_cos();
            let fit = a * cn + b * sn;
            tone += fit * fit;
            noise += (x - fit) * (x - fit);
        }
    }
    // A perfect tone (or silence) is capped rather than infinite.
    Some(match (tone > 0.0, noise > 0.0) {
        (true, true) => (10.0 * (tone / noise).log10()).min(100.0),
        (true, false) => 100.0,
        (false, _) => -100.0,
    })
}

/// The `moien_probe_*` metrics.
#[derive(Clone)]
pub struct ProbeMetrics {
    calls: IntCounter,
    failures: IntCounterVec,
    success: Gauge,
    last_success: Gauge,
    join: Gauge,
    first_audio: Gauge,
    latency: Gauge,
    loss: Gauge,
    snr: Gauge,
}

impl ProbeMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let g = |name: &str, help: &str| -> prometheus::Result<Gauge> {
            let g = Gauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let calls = IntCounter::new("moien_probe_calls_total", "Probe calls attempted")?;
        registry.register(Box::new(calls.clone()))?;
        let failures = IntCounterVec::new(
            Opts::new(
                "moien_probe_failures_total",
                "Probe calls that failed, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        for r in ProbeError::REASONS {
            failures.with_label_values(&[r]);
        }
        let m = ProbeMetrics {
            calls,
            failures,
            success: g(
                "moien_probe_success",
                "1 if the last probe call succeeded, else 0",
            )?,
            last_success: g(
                "moien_probe_last_success_timestamp_seconds",
                "Unix time of the last successful probe call",
            )?,
            join: g(
                "moien_probe_join_duration_seconds",
                "Last call: WebSocket connect until joined",
            )?,
            first_audio: g(
                "moien_probe_first_audio_seconds",
                "Last call: connect until the other side received the first audio packet",
            )?,
            latency: g(
                "moien_probe_one_way_latency_seconds",
                "Last call: median one-way latency sender to SFU to receiver",
            )?,
            loss: g(
                "moien_probe_packet_loss_ratio",
                "Last call: fraction of audio packets lost (0 to 1)",
            )?,
            snr: g(
                "moien_probe_tone_snr_decibels",
                "Last call: tone power over noise and distortion in the decoded audio, dB",
            )?,
        };
        // Unknown until the first call: NaN, not a misleading zero.
        for q in [&m.join, &m.first_audio, &m.latency, &m.loss, &m.snr] {
            q.set(f64::NAN);
        }
        Ok(m)
    }

    pub fn record(&self, r: &Result<CallResult, ProbeError>) {
        self.calls.inc();
        match r {
            Ok(c) => {
                self.success.set(1.0);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                self.last_success.set(now);
                self.join.set(c.join_seconds);
                self.first_audio.set(c.first_audio_seconds);
                self.latency.set(c.one_way_latency_seconds);
                self.loss.set(c.loss_ratio);
                self.snr.set(c.snr_db);
            }
            Err(e) => {
                self.success.set(0.0);
                self.failures.with_label_values(&[e.reason()]).inc();
                // The quality of a call that did not happen is unknown.
                for q in [
                    &self.join,
                    &self.first_audio,
                    &self.latency,
                    &self.loss,
                    &self.snr,
                ] {
                    q.set(f64::NAN);
                }
            }
        }
    }
}

/// Calls every `interval` until `stop` resolves, recording each call in `metrics`.
pub async fn run(
    cfg: ProbeConfig,
    interval: Duration,
    metrics: ProbeMetrics,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
        }
        let r = tokio::select! {
            _ = &mut stop => return,
            r = call_once(&cfg) => r,
        };
        match &r {
            Ok(c) => info!(
                join_s = c.join_seconds,
                first_audio_s = c.first_audio_seconds,
                latency_s = c.one_way_latency_seconds,
                loss = c.loss_ratio,
                snr_db = c.snr_db,
                "probe call"
            ),
            Err(e) => warn!("probe call failed: {e}"),
        }
        metrics.record(&r);
    }
}

/// Where the probe serves its own metrics unless told otherwise (next to a node's 9464).
pub const DEFAULT_PROBE_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9465);

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, n: usize, amp: f64) -> Vec<f64> {
        (0..n)
            .map(|i| amp * (2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0).sin())
            .collect()
    }

    fn pcm(x: &[f64]) -> Vec<i16> {
        x.iter().map(|v| v.round() as i16).collect()
    }

    #[test]
    fn snr_of_a_clean_tone_is_high_and_noise_lowers_it() {
        let clean = sine(1_000.0, 48_000, 8_000.0);
        let snr = tone_snr_db(&pcm(&clean), 48_000.0, 1_000.0).unwrap();
        assert!(snr > 60.0, "{snr}");
        // Deterministic noise at a known power: 20 dB below the tone.
        let tone_power = 8_000.0f64.powi(2) / 2.0;
        let noise_amp = (tone_power / 100.0 * 3.0).sqrt(); // uniform: power = amp²/3
        let mut x = 0x1234_5678u64;
        let noisy: Vec<f64> = clean
            .iter()
            .map(|v| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v + noise_amp * ((x % 20_001) as f64 / 10_000.0 - 1.0)
            })
            .collect();
        let snr = tone_snr_db(&pcm(&noisy), 48_000.0, 1_000.0).unwrap();
        assert!((snr - 20.0).abs() < 1.0, "{snr}");
        // The wrong frequency is noise.
        let snr = tone_snr_db(&pcm(&clean), 48_000.0, 1_300.0).unwrap();
        assert!(snr < 0.0, "{snr}");
    }

    #[test]
    fn gaps_lower_the_snr() {
        let mut x = sine(1_000.0, 48_000, 8_000.0);
        // Every fifth 20 ms frame silent: 20 % loss without concealment.
        for (i, v) in x.iter_mut().enumerate() {
            if (i / 960) % 5 == 0 {
                *v = 0.0;
            }
        }
        let snr = tone_snr_db(&pcm(&x), 48_000.0, 1_000.0).unwrap();
        assert!(snr < 10.0, "{snr}");
    }

    #[test]
    fn decoding_conceals_missing_packets() {
        let mut tone = moien_client::media::OpusTone::new(1_000.0).unwrap();
        let mut packets = BTreeMap::new();
        for seq in 0..50u64 {
            let p = tone.next_packet().unwrap();
            if seq != 20 {
                packets.insert(seq, p);
            }
        }
        let pcm = decode_with_concealment(&packets);
        assert_eq!(pcm.len(), 50 * OPUS_FRAME);
        let snr = tone_snr_db(&pcm[9_600..], 48_000.0, 1_000.0).unwrap();
        assert!(snr > 10.0, "{snr}");
    }

    #[test]
    fn urls() {
        let c = ProbeConfig::new("http://127.0.0.1:7880/", "s");
        assert_eq!(c.ws_url().unwrap(), "ws://127.0.0.1:7880/rtc");
        let c = ProbeConfig::new("ws://h:1/rtc", "s");
        assert_eq!(c.ws_url().unwrap(), "ws://h:1/rtc");
        let c = ProbeConfig::new("https://moien.example.lu", "s");
        assert_eq!(c.ws_url().unwrap(), "wss://moien.example.lu/rtc");
        assert!(ProbeConfig::new("h:1", "s").ws_url().is_err());
    }
}
