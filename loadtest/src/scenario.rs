//! Named scenarios and their parameters: who joins which room, who publishes what (speech
//! pattern, video layers), who only watches; the plan as groups of members, for a fixed run and
//! for a ramp that adds one group per step. Absurd parameters are refused here.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure};
use moien_client::media::VideoShape;
use moien_client::speech::SpeechPattern;
use serde::Serialize;

/// Hard limits: beyond them a run is a typo, not a test (this tool runs on one machine).
pub const MAX_PARTICIPANTS: usize = 2_000;
pub const MAX_ROOM_SIZE: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// Rooms of N; everyone publishes speech-like Opus (talks sometimes, DTX when silent).
    AudioConference,
    /// Rooms of N; everyone publishes audio and VP8 video; everyone receives everyone.
    VideoConference,
    /// One publisher (audio + video), M viewers (WebSocket or WHEP).
    Livestream,
    /// Many 1:1 and 3-party calls with audio and video.
    ManySmallRooms,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::AudioConference => "audio-conference",
            ScenarioKind::VideoConference => "video-conference",
            ScenarioKind::Livestream => "livestream",
            ScenarioKind::ManySmallRooms => "many-small-rooms",
        }
    }
}

impl fmt::Display for ScenarioKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How livestream viewers receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ViewerProtocol {
    /// The WebSocket protocol (subscribe-only token).
    Ws,
    /// WHEP (RFC 9725 style HTTP offer/answer).
    Whep,
}

/// One simulcast layer's encoding (a single layer until the SFU forwards simulcast).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VideoLayer {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub kbps: u32,
}

impl VideoLayer {
    /// Equal-size packets of at most 1,100 payload bytes (what packetizers aim for under a
    /// 1,200-byte MTU budget); a keyframe is five delta frames, as camera encoders produce.
    pub fn shape(&self) -> VideoShape {
        let fps = self.fps.max(1);
        let frame_bytes = (u64::from(self.kbps) * 1_000 / 8 / u64::from(fps)).max(100);
        let packets = frame_bytes.div_ceil(1_100).max(1);
        let size = frame_bytes.div_ceil(packets) as usize;
        VideoShape {
            fps,
            delta_packets: packets as u16,
            key_packets: (packets * 5).clamp(4, 200) as u16,
            packet_size: size.max(64),
        }
    }

    /// Packets per second of delta frames.
    pub fn packets_per_second(&self) -> u32 {
        u32::from(self.shape().delta_packets) * self.fps.max(1)
    }
}

impl fmt::Display for VideoLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{}@{}:{}",
            self.width, self.height, self.fps, self.kbps
        )
    }
}

impl FromStr for VideoLayer {
    type Err = anyhow::Error;

    /// `180p`, `360p`, `720p`, `1080p`, or `WxH@FPS:KBPS`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let preset = |width, height, fps, kbps| VideoLayer {
            width,
            height,
            fps,
            kbps,
        };
        Ok(match s {
            "180p" => preset(320, 180, 15, 150),
            "360p" => preset(640, 360, 30, 500),
            "720p" => preset(1280, 720, 30, 1_500),
            "1080p" => preset(1920, 1080, 30, 2_500),
            _ => {
                let parse = || -> Option<VideoLayer> {
                    let (dims, rest) = s.split_once('@')?;
                    let (w, h) = dims.split_once('x')?;
                    let (fps, kbps) = rest.split_once(':')?;
                    Some(preset(
                        w.parse().ok()?,
                        h.parse().ok()?,
                        fps.parse().ok()?,
                        kbps.parse().ok()?,
                    ))
                };
                let Some(l) = parse() else {
                    bail!("video layer {s:?}: use 180p, 360p, 720p, 1080p or WxH@FPS:KBPS")
                };
                l
            }
        })
    }
}

/// A scenario with all its parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub kind: ScenarioKind,
    /// Conference rooms (or calls for many-small-rooms).
    pub rooms: usize,
    /// Participants per conference room.
    pub room_size: usize,
    /// Livestream viewers.
    pub viewers: usize,
    pub viewer_protocol: ViewerProtocol,
    /// The video layer each publisher sends without simulcast.
    pub video_layers: Vec<VideoLayer>,
    /// Publishers send the client's three-layer simulcast ladder (q/h/f, about 40/340/860
    /// kbit/s) instead of `video_layers`; the SFU forwards one layer per subscriber.
    pub simulcast: bool,
    /// Fraction of the time each audio publisher talks (0..1].
    pub talk_share: f64,
    /// Mean talk-spurt length, ms.
    pub talk_ms: u32,
    pub dtx: bool,
    /// many-small-rooms: fraction of 3-party calls (the rest are 1:1).
    pub three_party_share: f64,
    /// Ramp: groups added per step (rooms, or viewers for livestream).
    pub ramp_step: usize,
    pub seed: u64,
}

