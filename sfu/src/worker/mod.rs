//! Media worker threads: the thin I/O shell around [`core::WorkerCore`].
//!
//! Each worker is an OS thread with its own `epoll` loop that owns one UDP socket, the rooms
//! placed on it and their sessions. It waits for a datagram batch, a command or the
//! next deadline, hands it to the core, and sends what the core produced. A room lives on one
//! worker, so forwarding inside a room takes no lock.

pub(crate) mod core;
mod deliver;
mod recv;
mod send;

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use quinn_udp::{UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tracing::{error, warn};

use self::core::{Command, Placement, WorkerCore};
use crate::config::MediaConfig;
use crate::stats::WorkerStats;

/// Kernel socket buffers: bursts of keyframes to many subscribers must not overflow them.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// Commands queued to a worker before senders wait.
const COMMAND_QUEUE: usize = 1024;
/// How long an empty worker sleeps when nothing is due.
const IDLE_WAIT: Duration = Duration::from_secs(1);
const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);

/// The node's handle on one worker.
pub(crate) struct WorkerHandle {
    /// The socket's bound address.
    pub local: SocketAddr,
    /// What candidates advertise (public IPs, same port).
    pub advertised: Vec<SocketAddr>,
    pub commands: CommandSender,
    pub stats: Arc<Mutex<WorkerSnapshot>>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

/// A copy of a worker's counters and gauges, refreshed a few times per second.
#[derive(Debug, Default, Clone)]
pub struct WorkerSnapshot {
    pub stats: WorkerStats,
    pub gauges: crate::stats::WorkerGauges,
    /// Share of one core the worker was busy (its loop's time outside the wait), smoothed
    /// over about a second: what room placement reads.
    pub busy: f64,
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
    node_events: tokio::sync::mpsc::Sender<crate::api::NodeEvent>,
) -> io::Result<WorkerHandle> {
    let local = socket.local_addr()?;
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let stats = Arc::new(Mutex::new(WorkerSnapshot::default()));
    let shared = stats.clone();
    let adv = advertised.clone();
    // The worker holds the waker too: closing its eventfd would take a wake-up not yet
    // collected out of epoll's ready list, such as the one announcing that the queue closed.
    let own_waker = waker.clone();
    let thread = std::thread::Builder::new()
        .name(format!("moien-media-{index}"))
        .spawn(move || {
            let _waker = own_waker;
            let core = WorkerCore::new(index, config, adv, placement, Some(node_events));
            if let Err(e) = run(index, core, socket, poll, rx, shared) {
                error!("media worker {index} stopped: {e}");
            }
        })?;
    Ok(WorkerHandle {
        local,
        advertised,
        commands: CommandSender {
            tx,
            waker: Some(waker),
        },
        stats,
        thread: Some(thread),
    })
}

/// The sending side of a worker's command queue: each command also wakes the worker's poll.
pub(crate) struct CommandSender {
    tx: mpsc::Sender<Command>,
    waker: Option<Arc<Waker>>,
}

impl CommandSender {
    pub async fn send(&self, cmd: Command) -> Result<(), mpsc::error::SendError<Command>> {
        self.tx.send(cmd).await?;
        self.wake();
        Ok(())
    }

    /// A sender whose worker is gone: every send fails.
    pub fn closed() -> Self {
        let (tx, _) = mpsc::channel(1);
        CommandSender { tx, waker: None }
    }

    fn wake(&self) {
        if let Some(w) = &self.waker
            && let Err(e) = w.wake()
        {
            warn!("media worker wake-up: {e}");
        }
    }
}

impl Drop for CommandSender {
    /// The worker learns that its queue closed on its next wake-up: close it, then wake it.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        self.wake();
    }
}

/// How often the worker copies its counters for readers (metrics, room placement).
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);

/// Weight of the newest interval in the smoothed busy share: with 250 ms intervals, about the
/// last second counts.
const BUSY_SMOOTHING: f64 = 0.4;

