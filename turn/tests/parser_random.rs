//! Random and mutated bytes through every parser and the whole core: nothing panics, every
//! accepted message is self-consistent, and no table grows past its bound. A deterministic
//! companion to the cargo-fuzz target in `fuzz/`, so plain `cargo test` exercises the parser.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turn::client::{TurnClient, binding_request, channel_data};
use turn::core::{CoreConfig, FiveTuple, Now, PEER_HEADROOM, PEER_TAILROOM, Server, Transport};
use turn::framing::{ChannelData, frame_len};
use turn::stun::{self, Message};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let cr = turn::mint_credentials_at("s", "u", 3600, 1_700_000_000);
    let mut c = TurnClient::new(&cr.username, &cr.password);
    let mut out = vec![binding_request([1; 12]), c.allocate(false)];
    // Teach the client a realm and nonce so the seeds carry USERNAME/REALM/NONCE/MI.
    let mut challenge = Vec::new();
    stun::MessageBuilder::new(
        &mut challenge,
        stun::method::ALLOCATE,
        stun::Class::Error,
        [0; 12],
    )
    .error_code(401, "Unauthorized")
    .attr(stun::attr::REALM, b"moien")
    .attr(stun::attr::NONCE, b"0123456789abcdef0123456789abcdef");
    c.on_response(&challenge);
    let peer: SocketAddr = "8.8.8.8:9".parse().unwrap();
    out.push(c.allocate(true));
    out.push(c.refresh(Some(0)));
    out.push(c.create_permission(&[peer, "[2001:db8::1]:1".parse().unwrap()]));
    out.push(c.channel_bind(0x4001, peer));
    out.push(c.send_indication(peer, b"payload"));
    out.push(channel_data(0x4001, b"media", true));
    out.push(challenge);
    out
}

fn exercise(server: &mut Server<u32>, now: Now, buf: &[u8], key: &[u8]) {
    if let Ok(m) = Message::parse(buf) {
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        assert_eq!(len + stun::HEADER_LEN, buf.len());
        assert_eq!(len % 4, 0);
        let tid = m.transaction_id();
        for t in m.attribute_types().collect::<Vec<_>>() {
            let v = m.get(t).expect("listed attribute is readable");
            assert!(v.len() <= buf.len());
            let _ = stun::decode_xor_address(v, &tid);
            let _ = stun::decode_address(v);
            let _ = stun::decode_error_code(v);
        }
        let _ = m.fingerprint_ok();
        let _ = m.verify_integrity(key);
        let _ = m.class();
        let _ = m.method();
    }
    if let Some(cd) = ChannelData::parse(buf) {
        assert!(cd.data.len() + 4 <= buf.len());
    }
    if let Ok(Some(n)) = frame_len(buf) {
        assert!(n <= buf.len() && n >= 4);
    }
    for transport in [Transport::Udp, Transport::Tcp] {
        let ft = FiveTuple {
            client: "192.0.2.1:4000".parse().unwrap(),
            server: "192.0.2.2:3478".parse().unwrap(),
            transport,
        };
        let mut reply = Vec::new();
        let out = server.handle_client(now, ft, buf, &mut reply);
        if let turn::core::ClientOutput::NeedRelay(p) = out {
            let _ = server.finish_allocate(
                now,
                p,
                Some(("192.0.2.2:50000".parse().unwrap(), 1)),
                buf,
                &mut reply,
            );
        }
        if !reply.is_empty() {
            assert!(
                Message::parse(&reply).is_ok(),
                "the server only emits well-formed messages"
            );
        }
    }
}

#[test]
fn random_and_mutated_inputs_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let start = Instant::now();
    let mut server: Server<u32> = Server::new(CoreConfig::with_secret("s"), start);
    let now = Now {
        mono: start + Duration::from_secs(5),
        unix: 1_700_000_000,
    };
    let seeds = seeds();
    for seed in &seeds {
        exercise(&mut server, now, seed, b"k");
    }
    for i in 0..200_000 {
        let mut buf = if i % 2 == 0 {
            let len = rng.below(300);
            (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        // Mutations: flip bytes, rewrite a length field, truncate, extend.
        for _ in 0..1 + rng.below(4) {
            if buf.is_empty() {
                break;
            }
            match rng.below(5) {
                0 | 1 => {
                    let at = rng.below(buf.len());
                    buf[at] ^= 1 << rng.below(8);
                }
                2 => {
                    let at = rng.below(buf.len());
                    buf[at] = rng.next() as u8;
                }
                3 => {
                    let n = rng.below(buf.len() + 1);
                    buf.truncate(n);
                }
                _ => {
                    let extra = rng.below(16);
                    buf.extend((0..extra).map(|_| rng.next() as u8));
                }
            }
        }
        // Keep the STUN cookie often enough to get past the first check.
        if i % 3 == 0 && buf.len() >= 8 {
            buf[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
            buf[0] &= 0x3F;
        }
        exercise(&mut server, now, &buf, b"k");
        // The peer path writes headers in place: any payload size must be safe.
        let mut pbuf = vec![0u8; PEER_HEADROOM + buf.len() + PEER_TAILROOM];
        pbuf[PEER_HEADROOM..PEER_HEADROOM + buf.len()].copy_from_slice(&buf);
        if let Some(id) = server.allocation_of(&FiveTuple {
            client: "192.0.2.1:4000".parse().unwrap(),
            server: "192.0.2.2:3478".parse().unwrap(),
            transport: Transport::Udp,
        }) {
            let _ = server.handle_peer(
                now,
                id,
                "8.8.8.8:9".parse().unwrap(),
                &mut pbuf,
                PEER_HEADROOM..PEER_HEADROOM + buf.len(),
            );
        }
    }
    let sizes = server.table_sizes();
    assert!(sizes.allocations <= 2 && sizes.tuples <= 2, "{sizes:?}");
}
