//! Bandwidth allocation for one subscriber: shares its estimated downlink among its
//! subscriptions by priority, as a pure function.
//!
//! Audio is always allocated (it is cheap and losing it ends the conversation), and outside the
//! budget: audio carries no transport-wide sequence numbers (`session::RtcFactory`), so the
//! estimate is made from video packets alone and is what the link leaves for video. Video gets, in
//! priority order (screen share, active speaker, pinned, others), first its lowest layer, then
//! upgrades; a video subscription whose lowest layer does not fit is paused rather than left to
//! collapse. The result also says how much the subscriber would like, so the bandwidth estimator
//! probes toward the next upgrade. `Sustain` holds an upgrade until padding has carried its rate.

use std::time::{Duration, Instant};

/// Why a subscription matters more than another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Other = 0,
    Pinned = 1,
    Speaker = 2,
    Screen = 3,
}

/// One subscription as the allocator sees it.
#[derive(Debug, Clone)]
pub struct Want {
    pub id: u64,
    /// Audio: `layers` holds its one bitrate and it is never paused.
    pub audio: bool,
    pub priority: Priority,
    /// Bitrate of each layer, lowest first, in bit/s (measured, or last known).
    pub layers: Vec<u64>,
    /// Highest layer the client wants (a small tile needs no full resolution).
    pub max_layer: Option<usize>,
    /// The client asked for nothing (hidden tile).
    pub paused_by_client: bool,
    /// Layer allocated last time, for hysteresis.
    pub current: Option<usize>,
    /// Paused for bandwidth long enough to try its base layer again on a lower estimate: an
    /// application-limited estimator does not rise by itself while the video sends nothing.
    pub trial: bool,
}

/// The decision for one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Forward this layer (audio: layer 0).
    Layer(usize),
    Paused,
}

/// Upgrading needs this much room beyond the layer's rate, so that noise in the estimate does
/// not flap layers.
const UPGRADE_MARGIN_PERCENT: u64 = 10;
/// A layer being forwarded is kept until the estimate falls this far below its rate: the
/// delay-based estimate dips for a moment whenever a burst (a keyframe) meets a bottleneck, and
/// dropping the layer for each dip made a subscriber whose link just fits it flap between two
/// layers, each switch costing a keyframe.
const KEEP_MARGIN_PERCENT: u64 = 10;
/// A video that flows keeps its lowest layer until the estimate falls this far below what that
/// layer needs: congestion control estimates conservatively, and a paused video on a link that
/// carries its base layer is worse than a base layer briefly above the estimate.
const KEEP_BASE_PERCENT: u64 = 85;
/// A resume trial starts the base layer when the estimate covers this much of it.
const TRIAL_PERCENT: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub grants: Vec<(u64, Grant)>,
    /// Sum of what was granted to video (audio is outside the budget).
    pub used_bps: u64,
    /// What the subscriber's link must carry for one more upgrade (its margin included):
    /// worth sustaining (padding) toward.
    pub next_bps: u64,
    /// What all video at its highest wanted layer would use: the probing ceiling.
    pub max_bps: u64,
}

