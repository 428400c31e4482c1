//! Fuzz target: STUN message parsing, integrity and fingerprint checks, attribute decoders,
//! ChannelData parsing and the TCP framer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use turn::framing::{ChannelData, frame_len};
use turn::stun::{self, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        assert_eq!(
            usize::from(u16::from_be_bytes([data[2], data[3]])) + stun::HEADER_LEN,
            data.len()
        );
        let tid = m.transaction_id();
        let types: Vec<u16> = m.attribute_types().collect();
        for t in types {
            let v = m.get(t).expect("listed attribute readable");
            let _ = stun::decode_xor_address(v, &tid);
            let _ = stun::decode_address(v);
            let _ = stun::decode_error_code(v);
        }
        let _ = m.fingerprint_ok();
        let _ = m.verify_integrity(b"key");
    }
    if let Some(cd) = ChannelData::parse(data) {
        assert!(cd.data.len() + 4 <= data.len());
    }
    if let Ok(Some(n)) = frame_len(data) {
        assert!(n <= data.len());
    }
});
