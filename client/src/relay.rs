//! Media through a TURN server: a peer connection whose only local candidate is a relayed one,
//! like a browser with `iceTransportPolicy: "relay"`.
//!
//! Owns one TURN/UDP allocation per peer connection: the Allocate exchange (401 challenge, then
//! long-term credentials), a channel binding per remote address (which also installs and
//! refreshes its permission), ChannelData framing both ways, retransmission of requests, and
//! the refreshes that keep the allocation and channels alive. The STUN/TURN encoding is
//! `turn::client::TurnClient`'s; this module adds time and state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use moien_protocol::IceServer;
use tokio::net::UdpSocket;
use tracing::debug;
use turn::client::{TurnClient, channel_data, parse_data_indication};
use turn::framing::{CHANNEL_MIN, ChannelData, Kind, classify};
use turn::stun::Class;

/// How a client relays its media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayConfig {
    /// Through the TURN server and credentials the server hands out in `joined` (WebSocket
    /// sessions only).
    FromServer,
    /// Through this TURN server: the first `turn:` URL with UDP transport is used.
    Server(IceServer),
}

/// A TURN server resolved to an address, with its credentials.
#[derive(Debug, Clone)]
pub(crate) struct RelayTarget {
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
}

impl RelayTarget {
    /// Picks the first `turn:host:port` URL whose transport is UDP and resolves it.
    pub async fn resolve(ice: &IceServer) -> std::io::Result<RelayTarget> {
        let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
        let (Some(username), Some(password)) = (&ice.username, &ice.credential) else {
            return Err(invalid("the TURN server has no credentials"));
        };
        let hostport = ice
            .urls
            .iter()
            .filter_map(|u| udp_turn_hostport(u))
            .next()
            .ok_or_else(|| invalid("no turn: URL with UDP transport"))?;
        let server = tokio::net::lookup_host(hostport.as_str())
            .await?
            .next()
            .ok_or_else(|| invalid("the TURN host does not resolve"))?;
        Ok(RelayTarget {
            server,
            username: username.clone(),
            password: password.clone(),
        })
    }
}

/// `turn:host:port[?transport=udp]` → `host:port` (3478 when absent); `None` for `turns:` or
/// TCP transport, which this client does not speak.
fn udp_turn_hostport(url: &str) -> Option<String> {
    let rest = url.strip_prefix("turn:")?;
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    if query.is_some_and(|q| {
        !q.split('&')
            .any(|kv| kv.eq_ignore_ascii_case("transport=udp"))
    }) {
        return None;
    }
    let has_port = if hostport.starts_with('[') {
        hostport.contains("]:")
    } else {
        hostport.contains(':')
    };
    Some(if has_port {
        hostport.to_owned()
    } else {
        format!("{hostport}:3478")
    })
}

/// First retransmission of an unanswered request (RFC 8489 §6.2.1), doubled each time.
const RTO: Duration = Duration::from_millis(500);
const MAX_TRIES: u32 = 7;
/// Channel bindings last 10 minutes and permissions 5: refreshing the binding every 4 minutes
/// keeps both (a ChannelBind refreshes the permission of its peer).
const CHANNEL_REFRESH: Duration = Duration::from_secs(240);
/// Datagrams held for a peer while its channel is being bound.
const MAX_QUEUED: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Refresh,
    Bind(SocketAddr),
}

struct Pending {
    purpose: Purpose,
    bytes: Vec<u8>,
    next_send: Instant,
    tries: u32,
}

struct Channel {
    number: u16,
    bound: bool,
    queued: Vec<Vec<u8>>,
    refresh_at: Instant,
}

pub(crate) struct Relay {
    pub server: SocketAddr,
    pub relayed: SocketAddr,
    client: TurnClient,
    pending: HashMap<[u8; 12], Pending>,
    channels: HashMap<SocketAddr, Channel>,
    peers: HashMap<u16, SocketAddr>,
    next_channel: u16,
    refresh_at: Instant,
    /// Datagrams to send to the TURN server.
    out: Vec<Vec<u8>>,
}

