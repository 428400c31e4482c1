//! The bare forwarder, the machine's practical limit: one thread, `recvmmsg`/`sendmmsg`, one
//! AES-128-GCM open per received packet and one seal per forwarded copy, rooms by a hello
//! datagram, no WebRTC (no ICE, DTLS, RTCP, pacing or bandwidth estimation). Also its synthetic
//! participants, which send the same packet sizes and rates as the WebRTC clients.
//!
//! Datagram: `type u8 | participant u32 | seq u32 | kind u8 | rtp_time u32 | 7 zero bytes`
//! (21 bytes, the size of an RTP header with a few extensions), then for media the sealed
//! payload (`sent_at_us u64` + filler) and its 16-byte tag. The header is the AAD.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use moien_client::media::{VideoShape, unix_micros};
use moien_client::speech::SpeechSource;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::scenario::{Group, Member};
use crate::stats::{Kind, Packet, Recorder};
use crate::voices::voice;

const HELLO: u8 = 1;
const MEDIA: u8 = 2;
const HELLO_ACK: u8 = 3;
const HEADER: usize = 21;
const TAG: usize = 16;
const MAX_DATAGRAM: usize = 1_500;
const BATCH: usize = 32;
/// Copies queued for one `sendmmsg` at most.
const OUT_BATCH: usize = 64;
const MAX_PARTICIPANTS: usize = 10_000;
const FLAG_PUBLISH: u8 = 1;
const FLAG_SUBSCRIBE: u8 = 2;

/// A participant's key: derived from its id (a benchmark, not a secret).
fn key_for(participant: u32) -> LessSafeKey {
    let mut k = [0x5au8; 16];
    for (i, b) in participant
        .to_le_bytes()
        .iter()
        .cycle()
        .take(16)
        .enumerate()
    {
        k[i] ^= b.wrapping_add(i as u8);
    }
    // A 16-byte key is always valid for AES-128-GCM.
    LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &k).unwrap_or_else(|_| unreachable!("16-byte key")),
    )
}

fn nonce(header: &[u8]) -> Nonce {
    let mut n = [0u8; 12];
    n[..9].copy_from_slice(&header[1..10]);
    Nonce::assume_unique_for_key(n)
}

/// Header fields of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub participant: u32,
    pub seq: u32,
    pub media: u8,
    pub rtp_time: u32,
}

impl Header {
    pub fn write(&self, out: &mut [u8]) {
        out[0] = self.kind;
        out[1..5].copy_from_slice(&self.participant.to_be_bytes());
        out[5..9].copy_from_slice(&self.seq.to_be_bytes());
        out[9] = self.media;
        out[10..14].copy_from_slice(&self.rtp_time.to_be_bytes());
        out[14..HEADER].fill(0);
    }

    pub fn read(b: &[u8]) -> Option<Header> {
        let h = b.get(..HEADER)?;
        Some(Header {
            kind: h[0],
            participant: u32::from_be_bytes(h[1..5].try_into().ok()?),
            seq: u32::from_be_bytes(h[5..9].try_into().ok()?),
            media: h[9],
            rtp_time: u32::from_be_bytes(h[10..14].try_into().ok()?),
        })
    }
}

/// Seals `payload` for `participant` into `out` (header + ciphertext + tag); returns the length.
pub fn seal_into(key: &LessSafeKey, h: &Header, payload: &[u8], out: &mut [u8]) -> Option<usize> {
    let end = HEADER + payload.len();
    if end + TAG > out.len() {
        return None;
    }
    h.write(&mut out[..HEADER]);
    out[HEADER..end].copy_from_slice(payload);
    let (head, rest) = out.split_at_mut(HEADER);
    let tag = key
        .seal_in_place_separate_tag(nonce(head), Aad::from(&*head), &mut rest[..payload.len()])
        .ok()?;
    rest[payload.len()..payload.len() + TAG].copy_from_slice(tag.as_ref());
    Some(end + TAG)
}

