//! The sans-IO TURN server: allocation state machine and request handling (RFC 8656).
//!
//! Owns allocations, permissions, channels, quotas, bandwidth buckets, the 401 limiter and the
//! counters. It takes time and bytes and returns decisions ([`ClientOutput`], [`PeerOutput`]);
//! it never touches a socket, a clock or a thread. The I/O shell owns the relay sockets and
//! hands the core an opaque handle `R` for each one, which the core gives back whenever
//! something must be sent through that relay.
//!
//! Security shape: nothing is stored for a client until its request's MESSAGE-INTEGRITY
//! verifies (the nonce is stateless, see [`crate::auth`]); every table is bounded by a
//! configured cap; every peer address passes [`RelayPolicy::check`] before a permission or
//! channel exists and again on each Send indication.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::auth::{NonceCheck, NonceKey, RestAuth, parse_rest_username};
use crate::framing::{self, CHANNEL_MAX, CHANNEL_MIN, ChannelData, Kind};
use crate::policy::{DenyReason, RelayPolicy, canonical_ip};
use crate::ratelimit::RateLimiter;
use crate::redact::Redact;
use crate::stun::{self, Class, Message, MessageBuilder, attr, method};

/// The transport between client and server.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Stream transports need ChannelData padded to four bytes.
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// Identifies a client's allocation (RFC 8656 §2: the 5-tuple).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// The current time, given by the shell: a monotonic instant for lifetimes and Unix seconds
/// for credential expiry and nonces.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: Instant,
    pub unix: u64,
}

/// Relay address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// Limits and lifetimes of the core, derived from [`crate::TurnConfig`].
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub realm: String,
    pub secrets: Vec<String>,
    pub rest_separator: char,
    /// Check credential expiry on every request, not only Allocate.
    pub strict_expiry: bool,
    pub ipv4_relay: bool,
    pub ipv6_relay: bool,
    pub allocation_default_lifetime: Duration,
    pub allocation_max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    pub nonce_lifetime: Duration,
    pub max_allocations: usize,
    pub max_allocations_per_user: u32,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    /// Bytes per second per allocation, both directions together; 0 = unlimited.
    pub allocation_bandwidth_bytes_per_sec: u64,
    /// 401/438/400 answers per source IP per second; 0 = unlimited.
    pub unauthorized_per_ip_per_sec: u32,
    pub software: Option<String>,
    pub policy: RelayPolicy,
    pub nonce_key: [u8; 32],
}

impl CoreConfig {
    /// A configuration with the defaults of [`crate::TurnConfig`], for tests and tools.
    pub fn with_secret(secret: &str) -> Self {
        CoreConfig {
            realm: "moien".into(),
            secrets: vec![secret.into()],
            rest_separator: ':',
            strict_expiry: false,
            ipv4_relay: true,
            ipv6_relay: true,
            allocation_default_lifetime: Duration::from_secs(600),
            allocation_max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            max_allocations: 10_000,
            max_allocations_per_user: 10,
            max_permissions_per_allocation: 32,
            max_channels_per_allocation: 32,
            allocation_bandwidth_bytes_per_sec: 0,
            unauthorized_per_ip_per_sec: 100,
            software: None,
            policy: RelayPolicy::default(),
            nonce_key: [0x42; 32],
        }
    }
}

/// Handle to an allocation, stable while it lives; stale handles are detected by generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocId {
    index: u32,
    generation: u32,
}

/// Why a client or peer packet was dropped without answer (for metrics and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    NoAllocation,
    NoPermission,
    NoChannel,
    PolicyDenied,
    Bandwidth,
    RateLimited,
    Ignored,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoAllocation => "no_allocation",
            DropReason::NoPermission => "no_permission",
            DropReason::NoChannel => "no_channel",
            DropReason::PolicyDenied => "policy",
            DropReason::Bandwidth => "bandwidth",
            DropReason::RateLimited => "rate_limited",
            DropReason::Ignored => "ignored",
        }
    }

    pub const ALL: [DropReason; 8] = [
        DropReason::Malformed,
        DropReason::NoAllocation,
        DropReason::NoPermission,
        DropReason::NoChannel,
        DropReason::PolicyDenied,
        DropReason::Bandwidth,
        DropReason::RateLimited,
        DropReason::Ignored,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// An authenticated Allocate that needs a relay socket. The shell binds one (in the relay
/// port range, of `family`, on an even port if asked, with DF if asked) and calls
/// [`Server::finish_allocate`] in the same critical section.
#[derive(Debug)]
pub struct PendingAllocation {
    ft: FiveTuple,
    tid: [u8; 12],
    pub family: Family,
    pub even_port: bool,
    pub dont_fragment: bool,
    lifetime: Duration,
    username: Box<str>,
    user: Box<str>,
    auth: AuthCtx,
}

/// What to do with a packet from a client.
#[derive(Debug)]
pub enum ClientOutput<R> {
    /// Nothing to send.
    Drop(DropReason),
    /// A response was appended to the reply buffer; send it to the client.
    Reply,
    /// A response was appended and the allocation was deleted; close `R`.
    ReplyAndRelease(R),
    /// Send `buf[payload]` from relay `relay` to `peer`.
    Relay {
        relay: R,
        peer: SocketAddr,
        payload: Range<usize>,
    },
    /// Bind a relay socket, then call [`Server::finish_allocate`].
    NeedRelay(PendingAllocation),
}

/// What to do with a datagram a relay socket received from a peer.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerOutput {
    Drop(DropReason),
    /// Send `buf[range]` to the allocation's client (header written in place).
    Forward(Range<usize>),
}

