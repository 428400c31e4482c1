//! What a simulated participant sends and how a receiver checks it: a synthetic VP8 stream whose
//! packets carry a valid RFC 7741 payload descriptor, a real VP8 frame tag (and keyframe start
//! code) and a self-describing body a receiver can regenerate byte for byte; and real Opus audio
//! of a sine tone, which a receiver decodes.

use std::f32::consts::PI;

use opus::{Application, Channels, Decoder, Encoder};

/// Opus at 48 kHz, 20 ms frames.
pub const OPUS_RATE: u32 = 48_000;
pub const OPUS_FRAME: usize = 960;
/// VP8's RTP clock.
pub const VIDEO_CLOCK: u32 = 90_000;
const BODY_MAGIC: [u8; 4] = *b"MOIN";
/// Body header: magic, seed, frame number, packet index, packet count, send time, layer,
/// keyframe flag (so a receiver knows a frame is a keyframe from any of its packets), temporal
/// layer id.
const BODY_HEADER: usize = 4 + 4 + 4 + 2 + 2 + 8 + 1 + 1 + 1;

/// Shape of the synthetic video stream.
#[derive(Debug, Clone, Copy)]
pub struct VideoShape {
    pub fps: u32,
    /// Packets of a delta frame and of a keyframe.
    pub delta_packets: u16,
    pub key_packets: u16,
    /// Payload bytes per packet.
    pub packet_size: usize,
}

impl Default for VideoShape {
    fn default() -> Self {
        // About 640x360 at 30 fps: ~450 kbit/s, keyframes of ~9 KB.
        VideoShape {
            fps: 30,
            delta_packets: 2,
            key_packets: 8,
            packet_size: 1_100,
        }
    }
}

/// One RTP payload of the synthetic stream.
#[derive(Debug, Clone)]
pub struct VideoPacket {
    pub payload: Vec<u8>,
    pub marker: bool,
    pub keyframe: bool,
}

/// Produces the packets of successive frames.
pub struct Vp8Source {
    shape: VideoShape,
    seed: u32,
    frame: u32,
    picture_id: u16,
    force_key: bool,
    layer: u8,
    /// Write VP9 with this many temporal layers (L1Tn) instead of VP8.
    vp9_temporal: Option<u8>,
}

impl Vp8Source {
    pub fn new(shape: VideoShape, seed: u32) -> Self {
        Vp8Source {
            shape,
            seed,
            frame: 0,
            picture_id: (seed & 0x7fff) as u16,
            force_key: true,
            layer: 0,
            vp9_temporal: None,
        }
    }

    /// Produces VP9 in flexible mode with `layers` temporal layers (L1T2, L1T3), each picture's
    /// temporal id in its payload descriptor, as an SVC encoder does.
    pub fn vp9_temporal(mut self, layers: u8) -> Self {
        self.vp9_temporal = Some(layers.clamp(1, 3));
        self
    }

    /// Temporal id of frame number `frame` in the L1T3 (or L1T2) pattern 0, 2, 1, 2.
    fn temporal_id(&self, frame: u32) -> u8 {
        match self.vp9_temporal {
            Some(3) => [0, 2, 1, 2][(frame % 4) as usize],
            Some(2) => [0, 1][(frame % 2) as usize],
            _ => 0,
        }
    }

    /// Marks the stream as simulcast layer `layer` (0 = lowest); receivers read it back.
    pub fn with_layer(mut self, layer: u8) -> Self {
        self.layer = layer;
        self
    }

    /// The next frame is a keyframe (a PLI or FIR arrived).
    pub fn request_keyframe(&mut self) {
        self.force_key = true;
    }

    pub fn frame_duration_ticks(&self) -> u32 {
        VIDEO_CLOCK / self.shape.fps.max(1)
    }

