//! One client-side peer connection: a str0m `Rtc` (full ICE, RTP mode) and its UDP socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moien_protocol::PeerRole;
use str0m::bwe::Bitrate;
use str0m::media::{Mid, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tracing::debug;

pub(crate) struct Peer {
    pub rtc: Rtc,
    pub socket: Arc<UdpSocket>,
    local: SocketAddr,
    pub timeout: Instant,
    pub connected: bool,
    /// The network is "down": nothing leaves this peer.
    pub silent: bool,
    /// Events waiting for the driver.
    events: Vec<Event>,
}

impl Peer {
    /// `pace`: enable str0m's bandwidth estimation, and with it the pacer, on what this peer sends.
    pub async fn new(bind: IpAddr, pace: bool) -> std::io::Result<Peer> {
        let socket = UdpSocket::bind(SocketAddr::new(bind, 0)).await?;
        let local = socket.local_addr()?;
        let config = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_vp9(true)
            .enable_h264(true)
            .enable_av1(true);
        let config = if pace {
            config.enable_bwe(Some(Bitrate::kbps(2_000)))
        } else {
            config
        };
        let mut rtc = config.build(Instant::now());
        if let Ok(c) = Candidate::host(local, "udp") {
            rtc.add_local_candidate(c);
        }
        Ok(Peer {
            rtc,
            socket: Arc::new(socket),
            local,
            timeout: Instant::now(),
            connected: false,
            silent: false,
            events: Vec::new(),
        })
    }

    pub fn receive(&mut self, source: SocketAddr, data: &[u8]) {
        let Ok(r) = Receive::new(Protocol::Udp, source, self.local, data) else {
            return;
        };
        if let Err(e) = self.rtc.handle_input(Input::Receive(Instant::now(), r)) {
            debug!("client input: {e}");
        }
        self.poll();
    }

    pub fn tick(&mut self, now: Instant) {
        if now >= self.timeout {
            let _ = self.rtc.handle_input(Input::Timeout(now));
            self.poll();
        }
    }

    /// Writes one RTP packet on `mid`; false when the stream is not ready.
    pub fn write(&mut self, mid: Mid, write: RtpWrite) -> bool {
        self.write_layer(mid, None, write)
    }

    /// Writes one RTP packet on `mid`'s simulcast layer `rid`.
    pub fn write_layer(&mut self, mid: Mid, rid: Option<Rid>, write: RtpWrite) -> bool {
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, rid) else {
            return false;
        };
        tx.write_rtp(write);
        self.poll();
        true
    }

    fn poll(&mut self) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.timeout = t.min(Instant::now() + Duration::from_secs(1));
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    if !self.silent {
                        let _ = self.socket.try_send_to(&t.contents, t.destination);
                    }
                }
                Ok(Output::Event(e)) => {
                    if matches!(e, Event::Connected) {
                        self.connected = true;
                    }
                    self.events.push(e);
                }
                Err(e) => {
                    debug!("client rtc: {e}");
                    self.timeout = Instant::now() + Duration::from_secs(1);
                    return;
                }
            }
        }
    }

    /// Hands queued events to the driver (after any mutation made outside `poll`).
    pub fn drain(&mut self, out: &mut Vec<(PeerRole, Event)>, role: PeerRole) {
        self.poll();
        out.extend(self.events.drain(..).map(|e| (role, e)));
    }
}
