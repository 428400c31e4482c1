//! Speech-like audio for load: a voiced signal that talks and pauses like a person in a call
//! (two-state on/off model with exponential talk-spurt and pause lengths), encoded with libopus,
//! DTX while silent, and the RFC 6464 audio level of every frame.
//!
//! A speaker's audio is encoded once, before it joins ([`SpeechRecording::encode`]): a warm-up
//! and three whole talk-and-pause cycles. A [`SpeechSource`] plays the recording from its start
//! and then loops the cycles. A real client encodes on its own device; encoding live inside the
//! load tester fell behind (208 speakers: 10,400 libopus encodes a second, four of this
//! machine's two cores) and took the CPU it must leave to the server it measures, just while a
//! burst of participants joined. What goes on the wire is real Opus: the packets, their
//! sizes, DTX, levels and talk-spurt markers, one voice per speaker.

use std::f32::consts::PI;
use std::sync::Arc;

use opus::{Application, Channels, Encoder};

use crate::media::{OPUS_FRAME, OPUS_RATE};

/// How a simulated speaker talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpeechPattern {
    /// Mean length of a talk spurt and of a pause, milliseconds (exponentially distributed).
    pub mean_talk_ms: u32,
    pub mean_pause_ms: u32,
    /// Opus DTX while silent: only the encoder's comfort-noise updates (every ~400 ms) are sent,
    /// as browsers do. Without DTX every 20 ms frame is sent.
    pub dtx: bool,
    /// Seeds the on/off sequence and the voice, so a run is reproducible.
    pub seed: u64,
    /// Start talking (true) or silent (false).
    pub start_talking: bool,
}

impl Default for SpeechPattern {
    fn default() -> Self {
        // Brady's conversational speech: spurts ~1 s, pauses ~1.5 s.
        SpeechPattern {
            mean_talk_ms: 1_000,
            mean_pause_ms: 1_500,
            dtx: true,
            seed: 1,
            start_talking: true,
        }
    }
}

/// One 20 ms frame of a speaker.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechFrame {
    /// The Opus packet to send, `None` for a DTX frame that is not sent.
    pub payload: Option<Vec<u8>>,
    /// RFC 6464 level: 0..=127, in -dBov (0 is loudest, 127 is silence).
    pub level: u8,
    /// The speaker is talking (the V bit of RFC 6464).
    pub voice: bool,
    /// First packet after a gap: the RTP marker bit of a talk spurt (RFC 3551 §4.1).
    pub marker: bool,
}

/// A speaker's encoded audio: the frames from the first on, and where the loop starts.
#[derive(Debug)]
pub struct SpeechRecording {
    frames: Vec<SpeechFrame>,
    loop_start: usize,
}

impl SpeechRecording {
    /// Encodes a speaker's warm-up and whole cycles (about 9.5 s of audio, 475 libopus encodes
    /// with the default pattern).
    pub fn encode(pattern: SpeechPattern) -> Result<Self, opus::Error> {
        let mut e = Encoding::new(pattern)?;
        let mut frames = Vec::new();
        let mut recorded = 0usize;
        let mut states_ended = 0u32;
        let mut recording = false;
        loop {
            let frame = e.encode_frame()?;
            let state_ends = e.frames_left == 0;
            let voice = frame.voice;
            frames.push(frame);
            if !recording {
                // The loop starts with a talk spurt, after the warm-up.
                recording = frames.len() as u64 >= WARMUP_FRAMES && state_ends && !voice;
                continue;
            }
            recorded += 1;
            states_ended += u32::from(state_ends);
            if states_ended == 2 * LOOP_CYCLES || recorded >= LOOP_MAX_FRAMES {
                let loop_start = frames.len() - recorded;
                return Ok(SpeechRecording { frames, loop_start });
            }
        }
    }

    /// Frames before the loop, and in it.
    pub fn lengths(&self) -> (usize, usize) {
        (self.loop_start, self.frames.len() - self.loop_start)
    }
}

/// Plays a speaker's recording: from its first frame, then its cycles in a loop.
pub struct SpeechSource {
    recording: Arc<SpeechRecording>,
    next: usize,
}

impl SpeechSource {
    pub fn new(recording: Arc<SpeechRecording>) -> Self {
        SpeechSource { recording, next: 0 }
    }

