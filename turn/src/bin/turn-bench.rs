//! Relay throughput benchmark on loopback: relayed packets per second, and per server
//! CPU-second.
//!
//! The parent process re-executes itself as the server (`turn-bench serve`), so the server's
//! CPU time can be read alone from `/proc/<pid>/stat`. The parent then runs the load: N TURN
//! clients (one UDP socket and allocation each, ChannelData by default, or Send indications)
//! and a batched UDP echo peer, all on 127.0.0.1. Every packet crosses the server twice
//! (client→peer, peer→client); both legs count as relayed packets, counted where they are
//! delivered (at the peer and back at the client).
//!
//! ```text
//! cargo run --release --bin turn-bench -- [--clients 64] [--seconds 10] [--size 100]
//!     [--threads 1] [--window 64] [--send-indications]
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use turn::client::{TurnClient, channel_data};
use turn::udp_batch::{RecvBatch, UDP_BATCH, send_batch};

const SECRET: &str = "bench-secret";
static ECHO_FAILURES: AtomicU64 = AtomicU64::new(0);

struct Opts {
    clients: usize,
    seconds: u64,
    size: usize,
    threads: usize,
    window: u64,
    send_indications: bool,
    /// Measure an already running server (e.g. coturn for an A/B run) instead of our own.
    external: Option<(SocketAddr, u32)>,
    secret: String,
}

fn parse_opts(args: &[String]) -> Opts {
    let mut o = Opts {
        clients: 64,
        seconds: 10,
        size: 100,
        threads: 1,
        window: 64,
        send_indications: false,
        external: None,
        secret: SECRET.into(),
    };
    let mut server: Option<SocketAddr> = None;
    let mut pid: Option<u32> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| usage(a))
        };
        match a.as_str() {
            "--clients" => o.clients = val() as usize,
            "--seconds" => o.seconds = val(),
            "--size" => o.size = val() as usize,
            "--threads" => o.threads = val() as usize,
            "--window" => o.window = val(),
            "--send-indications" => o.send_indications = true,
            "--server" => server = it.next().and_then(|v| v.parse().ok()).or_else(|| usage(a)),
            "--server-pid" => pid = Some(val() as u32),
            "--secret" => o.secret = it.next().cloned().unwrap_or_else(|| usage(a)),
            _ => usage(a),
        }
    }
    match (server, pid) {
        (Some(s), Some(p)) => o.external = Some((s, p)),
        (None, None) => {}
        _ => usage("--server and --server-pid go together"),
    }
    o
}

fn usage(bad: &str) -> ! {
    eprintln!(
        "bad argument {bad:?}\nusage: turn-bench [--clients N] [--seconds S] [--size BYTES] [--threads T] [--window W] [--send-indications]\n                  [--server ADDR --server-pid PID [--secret S]]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let threads = args.get(1).and_then(|t| t.parse().ok()).unwrap_or(1);
        serve(threads);
        return;
    }
    let o = parse_opts(&args);
    if let Err(e) = run(&o) {
        eprintln!("turn-bench: {e}");
        std::process::exit(1);
    }
}

/// The server process: prints its UDP address, runs until stdin closes.
fn serve(threads: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let cfg = turn::TurnConfig {
            listen_udp: vec!["127.0.0.1:0".parse().expect("addr")],
            listen_tcp: vec![],
            secrets: vec![SECRET.into()],
            allow_loopback_peers: true,
            max_allocations_per_user: 100_000,
            max_allocation_bandwidth_bps: 0,
            unauthorized_rate_per_ip: 0,
            udp_workers: threads,
            ..turn::TurnConfig::default()
        };
        let registry = prometheus::Registry::new();
        let metrics = turn::TurnMetrics::new(&registry).expect("metrics");
        let handle = turn::start(cfg, metrics.clone()).await.expect("start TURN");
        println!("READY {}", handle.udp_addrs[0]);
        let _ = std::io::stdout().flush();
        // Block until the parent closes stdin (or dies).
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await;
        let dropped: Vec<String> = [
            "no_permission",
            "no_channel",
            "bandwidth",
            "malformed",
            "no_allocation",
        ]
        .iter()
        .map(|r| {
            format!(
                "{r}={}",
                metrics.dropped_packets.with_label_values(&[r]).get()
            )
        })
        .collect();
        eprintln!(
            "server: relayed client_to_peer={} peer_to_client={} send_failures={} dropped: {}",
            metrics.relayed_packets("client_to_peer"),
            metrics.relayed_packets("peer_to_client"),
            metrics.send_failures.get(),
            dropped.join(" ")
        );
        handle.shutdown().await;
    });
}