    /// Packets of the next frame, in order; the last has the marker bit. `sent_at_us` (wall
    /// clock, microseconds since the Unix epoch) travels in every packet so a receiver on the
    /// same clock measures one-way latency.
    pub fn next_frame(&mut self, sent_at_us: u64) -> Vec<VideoPacket> {
        let key = std::mem::take(&mut self.force_key);
        let count = if key {
            self.shape.key_packets
        } else {
            self.shape.delta_packets
        }
        .max(1);
        let frame = self.frame;
        self.frame = self.frame.wrapping_add(1);
        let pid = self.picture_id;
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        let tid = if key { 0 } else { self.temporal_id(frame) };
        let vp9 = self.vp9_temporal.is_some();
        (0..count)
            .map(|idx| {
                let mut p = Vec::with_capacity(self.shape.packet_size);
                if vp9 {
                    // I=1, P, L=1, F=1 (flexible), B on the first packet, E on the last.
                    let mut b0 = 0x80 | 0x20 | 0x10;
                    if !key {
                        b0 |= 0x40;
                    }
                    if idx == 0 {
                        b0 |= 0x08;
                    }
                    if idx + 1 == count {
                        b0 |= 0x04;
                    }
                    p.push(b0);
                    p.push(0x80 | (pid >> 8) as u8);
                    p.push(pid as u8);
                    // TID, U (switching up is possible after every base-layer picture), SID 0.
                    p.push((tid << 5) | (u8::from(tid == 0) << 4));
                } else {
                    // Descriptor: X=1, S on the first packet, PID=0; I=1 with a 15-bit PictureID.
                    p.push(if idx == 0 { 0x90 } else { 0x80 });
                    p.push(0x80);
                    p.push(0x80 | (pid >> 8) as u8);
                    p.push(pid as u8);
                }
                if idx == 0 && !vp9 {
                    // Frame tag: P bit (0 = key), version 0, show_frame, partition size.
                    let tag: u32 = u32::from(!key) | (1 << 4) | (100 << 5);
                    p.extend_from_slice(&tag.to_le_bytes()[..3]);
                    if key {
                        p.extend_from_slice(&[0x9d, 0x01, 0x2a]);
                        p.extend_from_slice(&640u16.to_le_bytes());
                        p.extend_from_slice(&360u16.to_le_bytes());
                    }
                }
                p.extend_from_slice(&BODY_MAGIC);
                p.extend_from_slice(&self.seed.to_be_bytes());
                p.extend_from_slice(&frame.to_be_bytes());
                p.extend_from_slice(&idx.to_be_bytes());
                p.extend_from_slice(&count.to_be_bytes());
                p.extend_from_slice(&sent_at_us.to_be_bytes());
                p.push(self.layer);
                p.push(u8::from(key));
                p.push(tid);
                let fill = self.shape.packet_size.saturating_sub(p.len());
                fill_bytes(&mut p, self.seed, frame, idx, fill);
                VideoPacket {
                    payload: p,
                    marker: idx + 1 == count,
                    keyframe: key && idx == 0,
                }
            })
            .collect()
    }
}

/// Wall clock in microseconds since the Unix epoch (the latency clock of one machine).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// When audio payloads left their senders, for the receivers in the same process to look up.
/// An Opus packet has no room for a timestamp (its bytes are the codec's, and an SFU must pass
/// them untouched), so a receiver finds a payload's send time by the payload's hash: one
/// machine, one clock. A fixed table whose slots are overwritten in turn bounds the memory; a
/// payload whose slot was taken since finds nothing. When two senders send the same bytes, the
/// later send time wins, which can only understate that one packet's latency.
#[derive(Debug)]
pub struct AudioSendTimes {
    slots: Box<[std::sync::Mutex<(u64, u64)>]>,
}

impl Default for AudioSendTimes {
    fn default() -> Self {
        // 2^16 slots: 40 s of 1,600 audio packets per second, far past any forwarding delay.
        AudioSendTimes {
            slots: (0..1 << 16)
                .map(|_| std::sync::Mutex::new((0, 0)))
                .collect(),
        }
    }
}

impl AudioSendTimes {
    fn slot(&self, hash: u64) -> std::sync::MutexGuard<'_, (u64, u64)> {
        let i = (hash as usize) & (self.slots.len() - 1);
        self.slots[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, hash: u64, sent_at_us: u64) {
        *self.slot(hash) = (hash, sent_at_us);
    }

    pub fn lookup(&self, hash: u64) -> Option<u64> {
        let (h, at) = *self.slot(hash);
        (h == hash && at != 0).then_some(at)
    }
}

/// Deterministic filler: the receiver regenerates it to prove the bytes arrived intact.
fn fill_bytes(out: &mut Vec<u8>, seed: u32, frame: u32, idx: u16, n: usize) {
    let mut x: u64 =
        (u64::from(seed) << 32 | u64::from(frame)) ^ (u64::from(idx) << 17) | 0x9e37_79b9_7f4a_7c15;
    for _ in 0..n {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.push((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8);
    }
}

/// What a receiver learned from one synthetic VP8 payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoCheck {
    pub frame: u32,
    pub index: u16,
    pub count: u16,
    /// First packet of a keyframe (S=1, PID=0, P=0).
    pub keyframe_start: bool,
    /// When the sender wrote it (microseconds since the Unix epoch).
    pub sent_at_us: u64,
    /// Simulcast layer the sender produced it for (0 without simulcast).
    pub layer: u8,
    /// The packet belongs to a keyframe (whichever packet of it this is).
    pub keyframe: bool,
    /// Temporal layer id (0 unless the stream is VP9 with temporal layers).
    pub temporal: u8,
}

