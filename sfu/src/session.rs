//! One peer connection: its str0m `Rtc`, how it is negotiated, and what its m-lines carry.
//!
//! Sessions are built off the packet path (an `Rtc` costs about a millisecond of CPU to
//! construct) by [`RtcFactory`] and handed to the worker that owns the room.

use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::SdpPendingOffer;
use str0m::config::DtlsCert;
use str0m::media::Mid;
use str0m::rtp::{Extension, Ssrc};
use str0m::{Candidate, IceCreds, Rtc, RtcConfig};

use crate::dependency_descriptor::{self, DdSerializer};

/// Our id for the Dependency Descriptor extension (str0m's standard map leaves 12 free); an
/// offer's own id wins in the answer.
const DD_EXTENSION_ID: u8 = 12;

/// Where bandwidth estimation starts for a sending session: enough for a few base layers and
/// audio, so a call starts quickly, low enough not to flood a weak link.
pub(crate) const INITIAL_BWE_BPS: u64 = 1_000_000;

/// Node-wide unique session id (allocated off the worker, so it is global, not per worker).
pub type SessionId = u64;

/// What a peer connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRole {
    /// Client offers; carries the participant's published tracks to us.
    Publisher,
    /// We offer; carries the participant's subscriptions to it.
    Subscriber,
    /// WHEP: client offers recvonly m-lines; we fill them with one participant's tracks.
    Whep,
}

impl SessionRole {
    pub fn sends(self) -> bool {
        !matches!(self, SessionRole::Publisher)
    }
}

/// A session built off the packet path, ready to be adopted by a worker.
pub struct PreparedSession {
    pub(crate) id: SessionId,
    pub(crate) role: SessionRole,
    pub(crate) rtc: Box<Rtc>,
    pub(crate) ufrag: String,
}

impl std::fmt::Debug for PreparedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSession")
            .field("id", &self.id)
            .field("role", &self.role)
            .finish()
    }
}

/// Reports, feedback, NACK checks and estimator updates of all sessions fall due on one grid of
/// this step (str0m patch 5), so a worker wakes once per step for all of them rather than once
/// per session and timer. Pacing and handshakes keep exact deadlines.
const TIMER_GRANULARITY: Duration = Duration::from_millis(5);

/// Builds `Rtc`s from one template: ICE-lite, RTP mode, a shared DTLS certificate.
#[derive(Clone)]
pub struct RtcFactory {
    template: RtcConfig,
}

impl RtcFactory {
    pub fn new() -> Self {
        // One certificate for the node: per-Rtc key generation would double construction cost.
        let provider = str0m::crypto::from_feature_flags();
        let mut template = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, true)
            .enable_vp8(true)
            .enable_vp9(true)
            .enable_h264(true)
            .enable_av1(true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .set_timer_granularity(Some(TIMER_GRANULARITY))
            // Audio goes without transport-wide sequence numbers and absolute send time, as
            // Firefox sends it: the estimate exists to choose video layers, and audio is
            // forwarded whatever it says. Per forwarded audio copy that saves a TWCC register
            // entry, an estimator update and the subscriber's feedback about it
            // (docs/PERFORMANCE.md, "Fifteenth pass").
            .set_audio_in_estimate(false)
            // Layers of AV1 (and of any encrypted stream) come from this header extension.
            .set_extension(
                DD_EXTENSION_ID,
                Extension::with_serializer(dependency_descriptor::URI, DdSerializer),
            );
        if let Some(cert) = provider.dtls_provider.generate_certificate() {
            template = template.set_dtls_cert(cert);
        }
        RtcFactory { template }
    }

    /// The node's DTLS certificate, if one was pre-generated.
    pub fn dtls_cert(&self) -> Option<&DtlsCert> {
        self.template.dtls_cert()
    }