fn tid(bytes: &[u8]) -> Option<[u8; 12]> {
    bytes.get(8..20)?.try_into().ok()
}

impl Relay {
    /// Allocates a relayed address on `target` from `socket` (the 401 challenge, then the
    /// authenticated request), retransmitting as UDP requires.
    pub async fn allocate(socket: &UdpSocket, target: &RelayTarget) -> std::io::Result<Relay> {
        let mut client = TurnClient::new(&target.username, &target.password);
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut request = client.allocate(false);
        let mut authenticated = false;
        loop {
            let Some(id) = tid(&request) else {
                return Err(std::io::Error::other("malformed request"));
            };
            let mut rto = RTO;
            let response = 'wait: loop {
                socket.send_to(&request, target.server).await?;
                let until = (tokio::time::Instant::now() + rto).min(deadline);
                loop {
                    match tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
                        Err(_) => break,
                        Ok(Err(e)) => return Err(e),
                        Ok(Ok((n, from))) => {
                            if from != target.server {
                                continue;
                            }
                            if let Some(r) = client.on_response(&buf[..n])
                                && r.transaction_id == id
                            {
                                break 'wait r;
                            }
                        }
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer from the TURN server",
                    ));
                }
                rto = (rto * 2).min(Duration::from_secs(4));
            };
            match (response.class, response.code, response.relayed) {
                (Class::Success, _, Some(relayed)) => {
                    let lifetime = Duration::from_secs(u64::from(response.lifetime.unwrap_or(600)));
                    return Ok(Relay {
                        server: target.server,
                        relayed,
                        client,
                        pending: HashMap::new(),
                        channels: HashMap::new(),
                        peers: HashMap::new(),
                        next_channel: CHANNEL_MIN,
                        refresh_at: Instant::now() + lifetime / 2,
                        out: Vec::new(),
                    });
                }
                // The challenge (once), or a nonce gone stale: ask again, signed.
                (Class::Error, Some(401), _) if !authenticated => authenticated = true,
                (Class::Error, Some(438), _) => {}
                (_, code, _) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("TURN Allocate refused ({code:?})"),
                    ));
                }
            }
            request = client.allocate(false);
        }
    }

    fn start(&mut self, now: Instant, purpose: Purpose, bytes: Vec<u8>) {
        let Some(id) = tid(&bytes) else { return };
        self.out.push(bytes.clone());
        self.pending.insert(
            id,
            Pending {
                purpose,
                bytes,
                next_send: now + RTO,
                tries: 1,
            },
        );
    }

    /// Sends `data` to `peer` through the relay; the first datagram to a peer binds a channel
    /// (and its permission) and waits for the answer.
    pub fn send(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) {
        if let Some(ch) = self.channels.get_mut(&peer) {
            if ch.bound {
                self.out.push(channel_data(ch.number, data, false));
            } else if ch.queued.len() < MAX_QUEUED {
                ch.queued.push(data.to_vec());
            }
            return;
        }
        if self.next_channel > 0x4FFF {
            debug!("relay: out of channel numbers");
            return;
        }
        let number = self.next_channel;
        self.next_channel += 1;
        self.channels.insert(
            peer,
            Channel {
                number,
                bound: false,
                queued: vec![data.to_vec()],
                refresh_at: now + CHANNEL_REFRESH,
            },
        );
        self.peers.insert(number, peer);
        let req = self.client.channel_bind(number, peer);
        self.start(now, Purpose::Bind(peer), req);
    }

    /// A datagram from the TURN server: relayed data comes back as `(peer, payload)`; answers to
    /// our requests are consumed here.
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        match classify(bytes) {
            Kind::ChannelData => {
                let cd = ChannelData::parse(bytes)?;
                let peer = *self.peers.get(&cd.channel)?;
                Some((peer, cd.data.to_vec()))
            }
            Kind::Stun => {
                if let Some(d) = parse_data_indication(bytes) {
                    return Some(d);
                }
                let r = self.client.on_response(bytes)?;
                let pending = self.pending.remove(&r.transaction_id)?;
                match (r.class, r.code) {
                    (Class::Success, _) => self.succeeded(now, pending.purpose, r.lifetime),
                    (Class::Error, Some(438)) => {
                        // New nonce learnt: the same request again, signed with it.
                        self.reissue(now, pending.purpose);
                    }
                    (_, code) => debug!(?code, purpose = ?pending.purpose, "relay request refused"),
                }
                None
            }
            Kind::Other => None,
        }
    }

    fn succeeded(&mut self, now: Instant, purpose: Purpose, lifetime: Option<u32>) {
        match purpose {
            Purpose::Bind(peer) => {
                if let Some(ch) = self.channels.get_mut(&peer) {
                    ch.bound = true;
                    ch.refresh_at = now + CHANNEL_REFRESH;
                    for d in std::mem::take(&mut ch.queued) {
                        self.out.push(channel_data(ch.number, &d, false));
                    }
                }
            }
            Purpose::Refresh => {
                let lifetime = Duration::from_secs(u64::from(lifetime.unwrap_or(600)));
                self.refresh_at = now + lifetime / 2;
            }
        }
    }

    fn reissue(&mut self, now: Instant, purpose: Purpose) {
        let req = match purpose {
            Purpose::Bind(peer) => match self.channels.get(&peer) {
                Some(ch) => self.client.channel_bind(ch.number, peer),
                None => return,
            },
            Purpose::Refresh => self.client.refresh(None),
        };
        self.start(now, purpose, req);
    }

    /// Retransmissions and refreshes due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut give_up = Vec::new();
        for (id, p) in self.pending.iter_mut() {
            if now >= p.next_send {
                if p.tries >= MAX_TRIES {
                    give_up.push(*id);
                    continue;
                }
                self.out.push(p.bytes.clone());
                p.tries += 1;
                p.next_send = now + RTO * 2u32.pow(p.tries - 1).min(8);
            }
        }
        for id in give_up {
            if let Some(p) = self.pending.remove(&id) {
                debug!(purpose = ?p.purpose, "relay request unanswered");
            }
        }
        if now >= self.refresh_at {
            self.refresh_at = now + Duration::from_secs(60);
            let req = self.client.refresh(None);
            self.start(now, Purpose::Refresh, req);
        }
        let due: Vec<SocketAddr> = self
            .channels
            .iter()
            .filter(|(_, c)| c.bound && now >= c.refresh_at)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if let Some(ch) = self.channels.get_mut(&peer) {
                ch.refresh_at = now + CHANNEL_REFRESH;
                let req = self.client.channel_bind(ch.number, peer);
                self.start(now, Purpose::Bind(peer), req);
            }
        }
    }

    /// The next instant [`Relay::handle_timeout`] has work.
    pub fn next_timeout(&self) -> Instant {
        let mut t = self.refresh_at;
        for p in self.pending.values() {
            t = t.min(p.next_send);
        }
        for c in self.channels.values().filter(|c| c.bound) {
            t = t.min(c.refresh_at);
        }
        t
    }

    /// Datagrams for the TURN server, oldest first.
    pub fn take_outgoing(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.out)
    }

    /// A Refresh with lifetime 0: the server frees the allocation now instead of at expiry
    /// (per-user allocation quotas count live allocations).
    pub fn deallocate(&mut self) -> Vec<u8> {
        self.client.refresh(Some(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_urls() {
        let u = udp_turn_hostport;
        assert_eq!(
            u("turn:127.0.0.1:3478?transport=udp").as_deref(),
            Some("127.0.0.1:3478")
        );
        assert_eq!(u("turn:example.org").as_deref(), Some("example.org:3478"));
        assert_eq!(u("turn:[::1]:5000").as_deref(), Some("[::1]:5000"));
        assert_eq!(u("turn:[::1]").as_deref(), Some("[::1]:3478"));
        assert_eq!(u("turn:127.0.0.1:3478?transport=tcp"), None);
        assert_eq!(u("turns:127.0.0.1:5349?transport=tcp"), None);
        assert_eq!(u("stun:127.0.0.1:3478"), None);
    }
}
