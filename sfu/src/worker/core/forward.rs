//! Forwarding: a publisher's RTP packet to every subscription of its track, through each
//! subscription's layer selector and rewriter, and the keyframe requests that keep switches
//! and newcomers short.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use moien_protocol::TrackKind;
use str0m::media::KeyframeRequestKind;
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Vp8Descriptor};

use super::WorkerCore;
use crate::dependency_descriptor::{self, RawDd};
use crate::descriptor::parse_vp9;
use crate::keyframe::is_keyframe_start;
use crate::layer::Verdict;
use crate::rewrite::Vp8Fields;
use crate::room::{SubscriptionId, TrackId};
use crate::session::SessionId;
use str0m::Written;
use str0m::format::Codec;

/// PictureID (with its width) and TL0PICIDX of a parsed VP8 descriptor.
fn vp8_fields(desc: &Vp8Descriptor, payload: &[u8]) -> Vp8Fields {
    // The M bit of the first PictureID octet (third descriptor octet) says 15-bit.
    let wide = payload.get(2).is_some_and(|b| b & 0x80 != 0);
    Vp8Fields {
        picture_id: desc.picture_id().map(|p| (p, wide)),
        tl0_pic_idx: desc.tl0_pic_idx(),
    }
}

/// Asks the CPU to start loading the cache line at `addr`, without waiting for it.
#[inline(always)]
fn prefetch(addr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address, and reads nothing
    // the program sees.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// How many subscribers ahead the forwarding loop starts loading a session's lines: enough to
/// overlap a room's misses, few enough that a large audience's do not evict each other
/// (about 20 lines a session).
const PREFETCH_AHEAD: usize = 8;

/// A subscription still waiting for a keyframe after this long asks again, so a switch never
/// waits much more than a second.
pub(super) const KEYFRAME_RETRY: Duration = Duration::from_millis(500);

impl WorkerCore {
    pub(super) fn forward(&mut self, now: Instant, session_id: SessionId, pkt: RtpPacket) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let (tid, layer) = match session.ssrc_tracks.get(&ssrc) {
            Some(t) => *t,
            None => {
                let mut api = session.rtc.direct_api();
                let Some((mid, rid)) = api.stream_rx(&ssrc).map(|s| (s.mid(), s.rid())) else {
                    return;
                };
                let Some(&t) = session.recv_tracks.get(&mid) else {
                    return;
                };
                let Some(track) = self.tracks.get(&t) else {
                    return;
                };
                let Some(layer) = track
                    .layers
                    .iter()
                    .position(|l| l.rid == rid || track.layers.len() == 1)
                else {
                    return;
                };
                if session.ssrc_tracks.len() < 16 {
                    session.ssrc_tracks.insert(ssrc, (t, layer));
                }
                (t, layer)
            }
        };
        // Speaker detection reads the audio-level extension, never the audio.
        if let (Some(level), Some(t)) = (pkt.header.ext_vals.audio_level, self.tracks.get(&tid))
            && t.kind == TrackKind::Audio
        {
            let participant = t.participant;
            self.note_level(now, participant, level.unsigned_abs());
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let pt = pkt.header.payload_type;
        // A RED packet (RFC 2198) is found through the codec it wraps.
        let config = session.rtc.codec_config();
        let found = match config.find(|p| p.pt() == pt) {
            Some(p) => Some((*p, false)),
            None => config.find(|p| p.red() == Some(pt)).map(|p| (*p, true)),
        };
        let Some((params, red)) = found else {
            self.stats.unknown_pt += 1;
            return;
        };
        // Only for subscribers without RED: the primary block, computed once.
        let mut primary: Option<Option<std::sync::Arc<[u8]>>> = None;
        let Some(track) = self.tracks.get_mut(&tid) else {
            return;
        };
        self.stats.packets_in += 1;
        let codec = params.spec().codec;
        if track.codec != Some(codec) {
            track.codec = Some(codec);
        }
        let video = track.kind == TrackKind::Video;
        // The Dependency Descriptor, when the publisher sends it: layers and keyframes from the
        // RTP header, never from the (possibly encrypted) payload.
        let dd = video
            .then(|| pkt.header.ext_vals.user_values.get::<RawDd>())
            .flatten()
            .and_then(|raw| {
                let l = track.layers.get_mut(layer)?;
                match dependency_descriptor::parse(&raw.0, l.dd.as_ref()) {
                    Ok(frame) => {
                        if let Some(s) = &frame.structure {
                            l.dd = Some(s.clone());
                        }
                        Some((frame, l.dd.clone()?))
                    }
                    Err(_) => {
                        self.stats.dd_unreadable += 1;
                        None
                    }
                }
            });
        // With a descriptor, the payload is not looked at: it may be encrypted, and random
        // bytes can look like a keyframe header.
        let keyframe = video
            && match &dd {
                Some((f, _)) => f.independent && f.start_of_frame && f.spatial == 0,
                None => is_keyframe_start(codec, &pkt.payload),
            };
        // Layer indices (VP9 payload descriptor; for AV1 the Dependency Descriptor) make a
        // single-stream track SVC: from then on each subscription filters layers instead of
        // picking a stream.
        let svc_desc = match (codec, &dd) {
            (Codec::Av1, Some((frame, structure))) if track.layers.len() == 1 => {
                Some(frame.svc(structure))
            }
            (Codec::Vp9, _) => parse_vp9(&pkt.payload),
            _ => None,
        };
        if svc_desc.is_some_and(|d| d.has_layers) && !track.svc {
            track.svc = true;
            for sub_id in &track.subscriptions {
                if let Some(sub) = self.subs.get_mut(sub_id) {
                    sub.svc = Some(Default::default());
                    sub.apply_svc_target();
                }
            }
        }
        // VP8 simulcast: the descriptor's picture numbering is rewritten per subscriber.
        let vp8 = (codec == Codec::Vp8 && !red && track.layers.len() > 1)
            .then(|| Vp8Descriptor::parse(&pkt.payload).ok())
            .flatten()
            .map(|d| (d, vp8_fields(&d, &pkt.payload)));
        let svc = track.svc;
        let Some(l) = track.layers.get_mut(layer) else {
            return;
        };
        l.meter.add(
            now,
            pkt.payload.len() + pkt.header.header_len + crate::bitrate::PACKET_OVERHEAD,
        );
        l.last_packet = Some(now);
        if keyframe {
            l.keyframes.keyframe_seen();
        }
        if track.muted {
            return;
        }
        let clock = u64::from(params.spec().clock_rate.get());
        let seq: u64 = *pkt.seq_no;
        let mut ext = forwarded_extensions(&pkt.header.ext_vals);
        if codec == Codec::Av1
            && svc
            && let Some(raw) = pkt.header.ext_vals.user_values.get::<RawDd>()
        {
            ext.user_values.set(raw.clone());
        }
        let mut targets = std::mem::take(&mut self.scratch);
        targets.clear();
        targets.extend_from_slice(&track.subscriptions);
        // Every subscriber's session is cold by now: start loading what each write reads for
        // the next PREFETCH_AHEAD subscribers at once, so the misses overlap instead of
        // queueing one after another, and one subscriber ahead what those lines point to.
        for sub_id in targets.iter().take(PREFETCH_AHEAD) {
            if let Some(rtc) = self.subscriber_rtc(sub_id) {
                rtc.write_footprint(prefetch);
            }
        }
        for (i, &sub_id) in targets.iter().enumerate() {
            if let Some(rtc) = targets
                .get(i + PREFETCH_AHEAD)
                .and_then(|s| self.subscriber_rtc(s))
            {
                rtc.write_footprint(prefetch);
            }
            if let Some(rtc) = targets.get(i + 1).and_then(|s| self.subscriber_rtc(s)) {
                rtc.write_footprint_deep(prefetch);
            }
            let Some(sub) = self.subs.get_mut(&sub_id) else {
                continue;
            };
            let (Some(mid), true) = (sub.mid, sub.negotiated) else {
                continue;
            };
            let Some(out) = self.sessions.get_mut(&sub.session) else {
                continue;
            };
            if !out.connected {
                continue;
            }
            let mut marker = pkt.header.marker;
            if video {
                let verdict = match (svc, sub.svc.as_mut(), svc_desc) {
                    (true, Some(sel), Some(d)) => {
                        let v = sel.on_packet(d.layers);
                        // Dropping upper spatial layers: the end of the highest one forwarded
                        // ends the picture for this subscriber.
                        if d.end_of_layer_frame
                            && sel.current().is_some_and(|(s, _)| s == d.layers.spatial)
                        {
                            marker = true;
                        }
                        if v == Verdict::Drop {
                            sub.rewriter.skip(seq);
                        }
                        v
                    }
                    (true, _, _) => Verdict::Drop,
                    (false, _, _) => sub.selector.on_packet(layer, keyframe),
                };
                match verdict {
                    Verdict::Drop => continue,
                    Verdict::Forward { switched } => {
                        if switched {
                            sub.keyframe_wait_since = None;
                            let gap = sub
                                .last_forward
                                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                            let ticks = (gap.as_micros() as u64 * clock / 1_000_000) as u32;
                            sub.rewriter.switch_source(ticks);
                            sub.vp8.switch_source();
                            self.stats.layer_switches += 1;
                        }
                    }
                }
            }
            let Some((out_pt, unwrap_red)) = sub.map_pt(pt, &params, red, out.rtc.codec_config())
            else {
                continue;
            };
            let payload = if unwrap_red {
                let p = primary.get_or_insert_with(|| red_primary(&pkt.payload));
                match p {
                    Some(p) => p.clone(),
                    None => continue,
                }
            } else {
                pkt.payload.clone()
            };
            let Some((out_seq, out_ts)) = sub.rewriter.rewrite(seq, pkt.header.timestamp) else {
                continue;
            };
            sub.last_forward = Some(now);

            if video && sub.last_layer != Some(layer) {
                tracing::debug!(sub = sub_id, from = ?sub.last_layer, to = layer, "layer switch");
                sub.last_layer = Some(layer);
            }
            let rtc = &mut out.rtc;
            let mut write = RtpWrite::new(out_pt, out_seq.into(), out_ts, pkt.timestamp, payload)
                .marker(marker)
                .nackable(video)
                .ext_vals(ext.clone());
            if let Some((desc, fields)) = &vp8 {
                let newest = sub.rewriter.highest_out_seq() == Some(out_seq);
                let out = sub.vp8.rewrite(*fields, newest);
                if out != *fields {
                    let mut patch = desc.patch();
                    if let Some((pid, _)) = out.picture_id {
                        patch = patch.picture_id(pid);
                    }
                    if let Some(tl0) = out.tl0_pic_idx {
                        patch = patch.tl0_pic_idx(tl0);
                    }
                    if let Ok(patch) = patch.build() {
                        write = write.vp8_patch(patch);
                    }
                }
            }
            // Sent now, not after a timeout pass: straight to SRTP when the pacer would
            // release it at once (audio always, video within the pacer's burst), otherwise
            // drained through the media path only (`Rtc::write_rtp`, str0m patches 9 and 14).
            let r = catch_unwind(AssertUnwindSafe(|| rtc.write_rtp(mid, write, now)));
            let Ok(written) = r else {
                out.failed = true;
                self.failed_pending = true;
                continue;
            };
            match written {
                Written::NoStream => continue,
                Written::Sent(t) => {
                    self.stats.packets_out += 1;
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += t.contents.len() as u64;
                    self.transmits.push(t);
                }
                Written::Queued => {
                    self.stats.packets_out += 1;
                    let out_id = sub.session;
                    self.drain(out_id, now);
                }
            }
        }
        self.scratch = targets;
    }

    /// The session a subscription writes to.
    fn subscriber_rtc(&self, sub_id: &SubscriptionId) -> Option<&str0m::Rtc> {
        let sub = self.subs.get(sub_id)?;
        Some(&self.sessions.get(&sub.session)?.rtc)
    }

    /// A subscription needs a keyframe of the layer it waits for (or receives).
    pub(super) fn request_keyframe_for_sub(&mut self, now: Instant, sub_id: SubscriptionId) {
        let Some(sub) = self.subs.get_mut(&sub_id) else {
            return;
        };
        let Some(layer) = sub.selector.target().or(sub.selector.current()) else {
            return;
        };
        if sub.needs_keyframe() {
            sub.keyframe_wait_since.get_or_insert(now);
        }
        let tid = sub.track;
        self.request_keyframe(now, tid, layer);
    }

    /// Asks the publisher for a keyframe of one layer, through that layer's throttle.
    pub(super) fn request_keyframe(&mut self, now: Instant, tid: TrackId, layer: usize) {
        let Some(track) = self.tracks.get_mut(&tid) else {
            return;
        };
        if track.kind != TrackKind::Video {
            return;
        }
        let Some(l) = track.layers.get_mut(layer) else {
            return;
        };
        if l.keyframes.request(now) {
            let (session_id, mid, rid) = (track.session, track.mid, l.rid);
            self.send_pli(now, session_id, mid, rid);
        }
    }

    pub(super) fn send_pli(
        &mut self,
        now: Instant,
        session_id: SessionId,
        mid: str0m::media::Mid,
        rid: Option<str0m::media::Rid>,
    ) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let mut api = session.rtc.direct_api();
        if let Some(rx) = api.stream_rx_by_mid(mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            self.stats.plis_out += 1;
        }
        self.drain(session_id, now);
    }

    /// Throttled requests whose interval passed, and subscriptions waiting too long.
    pub(super) fn keyframe_housekeeping(&mut self, now: Instant) {
        let mut due = Vec::new();
        for t in self.tracks.values_mut() {
            for l in &mut t.layers {
                if l.keyframes.poll(now) {
                    due.push((t.session, t.mid, l.rid));
                }
            }
        }
        for (sid, mid, rid) in due {
            self.send_pli(now, sid, mid, rid);
        }
        let retry: Vec<SubscriptionId> = self
            .subs
            .iter()
            .filter(|(_, s)| {
                s.needs_keyframe()
                    && s.keyframe_wait_since
                        .is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_RETRY)
            })
            .map(|(id, _)| *id)
            .collect();
        for sub_id in retry {
            if let Some(s) = self.subs.get_mut(&sub_id) {
                s.keyframe_wait_since = Some(now);
            }
            self.request_keyframe_for_sub(now, sub_id);
        }
    }
}

/// The primary block of a RED payload. The RED headers are outside any end-to-end encrypted
/// frame, so this reads no protected bytes.
fn red_primary(payload: &[u8]) -> Option<std::sync::Arc<[u8]>> {
    let blocks = str0m::rtp::RedDecoder::decode(payload).ok()?;
    let primary = blocks.into_iter().find(|b| b.is_primary)?;
    Some(primary.payload.into())
}

/// The header extensions a subscriber may use; transport ones (TWCC, mid, rid, abs-send-time)
/// are the subscriber session's own and str0m writes them.
fn forwarded_extensions(e: &ExtensionValues) -> ExtensionValues {
    ExtensionValues {
        audio_level: e.audio_level,
        voice_activity: e.voice_activity,
        video_orientation: e.video_orientation,
        video_content_type: e.video_content_type,
        ..Default::default()
    }
}
