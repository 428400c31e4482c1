//! Which session a datagram belongs to: learned remote addresses first, then the ICE ufrag of a
//! STUN request from a new address. Never a scan over sessions.

use std::collections::HashMap;
use std::net::SocketAddr;

use str0m::ice::StunMessage;

use crate::session::SessionId;

/// Where a datagram goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Session(SessionId),
    Drop,
}

#[derive(Default)]
pub struct Demux {
    by_addr: HashMap<SocketAddr, SessionId>,
    by_ufrag: HashMap<String, SessionId>,
}

impl Demux {
    pub fn route(&self, source: SocketAddr, data: &[u8]) -> Route {
        if let Some(id) = self.by_addr.get(&source) {
            return Route::Session(*id);
        }
        // Only STUN may open a new 5-tuple (RFC 7983: first byte 0..=3).
        if data.len() < 20 || data[0] > 3 {
            return Route::Drop;
        }
        let Ok(msg) = StunMessage::parse(data) else {
            return Route::Drop;
        };
        // USERNAME is "<our ufrag>:<their ufrag>"; str0m checks MESSAGE-INTEGRITY later.
        let Some((local, _remote)) = msg.split_username() else {
            return Route::Drop;
        };
        match self.by_ufrag.get(local) {
            Some(id) => Route::Session(*id),
            None => Route::Drop,
        }
    }

    pub fn register_ufrag(&mut self, ufrag: String, id: SessionId) {
        self.by_ufrag.insert(ufrag, id);
    }

    /// Called once str0m accepted a datagram from `source` for `id`.
    pub fn learn(&mut self, source: SocketAddr, id: SessionId) {
        self.by_addr.insert(source, id);
    }

    pub fn forget(&mut self, ufrag: &str, addrs: &[SocketAddr]) {
        if let Some(id) = self.by_ufrag.remove(ufrag) {
            for a in addrs {
                if self.by_addr.get(a) == Some(&id) {
                    self.by_addr.remove(a);
                }
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (self.by_addr.len(), self.by_ufrag.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::ice::TransId;

    fn binding(username: &str) -> Vec<u8> {
        let msg = StunMessage::binding_request(username, TransId::new(), true, 1, 1, false);
        let mut buf = vec![0u8; 1500];
        // Integrity is str0m's job after routing; any MAC will do here.
        let n = msg
            .to_bytes(Some(b"pass"), &mut buf, |_, _| [0u8; 20])
            .unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn routes_by_ufrag_then_by_address() {
        let mut d = Demux::default();
        d.register_ufrag("abcd".into(), 7);
        let src: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(d.route(src, &binding("abcd:zzzz")), Route::Session(7));
        assert_eq!(d.route(src, &binding("nope:zzzz")), Route::Drop);
        // RTP from an unknown address is dropped until the address is learned.
        let rtp = [0x80u8; 40];
        assert_eq!(d.route(src, &rtp), Route::Drop);
        d.learn(src, 7);
        assert_eq!(d.route(src, &rtp), Route::Session(7));
        d.forget("abcd", &[src]);
        assert_eq!(d.route(src, &rtp), Route::Drop);
        assert_eq!(d.len(), (0, 0));
    }

    #[test]
    fn garbage_is_dropped() {
        let d = Demux::default();
        let src: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(d.route(src, &[]), Route::Drop);
        assert_eq!(d.route(src, &[0u8; 19]), Route::Drop);
        let mut junk = [0u8; 64];
        junk[0] = 1;
        assert_eq!(d.route(src, &junk), Route::Drop);
    }
}
