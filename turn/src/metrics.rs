//! Prometheus metrics of the TURN server.
//!
//! Owns the metric names and labels. Labels are low-cardinality only (direction, reason):
//! never an address or a user. The I/O shell applies the core's [`Stats`] deltas here after
//! each batch, so the packet path touches no atomic per packet.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::core::{DropReason, Stats};
use crate::policy::DenyReason;

/// Counters and gauges registered on a caller's registry.
#[derive(Clone)]
pub struct TurnMetrics {
    pub allocations_active: IntGauge,
    pub allocations_created: IntCounter,
    pub allocations_expired: IntCounter,
    pub relayed_packets: IntCounterVec,
    pub relayed_bytes: IntCounterVec,
    pub unauthorized: IntCounter,
    pub unauthorized_suppressed: IntCounter,
    pub stale_nonce: IntCounter,
    pub policy_denials: IntCounterVec,
    pub quota_refusals: IntCounter,
    pub channel_conflicts: IntCounter,
    pub dropped_packets: IntCounterVec,
    /// Datagrams the kernel refused to send (socket buffer full, unreachable).
    pub send_failures: IntCounter,
    c2p_packets: IntCounter,
    c2p_bytes: IntCounter,
    p2c_packets: IntCounter,
    p2c_bytes: IntCounter,
}