    /// The next 20 ms frame.
    pub fn next_frame(&mut self) -> &SpeechFrame {
        let r = &self.recording;
        let i = self.next;
        self.next = if i + 1 >= r.frames.len() {
            r.loop_start
        } else {
            i + 1
        };
        &r.frames[i]
    }
}

/// The live encoder behind a recording.
struct Encoding {
    encoder: Encoder,
    pattern: SpeechPattern,
    rng: u64,
    talking: bool,
    frames_left: u32,
    /// Sample clock, for the voice and its syllable envelope.
    t: u64,
    f0: f32,
    pcm: Vec<i16>,
    /// The previous frame was not sent (DTX): the next sent one carries the marker.
    gap: bool,
}

/// Frames encoded before the loop may start (2 s): libopus sends every frame of the first
/// pauses while it learns the noise floor, and only then settles into DTX.
const WARMUP_FRAMES: u64 = 100;
/// Whole talk-and-pause cycles a recording loops (7.5 s with the default pattern), and the most
/// frames it loops if its states are very long (30 s). The loop starts with a talk spurt that
/// starts after the warm-up and holds a fixed count of cycles, not "the state under some
/// frame", which would favour long states.
const LOOP_CYCLES: u32 = 3;
const LOOP_MAX_FRAMES: usize = 1_500;

impl Encoding {
    fn new(pattern: SpeechPattern) -> Result<Self, opus::Error> {
        let mut encoder = Encoder::new(OPUS_RATE, Channels::Mono, Application::Voip)?;
        encoder.set_inband_fec(true)?;
        encoder.set_dtx(pattern.dtx)?;
        encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
        let mut rng = pattern.seed ^ 0x9e37_79b9_7f4a_7c15;
        let f0 = 100.0 + (xorshift(&mut rng) % 120) as f32;
        let mut s = Encoding {
            encoder,
            pattern,
            rng,
            talking: pattern.start_talking,
            frames_left: 0,
            t: 0,
            f0,
            pcm: vec![0; OPUS_FRAME],
            gap: true,
        };
        s.frames_left = s.draw_frames();
        Ok(s)
    }

