//! The Dependency Descriptor RTP header extension (AV1 RTP specification, appendix A): the
//! spatial and temporal layer of each packet, frame boundaries and switch points, for any codec
//! (Chromium sends it with AV1, and with VP9 when negotiated). It travels in the RTP header, outside
//! end-to-end encrypted payloads, so it is how an SFU reads layers of an encrypted AV1 stream.
//!
//! Keyframes carry the template structure; later packets name a template by id, so the structure
//! of the last keyframe is kept per publisher track and handed back to [`parse`].

use std::sync::Arc;

use str0m::rtp::{ExtensionSerializer, ExtensionValues};

use crate::descriptor::SvcDescriptor;
use crate::layer::SvcPacket;

/// The extension's URI in SDP.
pub const URI: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/// Decode target indication of a frame for one decode target (table A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dti {
    NotPresent,
    Discardable,
    Switch,
    Required,
}

impl Dti {
    fn from_bits(v: u32) -> Dti {
        match v {
            0 => Dti::NotPresent,
            1 => Dti::Discardable,
            2 => Dti::Switch,
            _ => Dti::Required,
        }
    }
}

/// One frame template of a structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub spatial: u8,
    pub temporal: u8,
    pub dtis: Vec<Dti>,
    /// Frame-number differences of the frames this template's frames depend on.
    pub fdiffs: Vec<u8>,
}

/// The template dependency structure a keyframe carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure {
    pub template_id_offset: u8,
    pub decode_targets: usize,
    pub templates: Vec<Template>,
}

impl Structure {
    fn max_layers(&self) -> (u8, u8) {
        let s = self.templates.iter().map(|t| t.spatial).max().unwrap_or(0);
        let t = self.templates.iter().map(|t| t.temporal).max().unwrap_or(0);
        (s, t)
    }
}

/// What one packet's descriptor says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub start_of_frame: bool,
    pub end_of_frame: bool,
    pub frame_number: u16,
    pub spatial: u8,
    pub temporal: u8,
    /// A switch point of every decode target the frame belongs to: a subscriber may add layers
    /// here. (Conservative: a frame that is a switch point of only some targets is not one.)
    pub switch_point: bool,
    /// Whether the frame depends on no earlier frame.
    pub independent: bool,
    /// The structure this packet carried (keyframes), to keep for the packets that follow.
    pub structure: Option<Arc<Structure>>,
}

impl Frame {
    /// The layer selector's view of this packet, with the structure it was parsed against.
    pub fn svc(&self, structure: &Structure) -> SvcDescriptor {
        let (max_s, max_t) = structure.max_layers();
        SvcDescriptor {
            layers: SvcPacket {
                spatial: self.spatial,
                temporal: self.temporal,
                start_of_frame: self.start_of_frame && self.spatial == 0,
                keyframe: self.independent && self.spatial == 0,
                switch_point: self.switch_point,
            },
            end_of_layer_frame: self.end_of_frame,
            has_layers: max_s > 0 || max_t > 0,
        }
    }
}

/// Why a descriptor could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdError {
    Truncated,
    /// The packet names a template but no structure has been seen (joined mid-stream).
    NoStructure,
    UnknownTemplate,
}

struct Bits<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn f(&mut self, n: u32) -> Result<u32, DdError> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.buf.get(self.pos / 8).ok_or(DdError::Truncated)?;
            let bit = (byte >> (7 - (self.pos % 8))) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }

    fn flag(&mut self) -> Result<bool, DdError> {
        Ok(self.f(1)? == 1)
    }

    /// Non-symmetric unsigned value in 0..n (appendix A, `ns(n)`).
    fn ns(&mut self, n: u32) -> Result<u32, DdError> {
        let mut w = 0;
        let mut x = n;
        while x != 0 {
            x >>= 1;
            w += 1;
        }
        let m = (1u32 << w) - n;
        let v = self.f(w - 1)?;
        if v < m {
            return Ok(v);
        }
        let extra = self.f(1)?;
        Ok((v << 1) - m + extra)
    }
}

/// At most this many templates (the id is 6 bits) and decode targets (5 bits).
const MAX_TEMPLATES: usize = 64;

