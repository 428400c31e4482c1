//! Deterministic tests of the sans-IO core: a fake clock, no sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::{mint_credentials_at, rest_password};
use crate::client::{TurnClient, channel_data, parse_data_indication, parse_response};
use crate::core::*;
use crate::policy::{Cidr, DenyReason, RelayPolicy};
use crate::stun::{self, Class, Message, attr, method};

const SECRET: &str = "test-secret";
const UNIX: u64 = 1_700_000_000;
const SERVER: &str = "127.0.0.1:3478";

struct H {
    s: Server<u32>,
    now: Now,
    next_relay: u16,
}

fn cfg() -> CoreConfig {
    let mut c = CoreConfig::with_secret(SECRET);
    c.policy = RelayPolicy::new(vec![], vec![], vec![SERVER.parse().unwrap()], false);
    c
}

impl H {
    fn new(c: CoreConfig) -> H {
        let mono = Instant::now();
        H {
            s: Server::new(c, mono),
            now: Now { mono, unix: UNIX },
            next_relay: 50_000,
        }
    }

    fn advance(&mut self, secs: u64) {
        self.now.mono += Duration::from_secs(secs);
        self.now.unix += secs;
    }

    fn send(&mut self, ft: FiveTuple, msg: &[u8]) -> (ClientOutput<u32>, Vec<u8>) {
        let mut reply = Vec::new();
        let out = self.s.handle_client(self.now, ft, msg, &mut reply);
        let out = match out {
            ClientOutput::NeedRelay(p) => {
                let port = self.next_relay;
                self.next_relay += 1;
                let ip: std::net::IpAddr = match p.family {
                    Family::V4 => "203.0.113.10".parse().unwrap(),
                    Family::V6 => "2001:db8::10".parse().unwrap(),
                };
                match self.s.finish_allocate(
                    self.now,
                    p,
                    Some((SocketAddr::new(ip, port), u32::from(port))),
                    msg,
                    &mut reply,
                ) {
                    Ok(_) => ClientOutput::Reply,
                    Err(_) => ClientOutput::Drop(DropReason::Ignored),
                }
            }
            o => o,
        };
        (out, reply)
    }

    /// Sends `msg` and returns the parsed response, teaching the client realm/nonce.
    fn ask(&mut self, ft: FiveTuple, c: &mut TurnClient, msg: &[u8]) -> crate::client::Response {
        let (_, reply) = self.send(ft, msg);
        c.on_response(&reply).expect("a response")
    }

    /// 401 dance then an authenticated Allocate; returns the relayed address.
    fn allocate(&mut self, ft: FiveTuple, c: &mut TurnClient, v6: bool) -> SocketAddr {
        let m = c.allocate(v6);
        let r = self.ask(ft, c, &m);
        assert_eq!(r.code, Some(401));
        let m = c.allocate(v6);
        let r = self.ask(ft, c, &m);
        assert_eq!(r.class, Class::Success, "allocate failed: {:?}", r.code);
        assert!(r.integrity_ok);
        r.relayed.expect("XOR-RELAYED-ADDRESS")
    }
}

fn ft(port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new("198.51.100.7".parse().unwrap(), port),
        server: SERVER.parse().unwrap(),
        transport: Transport::Udp,
    }
}

