//! Header surgery at the proxy boundary: hop-by-hop headers (RFC 9110
//! §7.6.1), forwarding headers, and usher's own labels.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::BytesMut;

use http::Version;
use http::header::{
    CONNECTION, FORWARDED, HOST, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};

use crate::config::Labels;
use crate::verdict::Verdict;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
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

/// Remove hop-by-hop headers, including every header the `Connection`
/// header names. `TE: trailers` survives; with `keep_upgrade`, `Upgrade`
/// and `Connection: upgrade` survive for a protocol switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(&CONNECTION) {
        // Names to remove; `close` and `keep-alive` (the usual tokens) need
        // no allocation, the `Keep-Alive` header goes below anyway.
        let mut listed: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(&CONNECTION) {
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
        }
        for name in &listed {
            headers.remove(name);
        }
        headers.remove(&CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TRANSFER_ENCODING,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    if headers.contains_key(&TE) {
        let trailers = lists_token(headers, &TE, "trailers");
        headers.remove(&TE);
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(&UPGRADE);
    }
}

/// Set `X-Forwarded-For`, `-Proto` and `-Host` for the upstream. From a
/// trusted proxy the chain is extended and its proto/host kept; from anyone
/// else, what the client sent is replaced and `Forwarded` removed.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    host: Option<HeaderValue>,
) {
    // Built in place and frozen into the header: one allocation.
    let mut chain = BytesMut::with_capacity(64);
    if peer_trusted {
        for value in headers.get_all(&X_FORWARDED_FOR) {
            let v = value.as_bytes().trim_ascii();
            if !v.is_empty() {
                chain.extend_from_slice(v);
                chain.extend_from_slice(b", ");
            }
        }
    } else {
        headers.remove(&FORWARDED);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
    }
    let _ = write!(chain, "{peer}");
    if let Ok(value) = HeaderValue::from_maybe_shared(chain.freeze()) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = host
    {
        headers.insert(X_FORWARDED_HOST.clone(), host);
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

/// Tell the upstream the verdict.
pub fn set_labels(headers: &mut HeaderMap, labels: &Labels, verdict: &Verdict) {
    headers.insert(
        labels.class.clone(),
        HeaderValue::from_static(verdict.class.as_str()),
    );
    let score = match verdict.score {
        0 => HeaderValue::from_static("0"),
        n => HeaderValue::from(n),
    };
    headers.insert(labels.score.clone(), score);
    let reasons = match verdict.reasons.as_slice() {
        [] => HeaderValue::from_static(""),
        [one] => HeaderValue::from_str(one).unwrap_or(HeaderValue::from_static("")),
        many => HeaderValue::from_str(&many.join(",")).unwrap_or(HeaderValue::from_static("")),
    };
    headers.insert(labels.reasons.clone(), reasons);
    match verdict
        .subject
        .as_deref()
        .and_then(|s| HeaderValue::from_bytes(s.as_bytes()).ok())
    {
        Some(subject) => headers.insert(labels.subject.clone(), subject),
        None => headers.remove(&labels.subject),
    };
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
            ("forwarded", "for=6.6.6.6"),
        ]);
        set_forwarding(
            &mut h,
            "192.0.2.9".parse().unwrap(),
            false,
            Some(HeaderValue::from_static("site")),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "site");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn forwarding_from_trusted_peer_extends_the_chain() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        set_forwarding(&mut h, "10.0.0.3".parse().unwrap(), true, None);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 10.0.0.2, 10.0.0.3");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.contains_key("forwarded"));
        assert!(!h.contains_key("x-forwarded-host"));
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
        set_labels(&mut h, &labels, &verdict);
        assert_eq!(h["x-bot-class"], "malicious_bot");
        assert_eq!(h["x-usher-score"], "-5");
        assert_eq!(h["x-usher-reasons"], "a,b");
        assert!(
            !h.contains_key("x-usher-subject"),
            "unrepresentable subject is omitted"
        );
    }
}