/// What one simulated participant does.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub identity: String,
    pub publish_audio: bool,
    pub video: Option<VideoLayer>,
    pub subscribe: bool,
    /// Receives through WHEP (livestream viewers), playing this identity.
    pub whep_of: Option<String>,
    /// Sends its video as simulcast (the client's ladder).
    pub simulcast: bool,
    #[serde(skip)]
    pub speech: SpeechPattern,
}

impl Member {
    pub fn publishes(&self) -> bool {
        self.publish_audio || self.video.is_some()
    }
}

/// Members who enter one room together (a conference room, a call, or a batch of viewers).
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub room: String,
    pub members: Vec<Member>,
}

impl Scenario {
    pub fn defaults(kind: ScenarioKind) -> Scenario {
        let layer = |s: &str| s.parse::<VideoLayer>().ok().into_iter().collect();
        let base = Scenario {
            kind,
            rooms: 1,
            room_size: 2,
            viewers: 0,
            viewer_protocol: ViewerProtocol::Ws,
            video_layers: layer("360p"),
            simulcast: false,
            talk_share: 0.5,
            talk_ms: 1_500,
            dtx: true,
            three_party_share: 0.5,
            ramp_step: 1,
            seed: 1,
        };
        match kind {
            ScenarioKind::AudioConference => Scenario {
                rooms: 4,
                room_size: 8,
                ..base
            },
            ScenarioKind::VideoConference => Scenario {
                rooms: 2,
                room_size: 5,
                ..base
            },
            ScenarioKind::Livestream => Scenario {
                viewers: 30,
                video_layers: layer("720p"),
                ramp_step: 10,
                ..base
            },
            ScenarioKind::ManySmallRooms => Scenario {
                rooms: 12,
                ramp_step: 2,
                ..base
            },
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.talk_share > 0.0 && self.talk_share <= 1.0,
            "--talk-share must be in (0, 1], got {}",
            self.talk_share
        );
        ensure!(
            (100..=60_000).contains(&self.talk_ms),
            "--talk-ms must be 100..=60000"
        );
        ensure!(
            (0.0..=1.0).contains(&self.three_party_share),
            "--three-party-share must be in [0, 1]"
        );
        ensure!(
            self.video_layers.len() == 1,
            "--video-layers takes one layer; for simulcast use --simulcast, which sends the \
             client's three-layer ladder (got {} layers)",
            self.video_layers.len()
        );
        for l in &self.video_layers {
            ensure!(
                (1..=60).contains(&l.fps) && (30..=20_000).contains(&l.kbps),
                "--video-layers {l}: fps must be 1..=60 and kbps 30..=20000"
            );
            ensure!(
                l.width >= 16 && l.height >= 16 && l.width <= 7_680 && l.height <= 4_320,
                "--video-layers {l}: width and height must be 16..=7680 x 16..=4320"
            );
        }
        match self.kind {
            ScenarioKind::AudioConference | ScenarioKind::VideoConference => {
                ensure!(
                    (2..=MAX_ROOM_SIZE).contains(&self.room_size),
                    "--room-size must be 2..={MAX_ROOM_SIZE}, got {}",
                    self.room_size
                );
                ensure!(self.rooms >= 1, "--rooms must be at least 1");
            }
            ScenarioKind::Livestream => {
                ensure!(self.viewers >= 1, "--viewers must be at least 1");
            }
            ScenarioKind::ManySmallRooms => ensure!(self.rooms >= 1, "--rooms must be at least 1"),
        }
        // Bounded before the plan is built: a typo like `--rooms 1000000000` must not allocate
        // a billion groups before it is refused.
        ensure!(
            self.rooms <= MAX_PARTICIPANTS,
            "--rooms must be at most {MAX_PARTICIPANTS}, got {}",
            self.rooms
        );
        ensure!(
            self.viewers <= MAX_PARTICIPANTS,
            "--viewers must be at most {MAX_PARTICIPANTS}, got {}",
            self.viewers
        );
        ensure!(
            (1..=MAX_PARTICIPANTS).contains(&self.ramp_step),
            "--ramp-step must be 1..={MAX_PARTICIPANTS}, got {}",
            self.ramp_step
        );
        let n = self.participants();
        ensure!(
            n <= MAX_PARTICIPANTS,
            "{n} participants is more than this tool simulates on one machine ({MAX_PARTICIPANTS})"
        );
        Ok(())
    }

