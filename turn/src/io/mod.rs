//! The tokio I/O shell around [`crate::core::Server`]: [`start`] binds the listeners and relay
//! sockets, runs the tasks, and returns a [`TurnHandle`].
//!
//! Owns sockets, clocks and tasks, nothing else: every decision is the core's. The core sits
//! behind one mutex, taken once per received batch; sends happen after the lock is released
//! where the batch allows it.

mod mmsg;
mod relay;
mod stream;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::TurnConfig;
use crate::core::{Family, Now, PendingAllocation, Server, TableSizes};
use crate::metrics::TurnMetrics;
use relay::{ClientSink, PortCursor, RelayHandle, RelayInner};

pub use mmsg::{BATCH as UDP_BATCH, RecvBatch, send_batch};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("randomness unavailable: {0}")]
    Random(String),
}

pub(crate) struct Shared {
    core: Mutex<Server<RelayHandle>>,
    metrics: TurnMetrics,
    cfg: TurnConfig,
    ports: PortCursor,
    shutdown: watch::Receiver<bool>,
    stream_conns: AtomicUsize,
    /// Live allocation count, published whenever it changes (tests await it).
    active: watch::Sender<usize>,
}

impl Shared {
    /// The core lock. A panic while holding it cannot leave the core half-updated in a way
    /// that matters more than stopping the relay would, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Server<RelayHandle>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flush_stats(&self, core: &mut Server<RelayHandle>) {
        let s = core.take_stats();
        let n = core.allocation_count();
        if s != crate::core::Stats::default() {
            self.metrics.apply(&s, n);
        }
        self.active.send_if_modified(|v| {
            let changed = *v != n;
            *v = n;
            changed
        });
    }
}

/// Binds a relay socket for `p`, completes the allocation in the core, and starts its relay
/// task. The response is appended to `reply`.
fn complete_allocation(
    shared: &Arc<Shared>,
    core: &mut Server<RelayHandle>,
    now: Now,
    p: PendingAllocation,
    request: &[u8],
    reply: &mut Vec<u8>,
    sink: ClientSink,
) {
    let ip = match p.family {
        Family::V4 => shared.cfg.relay_ipv4.map(IpAddr::V4),
        Family::V6 => shared.cfg.relay_ipv6.map(IpAddr::V6),
    };
    let bound = ip.and_then(|ip| {
        relay::bind_relay(ip, &shared.ports, p.even_port, p.dont_fragment)
            .map_err(|e| tracing::warn!(error = %e, "TURN relay bind failed"))
            .ok()
    });
    let relay = bound.and_then(|sock| {
        let local = sock.local_addr().ok()?;
        let handle: RelayHandle = Arc::new(RelayInner {
            socket: sock,
            stop: tokio::sync::Notify::new(),
            v6: local.is_ipv6(),
        });
        Some((relay::advertised(shared, p.family, local), handle))
    });
    let kept = relay.as_ref().map(|(_, h)| h.clone());
    match core.finish_allocate(now, p, relay, request, reply) {
        Ok(id) => {
            if let Some(h) = kept {
                tokio::spawn(relay::run(shared.clone(), id, h, sink));
            }
        }
        Err(Some(h)) => h.stop.notify_one(),
        Err(None) => {}
    }
}

/// A running TURN server.
pub struct TurnHandle {
    /// Bound UDP listener addresses (one per configured address).
    pub udp_addrs: Vec<SocketAddr>,
    /// Bound TCP listener addresses.
    pub tcp_addrs: Vec<SocketAddr>,
    /// Bound TLS listener addresses.
    pub tls_addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl TurnHandle {
    /// Stops every listener and relay and waits for the listener tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let relays = self.shared.lock().drain();
        for r in relays {
            r.stop.notify_one();
        }
    }

    /// `iceServers` URLs for clients reaching this server as `host` (a public name or
    /// address): `turn:` over UDP and TCP, `turns:` over TLS, one per bound port.
    pub fn ice_urls(&self, host: &str) -> Vec<String> {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let mut urls = Vec::new();
        let mut push = |scheme: &str, port: u16, transport: &str| {
            let u = format!("{scheme}:{host}:{port}?transport={transport}");
            if !urls.contains(&u) {
                urls.push(u);
            }
        };
        for a in &self.udp_addrs {
            push("turn", a.port(), "udp");
        }
        for a in &self.tcp_addrs {
            push("turn", a.port(), "tcp");
        }
        for a in &self.tls_addrs {
            push("turns", a.port(), "tcp");
        }
        urls
    }