/// Opens a datagram in place; returns the plaintext payload.
pub fn open_in_place<'a>(key: &LessSafeKey, datagram: &'a mut [u8]) -> Option<&'a [u8]> {
    if datagram.len() < HEADER + TAG {
        return None;
    }
    let (head, rest) = datagram.split_at_mut(HEADER);
    let plain = key
        .open_in_place(nonce(head), Aad::from(&*head), rest)
        .ok()?;
    Some(plain)
}

// ---------------------------------------------------------------------------------------------
// The forwarder process.

struct Registered {
    addr: SocketAddrV4,
    key: LessSafeKey,
    room: u32,
    subscribe: bool,
}

/// Runs the forwarder on `port` (0 = any) until killed; prints `bare     udp ADDR` when ready.
pub fn forwarder_main(port: u16) -> anyhow::Result<()> {
    // The load tester owns us: die with it.
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let socket = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let size: libc::c_int = 8 << 20;
        // SAFETY: a valid socket and an int option.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    println!("bare     udp {}", socket.local_addr()?);
    let mut members: Vec<Registered> = Vec::new();
    let mut by_id: HashMap<u32, usize> = HashMap::new();
    let mut rooms: HashMap<u32, Vec<usize>> = HashMap::new();

    let mut rx = vec![[0u8; MAX_DATAGRAM]; BATCH];
    let mut tx = vec![[0u8; MAX_DATAGRAM]; OUT_BATCH];
    let mut tx_len = [0usize; OUT_BATCH];
    let mut tx_to = [SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); OUT_BATCH];
    let mut queued = 0usize;
    let mut plain = [0u8; MAX_DATAGRAM];
    loop {
        let got = recv_batch(fd, &mut rx)?;
        for (i, (len, from)) in got.into_iter().enumerate() {
            let Some(h) = Header::read(&rx[i][..len]) else {
                continue;
            };
            match h.kind {
                HELLO if len > HEADER => {
                    let flags = rx[i][HEADER];
                    if let std::collections::hash_map::Entry::Vacant(e) = by_id.entry(h.participant)
                        && members.len() < MAX_PARTICIPANTS
                    {
                        e.insert(members.len());
                        rooms.entry(h.seq).or_default().push(members.len());
                        members.push(Registered {
                            addr: from,
                            key: key_for(h.participant),
                            room: h.seq,
                            subscribe: flags & FLAG_SUBSCRIBE != 0,
                        });
                    }
                    let mut ack = [0u8; HEADER];
                    Header {
                        kind: HELLO_ACK,
                        ..h
                    }
                    .write(&mut ack);
                    let _ = socket.send_to(&ack, from);
                }
                MEDIA => {
                    let Some(&sender) = by_id.get(&h.participant) else {
                        continue;
                    };
                    let s = &members[sender];
                    if s.addr != from {
                        continue;
                    }
                    let Some(p) = open_in_place(&s.key, &mut rx[i][..len]) else {
                        continue;
                    };
                    let n = p.len();
                    plain[..n].copy_from_slice(p);
                    let Some(room) = rooms.get(&s.room) else {
                        continue;
                    };
                    for &r in room {
                        let m = &members[r];
                        if r == sender || !m.subscribe {
                            continue;
                        }
                        if let Some(l) = seal_into(&m.key, &h, &plain[..n], &mut tx[queued]) {
                            tx_len[queued] = l;
                            tx_to[queued] = m.addr;
                            queued += 1;
                            if queued == OUT_BATCH {
                                send_batch(fd, &tx, &tx_len, &tx_to, queued);
                                queued = 0;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if queued > 0 {
            send_batch(fd, &tx, &tx_len, &tx_to, queued);
            queued = 0;
        }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Blocks for at least one datagram, takes up to `BATCH`; returns (length, source) of each.
fn recv_batch(
    fd: i32,
    bufs: &mut [[u8; MAX_DATAGRAM]],
) -> std::io::Result<Vec<(usize, SocketAddrV4)>> {
    let n = bufs.len().min(BATCH);
    // SAFETY: zeroed POD structs.
    let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: MAX_DATAGRAM,
        };
        hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
        hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: every pointer refers to a live local array of the right length.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok((0..r as usize)
            .map(|i| {
                let a = addrs[i];
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                (
                    hdrs[i].msg_len as usize,
                    SocketAddrV4::new(ip, u16::from_be(a.sin_port)),
                )
            })
            .collect());
    }
}

fn send_batch(fd: i32, bufs: &[[u8; MAX_DATAGRAM]], lens: &[usize], to: &[SocketAddrV4], n: usize) {
    let n = n.min(OUT_BATCH);
    let mut addrs: [libc::sockaddr_in; OUT_BATCH] =
        [sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); OUT_BATCH];
    // SAFETY: zeroed POD structs.
    let mut iovs: [libc::iovec; OUT_BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; OUT_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        addrs[i] = sockaddr(to[i]);
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_ptr() as *mut libc::c_void,
            iov_len: lens[i],
        };
        hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
        hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    let mut off = 0;
    while off < n {
        // SAFETY: as above; the kernel reads `n - off` headers from `off`.
        let r = unsafe { libc::sendmmsg(fd, hdrs[off..].as_mut_ptr(), (n - off) as u32, 0) };
        if r <= 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // A full buffer or a vanished receiver drops the rest, as a real forwarder would.
            return;
        }
        off += r as usize;
    }
}

// ---------------------------------------------------------------------------------------------
// The load tester's side.

/// The running forwarder and the synthetic participants talking to it.
pub struct BareTarget {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: Option<Child>,
    tasks: Vec<JoinHandle<()>>,
    next_id: u32,
    rooms: HashMap<String, u32>,
}

impl BareTarget {
    /// Starts `bin bare-forwarder` and reads its address.
    pub async fn spawn(bin: &std::path::Path) -> anyhow::Result<BareTarget> {
        let mut cmd = Command::new(bin);
        cmd.args(["bare-forwarder", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        crate::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} bare-forwarder", bin.display()))?;
        let pid = child.id();
        let Some(out) = child.stdout.take() else {
            bail!("no pipe to the forwarder");
        };
        let mut lines = BufReader::new(out).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("the bare forwarder did not start within 10 s")??
            .context("the bare forwarder exited")?;
        let addr: SocketAddr = line
            .split_whitespace()
            .last()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected forwarder banner {line:?}"))?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(BareTarget {
            addr,
            pid,
            child: Some(child),
            tasks: Vec::new(),
            next_id: 1,
            rooms: HashMap::new(),
        })
    }

    pub async fn join_group(
        &mut self,
        g: &Group,
        recorders: &[Option<Arc<Recorder>>],
    ) -> anyhow::Result<()> {
        let next_room = self.rooms.len() as u32 + 1;
        let room = *self.rooms.entry(g.room.clone()).or_insert(next_room);
        for (m, r) in g.members.iter().zip(recorders) {
            if let Some(r) = r {
                r.signaling_starts(Instant::now());
            }
            let id = self.next_id;
            self.next_id += 1;
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            socket.connect(self.addr).await?;
            hello(&socket, id, room, m).await?;
            self.tasks
                .push(tokio::spawn(participant(socket, id, m.clone(), r.clone())));
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
    }
}

async fn hello(socket: &UdpSocket, id: u32, room: u32, m: &Member) -> anyhow::Result<()> {
    let mut b = [0u8; HEADER + 1];
    Header {
        kind: HELLO,
        participant: id,
        seq: room,
        media: 0,
        rtp_time: 0,
    }
    .write(&mut b);
    b[HEADER] =
        if m.publishes() { FLAG_PUBLISH } else { 0 } | if m.subscribe { FLAG_SUBSCRIBE } else { 0 };
    let mut ack = [0u8; 64];
    for _ in 0..5 {
        socket.send(&b).await?;
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut ack)).await
            && Header::read(&ack[..n]).is_some_and(|h| h.kind == HELLO_ACK && h.participant == id)
        {
            return Ok(());
        }
    }
    bail!("the bare forwarder did not acknowledge participant {id}")
}

/// Sends what the member publishes (same sizes and rates as the WebRTC clients) and records
/// what it receives.
async fn participant(socket: UdpSocket, id: u32, m: Member, recorder: Option<Arc<Recorder>>) {
    let key = key_for(id);
    let mut speech = if m.publish_audio {
        voice(m.speech).ok().map(SpeechSource::new)
    } else {
        None
    };
    let shape: Option<VideoShape> = m.video.map(|v| v.shape());
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    let video_period = Duration::from_secs(1) / shape.map_or(1, |s| s.fps.max(1));
    let mut video_tick = tokio::time::interval(video_period);
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    video_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut aseq, mut vseq, mut ats, mut vts) = (0u32, 0u32, rand::random::<u32>(), 0u32);
    let mut first_frame = true;
    let mut out = [0u8; MAX_DATAGRAM];
    let mut payload = vec![0u8; MAX_DATAGRAM];
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut names: HashMap<(u32, u8), String> = HashMap::new();
    loop {
        tokio::select! {
            _ = audio_tick.tick(), if speech.is_some() => {
                let Some(frame) = speech.as_mut().map(|s| s.next_frame()) else { continue };
                let ts = ats;
                ats = ats.wrapping_add(960);
                if let Some(p) = &frame.payload {
                    let n = p.len().clamp(8, 1_200);
                    payload[..8].copy_from_slice(&unix_micros().to_be_bytes());
                    payload[8..n].fill(0x11);
                    let h = Header { kind: MEDIA, participant: id, seq: aseq, media: 0, rtp_time: ts };
                    aseq = aseq.wrapping_add(1);
                    if let Some(l) = seal_into(&key, &h, &payload[..n], &mut out) {
                        let _ = socket.send(&out[..l]).await;
                    }
                }
            }
            _ = video_tick.tick(), if shape.is_some() => {
                let Some(s) = shape else { continue };
                let count = if first_frame { s.key_packets } else { s.delta_packets }.max(1);
                first_frame = false;
                let n = s.packet_size.clamp(8, 1_200);
                let now = unix_micros();
                for _ in 0..count {
                    payload[..8].copy_from_slice(&now.to_be_bytes());
                    payload[8..n].fill(0x22);
                    let h = Header { kind: MEDIA, participant: id, seq: vseq, media: 1, rtp_time: vts };
                    vseq = vseq.wrapping_add(1);
                    if let Some(l) = seal_into(&key, &h, &payload[..n], &mut out) {
                        let _ = socket.send(&out[..l]).await;
                    }
                }
                vts = vts.wrapping_add(90_000 / s.fps.max(1));
            }
            r = socket.recv(&mut buf) => {
                let Ok(n) = r else { continue };
                let Some(rec) = recorder.as_ref() else { continue };
                let arrival = Instant::now();
                let Some(h) = Header::read(&buf[..n]) else { continue };
                let Some(p) = open_in_place(&key, &mut buf[..n]) else { continue };
                let len = p.len();
                let sent = p.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
                let kind = if h.media == 1 { Kind::Video } else { Kind::Audio };
                let name = names
                    .entry((h.participant, h.media))
                    .or_insert_with(|| format!("{}-{}", h.participant, h.media));
                rec.record(&Packet {
                    stream: name,
                    kind,
                    seq: u64::from(h.seq),
                    rtp_time: h.rtp_time,
                    bytes: len + 12,
                    arrival,
                    sent_at_us: sent,
                    now_us: unix_micros(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_and_reject_tampering() {
        let k = key_for(7);
        let h = Header {
            kind: MEDIA,
            participant: 7,
            seq: 42,
            media: 1,
            rtp_time: 9,
        };
        let mut out = [0u8; MAX_DATAGRAM];
        let n = seal_into(&k, &h, b"hello world", &mut out).unwrap();
        assert_eq!(n, HEADER + 11 + TAG);
        assert_eq!(Header::read(&out[..n]), Some(h));
        let mut copy = out;
        assert_eq!(open_in_place(&k, &mut copy[..n]).unwrap(), b"hello world");
        let mut bad = out;
        bad[HEADER + 2] ^= 1;
        assert!(open_in_place(&k, &mut bad[..n]).is_none());
        let mut other = out;
        assert!(open_in_place(&key_for(8), &mut other[..n]).is_none());
        assert!(seal_into(&k, &h, &[0u8; 2_000], &mut out).is_none());
    }
}