    /// Frames in the next state: exponential with the state's mean, at least one.
    fn draw_frames(&mut self) -> u32 {
        let mean_ms = if self.talking {
            self.pattern.mean_talk_ms
        } else {
            self.pattern.mean_pause_ms
        };
        let u = (xorshift(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64;
        let ms = -(1.0 - u).max(1e-12).ln() * f64::from(mean_ms);
        ((ms / 20.0).round() as u32).max(1)
    }

    fn encode_frame(&mut self) -> Result<SpeechFrame, opus::Error> {
        if self.frames_left == 0 {
            self.talking = !self.talking;
            self.frames_left = self.draw_frames();
        }
        self.frames_left -= 1;
        let talking = self.talking;
        let mut energy = 0f64;
        for s in self.pcm.iter_mut() {
            let t = self.t as f32 / OPUS_RATE as f32;
            self.t += 1;
            let v = if talking {
                // A voiced sound: three harmonics of a slowly gliding pitch, shaped by a
                // ~4 Hz syllable envelope.
                let f0 = self.f0 * (1.0 + 0.1 * (2.0 * PI * 0.7 * t).sin());
                let env = 0.55 + 0.45 * (2.0 * PI * 4.0 * t).sin();
                let w = 2.0 * PI * f0 * t;
                env * (w.sin() + 0.5 * (2.0 * w).sin() + 0.25 * (3.0 * w).sin()) * 6_000.0
            } else {
                // Room noise around -70 dBov.
                ((xorshift(&mut self.rng) % 21) as f32 - 10.0) * 1.0
            };
            *s = v as i16;
            energy += f64::from(*s).powi(2);
        }
        let payload = self.encoder.encode_vec(&self.pcm, 1_500)?;
        let rms = (energy / self.pcm.len() as f64).sqrt();
        let level = audio_level(rms);
        // libopus signals a DTX frame with a packet of at most 2 bytes; WebRTC does not send it.
        let dtx = self.pattern.dtx && payload.len() <= 2;
        let marker = !dtx && self.gap;
        self.gap = dtx;
        Ok(SpeechFrame {
            payload: (!dtx).then_some(payload),
            level,
            voice: talking,
            marker,
        })
    }
}

/// RFC 6464 level of a frame with this RMS (16-bit full scale = 0 dBov).
pub fn audio_level(rms: f64) -> u8 {
    if rms <= 0.0 {
        return 127;
    }
    let dbov = 20.0 * (rms / 32_768.0).log10();
    (-dbov).round().clamp(0.0, 127.0) as u8
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_rfc_6464() {
        assert_eq!(audio_level(0.0), 127);
        assert_eq!(audio_level(32_768.0), 0);
        assert_eq!(audio_level(32_768.0 / 10.0), 20);
    }

    fn frames(pattern: SpeechPattern, n: usize) -> Vec<SpeechFrame> {
        let mut s = SpeechSource::new(Arc::new(SpeechRecording::encode(pattern).unwrap()));
        (0..n).map(|_| s.next_frame().clone()).collect()
    }

    #[test]
    fn speaker_talks_and_pauses_with_dtx() {
        let pattern = SpeechPattern {
            mean_talk_ms: 400,
            mean_pause_ms: 400,
            ..Default::default()
        };
        let (mut sent, mut skipped, mut markers) = (0, 0, 0);
        let (mut voiced, mut loud, mut silent, mut quiet) = (0, 0, 0, 0);
        for f in frames(pattern, 500) {
            match &f.payload {
                Some(_) => sent += 1,
                None => skipped += 1,
            }
            markers += usize::from(f.marker);
            if f.voice {
                voiced += 1;
                loud += usize::from(f.level < 40);
            } else {
                silent += 1;
                quiet += usize::from(f.level > 60);
            }
        }
        assert!(sent > 100 && skipped > 50, "sent {sent}, skipped {skipped}");
        assert!(markers > 3, "talk spurts start with a marker");
        assert!(
            voiced > 50 && silent > 50,
            "talks {voiced}, pauses {silent}"
        );
        assert!(
            loud * 10 >= voiced * 9 && quiet == silent,
            "levels: {loud} of {voiced} talking frames loud, {quiet} of {silent} pause frames quiet"
        );
    }

    #[test]
    fn after_a_warm_up_the_source_loops_whole_cycles() {
        let recording = SpeechRecording::encode(SpeechPattern::default()).unwrap();
        let (live, period) = recording.lengths();
        assert!(live >= WARMUP_FRAMES as usize && period < LOOP_MAX_FRAMES);
        let all = recording.frames.clone();
        let mut s = SpeechSource::new(Arc::new(recording));
        let played: Vec<SpeechFrame> = (0..3_200).map(|_| s.next_frame().clone()).collect();
        // The recording plays from its first frame, then repeats its cycles frame for frame.
        assert_eq!(played[..all.len()], all[..]);
        assert!(
            played[live..]
                .iter()
                .enumerate()
                .all(|(i, f)| *f == all[live + i % period])
        );
        // Whole cycles: the loop starts with a talk spurt (and its marker) and ends in a pause.
        let first = &all[live];
        assert!(first.voice && first.marker && !all[live - 1].voice);
        assert!(!all[all.len() - 1].voice);
        // Settled DTX: the looped pauses are mostly not sent.
        let pauses = all[live..].iter().filter(|f| !f.voice);
        let (sent, quiet) = pauses.fold((0, 0), |(n, q), f| {
            (n + usize::from(f.payload.is_some()), q + 1)
        });
        assert!(sent * 3 < quiet, "{sent} of {quiet} pause frames sent");
    }

    #[test]
    fn a_recording_is_the_same_for_the_same_pattern() {
        let p = SpeechPattern {
            seed: 7,
            ..Default::default()
        };
        let (a, b) = (frames(p, 600), frames(p, 600));
        assert_eq!(a, b, "a run is reproducible");
        let other = frames(SpeechPattern { seed: 8, ..p }, 600);
        assert_ne!(a, other, "each speaker has a voice of its own");
    }

    #[test]
    fn looping_speakers_keep_the_patterns_talk_share() {
        // 1 s spurts and 1.5 s pauses: 40 % talking, over many speakers, whichever state they
        // start in.
        let (mut voiced, mut all) = (0usize, 0usize);
        for seed in 1..=40 {
            let pattern = SpeechPattern {
                seed,
                start_talking: seed % 3 == 0,
                ..Default::default()
            };
            for f in frames(pattern, 1_500) {
                voiced += usize::from(f.voice);
                all += 1;
            }
        }
        let share = voiced as f64 / all as f64;
        assert!((0.34..0.46).contains(&share), "talk share {share}");
    }
}
