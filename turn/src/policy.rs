//! Relay peer policy: which peer addresses a TURN allocation may reach.
//!
//! Owns the canonicalisation of every IPv6 encoding of an IPv4 address (v4-mapped,
//! v4-compatible, NAT64, 6to4, Teredo) and the default-deny table of notes/turn.md §3.1. The
//! order of checks is the security argument, so it lives in one function, [`RelayPolicy::check`]:
//!
//! 1. never: unspecified, multicast, broadcast/reserved 240/4, the server's own listeners;
//! 2. the operator's allow list (the SFU's media addresses) wins over everything below;
//! 3. loopback only behind the test-only switch;
//! 4. default deny (loopback, private, link-local, CGNAT, IANA special, translated forms);
//! 5. the operator's extra deny list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An address prefix such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A configured CIDR that cannot be parsed; startup must fail rather than open the relay.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid address or CIDR {0:?}")]
pub struct CidrError(pub String);

impl Cidr {
    pub const fn v4(a: [u8; 4], prefix: u8) -> Self {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    pub const fn v6(a: [u16; 8], prefix: u8) -> Self {
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(
                a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
            )),
            prefix,
        }
    }

    /// True if `ip` (of the same family) lies inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        // A v4-mapped entry is meant as the IPv4 address.
        let addr = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => {
                    return Ok(Cidr {
                        addr: IpAddr::V4(v4),
                        prefix: prefix - 96,
                    });
                }
                None => IpAddr::V6(v6),
            },
            a => a,
        };
        Ok(Cidr { addr, prefix })
    }
}

/// Why a peer was refused. Low-cardinality: used as a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    Multicast,
    Broadcast,
    Cgnat,
    Reserved,
    /// NAT64, 6to4, Teredo or v4-compatible forms.
    Translated,
    OwnAddress,
    Configured,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Unspecified => "unspecified",
            DenyReason::Loopback => "loopback",
            DenyReason::Private => "private",
            DenyReason::LinkLocal => "link_local",
            DenyReason::Multicast => "multicast",
            DenyReason::Broadcast => "broadcast",
            DenyReason::Cgnat => "cgnat",
            DenyReason::Reserved => "reserved",
            DenyReason::Translated => "translated",
            DenyReason::OwnAddress => "own_address",
            DenyReason::Configured => "configured",
        }
    }

    pub const ALL: [DenyReason; 11] = [
        DenyReason::Unspecified,
        DenyReason::Loopback,
        DenyReason::Private,
        DenyReason::LinkLocal,
        DenyReason::Multicast,
        DenyReason::Broadcast,
        DenyReason::Cgnat,
        DenyReason::Reserved,
        DenyReason::Translated,
        DenyReason::OwnAddress,
        DenyReason::Configured,
    ];
}

use DenyReason as R;

/// IPv4 ranges denied unless allow-listed (RFC 6890 and notes/turn.md §3.1).
const DENY_V4: &[(Cidr, DenyReason)] = &[
    (Cidr::v4([127, 0, 0, 0], 8), R::Loopback),
    (Cidr::v4([10, 0, 0, 0], 8), R::Private),
    (Cidr::v4([172, 16, 0, 0], 12), R::Private),
    (Cidr::v4([192, 168, 0, 0], 16), R::Private),
    (Cidr::v4([100, 64, 0, 0], 10), R::Cgnat),
    (Cidr::v4([169, 254, 0, 0], 16), R::LinkLocal),
    (Cidr::v4([192, 0, 0, 0], 24), R::Reserved),
    (Cidr::v4([192, 0, 2, 0], 24), R::Reserved),
    (Cidr::v4([198, 51, 100, 0], 24), R::Reserved),
    (Cidr::v4([203, 0, 113, 0], 24), R::Reserved),
    (Cidr::v4([198, 18, 0, 0], 15), R::Reserved),
    (Cidr::v4([192, 88, 99, 0], 24), R::Reserved),
    (Cidr::v4([192, 31, 196, 0], 24), R::Reserved),
    (Cidr::v4([192, 52, 193, 0], 24), R::Reserved),
    (Cidr::v4([192, 175, 48, 0], 24), R::Reserved),
];