struct ServerProc(Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        // Closing stdin asks the server to print its counters and exit; kill if it does not.
        drop(self.0.stdin.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).ok_or("bad stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("utime")?;
    let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("stime")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz)
}

/// Bigger socket buffers, so the load generator itself does not drop bursts.
fn set_buffers(sock: &UdpSocket, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: valid fd, option pointer and length.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn request(
    sock: &UdpSocket,
    c: &mut TurnClient,
    msg: Vec<u8>,
) -> Result<turn::client::Response, String> {
    let tid = msg[8..20].to_vec();
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        sock.send(&msg).map_err(|e| e.to_string())?;
        while let Ok(n) = sock.recv(&mut buf) {
            if let Some(r) = c.on_response(&buf[..n])
                && r.transaction_id[..] == tid[..]
            {
                return Ok(r);
            }
        }
    }
    Err("no response from server".into())
}

struct Client {
    sock: UdpSocket,
    sent: u64,
    received: u64,
    msg: Vec<u8>,
}

fn setup_client(
    server: SocketAddr,
    peer: SocketAddr,
    send_ind: bool,
    size: usize,
    i: usize,
    secret: &str,
) -> Result<Client, String> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.connect(server).map_err(|e| e.to_string())?;
    set_buffers(&sock, 1 << 20);
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let cr = turn::mint_credentials(secret, &format!("bench{i}"), Duration::from_secs(3600));
    let mut c = TurnClient::new(&cr.username, &cr.password);
    let m = c.allocate(false);
    request(&sock, &mut c, m)?;
    let m = c.allocate(false);
    let r = request(&sock, &mut c, m)?;
    if r.code.is_some() {
        return Err(format!("allocate refused: {:?}", r.code));
    }
    let channel = 0x4000;
    let m = c.channel_bind(channel, peer);
    let r = request(&sock, &mut c, m)?;
    if r.code.is_some() {
        return Err(format!("channel bind refused: {:?}", r.code));
    }
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let payload = vec![0x5Au8; size];
    let msg = if send_ind {
        c.send_indication(peer, &payload)
    } else {
        channel_data(channel, &payload, false)
    };
    Ok(Client {
        sock,
        sent: 0,
        received: 0,
        msg,
    })
}

/// Batched echo: returns every datagram to its sender.
fn echo_peer(sock: UdpSocket, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let fd = sock.as_raw_fd();
    let mut rb = RecvBatch::new(0, 2048, 0);
    while !stop.load(Ordering::Relaxed) {
        let n = match rb.recv_wait(fd) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let mut items: Vec<(SocketAddr, &[u8])> = Vec::with_capacity(n);
        for i in 0..n {
            if let Some((src, r)) = rb.get(i) {
                items.push((src, &rb.buf(i)[r]));
            }
        }
        count.fetch_add(items.len() as u64, Ordering::Relaxed);
        let mut at = 0;
        while at < items.len() {
            match send_batch(fd, &items[at..], false) {
                Ok(n) if n > 0 => at += n,
                _ => {
                    ECHO_FAILURES.fetch_add(1, Ordering::Relaxed);
                    at += 1;
                }
            }
        }
    }
}

/// Re-executes this binary as the server and waits for its address.
fn spawn_server(threads: usize) -> Result<(SocketAddr, ServerProc), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["serve", &threads.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let proc = ServerProc(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("server did not start: {line:?}"))?;
    Ok((addr, proc))
}