/// Bytes of headroom a relay receive buffer needs before the payload, so the core can write a
/// ChannelData or Data-indication header in place (20 + 24 + 4 for IPv6).
pub const PEER_HEADROOM: usize = 48;
/// Bytes of tailroom after the payload for padding.
pub const PEER_TAILROOM: usize = 4;

#[derive(Clone, Copy, Debug)]
struct AuthCtx {
    key: [u8; 16],
    sha256: bool,
}

struct Permission {
    ip: IpAddr,
    expires: Instant,
}

struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

struct Allocation<R> {
    ft: FiveTuple,
    relay_addr: SocketAddr,
    relay: R,
    username: Box<str>,
    user: Box<str>,
    key: [u8; 16],
    tid: [u8; 12],
    expires: Instant,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    tokens: u64,
    refilled: Instant,
}

struct Slot<R> {
    generation: u32,
    alloc: Option<Allocation<R>>,
}

/// Counters accumulated since the last [`Server::take_stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub allocations_created: u64,
    pub allocations_expired: u64,
    pub allocations_deleted: u64,
    pub unauthorized: u64,
    pub unauthorized_suppressed: u64,
    pub stale_nonce: u64,
    pub policy_denials: [u64; DenyReason::ALL.len()],
    pub quota_refusals: u64,
    /// ChannelBinds refused (400) because the number or the peer was already bound otherwise.
    pub channel_conflicts: u64,
    pub client_to_peer_packets: u64,
    pub client_to_peer_bytes: u64,
    pub peer_to_client_packets: u64,
    pub peer_to_client_bytes: u64,
    pub dropped: [u64; DropReason::ALL.len()],
}

impl Stats {
    pub fn policy_denials_total(&self) -> u64 {
        self.policy_denials.iter().sum()
    }
}

/// Sizes of the server's tables, for memory-bound assertions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    pub allocations: usize,
    pub slots: usize,
    pub tuples: usize,
    pub users: usize,
    pub ratelimit_bytes: usize,
}

/// The TURN server core. `R` is the shell's relay handle.
pub struct Server<R> {
    cfg: CoreConfig,
    auth: RestAuth,
    nonces: NonceKey,
    limiter: RateLimiter,
    started: Instant,
    slots: Vec<Slot<R>>,
    free: Vec<u32>,
    by_tuple: HashMap<FiveTuple, AllocId>,
    users: HashMap<Box<str>, u32>,
    live: usize,
    stats: Stats,
    rng: u64,
}

enum Authed {
    Ok {
        ctx: AuthCtx,
        username: Box<str>,
        user: Box<str>,
    },
    Done(ClientOutputKind),
}

/// Intermediate result that carries no `R` (so helpers need not be generic over ownership).
#[derive(Debug)]
enum ClientOutputKind {
    Drop(DropReason),
    Reply,
}

