//! Keyframe detection and keyframe-request throttling, payload-agnostic.
//!
//! Calls are end-to-end encrypted, so only the bytes the E2EE convention leaves clear may be
//! read: the codec payload descriptor and, for VP8, the first bytes of the frame header
//! (10 on keyframes). The detectors below never look further than that.

use std::time::{Duration, Instant};

use str0m::format::Codec;

/// H.264 NAL unit type of a sequence parameter set.
const H264_SPS: u8 = 7;

/// How many leading payload bytes the E2EE convention leaves in clear on a VP8 keyframe.
pub const VP8_CLEAR_BYTES: usize = 10;

/// Whether `payload` is the first packet of a keyframe of `codec`.
pub fn is_keyframe_start(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => {
            // Descriptor (up to 6 bytes) plus the 3-byte frame tag fit in the clear prefix of
            // descriptor + 10 bytes.
            let n = payload.len().min(6 + VP8_CLEAR_BYTES);
            str0m::format::detect_vp8_keyframe(&payload[..n])
        }
        Codec::Vp9 => str0m::format::detect_vp9_keyframe(payload),
        // The parameter sets (SPS, then PPS) travel just before the IDR picture and a switch
        // must start with them: the layers share parameter-set ids, so a decoder that keeps the
        // old layer's SPS decodes the new one at the wrong size. NAL headers stay in clear.
        Codec::H264 => str0m::format::detect_h264_nalu(payload, H264_SPS),
        Codec::H265 => str0m::format::detect_h265_keyframe(payload),
        Codec::Av1 => str0m::format::detect_av1_keyframe(payload),
        _ => false,
    }
}

/// At most one keyframe request per publisher track per `interval`; requests made while
/// throttled are coalesced into one sent when the interval has passed.
#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeThrottle {
    pub fn new(interval: Duration) -> Self {
        KeyframeThrottle {
            interval,
            last_sent: None,
            pending: false,
        }
    }

    /// A subscriber needs a keyframe. Returns true when the request must go out now.
    pub fn request(&mut self, now: Instant) -> bool {
        if self.may_send(now) {
            self.last_sent = Some(now);
            self.pending = false;
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// Called periodically. Returns true when a coalesced request must go out now.
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.pending && self.may_send(now) {
            self.last_sent = Some(now);
            self.pending = false;
            true
        } else {
            false
        }
    }

    /// The publisher produced a keyframe: a request still pending is answered.
    pub fn keyframe_seen(&mut self) {
        self.pending = false;
    }

    fn may_send(&self, now: Instant) -> bool {
        self.last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_from_descriptor_and_tag_only() {
        // S=1 PID=0, no extension; frame tag with P=0 (keyframe).
        let mut key = vec![0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a];
        // Bytes past the clear prefix are random (encrypted): irrelevant.
        key.extend((0..200).map(|i| (i * 37 % 251) as u8));
        assert!(is_keyframe_start(Codec::Vp8, &key));
        let mut delta = key.clone();
        delta[1] = 0x01; // P=1
        assert!(!is_keyframe_start(Codec::Vp8, &delta));
        let mut cont = key.clone();
        cont[0] = 0x00; // S=0: not the first packet
        assert!(!is_keyframe_start(Codec::Vp8, &cont));
        assert!(!is_keyframe_start(Codec::Vp8, &[]));
        assert!(!is_keyframe_start(Codec::Opus, &key));
    }

    #[test]
    fn h264_keyframes_start_at_the_parameter_sets() {
        // STAP-A (24) carrying SPS (0x67) and PPS (0x68): the start of a keyframe.
        let stap = [24u8, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        assert!(is_keyframe_start(Codec::H264, &stap));
        // The IDR slice itself (single NAL, type 5) comes after: not where a switch starts.
        assert!(!is_keyframe_start(Codec::H264, &[0x65, 0x88, 0x84]));
        assert!(!is_keyframe_start(Codec::H264, &[0x41, 0x9a]));
        assert!(!is_keyframe_start(Codec::H264, &[]));
    }

    #[test]
    fn throttle_sends_once_per_interval_and_coalesces() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(Duration::from_millis(300));
        assert!(k.request(t0));
        assert!(!k.request(t0 + Duration::from_millis(10)));
        assert!(!k.request(t0 + Duration::from_millis(20)));
        assert!(!k.poll(t0 + Duration::from_millis(299)));
        assert!(k.poll(t0 + Duration::from_millis(300)));
        // The coalesced request went out; nothing more is pending.
        assert!(!k.poll(t0 + Duration::from_millis(900)));
        assert!(k.request(t0 + Duration::from_millis(900)));
    }

    #[test]
    fn keyframe_answers_pending_request() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(Duration::from_millis(300));
        assert!(k.request(t0));
        assert!(!k.request(t0 + Duration::from_millis(50)));
        k.keyframe_seen();
        assert!(!k.poll(t0 + Duration::from_millis(400)));
    }
}
