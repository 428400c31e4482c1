//! Bandwidth allocation and dynacast inside a worker: turns each subscriber's bandwidth estimate
//! into layer targets for its subscriptions (through the pure `allocator`), tells clients about
//! paused subscriptions, steers the estimator's probing, and tells publishers which layers
//! anybody still needs.

use std::time::{Duration, Instant};

use moien_protocol::{PauseReason, PublishLayer, ServerMessage, TrackKind, TrackSource};
use str0m::bwe::Bitrate;

use super::WorkerCore;
use crate::allocator::{Grant, Priority, Want, allocate};
use crate::room::{SubscriptionId, TrackId, TrackLayer};
use crate::session::{SessionId, SessionRole};

/// Allocation reruns at least this often (layer rates change, streams pause).
pub(super) const ALLOCATION_INTERVAL: Duration = Duration::from_millis(500);
/// A layer nobody needs is switched off at the publisher only after this long, so a brief
/// dip does not cost a keyframe round trip.
const DYNACAST_OFF_DELAY: Duration = Duration::from_secs(2);
/// How long after connecting a session's estimate counts as a guess.
const PROVISIONAL_BWE: Duration = Duration::from_secs(3);
/// What an audio track costs when it has not been measured yet.
const AUDIO_BPS: u64 = 50_000;
/// What simulcast layers cost before they are measured (typical 180p/360p/720p).
const NOMINAL_LAYER_BPS: [u64; 3] = [150_000, 500_000, 1_500_000];
/// A single-layer video track before it is measured.
const NOMINAL_VIDEO_BPS: u64 = 800_000;
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
        let mut wants = Vec::with_capacity(session.send_subs.len());
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
            } else if self.speakers.first() == Some(&track.participant) {
                Priority::Speaker
            } else if sub.pinned {
                Priority::Pinned
            } else {
                Priority::Other
            };
            wants.push(Want {
                id: sub_id,
                audio,
                priority,
                layers,
                max_layer: sub.max_layer,
                paused_by_client: sub.client_paused,
                current: sub.selector.target(),
            });
        }
        if provisional {
            let base: u64 = wants.iter().filter_map(|w| w.layers.first()).sum();
            budget = budget.max(base + base / 5);
        }
        let result = allocate(budget, &wants);
        let mut keyframes = Vec::new();
        let mut notices = Vec::new();
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
                sub.selector.set_target(target);
                if sub.selector.needs_keyframe() {
                    sub.keyframe_wait_since = Some(now);
                    keyframes.push(sub_id);
                }
            }
            let paused = target.is_none();
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
        // Keep traffic up to what is used and probe toward the next upgrade.
        if let Some(s) = self.sessions.get_mut(&session_id) {
            s.last_allocation = Some(now);
            let min = Bitrate::bps(result.used_bps.max(1));
            let desired = Bitrate::bps(result.desired_bps.max(result.used_bps).max(1));
            if s.bwe_target != Some((result.used_bps, result.desired_bps)) {
                s.bwe_target = Some((result.used_bps, result.desired_bps));
                s.rtc.bwe().set_bitrate(min, desired);
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
        paused: Option<bool>,
        max_layer: Option<u8>,
        pinned: Option<bool>,
    ) {
        let Some(sub) = self.subs.get_mut(&sub_id) else {
            return;
        };
        if let Some(p) = paused {
            sub.client_paused = p;
        }
        if let Some(m) = max_layer {
            sub.max_layer = Some(usize::from(m));
        }
        if let Some(p) = pinned {
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
    let flowing = l.last_packet.is_some();
    let measured = if flowing { l.meter_bps } else { 0 };
    if measured > 0 {
        return measured;
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

/// Refreshes the measured rate of every layer (the meter needs `&mut` and the time).
pub(super) fn refresh_layer_rates(layers: &mut [TrackLayer], now: Instant) {
    for l in layers {
        let bps = l.meter.bps(now);
        let idle = l
            .last_packet
            .is_none_or(|t| now.saturating_duration_since(t) > LAYER_IDLE);
        l.meter_bps = if idle { 0 } else { bps };
        if bps > 0 {
            l.last_bps = bps;
        }
    }
}