fn parse_structure(b: &mut Bits<'_>) -> Result<Structure, DdError> {
    let template_id_offset = b.f(6)? as u8;
    let dt_cnt = b.f(5)? as usize + 1;
    let mut layers = Vec::new();
    let (mut spatial, mut temporal) = (0u8, 0u8);
    loop {
        if layers.len() >= MAX_TEMPLATES {
            return Err(DdError::Truncated);
        }
        layers.push((spatial, temporal));
        match b.f(2)? {
            0 => {}
            1 => temporal = temporal.saturating_add(1),
            2 => {
                temporal = 0;
                spatial = spatial.saturating_add(1);
            }
            _ => break,
        }
    }
    let mut templates: Vec<Template> = layers
        .into_iter()
        .map(|(spatial, temporal)| Template {
            spatial,
            temporal,
            dtis: Vec::with_capacity(dt_cnt),
            fdiffs: Vec::new(),
        })
        .collect();
    for t in &mut templates {
        for _ in 0..dt_cnt {
            t.dtis.push(Dti::from_bits(b.f(2)?));
        }
    }
    for t in &mut templates {
        while b.flag()? {
            if t.fdiffs.len() >= 16 {
                return Err(DdError::Truncated);
            }
            t.fdiffs.push(b.f(4)? as u8 + 1);
        }
    }
    // Chains: read past them (the SFU does not track chains).
    let chain_cnt = b.ns(dt_cnt as u32 + 1)?;
    if chain_cnt > 0 {
        for _ in 0..dt_cnt {
            b.ns(chain_cnt)?;
        }
        for _ in &templates {
            for _ in 0..chain_cnt {
                b.f(4)?;
            }
        }
    }
    if b.flag()? {
        let max_spatial = templates.iter().map(|t| t.spatial).max().unwrap_or(0);
        for _ in 0..=max_spatial {
            b.f(32)?;
        }
    }
    Ok(Structure {
        template_id_offset,
        decode_targets: dt_cnt,
        templates,
    })
}

/// Parses one packet's descriptor against the last structure seen on its stream.
pub fn parse(buf: &[u8], known: Option<&Arc<Structure>>) -> Result<Frame, DdError> {
    let mut b = Bits { buf, pos: 0 };
    let start_of_frame = b.flag()?;
    let end_of_frame = b.flag()?;
    let template_id = b.f(6)? as u8;
    let frame_number = b.f(16)? as u16;
    let mut structure = None;
    let (mut custom_dtis, mut custom_fdiffs) = (false, false);
    if buf.len() > 3 {
        let structure_present = b.flag()?;
        let active_present = b.flag()?;
        custom_dtis = b.flag()?;
        custom_fdiffs = b.flag()?;
        let _custom_chains = b.flag()?;
        if structure_present {
            structure = Some(Arc::new(parse_structure(&mut b)?));
        }
        if active_present {
            let dt = structure
                .as_ref()
                .or(known)
                .ok_or(DdError::NoStructure)?
                .decode_targets;
            b.f(dt as u32)?;
        }
    }
    let s = structure.as_ref().or(known).ok_or(DdError::NoStructure)?;
    let index = (usize::from(template_id) + 64 - usize::from(s.template_id_offset)) % 64;
    let template = s.templates.get(index).ok_or(DdError::UnknownTemplate)?;
    // Per packet: no allocation, the frame's indications are only folded into one flag.
    let is_switch = |d: Dti| d == Dti::NotPresent || d == Dti::Switch;
    let switch_point = if custom_dtis {
        let mut all = true;
        for _ in 0..s.decode_targets {
            all &= is_switch(Dti::from_bits(b.f(2)?));
        }
        all
    } else {
        template.dtis.iter().all(|d| is_switch(*d))
    };
    let independent = if custom_fdiffs {
        // A list of (2-bit size, value) entries ended by size 0: empty means no dependency.
        b.f(2)? == 0
    } else {
        template.fdiffs.is_empty()
    };
    Ok(Frame {
        start_of_frame,
        end_of_frame,
        frame_number,
        spatial: template.spatial,
        temporal: template.temporal,
        switch_point,
        independent,
        structure,
    })
}

/// The raw extension bytes of a received packet, kept in str0m's user values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDd(pub Vec<u8>);

/// Registers the extension with str0m so it is negotiated, its bytes reach the SFU, and the SFU
/// can pass them on. Forwarding copies the descriptor unchanged for single-stream SVC: the
/// subscriber needs it to assemble the frames of each spatial layer, and frames it does not get
/// are ones nothing it gets depends on. Simulcast streams go without it (their frame numbers would
/// jump at every switch).
#[derive(Debug)]
pub struct DdSerializer;

impl ExtensionSerializer for DdSerializer {
    fn write_to(&self, buf: &mut [u8], ev: &ExtensionValues) -> usize {
        match ev.user_values.get::<RawDd>() {
            Some(RawDd(raw)) if raw.len() <= buf.len() && raw.len() <= 255 => {
                buf[..raw.len()].copy_from_slice(raw);
                raw.len()
            }
            _ => 0,
        }
    }

    fn requires_two_byte_form(&self, ev: &ExtensionValues) -> bool {
        ev.user_values
            .get::<RawDd>()
            .is_some_and(|RawDd(raw)| raw.len() > 16)
    }

