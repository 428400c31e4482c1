//! A bottleneck link on the receive side: datagrams leave at a fixed rate through a drop-tail
//! queue, as they would through a slow access link. The sender's congestion control sees the
//! queueing delay grow and, when the queue overflows, loss: what a real downlink does.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Per-datagram overhead of IP and UDP headers on the wire: IPv4's, and IPv6's.
const WIRE_OVERHEAD: usize = 28;
const WIRE_OVERHEAD_IPV6: usize = 48;

pub struct Shaper {
    rate_bps: u64,
    /// Longest a datagram may wait; more is dropped (the queue is full).
    max_delay: Duration,
    /// When the link is free again.
    busy_until: Option<Instant>,
    queue: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
}

impl Shaper {
    pub fn new(rate_bps: u64, max_delay: Duration) -> Self {
        Shaper {
            rate_bps: rate_bps.max(1_000),
            max_delay,
            busy_until: None,
            queue: VecDeque::new(),
        }
    }

    pub fn set_rate(&mut self, rate_bps: u64) {
        self.rate_bps = rate_bps.max(1_000);
    }

    /// A datagram arrived from the network at `now`; false if the full queue dropped it.
    pub fn push(&mut self, now: Instant, source: SocketAddr, data: &[u8]) -> bool {
        let start = self.busy_until.map_or(now, |b| b.max(now));
        if start.saturating_duration_since(now) > self.max_delay {
            return false;
        }
        // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6: IPv4 on the wire.
        let overhead = if source.ip().to_canonical().is_ipv4() {
            WIRE_OVERHEAD
        } else {
            WIRE_OVERHEAD_IPV6
        };
        let bits = ((data.len() + overhead) * 8) as u64;
        let serialize = Duration::from_nanos(bits * 1_000_000_000 / self.rate_bps);
        let done = start + serialize;
        self.busy_until = Some(done);
        self.queue.push_back((done, source, data.to_vec()));
        true
    }

    /// When the next datagram leaves the link.
    pub fn next_release(&self) -> Option<Instant> {
        self.queue.front().map(|(t, _, _)| *t)
    }

    /// The next datagram that has crossed the link by `now`.
    pub fn pop(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if self.queue.front().is_some_and(|(t, _, _)| *t <= now) {
            self.queue.pop_front().map(|(_, s, d)| (s, d))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_at_the_link_rate_and_drops_when_full() {
        let t0 = Instant::now();
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        // 1 Mbit/s; 1,222-byte datagrams take 10 ms each on the wire.
        let mut s = Shaper::new(1_000_000, Duration::from_millis(100));
        let dropped = (0..20).filter(|_| !s.push(t0, src, &[0u8; 1_222])).count();
        // About 100 ms of queue: 11 fit, the rest were dropped.
        assert_eq!(dropped, 9);
        assert!(s.pop(t0).is_none());
        let first = s.next_release().unwrap();
        assert_eq!(first.duration_since(t0), Duration::from_millis(10));
        let mut released = 0;
        while s.pop(t0 + Duration::from_millis(55)).is_some() {
            released += 1;
        }
        assert_eq!(released, 5);
    }

    #[test]
    fn ipv6_datagrams_carry_their_longer_header() {
        let t0 = Instant::now();
        let mut s = Shaper::new(1_000_000, Duration::from_millis(100));
        // 1,202 bytes and 48 of IPv6 and UDP: 10 ms at 1 Mbit/s.
        s.push(t0, "[2001:db8::1]:1".parse().unwrap(), &[0u8; 1_202]);
        assert_eq!(s.next_release().unwrap() - t0, Duration::from_millis(10));
        // IPv4-mapped: IPv4 on the wire, 1,222 bytes and 28 take the next 10 ms.
        s.push(t0, "[::ffff:192.0.2.1]:1".parse().unwrap(), &[0u8; 1_222]);
        s.pop(t0 + Duration::from_millis(10)).unwrap();
        assert_eq!(s.next_release().unwrap() - t0, Duration::from_millis(20));
    }
}
