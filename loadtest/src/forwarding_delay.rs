//! The server's own forwarding delay over a measured window: Moien's
//! `moien_sfu_forwarding_delay_seconds` histogram (a datagram's arrival in a media worker's
//! socket, by the kernel's timestamp, to the hand-off of each copy to the kernel), read from the
//! node's metrics at the window's edges. The load tester's one-way latency also counts its own
//! sending and receiving on a machine it shares with the server; this is the part the server
//! adds, measured where it happens.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const FAMILY: &str = "moien_sfu_forwarding_delay_seconds_bucket";

/// Cumulative counts by upper bound (seconds), summed over the node's workers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(Vec<(f64, f64)>);

/// Percentiles of the server's forwarding delay over a window.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ForwardingDelay {
    /// Forwarded copies the server timed in the window.
    pub copies: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Share of the copies that left within 2 ms (a bucket bound, so exact).
    pub within_2ms_percent: f64,
}

impl Buckets {
    /// The histogram from a text exposition; `None` when the family is absent.
    pub fn parse(text: &str) -> Option<Buckets> {
        let mut by_le: Vec<(f64, f64)> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(FAMILY) else {
                continue;
            };
            let Some(le) = label(rest, "le") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                }
            };
            let Some(count) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            match by_le.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += count,
                None => by_le.push((le, count)),
            }
        }
        if by_le.is_empty() {
            return None;
        }
        by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Buckets(by_le))
    }

    /// What was counted between `earlier` and `self`.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, c)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(b, _)| b == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, (c - before).max(0.0))
                })
                .collect(),
        )
    }

    fn total(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }

    /// The `q` quantile in seconds, interpolated linearly inside its bucket as Prometheus's
    /// `histogram_quantile` does; the highest finite bound when it falls in the +Inf bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let (mut lo, mut below) = (0.0, 0.0);
        for &(le, c) in &self.0 {
            if c >= rank {
                if le.is_infinite() {
                    return Some(lo);
                }
                let share = if c > below {
                    (rank - below) / (c - below)
                } else {
                    0.0
                };
                return Some(lo + (le - lo) * share);
            }
            (lo, below) = (le, c);
        }
        Some(lo)
    }

    /// The share (0..1) counted at or under `bound`, when `bound` is one of the bucket bounds.
    fn share_within(&self, bound: f64) -> Option<f64> {
        let total = self.total();
        let (_, c) = self.0.iter().find(|(le, _)| (*le - bound).abs() < 1e-12)?;
        (total > 0.0).then(|| c / total)
    }

    pub fn summary(&self) -> Option<ForwardingDelay> {
        let ms = |q: f64| self.quantile(q).map(|s| s * 1_000.0);
        Some(ForwardingDelay {
            copies: self.total() as u64,
            p50_ms: ms(0.50)?,
            p90_ms: ms(0.90)?,
            p99_ms: ms(0.99)?,
            within_2ms_percent: self.share_within(0.002).map_or(f64::NAN, |s| s * 100.0),
        })
    }
}

/// A label's value in the rest of a sample line after its name (`{a="x",le="0.1"} 42`).
fn label<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    let inner = rest.strip_prefix('{')?.split('}').next()?;
    inner.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// Reads the histogram from a node's `/metrics`; `None` if the node cannot be reached in time
/// or does not export it (the window's figure is then absent, not wrong).
pub async fn scrape(client: &reqwest::Client, url: &str) -> Option<Buckets> {
    let r = client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    Buckets::parse(&r.text().await.ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP moien_sfu_forwarding_delay_seconds x
# TYPE moien_sfu_forwarding_delay_seconds histogram
moien_sfu_forwarding_delay_seconds_bucket{node=\"n\",worker=\"0\",le=\"0.001\"} 50
moien_sfu_forwarding_delay_seconds_bucket{node=\"n\",worker=\"0\",le=\"0.002\"} 90
moien_sfu_forwarding_delay_seconds_bucket{node=\"n\",worker=\"0\",le=\"+Inf\"} 100
moien_sfu_forwarding_delay_seconds_sum{node=\"n\",worker=\"0\"} 0.2
moien_sfu_forwarding_delay_seconds_count{node=\"n\",worker=\"0\"} 100
moien_sfu_forwarding_delay_seconds_bucket{node=\"n\",worker=\"1\",le=\"0.001\"} 50
moien_sfu_forwarding_delay_seconds_bucket{node=\"n\",worker=\"1\",le=\"0.002\"} 100
moien_sfu_forwarding_delay_seconds_bucket{node=\"n\",worker=\"1\",le=\"+Inf\"} 100
moien_sfu_rooms{node=\"n\",worker=\"0\"} 3
";

    #[test]
    fn sums_workers_and_interpolates_like_prometheus() {
        let b = Buckets::parse(TEXT).unwrap();
        assert_eq!(
            b,
            Buckets(vec![(0.001, 100.0), (0.002, 190.0), (f64::INFINITY, 200.0)])
        );
        // Rank 100 of 200 is the top of the first bucket.
        assert!((b.quantile(0.5).unwrap() - 0.001).abs() < 1e-12);
        // Rank 145 is half way through the second (100..190).
        assert!((b.quantile(0.725).unwrap() - 0.0015).abs() < 1e-12);
        // In the +Inf bucket: the highest finite bound.
        assert_eq!(b.quantile(0.99), Some(0.002));
        let s = b.summary().unwrap();
        assert_eq!(s.copies, 200);
        assert!((s.within_2ms_percent - 95.0).abs() < 1e-9);
    }

    #[test]
    fn a_window_is_the_difference_of_its_edges() {
        let start = Buckets(vec![(0.001, 10.0), (0.002, 10.0), (f64::INFINITY, 10.0)]);
        let end = Buckets(vec![(0.001, 10.0), (0.002, 30.0), (f64::INFINITY, 30.0)]);
        let w = end.since(&start);
        assert_eq!(w.total(), 20.0);
        // Everything in the window fell between 1 and 2 ms.
        let p50 = w.quantile(0.5).unwrap();
        assert!((0.001..=0.002).contains(&p50), "{p50}");
        assert_eq!(w.summary().unwrap().within_2ms_percent, 100.0);
    }

    #[test]
    fn nothing_counted_is_no_figure() {
        assert_eq!(Buckets::parse("moien_sfu_rooms 1\n"), None);
        let b = Buckets(vec![(0.001, 0.0), (f64::INFINITY, 0.0)]);
        assert_eq!(b.quantile(0.99), None);
        assert_eq!(b.summary(), None);
    }
}
