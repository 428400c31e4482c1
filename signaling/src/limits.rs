//! Rate limits: token buckets per client address and per identity, in bounded maps, so a flood
//! from one address is refused (`429`, `rate_limited`) while everyone else goes on.
//!
//! A bucket map holds at most `max_tracked` keys; when it is full, the buckets that are full again
//! (idle long enough to have refilled) are forgotten first, and if none is, the new key shares an
//! overflow bucket: memory stays bounded whatever the number of addresses.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::LimitsConfig;

/// One token bucket: `rate` tokens a second up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: u32, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.at = now;
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: f64, burst: u32, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: f64, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate >= f64::from(burst)
    }
}

/// Token buckets by key, bounded.
pub struct Limiter<K> {
    rate: f64,
    burst: u32,
    max: usize,
    inner: Mutex<Inner<K>>,
}

struct Inner<K> {
    buckets: HashMap<K, Bucket>,
    /// Shared by keys that arrive while the map is full of busy keys.
    overflow: Bucket,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `rate` per second (0: unlimited), `burst` at most at once.
    pub fn new(rate: f64, burst: u32, max: usize) -> Self {
        let burst = burst.max(1);
        Limiter {
            rate,
            burst,
            max: max.max(1),
            inner: Mutex::new(Inner {
                buckets: HashMap::new(),
                overflow: Bucket::full(burst, Instant::now()),
            }),
        }
    }

    /// Whether `key` may do one more thing now.
    pub fn allow(&self, key: &K) -> bool {
        self.allow_at(key, Instant::now())
    }

    pub fn allow_at(&self, key: &K, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let (rate, burst) = (self.rate, self.burst);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = inner.buckets.get_mut(key) {
            return b.take(rate, burst, now);
        }
        if inner.buckets.len() >= self.max {
            // Forget whoever has been quiet long enough to be full again: they lose nothing.
            inner.buckets.retain(|_, b| !b.is_full(rate, burst, now));
        }
        if inner.buckets.len() >= self.max {
            return inner.overflow.take(rate, burst, now);
        }
        let mut b = Bucket::full(burst, now);
        let ok = b.take(rate, burst, now);
        inner.buckets.insert(key.clone(), b);
        ok
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.buckets.len())
            .unwrap_or_default()
    }
}

/// The limits of one signaling server.
pub struct Limits {
    pub join_per_ip: Limiter<IpAddr>,
    pub join_per_identity: Limiter<String>,
    pub api_per_ip: Limiter<IpAddr>,
    /// Per participant, kept by its WebSocket task (one bucket each).
    pub message_rate: f64,
    pub message_burst: u32,
}

impl Limits {
    pub fn new(c: &LimitsConfig) -> Self {
        Limits {
            join_per_ip: Limiter::new(c.join_rate_per_ip, c.join_burst_per_ip, c.max_tracked),
            join_per_identity: Limiter::new(
                c.join_rate_per_identity,
                c.join_burst_per_identity,
                c.max_tracked,
            ),
            api_per_ip: Limiter::new(c.api_rate_per_ip, c.api_burst_per_ip, c.max_tracked),
            message_rate: c.message_rate,
            message_burst: c.message_burst.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_then_refills() {
        let l = Limiter::new(2.0, 3, 10);
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow_at(&1, t0)));
        assert!(!l.allow_at(&1, t0));
        assert!(l.allow_at(&2, t0), "another key is unaffected");
        assert!(l.allow_at(&1, t0 + Duration::from_millis(500)));
        assert!(!l.allow_at(&1, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let l = Limiter::new(0.0, 1, 1);
        assert!((0..1000).all(|_| l.allow(&1)));
    }

    #[test]
    fn memory_is_bounded() {
        let l = Limiter::new(1.0, 2, 100);
        let t0 = Instant::now();
        for k in 0..10_000 {
            l.allow_at(&k, t0);
        }
        assert!(l.tracked() <= 100);
        // Busy keys keep their buckets; later ones share the overflow bucket.
        assert!(!l.allow_at(&5_000, t0) || !l.allow_at(&5_001, t0) || !l.allow_at(&5_002, t0));
        // Once the old buckets refill, new keys get their own again.
        assert!(l.allow_at(&20_000, t0 + Duration::from_secs(5)));
    }
}
