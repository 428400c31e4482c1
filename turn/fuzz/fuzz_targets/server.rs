//! Fuzz target: the whole sans-IO request handler over a fake clock. The input is split into
//! messages by the stream framer, each handled as if from one client over UDP and TCP; peer
//! datagrams go through the in-place header writer.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use turn::core::{
    ClientOutput, CoreConfig, FiveTuple, Now, PEER_HEADROOM, PEER_TAILROOM, Server, Transport,
};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut server: Server<u32> = Server::new(CoreConfig::with_secret("s"), start);
    let mut now = Now {
        mono: start,
        unix: 1_700_000_000,
    };
    let mut rest = data;
    while !rest.is_empty() {
        let n = match turn::framing::frame_len(rest) {
            Ok(Some(n)) => n,
            _ => rest.len(),
        };
        let (msg, tail) = rest.split_at(n);
        rest = tail;
        for transport in [Transport::Udp, Transport::Tcp] {
            let ft = FiveTuple {
                client: "192.0.2.1:4000".parse().unwrap(),
                server: "192.0.2.2:3478".parse().unwrap(),
                transport,
            };
            let mut reply = Vec::new();
            if let ClientOutput::NeedRelay(p) = server.handle_client(now, ft, msg, &mut reply) {
                let _ = server.finish_allocate(
                    now,
                    p,
                    Some(("192.0.2.2:50000".parse().unwrap(), 1)),
                    msg,
                    &mut reply,
                );
            }
            if !reply.is_empty() {
                assert!(turn::stun::Message::parse(&reply).is_ok());
            }
            if let Some(id) = server.allocation_of(&ft) {
                let mut buf = vec![0u8; PEER_HEADROOM + msg.len() + PEER_TAILROOM];
                buf[PEER_HEADROOM..PEER_HEADROOM + msg.len()].copy_from_slice(msg);
                let _ = server.handle_peer(
                    now,
                    id,
                    "8.8.8.8:9".parse().unwrap(),
                    &mut buf,
                    PEER_HEADROOM..PEER_HEADROOM + msg.len(),
                );
            }
        }
        now.mono += Duration::from_secs(1);
        now.unix += 1;
        let _ = server.handle_timeout(now.mono);
    }
});
