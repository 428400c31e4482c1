//! Per-source-IP rate limit for unauthenticated error responses (401/438).
//!
//! Owns a fixed table of buckets indexed by a keyed hash of the source IP (port stripped, so
//! port-hopping does not help). The table never grows: a flood from many addresses only makes
//! addresses share buckets, which errs on the side of answering less. Pure: time is an argument.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;

/// Number of buckets; coturn's `--unauthorized-ratelimit` uses the same size.
pub const BUCKETS: usize = 4096;

#[derive(Clone, Copy, Default)]
struct Bucket {
    window: u32,
    count: u32,
}

/// A bounded per-IP limiter allowing `per_second` events per one-second window.
pub struct RateLimiter {
    buckets: Box<[Bucket; BUCKETS]>,
    hasher: RandomState,
    per_second: u32,
}

impl RateLimiter {
    /// `per_second == 0` disables the limit.
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            buckets: Box::new([Bucket::default(); BUCKETS]),
            hasher: RandomState::new(),
            per_second,
        }
    }

    /// Counts one event for `ip` at `now_secs` (any monotonic second counter) and says whether
    /// it may be answered.
    pub fn allow(&mut self, ip: IpAddr, now_secs: u64) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let ip = crate::policy::canonical_ip(ip);
        let i = (self.hasher.hash_one(ip) as usize) % BUCKETS;
        let b = &mut self.buckets[i];
        let window = now_secs as u32;
        if b.window != window {
            b.window = window;
            b.count = 0;
        }
        if b.count >= self.per_second {
            return false;
        }
        b.count += 1;
        true
    }

    /// Memory held by the table, constant by construction (asserted by the flood tests).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<[Bucket; BUCKETS]>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_per_second_ignoring_ports() {
        let mut r = RateLimiter::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(r.allow(a, 10));
        assert!(r.allow(a, 10));
        assert!(r.allow(a, 10));
        assert!(!r.allow(a, 10));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(!r.allow(mapped, 10), "mapped form shares the bucket");
        assert!(r.allow(a, 11), "next window");
    }

    #[test]
    fn zero_disables() {
        let mut r = RateLimiter::new(0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..10_000).all(|_| r.allow(a, 1)));
    }

    #[test]
    fn many_sources_do_not_grow_memory() {
        let mut r = RateLimiter::new(1);
        let before = r.memory_bytes();
        for i in 0..100_000u32 {
            r.allow(IpAddr::V4(i.into()), 1);
        }
        assert_eq!(r.memory_bytes(), before);
    }
}
