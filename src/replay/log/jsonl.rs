//! JSON lines: one object per line, `{"ts": 1764127901.5 |
//! "2026-11-26T03:31:41Z", "ip": "…", "method": "GET", "path": "/p?q=1",
//! "status": 200, "headers": {"user-agent": "…"}}`; other members are
//! ignored. The line is read into a shallow [`Json`] whose strings borrow
//! from the line unless they hold escapes, rather than into a
//! `serde_json::Value` that copies every string into a tree of maps.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::time::parse_rfc3339;
use super::{LineError, LogRequest, bad, clip, head, insert, parse_method, parse_target};

/// `{"ts": …, "ip": …, "method": …, "path": …, "status": …, "headers": {…}}`.
pub fn parse(line: &str) -> Result<LogRequest, LineError> {
    let value: Json<'_> = serde_json::from_str(line).or_else(|e| bad(format!("not JSON: {e}")))?;
    let Json::Object(mut members) = value else {
        return bad("not a JSON object");
    };
    let mut member = |key| take(&mut members, key);
    let ts = match member("ts") {
        Some(Json::Number(n)) => match n.as_f64() {
            secs if (0.0..1e11).contains(&secs) => {
                SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
            }
            _ => return bad("`ts` is out of range"),
        },
        Some(Json::String(s)) => parse_rfc3339(&s)?,
        _ => return bad("`ts` must be unix seconds or an RFC 3339 time"),
    };
    let ip = match member("ip") {
        Some(Json::String(s)) => s
            .parse()
            .or_else(|_| bad(format!("`{}` is not an address", clip(&s))))?,
        _ => return bad("`ip` must be an address"),
    };
    let method = match member("method") {
        Some(Json::String(s)) => parse_method(&s)?,
        _ => return bad("`method` must be a string"),
    };
    let uri = match member("path") {
        Some(Json::String(s)) => parse_target(&s)?,
        _ => return bad("`path` must be a string"),
    };
    let status = match member("status") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => match n.as_u64() {
            Some(s @ 100..=599) => Some(s as u16),
            _ => return bad("`status` must be 100..599"),
        },
        Some(_) => return bad("`status` must be a number"),
    };
    let (headers, recorded) = match member("headers") {
        None | Some(Json::Null) => (HeaderMap::new(), Vec::new()),
        Some(Json::Object(members)) => headers(members)?,
        Some(_) => return bad("`headers` must be an object"),
    };
    Ok(LogRequest {
        ts,
        ip,
        status,
        head: head(method, uri, headers),
        recorded: Cow::Owned(recorded),
    })
}

/// The recorded headers and their names. Read in name order, the last of
/// members with the same name winning, as a JSON object reads.
fn headers(mut members: Members<'_>) -> Result<(HeaderMap, Vec<HeaderName>), LineError> {
    members.sort_by(|a, b| a.0.cmp(&b.0));
    let mut headers = HeaderMap::with_capacity(members.len());
    let mut recorded = Vec::with_capacity(members.len());
    for (i, (name, value)) in members.iter().enumerate() {
        if members.get(i + 1).is_some_and(|(next, _)| next == name) {
            continue;
        }
        let Json::String(value) = value else {
            return bad(format!("header `{}` must be a string", clip(name)));
        };
        // Names are lower-cased here.
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            return bad(format!("`{}` is not a header name", clip(name)));
        };
        insert(&mut headers, name.clone(), value)?;
        recorded.push(name);
    }
    Ok((headers, recorded))
}

/// The members of an object, in the line's order.
type Members<'a> = Vec<(Cow<'a, str>, Json<'a>)>;

/// Take the value of member `key` (the last, if it repeats).
fn take<'a>(members: &mut Members<'a>, key: &str) -> Option<Json<'a>> {
    let (_, value) = members.iter_mut().rev().find(|(k, _)| k == key)?;
    Some(std::mem::replace(value, Json::Null))
}

/// A JSON value, read only as deep as a log line needs: strings borrow
/// from the line when they hold no escapes, arrays are skipped.
#[derive(Debug, PartialEq)]
enum Json<'a> {
    Null,
    Bool,
    Number(Number),
    String(Cow<'a, str>),
    Array,
    Object(Members<'a>),
}

/// A JSON number as the parser found it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Number {
    Unsigned(u64),
    Negative(i64),
    Float(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Unsigned(n) => n as f64,
            Number::Negative(n) => n as f64,
            Number::Float(n) => n,
        }
    }

    fn as_u64(self) -> Option<u64> {
        match self {
            Number::Unsigned(n) => Some(n),
            Number::Negative(_) | Number::Float(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool)
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Number::Unsigned(n)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(match u64::try_from(n) {
            Ok(n) => Number::Unsigned(n),
            Err(_) => Number::Negative(n),
        }))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Number::Float(n)))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Json::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some((Key(name), value)) = map.next_entry::<Key<'de>, Json<'de>>()? {
            members.push((name, value));
        }
        Ok(Json::Object(members))
    }
}

