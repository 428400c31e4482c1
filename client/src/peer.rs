//! One client-side peer connection: a str0m `Rtc` (full ICE, RTP mode) and its UDP socket,
//! optionally relayed through a TURN server (see [`crate::relay`]).

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

use crate::relay::{Relay, RelayTarget};

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
    /// All media goes through this TURN allocation (relay-only), when set.
    relay: Option<Relay>,
}

impl Peer {
    /// `pace`: enable str0m's bandwidth estimation, and with it the pacer, on what this peer sends.
    /// `relay`: allocate on this TURN server and offer only the relayed candidate.
    pub async fn new(
        bind: IpAddr,
        pace: bool,
        relay: Option<&RelayTarget>,
    ) -> std::io::Result<Peer> {
        let socket = UdpSocket::bind(SocketAddr::new(bind, 0)).await?;
        let base = socket.local_addr()?;
        let relay = match relay {
            Some(target) => Some(Relay::allocate(&socket, target).await?),
            None => None,
        };
        // str0m sees the relayed address as ours: what it sends from, what arrives at.
        let local = relay.as_ref().map_or(base, |r| r.relayed);
        let config = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            // RED is negotiated so the client can send it (ClientConfig::red) and take it.
            .enable_opus(true, true)
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
        let candidate = match &relay {
            Some(r) => Candidate::relayed(r.relayed, base, "udp"),
            None => Candidate::host(local, "udp"),
        };
        if let Ok(c) = candidate {
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
            relay,
        })
    }

    pub fn receive(&mut self, source: SocketAddr, data: &[u8]) {
        let relayed;
        let (source, data) = match self.relay.as_mut() {
            // Relay-only: nothing but the TURN server's datagrams is accepted.
            Some(r) if source != r.server => return,
            Some(r) => {
                let unwrapped = r.receive(Instant::now(), data);
                self.flush_relay();
                match unwrapped {
                    Some(d) => {
                        relayed = d;
                        (relayed.0, relayed.1.as_slice())
                    }
                    None => return,
                }
            }
            None => (source, data),
        };
        let Ok(r) = Receive::new(Protocol::Udp, source, self.local, data) else {
            return;
        };
        if let Err(e) = self.rtc.handle_input(Input::Receive(Instant::now(), r)) {
            debug!("client input: {e}");
        }
        self.poll();
    }

    pub fn tick(&mut self, now: Instant) {
        if let Some(r) = self.relay.as_mut()
            && now >= r.next_timeout()
        {
            r.handle_timeout(now);
            self.flush_relay();
        }
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
                    let mut t = t.min(Instant::now() + Duration::from_secs(1));
                    if let Some(r) = &self.relay {
                        t = t.min(r.next_timeout());
                    }
                    self.timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => match self.relay.as_mut() {
                    Some(r) => {
                        r.send(Instant::now(), t.destination, &t.contents);
                        self.flush_relay();
                    }
                    None => {
                        if !self.silent {
                            let _ = self.socket.try_send_to(&t.contents, t.destination);
                        }
                    }
                },
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

    /// Sends what the relay produced to the TURN server (unless the network is "down").
    fn flush_relay(&mut self) {
        let Some(r) = self.relay.as_mut() else { return };
        let server = r.server;
        for d in r.take_outgoing() {
            if !self.silent {
                let _ = self.socket.try_send_to(&d, server);
            }
        }
    }

    /// Hands queued events to the driver (after any mutation made outside `poll`).
    pub fn drain(&mut self, out: &mut Vec<(PeerRole, Event)>, role: PeerRole) {
        self.poll();
        out.extend(self.events.drain(..).map(|e| (role, e)));
    }
}

impl Drop for Peer {
    /// Frees the TURN allocation right away: per-user quotas count live allocations, and a
    /// probe that calls every few seconds would otherwise run into them.
    fn drop(&mut self) {
        if let Some(r) = self.relay.as_mut()
            && !self.silent
        {
            let bye = r.deallocate();
            let _ = self.socket.try_send_to(&bye, r.server);
        }
    }
}
