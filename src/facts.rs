//! Facts stage: what a request says about itself, read once and borrowed by
//! every later stage (no copies of headers or paths).

use std::net::IpAddr;
use std::time::SystemTime;

use http::{HeaderMap, Method, header};

/// The observable facts of one request.
#[derive(Debug)]
pub struct Facts<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The path, as sent (not yet normalised).
    pub path: &'a str,
    /// The query string without `?`, if any.
    pub query: Option<&'a str>,
    /// The `Host` header, or the URI authority for HTTP/2.
    pub host: Option<&'a str>,
    /// All request headers, after usher's own labels were stripped.
    pub headers: &'a HeaderMap,
    /// The `User-Agent` header's bytes, if present (any bytes: rules must
    /// see what a client sent, decodable or not).
    pub user_agent: Option<&'a [u8]>,
    /// The client address: the peer, or what trusted proxies reported.
    pub client_ip: IpAddr,
    /// The socket peer's address.
    pub peer_ip: IpAddr,
    /// The time of the request: the wall clock live, the log's in a replay.
    pub now: SystemTime,
    /// What the application said about the request's session cookie, when
    /// the front door asked (see `IdentityStage::session`).
    pub session: Option<crate::identity::Identity>,
    /// What became of a crawler claim, when the front door checked it
    /// (see `Crawlers::verify`); otherwise the classifier checks it
    /// without waiting.
    pub crawler: Option<crate::crawlers::Claim>,
    /// When `headers` holds only what a log recorded: the names the log
    /// records. A header missing from `headers` is absent if its name is
    /// here, unknown otherwise, and rules about it neither match nor fail
    /// (see `Condition::eval`). `None` live: every header is known.
    pub recorded: Option<&'a [http::HeaderName]>,
}

impl<'a> Facts<'a> {
    /// Collect the facts of a request head.
    pub fn new(
        parts: &'a http::request::Parts,
        peer_ip: IpAddr,
        client_ip: IpAddr,
        now: SystemTime,
    ) -> Self {
        let headers = &parts.headers;
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        Facts {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            host,
            headers,
            user_agent: headers.get(header::USER_AGENT).map(|v| v.as_bytes()),
            client_ip,
            peer_ip,
            now,
            session: None,
            crawler: None,
            recorded: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn reads_head_without_copying() {
        let req = http::Request::builder()
            .method("POST")
            .uri("/a/b?x=1")
            .header("host", "example.com")
            .header("user-agent", "curl/8")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let facts = Facts::new(&parts, ip, ip, SystemTime::UNIX_EPOCH);
        assert_eq!(facts.method, Method::POST);
        assert_eq!(facts.path, "/a/b");
        assert_eq!(facts.query, Some("x=1"));
        assert_eq!(facts.host, Some("example.com"));
        assert_eq!(facts.user_agent, Some(&b"curl/8"[..]));
    }

    #[test]
    fn user_agent_bytes_are_kept_and_authority_is_host() {
        let mut req = http::Request::builder()
            .uri("http://h2.example/x")
            .body(())
            .unwrap();
        req.headers_mut().insert(
            header::USER_AGENT,
            http::HeaderValue::from_bytes(b"\xffbot").unwrap(),
        );

        let (parts, ()) = req.into_parts();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let facts = Facts::new(&parts, ip, ip, SystemTime::UNIX_EPOCH);
        assert_eq!(
            facts.user_agent,
            Some(&b"\xffbot"[..]),
            "undecodable, still there"
        );
        assert_eq!(facts.host, Some("h2.example"));

        let mut req = http::Request::builder().uri("/").body(()).unwrap();
        req.headers_mut().insert(
            header::USER_AGENT,
            http::HeaderValue::from_bytes("App/1 (Ünïcode)".as_bytes()).unwrap(),
        );
        let (parts, ()) = req.into_parts();
        let facts = Facts::new(&parts, ip, ip, SystemTime::UNIX_EPOCH);
        assert_eq!(
            facts.user_agent,
            Some("App/1 (Ünïcode)".as_bytes()),
            "UTF-8 agents are read"
        );
    }
}
