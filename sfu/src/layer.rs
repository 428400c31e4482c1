//! Per-subscription layer selection: which simulcast layer (or SVC spatial/temporal layers) a
//! subscriber receives, switching only where its decoder can follow.
//!
//! Simulcast layers are separate streams; a switch happens on the first packet of a keyframe
//! of the target layer, and until then the current layer keeps flowing. SVC layers share one
//! stream; packets above the target are dropped, and going up waits for a keyframe or a switch
//! point the Dependency Descriptor marks.

/// What the selector decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    /// Forward; `switched` means this packet starts a new source (rebase numbering).
    Forward {
        switched: bool,
    },
}

/// Simulcast: one of several independent streams.
#[derive(Debug, Clone, Default)]
pub struct SimulcastSelector {
    current: Option<usize>,
    target: Option<usize>,
}

impl SimulcastSelector {
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// `None` pauses at once; a layer is switched to at its next keyframe.
    pub fn set_target(&mut self, target: Option<usize>) {
        self.target = target;
        if target.is_none() {
            self.current = None;
        }
    }

    /// Whether the selector waits for a keyframe of the target layer.
    pub fn needs_keyframe(&self) -> bool {
        self.target.is_some() && self.current != self.target
    }

    pub fn on_packet(&mut self, layer: usize, keyframe_start: bool) -> Verdict {
        if self.target == Some(layer) && self.current != self.target && keyframe_start {
            self.current = Some(layer);
            return Verdict::Forward { switched: true };
        }
        if self.current == Some(layer) {
            Verdict::Forward { switched: false }
        } else {
            Verdict::Drop
        }
    }
}

/// SVC: spatial and temporal layers of one stream, described per packet by the codec's payload
/// descriptor (VP9) or the Dependency Descriptor.
#[derive(Debug, Clone, Default)]
pub struct SvcSelector {
    /// Highest (spatial, temporal) forwarded.
    current: Option<(u8, u8)>,
    target: Option<(u8, u8)>,
}

/// What the descriptor says of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvcPacket {
    pub spatial: u8,
    pub temporal: u8,
    /// First packet of a picture (its lowest spatial layer frame begins here).
    pub start_of_frame: bool,
    /// A keyframe (the picture depends on no earlier picture).
    pub keyframe: bool,
    /// A switch point: layers above this one may be added from here on.
    pub switch_point: bool,
}

impl SvcSelector {
    pub fn current(&self) -> Option<(u8, u8)> {
        self.current
    }

    pub fn target(&self) -> Option<(u8, u8)> {
        self.target
    }

    pub fn set_target(&mut self, target: Option<(u8, u8)>) {
        self.target = target;
        match (self.current, target) {
            (_, None) => self.current = None,
            // Dropping layers needs no decoder help: apply at once. Adding waits (on_packet).
            (Some((cs, ct)), Some((ts, tt))) => self.current = Some((cs.min(ts), ct.min(tt))),
            _ => {}
        }
    }

    pub fn needs_keyframe(&self) -> bool {
        match (self.current, self.target) {
            (None, Some(_)) => true,
            (Some((cs, _)), Some((ts, _))) => ts > cs,
            _ => false,
        }
    }