    /// Live allocations.
    pub fn allocation_count(&self) -> usize {
        self.shared.lock().allocation_count()
    }

    /// Sizes of the core's tables (for memory-bound checks).
    pub fn table_sizes(&self) -> TableSizes {
        self.shared.lock().table_sizes()
    }

    /// A receiver of the live allocation count, updated whenever it changes.
    pub fn watch_allocations(&self) -> watch::Receiver<usize> {
        self.shared.active.subscribe()
    }

    /// Open TCP/TLS connections.
    pub fn stream_connections(&self) -> usize {
        self.shared
            .stream_conns
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for TurnHandle {
    /// Dropping the handle stops the server too (without waiting); relays and connections
    /// notice the signal and end.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        let relays = self.shared.lock().drain();
        for r in relays {
            r.stop.notify_one();
        }
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], StartError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| StartError::Random(e.to_string()))?;
    Ok(b)
}

/// Starts the TURN server described by `config`, counting into `metrics`. Must run inside a
/// tokio runtime. Fails without a shared secret, on a malformed setting, or if a listener
/// cannot bind.
pub async fn start(config: TurnConfig, metrics: TurnMetrics) -> Result<TurnHandle, StartError> {
    config.validate()?;
    crate::redact::set_log_identities(config.log_identities);
    let workers = match config.udp_workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let mut udp_sockets = Vec::new();
    let mut udp_addrs = Vec::new();
    for addr in &config.listen_udp {
        let socks = udp::bind_workers(*addr, workers).map_err(|source| StartError::Bind {
            addr: *addr,
            source,
        })?;
        if let Some(first) = socks.first() {
            udp_addrs.push(first.local_addr().map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?);
        }
        udp_sockets.extend(socks);
    }
    let mut tcp = Vec::new();
    let mut tcp_addrs = Vec::new();
    for addr in &config.listen_tcp {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
        tcp_addrs.push(l.local_addr().map_err(|source| StartError::Bind {
            addr: *addr,
            source,
        })?);
        tcp.push(l);
    }
    let mut tls = Vec::new();
    let mut tls_addrs = Vec::new();
    if !config.listen_tls.is_empty() {
        let (Some(cert), Some(key)) = (&config.tls_cert_path, &config.tls_key_path) else {
            return Err(crate::config::ConfigError::TlsPaths.into());
        };
        let acceptor = stream::tls_acceptor(cert, key)?;
        for addr in &config.listen_tls {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
            tls_addrs.push(l.local_addr().map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?);
            tls.push((l, acceptor.clone()));
        }
    }
    let own: Vec<SocketAddr> = udp_addrs
        .iter()
        .chain(&tcp_addrs)
        .chain(&tls_addrs)
        .copied()
        .collect();
    let core_cfg = config.core_config(own, random_bytes::<32>()?)?;
    let seed = u32::from_le_bytes(random_bytes::<4>()?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        core: Mutex::new(Server::new(core_cfg, std::time::Instant::now())),
        metrics,
        ports: PortCursor::new(config.relay_port_min, config.relay_port_max, seed),
        cfg: config,
        shutdown: shutdown_rx,
        stream_conns: AtomicUsize::new(0),
        active: watch::channel(0).0,
    });
    let mut tasks = Vec::new();
    for s in udp_sockets {
        tasks.push(tokio::spawn(udp::run(shared.clone(), s)));
    }
    for l in tcp {
        tasks.push(tokio::spawn(stream::accept_loop(shared.clone(), l, None)));
    }
    for (l, acc) in tls {
        tasks.push(tokio::spawn(stream::accept_loop(
            shared.clone(),
            l,
            Some(acc),
        )));
    }
    tasks.push(tokio::spawn(timer(shared.clone())));
    tracing::info!(
        udp = udp_addrs.len(),
        tcp = tcp_addrs.len(),
        tls = tls_addrs.len(),
        workers,
        "TURN server started"
    );
    Ok(TurnHandle {
        udp_addrs,
        tcp_addrs,
        tls_addrs,
        shared,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// Once a second: expire allocations, permissions and channels; refresh the gauge.
async fn timer(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        let expired = {
            let mut core = shared.lock();
            let expired = core.handle_timeout(std::time::Instant::now());
            shared.flush_stats(&mut core);
            shared
                .metrics
                .allocations_active
                .set(core.allocation_count() as i64);
            expired
        };
        for r in expired {
            r.stop.notify_one();
        }
    }
}
