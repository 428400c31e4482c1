//! Batched UDP syscalls: `recvmmsg` and `sendmmsg` on a non-blocking socket's raw descriptor.
//!
//! Owns the only `unsafe` of the crate: building `mmsghdr` arrays over buffers that outlive
//! the call, and converting `sockaddr_storage` to and from `SocketAddr`. Batching amortises the
//! syscall cost, which dominates a userspace relay (notes/turn.md §4).

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per syscall.
pub const BATCH: usize = 32;

/// Receive buffers for one batch. Each slot holds `headroom` spare bytes, then up to `max`
/// payload bytes, then `tailroom` spare bytes, so a header can be written in place.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    srcs: [SocketAddr; BATCH],
    headroom: usize,
    max: usize,
}

impl RecvBatch {
    pub fn new(headroom: usize, max: usize, tailroom: usize) -> Self {
        RecvBatch {
            bufs: (0..BATCH)
                .map(|_| vec![0u8; headroom + max + tailroom])
                .collect(),
            lens: [0; BATCH],
            srcs: [SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            headroom,
            max,
        }
    }

    /// Receives up to [`BATCH`] datagrams. Truncated datagrams are reported with length
    /// `usize::MAX` so the caller drops them. `Err(WouldBlock)` when none is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_DONTWAIT)
    }

    /// Like [`Self::recv`] but waits for the first datagram (`MSG_WAITFORONE` on a blocking
    /// socket); for tools such as the benchmark's echo peer.
    pub fn recv_wait(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_WAITFORONE)
    }

    fn recv_flags(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr (null pointers, zero lengths).
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            let buf = &mut self.bufs[i][self.headroom..self.headroom + self.max];
            iovs[i].write(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            });
            msgs[i].msg_hdr.msg_iov = iovs[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: every pointer in `msgs` refers to `iovs`, `addrs` or `self.bufs`, all alive and
        // unaliased for the duration of the call; lengths match the buffers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let truncated = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = if truncated {
                usize::MAX
            } else {
                msgs[i].msg_len as usize
            };
            self.srcs[i] = from_storage(&addrs[i]).unwrap_or(self.srcs[i]);
        }
        Ok(n)
    }

    /// Source and payload range (within [`Self::buf_mut`]) of datagram `i`, `None` if truncated.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, std::ops::Range<usize>)> {
        let len = *self.lens.get(i)?;
        if len == usize::MAX {
            return None;
        }
        Some((self.srcs[i], self.headroom..self.headroom + len))
    }

    pub fn buf(&self, i: usize) -> &[u8] {
        &self.bufs[i]
    }

    pub fn buf_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i]
    }
}

/// Sends each `(dest, bytes)` with `sendmmsg`, in batches. Returns how many were sent before
/// the first failure; `Err` only if the very first datagram could not be sent. `v6_socket`
/// maps IPv4 destinations to `::ffff:a.b.c.d` for dual-stack sockets.
pub fn send_batch(fd: RawFd, items: &[(SocketAddr, &[u8])], v6_socket: bool) -> io::Result<usize> {
    let mut sent = 0;
    while sent < items.len() {
        let chunk = &items[sent..items.len().min(sent + BATCH)];
        let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        // SAFETY: zeroed sockaddr_storage/mmsghdr are valid.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, (dest, bytes)) in chunk.iter().enumerate() {
            let dest = if v6_socket { to_v6(*dest) } else { *dest };
            let len = to_storage(dest, &mut addrs[i]);
            iovs[i].write(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
            msgs[i].msg_hdr.msg_iov = iovs[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = len;
        }
        // SAFETY: pointers refer to `iovs`, `addrs` and the caller's byte slices, all alive for
        // the call; the kernel only reads the payloads.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                msgs.as_mut_ptr(),
                chunk.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if sent == 0 {
                return Err(e);
            }
            return Ok(sent);
        }
        sent += n as usize;
        if (n as usize) < chunk.len() {
            return Ok(sent);
        }
    }
    Ok(sent)
}

/// Sends every item, skipping past a datagram the kernel refuses (so one unreachable
/// destination does not cost the rest of the batch). Returns how many were not sent.
pub fn send_all(fd: RawFd, items: &[(SocketAddr, &[u8])], v6_socket: bool) -> u64 {
    let mut at = 0;
    let mut failed = 0;
    while at < items.len() {
        match send_batch(fd, &items[at..], v6_socket) {
            Ok(n) if n > 0 => at += n,
            _ => {
                failed += 1;
                at += 1;
            }
        }
    }
    failed
}

/// Sends one datagram (non-blocking).
pub fn send_one(fd: RawFd, dest: SocketAddr, bytes: &[u8], v6_socket: bool) -> io::Result<()> {
    send_batch(fd, &[(dest, bytes)], v6_socket).map(|_| ())
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        v6 => v6,
    }
}

/// IPv4-mapped sources on a dual-stack socket are reported as IPv4.
fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which fits in it.
            let sin = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above for sockaddr_in6.
            let sin6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

fn to_storage(a: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned.
            let sin =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_over_loopback() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dest = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        let items: Vec<(SocketAddr, &[u8])> =
            payloads.iter().map(|p| (dest, p.as_slice())).collect();
        assert_eq!(send_batch(a.as_raw_fd(), &items, false).unwrap(), 40);
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut rb = RecvBatch::new(8, 64, 4);
        let mut got = Vec::new();
        while got.len() < 40 {
            // Wait for readability with a blocking peek, then drain with recvmmsg.
            let mut one = [0u8; 1];
            b.peek_from(&mut one).unwrap();
            let n = rb.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                let (src, r) = rb.get(i).unwrap();
                assert_eq!(src, a.local_addr().unwrap());
                assert_eq!(r.start, 8);
                got.push(rb.buf(i)[r].to_vec());
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn truncated_datagram_is_flagged() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(&[1u8; 100], b.local_addr().unwrap()).unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut one = [0u8; 1];
        b.peek_from(&mut one).unwrap();
        let mut rb = RecvBatch::new(0, 10, 0);
        assert_eq!(rb.recv(b.as_raw_fd()).unwrap(), 1);
        assert!(rb.get(0).is_none());
    }

    #[test]
    fn mapped_sources_on_dual_stack_read_as_v4() {
        let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:7".parse().unwrap();
        to_storage(mapped, &mut s);
        assert_eq!(from_storage(&s), Some("192.0.2.1:7".parse().unwrap()));
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        to_storage(v6, &mut s);
        assert_eq!(from_storage(&s), Some(v6));
        assert_eq!(
            to_v6("1.2.3.4:5".parse().unwrap()),
            "[::ffff:1.2.3.4]:5".parse().unwrap()
        );
    }
}