/// A member name, borrowed from the line when it holds no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_str(JsonVisitor)? {
            Json::String(s) => Ok(Key(s)),
            _ => Err(serde::de::Error::custom("a member name must be a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::log::unix;

    #[test]
    fn json_lines_parse() {
        let r = parse(
            r#"{"ts": "2026-11-26T03:31:41.5+01:00", "ip": "2001:db8::1", "method": "GET", "path": "/p?q=1", "status": 404, "headers": {"User-Agent": "curl/8", "Accept-Language": "en"}}"#,
        )
        .unwrap();
        assert_eq!(unix(r.ts), 1_795_660_301.5);
        assert_eq!(r.status, Some(404));
        assert_eq!(r.target(), "/p?q=1");
        assert_eq!(r.head.headers["user-agent"], "curl/8");
        assert_eq!(r.head.headers["accept-language"], "en");
        assert_eq!(
            &r.recorded[..],
            [http::header::ACCEPT_LANGUAGE, http::header::USER_AGENT]
        );
        let r =
            parse(r#"{"ts": 1764127901, "ip": "192.0.2.1", "method": "POST", "path": "/login"}"#)
                .unwrap();
        assert_eq!(r.status, None);
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(unix(r.ts), 1_764_127_901.0);
        assert!(r.recorded.is_empty());
    }

    #[test]
    fn escapes_extra_members_and_repeats_are_read_as_json_reads_them() {
        let r = parse(
            r#"{"extra": {"deep": [1, {"x": null}], "n": -1.5}, "ts": 1.25, "\u0069p": "192.0.2.\u0031",
                "method": "GET", "path": "/first", "path": "/sec\u006fnd", "status": null, "list": [],
                "headers": {"X-A": "1", "x-a": "2", "X-A": "3", "referer": "-", "dnt": "\ud83d\ude00"}}"#,
        )
        .unwrap();
        assert_eq!(r.ip, "192.0.2.1".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(unix(r.ts), 1.25);
        // The last `path` wins.
        assert_eq!(r.target(), "/second");
        // Distinct spellings are distinct members; a repeated one counts once.
        let values: Vec<_> = r.head.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["3", "2"]);
        assert!(!r.head.headers.contains_key("referer"));
        assert_eq!(r.recorded.iter().filter(|n| *n == "x-a").count(), 2);
        assert!(r.recorded.contains(&http::header::REFERER));
        assert_eq!(r.status, None);
    }

    #[test]
    fn values_borrow_unless_escaped() {
        let value: Json<'_> = serde_json::from_str(r#"{"a": "plain", "b\n": "t\tab"}"#).unwrap();
        let Json::Object(members) = value else {
            panic!("not an object")
        };
        assert!(matches!(members[0].0, Cow::Borrowed("a")));
        assert!(matches!(members[0].1, Json::String(Cow::Borrowed("plain"))));
        assert_eq!(members[1].0, "b\n");
        assert_eq!(members[1].1, Json::String(Cow::Owned("t\tab".to_owned())));
    }

    #[test]
    fn malformed_json_lines_are_errors() {
        for line in [
            "",
            "{",
            "[]",
            "null",
            "\"text\"",
            "{} {}",
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/"} x"#,
            r#"{"ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": -5, "ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            // No request can carry a control byte in a header value.
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "headers": {"User-Agent": "a\u0000b"}}"#,
            r#"{"ts": 1e300, "ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": 1e400, "ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": true, "ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": "yesterday", "ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": "2026-13-01T00:00:00Z", "ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": 1, "ip": "nowhere", "method": "GET", "path": "/"}"#,
            r#"{"ts": 1, "ip": 16909060, "method": "GET", "path": "/"}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "G E T", "path": "/"}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": ["GET"], "path": "/"}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "no-slash"}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET"}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "status": 42}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "status": 200.5}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "status": -200}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "status": "200"}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "headers": {"bad name": "x"}}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "headers": {"x": 1}}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "headers": {"x": "1", "x": {}}}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "headers": []}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "headers": "ua"}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "bad": "\ud800"}"#,
        ] {
            assert!(parse(line).is_err(), "{line}");
        }
    }

    #[test]
    fn deep_nesting_is_no_stack_overflow() {
        let line = |extra: &str| {
            format!(r#"{{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "x": {extra}}}"#)
        };
        // Arrays are skipped without recursion; objects stop at
        // serde_json's depth limit.
        let arrays = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
        assert!(parse(&line(&arrays)).is_ok());
        let objects = format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000));
        assert!(parse(&line(&objects)).is_err());
    }

    #[test]
    fn any_prefix_of_a_line_is_an_answer_not_a_panic() {
        let line = r#"{"ts": "2026-11-26T03:31:41.5+01:00", "ip": "::1", "method": "GET", "path": "/p?q=%22", "headers": {"User-Agent": "a\u00e9"}}"#;
        for (end, _) in line.char_indices() {
            let _ = parse(&line[..end]);
        }
        assert!(parse(line).is_ok());
    }
}
