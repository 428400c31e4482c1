//! Speech-like audio for load: a voiced signal that talks and pauses like a person in a call
//! (two-state on/off model with exponential talk-spurt and pause lengths), encoded with libopus,
//! DTX while silent, and the RFC 6464 audio level of every frame.

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
}

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
        let (mut sent, mut skipped, mut markers, mut loud, mut quiet) = (0, 0, 0, 0, 0);
        for _ in 0..500 {
            let f = s.next_frame().unwrap();
            match &f.payload {
                Some(_) => sent += 1,
                None => skipped += 1,
            }
            markers += usize::from(f.marker);
            if f.voice {
                loud += usize::from(f.level < 40);
            } else {
                quiet += usize::from(f.level > 60);
            }
        }
        assert!(sent > 100 && skipped > 50, "sent {sent}, skipped {skipped}");
        assert!(markers > 3, "talk spurts start with a marker");
        assert!(
            loud > 100 && quiet > 50,
            "levels: loud {loud}, quiet {quiet}"
        );
    }
}
