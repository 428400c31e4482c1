//! A Moien participant in Rust, on str0m: joins a room over the WebSocket protocol, publishes
//! real Opus audio and synthetic VP8 video, and reports everything it receives (payload
//! integrity, sequence continuity, first keyframe, decoded audio). Tests, the load tester and the
//! call probe use it.

pub mod external;
pub mod media;
mod peer;
pub mod relay;
pub mod shaper;
pub mod speech;

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use moien_protocol::{
    ClientMessage, PROTOCOL_VERSION, ParticipantInfo, PeerRole, PublishTrack, ServerMessage,
    SubscribedTrack, TrackKind, TrackSource,
};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid};
use str0m::rtp::{ExtensionValues, RedDecoder, RedEncoder, RedundantBlock, RtpPacket, RtpWrite};
use str0m::{Event, IceConnectionState};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::media::{OPUS_FRAME, OpusSink, OpusTone, VideoShape, Vp8Source, check_vp8};
use crate::peer::Peer;
pub use crate::relay::RelayConfig;
use crate::relay::RelayTarget;
use crate::shaper::Shaper;
use crate::speech::{SpeechRecording, SpeechSource};

/// How a simulated participant behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// WebSocket URL, e.g. `ws://127.0.0.1:7880/rtc` or `wss://moien.example.lu/rtc`.
    pub url: String,
    /// TLS for a `wss://` URL; `None`: the system's roots ([`tls_config`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub token: String,
    /// Local address for the UDP sockets.
    pub bind_ip: IpAddr,
    pub publish_audio: bool,
    pub publish_video: bool,
    pub video: VideoShape,
    pub tone_hz: f32,
    /// Verify and record every received payload (tests); off for load.
    pub verify: bool,
    /// Speech-like audio (talk spurts, pauses with DTX, real audio levels) instead of the
    /// continuous tone, encoded before the call ([`SpeechRecording::encode`]).
    pub speech: Option<Arc<SpeechRecording>>,
    /// Called for every received RTP packet, from the client's task (load measurement).
    pub on_packet: Option<PacketObserver>,
    /// Pace the published media (str0m's pacer, driven by its bandwidth estimate), as browsers
    /// do. Off, packets leave when written, so one-way latency shows only the path after the
    /// sender.
    pub pace_publisher: bool,
    /// Publish video as three simulcast layers (`q`, `h`, `f`; see
    /// [`media::simulcast_shapes`]) instead of one stream.
    pub simulcast: bool,
    /// A bottleneck on the receive side: what the subscriber connection's downlink carries,
    /// bit/s (`None`: unlimited).
    pub downlink_bps: Option<u64>,
    /// Scramble video payloads past the E2EE clear prefix with this key, and unscramble what is
    /// received, as end-to-end encrypted clients do (see [`media::e2ee_scramble`]).
    pub e2ee_key: Option<u64>,
    /// RFC 6464 level (-dBov, 0 loudest, 127 silence) of the tone's packets.
    pub tone_level: u8,
    /// Publish VP9 with this many temporal layers (SVC, L1Tn) instead of VP8.
    pub vp9_temporal: Option<u8>,
    /// Send audio as RED (RFC 2198) with the previous frame as redundancy, as browsers do.
    pub red: bool,
    /// Relay every peer connection through a TURN server (UDP), with a relayed candidate only,
    /// like a browser with `iceTransportPolicy: "relay"`.
    pub relay: Option<RelayConfig>,
    /// Drop this fraction (0..1) of the RTP/RTCP datagrams arriving on the subscriber
    /// connection, at random: network loss on the last mile, for tests and the probe's drills.
    /// Connectivity checks and DTLS are spared.
    pub downlink_loss: f64,
    /// Record the send time of every audio payload here, and look up the send time of every
    /// received one (`ReceivedPacket::sent_at_us` for audio): load measurement, where all
    /// participants share one process.
    pub audio_send_times: Option<Arc<media::AudioSendTimes>>,
}

/// What a receiver saw of one RTP packet, handed to a [`PacketObserver`].
#[derive(Debug, Clone, Copy)]
pub struct ReceivedPacket<'a> {
    pub track_sid: &'a str,
    pub participant_sid: &'a str,
    pub kind: TrackKind,
    /// Extended sequence number (no wrap).
    pub seq: u64,
    pub rtp_time: u32,
    pub payload_len: usize,
    pub marker: bool,
    /// When the datagram was handed to the client's peer connection.
    pub arrival: Instant,
    /// The sender's wall clock when it wrote the packet (microseconds since the epoch). Video
    /// carries it in the payload; audio has it when `ClientConfig::audio_send_times` is set.
    pub sent_at_us: Option<u64>,
    /// Video: first packet of a keyframe.
    pub keyframe_start: bool,
    /// RFC 6464 level (-dBov) when the packet carried one.
    pub audio_level: Option<i8>,
    /// The RTP payload (for audio, the Opus packet: the probe decodes it).
    pub payload: &'a [u8],
}

/// A callback for every received RTP packet. It runs on the client's task: keep it short.
#[derive(Clone)]
pub struct PacketObserver(pub Arc<dyn Fn(&ReceivedPacket<'_>) + Send + Sync>);

impl PacketObserver {
    pub fn new(f: impl Fn(&ReceivedPacket<'_>) + Send + Sync + 'static) -> Self {
        PacketObserver(Arc::new(f))
    }
}

impl std::fmt::Debug for PacketObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketObserver")
    }
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            tls: None,
            token: token.into(),
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            publish_audio: true,
            publish_video: true,
            video: VideoShape::default(),
            tone_hz: 440.0,
            verify: true,
            speech: None,
            on_packet: None,
            pace_publisher: true,
            simulcast: false,
            downlink_bps: None,
            e2ee_key: None,
            tone_level: 30,
            vp9_temporal: None,
            red: false,
            relay: None,
            downlink_loss: 0.0,
            audio_send_times: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server refused: {code} ({message})")]
    Refused { code: String, message: String },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("tls: {0}")]
    Tls(String),
}

/// rustls's client settings, as [`ClientConfig::tls`] takes them.
pub use rustls::ClientConfig as TlsClientConfig;

