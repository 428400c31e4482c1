//! UDP listener workers: one `SO_REUSEPORT` socket per worker, `recvmmsg` in, `sendmmsg` out.
//!
//! Owns the client-facing UDP loop: receive a batch, run it through the core under one lock
//! acquisition, then send responses and relayed payloads. Relayed payloads to the same relay
//! socket go out in one `sendmmsg`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::Shared;
use super::mmsg::{self, BATCH, RecvBatch};
use super::relay::{ClientSink, RelayHandle};
use crate::core::{ClientOutput, FiveTuple, Now, Transport};

/// Largest datagram accepted from a client.
const MAX_CLIENT_DATAGRAM: usize = 0xFFFF;

/// Binds `n` sockets to `addr` with `SO_REUSEPORT` (the first may pick the port).
pub fn bind_workers(addr: SocketAddr, n: usize) -> io::Result<Vec<Arc<UdpSocket>>> {
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n.max(1) {
        let domain = if bound.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.bind(&bound.into())?;
        let std: std::net::UdpSocket = s.into();
        bound = std.local_addr()?;
        out.push(Arc::new(UdpSocket::from_std(std)?));
    }
    Ok(out)
}

/// Serves one listener socket until shutdown.
pub async fn run(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let v6_socket = local.is_ipv6();
    let mut rb = RecvBatch::new(0, MAX_CLIENT_DATAGRAM, 0);
    let mut replies: Vec<u8> = Vec::with_capacity(4096);
    let mut reply_list: Vec<(SocketAddr, std::ops::Range<usize>)> = Vec::with_capacity(BATCH);
    let mut relays: Vec<(RelayHandle, SocketAddr, usize, std::ops::Range<usize>)> =
        Vec::with_capacity(BATCH);
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            r = socket.readable() => {
                if r.is_err() {
                    break;
                }
            }
        }
        let mut batches = 0;
        loop {
            replies.clear();
            reply_list.clear();
            relays.clear();
            let res = socket.try_io(Interest::READABLE, || {
                let n = rb.recv(socket.as_raw_fd())?;
                process(
                    &shared,
                    &socket,
                    local,
                    &mut rb,
                    n,
                    &mut replies,
                    &mut reply_list,
                    &mut relays,
                );
                Ok(n)
            });
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "TURN UDP receive error");
                    break;
                }
            };
            let failed = send_out(&socket, v6_socket, &rb, &replies, &reply_list, &relays);
            if failed > 0 {
                shared.metrics.send_failures.inc_by(failed);
            }
            if n < BATCH {
                break;
            }
            // A busy listener must not starve the relay tasks of its thread (the other
            // direction of the same calls): let them run every few full batches.
            batches += 1;
            if batches % 4 == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn process(
    shared: &Arc<Shared>,
    socket: &Arc<UdpSocket>,
    local: SocketAddr,
    rb: &mut RecvBatch,
    n: usize,
    replies: &mut Vec<u8>,
    reply_list: &mut Vec<(SocketAddr, std::ops::Range<usize>)>,
    relays: &mut Vec<(RelayHandle, SocketAddr, usize, std::ops::Range<usize>)>,
) {
    let now = Now {
        mono: std::time::Instant::now(),
        unix: crate::auth::unix_now(),
    };
    let mut core = shared.lock();
    for i in 0..n {
        let Some((src, range)) = rb.get(i) else {
            continue;
        };
        let ft = FiveTuple {
            client: src,
            server: local,
            transport: Transport::Udp,
        };
        let data = &rb.buf(i)[range.clone()];
        let start = replies.len();
        match core.handle_client(now, ft, data, replies) {
            ClientOutput::Drop(_) => {}
            ClientOutput::Reply => reply_list.push((src, start..replies.len())),
            ClientOutput::ReplyAndRelease(r) => {
                r.stop.notify_one();
                reply_list.push((src, start..replies.len()));
            }
            ClientOutput::Relay {
                relay,
                peer,
                payload,
            } => {
                relays.push((
                    relay,
                    peer,
                    i,
                    range.start + payload.start..range.start + payload.end,
                ));
            }
            ClientOutput::NeedRelay(p) => {
                let sink = ClientSink::Udp {
                    listener: socket.clone(),
                    client: src,
                    v6_socket: local.is_ipv6(),
                };
                super::complete_allocation(shared, &mut core, now, p, data, replies, sink);
                reply_list.push((src, start..replies.len()));
            }
        }
    }
    shared.flush_stats(&mut core);
}

/// Sends the batch's output; returns how many datagrams could not be sent.
fn send_out(
    socket: &UdpSocket,
    v6_socket: bool,
    rb: &RecvBatch,
    replies: &[u8],
    reply_list: &[(SocketAddr, std::ops::Range<usize>)],
    relays: &[(RelayHandle, SocketAddr, usize, std::ops::Range<usize>)],
) -> u64 {
    let mut failed = 0;
    if !reply_list.is_empty() {
        let mut items: Vec<(SocketAddr, &[u8])> = Vec::with_capacity(reply_list.len());
        items.extend(reply_list.iter().map(|(d, r)| (*d, &replies[r.clone()])));
        failed += mmsg::send_all(socket.as_raw_fd(), &items, v6_socket);
    }
    // Consecutive payloads for the same relay socket leave in one sendmmsg.
    let mut i = 0;
    let mut items: [(SocketAddr, &[u8]); BATCH] =
        [(SocketAddr::from(([0, 0, 0, 0], 0)), &[][..]); BATCH];
    while i < relays.len() {
        let relay = &relays[i].0;
        let mut m = 0;
        while i < relays.len() && Arc::ptr_eq(&relays[i].0, relay) && m < BATCH {
            let (_, peer, slot, ref r) = relays[i];
            items[m] = (peer, &rb.buf(slot)[r.clone()]);
            m += 1;
            i += 1;
        }
        failed += mmsg::send_all(relay.fd(), &items[..m], relay.v6);
    }
    failed
}