/// IPv4 ranges that no configuration can open.
const NEVER_V4: &[(Cidr, DenyReason)] = &[
    (Cidr::v4([0, 0, 0, 0], 8), R::Unspecified),
    (Cidr::v4([224, 0, 0, 0], 4), R::Multicast),
    (Cidr::v4([255, 255, 255, 255], 32), R::Broadcast),
    (Cidr::v4([240, 0, 0, 0], 4), R::Reserved),
];

/// IPv6 ranges denied unless allow-listed.
const DENY_V6: &[(Cidr, DenyReason)] = &[
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), R::Loopback),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), R::LinkLocal),
    (Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), R::Private),
    (Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), R::Private),
    (Cidr::v6([0x0100, 0, 0, 0, 0, 0, 0, 0], 64), R::Reserved),
    (Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), R::Reserved),
    (Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), R::Reserved),
    (
        Cidr::v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48),
        R::Reserved,
    ),
    (Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), R::Reserved),
    (Cidr::v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), R::Reserved),
];

/// IPv6 ranges that no configuration can open. The translation prefixes are here because the
/// allow list is written in plain addresses: an operator who allows 10.0.0.5 has not allowed
/// `64:ff9b::a00:5`, and such peers are reachable through their plain form anyway.
const NEVER_V6: &[(Cidr, DenyReason)] = &[
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128), R::Unspecified),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), R::Multicast),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 96), R::Translated),
    (
        Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
        R::Translated,
    ),
    (
        Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        R::Translated,
    ),
    (Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), R::Translated),
    (Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), R::Translated),
];

