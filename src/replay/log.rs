//! Access-log lines turned into requests: nginx/Apache combined format and
//! JSON lines. Every field is checked; a line that does not parse is an
//! error for that line only, never a panic.
//!
//! Parsing is on the replay's hot path, so fields are read as slices of the
//! line and copied once, into the request head the classifier reads.

mod combined;
mod jsonl;
mod time;

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::SystemTime;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

pub use combined::parse as parse_combined;
pub use jsonl::parse as parse_jsonl;

/// One request read from a log.
#[derive(Debug)]
pub struct LogRequest {
    /// When it arrived, by the log's clock.
    pub ts: SystemTime,
    /// The client address.
    pub ip: IpAddr,
    /// The status the application answered, if recorded.
    pub status: Option<u16>,
    /// The request head as the classifier reads it: the method, the target
    /// (path and query only) and the headers the log recorded with a value.
    pub head: Parts,
    /// The header names the log records at all: one of these missing from
    /// the head was absent; any other header is unknown.
    pub recorded: Cow<'static, [HeaderName]>,
}

impl LogRequest {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    /// The request target: path and query.
    pub fn target(&self) -> &str {
        self.head
            .uri
            .path_and_query()
            .map_or("/", PathAndQuery::as_str)
    }
}

/// The log formats `usher replay` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// nginx / Apache combined log format.
    Combined,
    /// One JSON object per line.
    Jsonl,
}

/// Why a line could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LineError(pub String);

fn bad<T>(what: impl Into<String>) -> Result<T, LineError> {
    Err(LineError(what.into()))
}

/// Read one line in the given format.
pub fn parse(line: &str, format: Format) -> Result<LogRequest, LineError> {
    match format {
        Format::Combined => combined::parse(line),
        Format::Jsonl => jsonl::parse(line),
    }
}

/// A request head from its parts (a `Parts` can only be had from a
/// `Request`; an empty one allocates nothing).
fn head(method: Method, uri: Uri, headers: HeaderMap) -> Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = method;
    head.uri = uri;
    head.headers = headers;
    head
}

/// Append a recorded header; `-` or an empty value means it was not sent.
/// A value no request can carry (a control byte, say) makes the line
/// malformed, as usher would have refused such a request (400): taking
/// it for "not sent" would fire rules on a header that was there.
fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) -> Result<(), LineError> {
    if value.is_empty() || value == "-" {
        return Ok(());
    }
    match HeaderValue::from_bytes(value.as_bytes()) {
        Ok(value) => {
            headers.append(name, value);
            Ok(())
        }
        Err(_) => bad(format!("`{name}` has a value no request can carry")),
    }
}

fn parse_method(s: &str) -> Result<Method, LineError> {
    if s.is_empty() || s.len() > 32 {
        return bad("bad method");
    }
    Method::from_bytes(s.as_bytes()).or_else(|_| bad(format!("`{}` is not a method", clip(s))))
}

/// A request target as `http::Uri` accepts it: origin form, or the path of
/// an absolute URL. The result holds the path and query only.
fn parse_target(s: &str) -> Result<Uri, LineError> {
    match s.parse::<Uri>() {
        Ok(uri)
            if uri
                .path_and_query()
                .is_some_and(|pq| pq.as_str().starts_with('/')) =>
        {
            Ok(crate::proxy::origin_form(&uri))
        }
        _ => bad(format!("`{}` is not a request target", clip(s))),
    }
}

/// A value shortened for an error message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

/// Seconds since the epoch, for tests' expectations.
#[cfg(test)]
fn unix(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_path_and_query_only() {
        for (given, kept) in [
            ("/", "/"),
            ("/a/b?q=1&r", "/a/b?q=1&r"),
            ("http://h.example/login?x", "/login?x"),
            ("https://h.example:8443/", "/"),
            ("http://h.example", "/"),
        ] {
            let uri = parse_target(given).unwrap();
            assert_eq!(uri.path_and_query().unwrap().as_str(), kept, "{given}");
            assert!(uri.authority().is_none() && uri.scheme().is_none());
        }
        for given in ["", "*", "relative", "h.example:443", "/a b"] {
            assert!(parse_target(given).is_err(), "{given:?}");
        }
    }

    #[test]
    fn methods_are_bounded() {
        assert_eq!(parse_method("PROPFIND").unwrap().as_str(), "PROPFIND");
        assert!(parse_method("").is_err());
        assert!(parse_method(&"X".repeat(33)).is_err());
        assert!(parse_method("G\u{e9}T").is_err());
    }

    #[test]
    fn blank_and_unsendable_values_are_not_headers() {
        let mut headers = HeaderMap::new();
        insert(&mut headers, http::header::REFERER, "-").unwrap();
        insert(&mut headers, http::header::REFERER, "").unwrap();
        assert!(insert(&mut headers, http::header::REFERER, "a\nb").is_err());
        assert!(headers.is_empty());
        insert(&mut headers, http::header::REFERER, "https://r.example/").unwrap();
        assert_eq!(headers["referer"], "https://r.example/");
    }

    #[test]
    fn clipped_values_stay_short_and_escaped() {
        assert_eq!(clip("a\"b"), "a\\\"b");
        let long = "é".repeat(100);
        assert_eq!(clip(&long).chars().count(), 61);
    }
}