/// TLS settings for `wss://`: the system's root certificates plus `extra_ca_pem` (PEM
/// certificates of a private CA, as government networks often have), rustls with aws-lc-rs.
pub fn tls_config(extra_ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped, as browsers do.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(ClientError::Tls("no certificate in the CA file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Initial WebSocket read buffer (the server's too).
const WS_READ_BUFFER: usize = 8 * 1024;

/// Opens the WebSocket: plain for `ws://`, TLS with `tls` (or the system's roots) for `wss://`.
async fn ws_connect(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<WsStream, ClientError> {
    // tungstenite zeroes its whole read buffer before every read: at the 128 KiB default that
    // was a tenth of the load tester's CPU (152 participants), so the buffer starts as small as
    // the server's and grows only for a larger message.
    let config = Some(
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER),
    );
    if !url.starts_with("wss://") {
        return Ok(
            tokio_tungstenite::connect_async_with_config(url, config, false)
                .await?
                .0,
        );
    }
    let tls = match tls {
        Some(t) => t.clone(),
        None => tls_config(None)?,
    };
    let connector = tokio_tungstenite::Connector::Rustls(tls);
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, config, false, Some(connector))
            .await?;
    Ok(ws)
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}

/// A received video track moved to another layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerChange {
    pub at: Instant,
    pub layer: u8,
    /// The first frame received on the new layer.
    pub frame: u32,
    /// That frame is a keyframe (a decodable switch); known from any of its packets, so the
    /// loss of its first packet does not hide it.
    pub keyframe_start: bool,
}

/// What one received track looked like.
#[derive(Debug, Clone, Default)]
pub struct TrackReport {
    pub participant_sid: String,
    pub kind: Option<TrackKind>,
    pub packets: u64,
    pub bytes: u64,
    /// RTP sequence numbers as they arrived (16 bit) of the first packet and the last.
    pub first_seq: Option<u16>,
    pub last_seq: Option<u16>,
    /// Packets whose sequence number was not the previous one plus one.
    pub seq_discontinuities: u64,
    pub first_packet_at: Option<Instant>,
    /// Video: the first packet was the start of a keyframe.
    pub first_packet_keyframe: bool,
    /// Video: when the first keyframe was complete (all its packets up to the marker).
    pub first_keyframe_complete_at: Option<Instant>,
    /// Video: payloads that failed the byte-for-byte check.
    pub corrupt_payloads: u64,
    /// Hashes of received payloads (bounded), to compare with the sender's.
    pub payload_hashes: Vec<u64>,
    /// Audio: Opus packets decoded and decode errors.
    pub audio_frames_decoded: u64,
    pub audio_decode_errors: u64,
    pub last_packet_at: Option<Instant>,
    /// Largest forward jump of the sequence number (loss makes small ones; a broken rewrite
    /// makes huge ones).
    pub max_seq_jump: u16,
    /// Packets newer in sequence but older in timestamp than their predecessor.
    pub ts_backwards: u64,
    /// VP8: largest step of the PictureID between successive pictures (modulo 2^15); a
    /// simulcast switch without rewriting makes a huge one.
    pub max_picture_id_jump: u16,
    last_picture_id: Option<u16>,
    last_ts: Option<u32>,
    highest_seq: Option<u16>,
    /// Video: frames whose every packet arrived (also through retransmission): decodable.
    pub frames_complete: u64,
    /// Video: packets seen per recent frame (frame number → packets seen, packets in frame).
    frame_progress: std::collections::BTreeMap<u32, (u16, u16)>,
    /// Audio: RTP timestamps of the frames received, directly or as RED redundancy (bounded).
    pub audio_timestamps: std::collections::BTreeSet<u32>,
    /// Audio: frames only RED redundancy delivered (their own packet was lost).
    pub red_recovered: u64,
    /// Video: packets received per temporal layer (SVC streams; VP8 counts as layer 0).
    pub temporal_packets: [u64; 8],
    /// Video: the simulcast layer of the last packet, and every change of layer.
    pub layer: Option<u8>,
    pub layer_history: Vec<LayerChange>,
    /// Video: one-way latency samples in microseconds, sender clock to receiver clock (bounded).
    pub latency_us: Vec<u64>,
    /// Video key-frame assembly: frame number and packets seen of the first keyframe.
    key_frame: Option<(u32, u16, u16)>,
}

/// Everything a client observed, readable at any time.
#[derive(Debug, Default)]
pub struct Report {
    pub me: Option<ParticipantInfo>,
    /// Every signaling message received, in order (bounded).
    pub messages: Vec<ServerMessage>,
    /// Received tracks by track sid.
    pub tracks: HashMap<String, TrackReport>,
    /// Hashes of every payload this client sent (bounded).
    pub sent_hashes: HashSet<u64>,
    pub sent_audio: u64,
    pub sent_video: u64,
    pub keyframes_sent: u64,
    pub keyframe_requests: u64,
    /// Data channels that opened (labels), and data messages received (with whether they came
    /// on the reliable channel).
    pub data_channels: Vec<String>,
    pub data_received: Vec<(moien_protocol::DataReceive, bool)>,
    /// Simulcast publishers: which layers are being sent (dynacast), lowest first.
    pub active_layers: Vec<bool>,
    pub publisher_connected: bool,
    pub subscriber_connected: bool,
    /// Datagrams the downlink bottleneck (`ClientConfig::downlink_bps`) dropped, its queue full.
    pub downlink_dropped: u64,
    pub joined_at: Option<Instant>,
    /// Set when the session ended; the reason if the server gave one.
    pub closed: Option<String>,
}

const MAX_HASHES: usize = 200_000;
const MAX_MESSAGES: usize = 10_000;

impl Report {
    pub fn tracks_of(&self, participant_sid: &str) -> impl Iterator<Item = &TrackReport> {
        self.tracks
            .values()
            .filter(move |t| t.participant_sid == participant_sid)
    }

    pub fn track_of(&self, participant_sid: &str, kind: TrackKind) -> Option<&TrackReport> {
        self.tracks_of(participant_sid)
            .find(|t| t.kind == Some(kind))
    }
}

/// Commands to a running client.
#[derive(Debug)]
enum Command {
    Leave,
    /// Stop all UDP traffic but keep the WebSocket: the participant vanishes from the media
    /// plane's point of view.
    GoSilent,
    Send(ClientMessage),
    /// A remote offer for the receiving peer connection, negotiated outside the WebSocket
    /// protocol (`Client::receive_external_offer`); the answer goes back on the channel.
    ExternalOffer(ServerMessage, tokio::sync::oneshot::Sender<Option<String>>),
    /// Changes (or lifts) the downlink bottleneck.
    Downlink(Option<u64>),
    /// Changes the tone's audio level.
    ToneLevel(u8),
    /// Sends a data message (reliable or lossy channel).
    SendData(moien_protocol::DataSend, bool),
    /// The network is down for this long: no UDP in or out (the WebSocket is cut by the socket
    /// task of a resumable client).
    Cut(Duration),
}

/// A connected participant.
pub struct Client {
    report: Arc<Mutex<Report>>,
    changed: watch::Receiver<u64>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<Result<(), ClientError>>,
    pub participant: ParticipantInfo,
    /// Resumable clients: tells the socket task to drop the WebSocket for a while.
    cut: Option<mpsc::Sender<Duration>>,
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type WsResult = Result<Message, tokio_tungstenite::tungstenite::Error>;

impl Client {
    /// Connects, joins and (if configured) publishes. Returns once `joined` arrived.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        Self::connect_with(config, false).await
    }

    /// Like [`Client::connect`], and able to come back after [`Client::cut_network`] with the
    /// server's resume token (`resume`): same participant, same tracks, ICE restarts.
    pub async fn connect_resumable(config: ClientConfig) -> Result<Client, ClientError> {
        Self::connect_with(config, true).await
    }

    async fn connect_with(
        mut config: ClientConfig,
        resumable: bool,
    ) -> Result<Client, ClientError> {
        let ws = ws_connect(&config.url, config.tls.as_ref()).await?;
        let (mut sink, mut stream) = ws.split();
        let join = ClientMessage::Join {
            version: PROTOCOL_VERSION,
            token: config.token.clone(),
            room: None,
        };
        sink.send(Message::Text(to_json(&join).into())).await?;
        let joined = loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMessage>(&t) {
                    Ok(m @ ServerMessage::Joined { .. }) => break m,
                    Ok(ServerMessage::Error { code, message, .. }) => {
                        return Err(ClientError::Refused {
                            code: code.as_str().to_string(),
                            message,
                        });
                    }
                    Ok(other) => {
                        return Err(ClientError::Protocol(format!("before joined: {other:?}")));
                    }
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                },
                Some(Ok(Message::Close(f))) => {
                    return Err(ClientError::Protocol(format!(
                        "closed before joined: {f:?}"
                    )));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ClientError::Protocol("closed before joined".into())),
            }
        };
        let ServerMessage::Joined {
            participant,
            ice_servers,
            resume_token,
            ..
        } = &joined
        else {
            unreachable!("matched above")
        };
        let participant = participant.clone();
        let resume_token = resume_token.clone();
        if config.relay == Some(RelayConfig::FromServer) {
            let turn = ice_servers
                .iter()
                .find(|s| s.urls.iter().any(|u| u.starts_with("turn:")))
                .ok_or_else(|| ClientError::Protocol("joined offers no TURN server".into()))?;
            config.relay = Some(RelayConfig::Server(turn.clone()));
        }
        let report = Arc::new(Mutex::new(Report {
            me: Some(participant.clone()),
            joined_at: Some(Instant::now()),
            messages: vec![joined],
            ..Default::default()
        }));
        let (changed_tx, changed) = watch::channel(0u64);
        let (commands, rx) = mpsc::channel(64);
        let url = config.url.clone();
        let tls = config.tls.clone();
        let mut driver = Driver::new(config, report.clone(), changed_tx).await?;
        driver.websocket = true;
        if !resumable {
            let task = tokio::spawn(driver.run(sink, stream, rx));
            return Ok(Client {
                report,
                changed,
                commands,
                task,
                participant,
                cut: None,
            });
        }
        // The driver talks to channels; the socket task behind them owns the WebSocket and can
        // replace it.
        let ws = sink
            .reunite(stream)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (to_ws, from_driver) = mpsc::channel::<Message>(256);
        let (to_driver, from_ws) = mpsc::channel::<WsResult>(256);
        let (cut, cuts) = mpsc::channel(4);
        tokio::spawn(socket_task(
            ws,
            url,
            tls,
            resume_token,
            from_driver,
            to_driver,
            cuts,
        ));
        let sink = Box::pin(futures_util::sink::unfold(
            to_ws,
            |tx, m: Message| async move {
                tx.send(m)
                    .await
                    .map_err(|_| tokio_tungstenite::tungstenite::Error::ConnectionClosed)?;
                Ok::<_, tokio_tungstenite::tungstenite::Error>(tx)
            },
        ));
        let stream = Box::pin(futures_util::stream::unfold(from_ws, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }));
        let task = tokio::spawn(driver.run(sink, stream, rx));
        Ok(Client {
            report,
            changed,
            commands,
            task,
            participant,
            cut: Some(cut),
        })
    }

    /// Cuts this participant's network for `duration`: its WebSocket is dropped (no close
    /// frame) and no UDP goes in or out. Then it resumes: `resume` with the latest resume token,
    /// ICE restarts on both connections. Only for [`Client::connect_resumable`] clients.
    pub async fn cut_network(&self, duration: Duration) -> Result<(), ClientError> {
        let Some(cut) = &self.cut else {
            return Err(ClientError::Protocol("not a resumable client".into()));
        };
        let _ = self.commands.send(Command::Cut(duration)).await;
        cut.send(duration)
            .await
            .map_err(|_| ClientError::Protocol("the socket task ended".into()))
    }

    /// Publishes through WHIP (`POST {base}/whip/{room}`) instead of the WebSocket protocol.
    /// `base` is the HTTP origin, e.g. `http://127.0.0.1:7880`.
    pub async fn whip(base: &str, room: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let url = format!("{base}/whip/{room}");
        Self::http_session(url, base, config, HttpKind::Whip).await
    }

    /// Plays one participant through WHEP (`POST {base}/whep/{room}/{identity}`).
    pub async fn whep(
        base: &str,
        room: &str,
        identity: &str,
        mut config: ClientConfig,
    ) -> Result<Client, ClientError> {
        config.publish_audio = false;
        config.publish_video = false;
        let url = format!("{base}/whep/{room}/{identity}");
        Self::http_session(url, base, config, HttpKind::Whep(identity.to_string())).await
    }

    async fn http_session(
        url: String,
        base: &str,
        config: ClientConfig,
        kind: HttpKind,
    ) -> Result<Client, ClientError> {
        let token = config.token.clone();
        let report = Arc::new(Mutex::new(Report {
            joined_at: Some(Instant::now()),
            ..Default::default()
        }));
        let (changed_tx, changed) = watch::channel(0u64);
        let mut driver = Driver::new(config, report.clone(), changed_tx).await?;
        let offer = match &kind {
            HttpKind::Whip => match driver.publish_offer() {
                Some(ClientMessage::PublishOffer { sdp, .. }) => sdp,
                _ => return Err(ClientError::Protocol("nothing to publish".into())),
            },
            HttpKind::Whep(identity) => driver.whep_offer(identity)?,
        };
        let http = reqwest::Client::new();
        let resp = http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/sdp")
            .body(offer)
            .send()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = resp.status();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| format!("{base}{l}"));
        let body = resp
            .text()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if status.as_u16() != 201 {
            return Err(ClientError::Refused {
                code: status.as_u16().to_string(),
                message: body,
            });
        }
        let answer =
            SdpAnswer::from_sdp_string(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        driver.accept_http_answer(&kind, answer)?;
        driver.delete_url = location.map(|l| (l, token));
        let participant = ParticipantInfo {
            metadata: String::new(),
            sid: driver
                .delete_url
                .as_ref()
                .and_then(|(l, _)| l.rsplit('/').next().map(str::to_string))
                .unwrap_or_default(),
            identity: String::new(),
            name: String::new(),
            tracks: Vec::new(),
        };
        let (commands, rx) = mpsc::channel(64);
        let sink = futures_util::sink::drain().sink_map_err(
            |e: std::convert::Infallible| -> tokio_tungstenite::tungstenite::Error { match e {} },
        );
        let task = tokio::spawn(driver.run(sink, futures_util::stream::pending(), rx));
        Ok(Client {
            report,
            changed,
            commands,
            task,
            participant,
            cut: None,
        })
    }

    /// Reads the report.
    pub fn report<T>(&self, f: impl FnOnce(&Report) -> T) -> T {
        let r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        f(&r)
    }

    /// Waits until `f` holds on the report, re-checking whenever the report changes (and every
    /// 100 ms, for conditions about silence).
    pub async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Report) -> bool,
    ) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.report(&mut f) {
                return Ok(());
            }
            tokio::select! {
                r = self.changed.changed() => {
                    if r.is_err() {
                        // The driver ended: one last look.
                        return if self.report(&mut f) { Ok(()) } else {
                            Err(ClientError::Timeout(format!("{what} (client stopped)")))
                        };
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return if self.report(&mut f) {
                    Ok(())
                } else {
                    Err(ClientError::Timeout(what.to_string()))
                };
            }
        }
    }

    /// Sends a raw protocol message (tests of error handling).
    pub async fn send(&self, msg: ClientMessage) {
        let _ = self.commands.send(Command::Send(msg)).await;
    }

    /// Changes the receive-side bottleneck (`None` lifts it).
    pub async fn set_downlink(&self, bps: Option<u64>) {
        let _ = self.commands.send(Command::Downlink(bps)).await;
    }

    /// Sends a data message to the room (`to` empty) or to some participants.
    pub async fn send_data(&self, msg: moien_protocol::DataSend, reliable: bool) {
        let _ = self.commands.send(Command::SendData(msg, reliable)).await;
    }

    /// Changes the level (-dBov) the tone's packets announce.
    pub async fn set_tone_level(&self, level: u8) {
        let _ = self.commands.send(Command::ToneLevel(level)).await;
    }

    /// Stops sending and answering media without leaving: the server must notice by itself.
    pub async fn go_silent(&self) {
        let _ = self.commands.send(Command::GoSilent).await;
    }

    /// Leaves the room and waits for the client to stop.
    pub async fn leave(self) -> Result<(), ClientError> {
        let _ = self.commands.send(Command::Leave).await;
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        }
    }
}

