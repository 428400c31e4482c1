//! Bandwidth allocation and dynacast inside a worker: turns each subscriber's bandwidth estimate
//! into layer targets for its subscriptions (through the pure `allocator`), tells clients about
//! paused subscriptions, steers the estimator's probing, and tells publishers which layers
//! anybody still needs.

use std::time::{Duration, Instant};

use moien_protocol::{PauseReason, PublishLayer, ServerMessage, TrackKind, TrackSource};
use str0m::bwe::Bitrate;

use super::WorkerCore;
use crate::allocator::{Grant, Priority, Want, allocate, hold_layers, upgrades};
use crate::room::{SubscriptionId, TrackId, TrackLayer};
use crate::session::{SessionId, SessionRole};

/// Allocation reruns at least this often (layer rates change, streams pause).
pub(super) const ALLOCATION_INTERVAL: Duration = Duration::from_millis(500);
/// A layer nobody needs is switched off at the publisher only after this long, so a brief
/// dip does not cost a keyframe round trip.
const DYNACAST_OFF_DELAY: Duration = Duration::from_secs(2);
/// After an upgrade, estimate dips are ignored this long (the new layer's keyframe burst).
const UPGRADE_HOLD: Duration = Duration::from_secs(2);
/// First wait before a bandwidth-paused video tries its base layer again, and the longest.
pub(crate) const RESUME_BACKOFF_MIN: Duration = Duration::from_secs(4);
const RESUME_BACKOFF_MAX: Duration = Duration::from_secs(32);
/// How long after connecting a session's estimate counts as a guess.
const PROVISIONAL_BWE: Duration = Duration::from_secs(2);
/// What an audio track costs when it has not been measured yet.
const AUDIO_BPS: u64 = 50_000;
/// What simulcast layers cost before they are measured (typical 180p/360p/720p).
const NOMINAL_LAYER_BPS: [u64; 3] = [150_000, 500_000, 1_500_000];
/// A single-layer video track before it is measured.
const NOMINAL_VIDEO_BPS: u64 = 800_000;
/// A layer's measured rate is trusted after it has flowed this long (the meter's window).
const RELIABLE_AFTER: Duration = Duration::from_millis(1_100);
/// A layer whose last packet is older than this is stopping: its meter is no longer trusted.
const FRESH_PACKET: Duration = Duration::from_millis(200);
/// A layer silent for this long is not flowing (the publisher dropped it).
const LAYER_IDLE: Duration = Duration::from_millis(1_500);

impl WorkerCore {
    /// A new bandwidth estimate for a sending session.
    pub(super) fn on_estimate(&mut self, now: Instant, session_id: SessionId, bps: u64) {
        let Some(s) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let old = s.bwe_bps;
        s.bwe_bps = bps;
        // React at once to a drop; let increases wait for the periodic pass.
        if bps < old.saturating_mul(9) / 10 {
            self.allocate_session(now, session_id);
        }
    }