fn run(o: &Opts) -> Result<(), String> {
    let (server, pid, server_proc) = match o.external {
        Some((addr, pid)) => (addr, pid, None),
        None => {
            let (addr, p) = spawn_server(o.threads)?;
            (addr, p.0.id(), Some(p))
        }
    };
    let peer_sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer = peer_sock.local_addr().map_err(|e| e.to_string())?;
    set_buffers(&peer_sock, 4 << 20);
    let stop = Arc::new(AtomicBool::new(false));
    let peer_count = Arc::new(AtomicU64::new(0));
    let peer_thread = {
        let (stop, count) = (stop.clone(), peer_count.clone());
        std::thread::spawn(move || echo_peer(peer_sock, stop, count))
    };

    let mut clients = Vec::with_capacity(o.clients);
    for i in 0..o.clients {
        clients.push(setup_client(
            server,
            peer,
            o.send_indications,
            o.size,
            i,
            &o.secret,
        )?);
    }
    eprintln!(
        "{} clients allocated; {} s of {}-byte {} through {server} (server threads: {})",
        o.clients,
        o.seconds,
        o.size,
        if o.send_indications {
            "Send indications"
        } else {
            "ChannelData"
        },
        o.threads
    );

    // Warm up for a second, then measure.
    let mut rb = RecvBatch::new(0, 2048, 0);
    let mut pollfds: Vec<libc::pollfd> = clients
        .iter()
        .map(|c| libc::pollfd {
            fd: c.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let warmup = Duration::from_secs(1);
    let total = warmup + Duration::from_secs(o.seconds);
    let start = Instant::now();
    let mut measuring = false;
    let (mut cpu0, mut t0, mut peer0, mut back0) = (0.0, start, 0, 0);
    let mut back_total = 0u64;
    loop {
        let elapsed = start.elapsed();
        if !measuring && elapsed >= warmup {
            measuring = true;
            cpu0 = cpu_seconds(pid)?;
            t0 = Instant::now();
            peer0 = peer_count.load(Ordering::Relaxed);
            back0 = back_total;
        }
        if elapsed >= total {
            break;
        }
        // Keep up to `window` packets in flight per client.
        for c in clients.iter_mut() {
            let room = o
                .window
                .saturating_sub(c.sent - c.received)
                .min(UDP_BATCH as u64);
            if room == 0 {
                continue;
            }
            let dest = server;
            let items: Vec<(SocketAddr, &[u8])> =
                (0..room).map(|_| (dest, c.msg.as_slice())).collect();
            if let Ok(n) = send_batch(c.sock.as_raw_fd(), &items, false) {
                c.sent += n as u64;
            }
        }
        // SAFETY: pollfds is a valid array of the given length.
        let ready = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 20) };
        if ready <= 0 {
            // Nothing came back in 20 ms: presume the in-flight packets lost and open the window.
            for c in clients.iter_mut() {
                c.received = c.sent;
            }
            continue;
        }
        for (i, pfd) in pollfds.iter().enumerate() {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            while let Ok(n) = rb.recv(pfd.fd) {
                clients[i].received += n as u64;
                back_total += n as u64;
                if n < UDP_BATCH {
                    break;
                }
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu0;
    let to_peer = peer_count.load(Ordering::Relaxed) - peer0;
    let back = back_total - back0;
    let relayed = to_peer + back;
    stop.store(true, Ordering::Relaxed);
    let _ = peer_thread.join();
    drop(server_proc);

    println!("clients                     {}", o.clients);
    println!("payload bytes               {}", o.size);
    println!(
        "mode                        {}",
        if o.send_indications {
            "send-indications"
        } else {
            "channel-data"
        }
    );
    println!("server threads              {}", o.threads);
    println!("measured seconds            {wall:.2}");
    println!("delivered to peer           {to_peer}");
    println!("delivered back to clients   {back}");
    println!("relayed packets/s           {:.0}", relayed as f64 / wall);
    println!(
        "peer echo send failures     {}",
        ECHO_FAILURES.load(Ordering::Relaxed)
    );
    println!("server CPU seconds          {cpu:.2}");
    println!("server CPU utilisation      {:.0}%", 100.0 * cpu / wall);
    if cpu > 0.0 {
        println!(
            "relayed packets per server CPU-second  {:.0}",
            relayed as f64 / cpu
        );
    }
    Ok(())
}