fn to_json(m: &ClientMessage) -> String {
    serde_json::to_string(m).unwrap_or_default()
}

/// The latest resume token in a server message, if it carries one.
fn resume_token_of(text: &str) -> Option<String> {
    if !text.contains("\"resume_token\"") && !text.contains("\"token\"") {
        return None;
    }
    match serde_json::from_str::<ServerMessage>(text).ok()? {
        ServerMessage::Joined { resume_token, .. } => resume_token,
        ServerMessage::ResumeToken { token } => Some(token),
        _ => None,
    }
}

/// Owns the WebSocket of a resumable client. A cut drops the socket without a close frame (as a
/// dead network would), discards what the driver sends meanwhile, and after the cut opens a new
/// socket and sends `resume`; the `joined` that answers goes to the driver like any message.
async fn socket_task(
    ws: WsStream,
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut token: Option<String>,
    mut from_driver: mpsc::Receiver<Message>,
    to_driver: mpsc::Sender<WsResult>,
    mut cuts: mpsc::Receiver<Duration>,
) {
    let mut ws = Some(ws);
    loop {
        let Some(socket) = ws.as_mut() else { return };
        tokio::select! {
            m = socket.next() => {
                let Some(m) = m else { return };
                if let Ok(Message::Text(t)) = &m
                    && let Some(t) = resume_token_of(t)
                {
                    token = Some(t);
                }
                let end = !matches!(m, Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)));
                if to_driver.send(m).await.is_err() || end {
                    return;
                }
            }
            m = from_driver.recv() => match m {
                Some(m) => {
                    if socket.send(m).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = socket.close(None).await;
                    return;
                }
            },
            d = cuts.recv() => {
                let Some(d) = d else { continue };
                // Gone without a word, like a network that died.
                drop(ws.take());
                let until = tokio::time::Instant::now() + d;
                loop {
                    tokio::select! {
                        m = from_driver.recv() => if m.is_none() { return },
                        _ = tokio::time::sleep_until(until) => break,
                    }
                }
                let Some(t) = token.clone() else { return };
                match ws_connect(&url, tls.as_ref()).await {
                    Ok(mut socket) => {
                        let resume = ClientMessage::Resume { version: PROTOCOL_VERSION, token: t };
                        if socket.send(Message::Text(to_json(&resume).into())).await.is_err() {
                            return;
                        }
                        ws = Some(socket);
                    }
                    Err(e) => {
                        let e = match e {
                            ClientError::WebSocket(e) => *e,
                            e => tokio_tungstenite::tungstenite::Error::Io(std::io::Error::other(
                                e.to_string(),
                            )),
                        };
                        let _ = to_driver.send(Err(e)).await;
                        return;
                    }
                }
            }
        }
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Which standard door an HTTP session came through.
enum HttpKind {
    Whip,
    /// WHEP, playing this identity.
    Whep(String),
}

