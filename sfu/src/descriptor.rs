//! Per-packet SVC descriptors as the layer selector sees them, and the VP9 RTP payload descriptor
//! (RFC 9628 §4.2): spatial and temporal layer of a packet, picture boundaries and switch points.
//! The descriptor is written by the packetizer after any frame encryption, so reading it never
//! touches end-to-end encrypted bytes. The Dependency Descriptor extension
//! ([`crate::dependency_descriptor`]) yields the same description for AV1.

use crate::layer::SvcPacket;

/// What one packet's descriptor (VP9 payload descriptor or Dependency Descriptor) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvcDescriptor {
    pub layers: SvcPacket,
    /// Last packet of this spatial layer's frame (E bit).
    pub end_of_layer_frame: bool,
    /// Whether the stream has layers (VP9: the L bit; DD: a structure with more than one
    /// layer); without them it has one spatial and one temporal layer.
    pub has_layers: bool,
}

/// Parses the descriptor at the start of a VP9 RTP payload.
pub fn parse_vp9(payload: &[u8]) -> Option<SvcDescriptor> {
    let b0 = *payload.first()?;
    let i_bit = b0 & 0x80 != 0;
    let p_bit = b0 & 0x40 != 0;
    let l_bit = b0 & 0x20 != 0;
    let f_bit = b0 & 0x10 != 0;
    let b_bit = b0 & 0x08 != 0;
    let e_bit = b0 & 0x04 != 0;
    let mut i = 1;
    if i_bit {
        let m = *payload.get(i)?;
        i += if m & 0x80 != 0 { 2 } else { 1 };
    }
    let (mut tid, mut sid, mut u_bit) = (0u8, 0u8, false);
    if l_bit {
        let l = *payload.get(i)?;
        tid = l >> 5;
        u_bit = l & 0x10 != 0;
        sid = (l >> 1) & 0x07;
        // Non-flexible mode carries TL0PICIDX after the layer byte.
        i += if f_bit { 1 } else { 2 };
        payload.get(i - 1)?;
    }
    Some(SvcDescriptor {
        layers: SvcPacket {
            spatial: sid,
            temporal: tid,
            start_of_frame: b_bit && sid == 0,
            keyframe: !p_bit && b_bit && sid == 0,
            switch_point: u_bit,
        },
        end_of_layer_frame: e_bit,
        has_layers: l_bit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flexible_mode_layers() {
        // I=1 (15-bit picture id), L=1, F=1, B=1, P=0: a keyframe of spatial 0, temporal 0.
        let key = [0b1011_1000, 0x80, 0x01, 0b0001_0000, 0xAA, 0xBB];
        let d = parse_vp9(&key).unwrap();
        assert!(d.has_layers);
        assert!(d.layers.keyframe && d.layers.start_of_frame);
        assert_eq!((d.layers.spatial, d.layers.temporal), (0, 0));
        // P=1, B=0, E=1, TID=2, U=1, SID=1.
        let delta = [0b1111_0100, 0x05, 0b0101_0010, 0xCC];
        let d = parse_vp9(&delta).unwrap();
        assert!(!d.layers.keyframe && !d.layers.start_of_frame && d.end_of_layer_frame);
        assert_eq!((d.layers.spatial, d.layers.temporal), (1, 2));
        assert!(d.layers.switch_point);
    }

    #[test]
    fn non_flexible_mode_and_truncation() {
        // L=1, F=0: layer byte then TL0PICIDX.
        let p = [0b0010_1000, 0b0010_0000, 0x07, 0x00];
        let d = parse_vp9(&p).unwrap();
        assert_eq!(d.layers.temporal, 1);
        assert!(
            parse_vp9(&[0b0010_1000, 0b0010_0000]).is_none(),
            "TL0PICIDX missing"
        );
        assert!(parse_vp9(&[]).is_none());
        assert!(parse_vp9(&[0x80]).is_none(), "picture id missing");
    }
}