impl<R> From<ClientOutputKind> for ClientOutput<R> {
    fn from(k: ClientOutputKind) -> Self {
        match k {
            ClientOutputKind::Drop(r) => ClientOutput::Drop(r),
            ClientOutputKind::Reply => ClientOutput::Reply,
        }
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn offset_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    start..start + part.len()
}

impl<R: Clone> Server<R> {
    pub fn new(cfg: CoreConfig, now: Instant) -> Self {
        let auth = RestAuth::new(&cfg.secrets, &cfg.realm, cfg.rest_separator);
        let nonces = NonceKey::new(cfg.nonce_key);
        let limiter = RateLimiter::new(cfg.unauthorized_per_ip_per_sec);
        // Seeded from the nonce key so tests stay deterministic; only used for indication
        // transaction ids, which carry no security meaning.
        let rng = u64::from_le_bytes([
            cfg.nonce_key[0],
            cfg.nonce_key[1],
            cfg.nonce_key[2],
            cfg.nonce_key[3],
            cfg.nonce_key[4],
            cfg.nonce_key[5],
            cfg.nonce_key[6],
            cfg.nonce_key[7],
        ]) | 1;
        Server {
            cfg,
            auth,
            nonces,
            limiter,
            started: now,
            slots: Vec::new(),
            free: Vec::new(),
            by_tuple: HashMap::new(),
            users: HashMap::new(),
            live: 0,
            stats: Stats::default(),
            rng,
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Returns and resets the counters.
    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    pub fn allocation_count(&self) -> usize {
        self.live
    }

    pub fn table_sizes(&self) -> TableSizes {
        TableSizes {
            allocations: self.live,
            slots: self.slots.len(),
            tuples: self.by_tuple.len(),
            users: self.users.len(),
            ratelimit_bytes: self.limiter.memory_bytes(),
        }
    }

    /// The relay address of an allocation, if it lives.
    pub fn relay_addr(&self, id: AllocId) -> Option<SocketAddr> {
        self.get(id).map(|a| a.relay_addr)
    }

    /// The allocation of a 5-tuple, if any.
    pub fn allocation_of(&self, ft: &FiveTuple) -> Option<AllocId> {
        self.by_tuple.get(ft).copied()
    }

    fn get(&self, id: AllocId) -> Option<&Allocation<R>> {
        let s = self.slots.get(id.index as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.alloc.as_ref()
    }

    fn get_mut(&mut self, id: AllocId) -> Option<&mut Allocation<R>> {
        let s = self.slots.get_mut(id.index as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.alloc.as_mut()
    }

    fn next_tid(&mut self) -> [u8; 12] {
        let mut t = [0u8; 12];
        for chunk in t.chunks_mut(4) {
            // xorshift64*
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let v = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
            chunk.copy_from_slice(&v.to_le_bytes()[..4]);
        }
        t
    }

    /// Handles one message from a client (a UDP datagram or one TCP/TLS frame). Responses are
    /// appended to `reply`.
    pub fn handle_client(
        &mut self,
        now: Now,
        ft: FiveTuple,
        buf: &[u8],
        reply: &mut Vec<u8>,
    ) -> ClientOutput<R> {
        match framing::classify(buf) {
            Kind::ChannelData => self.handle_channel_data(now, &ft, buf),
            Kind::Stun => self.handle_stun(now, ft, buf, reply),
            Kind::Other => self.dropped(DropReason::Malformed),
        }
    }

    fn dropped(&mut self, r: DropReason) -> ClientOutput<R> {
        self.stats.dropped[r.index()] += 1;
        ClientOutput::Drop(r)
    }

    fn handle_channel_data(&mut self, now: Now, ft: &FiveTuple, buf: &[u8]) -> ClientOutput<R> {
        let Some(cd) = ChannelData::parse(buf) else {
            return self.dropped(DropReason::Malformed);
        };
        let Some(&id) = self.by_tuple.get(ft) else {
            return self.dropped(DropReason::NoAllocation);
        };
        let rate = self.cfg.allocation_bandwidth_bytes_per_sec;
        let Some(a) = self.get_mut(id) else {
            return self.dropped(DropReason::NoAllocation);
        };
        let Some(ch) = a
            .channels
            .iter()
            .find(|c| c.number == cd.channel && c.expires > now.mono)
        else {
            return self.dropped(DropReason::NoChannel);
        };
        let peer = ch.peer;
        if !a.permitted(peer.ip(), now.mono) {
            return self.dropped(DropReason::NoPermission);
        }
        if !a.spend(now.mono, cd.data.len(), rate) {
            return self.dropped(DropReason::Bandwidth);
        }
        let relay = a.relay.clone();
        self.stats.client_to_peer_packets += 1;
        self.stats.client_to_peer_bytes += cd.data.len() as u64;
        ClientOutput::Relay {
            relay,
            peer,
            payload: offset_in(buf, cd.data),
        }
    }

    fn handle_stun(
        &mut self,
        now: Now,
        ft: FiveTuple,
        buf: &[u8],
        reply: &mut Vec<u8>,
    ) -> ClientOutput<R> {
        let Ok(msg) = Message::parse(buf) else {
            return self.dropped(DropReason::Malformed);
        };
        if !msg.fingerprint_ok() {
            return self.dropped(DropReason::Malformed);
        }
        match (msg.class(), msg.method()) {
            (Class::Request, method::BINDING) => {
                if let Some(out) = self.unknown_attributes(now, &ft, &msg, None, reply) {
                    return out.into();
                }
                let mut b = MessageBuilder::new(
                    reply,
                    method::BINDING,
                    Class::Success,
                    msg.transaction_id(),
                );
                b.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
                finish(&mut b, &self.cfg.software, None, msg.has_fingerprint());
                ClientOutput::Reply
            }
            (Class::Indication, method::SEND) => self.handle_send(now, &ft, &msg, buf),
            (
                Class::Request,
                m @ (method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND),
            ) => {
                let (ctx, username, user) =
                    match self.authenticate(now, &ft, &msg, m == method::ALLOCATE, reply) {
                        Authed::Ok {
                            ctx,
                            username,
                            user,
                        } => (ctx, username, user),
                        Authed::Done(k) => return k.into(),
                    };
                if let Some(out) = self.unknown_attributes(now, &ft, &msg, Some(ctx), reply) {
                    return out.into();
                }
                match m {
                    method::ALLOCATE => self.allocate(now, ft, &msg, ctx, username, user, reply),
                    method::REFRESH => self.refresh(now, &ft, &msg, ctx, reply),
                    method::CREATE_PERMISSION => {
                        self.create_permission(now, &ft, &msg, ctx, reply).into()
                    }
                    _ => self.channel_bind(now, &ft, &msg, ctx, reply).into(),
                }
            }
            (Class::Request, _) => self
                .unauthenticated_error(now, &ft, &msg, 400, reply)
                .into(),
            _ => self.dropped(DropReason::Ignored),
        }
    }

    /// 420 for unknown comprehension-required attributes (RFC 8489 §6.3.1).
    fn unknown_attributes(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        auth: Option<AuthCtx>,
        reply: &mut Vec<u8>,
    ) -> Option<ClientOutputKind> {
        let mut unknown = [0u8; 2 * stun::MAX_ATTRIBUTES];
        let mut n = 0;
        for t in msg.attribute_types() {
            if !attr::is_understood(t) && n < stun::MAX_ATTRIBUTES {
                unknown[2 * n..2 * n + 2].copy_from_slice(&t.to_be_bytes());
                n += 1;
            }
        }
        if n == 0 {
            return None;
        }
        if auth.is_none() && !self.limiter.allow(ft.client.ip(), self.secs(now)) {
            return Some(ClientOutputKind::Drop(DropReason::RateLimited));
        }
        let mut b = MessageBuilder::new(reply, msg.method(), Class::Error, msg.transaction_id());
        b.error_code(420, stun::reason_phrase(420));
        b.attr(attr::UNKNOWN_ATTRIBUTES, &unknown[..2 * n]);
        finish(&mut b, &self.cfg.software, auth, msg.has_fingerprint());
        Some(ClientOutputKind::Reply)
    }

    fn secs(&self, now: Now) -> u64 {
        now.mono.saturating_duration_since(self.started).as_secs()
    }

    /// An error before authentication, subject to the per-IP limiter.
    fn unauthenticated_error(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        code: u16,
        reply: &mut Vec<u8>,
    ) -> ClientOutputKind {
        if !self.limiter.allow(ft.client.ip(), self.secs(now)) {
            if code == 401 {
                self.stats.unauthorized_suppressed += 1;
            }
            self.stats.dropped[DropReason::RateLimited.index()] += 1;
            return ClientOutputKind::Drop(DropReason::RateLimited);
        }
        let mut b = MessageBuilder::new(reply, msg.method(), Class::Error, msg.transaction_id());
        b.error_code(code, stun::reason_phrase(code));
        if code == 401 || code == 438 {
            let nonce = self.nonces.issue(ft.client, now.unix);
            b.attr(attr::REALM, self.auth.realm().as_bytes());
            b.attr(attr::NONCE, &nonce);
            if code == 401 {
                self.stats.unauthorized += 1;
            } else {
                self.stats.stale_nonce += 1;
            }
        }
        finish(&mut b, &self.cfg.software, None, msg.has_fingerprint());
        ClientOutputKind::Reply
    }

    /// RFC 8489 §9.2.4 long-term credential check with REST usernames.
    fn authenticate(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        is_allocate: bool,
        reply: &mut Vec<u8>,
    ) -> Authed {
        if !msg.has_integrity() {
            return Authed::Done(self.unauthenticated_error(now, ft, msg, 401, reply));
        }
        let (Some(username), Some(realm), Some(nonce)) = (
            msg.get(attr::USERNAME),
            msg.get(attr::REALM),
            msg.get(attr::NONCE),
        ) else {
            return Authed::Done(self.unauthenticated_error(now, ft, msg, 400, reply));
        };
        let Ok(username) = std::str::from_utf8(username) else {
            return Authed::Done(self.unauthenticated_error(now, ft, msg, 401, reply));
        };
        match self.nonces.check(
            nonce,
            ft.client,
            now.unix,
            self.cfg.nonce_lifetime.as_secs(),
        ) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                return Authed::Done(self.unauthenticated_error(now, ft, msg, 438, reply));
            }
        }
        if realm != self.auth.realm().as_bytes() {
            return Authed::Done(self.unauthenticated_error(now, ft, msg, 401, reply));
        }
        let Some(rest) = parse_rest_username(username, self.auth.separator()) else {
            return Authed::Done(self.unauthenticated_error(now, ft, msg, 401, reply));
        };
        if (is_allocate || self.cfg.strict_expiry) && rest.expiry < now.unix {
            tracing::debug!(user = %Redact(rest.user), "TURN credentials expired");
            return Authed::Done(self.unauthenticated_error(now, ft, msg, 401, reply));
        }
        let sha256 = msg.has_integrity_sha256();
        // The allocation's cached key spares the HMAC/MD5 work for the common case.
        let existing = self
            .by_tuple
            .get(ft)
            .and_then(|id| self.get(*id))
            .map(|a| (a.username.clone(), a.key));
        if let Some((alloc_user, key)) = &existing
            && &**alloc_user == username
            && msg.verify_integrity(key)
        {
            return Authed::Ok {
                ctx: AuthCtx { key: *key, sha256 },
                username: alloc_user.clone(),
                user: rest.user.into(),
            };
        }
        let Some(key) = self
            .auth
            .candidate_keys(username)
            .find(|k| msg.verify_integrity(k))
        else {
            return Authed::Done(self.unauthenticated_error(now, ft, msg, 401, reply));
        };
        let ctx = AuthCtx { key, sha256 };
        if let Some((alloc_user, _)) = existing
            && &*alloc_user != username
        {
            // Authenticated, but not as the allocation's owner (RFC 8656 §5).
            self.error(msg, 441, ctx, reply);
            return Authed::Done(ClientOutputKind::Reply);
        }
        Authed::Ok {
            ctx,
            username: username.into(),
            user: rest.user.into(),
        }
    }

    /// An authenticated error response (with MESSAGE-INTEGRITY).
    fn error(&mut self, msg: &Message<'_>, code: u16, ctx: AuthCtx, reply: &mut Vec<u8>) {
        let mut b = MessageBuilder::new(reply, msg.method(), Class::Error, msg.transaction_id());
        b.error_code(code, stun::reason_phrase(code));
        finish(&mut b, &self.cfg.software, Some(ctx), msg.has_fingerprint());
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        now: Now,
        ft: FiveTuple,
        msg: &Message<'_>,
        ctx: AuthCtx,
        username: Box<str>,
        user: Box<str>,
        reply: &mut Vec<u8>,
    ) -> ClientOutput<R> {
        if let Some(&id) = self.by_tuple.get(&ft) {
            let retransmit = self.get(id).map(|a| a.tid) == Some(msg.transaction_id());
            if retransmit {
                self.allocate_success(now, id, msg, ctx, reply);
            } else {
                self.error(msg, 437, ctx, reply);
            }
            return ClientOutput::Reply;
        }
        let Some(transport) = msg.get(attr::REQUESTED_TRANSPORT) else {
            self.error(msg, 400, ctx, reply);
            return ClientOutput::Reply;
        };
        if transport.first() != Some(&17) {
            self.error(msg, 442, ctx, reply);
            return ClientOutput::Reply;
        }
        if msg.has(attr::RESERVATION_TOKEN) {
            // No reservations are ever handed out, so no token can be valid.
            self.error(msg, 508, ctx, reply);
            return ClientOutput::Reply;
        }
        let even_port = match msg.get(attr::EVEN_PORT) {
            Some(v) if v.first().is_some_and(|b| b & 0x80 != 0) => {
                // R bit: a reservation of the next port, which we do not offer.
                self.error(msg, 508, ctx, reply);
                return ClientOutput::Reply;
            }
            Some(_) => true,
            None => false,
        };
        let family = match (
            msg.get(attr::REQUESTED_ADDRESS_FAMILY),
            msg.has(attr::ADDITIONAL_ADDRESS_FAMILY),
        ) {
            (Some(_), true) => {
                self.error(msg, 400, ctx, reply);
                return ClientOutput::Reply;
            }
            (Some(v), false) => match v.first() {
                Some(0x01) => Family::V4,
                Some(0x02) => Family::V6,
                _ => {
                    self.error(msg, 440, ctx, reply);
                    return ClientOutput::Reply;
                }
            },
            // RFC 8656 §7.2: IPv4 when absent. ADDITIONAL-ADDRESS-FAMILY (dual allocation) is
            // not offered; the primary IPv4 allocation is made.
            (None, _) => Family::V4,
        };
        let supported = match family {
            Family::V4 => self.cfg.ipv4_relay,
            Family::V6 => self.cfg.ipv6_relay,
        };
        if !supported {
            self.error(msg, 440, ctx, reply);
            return ClientOutput::Reply;
        }
        let user_count = self.users.get(&user).copied().unwrap_or(0);
        if user_count >= self.cfg.max_allocations_per_user {
            self.stats.quota_refusals += 1;
            self.error(msg, 486, ctx, reply);
            return ClientOutput::Reply;
        }
        if self.live >= self.cfg.max_allocations {
            self.stats.quota_refusals += 1;
            self.error(msg, 508, ctx, reply);
            return ClientOutput::Reply;
        }
        let lifetime = match msg.get(attr::LIFETIME).and_then(be_u32) {
            Some(l) => Duration::from_secs(u64::from(l)).clamp(
                self.cfg.allocation_default_lifetime,
                self.cfg
                    .allocation_max_lifetime
                    .max(self.cfg.allocation_default_lifetime),
            ),
            None => self.cfg.allocation_default_lifetime,
        };
        ClientOutput::NeedRelay(PendingAllocation {
            ft,
            tid: msg.transaction_id(),
            family,
            even_port,
            dont_fragment: msg.has(attr::DONT_FRAGMENT),
            lifetime,
            username,
            user,
            auth: ctx,
        })
    }

    fn allocate_success(
        &mut self,
        now: Now,
        id: AllocId,
        msg: &Message<'_>,
        ctx: AuthCtx,
        reply: &mut Vec<u8>,
    ) {
        let Some(a) = self.get(id) else {
            return;
        };
        let remaining = secs(a.expires.saturating_duration_since(now.mono));
        let (relay, client) = (a.relay_addr, a.ft.client);
        let mut b = MessageBuilder::new(
            reply,
            method::ALLOCATE,
            Class::Success,
            msg.transaction_id(),
        );
        b.xor_address(attr::XOR_RELAYED_ADDRESS, relay)
            .u32_attr(attr::LIFETIME, remaining)
            .xor_address(attr::XOR_MAPPED_ADDRESS, client);
        finish(&mut b, &self.cfg.software, Some(ctx), msg.has_fingerprint());
    }

    /// Completes an Allocate once the shell has (or has failed to) bind a relay socket.
    /// `relay` is the advertised relayed transport address and the shell's handle. Returns the
    /// new allocation's id, or gives the handle back if the allocation was not made (the
    /// response, success or error, is appended to `reply` in every case).
    pub fn finish_allocate(
        &mut self,
        now: Now,
        p: PendingAllocation,
        relay: Option<(SocketAddr, R)>,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<AllocId, Option<R>> {
        let Ok(msg) = Message::parse(request) else {
            return Err(relay.map(|r| r.1));
        };
        let Some((relay_addr, handle)) = relay else {
            self.stats.quota_refusals += 1;
            self.error(&msg, 508, p.auth, reply);
            return Err(None);
        };
        // Re-check what may have changed if the shell released its lock in between.
        if self.by_tuple.contains_key(&p.ft)
            || self.live >= self.cfg.max_allocations
            || self.users.get(&p.user).copied().unwrap_or(0) >= self.cfg.max_allocations_per_user
        {
            self.error(&msg, 508, p.auth, reply);
            return Err(Some(handle));
        }
        let alloc = Allocation {
            ft: p.ft,
            relay_addr,
            relay: handle,
            username: p.username,
            user: p.user,
            key: p.auth.key,
            tid: p.tid,
            expires: now.mono + p.lifetime,
            permissions: Vec::new(),
            channels: Vec::new(),
            tokens: self.cfg.allocation_bandwidth_bytes_per_sec,
            refilled: now.mono,
        };
        *self.users.entry(alloc.user.clone()).or_insert(0) += 1;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    alloc: None,
                });
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return Err(None);
        };
        slot.alloc = Some(alloc);
        let id = AllocId {
            index,
            generation: slot.generation,
        };
        self.by_tuple.insert(p.ft, id);
        self.live += 1;
        self.stats.allocations_created += 1;
        tracing::debug!(
            client = %Redact(p.ft.client),
            transport = ?p.ft.transport,
            lifetime_s = p.lifetime.as_secs(),
            "TURN allocation created"
        );
        self.allocate_success(now, id, &msg, p.auth, reply);
        Ok(id)
    }

