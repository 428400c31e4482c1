//! Speech-like audio for load: a voiced signal that talks and pauses like a person in a call
//! (two-state on/off model with exponential talk-spurt and pause lengths), encoded with libopus,
//! DTX while silent, and the RFC 6464 audio level of every frame.
//!
//! A source encodes live through a warm-up and three whole talk-and-pause cycles, then replays
//! those cycles in a loop: encoding was two thirds of the load tester's CPU (72 speakers: 3,600 libopus encodes a second), which
//! the load tester must leave to the server it measures. What goes on the wire is unchanged:
//! real Opus packets, their sizes, DTX, levels and talk-spurt markers, one voice per speaker.

use std::f32::consts::PI;

use opus::{Application, Channels, Encoder};

use crate::media::{OPUS_FRAME, OPUS_RATE};

/// How a simulated speaker talks.
#[derive(Debug, Clone, Copy, PartialEq)]
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
#[derive(Debug, Clone)]
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

/// Generates and encodes speech-like audio.
pub struct SpeechSource {
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
    /// Frames encoded so far (live), and the recorded cycles with where the source is in them.
    encoded: u64,
    recorded: Vec<SpeechFrame>,
    phase: Phase,
}

/// Where a source is between encoding live and replaying.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    WarmingUp,
    Recording { states_ended: u32 },
    Replaying { next: usize },
}

/// Frames encoded before the recording may start (2 s): libopus sends every frame of the first
/// pauses while it learns the noise floor, and only then settles into DTX.
const WARMUP_FRAMES: u64 = 100;
/// Whole talk-and-pause cycles a source records before it loops (7.5 s with the default
/// pattern), and the most frames it records if its states are very long (30 s). The recording
/// starts with a talk spurt that starts after the warm-up and holds a fixed count of cycles, not
/// "the state under some frame", which would favour long states.
const LOOP_CYCLES: u32 = 3;
const LOOP_MAX_FRAMES: usize = 1_500;

impl SpeechSource {
    pub fn new(pattern: SpeechPattern) -> Result<Self, opus::Error> {
        let mut encoder = Encoder::new(OPUS_RATE, Channels::Mono, Application::Voip)?;
        encoder.set_inband_fec(true)?;
        encoder.set_dtx(pattern.dtx)?;
        encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
        let mut rng = pattern.seed ^ 0x9e37_79b9_7f4a_7c15;
        let f0 = 100.0 + (xorshift(&mut rng) % 120) as f32;
        let mut s = SpeechSource {
            encoder,
            pattern,
            rng,
            talking: pattern.start_talking,
            frames_left: 0,
            t: 0,
            f0,
            pcm: vec![0; OPUS_FRAME],
            gap: true,
            encoded: 0,
            recorded: Vec::new(),
            phase: Phase::WarmingUp,
        };
        s.frames_left = s.draw_frames();
        Ok(s)
    }

    pub fn talking(&self) -> bool {
        self.talking
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

    /// The next 20 ms frame.
    pub fn next_frame(&mut self) -> Result<SpeechFrame, opus::Error> {
        if let Phase::Replaying { next } = self.phase {
            let frame = self.recorded[next].clone();
            self.phase = Phase::Replaying {
                next: (next + 1) % self.recorded.len(),
            };
            self.talking = frame.voice;
            return Ok(frame);
        }
        let frame = self.encode_frame()?;
        self.encoded += 1;
        let state_ends = self.frames_left == 0;
        match self.phase {
            // Recording starts with a talk spurt.
            Phase::WarmingUp if self.encoded >= WARMUP_FRAMES && state_ends && !self.talking => {
                self.phase = Phase::Recording { states_ended: 0 };
            }
            Phase::WarmingUp | Phase::Replaying { .. } => {}
            Phase::Recording { states_ended } => {
                self.recorded.push(frame.clone());
                let states_ended = states_ended + u32::from(state_ends);
                self.phase =
                    if states_ended == 2 * LOOP_CYCLES || self.recorded.len() >= LOOP_MAX_FRAMES {
                        Phase::Replaying { next: 0 }
                    } else {
                        Phase::Recording { states_ended }
                    };
            }
        }
        Ok(frame)
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

    #[test]
    fn speaker_talks_and_pauses_with_dtx() {
        let mut s = SpeechSource::new(SpeechPattern {
            mean_talk_ms: 400,
            mean_pause_ms: 400,
            ..Default::default()
        })
        .unwrap();
        let (mut sent, mut skipped, mut markers) = (0, 0, 0);
        let (mut voiced, mut loud, mut silent, mut quiet) = (0, 0, 0, 0);
        for _ in 0..500 {
            let f = s.next_frame().unwrap();
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
    fn after_a_warm_up_the_source_replays_whole_cycles() {
        let mut s = SpeechSource::new(SpeechPattern::default()).unwrap();
        let frames: Vec<SpeechFrame> = (0..3_200).map(|_| s.next_frame().unwrap()).collect();
        assert!(
            matches!(s.phase, Phase::Replaying { .. }),
            "the source loops"
        );
        let live = s.encoded as usize;
        let period = s.recorded.len();
        assert!(live >= WARMUP_FRAMES as usize + period && period < LOOP_MAX_FRAMES);
        let same = |a: &SpeechFrame, b: &SpeechFrame| {
            (&a.payload, a.level, a.voice, a.marker) == (&b.payload, b.level, b.voice, b.marker)
        };
        // The recording is the last live frames, and the replay repeats it frame for frame.
        assert!(
            frames[live - period..live]
                .iter()
                .zip(&s.recorded)
                .all(|(a, b)| same(a, b))
        );
        assert!(
            frames[live..]
                .iter()
                .enumerate()
                .all(|(i, f)| same(f, &s.recorded[i % period]))
        );
        // Whole cycles: the loop starts with a talk spurt (and its marker) and ends in a pause.
        let first = &s.recorded[0];
        assert!(first.voice && first.marker && !frames[live - period - 1].voice);
        assert!(!s.recorded[period - 1].voice);
        // Settled DTX: the recorded pauses are mostly not sent.
        let pauses = s.recorded.iter().filter(|f| !f.voice);
        let (sent, quiet) = pauses.fold((0, 0), |(n, q), f| {
            (n + usize::from(f.payload.is_some()), q + 1)
        });
        assert!(sent * 3 < quiet, "{sent} of {quiet} pause frames sent");
    }

    #[test]
    fn looping_speakers_keep_the_patterns_talk_share() {
        // 1 s spurts and 1.5 s pauses: 40 % talking, over many speakers, whichever state they
        // start in.
        let (mut voiced, mut all) = (0usize, 0usize);
        for seed in 1..=40 {
            let mut s = SpeechSource::new(SpeechPattern {
                seed,
                start_talking: seed % 3 == 0,
                ..Default::default()
            })
            .unwrap();
            for _ in 0..1_500 {
                voiced += usize::from(s.next_frame().unwrap().voice);
                all += 1;
            }
        }
        let share = voiced as f64 / all as f64;
        assert!((0.34..0.46).contains(&share), "talk share {share}");
    }
}