/// The worker's event loop: one `epoll_wait` for the socket, the command queue's waker and the
/// core's next deadline. A plain loop rather than an async runtime: Tokio's timer wrote to the
/// runtime's eventfd whenever the deadline moved earlier (hundreds of times a second, each
/// costing a spurious wake-up), and the worker has nothing else to run.
fn run(
    index: usize,
    mut core: WorkerCore,
    socket: StdUdpSocket,
    mut poll: Poll,
    mut commands: mpsc::Receiver<Command>,
    shared: Arc<Mutex<WorkerSnapshot>>,
) -> io::Result<()> {
    let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
    let delivery = deliver::Delivery::start(index)?;
    if let Err(e) = recv::enable_timestamps(&socket) {
        warn!("media socket: no receive timestamps ({e}); forwarding delays start at the read");
    }
    let fd = socket.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&fd), SOCKET, Interest::READABLE)?;
    let mut events = Events::with_capacity(4);
    let mut receiver = recv::Receiver::default();
    let mut io = Io {
        socket,
        state,
        sender: send::Sender::default(),
        caused: Vec::new(),
    };
    let mut next_snapshot = Instant::now();
    let mut last_snapshot = (next_snapshot, 0u64);
    let mut busy = 0.0f64;
    // The socket is edge-triggered: after a wake-up it is read until it would block, and this
    // stays set while a read stopped early (to let commands and timers in).
    let mut readable = true;
    loop {
        let timeout = if readable {
            Duration::ZERO
        } else {
            core.next_deadline()
                .map_or(IDLE_WAIT, |d| d.saturating_duration_since(Instant::now()))
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let woke = Instant::now();
        let mut wake = false;
        for event in events.iter() {
            match event.token() {
                SOCKET => readable = true,
                WAKE => wake = true,
                _ => {}
            }
        }
        if wake {
            loop {
                match commands.try_recv() {
                    Ok(cmd) => core.handle_command(Instant::now(), cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        delivery.deliver(core.take_signals());
                        return Ok(());
                    }
                }
            }
        }
        if readable {
            readable = receive_batch(&mut core, &mut receiver, &mut io);
        }
        let now = Instant::now();
        if core.next_deadline().is_some_and(|d| d <= now) {
            core.handle_timeout(now);
        }
        send_all(&mut core, &mut io);
        // Signaling after media: what this wake-up forwarded has left already.
        delivery.deliver(core.take_signals());
        let now = Instant::now();
        core.stats.busy_nanos += now.saturating_duration_since(woke).as_nanos() as u64;
        if now >= next_snapshot {
            next_snapshot = now + SNAPSHOT_INTERVAL;
            let (at, busy_nanos) = last_snapshot;
            let elapsed = now.saturating_duration_since(at).as_nanos() as f64;
            if elapsed > 0.0 {
                let share = core.stats.busy_nanos.saturating_sub(busy_nanos) as f64 / elapsed;
                busy += (share - busy) * BUSY_SMOOTHING;
            }
            last_snapshot = (now, core.stats.busy_nanos);
            if let Ok(mut s) = shared.lock() {
                s.stats = core.stats.clone();
                s.gauges = core.gauges();
                s.busy = busy;
            }
        }
    }
}

/// The worker's socket and what sending on it keeps between calls.
struct Io {
    socket: StdUdpSocket,
    state: UdpSocketState,
    sender: send::Sender,
    /// Datagrams the core produced in answer to received ones, in runs: how many, and when
    /// the datagram that caused them arrived. The forwarding delay of each is counted when
    /// it has been handed to the kernel.
    caused: Vec<(u64, Instant)>,
}

/// Reads datagram batches into the core; returns whether the socket may hold more (the read
/// stopped at its per-wake-up budget rather than at an empty socket).
fn receive_batch(core: &mut WorkerCore, receiver: &mut recv::Receiver, io: &mut Io) -> bool {
    // A few batches per wake-up keep latency low without starving commands and timers.
    for _ in 0..4 {
        let n = match receiver.recv(&io.socket) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // ICMP errors surface here (e.g. a peer's port closed); not fatal, and the
                // socket may hold more.
                warn!("media recv: {e}");
                return true;
            }
        };
        let now = Instant::now();
        for (meta, data) in receiver.messages() {
            let before = core.transmits().len();
            for datagram in data.chunks(meta.stride.max(1)) {
                core.handle_datagram(now, meta.addr, datagram);
            }
            let caused = core.transmits().len().saturating_sub(before) as u64;
            if caused > 0 {
                io.caused.push((caused, meta.arrival.unwrap_or(now)));
            }
            // A full `sendmmsg` worth goes out at once: holding it until the batch ends
            // saves no system call and makes the first packets wait for the last ones'
            // processing (a batch of 32 audio packets in rooms of 8 is 224 copies).
            if core.transmits().len() >= send::MMSG_BATCH {
                send_all(core, io);
            }
        }
        // Keep the send side moving during long receive runs.
        send_all(core, io);
        // A short batch emptied the socket. Anything arriving later raises a new edge (the
        // kernel signals every datagram queued), so the read that would only say "empty" is
        // skipped: one system call less per wake-up.
        if n < recv::RECV_BATCH {
            return false;
        }
    }
    true
}

/// Sends everything the core produced. UDP sends do not block in practice; a full buffer drops
/// the datagram like the network would, and congestion control reacts.
fn send_all(core: &mut WorkerCore, io: &mut Io) {
    let outcome = {
        let transmits = core.transmits();
        io.sender.send(&io.socket, &io.state, transmits)
    };
    core.clear_transmits();
    core.stats.send_errors += outcome.errors;
    core.stats.send_syscalls += outcome.syscalls;
    if !io.caused.is_empty() {
        let sent = Instant::now();
        for (n, arrival) in io.caused.drain(..) {
            let delay = sent.saturating_duration_since(arrival).as_secs_f64();
            core.stats.forwarding_delay_seconds.observe_n(delay, n);
        }
    }
}
