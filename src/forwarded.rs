//! Client address: the socket peer, or — when the peer is a trusted proxy —
//! the first untrusted hop of `X-Forwarded-For` or `Forwarded`, walked from
//! the right. Malformed entries end the walk; nothing here panics or
//! allocates.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;
use serde::Deserialize;

/// The `X-Forwarded-For` header name.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// A network in `trusted_proxies`: a CIDR block or a bare address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// The first address of the block.
    pub fn network(&self) -> IpAddr {
        self.0.network()
    }

    /// The last address of the block.
    pub fn broadcast(&self) -> IpAddr {
        self.0.broadcast()
    }

    /// Whether `ip` lies inside this block.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }

    /// When `s` is a CIDR block with bits set past its prefix
    /// (`10.0.0.1/8`), what to tell its author: parsing clears those bits,
    /// so the whole block is used, which may not be what was meant.
    pub fn host_bits_warning(s: &str) -> Option<String> {
        let net = s.parse::<IpNet>().ok()?;
        let block = net.trunc();
        if block == net {
            return None;
        }
        let one = IpNet::from(net.addr());
        Some(format!(
            "`{s}` has host bits set, so it stands for all of {block}: \
             did you mean {block} (or {one} for the one address)?"
        ))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which header trusted proxies report the client address in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// The proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Cidr>,
    header: ClientIpHeader,
}

impl TrustedProxies {
    /// Trust `nets`, reading the client address from `header`.
    pub fn new(nets: Vec<Cidr>, header: ClientIpHeader) -> Self {
        TrustedProxies { nets, header }
    }