    /// Participants of the fixed (non-ramp) run.
    pub fn participants(&self) -> usize {
        self.plan().iter().map(|g| g.members.len()).sum()
    }

    /// Streams each receiver gets per publisher.
    fn speech(&self, room: usize, index: usize) -> SpeechPattern {
        let talk = f64::from(self.talk_ms);
        let pause = talk * (1.0 - self.talk_share) / self.talk_share;
        let seed = self
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add((room as u64) << 20 | index as u64);
        SpeechPattern {
            mean_talk_ms: self.talk_ms,
            mean_pause_ms: pause.round().clamp(20.0, 3_600_000.0) as u32,
            dtx: self.dtx,
            seed,
            // Spread the starts so a room does not begin in chorus.
            start_talking: (seed >> 7) % 1_000 < (self.talk_share * 1_000.0) as u64,
        }
    }

    fn top_layer(&self) -> Option<VideoLayer> {
        self.video_layers.last().copied()
    }

    fn room_group(&self, room: usize, size: usize, video: bool) -> Group {
        let name = format!("{}-{room}", self.kind.name());
        Group {
            members: (0..size)
                .map(|i| Member {
                    identity: format!("r{room}p{i}"),
                    publish_audio: true,
                    video: if video { self.top_layer() } else { None },
                    subscribe: true,
                    whep_of: None,
                    simulcast: video && self.simulcast,
                    speech: self.speech(room, i),
                })
                .collect(),
            room: name,
        }
    }

    fn call_size(&self, index: usize) -> usize {
        let s = self.three_party_share;
        let three = ((index + 1) as f64 * s).floor() > (index as f64 * s).floor();
        if three { 3 } else { 2 }
    }

    /// The `index`-th group: a room, a call, or (livestream) the publisher then viewer batches
    /// of `batch` viewers (numbered from `first_viewer`).
    pub fn group(&self, index: usize, batch: usize, first_viewer: usize) -> Group {
        match self.kind {
            ScenarioKind::AudioConference => self.room_group(index, self.room_size, false),
            ScenarioKind::VideoConference => self.room_group(index, self.room_size, true),
            ScenarioKind::ManySmallRooms => self.room_group(index, self.call_size(index), true),
            ScenarioKind::Livestream => {
                let room = "livestream-0".to_string();
                if index == 0 {
                    return Group {
                        room,
                        members: vec![Member {
                            identity: "broadcaster".into(),
                            publish_audio: true,
                            video: self.top_layer(),
                            subscribe: false,
                            whep_of: None,
                            simulcast: self.simulcast,
                            speech: SpeechPattern {
                                // A presenter talks most of the time.
                                mean_talk_ms: 5_000,
                                mean_pause_ms: 500,
                                dtx: self.dtx,
                                seed: self.seed,
                                start_talking: true,
                            },
                        }],
                    };
                }
                let whep = self.viewer_protocol == ViewerProtocol::Whep;
                Group {
                    room,
                    members: (first_viewer..first_viewer + batch)
                        .map(|v| Member {
                            identity: format!("viewer{v}"),
                            publish_audio: false,
                            video: None,
                            subscribe: true,
                            whep_of: whep.then(|| "broadcaster".to_string()),
                            simulcast: false,
                            speech: SpeechPattern::default(),
                        })
                        .collect(),
                }
            }
        }
    }

    /// Every group of the fixed run.
    pub fn plan(&self) -> Vec<Group> {
        match self.kind {
            ScenarioKind::Livestream => {
                let mut groups = vec![self.group(0, 0, 0)];
                let mut v = 0;
                while v < self.viewers {
                    let batch = (self.viewers - v).min(10);
                    groups.push(self.group(groups.len(), batch, v));
                    v += batch;
                }
                groups
            }
            _ => (0..self.rooms).map(|r| self.group(r, 0, 0)).collect(),
        }
    }

    /// Groups a ramp adds at `step` (0-based). Step 0 of a livestream also brings the publisher.
    pub fn ramp_groups(&self, step: usize) -> Vec<Group> {
        match self.kind {
            ScenarioKind::Livestream => {
                let mut g = Vec::new();
                if step == 0 {
                    g.push(self.group(0, 0, 0));
                }
                g.push(self.group(step + 1, self.ramp_step, step * self.ramp_step));
                g
            }
            _ => (step * self.ramp_step..(step + 1) * self.ramp_step)
                .map(|r| self.group(r, 0, 0))
                .collect(),
        }
    }

