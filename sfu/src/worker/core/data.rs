//! Data messages between participants (chat, reactions, hand raise): received on a sender's
//! data channel, checked against size and rate limits, and relayed on the recipients' channel
//! of the same reliability. The SFU reads only the envelope, never the payload.

use std::time::{Duration, Instant};

use moien_protocol::{
    DATA_CHANNEL_LOSSY, DataReceive, DataSend, ErrorCode, MAX_DATA_MESSAGE_BYTES, ServerMessage,
};
use str0m::channel::{ChannelData, ChannelId};

use super::WorkerCore;
use crate::api::ParticipantKind;
use crate::room::ParticipantId;
use crate::session::SessionId;

/// Messages a participant may send per second, with this burst.
const RATE_PER_SEC: f64 = 20.0;
const BURST: f64 = 40.0;

/// A token bucket per participant.
#[derive(Debug, Clone)]
pub(crate) struct DataLimiter {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for DataLimiter {
    fn default() -> Self {
        DataLimiter {
            tokens: BURST,
            last: None,
        }
    }
}

impl DataLimiter {
    /// Takes one message's token; false when the sender is over its rate.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last = Some(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * RATE_PER_SEC).min(BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl WorkerCore {
    pub(super) fn on_channel_data(&mut self, now: Instant, session_id: SessionId, cd: ChannelData) {
        let Some(session) = self.sessions.get(&session_id) else {
            return;
        };
        let lossy = session.channels.lossy == Some(cd.id);
        let pid = session.participant;
        let refuse = |core: &mut WorkerCore, code: ErrorCode, msg: &str| {
            core.stats.data_refused += 1;
            core.send_to(pid, ServerMessage::error(code, msg));
        };
        if cd.data.len() > MAX_DATA_MESSAGE_BYTES {
            refuse(self, ErrorCode::TooLarge, "data message over 16 KiB");
            return;
        }
        let Some(p) = self.participants.get_mut(&pid) else {
            return;
        };
        if !p.can_publish_data {
            refuse(
                self,
                ErrorCode::Forbidden,
                "the token has no publish_data grant",
            );
            return;
        }
        if !p.data_limiter.allow(now) {
            refuse(self, ErrorCode::RateLimited, "data messages too fast");
            return;
        }
        let msg: DataSend = match std::str::from_utf8(&cd.data)
            .ok()
            .and_then(|t| serde_json::from_str(t).ok())
        {
            Some(m) => m,
            None => {
                refuse(
                    self,
                    ErrorCode::BadRequest,
                    "data message is not a JSON envelope",
                );
                return;
            }
        };
        let Some(p) = self.participants.get(&pid) else {
            return;
        };
        let out = DataReceive {
            from: p.sid.clone(),
            identity: p.identity.clone(),
            topic: msg.topic,
            data: msg.data,
        };
        let Ok(bytes) = serde_json::to_vec(&out) else {
            return;
        };
        let room = p.room.clone();
        self.relay_data(now, &room, Some(pid), &msg.to, !lossy, &bytes);
    }

    /// Writes one data message to the room's participants (all but `from`, or those named in
    /// `to` by sid or identity) on the channel of the given reliability. Returns how many got it.
    pub(super) fn relay_data(
        &mut self,
        now: Instant,
        room: &str,
        from: Option<ParticipantId>,
        to: &[String],
        reliable: bool,
        bytes: &[u8],
    ) -> usize {
        let lossy = !reliable;
        let recipients: Vec<(ParticipantId, SessionId)> = self
            .rooms
            .get(room)
            .map(|r| {
                r.participants
                    .iter()
                    .filter(|&&id| Some(id) != from)
                    .filter_map(|id| self.participants.get(id).map(|q| (id, q)))
                    .filter(|(_, q)| q.kind == ParticipantKind::Regular)
                    .filter(|(_, q)| {
                        to.is_empty() || to.contains(&q.sid) || to.contains(&q.identity)
                    })
                    .filter_map(|(id, q)| q.subscriber.map(|s| (*id, s)))
                    .collect()
            })
            .unwrap_or_default();
        let mut delivered = 0;
        for (_, sid) in recipients {
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            let id: Option<ChannelId> = if lossy {
                s.channels.lossy
            } else {
                s.channels.reliable
            };
            let written = id
                .and_then(|id| s.rtc.channel(id))
                .is_some_and(|mut ch| ch.write(false, bytes).unwrap_or(false));
            if written {
                self.stats.data_messages += 1;
                delivered += 1;
            } else {
                // A full or closed channel: the recipient is not keeping up; drop for it only.
                self.stats.data_dropped += 1;
            }
            self.drain(sid, now);
        }
        delivered
    }
}

/// The data channels of a subscriber session.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Channels {
    pub reliable: Option<ChannelId>,
    pub lossy: Option<ChannelId>,
}

/// The configuration of the unreliable channel: unordered, no retransmission.
pub(crate) fn lossy_config() -> str0m::channel::ChannelConfig {
    str0m::channel::ChannelConfig {
        label: DATA_CHANNEL_LOSSY.to_string(),
        ordered: false,
        reliability: str0m::channel::Reliability::MaxRetransmits { retransmits: 0 },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = DataLimiter::default();
        let burst = (0..100).filter(|_| l.allow(t0)).count();
        assert_eq!(burst, BURST as usize);
        // One second later: RATE_PER_SEC more.
        let t1 = t0 + Duration::from_secs(1);
        let more = (0..100).filter(|_| l.allow(t1)).count();
        assert_eq!(more, RATE_PER_SEC as usize);
    }
}