    /// Re-runs allocation for every sending session and updates dynacast.
    pub(super) fn allocation_housekeeping(&mut self, now: Instant) {
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.role.sends())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.allocate_session(now, id);
        }
        self.dynacast(now);
    }

    pub(super) fn allocate_session(&mut self, now: Instant, session_id: SessionId) {
        let Some(session) = self.sessions.get(&session_id) else {
            return;
        };
        if !session.role.sends() {
            return;
        }
        // Until the estimator has measured anything, its figure is a guess: start everybody on
        // their lowest layer rather than pausing on a guess.
        let provisional = session
            .connected_at
            .is_none_or(|t| now.saturating_duration_since(t) < PROVISIONAL_BWE);
        let mut budget = session.bwe_bps;
        let mut wants: Vec<Want> = Vec::with_capacity(session.send_subs.len());
        for &sub_id in session.send_subs.values() {
            let Some(sub) = self.subs.get(&sub_id) else {
                continue;
            };
            let Some(track) = self.tracks.get(&sub.track) else {
                continue;
            };
            let audio = track.kind == TrackKind::Audio;
            let simulcast = track.layers.len() > 1;
            let layers = track
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| layer_cost(l, i, audio, simulcast))
                .collect();
            let priority = if track.source == TrackSource::Screen {
                Priority::Screen
            } else if self
                .participants
                .get(&track.participant)
                .and_then(|p| self.top_speaker(&p.room))
                == Some(track.participant)
            {
                Priority::Speaker
            } else if sub.pinned {
                Priority::Pinned
            } else {
                Priority::Other
            };
            let trial = sub
                .bandwidth_paused_since
                .is_some_and(|t| now.saturating_duration_since(t) >= sub.resume_backoff);
            wants.push(Want {
                id: sub_id,
                audio,
                priority,
                layers,
                max_layer: sub.max_layer,
                paused_by_client: sub.client_paused,
                current: sub.selector.target(),
                trial,
            });
        }
        // An upgrade starts with a keyframe, whose burst briefly lowers the estimate: hold the
        // allocation through that dip unless the link really collapsed.
        if session.upgrade_hold_until.is_some_and(|t| now < t)
            && budget >= session.last_used_bps / 2
        {
            budget = budget.max(session.last_used_bps);
        }
        if provisional {
            // Base layers only, whatever the guess says: a start too high floods a slow link,
            // and the estimator then takes many seconds to recover.
            let base: u64 = wants.iter().filter_map(|w| w.layers.first()).sum();
            budget = budget.max(base + base / 5);
            for w in wants.iter_mut() {
                w.max_layer = Some(0);
            }
        }
        let mut result = allocate(budget, &wants);
        if let Some(s) = self.sessions.get_mut(&session_id) {
            s.sustain.observe_budget(budget, now);
        }
        let Some(session) = self.sessions.get(&session_id) else {
            return;
        };
        // An upgrade waits until padding has carried its rate (`allocator::Sustain`); meanwhile
        // the layers hold and the padding target is the upgrade's rate.
        if !provisional
            && upgrades(&result, &wants)
            && !session.sustain.allows(result.used_bps, now)
        {
            let needs = result.used_bps;
            hold_layers(&mut wants);
            result = allocate(budget, &wants);
            result.next_bps = result.next_bps.max(needs);
        }
        tracing::debug!(
            session = session_id,
            budget,
            provisional,
            ?result,
            "allocation"
        );
        let mut keyframes = Vec::new();
        let mut notices = Vec::new();
        let mut upgraded = false;
        for (sub_id, grant) in result.grants {
            let Some(sub) = self.subs.get_mut(&sub_id) else {
                continue;
            };
            let Some(track) = self.tracks.get(&sub.track) else {
                continue;
            };
            if track.kind == TrackKind::Audio {
                continue;
            }
            let target = match grant {
                Grant::Layer(l) => Some(l),
                Grant::Paused => None,
            };
            if sub.selector.target() != target {
                upgraded |= match (sub.selector.target(), target) {
                    (None, Some(_)) => true,
                    (Some(a), Some(b)) => b > a,
                    _ => false,
                };
                sub.selector.set_target(target);
                sub.apply_svc_target();
                if sub.needs_keyframe() {
                    sub.keyframe_wait_since = Some(now);
                    keyframes.push(sub_id);
                }
            }
            let paused = target.is_none();
            // Resume trials back off while the link keeps failing them.
            match (paused && !sub.client_paused, sub.bandwidth_paused_since) {
                (true, None) => {
                    sub.bandwidth_paused_since = Some(now);
                    if sub
                        .trial_started
                        .is_some_and(|t| now.saturating_duration_since(t) < RESUME_BACKOFF_MAX)
                    {
                        sub.resume_backoff = (sub.resume_backoff * 2).min(RESUME_BACKOFF_MAX);
                    }
                }
                (false, Some(_)) => {
                    sub.bandwidth_paused_since = None;
                    sub.trial_started = Some(now);
                }
                _ => {}
            }
            if sub.told_paused != Some(paused) && (paused || sub.told_paused.is_some()) {
                sub.told_paused = Some(paused);
                let reason = if sub.client_paused {
                    PauseReason::Client
                } else {
                    PauseReason::Bandwidth
                };
                let participant_sid = self
                    .participants
                    .get(&track.participant)
                    .map(|p| p.sid.clone())
                    .unwrap_or_default();
                notices.push((
                    sub.subscriber,
                    ServerMessage::SubscriptionState {
                        participant_sid,
                        track_sid: track.sid.clone(),
                        paused,
                        layer: target.map(|l| l as u8),
                        reason,
                    },
                ));
            } else if sub.told_paused.is_none() {
                sub.told_paused = Some(paused);
            }
        }
        for sub_id in keyframes {
            self.request_keyframe_for_sub(now, sub_id);
        }
        for (pid, msg) in notices {
            self.send_to(pid, msg);
        }
        // Sustain traffic toward the next upgrade and probe toward everything at its best, with
        // room for the upgrade margin (str0m: `minimum` = next layer, `desired` = preferred).
        // With no upgrade left there is nothing to sustain: the media is the traffic, and
        // padding up to its average rate filled every quiet frame with packets nobody needs
        // (2.6 % of a video conference's sends). str0m then keeps its own small target for NAT
        // bindings.
        if let Some(s) = self.sessions.get_mut(&session_id) {
            s.last_allocation = Some(now);
            s.last_used_bps = result.used_bps;
            if upgraded {
                s.upgrade_hold_until = Some(now + UPGRADE_HOLD);
            }
            let starved = result.next_bps > result.used_bps;
            let next = if starved { result.next_bps } else { 0 };
            let desired = (result.max_bps + result.max_bps / 4).max(next).max(1);
            // Re-arm only on a real change: every raise may start a probe. A subscriber held
            // below what it wants finds a recovered link through str0m's own probes toward
            // unmet demand (patch 16). Raising `desired` every 2 s to force a probe as well
            // overfilled lossy links: a 600 kbit/s viewer at 2 % loss spent 7 s of 25 on its
            // middle layer with it, 17 s without (docs/PERFORMANCE.md, "Twenty-second pass").
            let changed = s
                .bwe_target
                .is_none_or(|(n, d)| n.abs_diff(next) > n / 10 || d.abs_diff(desired) > d / 10);
            if changed {
                s.sustain.set_target(next, now);
                s.bwe_target = Some((next, desired));
                s.rtc
                    .bwe()
                    .set_bitrate(Bitrate::bps(next), Bitrate::bps(desired));
                self.drain(session_id, now);
            }
        }
    }

    /// Tells publishers which layers anybody needs: off after a delay, on at once.
    pub(super) fn dynacast(&mut self, now: Instant) {
        let mut changed: Vec<TrackId> = Vec::new();
        for (tid, track) in self.tracks.iter_mut() {
            if track.kind != TrackKind::Video {
                continue;
            }
            let mut needed = vec![false; track.layers.len()];
            // The lowest layer stays on while anybody subscribes: resuming a paused subscriber
            // needs it at once, and its rate is what the allocator must know.
            if !track.subscriptions.is_empty()
                && let Some(n) = needed.first_mut()
            {
                *n = true;
            }
            for sub_id in &track.subscriptions {
                if let Some(sub) = self.subs.get(sub_id) {
                    for l in [sub.selector.target(), sub.selector.current()]
                        .into_iter()
                        .flatten()
                    {
                        if let Some(n) = needed.get_mut(l) {
                            *n = true;
                        }
                    }
                }
            }
            let mut any = false;
            for (layer, need) in track.layers.iter_mut().zip(needed) {
                if need {
                    layer.unneeded_since = None;
                    if !layer.active {
                        layer.active = true;
                        any = true;
                    }
                } else {
                    let since = *layer.unneeded_since.get_or_insert(now);
                    if layer.active && now.saturating_duration_since(since) >= DYNACAST_OFF_DELAY {
                        layer.active = false;
                        any = true;
                    }
                }
            }
            if any {
                changed.push(*tid);
            }
        }
        for tid in changed {
            let Some(track) = self.tracks.get(&tid) else {
                continue;
            };
            let msg = ServerMessage::PublishLayers {
                track_sid: track.sid.clone(),
                layers: track
                    .layers
                    .iter()
                    .map(|l| PublishLayer {
                        rid: l.rid.map(|r| r.to_string()).unwrap_or_default(),
                        active: l.active,
                    })
                    .collect(),
            };
            let publisher = track.participant;
            self.stats.dynacast_updates += 1;
            self.send_to(publisher, msg);
        }
    }

    /// The client's wishes for one of its subscriptions.
    pub(super) fn update_subscription(
        &mut self,
        now: Instant,
        sub_id: SubscriptionId,
        prefs: crate::api::SubscriptionPrefs,
    ) {
        let Some(sub) = self.subs.get_mut(&sub_id) else {
            return;
        };
        if let Some(p) = prefs.paused {
            sub.client_paused = p;
        }
        if let Some(m) = prefs.max_layer {
            sub.max_layer = Some(usize::from(m));
        }
        if let Some(t) = prefs.max_temporal {
            sub.max_temporal = Some(t);
        }
        sub.apply_svc_target();
        if let Some(p) = prefs.pinned {
            sub.pinned = p;
        }
        let session = sub.session;
        if self
            .sessions
            .get(&session)
            .is_some_and(|s| s.role == SessionRole::Subscriber || s.role == SessionRole::Whep)
        {
            self.allocate_session(now, session);
        }
    }
}

