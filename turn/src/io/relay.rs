//! Relay sockets: binding one in the configured port range and the task that carries peer
//! datagrams back to the client.
//!
//! Owns the per-allocation UDP socket and its receive loop. The loop is synchronous between
//! readiness wake-ups: receive a batch into a per-thread buffer, ask the core under one lock
//! acquisition, send the batch to the client, so buffers are shared by all relays of a thread
//! instead of costing memory per allocation.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};

use super::Shared;
use super::mmsg::{self, BATCH, RecvBatch};
use crate::core::{AllocId, DropReason, Family, Now, PEER_HEADROOM, PEER_TAILROOM, PeerOutput};

/// Largest datagram a relay accepts from a peer (bigger ones are truncated and dropped).
const MAX_PEER_DATAGRAM: usize = 0xFFFF - 64;

/// The shell's handle for one allocation's relay socket, stored in the core as `R`.
pub struct RelayInner {
    pub socket: UdpSocket,
    pub stop: Notify,
    /// The socket is IPv6 (destinations must be IPv6 too).
    pub v6: bool,
}

impl RelayInner {
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

pub type RelayHandle = Arc<RelayInner>;

/// Where peer data goes: the client's UDP listener socket or its stream connection.
pub enum ClientSink {
    Udp {
        listener: Arc<UdpSocket>,
        client: SocketAddr,
        v6_socket: bool,
    },
    Stream(mpsc::Sender<Vec<u8>>),
}

/// Hands out relay ports in turn so consecutive allocations rarely collide.
pub struct PortCursor {
    next: AtomicU32,
    min: u16,
    max: u16,
}

impl PortCursor {
    pub fn new(min: u16, max: u16, seed: u32) -> Self {
        let span = u32::from(max - min) + 1;
        PortCursor {
            next: AtomicU32::new(seed % span),
            min,
            max,
        }
    }

    fn span(&self) -> u32 {
        u32::from(self.max - self.min) + 1
    }
}

/// Binds a UDP socket on `ip` at a free port of the range (an even one if asked), with DF if
/// asked. Tries every port of the range at most once.
pub fn bind_relay(
    ip: IpAddr,
    ports: &PortCursor,
    even: bool,
    dont_fragment: bool,
) -> io::Result<UdpSocket> {
    let span = ports.span();
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "relay port range exhausted");
    for _ in 0..span {
        let off = ports.next.fetch_add(1, Ordering::Relaxed) % span;
        let port = ports.min + off as u16;
        if even && port % 2 == 1 {
            continue;
        }
        let sock = new_socket(ip, dont_fragment)?;
        match sock.bind(&SocketAddr::new(ip, port).into()) {
            Ok(()) => {
                let std: std::net::UdpSocket = sock.into();
                return UdpSocket::from_std(std);
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn new_socket(ip: IpAddr, dont_fragment: bool) -> io::Result<Socket> {
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if ip.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    // Bigger buffers absorb bursts; the kernel caps them at net.core.*mem_max.
    let _ = sock.set_recv_buffer_size(1 << 20);
    let _ = sock.set_send_buffer_size(1 << 20);
    if dont_fragment && ip.is_ipv4() {
        set_dont_fragment(&sock)?;
    }
    Ok(sock)
}

fn set_dont_fragment(sock: &Socket) -> io::Result<()> {
    let v: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: valid fd, option pointer and length for IP_MTU_DISCOVER.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The advertised relayed address for a bound socket.
pub fn advertised(shared: &Shared, family: Family, bound: SocketAddr) -> SocketAddr {
    let ip = match family {
        Family::V4 => shared.cfg.advertised_ipv4.map(IpAddr::V4),
        Family::V6 => shared.cfg.advertised_ipv6.map(IpAddr::V6),
    };
    SocketAddr::new(ip.unwrap_or(bound.ip()), bound.port())
}

thread_local! {
    static PEER_BUF: RefCell<RecvBatch> =
        RefCell::new(RecvBatch::new(PEER_HEADROOM, MAX_PEER_DATAGRAM, PEER_TAILROOM));
}

/// Receives from the relay socket until the allocation goes away or the server stops.
pub async fn run(shared: Arc<Shared>, id: AllocId, relay: RelayHandle, sink: ClientSink) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = relay.stop.notified() => break,
            _ = shutdown.changed() => break,
            r = relay.socket.readable() => {
                if r.is_err() {
                    break;
                }
            }
        }
        let res = relay.socket.try_io(Interest::READABLE, || {
            relay_batch(&shared, id, relay.fd(), &sink)
        });
        match res {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::debug!(error = %e, "TURN relay socket error");
            }
        }
    }
}

/// One receive batch. `Ok(false)` when the allocation no longer exists. Returns WouldBlock
/// when the queue is drained (fewer than a full batch), which clears tokio's readiness; a
/// datagram arriving later raises a new edge, so none is missed.
fn relay_batch(shared: &Shared, id: AllocId, fd: RawFd, sink: &ClientSink) -> io::Result<bool> {
    PEER_BUF.with(|cell| {
        let Ok(mut rb) = cell.try_borrow_mut() else {
            return Err(io::Error::other("relay buffer busy"));
        };
        let n = rb.recv(fd)?;
        let now = Now {
            mono: std::time::Instant::now(),
            unix: crate::auth::unix_now(),
        };
        let mut out: [(usize, std::ops::Range<usize>); BATCH] = std::array::from_fn(|_| (0, 0..0));
        let mut m = 0;
        let mut alive = true;
        {
            let mut core = shared.lock();
            for i in 0..n {
                let Some((src, range)) = rb.get(i) else {
                    continue;
                };
                match core.handle_peer(now, id, src, rb.buf_mut(i), range) {
                    PeerOutput::Forward(r) => {
                        out[m] = (i, r);
                        m += 1;
                    }
                    PeerOutput::Drop(DropReason::NoAllocation) => alive = false,
                    PeerOutput::Drop(_) => {}
                }
            }
            shared.flush_stats(&mut core);
        }
        match sink {
            ClientSink::Udp {
                listener,
                client,
                v6_socket,
            } => {
                let mut items: [(SocketAddr, &[u8]); BATCH] = [(*client, &[][..]); BATCH];
                for (k, (i, r)) in out[..m].iter().enumerate() {
                    items[k] = (*client, &rb.buf(*i)[r.clone()]);
                }
                if m > 0 {
                    let failed = mmsg::send_all(listener.as_raw_fd(), &items[..m], *v6_socket);
                    if failed > 0 {
                        shared.metrics.send_failures.inc_by(failed);
                    }
                }
            }
            ClientSink::Stream(tx) => {
                for (i, r) in &out[..m] {
                    // A full queue means the client's connection is not keeping up: drop, as
                    // a router would, rather than buffer without bound.
                    if tx.try_send(rb.buf(*i)[r.clone()].to_vec()).is_err() {
                        shared.metrics.send_failures.inc();
                    }
                }
            }
        }
        if !alive {
            return Ok(false);
        }
        if n < BATCH {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(true)
    })
}