impl TurnMetrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let allocations_active = IntGauge::new(
            "moien_turn_allocations_active",
            "TURN allocations alive now",
        )?;
        let allocations_created = IntCounter::new(
            "moien_turn_allocations_created_total",
            "TURN allocations created",
        )?;
        let allocations_expired = IntCounter::new(
            "moien_turn_allocations_expired_total",
            "TURN allocations that timed out (not refreshed)",
        )?;
        let relayed_packets = IntCounterVec::new(
            Opts::new(
                "moien_turn_relayed_packets_total",
                "Packets relayed, by direction",
            ),
            &["direction"],
        )?;
        let relayed_bytes = IntCounterVec::new(
            Opts::new(
                "moien_turn_relayed_bytes_total",
                "Payload bytes relayed, by direction",
            ),
            &["direction"],
        )?;
        let unauthorized = IntCounter::new(
            "moien_turn_unauthorized_total",
            "401 Unauthorized responses sent",
        )?;
        let unauthorized_suppressed = IntCounter::new(
            "moien_turn_unauthorized_suppressed_total",
            "401 responses not sent because the source IP exceeded its rate",
        )?;
        let stale_nonce = IntCounter::new(
            "moien_turn_stale_nonce_total",
            "438 Stale Nonce responses sent",
        )?;
        let policy_denials = IntCounterVec::new(
            Opts::new(
                "moien_turn_policy_denials_total",
                "Peer addresses refused by the relay policy",
            ),
            &["reason"],
        )?;
        let quota_refusals = IntCounter::new(
            "moien_turn_quota_refusals_total",
            "Requests refused by a quota or capacity limit (486/508)",
        )?;
        let channel_conflicts = IntCounter::new(
            "moien_turn_channel_conflicts_total",
            "ChannelBind requests refused (400) because the channel number or the peer was \
             already bound to another",
        )?;
        let dropped_packets = IntCounterVec::new(
            Opts::new(
                "moien_turn_dropped_packets_total",
                "Packets dropped without answer, by reason",
            ),
            &["reason"],
        )?;
        let send_failures = IntCounter::new(
            "moien_turn_send_failures_total",
            "Datagrams the kernel refused to send (buffer full or error)",
        )?;
        registry.register(Box::new(send_failures.clone()))?;
        registry.register(Box::new(allocations_active.clone()))?;
        registry.register(Box::new(allocations_created.clone()))?;
        registry.register(Box::new(allocations_expired.clone()))?;
        registry.register(Box::new(relayed_packets.clone()))?;
        registry.register(Box::new(relayed_bytes.clone()))?;
        registry.register(Box::new(unauthorized.clone()))?;
        registry.register(Box::new(unauthorized_suppressed.clone()))?;
        registry.register(Box::new(stale_nonce.clone()))?;
        registry.register(Box::new(policy_denials.clone()))?;
        registry.register(Box::new(quota_refusals.clone()))?;
        registry.register(Box::new(channel_conflicts.clone()))?;
        registry.register(Box::new(dropped_packets.clone()))?;
        // Touch every label so series exist (at zero) from the start.
        for r in DenyReason::ALL {
            policy_denials.with_label_values(&[r.as_str()]);
        }
        for r in DropReason::ALL {
            dropped_packets.with_label_values(&[r.as_str()]);
        }
        let c2p_packets = relayed_packets.with_label_values(&["client_to_peer"]);
        let c2p_bytes = relayed_bytes.with_label_values(&["client_to_peer"]);
        let p2c_packets = relayed_packets.with_label_values(&["peer_to_client"]);
        let p2c_bytes = relayed_bytes.with_label_values(&["peer_to_client"]);
        Ok(TurnMetrics {
            allocations_active,
            allocations_created,
            allocations_expired,
            relayed_packets,
            relayed_bytes,
            unauthorized,
            unauthorized_suppressed,
            stale_nonce,
            policy_denials,
            quota_refusals,
            channel_conflicts,
            dropped_packets,
            send_failures,
            c2p_packets,
            c2p_bytes,
            p2c_packets,
            p2c_bytes,
        })
    }

    /// Adds a batch of core counters and sets the active-allocation gauge.
    pub fn apply(&self, s: &Stats, active: usize) {
        fn add(c: &IntCounter, v: u64) {
            if v > 0 {
                c.inc_by(v);
            }
        }
        add(&self.allocations_created, s.allocations_created);
        add(&self.allocations_expired, s.allocations_expired);
        add(&self.unauthorized, s.unauthorized);
        add(&self.unauthorized_suppressed, s.unauthorized_suppressed);
        add(&self.stale_nonce, s.stale_nonce);
        add(&self.quota_refusals, s.quota_refusals);
        add(&self.channel_conflicts, s.channel_conflicts);
        add(&self.c2p_packets, s.client_to_peer_packets);
        add(&self.c2p_bytes, s.client_to_peer_bytes);
        add(&self.p2c_packets, s.peer_to_client_packets);
        add(&self.p2c_bytes, s.peer_to_client_bytes);
        for (i, r) in DenyReason::ALL.iter().enumerate() {
            if s.policy_denials[i] > 0 {
                self.policy_denials
                    .with_label_values(&[r.as_str()])
                    .inc_by(s.policy_denials[i]);
            }
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            if s.dropped[i] > 0 {
                self.dropped_packets
                    .with_label_values(&[r.as_str()])
                    .inc_by(s.dropped[i]);
            }
        }
        self.allocations_active
            .set(i64::try_from(active).unwrap_or(i64::MAX));
    }

    /// Sum of policy denials over all reasons.
    pub fn policy_denials_total(&self) -> u64 {
        DenyReason::ALL
            .iter()
            .map(|r| self.policy_denials.with_label_values(&[r.as_str()]).get())
            .sum()
    }

    /// Relayed packets in one direction (`"client_to_peer"` or `"peer_to_client"`).
    pub fn relayed_packets(&self, direction: &str) -> u64 {
        self.relayed_packets.with_label_values(&[direction]).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_expected_names_and_applies_stats() {
        let reg = Registry::new();
        let m = TurnMetrics::new(&reg).unwrap();
        let mut s = Stats {
            allocations_created: 2,
            unauthorized: 3,
            client_to_peer_packets: 5,
            peer_to_client_bytes: 100,
            ..Stats::default()
        };
        s.policy_denials[DenyReason::Loopback as usize] = 4;
        m.apply(&s, 2);
        assert_eq!(m.allocations_active.get(), 2);
        assert_eq!(m.unauthorized.get(), 3);
        assert_eq!(m.policy_denials_total(), 4);
        assert_eq!(m.relayed_packets("client_to_peer"), 5);
        let names: Vec<String> = reg.gather().iter().map(|f| f.name().to_owned()).collect();
        for n in [
            "moien_turn_allocations_active",
            "moien_turn_allocations_created_total",
            "moien_turn_allocations_expired_total",
            "moien_turn_relayed_packets_total",
            "moien_turn_relayed_bytes_total",
            "moien_turn_unauthorized_total",
            "moien_turn_policy_denials_total",
            "moien_turn_quota_refusals_total",
            "moien_turn_channel_conflicts_total",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        // A second registration on the same registry is refused rather than double counted.
        assert!(TurnMetrics::new(&reg).is_err());
    }
}