    /// Forwarded streams (publisher track → receiver) of a set of groups with all members in.
    pub fn streams_of(groups: &[Group]) -> usize {
        let mut per_room: std::collections::BTreeMap<&str, (usize, usize, usize)> =
            Default::default();
        for g in groups {
            for m in &g.members {
                let e = per_room.entry(g.room.as_str()).or_default();
                let tracks = usize::from(m.publish_audio) + usize::from(m.video.is_some());
                e.0 += tracks;
                e.1 += usize::from(m.subscribe);
                e.2 += usize::from(m.subscribe) * tracks;
            }
        }
        // Everyone receives every track of the room but their own.
        per_room
            .values()
            .map(|(tracks, subs, own)| tracks * subs - own)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_parse_and_shape() {
        let l: VideoLayer = "720p".parse().unwrap();
        let s = l.shape();
        // 1.5 Mbit/s at 30 fps is 6,250 bytes a frame: 6 packets of 1,042 bytes.
        assert_eq!(
            (s.delta_packets, s.packet_size, s.key_packets),
            (6, 1_042, 30)
        );
        let c: VideoLayer = "320x240@15:200".parse().unwrap();
        assert_eq!((c.width, c.height, c.fps, c.kbps), (320, 240, 15, 200));
        assert!("huge".parse::<VideoLayer>().is_err());
        let tiny: VideoLayer = "180p".parse().unwrap();
        assert_eq!(tiny.shape().delta_packets, 2);
    }

    #[test]
    fn plans_have_the_promised_shape() {
        let a = Scenario::defaults(ScenarioKind::AudioConference);
        let plan = a.plan();
        assert_eq!(plan.len(), 4);
        assert!(plan.iter().all(|g| g.members.len() == 8));
        assert!(plan[0].members.iter().all(|m| m.video.is_none()));
        assert_eq!(Scenario::streams_of(&plan), 4 * 8 * 7);

        let mut l = Scenario::defaults(ScenarioKind::Livestream);
        l.viewers = 25;
        let plan = l.plan();
        assert_eq!(plan.len(), 4, "publisher + 10 + 10 + 5");
        assert_eq!(l.participants(), 26);
        assert_eq!(Scenario::streams_of(&plan), 25 * 2);

        let mut m = Scenario::defaults(ScenarioKind::ManySmallRooms);
        m.rooms = 10;
        let sizes: Vec<usize> = m.plan().iter().map(|g| g.members.len()).collect();
        assert_eq!(sizes.iter().filter(|s| **s == 3).count(), 5);
        assert_eq!(sizes.iter().filter(|s| **s == 2).count(), 5);
    }

    #[test]
    fn ramp_adds_groups() {
        let l = Scenario::defaults(ScenarioKind::Livestream);
        let s0 = l.ramp_groups(0);
        assert_eq!(s0.len(), 2);
        assert_eq!(s0[0].members[0].identity, "broadcaster");
        let s1 = l.ramp_groups(1);
        assert_eq!(s1.len(), 1);
        assert_eq!(s1[0].members[0].identity, "viewer10");
        let v = Scenario::defaults(ScenarioKind::VideoConference);
        assert_eq!(v.ramp_groups(3)[0].room, "video-conference-3");
    }

    #[test]
    fn absurd_parameters_are_refused() {
        let mut a = Scenario::defaults(ScenarioKind::AudioConference);
        a.room_size = 1;
        assert!(a.validate().is_err());
        a.room_size = 8;
        a.rooms = 1_000;
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("participants"), "{e}");
        a.rooms = 1_000_000_000_000;
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("--rooms"), "{e}");
        a.rooms = 1;
        a.ramp_step = usize::MAX;
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("--ramp-step"), "{e}");
        let mut v = Scenario::defaults(ScenarioKind::VideoConference);
        v.talk_share = 0.0;
        assert!(v.validate().is_err());
        let mut v = Scenario::defaults(ScenarioKind::VideoConference);
        v.video_layers = vec!["180p".parse().unwrap(), "720p".parse().unwrap()];
        assert!(
            v.validate()
                .unwrap_err()
                .to_string()
                .contains("--simulcast")
        );
        for k in [
            ScenarioKind::AudioConference,
            ScenarioKind::VideoConference,
            ScenarioKind::Livestream,
            ScenarioKind::ManySmallRooms,
        ] {
            Scenario::defaults(k).validate().unwrap();
        }
    }

    #[test]
    fn talk_share_sets_pauses() {
        let mut a = Scenario::defaults(ScenarioKind::AudioConference);
        a.talk_share = 0.25;
        a.talk_ms = 1_000;
        let p = a.speech(0, 0);
        assert_eq!((p.mean_talk_ms, p.mean_pause_ms), (1_000, 3_000));
    }
}
