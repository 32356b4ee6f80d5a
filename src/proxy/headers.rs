//! Header surgery at the proxy boundary: hop-by-hop headers (RFC 9110
//! §7.6.1), forwarding headers, and usher's own labels.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::BytesMut;

use http::Version;
use http::header::{CONNECTION, COOKIE, HOST, HeaderMap, HeaderName, HeaderValue, TE, UPGRADE};

use crate::config::Labels;
use crate::verdict::Verdict;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `value` (a comma-separated header) lists `token`, ignoring case.
fn lists_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket).
pub fn is_upgrade_request(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(UPGRADE)
        && lists_token(headers, &CONNECTION, "upgrade")
}

/// Headers that are hop-by-hop whatever `Connection` lists. Names are
/// matched as text: a length test rejects most at once.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// Remove every header `doomed` picks. Names are compared, not hashed, so
/// a map holding none of them (the usual case) costs one pass and no
/// lookups.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|n| doomed(n)).cloned() {
        headers.remove(&name);
    }
}

/// Remove hop-by-hop headers, including every header the `Connection`
/// header names. `TE: trailers` survives; with `keep_upgrade`, `Upgrade`
/// and `Connection: upgrade` survive for a protocol switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut found = false;
    let mut trailers = false;
    // Names `Connection` lists; `close` and `keep-alive` (the usual
    // tokens) need no allocation, the `Keep-Alive` header goes anyway.
    let mut listed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if name == CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") || token.eq_ignore_ascii_case(b"keep-alive")
                {
                    continue;
                }
                let Ok(name) = HeaderName::from_bytes(token) else {
                    continue;
                };
                // `Host` is needed end to end; nobody may strip it this way.
                if name == HOST || (keep_upgrade && name == UPGRADE) {
                    continue;
                }
                listed.push(name);
            }
        } else if name == TE {
            trailers |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        }
        found |= is_hop_by_hop(name);
    }
    // Names `Connection` lists go by name (a client chooses how many, and
    // may repeat them); `TE` listed there goes whole, as a hop-by-hop
    // header it names.
    if listed.contains(&TE) {
        trailers = false;
    }
    for name in &listed {
        headers.remove(name);
    }
    if found {
        remove_where(headers, |name| {
            is_hop_by_hop(name) && !(keep_upgrade && name == UPGRADE)
        });
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Headers in which some client, CDN or proxy reports a client address.
/// usher alone tells the upstream who the client is, so all are removed.
fn reports_client_address(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "forwarded"
            | "x-real-ip"
            | "true-client-ip"
            | "x-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "x-cluster-client-ip"
    )
}

/// Headers describing the original request's scheme, host, port or path;
/// believed only from trusted proxies.
fn describes_origin(name: &HeaderName) -> bool {
    name.as_str()
        .strip_prefix("x-forwarded-")
        .is_some_and(|rest| {
            matches!(
                rest,
                "proto" | "host" | "port" | "prefix" | "scheme" | "ssl"
            )
        })
}

static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Tell the upstream who the client is and how it reached usher.
///
/// `X-Forwarded-For` becomes `client` (or `client, peer` when a trusted
/// proxy reported the client) and `X-Real-IP` the client: nothing a client
/// wrote about addresses survives, so an upstream reading either header,
/// from either end, gets the address usher classified. Every other
/// address-reporting header, `Forwarded` included, is removed. Scheme and
/// host headers are kept from trusted proxies and replaced otherwise.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    client: IpAddr,
    peer: IpAddr,
    peer_trusted: bool,
    host: Option<HeaderValue>,
) {
    remove_where(headers, |name| {
        reports_client_address(name) || (!peer_trusted && describes_origin(name))
    });
    let mut chain = IpText::new(client);
    if let Ok(value) = HeaderValue::from_bytes(chain.as_bytes()) {
        headers.insert(X_REAL_IP.clone(), value);
    }
    if client != peer {
        chain.push(b',');
        chain.push(b' ');
        chain.push_ip(peer);
    }
    if let Ok(value) = HeaderValue::from_bytes(chain.as_bytes()) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers
        .entry(X_FORWARDED_PROTO.clone())
        .or_insert(HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.entry(X_FORWARDED_HOST.clone()).or_insert(host);
    }
}