/// What one layer costs: measured while it flows, else what it cost last, else a typical rate.
fn layer_cost(l: &TrackLayer, index: usize, audio: bool, simulcast: bool) -> u64 {
    if l.meter_bps > 0 {
        return l.meter_bps;
    }
    if l.last_bps > 0 {
        return l.last_bps;
    }
    if audio {
        AUDIO_BPS
    } else if simulcast {
        NOMINAL_LAYER_BPS
            .get(index)
            .copied()
            .unwrap_or(NOMINAL_LAYER_BPS[2])
    } else {
        NOMINAL_VIDEO_BPS
    }
}

/// Refreshes the measured rate of every layer (the meter needs `&mut` and the time). A
/// reading counts only once the layer has flowed for a whole window: a layer that just started
/// or stopped would read far below its real cost.
pub(super) fn refresh_layer_rates(layers: &mut [TrackLayer], now: Instant) {
    for l in layers {
        let bps = l.meter.bps(now);
        let idle = l
            .last_packet
            .is_none_or(|t| now.saturating_duration_since(t) > LAYER_IDLE);
        if idle {
            l.flowing_since = None;
            l.meter_bps = 0;
            continue;
        }
        let since = *l.flowing_since.get_or_insert(now);
        // Trusted: a whole window of flow, and the flow still going (a stopping layer's meter
        // decays for a second; that tail is not what the layer costs).
        let fresh = l
            .last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < FRESH_PACKET);
        if now.saturating_duration_since(since) >= RELIABLE_AFTER && fresh {
            l.meter_bps = bps;
            l.last_bps = bps;
        } else {
            l.meter_bps = 0;
        }
    }
}