    pub fn on_packet(&mut self, p: SvcPacket) -> Verdict {
        let Some((ts, tt)) = self.target else {
            return Verdict::Drop;
        };
        let mut switched = false;
        match self.current {
            None => {
                if !(p.keyframe && p.start_of_frame) {
                    return Verdict::Drop;
                }
                self.current = Some((ts, tt));
                switched = true;
            }
            Some((cs, ct)) => {
                // Up in space only at a keyframe: with K-SVC (L3T3_KEY) the upper layers refer
                // to the lower ones only at keyframes. (The descriptor's U bit is a temporal
                // switch point, not a spatial one.)
                if ts > cs && p.start_of_frame && p.keyframe {
                    self.current = Some((ts, tt));
                } else if tt > ct
                    && p.start_of_frame
                    && (p.keyframe || p.temporal == 0 || p.switch_point)
                {
                    // Up in time from a base-layer picture (nothing after it refers back past it)
                    // or a declared switch point.
                    self.current = Some((cs, tt));
                }
            }
        }
        let Some((cs, ct)) = self.current else {
            return Verdict::Drop;
        };
        if p.spatial <= cs && p.temporal <= ct {
            Verdict::Forward { switched }
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulcast_switches_only_on_target_keyframe() {
        let mut s = SimulcastSelector::default();
        s.set_target(Some(2));
        assert!(s.needs_keyframe());
        assert_eq!(s.on_packet(2, false), Verdict::Drop);
        assert_eq!(s.on_packet(0, true), Verdict::Drop);
        assert_eq!(s.on_packet(2, true), Verdict::Forward { switched: true });
        assert_eq!(s.on_packet(2, false), Verdict::Forward { switched: false });
        assert!(!s.needs_keyframe());
        // Down to layer 0: layer 2 keeps flowing until layer 0's keyframe.
        s.set_target(Some(0));
        assert_eq!(s.on_packet(2, false), Verdict::Forward { switched: false });
        assert_eq!(s.on_packet(0, false), Verdict::Drop);
        assert_eq!(s.on_packet(0, true), Verdict::Forward { switched: true });
        assert_eq!(s.on_packet(2, false), Verdict::Drop);
        assert_eq!(s.current(), Some(0));
    }

    #[test]
    fn simulcast_pause_is_immediate() {
        let mut s = SimulcastSelector::default();
        s.set_target(Some(1));
        s.on_packet(1, true);
        s.set_target(None);
        assert_eq!(s.on_packet(1, true), Verdict::Drop);
        assert!(!s.needs_keyframe());
    }

    fn pkt(spatial: u8, temporal: u8, keyframe: bool) -> SvcPacket {
        SvcPacket {
            spatial,
            temporal,
            start_of_frame: true,
            keyframe,
            switch_point: false,
        }
    }

    #[test]
    fn svc_filters_layers_above_the_target() {
        let mut s = SvcSelector::default();
        s.set_target(Some((1, 1)));
        assert_eq!(
            s.on_packet(pkt(0, 0, false)),
            Verdict::Drop,
            "waits for a keyframe"
        );
        assert_eq!(
            s.on_packet(pkt(0, 0, true)),
            Verdict::Forward { switched: true }
        );
        assert_eq!(
            s.on_packet(pkt(1, 0, false)),
            Verdict::Forward { switched: false }
        );
        assert_eq!(
            s.on_packet(pkt(1, 1, false)),
            Verdict::Forward { switched: false }
        );
        assert_eq!(s.on_packet(pkt(1, 2, false)), Verdict::Drop);
        assert_eq!(s.on_packet(pkt(2, 0, false)), Verdict::Drop);
        // Down is immediate.
        s.set_target(Some((0, 0)));
        assert_eq!(s.on_packet(pkt(1, 0, false)), Verdict::Drop);
        assert_eq!(s.on_packet(pkt(0, 1, false)), Verdict::Drop);
        assert_eq!(
            s.on_packet(pkt(0, 0, false)),
            Verdict::Forward { switched: false }
        );
        // Up in space waits for a keyframe, not for a temporal switch point.
        s.set_target(Some((2, 2)));
        assert!(s.needs_keyframe());
        assert_eq!(s.on_packet(pkt(2, 0, false)), Verdict::Drop);
        let mut sp = pkt(0, 0, false);
        sp.switch_point = true;
        assert_eq!(s.on_packet(sp), Verdict::Forward { switched: false });
        assert_eq!(
            s.current(),
            Some((0, 2)),
            "temporal up, spatial still waits"
        );
        assert_eq!(
            s.on_packet(pkt(0, 0, true)),
            Verdict::Forward { switched: false }
        );
        assert_eq!(s.current(), Some((2, 2)));
    }

    #[test]
    fn svc_temporal_up_waits_for_a_base_layer_picture() {
        let mut s = SvcSelector::default();
        s.set_target(Some((0, 2)));
        s.on_packet(pkt(0, 0, true));
        s.set_target(Some((0, 0)));
        assert_eq!(s.on_packet(pkt(0, 2, false)), Verdict::Drop);
        assert_eq!(s.on_packet(pkt(0, 1, false)), Verdict::Drop);
        s.set_target(Some((0, 2)));
        // A TL2 picture right after the request still refers to dropped frames.
        assert_eq!(s.on_packet(pkt(0, 2, false)), Verdict::Drop);
        assert_eq!(
            s.on_packet(pkt(0, 0, false)),
            Verdict::Forward { switched: false }
        );
        assert_eq!(
            s.on_packet(pkt(0, 2, false)),
            Verdict::Forward { switched: false }
        );
        assert_eq!(s.current(), Some((0, 2)));
    }
}