/// The rids of the three simulcast layers, lowest first.
pub const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

/// Longest a datagram waits in the downlink bottleneck before it is dropped.
const SHAPER_QUEUE: Duration = Duration::from_millis(250);

/// One simulcast layer this client sends.
struct SimulcastLayerSource {
    rid: Rid,
    source: Vp8Source,
    /// Dynacast: the server wants it.
    active: bool,
    seq: u64,
    ts: u32,
}

/// A track this client publishes.
struct Outgoing {
    mid: Mid,
    kind: TrackKind,
    seq: u64,
    ts: u32,
}

struct Driver {
    config: ClientConfig,
    report: Arc<Mutex<Report>>,
    changed: watch::Sender<u64>,
    publisher: Option<Peer>,
    subscriber: Peer,
    pending_publish: Option<SdpPendingOffer>,
    outgoing: Vec<Outgoing>,
    /// Subscriber m-lines → what they carry (from the latest `subscribe_offer`).
    incoming: HashMap<Mid, SubscribedTrack>,
    tone: Option<OpusTone>,
    speech: Option<SpeechSource>,
    video: Option<Vp8Source>,
    /// Simulcast: one source per layer, lowest first.
    layers: Vec<SimulcastLayerSource>,
    shaper: Option<Shaper>,
    /// RED sending: the negotiated RED payload type, and the last frame (next packet's
    /// redundancy).
    red_pt: Option<str0m::media::Pt>,
    last_audio: Option<Vec<u8>>,
    /// Data channels of the subscriber connection, by label.
    channels: HashMap<String, str0m::channel::ChannelId>,
    sinks: HashMap<String, OpusSink>,
    next_audio: Instant,
    next_video: Instant,
    next_ping: Instant,
    silent: bool,
    /// A cut network comes back at this time.
    silent_until: Option<Instant>,
    /// Signaling runs over the WebSocket protocol (which closes after `leave`).
    websocket: bool,
    version: u64,
    /// WHIP/WHEP session URL and bearer token, for `DELETE` on leave.
    delete_url: Option<(String, String)>,
    pending_whep: Option<SdpPendingOffer>,
}