/// One or two addresses as text, without the formatting machinery:
/// `X-Forwarded-For` is written on every request.
struct IpText {
    buf: [u8; 2 * 39 + 2],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut text = IpText {
            buf: [0; 2 * 39 + 2],
            len: 0,
        };
        text.push_ip(ip);
        text
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn push_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    if octet >= 100 {
                        self.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        self.push(b'0' + octet / 10 % 10);
                    }
                    self.push(b'0' + octet % 10);
                }
            }
            // Rare enough for `Display`; at most 39 bytes.
            IpAddr::V6(v6) => {
                let _ = write!(self, "{v6}");
            }
        }
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let room = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 upstreams expect
/// one, joined with `; ` (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = BytesMut::new();
    for value in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(joined.freeze()) {
        headers.insert(COOKIE, value);
    }
}

/// Remove every header a client might use to forge a label: anything with
/// the label prefix, and each configured label name.
pub fn strip_labels(headers: &mut HeaderMap, labels: &Labels) {
    let forged = |name: &HeaderName| {
        name.as_str().starts_with(labels.prefix.as_str())
            || [
                &labels.class,
                &labels.score,
                &labels.reasons,
                &labels.subject,
            ]
            .contains(&name)
    };
    if !headers.keys().any(forged) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| forged(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// The label header values of one verdict, computed before the verdict
/// moves on to the access log and applied as the last rewrite.
#[derive(Debug)]
pub struct LabelValues {
    class: HeaderValue,
    score: HeaderValue,
    reasons: HeaderValue,
    subject: Option<HeaderValue>,
}

impl LabelValues {
    /// Render a verdict as header values.
    pub fn new(verdict: &Verdict) -> Self {
        let score = match verdict.score {
            0 => HeaderValue::from_static("0"),
            n => HeaderValue::from(n),
        };
        let reasons = match verdict.reasons.as_slice() {
            [] => Ok(HeaderValue::from_static("")),
            [one] => HeaderValue::from_str(one),
            many => HeaderValue::from_str(&many.join(",")),
        };
        LabelValues {
            class: HeaderValue::from_static(verdict.class.as_str()),
            score,
            reasons: reasons.unwrap_or(HeaderValue::from_static("")),
            // A subject that cannot be a header value is left out rather
            // than mangled.
            subject: verdict
                .subject
                .as_deref()
                .and_then(|s| HeaderValue::from_bytes(s.as_bytes()).ok()),
        }
    }

    /// Tell the upstream the verdict.
    pub fn apply(self, headers: &mut HeaderMap, labels: &Labels) {
        headers.insert(labels.class.clone(), self.class);
        headers.insert(labels.score.clone(), self.score);
        headers.insert(labels.reasons.clone(), self.reasons);
        match self.subject {
            Some(subject) => headers.insert(labels.subject.clone(), subject),
            None => headers.remove(&labels.subject),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Action, Class};
    use std::sync::Arc;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_connection_listed_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop , , bogus header"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("upgrade", "h2c"),
            ("te", "gzip, Trailers"),
            ("x-end-to-end", "kept"),
            ("host", "example.com"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "te", "x-end-to-end"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn te_listed_in_connection_goes_whole() {
        let mut h = map(&[("te", "trailers"), ("connection", "te"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-a"]);
    }

    #[test]
    fn a_long_repetitive_connection_list_strips_exactly_what_it_names() {
        // 48 of 98 headers listed, then one absent name 100,000 times.
        let mut pairs: Vec<(String, String)> =
            (0..50).map(|i| (format!("n{i}"), "v".to_owned())).collect();
        pairs.extend((0..48).map(|i| (format!("d{i}"), "v".to_owned())));
        let mut tokens: Vec<String> = (0..48).map(|i| format!("d{i}")).collect();
        tokens.extend(std::iter::repeat_n("a".to_owned(), 100_000));
        pairs.push(("connection".to_owned(), tokens.join(",")));
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut h = map(&pairs);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys_len(), 50);
        assert!(h.keys().all(|k| k.as_str().starts_with('n')));
    }

    #[test]
    fn connection_cannot_strip_host_and_te_without_trailers_goes() {
        let mut h = map(&[("connection", "host"), ("host", "a"), ("te", "gzip")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["host"], "a");
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn upgrade_survives_when_switching_protocols() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade_request(Version::HTTP_11, &h));
        assert!(!is_upgrade_request(Version::HTTP_2, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!is_upgrade_request(
            Version::HTTP_11,
            &map(&[("upgrade", "websocket")])
        ));
    }

    #[test]
    fn forwarding_from_untrusted_peer_replaces_everything() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-port", "443"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("x-cluster-client-ip", "6.6.6.6"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-prefix", "/evil"),
            ("x-forwarded-other", "kept"),
        ]);
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        set_forwarding(
            &mut h,
            peer,
            peer,
            false,
            Some(HeaderValue::from_static("site")),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.9");
        assert_eq!(h["x-real-ip"], "192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "site");
        for gone in [
            "forwarded",
            "true-client-ip",
            "cf-connecting-ip",
            "x-cluster-client-ip",
            "x-forwarded-port",
            "x-forwarded-ssl",
            "x-forwarded-prefix",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["x-forwarded-other"], "kept");
    }

    #[test]
    fn forwarding_from_trusted_peer_names_the_resolved_client() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        let client: IpAddr = "198.51.100.1".parse().unwrap();
        set_forwarding(&mut h, client, "10.0.0.3".parse().unwrap(), true, None);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 10.0.0.3");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "198.51.100.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-port"], "443");
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut ips: Vec<IpAddr> = (0..=255u8)
            .map(|o| IpAddr::from([o, 255 - o, o / 3, 7]))
            .collect();
        for v6 in ["::", "::1", "2001:db8::8:800:200c:417a", "::ffff:1.2.3.4"] {
            ips.push(v6.parse().unwrap());
        }
        for ip in ips {
            assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
        }
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let mut chain = IpText::new(longest);
        chain.push(b',');
        chain.push(b' ');
        chain.push_ip(longest);
        assert_eq!(chain.as_bytes(), format!("{longest}, {longest}").as_bytes());
    }

    #[test]
    fn cookies_split_by_http2_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
        let mut one = map(&[("cookie", "a=1")]);
        join_cookies(&mut one);
        assert_eq!(one["cookie"], "a=1");
    }

    #[test]
    fn labels_are_stripped_in_any_case_and_set_from_the_verdict() {
        let labels = Labels {
            class: HeaderName::from_static("x-bot-class"),
            ..Labels::default()
        };
        let mut h = map(&[
            ("X-Usher-Class", "paying_customer"),
            ("x-usher-anything", "1"),
            ("X-BOT-CLASS", "service_client"),
            ("x-usher", "not a label"),
            ("accept", "*/*"),
        ]);
        strip_labels(&mut h, &labels);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-usher"]);

        let verdict = Verdict {
            class: Class::MaliciousBot,
            score: -5,
            reasons: vec![Arc::from("a"), Arc::from("b")],
            action: Action::Forward,
            subject: Some(Arc::from("user\n1")),
        };
        h.insert("x-usher-subject", HeaderValue::from_static("stale"));
        LabelValues::new(&verdict).apply(&mut h, &labels);
        assert_eq!(h["x-bot-class"], "malicious_bot");
        assert_eq!(h["x-usher-score"], "-5");
        assert_eq!(h["x-usher-reasons"], "a,b");
        assert!(
            !h.contains_key("x-usher-subject"),
            "unrepresentable subject is omitted"
        );
    }
}