/// Maps a v4-mapped IPv6 address to its IPv4 address; everything else is returned unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// IPv4 addresses embedded in an IPv6 address by the translation schemes, so that a denial
/// can name what the peer really is.
fn embedded_v4(v6: Ipv6Addr) -> [Option<Ipv4Addr>; 3] {
    let o = v6.octets();
    let seg = v6.segments();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let compat = (seg[..6] == [0; 6]).then_some(last);
    let nat64 = (seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then_some(last);
    let sixtofour = (seg[0] == 0x2002).then(|| Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    let teredo =
        (seg[0] == 0x2001 && seg[1] == 0).then(|| Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    [compat.or(nat64), sixtofour, teredo]
}

/// The peer policy of one server.
#[derive(Clone, Debug, Default)]
pub struct RelayPolicy {
    allow: Vec<Cidr>,
    /// Exact peer addresses (IP and port) always allowed: the SFU's media sockets, so a relayed
    /// call reaches the SFU on loopback or a private network without opening the whole range.
    allow_exact: Vec<SocketAddr>,
    deny: Vec<Cidr>,
    own: Vec<SocketAddr>,
    allow_loopback: bool,
}

impl RelayPolicy {
    /// `own` are the server's listener (and relay) socket addresses; an unspecified IP there
    /// matches the port on any address, since the server answers on all of them.
    pub fn new(
        allow: Vec<Cidr>,
        deny: Vec<Cidr>,
        own: Vec<SocketAddr>,
        allow_loopback: bool,
    ) -> Self {
        let own = own
            .into_iter()
            .map(|a| SocketAddr::new(canonical_ip(a.ip()), a.port()))
            .collect();
        RelayPolicy {
            allow,
            allow_exact: Vec::new(),
            deny,
            own,
            allow_loopback,
        }
    }

    /// Adds exact peer addresses (IP and port) that are always allowed.
    pub fn with_exact(mut self, exact: Vec<SocketAddr>) -> Self {
        self.allow_exact = exact
            .into_iter()
            .map(|a| SocketAddr::new(canonical_ip(a.ip()), a.port()))
            .collect();
        self
    }

    pub fn allow_loopback(&self) -> bool {
        self.allow_loopback
    }

    /// Decides whether a relay may send to `peer`.
    pub fn check(&self, peer: SocketAddr) -> Result<(), DenyReason> {
        let ip = canonical_ip(peer.ip());
        // 1. Never.
        if let Some(r) = never(ip) {
            return Err(r);
        }
        for own in &self.own {
            if own.port() == peer.port() && (own.ip() == ip || own.ip().is_unspecified()) {
                return Err(R::OwnAddress);
            }
        }
        // 2. Allow lists: exact media addresses, then ranges.
        if self.allow_exact.contains(&SocketAddr::new(ip, peer.port())) {
            return Ok(());
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        // 3-4. Default deny, with the test-only loopback exception.
        if let Some(r) = default_deny(ip)
            && !(r == R::Loopback && self.allow_loopback)
        {
            return Err(r);
        }
        // 5. Extra deny list.
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Err(R::Configured);
        }
        Ok(())
    }
}

fn first_match(table: &[(Cidr, DenyReason)], ip: IpAddr) -> Option<DenyReason> {
    table.iter().find(|(c, _)| c.contains(ip)).map(|(_, r)| *r)
}

fn never(ip: IpAddr) -> Option<DenyReason> {
    match ip {
        IpAddr::V4(_) => first_match(NEVER_V4, ip),
        IpAddr::V6(v6) => {
            // ::1 sits inside the v4-compatible ::/96 but is plain loopback (step 3-4).
            if v6 == Ipv6Addr::LOCALHOST {
                return None;
            }
            let r = first_match(NEVER_V6, ip)?;
            if r != R::Translated {
                return Some(r);
            }
            // Name the embedded address's problem when it has one (e.g. 6to4 of 127.0.0.1).
            for v4 in embedded_v4(v6).into_iter().flatten() {
                let v4 = IpAddr::V4(v4);
                if let Some(inner) = first_match(NEVER_V4, v4).or_else(|| first_match(DENY_V4, v4))
                {
                    return Some(inner);
                }
            }
            Some(R::Translated)
        }
    }
}

fn default_deny(ip: IpAddr) -> Option<DenyReason> {
    match ip {
        IpAddr::V4(_) => first_match(DENY_V4, ip),
        IpAddr::V6(_) => first_match(DENY_V6, ip),
    }
}

/// Peer addresses the default policy must refuse: every encoding named in issue 3's
/// acceptance, then the translated and special forms of notes/turn.md §3.1. Shared by the unit
/// and integration suites.
pub const DENIED_EXAMPLES: &[&str] = &[
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "::1",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "fe80::1",
    "fc00::1",
    "224.0.0.1",
    "255.255.255.255",
    "::ffff:0.0.0.0",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::1",
    "2002:7f00:1::",
    "2002:a9fe:a9fe::1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
    "2001:db8::1",
    "ff02::1",
    "fec0::1",
    "100::1",
    "192.0.2.1",
    "198.18.0.1",
    "240.0.0.1",
    "3fff::1",
    "5f00::1",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_media_addresses_open_one_port_only() {
        let p = RelayPolicy::new(vec![], vec![], vec![], false)
            .with_exact(vec!["127.0.0.1:7882".parse().unwrap()]);
        assert!(p.check("127.0.0.1:7882".parse().unwrap()).is_ok());
        assert!(p.check("[::ffff:127.0.0.1]:7882".parse().unwrap()).is_ok());
        assert_eq!(
            p.check("127.0.0.1:7880".parse().unwrap()),
            Err(DenyReason::Loopback)
        );
    }

    fn sa(s: &str) -> SocketAddr {
        let ip: IpAddr = s.parse().unwrap();
        SocketAddr::new(ip, 5000)
    }

    fn strict() -> RelayPolicy {
        RelayPolicy::new(
            vec![],
            vec![],
            vec!["127.0.0.1:3478".parse().unwrap()],
            false,
        )
    }

    #[test]
    fn every_encoding_is_denied_by_default() {
        let p = strict();
        for s in DENIED_EXAMPLES {
            assert!(p.check(sa(s)).is_err(), "{s} must be denied");
        }
    }

    #[test]
    fn public_addresses_allowed() {
        let p = strict();
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "80.90.40.1",
        ] {
            assert_eq!(p.check(sa(s)), Ok(()), "{s}");
        }
    }

    #[test]
    fn reasons_are_specific_for_mapped_and_translated_forms() {
        let p = strict();
        assert_eq!(p.check(sa("::ffff:127.0.0.1")), Err(R::Loopback));
        assert_eq!(p.check(sa("::ffff:7f00:1")), Err(R::Loopback));
        assert_eq!(p.check(sa("64:ff9b::7f00:1")), Err(R::Loopback));
        assert_eq!(p.check(sa("2002:a9fe:a9fe::1")), Err(R::LinkLocal));
        assert_eq!(p.check(sa("2002:0808:0808::1")), Err(R::Translated));
        assert_eq!(p.check(sa("::")), Err(R::Unspecified));
        assert_eq!(p.check(sa("0.0.0.0")), Err(R::Unspecified));
        assert_eq!(p.check(sa("169.254.169.254")), Err(R::LinkLocal));
        assert_eq!(p.check(sa("100.64.0.1")), Err(R::Cgnat));
        assert_eq!(p.check(sa("255.255.255.255")), Err(R::Broadcast));
        assert_eq!(p.check(sa("224.0.0.1")), Err(R::Multicast));
    }

    #[test]
    fn own_listener_denied_even_with_loopback_switch_and_allow_list() {
        let p = RelayPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap()],
            vec![],
            vec![
                "127.0.0.1:3478".parse().unwrap(),
                "0.0.0.0:5349".parse().unwrap(),
            ],
            true,
        );
        assert_eq!(
            p.check("127.0.0.1:3478".parse().unwrap()),
            Err(R::OwnAddress)
        );
        assert_eq!(
            p.check("[::ffff:127.0.0.1]:3478".parse().unwrap()),
            Err(R::OwnAddress)
        );
        assert_eq!(p.check("8.8.8.8:5349".parse().unwrap()), Err(R::OwnAddress));
        assert_eq!(p.check("127.0.0.1:3479".parse().unwrap()), Ok(()));
    }

    #[test]
    fn loopback_switch_opens_loopback_only() {
        let p = RelayPolicy::new(vec![], vec![], vec![], true);
        assert_eq!(p.check(sa("127.0.0.1")), Ok(()));
        assert_eq!(p.check(sa("::1")), Ok(()));
        assert_eq!(p.check(sa("::ffff:127.0.0.1")), Ok(()));
        assert!(p.check(sa("10.0.0.1")).is_err());
        assert!(p.check(sa("0.0.0.0")).is_err());
        assert!(p.check(sa("::")).is_err());
        assert!(p.check(sa("169.254.169.254")).is_err());
    }

    #[test]
    fn allow_list_wins_for_private_but_not_for_never() {
        let p = RelayPolicy::new(
            vec![
                "10.1.2.0/24".parse().unwrap(),
                "fd00::5".parse().unwrap(),
                "0.0.0.0/0".parse().unwrap(),
            ],
            vec![],
            vec![],
            false,
        );
        assert_eq!(p.check(sa("10.1.2.7")), Ok(()));
        assert_eq!(p.check(sa("::ffff:10.1.2.7")), Ok(()));
        assert_eq!(p.check(sa("fd00::5")), Ok(()));
        assert!(p.check(sa("fd00::6")).is_err());
        assert!(p.check(sa("0.0.0.0")).is_err());
        assert!(p.check(sa("224.0.0.1")).is_err());
        assert!(p.check(sa("255.255.255.255")).is_err());
        assert!(p.check(sa("64:ff9b::a01:207")).is_err());
    }

    #[test]
    fn extra_deny_list_applies_to_public_addresses() {
        let p = RelayPolicy::new(vec![], vec!["8.8.0.0/16".parse().unwrap()], vec![], false);
        assert_eq!(p.check(sa("8.8.8.8")), Err(R::Configured));
        assert_eq!(p.check(sa("::ffff:8.8.8.8")), Err(R::Configured));
        assert_eq!(p.check(sa("9.9.9.9")), Ok(()));
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/8".parse::<Cidr>().is_ok());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        let c: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(c.contains("10.9.9.9".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
    }
}