    fn parse_value(&self, buf: &[u8], ev: &mut ExtensionValues) -> bool {
        if buf.len() < 3 {
            return false;
        }
        ev.user_values.set(RawDd(buf.to_vec()));
        true
    }

    fn is_video(&self) -> bool {
        true
    }

    fn is_audio(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes bits most significant first, as the descriptor is laid out.
    #[derive(Default)]
    struct Writer {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl Writer {
        fn f(&mut self, n: u32, v: u32) -> &mut Self {
            for i in (0..n).rev() {
                if self.bits.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                let bit = ((v >> i) & 1) as u8;
                let last = self.bytes.len() - 1;
                self.bytes[last] |= bit << (7 - (self.bits % 8));
                self.bits += 1;
            }
            self
        }
    }

    /// L1T3 with one template per layer: T0 "SSS" (no dependency: the keyframe's), T1 "-DS"
    /// two frames back, T2 "--D" one back; decode targets up to T0, T1 and T2; no chains.
    fn l1t3_keyframe(offset: u8, frame_number: u16) -> Vec<u8> {
        let mut w = Writer::default();
        w.f(1, 1)
            .f(1, 1)
            .f(6, u32::from(offset))
            .f(16, u32::from(frame_number));
        // structure present, no active targets, no custom dtis/fdiffs/chains
        w.f(1, 1).f(1, 0).f(1, 0).f(1, 0).f(1, 0);
        w.f(6, u32::from(offset)).f(5, 2);
        // layers: T0, next temporal (T1), next temporal (T2), end
        w.f(2, 1).f(2, 1).f(2, 3);
        for d in [[2, 2, 2], [0, 1, 2], [0, 0, 1]] {
            for v in d {
                w.f(2, v);
            }
        }
        w.f(1, 0);
        w.f(1, 1).f(4, 1).f(1, 0);
        w.f(1, 1).f(4, 0).f(1, 0);
        // chain count ns(4) = 0
        w.f(2, 0);
        // no resolutions
        w.f(1, 0);
        w.bytes
    }

    fn short(template_id: u8, frame_number: u16, start: bool, end: bool) -> Vec<u8> {
        let mut w = Writer::default();
        w.f(1, u32::from(start))
            .f(1, u32::from(end))
            .f(6, u32::from(template_id))
            .f(16, u32::from(frame_number));
        w.bytes
    }

    #[test]
    fn keyframe_structure_then_templates() {
        let kf = parse(&l1t3_keyframe(0, 100), None).unwrap();
        let s = kf.structure.clone().expect("structure");
        assert_eq!(s.decode_targets, 3);
        assert_eq!(s.templates.len(), 3);
        assert!(kf.independent);
        let svc = kf.svc(&s);
        assert!(svc.layers.keyframe && svc.layers.start_of_frame && svc.has_layers);
        assert_eq!((svc.layers.spatial, svc.layers.temporal), (0, 0));

        let t2 = parse(&short(2, 101, true, true), Some(&s)).unwrap();
        assert_eq!((t2.spatial, t2.temporal), (0, 2));
        assert!(!t2.independent);
        assert!(!t2.svc(&s).layers.switch_point, "T2 is discardable");
        let t1 = parse(&short(1, 102, true, false), Some(&s)).unwrap();
        assert_eq!(t1.temporal, 1);
        assert!(!t1.end_of_frame);
        assert!(!t1.svc(&s).layers.switch_point, "discardable for T1");
        let t0 = parse(&short(0, 104, true, true), Some(&s)).unwrap();
        assert!(t0.svc(&s).layers.switch_point);
        assert!(t0.independent, "template 0 lists no dependency");
    }

    #[test]
    fn template_ids_wrap_around_the_offset() {
        let frame = parse(&l1t3_keyframe(62, 7), None).unwrap();
        let s = frame.structure.unwrap();
        assert_eq!(s.template_id_offset, 62);
        // id 63 is index 1 (T1), id 0 index 2 (T2), id 1 names nothing.
        assert_eq!(
            parse(&short(63, 8, true, true), Some(&s)).unwrap().temporal,
            1
        );
        assert_eq!(
            parse(&short(0, 9, true, true), Some(&s)).unwrap().temporal,
            2
        );
        assert_eq!(
            parse(&short(1, 9, true, true), Some(&s)),
            Err(DdError::UnknownTemplate)
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(
            parse(&short(0, 1, true, true), None),
            Err(DdError::NoStructure)
        );
        assert_eq!(parse(&[0x80], None), Err(DdError::Truncated));
        let kf = l1t3_keyframe(0, 1);
        for n in 0..kf.len() {
            let _ = parse(&kf[..n], None);
        }
        // Random bytes never panic.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            let len = (x % 40) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse(&buf, None);
        }
    }
}