    /// Whether a connection from `ip` may report the client's address.
    pub fn trusts(&self, ip: &IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client address of a request that arrived from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(&peer) {
            return peer;
        }
        match self.header {
            ClientIpHeader::XForwardedFor => {
                let hops = headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .rev()
                    .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','))
                    .map(parse_xff_entry);
                self.walk(peer, hops)
            }
            ClientIpHeader::Forwarded => {
                let hops = headers
                    .get_all(FORWARDED)
                    .iter()
                    .rev()
                    .flat_map(|v| RevElements::new(v.as_bytes()))
                    .map(parse_forwarded_element);
                self.walk(peer, hops)
            }
        }
    }

    /// From a trusted `peer`, step left through `hops` (rightmost first)
    /// while the current address is trusted. A malformed hop stops the walk
    /// at the last address a trusted proxy vouched for.
    fn walk(&self, peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut client = peer;
        for hop in hops {
            if !self.trusts(&client) {
                break;
            }
            match hop {
                Some(ip) => client = ip.to_canonical(),
                None => break,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1` or
/// `[2001:db8::1]:80`, with optional surrounding blanks.
fn parse_xff_entry(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim_matches([' ', '\t']);
    parse_node(s)
}

/// An address with an optional port, IPv6 optionally in brackets.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return addr.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (addr, port) = s.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The `for=` node of one RFC 7239 element (`for=1.2.3.4;proto=https`).
/// Obfuscated identifiers and `unknown` are not addresses.
fn parse_forwarded_element(element: &[u8]) -> Option<IpAddr> {
    let element = std::str::from_utf8(element).ok()?;
    for pair in element.split(';') {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(quoted) => quoted.strip_suffix('"')?,
            None => value,
        };
        return parse_node(value);
    }
    None
}

/// How many `Forwarded` elements of one header line are read, rightmost
/// first. A walk that needs more stops at the last vouched address.
const MAX_FORWARDED_ELEMENTS: usize = 16;

/// The comma-separated elements of one `Forwarded` line, right to left,
/// splitting outside quoted strings only; found without allocating.
struct RevElements<'a> {
    line: &'a [u8],
    spans: [(usize, usize); MAX_FORWARDED_ELEMENTS],
    len: usize,
    truncated: bool,
}

impl<'a> RevElements<'a> {
    fn new(line: &'a [u8]) -> Self {
        let mut elements = RevElements {
            line,
            spans: [(0, 0); MAX_FORWARDED_ELEMENTS],
            len: 0,
            truncated: false,
        };
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (i, &b) in line.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    elements.push((start, i));
                    start = i + 1;
                }
                _ => {}
            }
        }
        elements.push((start, line.len()));
        elements
    }

    /// Keep the rightmost spans, forgetting the leftmost when full.
    fn push(&mut self, span: (usize, usize)) {
        if self.len == MAX_FORWARDED_ELEMENTS {
            self.spans.copy_within(1.., 0);
            self.len -= 1;
            self.truncated = true;
        }
        self.spans[self.len] = span;
        self.len += 1;
    }
}

impl<'a> Iterator for RevElements<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.len > 0 {
            self.len -= 1;
            let (start, end) = self.spans[self.len];
            return Some(&self.line[start..end]);
        }
        if self.truncated {
            // Elements beyond the window are unknown: an empty element
            // parses as no address and ends the walk.
            self.truncated = false;
            return Some(b"");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn proxies(nets: &[&str], header: ClientIpHeader) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect(), header)
    }

    #[test]
    fn host_bits_are_cleared_and_reported() {
        let net: Cidr = "10.0.0.1/8".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8", "the block is used");
        let w = Cidr::host_bits_warning("10.0.0.1/8").unwrap();
        assert!(
            w.contains("did you mean 10.0.0.0/8") && w.contains("10.0.0.1/32"),
            "{w}"
        );
        let w = Cidr::host_bits_warning("2001:db8::1/32").unwrap();
        assert!(w.contains("did you mean 2001:db8::/32"), "{w}");
        for clean in [
            "10.0.0.0/8",
            "10.0.0.1",
            "10.0.0.1/32",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::1",
            "not a network",
        ] {
            assert_eq!(Cidr::host_bits_warning(clean), None, "{clean}");
        }
    }

    fn headers(name: &str, values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let p = proxies(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        let h = headers(X_FORWARDED_FOR, &[b"1.1.1.1"]);
        assert_eq!(p.client_ip(ip("203.0.113.9"), &h), ip("203.0.113.9"));
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(ip("10.1.1.1"), &h), ip("10.1.1.1"));
    }

    #[test]
    fn walks_xff_right_to_left_skipping_trusted_hops() {
        let p = proxies(
            &["10.0.0.0/8", "192.168.1.1"],
            ClientIpHeader::XForwardedFor,
        );
        let h = headers(
            X_FORWARDED_FOR,
            &[b"6.6.6.6, 198.51.100.7", b"192.168.1.1 , 10.2.3.4"],
        );
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn all_trusted_chain_yields_leftmost() {
        let p = proxies(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        let h = headers(X_FORWARDED_FOR, &[b"10.9.9.9,10.8.8.8"]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.9.9.9"));
        let empty = HeaderMap::new();
        assert_eq!(p.client_ip(ip("10.0.0.1"), &empty), ip("10.0.0.1"));
    }

    #[test]
    fn malformed_entry_stops_at_last_vouched_address() {
        let p = proxies(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        for bad in [
            &b"1.1.1.1, garbage"[..],
            b"1.1.1.1,",
            b"1.1.1.1, 10.0.0.9:99999999",
            b"1.1.1.1, [::1",
            b"\xff\xfe",
            b",,,,",
            b"1.1.1.1, 999.1.1.1",
        ] {
            let h = headers(X_FORWARDED_FOR, &[bad]);
            let got = p.client_ip(ip("10.0.0.1"), &h);
            assert!(p.trusts(&got), "{bad:?} gave {got}");
        }
        // Garbage to the left of an untrusted hop is never reached.
        let h = headers(X_FORWARDED_FOR, &[b"garbage, 8.8.8.8"]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("8.8.8.8"));
    }

    #[test]
    fn xff_entries_with_ports_and_brackets() {
        let p = proxies(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        for (entry, want) in [
            (&b"198.51.100.7:4711"[..], "198.51.100.7"),
            (b"[2001:db8::7]:443", "2001:db8::7"),
            (b"2001:db8::7", "2001:db8::7"),
            (b"  \t198.51.100.7 ", "198.51.100.7"),
            (b"::ffff:198.51.100.7", "198.51.100.7"),
        ] {
            let h = headers(X_FORWARDED_FOR, &[entry]);
            assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip(want), "{entry:?}");
        }
    }

    #[test]
    fn ipv4_mapped_peer_is_matched_as_ipv4() {
        let p = proxies(&["127.0.0.1"], ClientIpHeader::XForwardedFor);
        let h = headers(X_FORWARDED_FOR, &[b"198.51.100.7"]);
        assert_eq!(p.client_ip(ip("::ffff:127.0.0.1"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn forwarded_header_rfc7239() {
        let p = proxies(&["10.0.0.0/8"], ClientIpHeader::Forwarded);
        let h = headers(
            "forwarded",
            &[br#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.1.1.1;by=10.0.0.1"#],
        );
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = headers("forwarded", &[b"for=unknown, for=10.1.1.1"]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.1.1.1"));
        let h = headers("forwarded", &[br#"for="_hidden", proto=http"#]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        let h = headers("forwarded", &[br#"for="1.2.3.4,5.6.7.8""#]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        // A chain longer than the window stops at the last vouched hop.
        let long = format!("for=1.1.1.1, {}", vec!["for=10.0.0.7"; 20].join(", "));
        let h = headers("forwarded", &[long.as_bytes()]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.7"));
        let h = headers("forwarded", &[b"for=1.1.1.1, for=10.0.0.7"]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("1.1.1.1"));
        // With forwarded configured, X-Forwarded-For is not read at all.
        let h = headers(X_FORWARDED_FOR, &[b"1.2.3.4"]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }
}
