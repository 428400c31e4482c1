//! Reading a worker's datagrams in batches, each with the time the kernel received it: one
//! `recvmmsg` fills up to [`RECV_BATCH`] buffers and reports, per message, the sender, the GRO
//! segment size and the kernel's receive timestamp (`SO_TIMESTAMPNS`). The timestamp is where
//! the forwarding delay starts (`moien_sfu_forwarding_delay_seconds`): a packet waiting in the
//! socket while the worker handles the ones before it has already been delayed.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::SockAddr;

/// Datagram buffers per receive call.
pub(crate) const RECV_BATCH: usize = 32;
/// Size of one receive buffer: room for a GRO train of full-size datagrams.
const RECV_BUF: usize = 64 * 1024;

/// Room for the control messages a datagram may carry here: its arrival time, a GRO segment
/// size, and the packet-info and TOS messages the socket setup turns on. Aligned like a
/// `cmsghdr`. A message that does not fit is cut (`MSG_CTRUNC`); the datagram still counts.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; 256]);

/// One received message: a datagram, or a GRO train of `stride`-byte datagrams.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub addr: SocketAddr,
    pub len: usize,
    pub stride: usize,
    /// When the kernel received it, on the monotonic clock; `None` without a timestamp.
    pub arrival: Option<Instant>,
}

/// Asks the kernel to timestamp every datagram it receives on `socket`.
pub(crate) fn enable_timestamps(socket: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option of the stated size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The receive buffers and the `recvmmsg` arrays, allocated once.
pub(crate) struct Receiver {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<Cmsg>,
    msgs: Vec<libc::mmsghdr>,
    metas: Vec<Meta>,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; RECV_BUF]).collect(),
            // SAFETY: all-zero sockaddr_storage and mmsghdr are valid values.
            addrs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            iovs: Vec::with_capacity(RECV_BATCH),
            cmsgs: vec![Cmsg([0; 256]); RECV_BATCH],
            msgs: Vec::with_capacity(RECV_BATCH),
            metas: Vec::with_capacity(RECV_BATCH),
        }
    }
}

impl Receiver {
    /// One `recvmmsg` without waiting; the number of messages read. `WouldBlock` when the
    /// socket is empty.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.iovs.clear();
        self.msgs.clear();
        self.metas.clear();
        for b in &mut self.bufs {
            self.iovs.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            });
        }
        // Filled after `iovs`, which does not move again until the call returns.
        for k in 0..RECV_BATCH {
            // SAFETY: an all-zero msghdr is valid; the pointers set below stay alive and
            // unmoved (addrs, iovs, cmsgs) for the call.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = (&mut self.addrs[k] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovs[k];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.cmsgs[k].0.as_mut_ptr().cast();
            hdr.msg_controllen = self.cmsgs[k].0.len() as _;
            self.msgs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        // SAFETY: `msgs` holds RECV_BATCH valid headers pointing into live buffers.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // The kernel's timestamps are wall-clock time; the worker's clock is monotonic. Both
        // are read once per batch and the datagram's age carried over.
        let (mono, wall) = (Instant::now(), SystemTime::now());
        for k in 0..n {
            let hdr = &self.msgs[k].msg_hdr;
            let len = (self.msgs[k].msg_len as usize).min(RECV_BUF);
            // SAFETY: the kernel wrote `msg_namelen` bytes of a socket address there.
            let addr = unsafe { SockAddr::new(self.addrs[k], hdr.msg_namelen) }.as_socket();
            let Some(addr) = addr else {
                // Not an IP sender (cannot happen on a UDP socket): nothing to answer.
                self.metas.push(Meta {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    len: 0,
                    stride: 1,
                    arrival: None,
                });
                continue;
            };
            let (stride, received) = control(hdr);
            let arrival = received.and_then(|at| {
                let age = wall.duration_since(at).unwrap_or(Duration::ZERO);
                mono.checked_sub(age)
            });
            self.metas.push(Meta {
                addr,
                len,
                stride: stride.filter(|s| *s > 0).unwrap_or(len.max(1)),
                arrival,
            });
        }
        Ok(n)
    }

    /// The messages of the last [`Receiver::recv`]: each one's metadata and bytes.
    pub fn messages(&self) -> impl Iterator<Item = (&Meta, &[u8])> {
        self.metas
            .iter()
            .zip(&self.bufs)
            .map(|(m, b)| (m, &b[..m.len]))
    }
}

/// The GRO segment size and the kernel's receive time from one message's control data.
fn control(hdr: &libc::msghdr) -> (Option<usize>, Option<SystemTime>) {
    let mut stride = None;
    let mut at = None;
    // SAFETY: `hdr` is a header the kernel filled; CMSG_FIRSTHDR/NXTHDR stay within
    // `msg_controllen`, and each payload is read unaligned at the size its type defines.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let room = (*c).cmsg_len as usize - (data as usize - c as usize);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS)
                    if room >= std::mem::size_of::<libc::timespec>() =>
                {
                    let ts = std::ptr::read_unaligned(data as *const libc::timespec);
                    if ts.tv_sec >= 0 && (0..1_000_000_000).contains(&ts.tv_nsec) {
                        at = UNIX_EPOCH
                            .checked_add(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                    }
                }
                (libc::SOL_UDP, libc::UDP_GRO) if room >= std::mem::size_of::<libc::c_int>() => {
                    let s = std::ptr::read_unaligned(data as *const libc::c_int);
                    stride = usize::try_from(s).ok();
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    (stride, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        (rx, tx)
    }

    #[test]
    fn reads_a_batch_with_senders_and_arrival_times() {
        let (rx, tx) = pair();
        enable_timestamps(&rx).unwrap();
        let mut r = Receiver::default();
        assert_eq!(
            r.recv(&rx).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "an empty socket says so"
        );
        let before = Instant::now();
        for i in 0..5u8 {
            tx.send(&[i; 100][..(50 + i as usize)]).unwrap();
        }
        let n = r.recv(&rx).unwrap();
        let after = Instant::now();
        assert_eq!(n, 5);
        for (i, (m, data)) in r.messages().enumerate() {
            assert_eq!(m.addr, tx.local_addr().unwrap());
            assert_eq!(data, &[i as u8; 100][..50 + i]);
            assert_eq!(m.stride, data.len());
            // Wall and monotonic clocks are read a moment apart: allow a millisecond.
            let at = m.arrival.expect("timestamped");
            assert!(
                at + Duration::from_millis(1) >= before && at <= after,
                "{at:?}"
            );
        }
    }

    #[test]
    fn without_timestamps_the_arrival_is_unknown() {
        let (rx, tx) = pair();
        let mut r = Receiver::default();
        // Loopback delivers inside the send call.
        tx.send(b"x").unwrap();
        assert_eq!(r.recv(&rx).unwrap(), 1);
        let (m, data) = r.messages().next().unwrap();
        assert_eq!(data, b"x");
        assert_eq!(m.arrival, None);
    }

    #[test]
    fn a_batch_stops_at_its_size() {
        let (rx, tx) = pair();
        enable_timestamps(&rx).unwrap();
        for _ in 0..RECV_BATCH + 3 {
            tx.send(b"abc").unwrap();
        }
        let mut r = Receiver::default();
        assert_eq!(r.recv(&rx).unwrap(), RECV_BATCH);
        assert_eq!(r.recv(&rx).unwrap(), 3);
        assert!(
            r.messages()
                .all(|(m, d)| d == b"abc" && m.arrival.is_some())
        );
    }
}