    fn remove(&mut self, id: AllocId) -> Option<Allocation<R>> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let a = slot.alloc.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.by_tuple.remove(&a.ft);
        if let Some(n) = self.users.get_mut(&a.user) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(&a.user);
            }
        }
        self.live -= 1;
        Some(a)
    }

    /// Deletes the allocation of `ft` (its TCP/TLS connection closed) and returns its handle.
    pub fn remove_tuple(&mut self, ft: &FiveTuple) -> Option<R> {
        let id = *self.by_tuple.get(ft)?;
        self.stats.allocations_deleted += 1;
        self.remove(id).map(|a| a.relay)
    }

    fn refresh(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        ctx: AuthCtx,
        reply: &mut Vec<u8>,
    ) -> ClientOutput<R> {
        let Some(&id) = self.by_tuple.get(ft) else {
            self.error(msg, 437, ctx, reply);
            return ClientOutput::Reply;
        };
        let family = self.get(id).map(|a| Family::of(&a.relay_addr));
        if let Some(v) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let asked = match v.first() {
                Some(0x01) => Some(Family::V4),
                Some(0x02) => Some(Family::V6),
                _ => None,
            };
            if asked != family {
                self.error(msg, 443, ctx, reply);
                return ClientOutput::Reply;
            }
        }
        let requested = msg.get(attr::LIFETIME).and_then(be_u32);
        if requested == Some(0) {
            let released = self.remove(id);
            self.stats.allocations_deleted += 1;
            let mut b =
                MessageBuilder::new(reply, method::REFRESH, Class::Success, msg.transaction_id());
            b.u32_attr(attr::LIFETIME, 0);
            finish(&mut b, &self.cfg.software, Some(ctx), msg.has_fingerprint());
            return match released {
                Some(a) => ClientOutput::ReplyAndRelease(a.relay),
                None => ClientOutput::Reply,
            };
        }
        let lifetime = match requested {
            Some(l) => Duration::from_secs(u64::from(l)).min(self.cfg.allocation_max_lifetime),
            None => self.cfg.allocation_default_lifetime,
        };
        if let Some(a) = self.get_mut(id) {
            a.expires = now.mono + lifetime;
        }
        let mut b =
            MessageBuilder::new(reply, method::REFRESH, Class::Success, msg.transaction_id());
        b.u32_attr(attr::LIFETIME, secs(lifetime));
        finish(&mut b, &self.cfg.software, Some(ctx), msg.has_fingerprint());
        ClientOutput::Reply
    }

    /// Policy then family check for one peer; `Err(code)` on refusal.
    fn vet_peer(&mut self, relay: &SocketAddr, peer: SocketAddr) -> Result<(), u16> {
        if let Err(reason) = self.cfg.policy.check(peer) {
            self.stats.policy_denials[reason as usize] += 1;
            tracing::debug!(peer = %Redact(peer), reason = reason.as_str(), "TURN peer denied");
            return Err(403);
        }
        if Family::of(relay) != Family::of(&peer) {
            return Err(443);
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        ctx: AuthCtx,
        reply: &mut Vec<u8>,
    ) -> ClientOutputKind {
        let Some(id) = self.by_tuple.get(ft).copied() else {
            self.error(msg, 437, ctx, reply);
            return ClientOutputKind::Reply;
        };
        let Some(relay) = self.relay_addr(id) else {
            self.error(msg, 437, ctx, reply);
            return ClientOutputKind::Reply;
        };
        let tid = msg.transaction_id();
        let mut peers = [None; stun::MAX_ATTRIBUTES];
        let mut n = 0;
        for v in msg.get_all(attr::XOR_PEER_ADDRESS) {
            let Some(peer) = stun::decode_xor_address(v, &tid) else {
                self.error(msg, 400, ctx, reply);
                return ClientOutputKind::Reply;
            };
            // Every occurrence is vetted, not only the first (coturn #2016).
            if let Err(code) = self.vet_peer(&relay, peer) {
                self.error(msg, code, ctx, reply);
                return ClientOutputKind::Reply;
            }
            if n < peers.len() {
                peers[n] = Some(canonical_ip(peer.ip()));
                n += 1;
            }
        }
        if n == 0 {
            self.error(msg, 400, ctx, reply);
            return ClientOutputKind::Reply;
        }
        let max = self.cfg.max_permissions_per_allocation;
        let lifetime = self.cfg.permission_lifetime;
        let Some(a) = self.get_mut(id) else {
            self.error(msg, 437, ctx, reply);
            return ClientOutputKind::Reply;
        };
        a.permissions.retain(|p| p.expires > now.mono);
        let new = peers[..n]
            .iter()
            .flatten()
            .enumerate()
            .filter(|(i, ip)| {
                !a.permissions.iter().any(|p| p.ip == **ip)
                    && !peers[..*i].iter().flatten().any(|q| q == *ip)
            })
            .count();
        if a.permissions.len() + new > max {
            self.stats.quota_refusals += 1;
            self.error(msg, 508, ctx, reply);
            return ClientOutputKind::Reply;
        }
        for ip in peers[..n].iter().flatten() {
            a.permit(*ip, now.mono + lifetime);
        }
        let mut b = MessageBuilder::new(reply, method::CREATE_PERMISSION, Class::Success, tid);
        finish(&mut b, &self.cfg.software, Some(ctx), msg.has_fingerprint());
        ClientOutputKind::Reply
    }

    fn channel_bind(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        ctx: AuthCtx,
        reply: &mut Vec<u8>,
    ) -> ClientOutputKind {
        let Some(id) = self.by_tuple.get(ft).copied() else {
            self.error(msg, 437, ctx, reply);
            return ClientOutputKind::Reply;
        };
        let Some(relay) = self.relay_addr(id) else {
            self.error(msg, 437, ctx, reply);
            return ClientOutputKind::Reply;
        };
        let tid = msg.transaction_id();
        let number = msg
            .get(attr::CHANNEL_NUMBER)
            .filter(|v| v.len() == 4)
            .map(|v| u16::from_be_bytes([v[0], v[1]]));
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|v| stun::decode_xor_address(v, &tid));
        let (Some(number), Some(peer)) = (number, peer) else {
            self.error(msg, 400, ctx, reply);
            return ClientOutputKind::Reply;
        };
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&number) {
            self.error(msg, 400, ctx, reply);
            return ClientOutputKind::Reply;
        }
        // Duplicate XOR-PEER-ADDRESS: the first is used, but all must pass.
        for v in msg.get_all(attr::XOR_PEER_ADDRESS) {
            let vetted = match stun::decode_xor_address(v, &tid) {
                Some(p) => self.vet_peer(&relay, p),
                None => Err(400),
            };
            if let Err(code) = vetted {
                self.error(msg, code, ctx, reply);
                return ClientOutputKind::Reply;
            }
        }
        let peer = SocketAddr::new(canonical_ip(peer.ip()), peer.port());
        let (max, ch_life, perm_life) = (
            self.cfg.max_channels_per_allocation,
            self.cfg.channel_lifetime,
            self.cfg.permission_lifetime,
        );
        let max_perm = self.cfg.max_permissions_per_allocation;
        let Some(a) = self.get_mut(id) else {
            self.error(msg, 437, ctx, reply);
            return ClientOutputKind::Reply;
        };
        a.channels.retain(|c| c.expires > now.mono);
        a.permissions.retain(|p| p.expires > now.mono);
        let by_number = a.channels.iter().position(|c| c.number == number);
        let by_peer = a.channels.iter().position(|c| c.peer == peer);
        let code = match (by_number, by_peer) {
            (Some(i), Some(j)) if i == j => None,
            (Some(_), _) | (_, Some(_)) => Some(400),
            (None, None) if a.channels.len() >= max => Some(508),
            (None, None) => None,
        };
        let needs_perm = !a.permissions.iter().any(|p| p.ip == peer.ip());
        let code = code.or((needs_perm && a.permissions.len() >= max_perm).then_some(508));
        if let Some(code) = code {
            match code {
                508 => self.stats.quota_refusals += 1,
                _ => self.stats.channel_conflicts += 1,
            }
            self.error(msg, code, ctx, reply);
            return ClientOutputKind::Reply;
        }
        match by_number {
            Some(i) => a.channels[i].expires = now.mono + ch_life,
            None => a.channels.push(Channel {
                number,
                peer,
                expires: now.mono + ch_life,
            }),
        }
        a.permit(peer.ip(), now.mono + perm_life);
        let mut b = MessageBuilder::new(reply, method::CHANNEL_BIND, Class::Success, tid);
        finish(&mut b, &self.cfg.software, Some(ctx), msg.has_fingerprint());
        ClientOutputKind::Reply
    }

    fn handle_send(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        buf: &[u8],
    ) -> ClientOutput<R> {
        let Some(&id) = self.by_tuple.get(ft) else {
            return self.dropped(DropReason::NoAllocation);
        };
        let tid = msg.transaction_id();
        let (Some(peer), Some(data)) = (
            msg.get(attr::XOR_PEER_ADDRESS)
                .and_then(|v| stun::decode_xor_address(v, &tid)),
            msg.get(attr::DATA),
        ) else {
            return self.dropped(DropReason::Malformed);
        };
        if let Err(reason) = self.cfg.policy.check(peer) {
            self.stats.policy_denials[reason as usize] += 1;
            return self.dropped(DropReason::PolicyDenied);
        }
        let rate = self.cfg.allocation_bandwidth_bytes_per_sec;
        let Some(a) = self.get_mut(id) else {
            return self.dropped(DropReason::NoAllocation);
        };
        if Family::of(&a.relay_addr) != Family::of(&peer) || !a.permitted(peer.ip(), now.mono) {
            return self.dropped(DropReason::NoPermission);
        }
        if !a.spend(now.mono, data.len(), rate) {
            return self.dropped(DropReason::Bandwidth);
        }
        let relay = a.relay.clone();
        self.stats.client_to_peer_packets += 1;
        self.stats.client_to_peer_bytes += data.len() as u64;
        ClientOutput::Relay {
            relay,
            peer: SocketAddr::new(canonical_ip(peer.ip()), peer.port()),
            payload: offset_in(buf, data),
        }
    }

    /// Handles a datagram received by allocation `id`'s relay socket from `peer`. The payload
    /// is `buf[payload]`, with at least [`PEER_HEADROOM`] bytes before it and
    /// [`PEER_TAILROOM`] after it; the header for the client is written in place.
    pub fn handle_peer(
        &mut self,
        now: Now,
        id: AllocId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> PeerOutput {
        let len = payload.len();
        if payload.start < PEER_HEADROOM
            || payload.end + PEER_TAILROOM > buf.len()
            || len > 0xFFFF - 64
        {
            self.stats.dropped[DropReason::Malformed.index()] += 1;
            return PeerOutput::Drop(DropReason::Malformed);
        }
        let rate = self.cfg.allocation_bandwidth_bytes_per_sec;
        let tid = self.next_tid();
        let Some(a) = self.get_mut(id) else {
            self.stats.dropped[DropReason::NoAllocation.index()] += 1;
            return PeerOutput::Drop(DropReason::NoAllocation);
        };
        let peer = SocketAddr::new(canonical_ip(peer.ip()), peer.port());
        if !a.permitted(peer.ip(), now.mono) {
            self.stats.dropped[DropReason::NoPermission.index()] += 1;
            return PeerOutput::Drop(DropReason::NoPermission);
        }
        if !a.spend(now.mono, len, rate) {
            self.stats.dropped[DropReason::Bandwidth.index()] += 1;
            return PeerOutput::Drop(DropReason::Bandwidth);
        }
        let stream = a.ft.transport.is_stream();
        let channel = a
            .channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now.mono)
            .map(|c| c.number);
        self.stats.peer_to_client_packets += 1;
        self.stats.peer_to_client_bytes += len as u64;
        let len16 = len as u16;
        if let Some(number) = channel {
            let start = payload.start - framing::CHANNEL_HEADER_LEN;
            buf[start..payload.start].copy_from_slice(&framing::channel_header(number, len16));
            let mut end = payload.end;
            if stream {
                let padded = start + framing::CHANNEL_HEADER_LEN + stun::pad4(len);
                buf[end..padded].fill(0);
                end = padded;
            }
            return PeerOutput::Forward(start..end);
        }
        // Data indication: header, XOR-PEER-ADDRESS, DATA header, payload, padding.
        let addr_len = stun::xor_address_attr_len(&peer);
        let start = payload.start - 4 - addr_len - stun::HEADER_LEN;
        let padded_end = payload.end + (stun::pad4(len) - len);
        let body_len = (padded_end - start - stun::HEADER_LEN) as u16;
        let mut hdr = [0u8; PEER_HEADROOM];
        let h = &mut hdr[..payload.start - start];
        h[0..2].copy_from_slice(&stun::message_type(method::DATA, Class::Indication).to_be_bytes());
        h[2..4].copy_from_slice(&body_len.to_be_bytes());
        h[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
        h[8..20].copy_from_slice(&tid);
        h[20..22].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
        h[22..24].copy_from_slice(&((addr_len - 4) as u16).to_be_bytes());
        let mut v = Vec::with_capacity(20);
        stun::encode_xor_address(&mut v, peer, &tid);
        h[24..24 + v.len()].copy_from_slice(&v);
        let d = 24 + v.len();
        h[d..d + 2].copy_from_slice(&attr::DATA.to_be_bytes());
        h[d + 2..d + 4].copy_from_slice(&len16.to_be_bytes());
        buf[start..payload.start].copy_from_slice(h);
        buf[payload.end..padded_end].fill(0);
        PeerOutput::Forward(start..padded_end)
    }

    /// Expires allocations, permissions and channels. Returns the handles of expired
    /// allocations for the shell to close. Call about once a second.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<R> {
        let mut expired = Vec::new();
        for i in 0..self.slots.len() {
            let (generation, due) = match self.slots.get(i) {
                Some(Slot {
                    generation,
                    alloc: Some(a),
                }) => (*generation, a.expires <= now),
                _ => continue,
            };
            if due {
                let id = AllocId {
                    index: i as u32,
                    generation,
                };
                if let Some(a) = self.remove(id) {
                    tracing::debug!(client = %Redact(a.ft.client), "TURN allocation expired");
                    self.stats.allocations_expired += 1;
                    expired.push(a.relay);
                }
            } else if let Some(a) = self.slots.get_mut(i).and_then(|s| s.alloc.as_mut()) {
                a.permissions.retain(|p| p.expires > now);
                a.channels.retain(|c| c.expires > now);
            }
        }
        expired
    }

    /// Handles of every allocation (for shutdown).
    pub fn drain(&mut self) -> Vec<R> {
        let ids: Vec<AllocId> = self.by_tuple.values().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.remove(id))
            .map(|a| a.relay)
            .collect()
    }
}

