//! Media worker threads: the thin I/O shell around [`core::WorkerCore`].
//!
//! Each worker is an OS thread running a single-threaded Tokio runtime that owns one UDP socket,
//! the rooms placed on it and their sessions. It waits for a datagram batch, a command or the
//! next deadline, hands it to the core, and sends what the core produced. A room lives on one
//! worker, so forwarding inside a room takes no lock.

pub(crate) mod core;
mod send;

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{error, warn};

use self::core::{Command, Placement, WorkerCore};
use crate::config::MediaConfig;
use crate::stats::WorkerStats;

/// Datagram buffers per receive call.
const RECV_BATCH: usize = 32;
/// Size of one receive buffer: room for a GRO train of full-size datagrams.
const RECV_BUF: usize = 64 * 1024;
/// Kernel socket buffers: bursts of keyframes to many subscribers must not overflow them.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// Commands queued to a worker before senders wait.
const COMMAND_QUEUE: usize = 1024;

/// The node's handle on one worker.
pub(crate) struct WorkerHandle {
    /// The socket's bound address.
    pub local: SocketAddr,
    /// What candidates advertise (public IPs, same port).
    pub advertised: Vec<SocketAddr>,
    pub commands: mpsc::Sender<Command>,
    pub stats: Arc<Mutex<WorkerSnapshot>>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

/// A copy of a worker's counters and gauges, refreshed a few times per second.
#[derive(Debug, Default, Clone)]
pub struct WorkerSnapshot {
    pub stats: WorkerStats,
    pub gauges: crate::stats::WorkerGauges,
}

pub(crate) fn bind(config: &MediaConfig, index: usize) -> io::Result<StdUdpSocket> {
    let port = if config.port == 0 {
        0
    } else {
        config
            .port
            .checked_add(index as u16)
            .ok_or_else(|| io::Error::other("media port range overflows"))?
    };
    let addr = SocketAddr::new(config.bind, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

pub(crate) fn spawn(
    index: usize,
    config: MediaConfig,
    socket: StdUdpSocket,
    advertised: Vec<SocketAddr>,
    placement: Placement,
    node_events: mpsc::Sender<crate::api::NodeEvent>,
) -> io::Result<WorkerHandle> {
    let local = socket.local_addr()?;
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let stats = Arc::new(Mutex::new(WorkerSnapshot::default()));
    let shared = stats.clone();
    let adv = advertised.clone();
    let thread = std::thread::Builder::new()
        .name(format!("moien-media-{index}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!("media worker {index}: runtime: {e}");
                    return;
                }
            };
            let core = WorkerCore::new(index, config, adv, placement, Some(node_events));
            // Run as a task, not as block_on's own future: waking block_on's future writes to
            // the runtime's eventfd (and costs one more epoll round) on every socket wake-up,
            // while a task woken on its own thread is only queued.
            let result = rt.block_on(async { tokio::spawn(run(core, socket, rx, shared)).await });
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!("media worker {index} stopped: {e}"),
                Err(e) => error!("media worker {index} failed: {e}"),
            }
        })?;
    Ok(WorkerHandle {
        local,
        advertised,
        commands: tx,
        stats,
        thread: Some(thread),
    })
}

async fn run(
    mut core: WorkerCore,
    socket: StdUdpSocket,
    mut commands: mpsc::Receiver<Command>,
    shared: Arc<Mutex<WorkerSnapshot>>,
) -> io::Result<()> {
    let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
    let socket = UdpSocket::from_std(socket)?;
    let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; RECV_BUF]).collect();
    let mut metas = vec![RecvMeta::default(); RECV_BATCH];
    let mut next_snapshot = Instant::now();
    let mut sender = send::Sender::default();
    let sleep = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = core
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        // Re-arming tokio's timer wakes its driver through an eventfd write whenever the new
        // deadline is earlier. An earlier deadline must re-arm; a later one only when it moves
        // by the timer's resolution (1 ms), since firing early just costs an empty pass.
        if armed.is_none_or(|a| deadline < a || deadline >= a + Duration::from_millis(1)) {
            sleep.as_mut().reset(deadline.into());
            armed = Some(deadline);
        }
        let woke: Instant;
        tokio::select! {
            biased;
            cmd = commands.recv() => {
                woke = Instant::now();
                let Some(cmd) = cmd else { break };
                core.handle_command(Instant::now(), cmd);
                // Take whatever else is queued without going back to the reactor.
                while let Ok(cmd) = commands.try_recv() {
                    core.handle_command(Instant::now(), cmd);
                }
            }
            r = socket.readable() => {
                woke = Instant::now();
                r?;
                receive_batch(&mut core, &socket, &state, &mut bufs, &mut metas, &mut sender);
            }
            _ = &mut sleep => {
                woke = Instant::now();
                armed = None;
                core.handle_timeout(Instant::now());
            }
        }
        send_all(&mut core, &socket, &state, &mut sender);
        let now = Instant::now();
        core.stats.busy_nanos += now.saturating_duration_since(woke).as_nanos() as u64;
        if now >= next_snapshot {
            next_snapshot = now + Duration::from_millis(250);
            if let Ok(mut s) = shared.lock() {
                s.stats = core.stats.clone();
                s.gauges = core.gauges();
            }
        }
    }
    Ok(())
}

fn receive_batch(
    core: &mut WorkerCore,
    socket: &UdpSocket,
    state: &UdpSocketState,
    bufs: &mut [Vec<u8>],
    metas: &mut [RecvMeta],
    sender: &mut send::Sender,
) {
    // A few batches per wake-up keep latency low without starving commands and timers.
    for _ in 0..4 {
        let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let res = socket.try_io(Interest::READABLE, || {
            state.recv(UdpSockRef::from(socket), &mut slices, metas)
        });
        let n = match res {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                // ICMP errors surface here (e.g. a peer's port closed); not fatal.
                warn!("media recv: {e}");
                return;
            }
        };
        let now = Instant::now();
        for (meta, slice) in metas.iter().zip(slices.iter()).take(n) {
            let data = &slice[..meta.len.min(slice.len())];
            let stride = meta.stride.max(1);
            for datagram in data.chunks(stride) {
                core.handle_datagram(now, meta.addr, datagram);
            }
        }
        // Keep the send side moving during long receive runs.
        send_all(core, socket, state, sender);
        if n < bufs.len() {
            return;
        }
    }
}

/// Sends everything the core produced. UDP sends do not block in practice; a full buffer drops
/// the datagram like the network would, and congestion control reacts. Straight to the
/// non-blocking socket: tokio's write readiness is not needed here.
fn send_all(
    core: &mut WorkerCore,
    socket: &UdpSocket,
    state: &UdpSocketState,
    sender: &mut send::Sender,
) {
    let outcome = {
        let transmits = core.transmits();
        sender.send(socket, state, transmits)
    };
    core.clear_transmits();
    core.stats.send_errors += outcome.errors;
    core.stats.send_syscalls += outcome.syscalls;
}