/// Parses and verifies a synthetic VP8 payload. `None` means the bytes were altered.
pub fn check_vp8(payload: &[u8]) -> Option<VideoCheck> {
    let (check, seed, body) = parse(payload)?;
    let mut expect = Vec::with_capacity(body.len() - BODY_HEADER);
    fill_bytes(
        &mut expect,
        seed,
        check.frame,
        check.index,
        body.len() - BODY_HEADER,
    );
    if expect != body[BODY_HEADER..] {
        return None;
    }
    Some(check)
}

/// Reads a synthetic VP8 payload's descriptor and body header without regenerating the filler:
/// cheap enough for every packet under load (send time, frame, keyframe start).
pub fn parse_vp8(payload: &[u8]) -> Option<VideoCheck> {
    parse(payload).map(|(c, _, _)| c)
}

fn parse(payload: &[u8]) -> Option<(VideoCheck, u32, &[u8])> {
    let b0 = *payload.first()?;
    // The synthetic VP9 descriptor is always I=1, L=1, F=1: 4 bytes; VP8's first byte never
    // has bit 0x20 set with 0x10 (X=1 with reserved R set is invalid VP8).
    if b0 & 0x30 == 0x30 {
        return parse_vp9_body(payload);
    }
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let ext = *payload.get(i)?;
        i += 1;
        if ext & 0x80 != 0 {
            let m = *payload.get(i)?;
            i += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1;
        }
        if ext & 0x30 != 0 {
            i += 1;
        }
    }
    let mut key = false;
    if start {
        let tag = *payload.get(i)?;
        key = tag & 0x01 == 0;
        i += 3;
        if key {
            if payload.get(i..i + 3)? != [0x9d, 0x01, 0x2a] {
                return None;
            }
            i += 7;
        }
    }
    let body = payload.get(i..)?;
    let (check, seed) = parse_body(body, start, key)?;
    Some((check, seed, body))
}

/// The synthetic body after the codec's descriptor: `start` and `key` come from the descriptor.
fn parse_body(body: &[u8], start: bool, key: bool) -> Option<(VideoCheck, u32)> {
    if body.len() < BODY_HEADER || body[..4] != BODY_MAGIC {
        return None;
    }
    let seed = u32::from_be_bytes(body[4..8].try_into().ok()?);
    let frame = u32::from_be_bytes(body[8..12].try_into().ok()?);
    let index = u16::from_be_bytes(body[12..14].try_into().ok()?);
    let count = u16::from_be_bytes(body[14..16].try_into().ok()?);
    let sent_at_us = u64::from_be_bytes(body[16..24].try_into().ok()?);
    let check = VideoCheck {
        frame,
        index,
        count,
        keyframe_start: start && key,
        sent_at_us,
        layer: body[24],
        keyframe: body[25] == 1,
        temporal: body[26],
    };
    Some((check, seed))
}

/// Simulates end-to-end frame encryption with the convention of LiveKit's and Jitsi's frame
/// cryptors: on the first packet of a frame the first 10 bytes (keyframe) or 3 bytes (delta
/// frame) after the RTP payload descriptor stay clear; every other byte is scrambled with a
/// keystream of `key`. Applying it twice restores the payload. An SFU that needs any scrambled
/// byte breaks; one that reads only the clear prefix does not.
pub fn e2ee_scramble(payload: &mut [u8], key: u64) {
    let Some(first) = payload.first().copied() else {
        return;
    };
    let start = first & 0x10 != 0 && first & 0x07 == 0;
    let mut i = 1;
    if first & 0x80 != 0 {
        let Some(&ext) = payload.get(1) else { return };
        i = 2;
        if ext & 0x80 != 0 {
            let Some(&m) = payload.get(2) else { return };
            i += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1;
        }
        if ext & 0x30 != 0 {
            i += 1;
        }
    }
    if start {
        let key_frame = payload.get(i).is_some_and(|t| t & 0x01 == 0);
        i += if key_frame { 10 } else { 3 };
    }
    let mut x = key | 1;
    for b in payload.iter_mut().skip(i) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *b ^= (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
    }
}

/// The three layers a simulcast publisher sends, lowest first: about 40 kbit/s, 340 kbit/s
/// and 860 kbit/s of payload at 30 fps (a 180p / 360p / 720p ladder).
pub fn simulcast_shapes() -> [VideoShape; 3] {
    [
        VideoShape {
            fps: 30,
            delta_packets: 1,
            key_packets: 5,
            packet_size: 160,
        },
        VideoShape {
            fps: 30,
            delta_packets: 2,
            key_packets: 6,
            packet_size: 700,
        },
        VideoShape {
            fps: 30,
            delta_packets: 4,
            key_packets: 12,
            packet_size: 900,
        },
    ]
}

fn parse_vp9_body(payload: &[u8]) -> Option<(VideoCheck, u32, &[u8])> {
    let b0 = *payload.first()?;
    let body = payload.get(4..)?;
    let (check, seed) = parse_body(body, b0 & 0x08 != 0, b0 & 0x40 == 0)?;
    Some((check, seed, body))
}