impl<R> Allocation<R> {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical_ip(ip);
        self.permissions
            .iter()
            .any(|p| p.ip == ip && p.expires > now)
    }

    fn permit(&mut self, ip: IpAddr, expires: Instant) {
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = expires,
            None => self.permissions.push(Permission { ip, expires }),
        }
    }

    /// Token bucket with a one-second burst; `rate == 0` means unlimited.
    fn spend(&mut self, now: Instant, bytes: usize, rate: u64) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled);
        if elapsed >= Duration::from_millis(1) {
            let add = (rate as u128 * elapsed.as_micros() / 1_000_000) as u64;
            self.tokens = (self.tokens.saturating_add(add)).min(rate);
            self.refilled = now;
        }
        let cost = bytes as u64;
        if self.tokens < cost {
            return false;
        }
        self.tokens -= cost;
        true
    }
}

fn be_u32(v: &[u8]) -> Option<u32> {
    let b: [u8; 4] = v.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

fn finish(
    b: &mut MessageBuilder<'_>,
    software: &Option<String>,
    auth: Option<AuthCtx>,
    fingerprint: bool,
) {
    if let Some(s) = software {
        b.attr(attr::SOFTWARE, s.as_bytes());
    }
    match auth {
        Some(AuthCtx { key, sha256: true }) => {
            b.integrity_sha256(&key);
        }
        Some(AuthCtx { key, sha256: false }) => {
            b.integrity(&key);
        }
        None => {}
    }
    if fingerprint {
        b.fingerprint();
    }
}