impl Driver {
    async fn new(
        config: ClientConfig,
        report: Arc<Mutex<Report>>,
        changed: watch::Sender<u64>,
    ) -> Result<Driver, ClientError> {
        let publishing = config.publish_audio || config.publish_video;
        let relay = match &config.relay {
            None => None,
            Some(RelayConfig::Server(ice)) => Some(RelayTarget::resolve(ice).await?),
            Some(RelayConfig::FromServer) => {
                return Err(ClientError::Protocol(
                    "relay from the server's ICE servers needs a WebSocket join".into(),
                ));
            }
        };
        let publisher = if publishing {
            Some(Peer::new(config.bind_ip, config.pace_publisher, relay.as_ref()).await?)
        } else {
            None
        };
        let subscriber = Peer::new(config.bind_ip, true, relay.as_ref()).await?;
        let speech = match &config.speech {
            Some(recording) if config.publish_audio => Some(SpeechSource::new(recording.clone())),
            _ => None,
        };
        let tone = if config.publish_audio && speech.is_none() {
            Some(OpusTone::new(config.tone_hz).map_err(|e| ClientError::Protocol(e.to_string()))?)
        } else {
            None
        };
        let video = (config.publish_video && !config.simulcast).then(|| {
            let source = Vp8Source::new(config.video, rand::random());
            match config.vp9_temporal {
                Some(n) => source.vp9_temporal(n),
                None => source,
            }
        });
        let layers = if config.publish_video && config.simulcast {
            media::simulcast_shapes()
                .into_iter()
                .zip(SIMULCAST_RIDS)
                .enumerate()
                .map(|(i, (shape, rid))| SimulcastLayerSource {
                    rid: Rid::from(rid),
                    source: Vp8Source::new(shape, rand::random()).with_layer(i as u8),
                    active: true,
                    seq: u64::from(rand::random::<u16>() % 30_000),
                    ts: rand::random(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let shaper = config.downlink_bps.map(|b| Shaper::new(b, SHAPER_QUEUE));
        let now = Instant::now();
        Ok(Driver {
            config,
            report,
            changed,
            publisher,
            subscriber,
            pending_publish: None,
            outgoing: Vec::new(),
            incoming: HashMap::new(),
            tone,
            speech,
            video,
            layers,
            shaper,
            red_pt: None,
            last_audio: None,
            channels: HashMap::new(),
            sinks: HashMap::new(),
            next_audio: now,
            next_video: now,
            next_ping: now + Duration::from_secs(15),
            silent: false,
            silent_until: None,
            websocket: false,
            version: 0,
            delete_url: None,
            pending_whep: None,
        })
    }

    fn touch(&mut self) {
        self.version += 1;
        let _ = self.changed.send(self.version);
    }

    fn with_report(&mut self, f: impl FnOnce(&mut Report)) {
        {
            let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut r);
        }
        self.touch();
    }

    async fn run<S, R>(
        mut self,
        mut sink: S,
        mut stream: R,
        mut commands: mpsc::Receiver<Command>,
    ) -> Result<(), ClientError>
    where
        S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
        R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        // WHIP sessions negotiated over HTTP before the loop started.
        if self.outgoing.is_empty()
            && let Some(offer) = self.publish_offer()
        {
            sink.send(Message::Text(to_json(&offer).into())).await?;
        }
        let mut buf_pub = vec![0u8; 2048];
        let mut buf_sub = vec![0u8; 2048];
        let result = loop {
            let mut out: Vec<ClientMessage> = Vec::new();
            let deadline = self.next_deadline();
            let publisher_socket = self.publisher.as_ref().map(|p| p.socket.clone());
            let subscriber_socket = self.subscriber.socket.clone();
            tokio::select! {
                msg = stream.next() => {
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            match serde_json::from_str::<ServerMessage>(&t) {
                                Ok(m) => {
                                    if let Some(end) = self.on_server(m, &mut out) {
                                        break Ok(end);
                                    }
                                }
                                Err(e) => break Err(ClientError::Protocol(e.to_string())),
                            }
                        }
                        Some(Ok(Message::Close(f))) => break Ok(format!("closed: {f:?}")),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Err(e.into()),
                        None => break Ok("closed".into()),
                    }
                }
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Leave) => {
                        let _ = sink.send(Message::Text(to_json(&ClientMessage::Leave).into())).await;
                        if self.websocket {
                            // The server closes once it handled the leave. Closing first could
                            // reset the connection with the leave unread: the server would take
                            // it for a dropped connection and keep the participant, resumable.
                            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                while let Some(Ok(m)) = stream.next().await {
                                    if matches!(m, Message::Close(_)) {
                                        break;
                                    }
                                }
                            })
                            .await;
                        }
                        let _ = sink.close().await;
                        if let Some((url, token)) = self.delete_url.take() {
                            let _ = reqwest::Client::new().delete(url).bearer_auth(token).send().await;
                        }
                        break Ok("left".into());
                    }
                    Some(Command::GoSilent) => {
                        self.silent = true;
                        self.subscriber.silent = true;
                        if let Some(p) = self.publisher.as_mut() {
                            p.silent = true;
                        }
                    }
                    Some(Command::Send(m)) => out.push(m),
                    Some(Command::ExternalOffer(offer, reply)) => {
                        let mut answer = Vec::new();
                        self.on_server(offer, &mut answer);
                        let _ = reply.send(answer.into_iter().find_map(|m| match m {
                            ClientMessage::SubscribeAnswer { sdp } => Some(sdp),
                            _ => None,
                        }));
                    }
                    Some(Command::Downlink(bps)) => match (bps, self.shaper.as_mut()) {
                        (None, _) => {
                            // Flush what the old bottleneck still holds.
                            if let Some(mut sh) = self.shaper.take() {
                                let far = Instant::now() + Duration::from_secs(3600);
                                while let Some((src, data)) = sh.pop(far) {
                                    self.subscriber.receive(src, &data);
                                }
                            }
                        }
                        (Some(b), Some(sh)) => sh.set_rate(b),
                        (Some(b), None) => self.shaper = Some(Shaper::new(b, SHAPER_QUEUE)),
                    },
                    Some(Command::ToneLevel(l)) => self.config.tone_level = l,
                    Some(Command::SendData(msg, reliable)) => self.send_data(&msg, reliable),
                    Some(Command::Cut(d)) => {
                        self.set_silent(true);
                        self.silent_until = Some(Instant::now() + d);
                    }
                },
                r = recv_opt(publisher_socket.as_deref(), &mut buf_pub) => {
                    if let (Ok((n, src)), Some(p)) = (r, self.publisher.as_mut())
                        && !self.silent
                    {
                        p.receive(src, &buf_pub[..n]);
                    }
                }
                r = subscriber_socket.recv_from(&mut buf_sub) => {
                    if let Ok((n, src)) = r
                        && !self.silent
                        && !lost(self.config.downlink_loss, &buf_sub[..n])
                    {
                        match self.shaper.as_mut() {
                            Some(sh) => {
                                if !sh.push(Instant::now(), src, &buf_sub[..n]) {
                                    let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
                                    r.downlink_dropped += 1;
                                }
                            }
                            None => self.subscriber.receive(src, &buf_sub[..n]),
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.on_timeout(&mut out);
                }
            }
            self.pump(&mut out);
            for m in out {
                sink.send(Message::Text(to_json(&m).into())).await?;
            }
        };
        let reason = match &result {
            Ok(r) => r.clone(),
            Err(e) => e.to_string(),
        };
        self.with_report(|r| r.closed = Some(reason));
        result.map(|_| ())
    }

    fn set_silent(&mut self, silent: bool) {
        self.silent = silent;
        self.subscriber.silent = silent;
        if let Some(p) = self.publisher.as_mut() {
            p.silent = silent;
        }
    }

    /// After a resume: a new publish offer with new ICE credentials, same m-lines.
    fn restart_publisher(&mut self, out: &mut Vec<ClientMessage>) {
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        if self.outgoing.is_empty() {
            return;
        }
        let mut api = p.rtc.sdp_api();
        api.ice_restart(true);
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        self.pending_publish = Some(pending);
        out.push(ClientMessage::PublishOffer {
            sdp: offer.to_sdp_string(),
            tracks: self
                .outgoing
                .iter()
                .map(|o| PublishTrack {
                    mid: o.mid.to_string(),
                    kind: o.kind,
                    source: Some(TrackSource::default_for(o.kind)),
                    muted: false,
                })
                .collect(),
        });
    }

    fn deadline(&self) -> Instant {
        let mut d = self.next_ping.min(self.subscriber.timeout);
        if let Some(t) = self.silent_until {
            d = d.min(t);
        }
        if let Some(p) = &self.publisher {
            d = d.min(p.timeout);
            if p.connected && !self.silent {
                if self.tone.is_some() || self.speech.is_some() {
                    d = d.min(self.next_audio);
                }
                if self.video.is_some() || !self.layers.is_empty() {
                    d = d.min(self.next_video);
                }
            }
        }
        d
    }

    /// The next instant something must happen, including the downlink bottleneck.
    fn next_deadline(&self) -> Instant {
        let d = self.deadline();
        match self.shaper.as_ref().and_then(|s| s.next_release()) {
            Some(t) => d.min(t),
            None => d,
        }
    }

    fn publish_offer(&mut self) -> Option<ClientMessage> {
        let p = self.publisher.as_mut()?;
        let mut api = p.rtc.sdp_api();
        let mut tracks = Vec::new();
        if self.config.publish_audio {
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            tracks.push((mid, TrackKind::Audio));
        }
        if self.config.publish_video {
            let simulcast = self.config.simulcast.then(|| {
                let mut s = str0m::media::Simulcast::new();
                for rid in SIMULCAST_RIDS {
                    s.add_send_layer(str0m::media::SimulcastLayer::new(rid));
                }
                s
            });
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast);
            tracks.push((mid, TrackKind::Video));
        }
        let (offer, pending) = api.apply()?;
        self.pending_publish = Some(pending);
        let rng_seq = || u64::from(rand::random::<u16>() % 30_000);
        self.outgoing = tracks
            .iter()
            .map(|(mid, kind)| Outgoing {
                mid: *mid,
                kind: *kind,
                seq: rng_seq(),
                ts: rand::random(),
            })
            .collect();
        Some(ClientMessage::PublishOffer {
            sdp: offer.to_sdp_string(),
            tracks: tracks
                .into_iter()
                .map(|(mid, kind)| PublishTrack {
                    mid: mid.to_string(),
                    kind,
                    source: Some(TrackSource::default_for(kind)),
                    muted: false,
                })
                .collect(),
        })
    }

    /// A recvonly audio + video offer for WHEP.
    fn whep_offer(&mut self, identity: &str) -> Result<String, ClientError> {
        let mut api = self.subscriber.rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let video = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| ClientError::Protocol("no offer".into()))?;
        self.pending_whep = Some(pending);
        for (mid, kind) in [(audio, TrackKind::Audio), (video, TrackKind::Video)] {
            self.incoming.insert(
                mid,
                SubscribedTrack {
                    mid: mid.to_string(),
                    participant_sid: identity.to_string(),
                    track_sid: format!("whep-{mid}"),
                    kind,
                },
            );
        }
        Ok(offer.to_sdp_string())
    }

    fn accept_http_answer(
        &mut self,
        kind: &HttpKind,
        answer: SdpAnswer,
    ) -> Result<(), ClientError> {
        let r = match kind {
            HttpKind::Whip => match (self.publisher.as_mut(), self.pending_publish.take()) {
                (Some(p), Some(pending)) => p.rtc.sdp_api().accept_answer(pending, answer),
                _ => return Err(ClientError::Protocol("no pending offer".into())),
            },
            HttpKind::Whep(_) => match self.pending_whep.take() {
                Some(pending) => self.subscriber.rtc.sdp_api().accept_answer(pending, answer),
                None => return Err(ClientError::Protocol("no pending offer".into())),
            },
        };
        r.map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Handles a signaling message; returns `Some(reason)` when the session is over.
    fn on_server(&mut self, m: ServerMessage, out: &mut Vec<ClientMessage>) -> Option<String> {
        let mut end = None;
        match &m {
            ServerMessage::PublishAnswer { sdp, .. } => {
                if let (Some(p), Some(pending)) =
                    (self.publisher.as_mut(), self.pending_publish.take())
                {
                    match SdpAnswer::from_sdp_string(sdp) {
                        Ok(a) => {
                            if let Err(e) = p.rtc.sdp_api().accept_answer(pending, a) {
                                debug!("publish answer: {e}");
                            }
                        }
                        Err(e) => debug!("publish answer: {e}"),
                    }
                }
            }
            ServerMessage::SubscribeOffer { sdp, tracks } => {
                for t in tracks {
                    self.incoming.insert(Mid::from(t.mid.as_str()), t.clone());
                }
                match SdpOffer::from_sdp_string(sdp) {
                    Ok(offer) => match self.subscriber.rtc.sdp_api().accept_offer(offer) {
                        Ok(answer) => out.push(ClientMessage::SubscribeAnswer {
                            sdp: answer.to_sdp_string(),
                        }),
                        Err(e) => debug!("subscribe offer: {e}"),
                    },
                    Err(e) => debug!("subscribe offer: {e}"),
                }
            }
            ServerMessage::Leave { reason } => end = Some(format!("removed: {reason:?}")),
            // A `joined` mid-session answers our `resume`: same tracks, new network paths.
            ServerMessage::Joined { .. } => self.restart_publisher(out),
            ServerMessage::PublishLayers { layers, .. } => self.on_publish_layers(layers),
            _ => {}
        }
        self.with_report(|r| {
            if r.messages.len() < MAX_MESSAGES {
                r.messages.push(m);
            }
        });
        end
    }

    fn on_timeout(&mut self, out: &mut Vec<ClientMessage>) {
        let now = Instant::now();
        if self.silent_until.is_some_and(|t| now >= t) {
            self.silent_until = None;
            self.set_silent(false);
        }
        if let Some(sh) = self.shaper.as_mut() {
            while let Some((src, data)) = sh.pop(now) {
                self.subscriber.receive(src, &data);
            }
        }
        if now >= self.next_ping {
            self.next_ping = now + Duration::from_secs(15);
            out.push(ClientMessage::Ping {
                timestamp: now.elapsed().as_millis() as u64,
            });
        }
        self.subscriber.tick(now);
        if let Some(p) = self.publisher.as_mut() {
            p.tick(now);
        }
        if self.silent {
            return;
        }
        if now >= self.next_audio {
            self.next_audio += Duration::from_millis(20);
            if self.next_audio < now {
                self.next_audio = now + Duration::from_millis(20);
            }
            self.send_audio(now);
        }
        if now >= self.next_video {
            let fps = self.config.video.fps.max(1);
            self.next_video += Duration::from_secs(1) / fps;
            if self.next_video < now {
                self.next_video = now + Duration::from_secs(1) / fps;
            }
            self.send_video(now);
        }
    }

    fn outgoing_pt(&mut self, codec: Codec) -> Option<str0m::media::Pt> {
        let p = self.publisher.as_ref()?;
        p.rtc
            .codec_config()
            .find(|c| c.spec().codec == codec)
            .map(|c| c.pt())
    }

    fn send_audio(&mut self, now: Instant) {
        if self.red_pt.is_none()
            && let Some(p) = self.publisher.as_ref()
        {
            self.red_pt = p
                .rtc
                .codec_config()
                .find(|c| c.spec().codec == Codec::Opus)
                .and_then(|c| c.red());
        }
        if self.speech.is_some() {
            self.send_speech(now);
            return;
        }
        let Some(pt) = self.outgoing_pt(Codec::Opus) else {
            return;
        };
        let Some(packet) = self.tone.as_mut().and_then(|t| t.next_packet().ok()) else {
            return;
        };
        let Some(track) = self
            .outgoing
            .iter_mut()
            .find(|o| o.kind == TrackKind::Audio)
        else {
            return;
        };
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        if !p.connected {
            return;
        }
        let h = hash(&packet);
        let level = self.config.tone_level.min(127);
        let ext = ExtensionValues {
            audio_level: Some(-(level as i8)),
            voice_activity: Some(level < 127),
            ..Default::default()
        };
        // RED: this frame as primary, the previous one as redundancy (distance 1).
        let (pt, payload) = match self.red_pt.filter(|_| self.config.red) {
            Some(red_pt) => {
                let redundant: Vec<RedundantBlock> = self
                    .last_audio
                    .take()
                    .map(|prev| RedundantBlock {
                        pt: *pt,
                        timestamp_offset: OPUS_FRAME as u32,
                        payload: prev,
                    })
                    .into_iter()
                    .collect();
                let red = RedEncoder::encode(*pt, &packet, &redundant);
                self.last_audio = Some(packet);
                (red_pt, red)
            }
            None => (pt, packet),
        };
        // With RED the bytes on the wire are not `packet`'s.
        let wire_hash = self
            .config
            .audio_send_times
            .is_some()
            .then(|| hash(&payload));
        let write = RtpWrite::new(pt, track.seq.into(), track.ts, now, payload).ext_vals(ext);
        track.seq += 1;
        track.ts = track.ts.wrapping_add(OPUS_FRAME as u32);
        let mid = track.mid;
        if p.write(mid, write) {
            self.record_audio_sent(wire_hash);
            self.with_report(|r| {
                r.sent_audio += 1;
                if r.sent_hashes.len() < MAX_HASHES {
                    r.sent_hashes.insert(h);
                }
            });
        }
    }

    /// Notes when an audio payload (by the hash of its wire bytes) left, for its receivers.
    fn record_audio_sent(&self, wire_hash: Option<u64>) {
        if let (Some(times), Some(h)) = (&self.config.audio_send_times, wire_hash) {
            times.record(h, media::unix_micros());
        }
    }

    /// One 20 ms frame of speech: the timestamp always advances, DTX frames are not sent.
    fn send_speech(&mut self, now: Instant) {
        let Some(pt) = self.outgoing_pt(Codec::Opus) else {
            return;
        };
        let Some(track) = self
            .outgoing
            .iter_mut()
            .find(|o| o.kind == TrackKind::Audio)
        else {
            return;
        };
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        if !p.connected {
            return;
        }
        let Some(frame) = self.speech.as_mut().map(|s| s.next_frame()) else {
            return;
        };
        let ts = track.ts;
        track.ts = track.ts.wrapping_add(OPUS_FRAME as u32);
        let Some(packet) = frame.payload.clone() else {
            return;
        };
        let h = hash(&packet);
        let ext = ExtensionValues {
            audio_level: Some(-(frame.level.min(127) as i8)),
            voice_activity: Some(frame.voice),
            ..Default::default()
        };
        let write = RtpWrite::new(pt, track.seq.into(), ts, now, packet)
            .marker(frame.marker)
            .ext_vals(ext);
        track.seq += 1;
        let mid = track.mid;
        if p.write(mid, write) {
            self.record_audio_sent(Some(h));
            let verify = self.config.verify;
            self.with_report(|r| {
                r.sent_audio += 1;
                if verify && r.sent_hashes.len() < MAX_HASHES {
                    r.sent_hashes.insert(h);
                }
            });
        }
    }

    fn send_video(&mut self, now: Instant) {
        let codec = if self.config.vp9_temporal.is_some() {
            Codec::Vp9
        } else {
            Codec::Vp8
        };
        let Some(pt) = self.outgoing_pt(codec) else {
            return;
        };
        if !self.layers.is_empty() {
            self.send_simulcast(now, pt);
            return;
        }
        let Some(src) = self.video.as_mut() else {
            return;
        };
        let ticks = src.frame_duration_ticks();
        let Some(track) = self
            .outgoing
            .iter_mut()
            .find(|o| o.kind == TrackKind::Video)
        else {
            return;
        };
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        if !p.connected {
            return;
        }
        let packets = src.next_frame(media::unix_micros());
        let key = packets.first().is_some_and(|p| p.keyframe);
        let mut hashes = Vec::with_capacity(packets.len());
        let e2ee = self.config.e2ee_key;
        for mut pkt in packets {
            if let Some(k) = e2ee {
                media::e2ee_scramble(&mut pkt.payload, k);
            }
            hashes.push(hash(&pkt.payload));
            let write = RtpWrite::new(pt, track.seq.into(), track.ts, now, pkt.payload)
                .marker(pkt.marker)
                .nackable(true);
            track.seq += 1;
            p.write(track.mid, write);
        }
        track.ts = track.ts.wrapping_add(ticks);
        self.with_report(|r| {
            r.sent_video += 1;
            if key {
                r.keyframes_sent += 1;
            }
            for h in hashes {
                if r.sent_hashes.len() < MAX_HASHES {
                    r.sent_hashes.insert(h);
                }
            }
        });
    }

    /// One frame on every active simulcast layer, each on its own RTP stream.
    fn send_simulcast(&mut self, now: Instant, pt: str0m::media::Pt) {
        let Some(mid) = self
            .outgoing
            .iter()
            .find(|o| o.kind == TrackKind::Video)
            .map(|o| o.mid)
        else {
            return;
        };
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        if !p.connected {
            return;
        }
        let e2ee = self.config.e2ee_key;
        let sent_at = media::unix_micros();
        let mut hashes = Vec::new();
        let mut keys = 0;
        for layer in self.layers.iter_mut().filter(|l| l.active) {
            let ticks = layer.source.frame_duration_ticks();
            let packets = layer.source.next_frame(sent_at);
            if packets.first().is_some_and(|p| p.keyframe) {
                keys += 1;
            }
            for mut pkt in packets {
                if let Some(k) = e2ee {
                    media::e2ee_scramble(&mut pkt.payload, k);
                }
                hashes.push(hash(&pkt.payload));
                let write = RtpWrite::new(pt, layer.seq.into(), layer.ts, now, pkt.payload)
                    .marker(pkt.marker)
                    .nackable(true);
                layer.seq += 1;
                p.write_layer(mid, Some(layer.rid), write);
            }
            layer.ts = layer.ts.wrapping_add(ticks);
        }
        let verify = self.config.verify;
        self.with_report(|r| {
            r.sent_video += 1;
            r.keyframes_sent += keys;
            if verify {
                for h in hashes {
                    if r.sent_hashes.len() < MAX_HASHES {
                        r.sent_hashes.insert(h);
                    }
                }
            }
        });
    }

    /// Dynacast: the server says which layers anybody receives.
    fn on_publish_layers(&mut self, layers: &[moien_protocol::PublishLayer]) {
        for l in layers {
            if let Some(src) = self.layers.iter_mut().find(|s| s.rid.to_string() == l.rid) {
                if l.active && !src.active {
                    // Resume with a keyframe: nobody can decode the layer without one.
                    src.source.request_keyframe();
                }
                src.active = l.active;
            }
        }
        let active: Vec<bool> = self.layers.iter().map(|l| l.active).collect();
        self.with_report(|r| r.active_layers = active);
    }

    fn send_data(&mut self, msg: &moien_protocol::DataSend, reliable: bool) {
        let label = if reliable {
            moien_protocol::DATA_CHANNEL_RELIABLE
        } else {
            moien_protocol::DATA_CHANNEL_LOSSY
        };
        let (Some(&id), Ok(bytes)) = (self.channels.get(label), serde_json::to_vec(msg)) else {
            return;
        };
        if let Some(mut ch) = self.subscriber.rtc.channel(id) {
            let _ = ch.write(false, &bytes);
        }
    }

    /// Drains both peers and handles their events.
    fn pump(&mut self, _out: &mut [ClientMessage]) {
        let mut events = Vec::new();
        if let Some(p) = self.publisher.as_mut() {
            p.drain(&mut events, PeerRole::Publisher);
        }
        self.subscriber.drain(&mut events, PeerRole::Subscriber);
        for (role, ev) in events {
            self.on_event(role, ev);
        }
    }

    fn on_event(&mut self, role: PeerRole, ev: Event) {
        match ev {
            Event::Connected => self.with_report(|r| match role {
                PeerRole::Publisher => r.publisher_connected = true,
                PeerRole::Subscriber => r.subscriber_connected = true,
            }),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                debug!(?role, "ICE disconnected");
            }
            Event::KeyframeRequest(req) => {
                if let Some(v) = self.video.as_mut() {
                    v.request_keyframe();
                }
                for l in &mut self.layers {
                    if req.rid.is_none_or(|r| r == l.rid) {
                        l.source.request_keyframe();
                    }
                }
                self.with_report(|r| r.keyframe_requests += 1);
            }
            Event::RtpPacket(pkt) if role == PeerRole::Subscriber => self.on_rtp(pkt),
            Event::ChannelOpen(id, label) if role == PeerRole::Subscriber => {
                self.channels.insert(label.clone(), id);
                self.with_report(|r| r.data_channels.push(label));
            }
            Event::ChannelData(cd) if role == PeerRole::Subscriber => {
                let msg = std::str::from_utf8(&cd.data)
                    .ok()
                    .and_then(|t| serde_json::from_str::<moien_protocol::DataReceive>(t).ok());
                let lossy = self.channels.get(moien_protocol::DATA_CHANNEL_LOSSY) == Some(&cd.id);
                if let Some(m) = msg {
                    self.with_report(|r| {
                        if r.data_received.len() < MAX_MESSAGES {
                            r.data_received.push((m, !lossy));
                        }
                    });
                }
            }
            _ => {}
        }
    }

    fn on_rtp(&mut self, pkt: RtpPacket) {
        let now = Instant::now();
        let mid = {
            let mut api = self.subscriber.rtc.direct_api();
            api.stream_rx(&pkt.header.ssrc).map(|s| s.mid())
        };
        let Some(info) = mid.and_then(|m| self.incoming.get(&m)).cloned() else {
            return;
        };
        let verify = self.config.verify;
        let mut decoded = None;
        // Audio timestamps this packet delivers: its own, and with RED the earlier frames it
        // carries again (what lets a receiver fill a loss without a retransmission).
        let mut audio_ts: Vec<u32> = Vec::new();
        if verify && info.kind == TrackKind::Audio {
            let is_red = self
                .subscriber
                .rtc
                .codec_config()
                .find(|c| c.red() == Some(pkt.header.payload_type))
                .is_some();
            let primary: Option<Vec<u8>> = if is_red {
                RedDecoder::decode(&pkt.payload).ok().and_then(|blocks| {
                    for b in blocks.iter().filter(|b| !b.is_primary) {
                        audio_ts.push(pkt.header.timestamp.wrapping_sub(b.timestamp_offset));
                    }
                    blocks
                        .iter()
                        .find(|b| b.is_primary)
                        .map(|b| b.payload.to_vec())
                })
            } else {
                Some(pkt.payload.to_vec())
            };
            audio_ts.push(pkt.header.timestamp);
            let sink = match self.sinks.entry(info.track_sid.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
                std::collections::hash_map::Entry::Vacant(v) => {
                    OpusSink::new().ok().map(|s| v.insert(s))
                }
            };
            decoded = match (sink, primary) {
                (Some(s), Some(p)) => Some(s.decode(&p).is_ok()),
                (_, None) => Some(false),
                (None, _) => None,
            };
        }
        let check = (verify && info.kind == TrackKind::Video).then(|| match self.config.e2ee_key {
            Some(k) => {
                let mut clear = pkt.payload.to_vec();
                media::e2ee_scramble(&mut clear, k);
                check_vp8(&clear)
            }
            None => check_vp8(&pkt.payload),
        });
        let h = verify.then(|| hash(&pkt.payload));
        let is_vp8 = self
            .subscriber
            .rtc
            .codec_config()
            .find(|c| c.pt() == pkt.header.payload_type)
            .is_some_and(|c| c.spec().codec == str0m::format::Codec::Vp8);
        let vp8_picture_id = is_vp8.then(|| vp8_picture_id(&pkt.payload)).flatten();
        // The unwrapped sequence number: for a retransmission the header is the RTX stream's.
        let seq = *pkt.seq_no as u16;
        let rtp_ts = pkt.header.timestamp;
        let len = pkt.payload.len() as u64;
        let marker = pkt.header.marker;
        if let Some(obs) = &self.config.on_packet {
            let parsed = (info.kind == TrackKind::Video)
                .then(|| media::parse_vp8(&pkt.payload))
                .flatten();
            let sent_at_us = match (&parsed, &self.config.audio_send_times) {
                (Some(c), _) => Some(c.sent_at_us),
                (None, Some(times)) if info.kind == TrackKind::Audio => {
                    times.lookup(hash(&pkt.payload))
                }
                _ => None,
            };
            obs.0(&ReceivedPacket {
                track_sid: &info.track_sid,
                participant_sid: &info.participant_sid,
                kind: info.kind,
                seq: *pkt.seq_no,
                rtp_time: pkt.header.timestamp,
                payload_len: pkt.payload.len(),
                marker,
                arrival: pkt.timestamp,
                sent_at_us,
                keyframe_start: parsed.is_some_and(|c| c.keyframe_start),
                audio_level: pkt.header.ext_vals.audio_level,
                payload: &pkt.payload,
            });
        }
        self.with_report(|r| {
            let t = r.tracks.entry(info.track_sid.clone()).or_default();
            t.participant_sid = info.participant_sid.clone();
            t.kind = Some(info.kind);
            t.packets += 1;
            t.bytes += len;
            if let Some(last) = t.last_seq
                && seq != last.wrapping_add(1)
            {
                t.seq_discontinuities += 1;
            }
            // Newer than anything before (retransmissions fill in behind the highest).
            let forward = t.highest_seq.is_none_or(|l| {
                let d = seq.wrapping_sub(l);
                d != 0 && d < 0x8000
            });
            if forward {
                if let Some(l) = t.highest_seq {
                    t.max_seq_jump = t.max_seq_jump.max(seq.wrapping_sub(l));
                }
                t.highest_seq = Some(seq);
                if let Some(lt) = t.last_ts
                    && (rtp_ts.wrapping_sub(lt) as i32) < 0
                {
                    t.ts_backwards += 1;
                }
                t.last_ts = Some(rtp_ts);
                if let Some(pid) = vp8_picture_id
                    && t.last_picture_id != Some(pid)
                {
                    if let Some(last) = t.last_picture_id {
                        let step = pid.wrapping_sub(last) & 0x7fff;
                        t.max_picture_id_jump = t.max_picture_id_jump.max(step);
                    }
                    t.last_picture_id = Some(pid);
                }
            }
            if t.first_seq.is_none() {
                t.first_seq = Some(seq);
                t.first_packet_at = Some(now);
                t.first_packet_keyframe = matches!(check, Some(Some(c)) if c.keyframe_start);
            }
            t.last_seq = Some(seq);
            t.last_packet_at = Some(now);
            match decoded {
                Some(true) => t.audio_frames_decoded += 1,
                Some(false) => t.audio_decode_errors += 1,
                None => {}
            }
            if let Some(h) = h
                && t.payload_hashes.len() < MAX_HASHES
            {
                t.payload_hashes.push(h);
            }
            if let Some(Some(c)) = check {
                t.temporal_packets[usize::from(c.temporal.min(7))] += 1;
                track_frame_completion(t, c);
            }
            if t.audio_timestamps.len() < MAX_HASHES {
                // The packet's own timestamp is last; the others are RED redundancy.
                let own = audio_ts.len().saturating_sub(1);
                for (i, ts) in audio_ts.iter().enumerate() {
                    if t.audio_timestamps.insert(*ts) && i < own {
                        t.red_recovered += 1;
                    }
                }
            }
            if let Some(Some(c)) = check {
                // Only packets newer in sequence move the layer: a retransmission of an old
                // layer's packet arriving after a switch is not a switch back.
                if forward && t.layer != Some(c.layer) {
                    t.layer = Some(c.layer);
                    if t.layer_history.len() < 1_000 {
                        t.layer_history.push(LayerChange {
                            at: now,
                            layer: c.layer,
                            frame: c.frame,
                            keyframe_start: c.keyframe,
                        });
                    }
                }
            }
            match check {
                Some(None) => t.corrupt_payloads += 1,
                Some(Some(c)) => {
                    if t.latency_us.len() < MAX_HASHES {
                        t.latency_us
                            .push(media::unix_micros().saturating_sub(c.sent_at_us));
                    }
                    if t.first_keyframe_complete_at.is_none() {
                        track_first_keyframe(t, c, marker, now);
                    }
                }
                None => {}
            }
        });
    }
}