    /// Builds one session advertising `candidates` (the owning worker's addresses).
    pub fn build(
        &self,
        id: SessionId,
        role: SessionRole,
        candidates: &[SocketAddr],
        now: Instant,
    ) -> PreparedSession {
        let creds = IceCreds::new();
        let ufrag = creds.ufrag.clone();
        let mut config = self.template.clone().set_local_ice_credentials(creds);
        if role.sends() {
            // Pacing exists only with BWE on (str0m #368); it also feeds layer allocation.
            config = config.enable_bwe(Some(Bitrate::bps(INITIAL_BWE_BPS)));
        }
        let mut rtc = config.build(now);
        for addr in candidates {
            if let Ok(c) = Candidate::host(*addr, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        PreparedSession {
            id,
            role,
            rtc: Box::new(rtc),
            ufrag,
        }
    }
}

impl Default for RtcFactory {
    fn default() -> Self {
        Self::new()
    }
}

/// A session adopted by a worker.
pub(crate) struct Session {
    pub role: SessionRole,
    pub participant: u64,
    pub rtc: Box<Rtc>,
    pub ufrag: String,
    /// Credentials of earlier ICE generations (restarts), still routed until the session ends.
    pub old_ufrags: Vec<String>,
    /// Remote addresses learned for this session (bounded), to clean the demux map.
    pub addrs: Vec<SocketAddr>,
    /// Deadline `poll_output` last asked for.
    pub timeout: Option<Instant>,
    pub connected: bool,
    pub connected_at: Option<Instant>,
    pub disconnected_since: Option<Instant>,
    /// When the session first had a complete negotiation; the connect timeout runs from here.
    pub negotiated_at: Option<Instant>,
    /// Negotiated RTX payload types (bit `pt` set), to count retransmissions on the wire.
    pub rtx_pts: u128,
    /// Retransmission history of this session's subscriptions, from its round-trip time.
    pub rtx_history: std::time::Duration,
    /// Subscriber sessions: our outstanding offer, and whether more changes wait for it.
    pub pending_offer: Option<SdpPendingOffer>,
    pub offer_sent_at: Option<Instant>,
    pub needs_offer: bool,
    /// The next subscribe offer restarts ICE (after a resume).
    pub ice_restart: bool,
    /// Subscriber sessions: the data channels went out in an offer, and their ids.
    pub channel_added: bool,
    pub channels: crate::worker::core::Channels,
    /// m-lines whose subscriptions ended and that the next offer stops.
    pub to_stop: Vec<Mid>,
    /// Publisher sessions: mid → track id.
    pub recv_tracks: FxHashMap<Mid, u64>,
    /// Publisher sessions: SSRC → (track id, layer) cache (str0m reports packets by SSRC).
    pub ssrc_tracks: FxHashMap<Ssrc, (u64, usize)>,
    /// Sending sessions: mid → subscription id.
    pub send_subs: FxHashMap<Mid, u64>,
    /// WHEP sessions: the client's recvonly m-lines in offer order.
    pub whep_slots: Vec<(Mid, moien_protocol::TrackKind)>,
    /// Set when str0m returned an error or panicked: the session is removed.
    pub failed: bool,
    /// Last cumulative NACK counts str0m reported per stream (egress: true).
    pub nack_counts: HashMap<(Mid, Option<str0m::media::Rid>, bool), u64>,
    /// Sending sessions: the bandwidth estimate toward the client, bit/s.
    pub bwe_bps: u64,
    pub last_allocation: Option<Instant>,
    /// What the last allocation used, and until when an upgrade is protected from dips.
    pub last_used_bps: u64,
    pub upgrade_hold_until: Option<Instant>,
    /// (used, desired) last given to the estimator, to call it only on change.
    pub bwe_target: Option<(u64, u64)>,
    /// How long the padding target has covered the next upgrade.
    pub sustain: crate::allocator::Sustain,
}

/// Most remote addresses one session keeps in the demux map (ICE restarts and roaming add more).
pub(crate) const MAX_ADDRS_PER_SESSION: usize = 8;

/// Whether an SRTP datagram is an RTP packet whose payload type is in `pts` (the RTP header
/// is in the clear; RTCP's packet types 200-206 share the byte with marker + payload type).
pub fn is_rtp_with_pt(data: &[u8], pts: u128) -> bool {
    match data {
        [b0, b1, ..] if b0 >> 6 == 2 && !(200..=206).contains(b1) => {
            pts & (1u128 << (b1 & 0x7f)) != 0
        }
        _ => false,
    }
}

impl Session {
    pub fn new(prepared: PreparedSession, participant: u64) -> Self {
        Session {
            role: prepared.role,
            participant,
            rtc: prepared.rtc,
            ufrag: prepared.ufrag,
            old_ufrags: Vec::new(),
            addrs: Vec::new(),
            timeout: None,
            connected: false,
            connected_at: None,
            disconnected_since: None,
            negotiated_at: None,
            rtx_pts: 0,
            rtx_history: crate::worker::core::rtx_history(None),
            pending_offer: None,
            offer_sent_at: None,
            needs_offer: false,
            ice_restart: false,
            channel_added: false,
            channels: Default::default(),
            to_stop: Vec::new(),
            recv_tracks: FxHashMap::default(),
            ssrc_tracks: FxHashMap::default(),
            send_subs: FxHashMap::default(),
            whep_slots: Vec::new(),
            failed: false,
            nack_counts: HashMap::new(),
            bwe_bps: INITIAL_BWE_BPS,
            last_allocation: None,
            last_used_bps: 0,
            upgrade_hold_until: None,
            bwe_target: None,
            sustain: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use str0m::RtcConfig;
    use str0m::change::SdpOffer;
    use str0m::media::{Direction, MediaKind, Mid, Rid};

    use super::{RtcFactory, SessionRole};

    /// The extensions that only feed a bandwidth estimator.
    const ESTIMATOR_URIS: [&str; 2] = ["transport-wide-cc", "abs-send-time"];

    /// The `m=` sections of an SDP, each with its media kind.
    fn sections(sdp: &str) -> Vec<(String, String)> {
        sdp.split("\r\nm=")
            .skip(1)
            .map(|s| (s.split(' ').next().unwrap_or("").to_string(), s.to_string()))
            .collect()
    }

    /// Per section: its kind, and whether it has each of the estimator's extensions.
    fn estimator_exts_by_kind(sdp: &str) -> Vec<(String, [bool; 2])> {
        sections(sdp)
            .into_iter()
            .map(|(kind, body)| (kind, ESTIMATOR_URIS.map(|u| body.contains(u))))
            .collect()
    }

    fn kinds(audio: bool, video: bool) -> Vec<(String, [bool; 2])> {
        vec![
            ("audio".to_string(), [audio; 2]),
            ("video".to_string(), [video; 2]),
        ]
    }

    /// What the node offers a subscriber: transport-wide sequence numbers and absolute send
    /// time on video only.
    #[test]
    fn subscriber_offers_carry_estimator_extensions_on_video_only() {
        let now = Instant::now();
        let mut session = RtcFactory::new().build(1, SessionRole::Subscriber, &[], now);
        let mut api = session.rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, _) = api.apply().expect("an offer");
        assert_eq!(
            estimator_exts_by_kind(&offer.to_sdp_string()),
            kinds(false, true)
        );
    }

    /// A publisher that offers them on audio too (as Chrome does) is answered without them
    /// there, so its audio comes without them and no feedback is made for it.
    #[test]
    fn publisher_answers_take_estimator_extensions_on_video_only() {
        let now = Instant::now();
        let mut peer = RtcConfig::new().build(now);
        let mut api = peer.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        let offer_sdp = offer.to_sdp_string();
        assert_eq!(estimator_exts_by_kind(&offer_sdp), kinds(true, true));

        let mut session = RtcFactory::new().build(2, SessionRole::Publisher, &[], now);
        let offer = SdpOffer::from_sdp_string(&offer_sdp).expect("the offer parses");
        let answer = session
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .expect("an answer");
        assert_eq!(
            estimator_exts_by_kind(&answer.to_sdp_string()),
            kinds(false, true)
        );
        peer.sdp_api()
            .accept_answer(pending, answer)
            .expect("the peer takes the answer");
    }

    /// str0m patch 6 (ids built without a `String`) keeps upstream's rules: one byte per char,
    /// ASCII alphanumerics kept, anything else '_', cut at the id's length.
    #[test]
    fn ids_from_header_strings_keep_upstreams_rules() {
        assert_eq!(&*Mid::from("0"), "0");
        assert_eq!(&*Mid::from("video-1"), "video_1");
        assert_eq!(&*Mid::from("é1"), "_1");
        assert_eq!(&*Mid::from("abcdefghijklmnopqrst"), "abcdefghijklmnop");
        assert_eq!(&*Rid::from("q"), "q");
        assert_eq!(&*Rid::from("h i"), "h_i");
        assert_eq!(&*Rid::from(""), "");
    }
}
