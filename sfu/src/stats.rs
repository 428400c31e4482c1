//! Counters a media worker keeps about itself (exported by the metrics layer).

/// Plain counters, owned by one worker thread; the node reads snapshots.
#[derive(Debug, Default, Clone)]
pub struct WorkerStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// Datagrams no session took: unknown address, garbage, failed ICE check.
    pub datagrams_dropped: u64,
    /// RTP packets received from publishers.
    pub packets_in: u64,
    /// RTP packets written to subscribers.
    pub packets_out: u64,
    pub unknown_pt: u64,
    pub keyframe_requests_in: u64,
    pub keyframe_requests_out: u64,
    pub slow_consumers: u64,
    pub layer_switches: u64,
    pub dynacast_updates: u64,
    /// Data messages relayed, dropped for a full recipient channel, refused (limits, grants).
    pub data_messages: u64,
    pub data_dropped: u64,
    pub data_refused: u64,
    pub send_errors: u64,
}