/// A sine tone encoded with libopus, 20 ms per packet.
pub struct OpusTone {
    encoder: Encoder,
    freq: f32,
    phase: f32,
    buf: Vec<i16>,
}

impl OpusTone {
    pub fn new(freq: f32) -> Result<Self, opus::Error> {
        let mut encoder = Encoder::new(OPUS_RATE, Channels::Mono, Application::Voip)?;
        encoder.set_inband_fec(true)?;
        Ok(OpusTone {
            encoder,
            freq,
            phase: 0.0,
            buf: vec![0; OPUS_FRAME],
        })
    }

    /// The next 20 ms packet.
    pub fn next_packet(&mut self) -> Result<Vec<u8>, opus::Error> {
        let step = 2.0 * PI * self.freq / OPUS_RATE as f32;
        for s in self.buf.iter_mut() {
            *s = (self.phase.sin() * 8_000.0) as i16;
            self.phase = (self.phase + step) % (2.0 * PI);
        }
        self.encoder.encode_vec(&self.buf, 1_500)
    }
}

/// Decodes received Opus packets.
pub struct OpusSink {
    decoder: Decoder,
    pcm: Vec<i16>,
}

impl OpusSink {
    pub fn new() -> Result<Self, opus::Error> {
        Ok(OpusSink {
            decoder: Decoder::new(OPUS_RATE, Channels::Mono)?,
            pcm: vec![0; OPUS_FRAME * 6],
        })
    }

    /// Decodes one packet; returns the decoded samples.
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[i16], opus::Error> {
        let n = self.decoder.decode(packet, &mut self.pcm, false)?;
        Ok(&self.pcm[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_send_times_find_a_payload_until_its_slot_is_taken() {
        let t = AudioSendTimes::default();
        assert_eq!(t.lookup(7), None, "nothing recorded");
        t.record(7, 1_000);
        assert_eq!(t.lookup(7), Some(1_000));
        t.record(7, 1_500);
        assert_eq!(
            t.lookup(7),
            Some(1_500),
            "the same bytes sent again: the later time"
        );
        // Another payload in the same slot replaces it; neither is confused with the other.
        let other = 7 + (1 << 16);
        t.record(other, 2_000);
        assert_eq!(t.lookup(7), None);
        assert_eq!(t.lookup(other), Some(2_000));
    }

    #[test]
    fn synthetic_vp8_round_trips_and_detects_tampering() {
        let mut src = Vp8Source::new(VideoShape::default(), 42);
        let key = src.next_frame(7);
        assert_eq!(key.len(), 8);
        assert!(key[0].keyframe && key.last().unwrap().marker);
        let c = check_vp8(&key[0].payload).unwrap();
        assert!(c.keyframe_start);
        assert_eq!((c.frame, c.index, c.count, c.sent_at_us), (0, 0, 8, 7));
        let delta = src.next_frame(7);
        assert_eq!(delta.len(), 2);
        let c = check_vp8(&delta[0].payload).unwrap();
        assert!(!c.keyframe_start);
        assert!(check_vp8(&delta[1].payload).is_some());
        let mut bad = delta[1].payload.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(check_vp8(&bad).is_none());
        src.request_keyframe();
        assert!(src.next_frame(7)[0].keyframe);
    }

    #[test]
    fn e2ee_scrambling_keeps_the_clear_prefix_and_round_trips() {
        let mut src = Vp8Source::new(VideoShape::default(), 1).with_layer(2);
        let key = src.next_frame(5);
        let mut p = key[0].payload.clone();
        e2ee_scramble(&mut p, 99);
        // Descriptor (4) + 10 clear bytes survive; the body does not parse any more.
        assert_eq!(p[..14], key[0].payload[..14]);
        assert!(check_vp8(&p).is_none());
        e2ee_scramble(&mut p, 99);
        let c = check_vp8(&p).unwrap();
        assert_eq!(c.layer, 2);
        assert!(c.keyframe_start);
        let delta = src.next_frame(6);
        let mut d = delta[0].payload.clone();
        e2ee_scramble(&mut d, 99);
        assert_eq!(d[..7], delta[0].payload[..7]);
        assert_ne!(d[7..], delta[0].payload[7..]);
    }

    #[test]
    fn opus_tone_decodes() {
        let mut tone = OpusTone::new(440.0).unwrap();
        let mut sink = OpusSink::new().unwrap();
        let mut energy = 0f64;
        for _ in 0..10 {
            let p = tone.next_packet().unwrap();
            let pcm = sink.decode(&p).unwrap();
            assert_eq!(pcm.len(), OPUS_FRAME);
            energy += pcm.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>();
        }
        assert!(energy > 1e9, "the tone is audible after decoding");
    }
}
