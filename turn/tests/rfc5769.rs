//! RFC 5769 STUN test vectors (and RFC 8489 Appendix B.1 for MESSAGE-INTEGRITY-SHA256):
//! each is parsed byte-exactly, its integrity and fingerprint verified, and re-encoded.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use turn::auth::long_term_key;
use turn::stun::{Class, Message, MessageBuilder, attr, decode_xor_address, method};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
const TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.1.
fn sample_request() -> Vec<u8> {
    hex(
        "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e20746573
         7420636c69656e74002400046e0001ff80290008932ff9b151263b3600060009
         6576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249
         c1b571a280280004e57a3bcf",
    )
}

/// RFC 5769 §2.2.
fn sample_ipv4_response() -> Vec<u8> {
    hex(
        "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563
         746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f9
         2af9ba53f06be7d780280004c07d4c96",
    )
}

/// RFC 5769 §2.3.
fn sample_ipv6_response() -> Vec<u8> {
    hex(
        "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563
         746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014
         a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c",
    )
}

/// RFC 5769 §2.4.
fn sample_long_term_request() -> Vec<u8> {
    hex(
        "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383
         aae38383e382afe382b900000015001c662f2f3439396b39353464364f4c3334
         6f4c394653547679363473410014000b6578616d706c652e6f72670000080014
         f67024656dd64a3e02b8e0712e85c9a28ca89666",
    )
}

const USERNAME_LT: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";

#[test]
fn sample_request_parses_verifies_and_reencodes() {
    let v = sample_request();
    assert_eq!(v.len(), 108);
    let m = Message::parse(&v).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Request, method::BINDING));
    assert_eq!(m.transaction_id(), TID);
    assert_eq!(m.get(attr::SOFTWARE), Some(&b"STUN test client"[..]));
    assert_eq!(m.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
    assert_eq!(m.get(attr::PRIORITY), Some(&[0x6e, 0x00, 0x01, 0xff][..]));
    assert!(m.has(attr::ICE_CONTROLLED));
    assert!(m.fingerprint_ok());
    assert!(m.verify_integrity(SHORT_TERM_PASSWORD));
    assert!(!m.verify_integrity(b"wrong"));

    let mut out = Vec::new();
    MessageBuilder::new(&mut out, method::BINDING, Class::Request, TID)
        .attr(attr::SOFTWARE, b"STUN test client")
        .attr(attr::PRIORITY, &[0x6e, 0x00, 0x01, 0xff])
        .attr(attr::ICE_CONTROLLED, &hex("932ff9b151263b36"))
        .attr_with_padding(attr::USERNAME, b"evtj:h6vY", b' ')
        .integrity(SHORT_TERM_PASSWORD)
        .fingerprint();
    assert_eq!(out, v);
}

fn check_response(v: &[u8], mapped: &str) {
    let m = Message::parse(v).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Success, method::BINDING));
    assert_eq!(m.get(attr::SOFTWARE), Some(&b"test vector"[..]));
    let mapped: SocketAddr = mapped.parse().unwrap();
    let got = decode_xor_address(m.get(attr::XOR_MAPPED_ADDRESS).unwrap(), &TID).unwrap();
    assert_eq!(got, mapped);
    assert!(m.fingerprint_ok());
    assert!(m.verify_integrity(SHORT_TERM_PASSWORD));

    let mut out = Vec::new();
    MessageBuilder::new(&mut out, method::BINDING, Class::Success, TID)
        .attr_with_padding(attr::SOFTWARE, b"test vector", b' ')
        .xor_address(attr::XOR_MAPPED_ADDRESS, mapped)
        .integrity(SHORT_TERM_PASSWORD)
        .fingerprint();
    assert_eq!(out, v);
}

#[test]
fn ipv4_response_vector() {
    let v = sample_ipv4_response();
    assert_eq!(v.len(), 80);
    check_response(&v, "192.0.2.1:32853");
}

#[test]
fn ipv6_response_vector() {
    let v = sample_ipv6_response();
    assert_eq!(v.len(), 92);
    check_response(&v, "[2001:db8:1234:5678:11:2233:4455:6677]:32853");
}

#[test]
fn sample_request_with_long_term_authentication() {
    let v = sample_long_term_request();
    assert_eq!(v.len(), 116);
    let m = Message::parse(&v).unwrap();
    assert_eq!(m.get(attr::USERNAME), Some(USERNAME_LT.as_bytes()));
    assert_eq!(
        m.get(attr::NONCE),
        Some(&b"f//499k954d6OL34oL9FSTvy64sA"[..])
    );
    assert_eq!(m.get(attr::REALM), Some(&b"example.org"[..]));
    assert!(!m.has_fingerprint());
    // The password after SASLprep is "TheMatrIX" (RFC 5769 §2.4).
    let key = long_term_key(USERNAME_LT.as_bytes(), b"example.org", b"TheMatrIX");
    assert!(m.verify_integrity(&key));
    assert!(!m.verify_integrity(&long_term_key(
        USERNAME_LT.as_bytes(),
        b"example.org",
        b"thematrix"
    )));

    let tid: [u8; 12] = v[8..20].try_into().unwrap();
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, method::BINDING, Class::Request, tid)
        .attr(attr::USERNAME, USERNAME_LT.as_bytes())
        .attr(attr::NONCE, b"f//499k954d6OL34oL9FSTvy64sA")
        .attr(attr::REALM, b"example.org")
        .integrity(&key);
    assert_eq!(out, v);
}

/// RFC 8489 Appendix B.1 (with erratum 6268): MESSAGE-INTEGRITY-SHA256 with the SHA-256
/// password algorithm, key = SHA-256(username ":" realm ":" password).
#[test]
fn rfc8489_sha256_vector() {
    let v = hex(
        "000100902112a44278ad3433c6ad72c029da412e001e00204a3cf38fef6992bd
         a952c6780417da0f24819415569e60b205c46e41407f1704001500296f624d61
         744a6f733241414143662f2f3439396b39353464364f4c33346f4c3946535476
         79363473410000000014000b6578616d706c652e6f726700001d000400020000
         001c0020b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278c
         c6518e65",
    );
    assert_eq!(v.len(), 164);
    let m = Message::parse(&v).unwrap();
    assert!(m.has_integrity_sha256());
    let mut h = Sha256::new();
    h.update(USERNAME_LT.as_bytes());
    h.update(b":example.org:TheMatrIX");
    let key = h.finalize();
    assert!(m.verify_integrity(&key));
    assert!(!m.verify_integrity(&key[..16]));
}