pub fn allocate(budget_bps: u64, wants: &[Want]) -> Allocation {
    let mut grants: Vec<(u64, Grant)> = Vec::with_capacity(wants.len());
    let mut used = 0u64;
    for w in wants.iter().filter(|w| w.audio) {
        grants.push((w.id, Grant::Layer(0)));
    }
    let mut video: Vec<&Want> = wants.iter().filter(|w| !w.audio).collect();
    // Highest priority first; equal priority in a stable order.
    video.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));

    let top = |w: &Want| -> Option<usize> {
        if w.paused_by_client || w.layers.is_empty() {
            return None;
        }
        Some(w.max_layer.unwrap_or(usize::MAX).min(w.layers.len() - 1))
    };
    let fits = |used: u64, rate: u64, upgrade: bool| -> bool {
        let need = if upgrade {
            rate + rate * UPGRADE_MARGIN_PERCENT / 100
        } else {
            rate - rate * KEEP_MARGIN_PERCENT / 100
        };
        used + need <= budget_bps
    };

    // Pass 1: everyone's lowest layer, in priority order.
    let mut chosen: Vec<Option<usize>> = vec![None; video.len()];
    for (i, w) in video.iter().enumerate() {
        if top(w).is_none() {
            continue;
        }
        let rate = w.layers[0];
        let keeps = match (w.current, w.trial) {
            (_, true) => (used + rate) * TRIAL_PERCENT / 100 <= budget_bps,
            (None, false) => fits(used, rate, true),
            (Some(_), false) => (used + rate) * KEEP_BASE_PERCENT / 100 <= budget_bps,
        };
        if keeps {
            used += rate;
            chosen[i] = Some(0);
        }
    }
    // Pass 2: upgrades, in priority order, each as high as it fits.
    for (i, w) in video.iter().enumerate() {
        let (Some(base), Some(top)) = (chosen[i], top(w)) else {
            continue;
        };
        let mut best = base;
        for layer in (base + 1)..=top {
            let delta = w.layers[layer].saturating_sub(w.layers[best]);
            let upgrade = w.current.is_none_or(|c| layer > c);
            if fits(used, delta, upgrade) {
                used += delta;
                best = layer;
            } else {
                break;
            }
        }
        chosen[i] = Some(best);
    }
    // Probe toward the first subscription that could still go up, and pad toward what its
    // upgrade needs, margin included: padding to the layer's bare rate proved a link that
    // carried up to 10 % less than the upgrade then demanded, and the estimate, never pushed
    // into the bottleneck, climbed past the margin anyway (a 1 Mbit/s downlink took a top
    // layer that needs 97-102 % of it, then dropped it).
    let mut next = used;
    for (i, w) in video.iter().enumerate() {
        let Some(top) = top(w) else { continue };
        let up = chosen[i].map_or(0, |c| c + 1);
        if up <= top {
            let now = chosen[i].map_or(0, |c| w.layers[c]);
            let delta = w.layers[up].saturating_sub(now);
            next = used + delta + delta * UPGRADE_MARGIN_PERCENT / 100;
            break;
        }
    }
    let max: u64 = video
        .iter()
        .filter_map(|w| top(w).map(|t| w.layers[t]))
        .sum();
    for (i, w) in video.iter().enumerate() {
        grants.push((w.id, chosen[i].map_or(Grant::Paused, Grant::Layer)));
    }
    Allocation {
        grants,
        used_bps: used,
        next_bps: next,
        max_bps: max.max(next),
    }
}

/// An upgrade is granted only after the padding target has asked for its rate this long.
const SUSTAIN: Duration = Duration::from_secs(1);

/// Whether a subscriber's link has carried the rate an upgrade needs. The allocation asks str0m
/// to pad up to the next upgrade's rate (its minimum) while the subscriber is held below what
/// it wants, and str0m pads up to that target within its estimate; an upgrade is granted once
/// the target has covered the upgrade, and the estimate the target, for `SUSTAIN`.
///
/// Without it, an estimate raised by probes alone granted the upgrade while the link had
/// carried only the lower layer. The upgrade's keyframe then met an overuse detector whose
/// figure of what got through was the lower layer's, and the estimate fell to 0.85 times that:
/// a 600 kbit/s downlink switched five times in its first 8 s, 300 kbit/s twice
/// (docs/PERFORMANCE.md, "Twentieth pass"). Padding first makes that figure the upgrade's
/// rate, and finds a link that cannot carry it without spending a keyframe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sustain {
    /// The padding target given to the estimator, bit/s, and since when.
    padded: Option<(u64, Instant)>,
}

impl Sustain {
    /// The padding target is now `next` bit/s (0: none). A change within 10 % keeps the time.
    pub fn set_target(&mut self, next: u64, now: Instant) {
        self.padded = (next > 0).then(|| match self.padded {
            Some((rate, since)) if rate.abs_diff(next) <= rate / 10 => (rate, since),
            _ => (next, now),
        });
    }

    /// The estimate is `budget` bit/s: below the target, the padding cannot reach it, and the
    /// time starts again.
    pub fn observe_budget(&mut self, budget: u64, now: Instant) {
        if let Some((rate, since)) = self.padded.as_mut()
            && budget < *rate
        {
            *since = now;
        }
    }

    /// Whether an allocation using `used` bit/s of video may be granted at `now`.
    pub fn allows(&self, used: u64, now: Instant) -> bool {
        self.padded.is_some_and(|(rate, since)| {
            rate + rate / 10 >= used && now.saturating_duration_since(since) >= SUSTAIN
        })
    }
}

