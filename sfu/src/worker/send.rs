//! Sending a worker's datagrams with as few system calls as the kernel allows: runs of
//! equal-size datagrams to one destination (the packets of a video frame) go out as one UDP GSO
//! send, and everything else as one `sendmmsg` per batch. The kernel's per-datagram path is
//! most of what forwarding costs (docs/PERFORMANCE.md), so this is where the time goes.

use std::io;
use std::os::fd::AsRawFd;

use quinn_udp::{UdpSockRef, UdpSocketState};
use socket2::SockAddr;
use std::net::UdpSocket;
use str0m::net::Transmit;

/// Most datagrams handed to one `sendmmsg` call.
pub(crate) const MMSG_BATCH: usize = 64;

/// Most bytes in one GSO send: the kernel refuses a UDP payload past 64 KiB less the headers
/// (EMSGSIZE), so a keyframe's long run to one subscriber is split.
const GSO_MAX_BYTES: usize = 60_000;

/// Reused buffers, so a send allocates nothing in the steady state.
#[derive(Default)]
pub(crate) struct Sender {
    order: Vec<usize>,
    gso_buf: Vec<u8>,
    singles: Vec<usize>,
    mmsg: Mmsg,
}

/// The `sendmmsg` call's arrays. The headers point into `addrs` and `iovs`, so all three are
/// refilled together before each call and never read after it.
#[derive(Default)]
struct Mmsg {
    addrs: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

/// What one batch cost and lost.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SendOutcome {
    pub syscalls: u64,
    pub errors: u64,
}

impl Sender {
    pub fn send(
        &mut self,
        socket: &UdpSocket,
        state: &UdpSocketState,
        transmits: &[Transmit],
    ) -> SendOutcome {
        let mut out = SendOutcome::default();
        if transmits.is_empty() {
            return out;
        }
        let gso = state.max_gso_segments();
        self.singles.clear();
        if gso > 1 && transmits.len() > 1 {
            // Group by destination, keeping each destination's order (a stable sort).
            self.order.clear();
            self.order.extend(0..transmits.len());
            self.order.sort_by_key(|&i| transmits[i].destination);
            let mut i = 0;
            while i < self.order.len() {
                let first = &transmits[self.order[i]];
                let size = first.contents.len();
                let mut bytes = size;
                let mut j = i + 1;
                // Equal sizes; only the last of a run may be shorter (GSO's rule).
                while j < self.order.len()
                    && j - i < gso
                    && transmits[self.order[j]].destination == first.destination
                    && transmits[self.order[j - 1]].contents.len() == size
                    && transmits[self.order[j]].contents.len() <= size
                    && bytes + transmits[self.order[j]].contents.len() <= GSO_MAX_BYTES
                {
                    bytes += transmits[self.order[j]].contents.len();
                    j += 1;
                }
                if j - i >= 2 {
                    self.gso_buf.clear();
                    for &k in &self.order[i..j] {
                        self.gso_buf.extend_from_slice(&transmits[k].contents);
                    }
                    let t = quinn_udp::Transmit {
                        destination: first.destination,
                        ecn: None,
                        contents: &self.gso_buf,
                        segment_size: Some(size),
                        src_ip: None,
                    };
                    out.syscalls += 1;
                    if state.try_send(UdpSockRef::from(socket), &t).is_err() {
                        out.errors += (j - i) as u64;
                    }
                } else {
                    self.singles.push(self.order[i]);
                }
                i = j;
            }
        } else {
            self.singles.extend(0..transmits.len());
        }
        for chunk in self.singles.chunks(MMSG_BATCH) {
            let (calls, errors) = self.mmsg.send(socket, transmits, chunk);
            out.syscalls += calls;
            out.errors += errors;
        }
        out
    }
}