/// Counts frames as they complete; only recent frames are tracked (a frame that never
/// completes is forgotten after 128 newer ones).
fn track_frame_completion(t: &mut TrackReport, c: media::VideoCheck) {
    let e = t.frame_progress.entry(c.frame).or_insert((0, c.count));
    e.0 += 1;
    if e.0 == e.1 {
        t.frames_complete += 1;
        t.frame_progress.remove(&c.frame);
    }
    while t.frame_progress.len() > 128 {
        t.frame_progress.pop_first();
    }
}

impl TrackReport {
    /// The longest stretch of audio missing after the first frame, in milliseconds at 48 kHz
    /// (frames neither received nor recovered from RED).
    pub fn max_audio_gap_ms(&self) -> u64 {
        let ts: Vec<u32> = self.audio_timestamps.iter().copied().collect();
        ts.windows(2)
            .map(|w| u64::from(w[1].wrapping_sub(w[0])) * 1000 / 48_000)
            .filter(|gap| *gap < 60_000)
            .max()
            .map_or(0, |g| g.saturating_sub(20))
    }
}

/// Follows the first keyframe's packets until the marker: complete means decodable.
fn track_first_keyframe(t: &mut TrackReport, c: media::VideoCheck, marker: bool, now: Instant) {
    if c.keyframe_start && c.index == 0 {
        t.key_frame = Some((c.frame, 1, c.count));
    } else if let Some((f, seen, _)) = t.key_frame.as_mut()
        && *f == c.frame
        && c.index == *seen
    {
        *seen += 1;
    }
    if let Some((_, seen, count)) = t.key_frame
        && seen == count
        && marker
    {
        t.first_keyframe_complete_at = Some(now);
    }
}

/// Injected downlink loss: RTP/RTCP datagrams (first byte 128-191, RFC 7983) only.
fn lost(ratio: f64, datagram: &[u8]) -> bool {
    ratio > 0.0
        && datagram.first().is_some_and(|b| (128..=191).contains(b))
        && rand::random::<f64>() < ratio
}

async fn recv_opt(
    socket: Option<&tokio::net::UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The 15-bit PictureID of a VP8 payload descriptor (RFC 7741), if it has one.
fn vp8_picture_id(payload: &[u8]) -> Option<u16> {
    let (b0, b1, b2, b3) = (
        payload.first()?,
        payload.get(1)?,
        payload.get(2)?,
        payload.get(3)?,
    );
    (b0 & 0x80 != 0 && b1 & 0x80 != 0 && b2 & 0x80 != 0)
        .then(|| (u16::from(b2 & 0x7f) << 8) | u16::from(*b3))
}