/// Whether `allocation` raises any of `wants` above its current layer.
pub fn upgrades(allocation: &Allocation, wants: &[Want]) -> bool {
    allocation.grants.iter().any(|(id, grant)| {
        let current = wants.iter().find(|w| w.id == *id).and_then(|w| w.current);
        matches!((current, grant), (Some(c), Grant::Layer(l)) if *l > c)
    })
}

/// Caps every video want at its current layer: the allocation then upgrades nothing.
pub fn hold_layers(wants: &mut [Want]) {
    for w in wants.iter_mut().filter(|w| !w.audio) {
        if let Some(c) = w.current {
            w.max_layer = Some(w.max_layer.map_or(c, |m| m.min(c)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMULCAST: [u64; 3] = [150_000, 500_000, 1_500_000];

    fn video(id: u64, priority: Priority) -> Want {
        Want {
            id,
            audio: false,
            priority,
            layers: SIMULCAST.to_vec(),
            max_layer: None,
            paused_by_client: false,
            current: None,
            trial: false,
        }
    }

    fn audio(id: u64) -> Want {
        Want {
            id,
            audio: true,
            priority: Priority::Other,
            layers: vec![40_000],
            max_layer: None,
            paused_by_client: false,
            current: None,
            trial: false,
        }
    }

    fn grant(a: &Allocation, id: u64) -> Grant {
        a.grants.iter().find(|(i, _)| *i == id).unwrap().1
    }

    #[test]
    fn one_stream_gets_the_highest_layer_that_fits() {
        for (budget, layer) in [
            (2_000_000, Grant::Layer(2)),
            (600_000, Grant::Layer(1)),
            (220_000, Grant::Layer(0)),
            (150_000, Grant::Paused),
        ] {
            let a = allocate(budget, &[audio(1), video(2, Priority::Other)]);
            assert_eq!(grant(&a, 2), layer, "budget {budget}");
            assert_eq!(grant(&a, 1), Grant::Layer(0), "audio always flows");
            assert!(a.used_bps <= budget.max(40_000));
        }
    }

    #[test]
    fn audio_is_never_starved() {
        let a = allocate(10_000, &[audio(1), audio(2), video(3, Priority::Screen)]);
        assert_eq!(grant(&a, 1), Grant::Layer(0));
        assert_eq!(grant(&a, 2), Grant::Layer(0));
        assert_eq!(grant(&a, 3), Grant::Paused);
    }

    /// The estimate is made from video alone, so audio, however many tracks, takes none of it.
    #[test]
    fn audio_takes_none_of_the_budget() {
        let wants: Vec<Want> = (1..=6)
            .map(audio)
            .chain([video(7, Priority::Other)])
            .collect();
        let a = allocate(170_000, &wants);
        assert_eq!(grant(&a, 7), Grant::Layer(0));
        assert_eq!(a.used_bps, 150_000);
        assert_eq!(a.max_bps, 1_500_000);
    }

    #[test]
    fn priority_decides_who_gets_quality() {
        let wants = [
            video(1, Priority::Other),
            video(2, Priority::Screen),
            video(3, Priority::Speaker),
        ];
        // Room for all three base layers plus one full upgrade (with its margin).
        let a = allocate(3 * 150_000 + 1_500_000, &wants);
        assert_eq!(grant(&a, 2), Grant::Layer(2), "screen share first");
        assert_eq!(grant(&a, 3), Grant::Layer(0));
        assert_eq!(grant(&a, 1), Grant::Layer(0));
        // Too little for everyone's base layer: the lowest priority pauses.
        let a = allocate(330_000, &wants);
        assert_eq!(grant(&a, 1), Grant::Paused);
        assert_eq!(grant(&a, 2), Grant::Layer(0));
        assert_eq!(grant(&a, 3), Grant::Layer(0));
    }

    #[test]
    fn client_limits_are_respected() {
        let mut small = video(1, Priority::Other);
        small.max_layer = Some(0);
        let mut hidden = video(2, Priority::Other);
        hidden.paused_by_client = true;
        let a = allocate(10_000_000, &[small, hidden]);
        assert_eq!(grant(&a, 1), Grant::Layer(0));
        assert_eq!(grant(&a, 2), Grant::Paused);
        assert_eq!(a.used_bps, 150_000);
    }

    #[test]
    fn a_flowing_base_layer_survives_a_slightly_low_estimate() {
        let mut v = video(1, Priority::Other);
        v.current = Some(0);
        // 150k needed, 140k estimated: kept (within 85 %).
        assert_eq!(grant(&allocate(140_000, &[v.clone()]), 1), Grant::Layer(0));
        // 120k: paused.
        assert_eq!(grant(&allocate(120_000, &[v.clone()]), 1), Grant::Paused);
        // Not flowing yet: 140k is not enough to start it...
        v.current = None;
        assert_eq!(grant(&allocate(140_000, &[v.clone()]), 1), Grant::Paused);
        // ...unless it is a resume trial.
        v.trial = true;
        assert_eq!(grant(&allocate(100_000, &[v]), 1), Grant::Layer(0));
    }

    #[test]
    fn upgrades_need_a_margin_downgrades_do_not() {
        let mut v = video(1, Priority::Other);
        // Exactly the rate of layer 1: not enough to go up to it...
        v.current = Some(0);
        assert_eq!(grant(&allocate(500_000, &[v.clone()]), 1), Grant::Layer(0));
        // ...but enough to stay on it.
        v.current = Some(1);
        assert_eq!(grant(&allocate(500_000, &[v]), 1), Grant::Layer(1));
    }

    #[test]
    fn probing_targets_point_at_upgrades() {
        let a = allocate(
            800_000,
            &[video(1, Priority::Other), video(2, Priority::Other)],
        );
        assert_eq!(grant(&a, 1), Grant::Layer(1));
        assert_eq!(grant(&a, 2), Grant::Layer(0));
        // Subscription 1's next layer adds 1 Mbit/s, and its upgrade margin.
        assert_eq!(a.next_bps, a.used_bps + 1_100_000);
        assert_eq!(a.max_bps, 3_000_000);
        let a = allocate(5_000_000, &[video(1, Priority::Other)]);
        assert_eq!(a.next_bps, a.used_bps);
        assert_eq!(a.max_bps, a.used_bps);
    }

    #[test]
    fn an_upgrade_waits_for_padding_at_its_rate() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut s = Sustain::default();
        assert!(!s.allows(500_000, t0), "no padding asked for yet");

        s.set_target(500_000, ms(0));
        assert!(!s.allows(500_000, ms(999)));
        assert!(s.allows(500_000, ms(1_000)));
        assert!(s.allows(540_000, ms(1_000)), "within 10 %");
        assert!(!s.allows(600_000, ms(1_000)), "more than was padded");

        // A change within 10 % keeps the time; a larger one starts it again.
        s.set_target(530_000, ms(1_200));
        assert!(s.allows(500_000, ms(1_300)));
        s.set_target(900_000, ms(1_500));
        assert!(!s.allows(900_000, ms(2_400)));
        assert!(s.allows(900_000, ms(2_500)));

        // An estimate below the target: the padding did not reach it.
        s.observe_budget(850_000, ms(2_600));
        assert!(!s.allows(900_000, ms(3_500)));
        s.observe_budget(950_000, ms(3_500));
        assert!(s.allows(900_000, ms(3_600)));

        // No padding asked for (nothing to upgrade): nothing sustained.
        s.set_target(0, ms(4_000));
        assert!(!s.allows(100_000, ms(9_000)));
    }

    #[test]
    fn held_layers_upgrade_nothing_and_downgrade_as_before() {
        let mut a = video(1, Priority::Other);
        a.current = Some(0);
        let mut b = video(2, Priority::Other);
        b.current = Some(2);
        let c = video(3, Priority::Other);
        let mut wants = vec![a, b, c, audio(4)];
        let free = allocate(10_000_000, &wants);
        assert!(upgrades(&free, &wants));
        assert_eq!(grant(&free, 1), Grant::Layer(2));

        hold_layers(&mut wants);
        let held = allocate(10_000_000, &wants);
        assert!(!upgrades(&held, &wants));
        assert_eq!(grant(&held, 1), Grant::Layer(0));
        assert_eq!(grant(&held, 2), Grant::Layer(2));
        // A video not flowing yet still gets its layers: it has no current layer to hold.
        assert_eq!(grant(&held, 3), Grant::Layer(2));
        // Holding never stops a downgrade.
        let tight = allocate(1_000_000, &wants);
        assert_eq!(grant(&tight, 2), Grant::Layer(1));
    }
}