impl Mmsg {
    /// One `sendmmsg` for the datagrams `idx` of `transmits` (retrying the rest after a partial
    /// send); a full socket buffer drops what is left, like a congested link would.
    fn send(&mut self, socket: &UdpSocket, transmits: &[Transmit], idx: &[usize]) -> (u64, u64) {
        self.addrs.clear();
        self.iovs.clear();
        self.msgs.clear();
        self.addrs.extend(
            idx.iter()
                .map(|&i| SockAddr::from(transmits[i].destination)),
        );
        self.iovs.extend(idx.iter().map(|&i| libc::iovec {
            iov_base: transmits[i].contents.as_ptr() as *mut libc::c_void,
            iov_len: transmits[i].contents.len(),
        }));
        // Filled after `addrs` and `iovs`, which do not move again until the next call.
        for (addr, iov) in self.addrs.iter().zip(self.iovs.iter_mut()) {
            // SAFETY: an all-zero msghdr is valid; the pointers set below stay alive (addrs,
            // iovs) until sendmmsg returns.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = addr.len();
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            self.msgs.push(h);
        }
        let msgs = &mut self.msgs;
        let fd = socket.as_raw_fd();
        let mut sent = 0usize;
        let mut calls = 0u64;
        let mut errors = 0u64;
        while sent < msgs.len() {
            calls += 1;
            // SAFETY: msgs[sent..] point at live iovecs and addresses; the count matches.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs[sent..].as_mut_ptr(),
                    (msgs.len() - sent) as libc::c_uint,
                    0,
                )
            };
            if n <= 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // WouldBlock (buffer full) or a per-destination error (ICMP unreachable
                // reported on this socket): skip the head datagram and go on with the rest.
                sent += 1;
                errors += 1;
                continue;
            }
            sent += n as usize;
        }
        (calls, errors)
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::net::SocketAddr;
    use std::time::Duration;

    use str0m::net::Protocol;

    use super::*;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    /// Counts this thread's allocations (the other tests' threads count on their own).
    struct Counting;

    fn count() {
        // `try_with`: the allocator also runs while thread-locals are torn down.
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    }

    // SAFETY: every call is passed straight to the system allocator.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller's contract, unchanged.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller's contract, unchanged.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: the caller's contract, unchanged.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract, unchanged.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }

    fn receiver() -> (UdpSocket, SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }

    /// The worker's side: a loopback socket, its address and quinn-udp's state for it.
    fn sending() -> (UdpSocket, SocketAddr, UdpSocketState) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = socket.local_addr().unwrap();
        let state = UdpSocketState::new(UdpSockRef::from(&socket)).unwrap();
        (socket, from, state)
    }

    fn transmit(from: SocketAddr, to: SocketAddr, payload: Vec<u8>) -> Transmit {
        Transmit {
            proto: Protocol::Udp,
            source: from,
            destination: to,
            contents: payload.into(),
        }
    }

    /// A batch as the worker sends it: a video frame's equal-size packets to one subscriber
    /// (one GSO send where the kernel offers it) and single packets to others (`sendmmsg`).
    /// Every datagram arrives whole, and once the reused buffers have grown, a batch of the
    /// same shape allocates nothing.
    #[test]
    fn a_batch_arrives_whole_and_a_repeated_one_allocates_nothing() {
        let (socket, from, state) = sending();
        let (frame_rx, frame_to) = receiver();
        let (a_rx, a_to) = receiver();
        let (b_rx, b_to) = receiver();
        let batch = |round: u8| -> Vec<Transmit> {
            let mut t: Vec<Transmit> = (0..4u8)
                .map(|i| transmit(from, frame_to, vec![round ^ i; 1_000]))
                .collect();
            t.push(transmit(from, a_to, vec![round; 160]));
            t.push(transmit(from, b_to, vec![round; 170]));
            t.push(transmit(from, a_to, vec![round; 300]));
            t
        };
        let mut sender = Sender::default();
        let mut buf = [0u8; 2_048];
        for round in 0..3u8 {
            let transmits = batch(round);
            let before = allocations();
            let out = sender.send(&socket, &state, &transmits);
            let made = allocations() - before;
            assert_eq!(out.errors, 0);
            if round > 0 {
                assert_eq!(made, 0, "round {round}: the send allocated {made} times");
            }
            for i in 0..4u8 {
                let n = frame_rx.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &vec![round ^ i; 1_000][..], "frame packet {i}");
            }
            let n = a_rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &vec![round; 160][..]);
            let n = a_rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &vec![round; 300][..]);
            let n = b_rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &vec![round; 170][..]);
        }
    }

    /// A keyframe's run to one subscriber longer than one UDP payload may carry (70 packets of
    /// 1,100 bytes is 77 KB): split into GSO messages the kernel accepts, nothing lost, order
    /// kept.
    #[test]
    fn a_keyframe_longer_than_one_gso_message_arrives_whole() {
        let (socket, from, state) = sending();
        let (rx, to) = receiver();
        let packet = |i: usize| -> Vec<u8> {
            let mut p = vec![(i % 251) as u8; 1_100];
            p[..2].copy_from_slice(&(i as u16).to_be_bytes());
            p
        };
        let mut transmits: Vec<Transmit> = (0..70).map(|i| transmit(from, to, packet(i))).collect();
        // The frame's last packet is shorter, as a packetizer leaves it.
        if let Some(last) = transmits.last_mut() {
            last.contents = vec![7u8; 300].into();
        }
        let mut sender = Sender::default();
        let out = sender.send(&socket, &state, &transmits);
        assert_eq!(out.errors, 0);
        let mut buf = [0u8; 2_048];
        for i in 0..69 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &packet(i)[..], "packet {i}");
        }
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[7u8; 300][..]);
    }
}