fn client(user: &str) -> TurnClient {
    let c = mint_credentials_at(SECRET, user, 3600, UNIX);
    TurnClient::new(&c.username, &c.password)
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const PUBLIC_PEER: &str = "8.8.8.8:4000";

#[test]
fn binding_answers_everyone_with_xor_mapped_address() {
    let mut h = H::new(cfg());
    let (out, reply) = h.send(ft(1000), &crate::client::binding_request([3; 12]));
    assert!(matches!(out, ClientOutput::Reply));
    let r = parse_response(&reply, None).unwrap();
    assert_eq!((r.method, r.class), (method::BINDING, Class::Success));
    assert_eq!(r.mapped, Some(ft(1000).client));
    let m = Message::parse(&reply).unwrap();
    assert!(m.has_fingerprint() && m.fingerprint_ok());
    assert!(
        m.get(attr::SOFTWARE).is_none(),
        "SOFTWARE is off by default"
    );
    assert_eq!(h.s.allocation_count(), 0);
}

#[test]
fn software_attribute_only_when_configured() {
    let mut c = cfg();
    c.software = Some("moien".into());
    let mut h = H::new(c);
    let (_, reply) = h.send(ft(1000), &crate::client::binding_request([3; 12]));
    assert_eq!(
        Message::parse(&reply).unwrap().get(attr::SOFTWARE),
        Some(&b"moien"[..])
    );
}

#[test]
fn unauthenticated_allocate_gets_401_and_leaves_no_state() {
    let mut h = H::new(cfg());
    let mut c = client("alice");
    let m = c.allocate(false);
    let r = h.ask(ft(1000), &mut c, &m);
    assert_eq!(r.code, Some(401));
    assert!(c.nonce().is_some());
    let sizes = h.s.table_sizes();
    assert_eq!(
        (sizes.allocations, sizes.slots, sizes.tuples, sizes.users),
        (0, 0, 0, 0)
    );
    assert_eq!(h.s.take_stats().unauthorized, 1);
}

#[test]
fn allocate_succeeds_with_rest_credentials_and_default_lifetime() {
    let mut h = H::new(cfg());
    let mut c = client("alice");
    let relayed = h.allocate(ft(1000), &mut c, false);
    assert!(
        relayed.is_ipv4(),
        "IPv4 when REQUESTED-ADDRESS-FAMILY is absent"
    );
    assert_eq!(h.s.allocation_count(), 1);
    // Retransmission of the same Allocate gets the same answer; a new one gets 437.
    let m = c.allocate(false);
    let r = h.ask(ft(1000), &mut c, &m);
    assert_eq!(r.code, Some(437));
    let st = h.s.take_stats();
    assert_eq!(st.allocations_created, 1);
}

#[test]
fn allocate_retransmission_is_answered_again() {
    let mut h = H::new(cfg());
    let mut c = client("alice");
    let m = c.allocate(false);
    h.ask(ft(1000), &mut c, &m);
    let m = c.allocate(false);
    let r1 = h.ask(ft(1000), &mut c, &m);
    let r2 = h.ask(ft(1000), &mut c, &m);
    assert_eq!(r1.class, Class::Success);
    assert_eq!(r2.class, Class::Success);
    assert_eq!(r1.relayed, r2.relayed);
    assert_eq!(r1.lifetime, Some(600));
    assert_eq!(h.s.allocation_count(), 1);
}

#[test]
fn wrong_secret_refused_and_rotation_accepted() {
    let mut h = H::new(cfg());
    let bad = mint_credentials_at("wrong", "mallory", 3600, UNIX);
    let mut c = TurnClient::new(&bad.username, &bad.password);
    let m = c.allocate(false);
    h.ask(ft(1000), &mut c, &m);
    let m = c.allocate(false);
    assert_eq!(h.ask(ft(1000), &mut c, &m).code, Some(401));
    assert_eq!(h.s.allocation_count(), 0);

    let mut rc = cfg();
    rc.secrets = vec!["new".into(), "old".into()];
    let mut h = H::new(rc);
    for secret in ["old", "new"] {
        let cr = mint_credentials_at(secret, "bob", 3600, UNIX);
        let mut c = TurnClient::new(&cr.username, &cr.password);
        let port = if secret == "old" { 1 } else { 2 };
        h.allocate(ft(port), &mut c, false);
    }
    assert_eq!(h.s.allocation_count(), 2);
}

#[test]
fn stale_and_forged_nonces_get_438_with_fresh_nonce() {
    let mut h = H::new(cfg());
    let mut c = client("alice");
    let m = c.allocate(false);
    h.ask(ft(1000), &mut c, &m);
    let first = c.nonce().unwrap().to_vec();
    h.advance(601);
    // Keep the credentials valid: mint relative to the advanced clock.
    let m = c.allocate(false);
    let r = h.ask(ft(1000), &mut c, &m);
    assert_eq!(r.code, Some(438));
    assert_ne!(c.nonce().unwrap(), &first[..]);
    let m = c.allocate(false);
    assert_eq!(h.ask(ft(1000), &mut c, &m).class, Class::Success);

    // A nonce issued to another source port is not accepted here.
    let mut c2 = client("carol");
    let m = c2.allocate(false);
    h.ask(ft(2000), &mut c2, &m);
    let n = c2.nonce().unwrap().to_vec();
    let mut c3 = client("carol");
    let m = c3.allocate(false);
    h.ask(ft(3000), &mut c3, &m);
    c3.set_nonce(&n);
    let m = c3.allocate(false);
    assert_eq!(h.ask(ft(3000), &mut c3, &m).code, Some(438));
    assert!(h.s.take_stats().stale_nonce >= 2);
}

#[test]
fn expired_credentials_refused_at_allocate_only_unless_strict() {
    for strict in [false, true] {
        let mut c0 = cfg();
        c0.strict_expiry = strict;
        let mut h = H::new(c0);
        let cr = mint_credentials_at(SECRET, "dave", 10, UNIX);
        let mut c = TurnClient::new(&cr.username, &cr.password);
        h.allocate(ft(1000), &mut c, false);
        h.advance(20);
        let m = c.refresh(Some(600));
        let r = h.ask(ft(1000), &mut c, &m);
        if strict {
            assert_eq!(r.code, Some(401));
        } else {
            assert_eq!(r.class, Class::Success);
        }
        // A new Allocate with the expired credentials is refused either way.
        let mut c2 = TurnClient::new(&cr.username, &cr.password);
        let m = c2.allocate(false);
        h.ask(ft(1001), &mut c2, &m);
        let m = c2.allocate(false);
        assert_eq!(h.ask(ft(1001), &mut c2, &m).code, Some(401));
    }
}

#[test]
fn lifetimes_clamp_refresh_and_expire() {
    let mut h = H::new(cfg());
    let mut c = client("erin");
    let m = c.allocate(false);
    h.ask(ft(1000), &mut c, &m);
    let m = c.allocate_with(&[(attr::LIFETIME, &100_000u32.to_be_bytes())]);
    let r = h.ask(ft(1000), &mut c, &m);
    assert_eq!(r.lifetime, Some(3600), "clamped to the maximum");
    let m = c.refresh(Some(30));
    assert_eq!(h.ask(ft(1000), &mut c, &m).lifetime, Some(30));
    h.advance(29);
    assert!(h.s.handle_timeout(h.now.mono).is_empty());
    h.advance(2);
    assert_eq!(h.s.handle_timeout(h.now.mono), vec![50_000]);
    assert_eq!(h.s.allocation_count(), 0);
    let st = h.s.take_stats();
    assert_eq!(st.allocations_expired, 1);
    assert_eq!(h.s.table_sizes().users, 0);
}

#[test]
fn refresh_zero_deletes_and_releases_relay() {
    let mut h = H::new(cfg());
    let mut c = client("erin");
    h.allocate(ft(1000), &mut c, false);
    let m = c.refresh(Some(0));
    let (out, reply) = h.send(ft(1000), &m);
    assert!(matches!(out, ClientOutput::ReplyAndRelease(50_000)));
    assert_eq!(parse_response(&reply, None).unwrap().lifetime, Some(0));
    assert_eq!(h.s.allocation_count(), 0);
    let m = c.refresh(None);
    assert_eq!(h.ask(ft(1000), &mut c, &m).code, Some(437));
}

/// Issue 3's acceptance list plus the translated forms: CreatePermission, ChannelBind and Send
/// toward each are refused (403 / dropped) and counted.
#[test]
fn relay_policy_refuses_every_denied_encoding() {
    let mut h = H::new(cfg());
    let mut c4 = client("p4");
    h.allocate(ft(1000), &mut c4, false);
    let mut c6 = client("p6");
    h.allocate(ft(1001), &mut c6, true);
    h.s.take_stats();
    let mut targets: Vec<SocketAddr> = crate::policy::DENIED_EXAMPLES
        .iter()
        .map(|s| SocketAddr::new(s.parse().unwrap(), 5000))
        .collect();
    targets.push(SERVER.parse().unwrap());
    let mut expected = 0;
    for t in targets {
        let (c, f) = if t.is_ipv4() {
            (&mut c4, ft(1000))
        } else {
            (&mut c6, ft(1001))
        };
        let m = c.create_permission(&[t]);
        let r = h.ask(f, c, &m);
        assert_eq!(r.code, Some(403), "CreatePermission {t}");
        assert!(r.integrity_ok, "authenticated errors carry integrity");
        let m = c.channel_bind(0x4000, t);
        assert_eq!(h.ask(f, c, &m).code, Some(403), "ChannelBind {t}");
        let m = c.send_indication(t, b"x");
        assert!(
            matches!(
                h.send(f, &m).0,
                ClientOutput::Drop(DropReason::PolicyDenied)
            ),
            "Send {t}"
        );
        expected += 3;
    }
    let st = h.s.take_stats();
    assert_eq!(st.policy_denials_total(), expected);
    assert!(st.policy_denials[DenyReason::OwnAddress as usize] >= 3);
}

#[test]
fn duplicate_peer_addresses_are_all_vetted() {
    let mut h = H::new(cfg());
    let mut c = client("x");
    h.allocate(ft(1000), &mut c, false);
    let m = c.create_permission(&[peer(PUBLIC_PEER), peer("169.254.169.254:80")]);
    assert_eq!(h.ask(ft(1000), &mut c, &m).code, Some(403));
    // Nothing was installed: a Send to the public peer is still refused.
    let m = c.send_indication(peer(PUBLIC_PEER), b"x");
    assert!(matches!(
        h.send(ft(1000), &m).0,
        ClientOutput::Drop(DropReason::NoPermission)
    ));
}

#[test]
fn allow_list_and_loopback_switch() {
    let mut c0 = cfg();
    c0.policy = RelayPolicy::new(
        vec!["10.0.0.5".parse::<Cidr>().unwrap()],
        vec![],
        vec![SERVER.parse().unwrap()],
        true,
    );
    let mut h = H::new(c0);
    let mut c = client("sfu-user");
    h.allocate(ft(1000), &mut c, false);
    for ok in ["10.0.0.5:5000", "127.0.0.1:3480"] {
        let m = c.create_permission(&[peer(ok)]);
        assert_eq!(h.ask(ft(1000), &mut c, &m).class, Class::Success, "{ok}");
    }
    for bad in ["10.0.0.6:5000", "127.0.0.1:3478", "0.0.0.0:3480"] {
        let m = c.create_permission(&[peer(bad)]);
        assert_eq!(h.ask(ft(1000), &mut c, &m).code, Some(403), "{bad}");
    }
}

#[test]
fn send_indication_needs_permission_then_relays() {
    let mut h = H::new(cfg());
    let mut c = client("x");
    h.allocate(ft(1000), &mut c, false);
    let m = c.send_indication(peer(PUBLIC_PEER), b"hello");
    assert!(matches!(
        h.send(ft(1000), &m).0,
        ClientOutput::Drop(DropReason::NoPermission)
    ));
    let m = c.create_permission(&[peer(PUBLIC_PEER)]);
    assert_eq!(h.ask(ft(1000), &mut c, &m).class, Class::Success);
    let m = c.send_indication(peer(PUBLIC_PEER), b"hello");
    match h.send(ft(1000), &m).0 {
        ClientOutput::Relay {
            relay,
            peer: p,
            payload,
        } => {
            assert_eq!(relay, 50_000);
            assert_eq!(p, peer(PUBLIC_PEER));
            assert_eq!(&m[payload], b"hello");
        }
        o => panic!("expected relay, got {o:?}"),
    }
    // Permissions are per IP: another port of the same peer works too.
    let m = c.send_indication(peer("8.8.8.8:4001"), b"x");
    assert!(matches!(h.send(ft(1000), &m).0, ClientOutput::Relay { .. }));
    // Permission expires after 300 s.
    h.advance(301);
    let m = c.send_indication(peer(PUBLIC_PEER), b"x");
    assert!(matches!(
        h.send(ft(1000), &m).0,
        ClientOutput::Drop(DropReason::NoPermission)
    ));
    // Send from a client without allocation is dropped.
    let m = c.send_indication(peer(PUBLIC_PEER), b"x");
    assert!(matches!(
        h.send(ft(9), &m).0,
        ClientOutput::Drop(DropReason::NoAllocation)
    ));
}

/// RFC 5766 §11 allows 0x4000-0x7FFF, and `turnutils_uclient` draws from all of it.
#[test]
fn channel_bind_accepts_the_whole_rfc5766_range() {
    let mut h = H::new(cfg());
    let mut c = client("x");
    h.allocate(ft(1000), &mut c, false);
    for (n, p) in [(0x4000, "8.8.8.8:4000"), (0x7FFF, "8.8.8.8:4001")] {
        let m = c.channel_bind(n, peer(p));
        assert_eq!(h.ask(ft(1000), &mut c, &m).class, Class::Success, "{n:#x}");
    }
    let cd = channel_data(0x7FFF, b"top", false);
    match h.send(ft(1000), &cd).0 {
        ClientOutput::Relay {
            peer: to, payload, ..
        } => {
            assert_eq!(to, peer("8.8.8.8:4001"));
            assert_eq!(&cd[payload], b"top");
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn channel_bind_and_channel_data_both_directions() {
    let mut h = H::new(cfg());
    let mut c = client("x");
    h.allocate(ft(1000), &mut c, false);
    let p = peer(PUBLIC_PEER);
    let m = c.channel_bind(0x3FFF, p);
    assert_eq!(
        h.ask(ft(1000), &mut c, &m).code,
        Some(400),
        "channel below range"
    );
    let m = c.channel_bind(0x8000, p);
    assert_eq!(
        h.ask(ft(1000), &mut c, &m).code,
        Some(400),
        "channel above range"
    );
    let m = c.channel_bind(0x4001, p);
    assert_eq!(h.ask(ft(1000), &mut c, &m).class, Class::Success);
    let m = c.channel_bind(0x4001, peer("8.8.4.4:1"));
    assert_eq!(
        h.ask(ft(1000), &mut c, &m).code,
        Some(400),
        "channel rebound to another peer"
    );
    let m = c.channel_bind(0x4002, p);
    assert_eq!(
        h.ask(ft(1000), &mut c, &m).code,
        Some(400),
        "peer bound to two channels"
    );
    assert_eq!(
        h.s.take_stats().channel_conflicts,
        2,
        "both conflicts counted"
    );
    let m = c.channel_bind(0x4001, p);
    assert_eq!(
        h.ask(ft(1000), &mut c, &m).class,
        Class::Success,
        "refresh is allowed"
    );

    let cd = channel_data(0x4001, b"media", false);
    match h.send(ft(1000), &cd).0 {
        ClientOutput::Relay {
            peer: to, payload, ..
        } => {
            assert_eq!(to, p);
            assert_eq!(&cd[payload], b"media");
        }
        o => panic!("{o:?}"),
    }
    let cd = channel_data(0x4002, b"media", false);
    assert!(matches!(
        h.send(ft(1000), &cd).0,
        ClientOutput::Drop(DropReason::NoChannel)
    ));

    // Peer → client uses the channel.
    let id = h.s.allocation_of(&ft(1000)).unwrap();
    let mut buf = vec![0u8; PEER_HEADROOM + 5 + PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + 5].copy_from_slice(b"reply");
    let out =
        h.s.handle_peer(h.now, id, p, &mut buf, PEER_HEADROOM..PEER_HEADROOM + 5);
    let PeerOutput::Forward(r) = out else {
        panic!("{out:?}")
    };
    assert_eq!(&buf[r], &channel_data(0x4001, b"reply", false)[..]);

    // A peer on another port of the same IP has permission but no channel: Data indication.
    let other = peer("8.8.8.8:4001");
    let out =
        h.s.handle_peer(h.now, id, other, &mut buf, PEER_HEADROOM..PEER_HEADROOM + 5);
    let PeerOutput::Forward(r) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        parse_data_indication(&buf[r]),
        Some((other, b"reply".to_vec()))
    );

    // Unknown peers are dropped.
    let out = h.s.handle_peer(
        h.now,
        id,
        peer("1.1.1.1:1"),
        &mut buf,
        PEER_HEADROOM..PEER_HEADROOM + 5,
    );
    assert_eq!(out, PeerOutput::Drop(DropReason::NoPermission));

    // Channel bindings last 600 s, but its permission only 300 s unless refreshed.
    h.advance(301);
    let cd = channel_data(0x4001, b"late", false);
    assert!(matches!(
        h.send(ft(1000), &cd).0,
        ClientOutput::Drop(DropReason::NoPermission)
    ));
    let st = h.s.take_stats();
    assert_eq!(st.client_to_peer_packets, 1);
    assert_eq!(st.peer_to_client_packets, 2);
}

#[test]
fn stream_transport_pads_channel_data_and_data_indications() {
    let mut h = H::new(cfg());
    let mut c = client("x");
    let f = FiveTuple {
        transport: Transport::Tcp,
        ..ft(1000)
    };
    h.allocate(f, &mut c, false);
    let p = peer(PUBLIC_PEER);
    let m = c.channel_bind(0x4000, p);
    assert_eq!(h.ask(f, &mut c, &m).class, Class::Success);
    let id = h.s.allocation_of(&f).unwrap();
    let mut buf = vec![0xAAu8; PEER_HEADROOM + 5 + PEER_TAILROOM];
    let out =
        h.s.handle_peer(h.now, id, p, &mut buf, PEER_HEADROOM..PEER_HEADROOM + 5);
    let PeerOutput::Forward(r) = out else {
        panic!()
    };
    assert_eq!(r.len(), 12);
    assert_eq!(&buf[r], &channel_data(0x4000, &[0xAA; 5], true)[..]);
    // Data indications are always padded (they are STUN messages).
    let other = peer("8.8.8.8:9");
    let out =
        h.s.handle_peer(h.now, id, other, &mut buf, PEER_HEADROOM..PEER_HEADROOM + 5);
    let PeerOutput::Forward(r) = out else {
        panic!()
    };
    assert_eq!(r.len() % 4, 0);
    assert!(Message::parse(&buf[r]).is_ok());
}

#[test]
fn ipv6_allocation_and_family_errors() {
    let mut h = H::new(cfg());
    let mut c = client("six");
    let relayed = h.allocate(ft(1000), &mut c, true);
    assert!(relayed.is_ipv6());
    let m = c.create_permission(&[peer(PUBLIC_PEER)]);
    assert_eq!(h.ask(ft(1000), &mut c, &m).code, Some(443));
    let m = c.create_permission(&[peer("[2a00:1450::1]:5")]);
    assert_eq!(h.ask(ft(1000), &mut c, &m).class, Class::Success);

    let mut c0 = cfg();
    c0.ipv6_relay = false;
    let mut h = H::new(c0);
    let mut c = client("six");
    let m = c.allocate(true);
    h.ask(ft(1000), &mut c, &m);
    let m = c.allocate(true);
    assert_eq!(h.ask(ft(1000), &mut c, &m).code, Some(440));
    let m = c.allocate_with(&[(attr::REQUESTED_ADDRESS_FAMILY, &[9, 0, 0, 0])]);
    assert_eq!(h.ask(ft(1000), &mut c, &m).code, Some(440));
}

#[test]
fn allocate_attribute_errors() {
    let mut h = H::new(cfg());
    let mut c = client("x");
    let m = c.allocate(false);
    h.ask(ft(1000), &mut c, &m);
    let m = c.allocate_transport(None);
    assert_eq!(h.ask(ft(1000), &mut c, &m).code, Some(400));
    let m = c.allocate_with(&[(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0])]);
    // First REQUESTED-TRANSPORT (UDP) wins; a TCP-only request is refused below.
    assert_eq!(h.ask(ft(1000), &mut c, &m).class, Class::Success);
    let mut c = client("y");
    let m = c.allocate(false);
    h.ask(ft(1001), &mut c, &m);
    let m = c.allocate_with(&[(attr::EVEN_PORT, &[0x80, 0, 0, 0])]);
    assert_eq!(
        h.ask(ft(1001), &mut c, &m).code,
        Some(508),
        "no port reservations"
    );
    let m = c.allocate_with(&[(attr::RESERVATION_TOKEN, &[1; 8])]);
    assert_eq!(h.ask(ft(1001), &mut c, &m).code, Some(508));
    let m = c.allocate_with(&[(0x0030, &[1, 2, 3, 4])]);
    assert_eq!(
        h.ask(ft(1001), &mut c, &m).code,
        Some(420),
        "unknown comprehension-required"
    );
    let m = c.allocate_with(&[
        (attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]),
        (attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    ]);
    assert_eq!(h.ask(ft(1001), &mut c, &m).code, Some(400));
    let m = c.allocate_with(&[(attr::DONT_FRAGMENT, &[]), (attr::EVEN_PORT, &[0, 0, 0, 0])]);
    assert_eq!(h.ask(ft(1001), &mut c, &m).class, Class::Success);
}

#[test]
fn unsupported_transport_gets_442() {
    let mut h = H::new(cfg());
    let mut c = client("x");
    let m = c.allocate(false);
    h.ask(ft(1000), &mut c, &m);
    let m = c.allocate_transport(Some(6));
    assert_eq!(h.ask(ft(1000), &mut c, &m).code, Some(442));
}

#[test]
fn another_user_on_same_five_tuple_gets_441() {
    let mut h = H::new(cfg());
    let mut c = client("owner");
    h.allocate(ft(1000), &mut c, false);
    let mut other = client("intruder");
    let m = other.refresh(None);
    h.ask(ft(1000), &mut other, &m);
    let m = other.refresh(None);
    assert_eq!(h.ask(ft(1000), &mut other, &m).code, Some(441));
}

#[test]
fn quotas_per_user_total_and_permissions() {
    let mut c0 = cfg();
    c0.max_allocations_per_user = 2;
    c0.max_allocations = 3;
    c0.max_permissions_per_allocation = 2;
    let mut h = H::new(c0);
    let mut c = client("q");
    h.allocate(ft(1), &mut c, false);
    let mut c = client("q");
    h.allocate(ft(2), &mut c, false);
    let mut c = client("q");
    let m = c.allocate(false);
    h.ask(ft(3), &mut c, &m);
    let m = c.allocate(false);
    assert_eq!(h.ask(ft(3), &mut c, &m).code, Some(486));
    let mut c = client("r");
    h.allocate(ft(4), &mut c, false);
    let mut c5 = client("s");
    let m = c5.allocate(false);
    h.ask(ft(5), &mut c5, &m);
    let m = c5.allocate(false);
    assert_eq!(h.ask(ft(5), &mut c5, &m).code, Some(508), "global cap");
    let m = c.create_permission(&[peer("8.8.8.8:1"), peer("8.8.4.4:1")]);
    assert_eq!(h.ask(ft(4), &mut c, &m).class, Class::Success);
    let m = c.create_permission(&[peer("9.9.9.9:1")]);
    assert_eq!(h.ask(ft(4), &mut c, &m).code, Some(508), "permission cap");
    let m = c.create_permission(&[peer("8.8.8.8:2")]);
    assert_eq!(
        h.ask(ft(4), &mut c, &m).class,
        Class::Success,
        "refresh within cap"
    );
    assert_eq!(h.s.take_stats().quota_refusals, 3);
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut c0 = cfg();
    c0.allocation_bandwidth_bytes_per_sec = 1000;
    let mut h = H::new(c0);
    let mut c = client("bw");
    h.allocate(ft(1), &mut c, false);
    let m = c.channel_bind(0x4000, peer(PUBLIC_PEER));
    h.ask(ft(1), &mut c, &m);
    let cd = channel_data(0x4000, &[0; 400], false);
    let mut relayed = 0;
    for _ in 0..5 {
        if matches!(h.send(ft(1), &cd).0, ClientOutput::Relay { .. }) {
            relayed += 1;
        }
    }
    assert_eq!(relayed, 2, "1000 B/s bucket holds two 400 B packets");
    h.now.mono += Duration::from_millis(500);
    assert!(
        matches!(h.send(ft(1), &cd).0, ClientOutput::Relay { .. }),
        "refilled"
    );
    assert!(h.s.take_stats().dropped[DropReason::Bandwidth as usize] >= 3);
}

#[test]
fn sha256_integrity_is_verified_and_answered_in_kind() {
    let mut h = H::new(cfg());
    let mut c = client("sha");
    c.use_sha256 = true;
    let m = c.allocate(false);
    h.ask(ft(1), &mut c, &m);
    let m = c.allocate(false);
    let (_, reply) = h.send(ft(1), &m);
    let msg = Message::parse(&reply).unwrap();
    assert_eq!(msg.class(), Class::Success);
    assert!(msg.has_integrity_sha256());
    assert!(msg.verify_integrity(&c.key().unwrap()));
}

#[test]
fn tampered_or_unsigned_requests_refused() {
    let mut h = H::new(cfg());
    let mut c = client("t");
    let m = c.allocate(false);
    h.ask(ft(1), &mut c, &m);
    let mut m = c.allocate(false);
    // Flip a byte inside REQUESTED-TRANSPORT's padding: MI no longer matches. FINGERPRINT is
    // recomputed so that the integrity check is what refuses it.
    m[HEADER + 5] ^= 0xFF;
    let fp_at = m.len() - 8;
    let mut fixed = m[..fp_at].to_vec();
    let len = (fixed.len() + 8 - stun::HEADER_LEN) as u16;
    fixed[2..4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32fast::hash(&fixed) ^ 0x5354_554e;
    fixed.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
    fixed.extend_from_slice(&4u16.to_be_bytes());
    fixed.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(h.ask(ft(1), &mut c, &fixed).code, Some(401));
    // A broken FINGERPRINT is dropped silently.
    let mut m = c.allocate(false);
    let last = m.len() - 1;
    m[last] ^= 1;
    assert!(matches!(
        h.send(ft(1), &m).0,
        ClientOutput::Drop(DropReason::Malformed)
    ));
    assert_eq!(h.s.allocation_count(), 0);
}

const HEADER: usize = stun::HEADER_LEN;

#[test]
fn unauthenticated_flood_creates_no_state_and_is_rate_limited() {
    let mut c0 = cfg();
    c0.unauthorized_per_ip_per_sec = 10;
    let mut h = H::new(c0);
    let before = h.s.table_sizes();
    let mut c = client("flood");
    // 100,000 Allocates from one IP on varying ports: only 10 answered per second.
    let mut answered = 0;
    for i in 0..100_000u32 {
        let f = ft(1024 + (i % 60_000) as u16);
        let m = c.allocate(false);
        if matches!(h.send(f, &m).0, ClientOutput::Reply) {
            answered += 1;
        }
    }
    assert_eq!(answered, 10);
    // 100,000 from distinct IPs: answered, but still no state.
    for i in 0..100_000u32 {
        let f = FiveTuple {
            client: SocketAddr::new(std::net::IpAddr::V4((0x0A00_0000 + i).into()), 40_000),
            ..ft(1)
        };
        let m = c.allocate(false);
        h.send(f, &m);
    }
    let after = h.s.table_sizes();
    assert_eq!(before, after, "no table grew");
    assert_eq!(after.allocations, 0);
    let st = h.s.take_stats();
    assert_eq!(st.allocations_created, 0);
    assert!(st.unauthorized_suppressed >= 99_990);
}

#[test]
fn password_matches_coturn_formula() {
    let cr = mint_credentials_at(SECRET, "u", 60, UNIX);
    assert_eq!(cr.password, rest_password(SECRET.as_bytes(), &cr.username));
}

#[test]
fn unknown_request_method_gets_400_and_indications_ignored() {
    let mut h = H::new(cfg());
    let mut out = Vec::new();
    stun::MessageBuilder::new(&mut out, 0x00B, Class::Request, [1; 12]);
    let (_, reply) = h.send(ft(1), &out);
    assert_eq!(parse_response(&reply, None).unwrap().code, Some(400));
    let mut out = Vec::new();
    stun::MessageBuilder::new(&mut out, method::BINDING, Class::Indication, [1; 12]);
    assert!(matches!(
        h.send(ft(1), &out).0,
        ClientOutput::Drop(DropReason::Ignored)
    ));
    assert!(matches!(
        h.send(ft(1), &[0xFF, 0, 0, 0]).0,
        ClientOutput::Drop(DropReason::Malformed)
    ));
}
