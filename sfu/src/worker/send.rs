//! Sending a worker's datagrams with as few system calls as the kernel allows: everything a
//! wake-up produced goes out in one `sendmmsg`, in which each run of equal-size datagrams to one
//! destination (the packets of a video frame) is a single UDP GSO message. The kernel's
//! per-datagram path is most of what forwarding costs (docs/PERFORMANCE.md), so this is where
//! the time goes.

use std::io;
use std::os::fd::AsRawFd;

use quinn_udp::UdpSocketState;
use socket2::SockAddr;
use std::net::UdpSocket;
use str0m::net::Transmit;

/// Most messages handed to one `sendmmsg` call (a GSO message counts once).
pub(crate) const MMSG_BATCH: usize = 64;

/// Most bytes in one GSO message: the kernel refuses a UDP payload past 64 KiB less the headers
/// (EMSGSIZE), so a keyframe's long run to one subscriber is split.
const GSO_MAX_BYTES: usize = 60_000;

/// Reused buffers, so a send allocates nothing in the steady state.
#[derive(Default)]
pub(crate) struct Sender {
    order: Vec<usize>,
    /// One entry per message: a range of `order` and, for a GSO message, its segment size.
    plan: Vec<Message>,
    /// Set when the kernel refused a GSO message (a device without segmentation offload says
    /// so only then, with EIO or EINVAL); every datagram is its own message from then on.
    gso_refused: bool,
    mmsg: Mmsg,
}

#[derive(Clone, Copy)]
struct Message {
    start: usize,
    len: usize,
    segment: Option<u16>,
}

/// Control-message room for one `UDP_SEGMENT` (CMSG_SPACE of a u16 is 24 bytes on 64-bit
/// Linux), aligned like a `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; 32]);

/// The `sendmmsg` call's arrays. The headers point into `addrs`, `iovs` and `cmsgs`, so all are
/// refilled together before each call and never read after it.
#[derive(Default)]
struct Mmsg {
    addrs: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<Cmsg>,
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
        let gso = if self.gso_refused {
            1
        } else {
            state.max_gso_segments()
        };
        self.order.clear();
        self.order.extend(0..transmits.len());
        self.plan.clear();
        if gso > 1 && transmits.len() > 1 {
            // Group by destination, keeping each destination's order (a stable sort).
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
                let segment = u16::try_from(size).ok().filter(|_| j - i >= 2);
                if segment.is_some() {
                    self.plan.push(Message {
                        start: i,
                        len: j - i,
                        segment,
                    });
                } else {
                    // Not one GSO message (a lone datagram, or a size past u16): singles.
                    self.plan.extend((i..j).map(|k| Message {
                        start: k,
                        len: 1,
                        segment: None,
                    }));
                }
                i = j;
            }
        } else {
            self.plan.extend((0..transmits.len()).map(|k| Message {
                start: k,
                len: 1,
                segment: None,
            }));
        }
        // Messages to send again one by one (empty, so no allocation, unless GSO was refused).
        let mut refused = Vec::new();
        for chunk in self.plan.chunks(MMSG_BATCH) {
            self.mmsg.send(
                socket,
                transmits,
                &self.order,
                chunk,
                &mut out,
                &mut refused,
            );
        }
        if !refused.is_empty() {
            if !self.gso_refused {
                tracing::info!("UDP segmentation offload refused by the kernel; sending without");
            }
            self.gso_refused = true;
            let singles: Vec<Message> = refused
                .iter()
                .flat_map(|m| {
                    (m.start..m.start + m.len).map(|k| Message {
                        start: k,
                        len: 1,
                        segment: None,
                    })
                })
                .collect();
            let mut again = Vec::new();
            for chunk in singles.chunks(MMSG_BATCH) {
                self.mmsg
                    .send(socket, transmits, &self.order, chunk, &mut out, &mut again);
            }
            // Single datagrams carry no segment size, so nothing comes back refused.
            out.errors += again.iter().map(|m| m.len as u64).sum::<u64>();
        }
        out
    }
}

impl Mmsg {
    /// One `sendmmsg` for the messages `plan` (datagrams `order[m.start..m.start + m.len]` of
    /// `transmits`), retrying the rest after a partial send. A full socket buffer drops the
    /// head message like a congested link would; a GSO message the kernel refuses goes to
    /// `refused`, for a resend without GSO.
    fn send(
        &mut self,
        socket: &UdpSocket,
        transmits: &[Transmit],
        order: &[usize],
        plan: &[Message],
        out: &mut SendOutcome,
        refused: &mut Vec<Message>,
    ) {
        self.addrs.clear();
        self.iovs.clear();
        self.cmsgs.clear();
        self.msgs.clear();
        for m in plan {
            let first = &transmits[order[m.start]];
            self.addrs.push(SockAddr::from(first.destination));
            self.iovs.extend(
                order[m.start..m.start + m.len]
                    .iter()
                    .map(|&i| libc::iovec {
                        iov_base: transmits[i].contents.as_ptr() as *mut libc::c_void,
                        iov_len: transmits[i].contents.len(),
                    }),
            );
            self.cmsgs.push(Cmsg([0; 32]));
        }
        // Filled after `addrs`, `iovs` and `cmsgs`, which do not move again until the next call.
        let mut iov_at = 0;
        for (k, m) in plan.iter().enumerate() {
            // SAFETY: an all-zero msghdr is valid; the pointers set below stay alive (addrs,
            // iovs, cmsgs) until sendmmsg returns.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = self.addrs[k].as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = self.addrs[k].len();
            h.msg_hdr.msg_iov = &mut self.iovs[iov_at];
            h.msg_hdr.msg_iovlen = m.len;
            iov_at += m.len;
            if let Some(size) = m.segment {
                let c = &mut self.cmsgs[k];
                h.msg_hdr.msg_control = c.0.as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_SPACE of a u16 (24) fits the 32 aligned bytes behind
                // msg_control; CMSG_FIRSTHDR and CMSG_DATA stay inside them.
                unsafe {
                    h.msg_hdr.msg_controllen =
                        libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
                    let cm = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*cm).cmsg_level = libc::SOL_UDP;
                    (*cm).cmsg_type = libc::UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm) as *mut u16, size);
                }
            }
            self.msgs.push(h);
        }
        let msgs = &mut self.msgs;
        let fd = socket.as_raw_fd();
        let mut sent = 0usize;
        while sent < msgs.len() {
            out.syscalls += 1;
            // SAFETY: msgs[sent..] point at live iovecs, addresses and control data; the count
            // matches.
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
                let head = plan[sent];
                sent += 1;
                if head.segment.is_some()
                    && matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
                {
                    refused.push(head);
                    continue;
                }
                // WouldBlock (buffer full) or a per-destination error (ICMP unreachable
                // reported on this socket): skip the head message and go on with the rest.
                out.errors += head.len as u64;
                continue;
            }
            sent += n as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::net::SocketAddr;
    use std::time::Duration;

    use quinn_udp::UdpSockRef;
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
    /// (one GSO message where the kernel offers it) and single packets to others, all in one
    /// `sendmmsg`. Every datagram arrives whole and in order, and once the reused buffers have
    /// grown, a batch of the same shape allocates nothing.
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
            assert_eq!(out.syscalls, 1, "one system call for the whole batch");
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
