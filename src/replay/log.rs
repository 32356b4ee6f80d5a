//! Access-log lines turned into requests: nginx/Apache combined format and
//! JSON lines. Every field is checked; a line that does not parse is an
//! error for that line only, never a panic.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;

/// One request read from a log.
#[derive(Debug)]
pub struct LogRequest {
    /// When it arrived, by the log's clock.
    pub ts: SystemTime,
    /// The client address.
    pub ip: IpAddr,
    /// The method.
    pub method: Method,
    /// The request target: path and query.
    pub target: String,
    /// The status the application answered, if recorded.
    pub status: Option<u16>,
    /// The headers the log recorded with a value.
    pub headers: HeaderMap,
    /// The header names the log records at all: one of these missing from
    /// `headers` was absent; any other header is unknown.
    pub recorded: Vec<HeaderName>,
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
        Format::Combined => parse_combined(line),
        Format::Jsonl => parse_jsonl(line),
    }
}

/// `ip ident user [10/Oct/2026:13:55:36 -0700] "GET /p HTTP/1.1" 200 512
/// "referer" "user agent"` (the referer and user agent may be missing, as
/// in the common log format).
pub fn parse_combined(line: &str) -> Result<LogRequest, LineError> {
    let mut rest = line.trim_end_matches(['\r', '\n']);
    let ip = take_token(&mut rest)?;
    let ip: IpAddr = ip
        .parse()
        .or_else(|_| bad(format!("`{}` is not an address", clip(ip))))?;
    take_token(&mut rest)?; // ident
    take_token(&mut rest)?; // user
    rest = rest.trim_start();
    let Some(after) = rest.strip_prefix('[') else {
        return bad("no [time]");
    };
    let Some((time, after)) = after.split_once(']') else {
        return bad("no end to [time]");
    };
    let ts = parse_clf_time(time)?;
    rest = after;
    let request = take_quoted(&mut rest)?;
    let (method, target) = request_line(&request)?;
    let status = take_token(&mut rest)?;
    let status = parse_status(status)?;
    take_token(&mut rest).ok(); // bytes
    let mut headers = HeaderMap::new();
    let mut recorded = Vec::new();
    // The combined format's two headers; the common format has neither.
    // `-` (or nothing) is how the format writes "not sent".
    if let Ok(referer) = take_quoted(&mut rest) {
        insert(&mut headers, "referer", &referer);
        recorded.push(http::header::REFERER);
        if let Ok(ua) = take_quoted(&mut rest) {
            insert(&mut headers, "user-agent", &ua);
            recorded.push(http::header::USER_AGENT);
        }
    }
    Ok(LogRequest {
        ts,
        ip,
        method,
        target,
        status: Some(status),
        headers,
        recorded,
    })
}

/// `{"ts": 1764127901.5 | "2026-11-26T03:31:41Z", "ip": "…", "method":
/// "GET", "path": "/p?q=1", "status": 200, "headers": {"user-agent": "…"}}`.
pub fn parse_jsonl(line: &str) -> Result<LogRequest, LineError> {
    let value: Value = serde_json::from_str(line).or_else(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return bad("not a JSON object");
    };
    let ts = match obj.get("ts") {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(secs) if (0.0..1e11).contains(&secs) => {
                SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
            }
            _ => return bad("`ts` is out of range"),
        },
        Some(Value::String(s)) => parse_rfc3339(s)?,
        _ => return bad("`ts` must be unix seconds or an RFC 3339 time"),
    };
    let ip = match obj.get("ip") {
        Some(Value::String(s)) => s
            .parse()
            .or_else(|_| bad(format!("`{}` is not an address", clip(s))))?,
        _ => return bad("`ip` must be an address"),
    };
    let method = match obj.get("method") {
        Some(Value::String(s)) => parse_method(s)?,
        _ => return bad("`method` must be a string"),
    };
    let target = match obj.get("path") {
        Some(Value::String(s)) => parse_target(s)?,
        _ => return bad("`path` must be a string"),
    };
    let status = match obj.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(s @ 100..=599) => Some(s as u16),
            _ => return bad("`status` must be 100..599"),
        },
        Some(_) => return bad("`status` must be a number"),
    };
    let mut headers = HeaderMap::new();
    let mut recorded = Vec::new();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let Value::String(value) = value else {
                    return bad(format!("header `{}` must be a string", clip(name)));
                };
                let lower = name.to_ascii_lowercase();
                let Ok(header) = HeaderName::from_bytes(lower.as_bytes()) else {
                    return bad(format!("`{}` is not a header name", clip(name)));
                };
                insert(&mut headers, &lower, value);
                recorded.push(header);
            }
        }
        Some(_) => return bad("`headers` must be an object"),
    }
    Ok(LogRequest {
        ts,
        ip,
        method,
        target,
        status,
        headers,
        recorded,
    })
}

/// Insert a recorded header; `-` or an empty value means it was not sent.
fn insert(headers: &mut HeaderMap, name: &str, value: &str) {
    if value.is_empty() || value == "-" {
        return;
    }
    let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_bytes(value.as_bytes()),
    ) else {
        return;
    };
    headers.append(name, value);
}

fn take_token<'a>(rest: &mut &'a str) -> Result<&'a str, LineError> {
    let s = rest.trim_start();
    if s.is_empty() {
        return bad("the line ends early");
    }
    let end = s.find(' ').unwrap_or(s.len());
    *rest = &s[end..];
    Ok(&s[..end])
}

/// A double-quoted field with `\"`, `\\` and `\xHH` escapes (Apache and
/// nginx escape differently; both are read).
fn take_quoted(rest: &mut &str) -> Result<String, LineError> {
    let s = rest.trim_start();
    let Some(body) = s.strip_prefix('"') else {
        return bad("a quoted field is missing");
    };
    let bytes = body.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(body.len().min(256));
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                *rest = &body[i + 1..];
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            b'\\' if i + 1 < bytes.len() => {
                match bytes[i + 1] {
                    b'x' if i + 3 < bytes.len() => {
                        let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).unwrap_or("");
                        match u8::from_str_radix(hex, 16) {
                            Ok(b) => {
                                out.push(b);
                                i += 4;
                                continue;
                            }
                            Err(_) => out.push(b'\\'),
                        }
                    }
                    c @ (b'"' | b'\\') => {
                        out.push(c);
                        i += 2;
                        continue;
                    }
                    _ => out.push(b'\\'),
                }
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    bad("a quoted field does not end")
}

fn request_line(request: &str) -> Result<(Method, String), LineError> {
    let mut parts = request.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return bad(format!("`{}` is not a request line", clip(request)));
    };
    Ok((parse_method(method)?, parse_target(target)?))
}

fn parse_method(s: &str) -> Result<Method, LineError> {
    if s.is_empty() || s.len() > 32 {
        return bad("bad method");
    }
    Method::from_bytes(s.as_bytes()).or_else(|_| bad(format!("`{}` is not a method", clip(s))))
}

/// A request target as `http::Uri` accepts it: origin form, or the path of
/// an absolute URL.
fn parse_target(s: &str) -> Result<String, LineError> {
    let uri: http::Uri = s
        .parse()
        .or_else(|_| bad(format!("`{}` is not a request target", clip(s))))?;
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Ok(pq.as_str().to_owned()),
        _ => bad(format!("`{}` is not a request target", clip(s))),
    }
}

fn parse_status(s: &str) -> Result<u16, LineError> {
    match s.parse::<u16>() {
        Ok(n @ 100..=599) => Ok(n),
        _ => bad(format!("`{}` is not a status", clip(s))),
    }
}

/// `10/Oct/2026:13:55:36 -0700`.
fn parse_clf_time(s: &str) -> Result<SystemTime, LineError> {
    let err = || LineError(format!("`{}` is not a log time", clip(s)));
    let (date_time, zone) = s.split_once(' ').ok_or_else(err)?;
    let mut it = date_time.splitn(4, [':', '/']);
    let day: u32 = it.next().and_then(|d| d.parse().ok()).ok_or_else(err)?;
    let month = it.next().and_then(month_number).ok_or_else(err)?;
    let year: i64 = it.next().and_then(|y| y.parse().ok()).ok_or_else(err)?;
    let clock = it.next().ok_or_else(err)?;
    let secs = civil_seconds(year, month, day, clock).ok_or_else(err)?;
    let offset = zone_offset(zone).ok_or_else(err)?;
    to_system_time(secs - offset).ok_or_else(err)
}

/// `2026-11-26T03:31:41Z`, `2026-11-26T03:31:41.25+01:00`.
fn parse_rfc3339(s: &str) -> Result<SystemTime, LineError> {
    let err = || LineError(format!("`{}` is not an RFC 3339 time", clip(s)));
    if !s.is_ascii() || s.len() < 20 {
        return Err(err());
    }
    let (date, time) = s.split_once(['T', 't', ' ']).ok_or_else(err)?;
    let mut d = date.split('-');
    let year: i64 = d.next().and_then(|y| y.parse().ok()).ok_or_else(err)?;
    let month: u32 = d.next().and_then(|m| m.parse().ok()).ok_or_else(err)?;
    let day: u32 = d.next().and_then(|x| x.parse().ok()).ok_or_else(err)?;
    let zone_at = time
        .find(['Z', 'z', '+', '-'])
        .filter(|&i| i >= 8)
        .ok_or_else(err)?;
    let (clock, zone) = time.split_at(zone_at);
    let (clock, fraction) = match clock.split_once('.') {
        Some((c, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            (c, format!("0.{f}").parse::<f64>().map_err(|_| err())?)
        }
        Some(_) => return Err(err()),
        None => (clock, 0.0),
    };
    let secs = civil_seconds(year, month, day, clock).ok_or_else(err)?;
    let offset = match zone {
        "Z" | "z" => 0,
        z => zone_offset(&z.replace(':', "")).ok_or_else(err)?,
    };
    let whole = to_system_time(secs - offset).ok_or_else(err)?;
    Ok(whole + Duration::from_secs_f64(fraction))
}

fn month_number(m: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS.iter().position(|x| *x == m).map(|i| i as u32 + 1)
}

/// `+0100` / `-0700` as seconds east of UTC.
fn zone_offset(z: &str) -> Option<i64> {
    let (sign, digits) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    (hours < 24 && minutes < 60).then_some(sign * (hours * 3600 + minutes * 60))
}

/// Seconds since the epoch of a UTC calendar date and `HH:MM:SS`.
fn civil_seconds(year: i64, month: u32, day: u32, clock: &str) -> Option<i64> {
    let mut c = clock.split(':');
    let h: i64 = c.next()?.parse().ok()?;
    let m: i64 = c.next()?.parse().ok()?;
    let s: i64 = c.next()?.parse().ok()?;
    if c.next().is_some() || !(1..=12).contains(&month) || !(1970..=9999).contains(&year) {
        return None;
    }
    if day == 0 || day > days_in_month(year, month) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_since_epoch(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date (year ≥ 1970), by counting whole years
/// and months.
fn days_since_epoch(y: i64, m: u32, d: u32) -> i64 {
    let leap_days = |y: i64| (y - 1) / 4 - (y - 1) / 100 + (y - 1) / 400;
    let years = (y - 1970) * 365 + leap_days(y) - leap_days(1970);
    let months: i64 = (1..m).map(|mm| i64::from(days_in_month(y, mm))).sum();
    years + months + i64::from(d) - 1
}

fn to_system_time(secs: i64) -> Option<SystemTime> {
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// A value shortened for an error message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(t: SystemTime) -> f64 {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    #[test]
    fn combined_lines_parse() {
        let line = r#"203.0.113.5 - frank [10/Oct/2026:13:55:36 -0700] "GET /a/b?q=1 HTTP/1.1" 200 2326 "https://ref.example/" "Mozilla/5.0 (X11) \"quoted\" \x41""#;
        let r = parse_combined(line).unwrap();
        assert_eq!(r.ip, "203.0.113.5".parse::<IpAddr>().unwrap());
        assert_eq!(r.method, Method::GET);
        assert_eq!(r.target, "/a/b?q=1");
        assert_eq!(r.status, Some(200));
        // 2026-10-10 20:55:36 UTC
        assert_eq!(unix(r.ts), 1_791_665_736.0);
        assert_eq!(r.headers["user-agent"], "Mozilla/5.0 (X11) \"quoted\" A");
        assert_eq!(r.headers["referer"], "https://ref.example/");
        // No referer ("-"), a dash user agent: present and blank.
        let r = parse_combined(
            r#"::1 - - [01/Jan/2026:00:00:00 +0000] "POST http://h.example/login HTTP/1.1" 401 0 "-" "-""#,
        )
        .unwrap();
        assert_eq!(r.target, "/login");
        assert!(!r.headers.contains_key("referer"));
        assert!(!r.headers.contains_key("user-agent"));
        assert_eq!(
            r.recorded,
            [http::header::REFERER, http::header::USER_AGENT]
        );
        assert_eq!(unix(r.ts), 1_767_225_600.0);
        // The common log format: no referer, no user agent.
        let r =
            parse_combined(r#"192.0.2.1 - - [29/Feb/2024:23:59:60 +0100] "GET / HTTP/1.0" 304 -"#)
                .unwrap();
        assert!(r.headers.is_empty() && r.recorded.is_empty());
    }

    #[test]
    fn malformed_combined_lines_are_errors() {
        for line in [
            "",
            "garbage",
            "999.1.1.1 - - [10/Oct/2026:13:55:36 -0700] \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4 - - 10/Oct/2026:13:55:36 -0700 \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4 - - [10/Foo/2026:13:55:36 -0700] \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4 - - [31/Feb/2026:13:55:36 -0700] \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -07] \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"-\" 400 0",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"\\x16\\x03\\x01\" 400 0",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET /x HTTP/1.1\" 999 1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET /x HTTP/1.1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET relative HTTP/1.1\" 200 1",
            "1.2.3.4 - - [10/Oct/1969:13:55:36 -0700] \"GET / HTTP/1.1\" 200 1",
        ] {
            assert!(parse_combined(line).is_err(), "{line}");
        }
    }

    #[test]
    fn json_lines_parse() {
        let r = parse_jsonl(
            r#"{"ts": "2026-11-26T03:31:41.5+01:00", "ip": "2001:db8::1", "method": "GET", "path": "/p?q=1", "status": 404, "headers": {"User-Agent": "curl/8", "Accept-Language": "en"}}"#,
        )
        .unwrap();
        assert_eq!(unix(r.ts), 1_795_660_301.5);
        assert_eq!(r.status, Some(404));
        assert_eq!(r.headers["user-agent"], "curl/8");
        assert_eq!(r.headers["accept-language"], "en");
        let r = parse_jsonl(
            r#"{"ts": 1764127901, "ip": "192.0.2.1", "method": "POST", "path": "/login"}"#,
        )
        .unwrap();
        assert_eq!(r.status, None);
        assert_eq!(unix(r.ts), 1_764_127_901.0);
    }

    #[test]
    fn malformed_json_lines_are_errors() {
        for line in [
            "",
            "{",
            "[]",
            r#"{"ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": -5, "ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": 1e300, "ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": "yesterday", "ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": "2026-13-01T00:00:00Z", "ip": "1.2.3.4", "method": "GET", "path": "/"}"#,
            r#"{"ts": 1, "ip": "nowhere", "method": "GET", "path": "/"}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "G E T", "path": "/"}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "no-slash"}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "status": 42}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "headers": {"bad name": "x"}}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "headers": {"x": 1}}"#,
            r#"{"ts": 1, "ip": "1.2.3.4", "method": "GET", "path": "/", "headers": []}"#,
        ] {
            assert!(parse_jsonl(line).is_err(), "{line}");
        }
    }

    #[test]
    fn calendar_arithmetic() {
        assert_eq!(days_since_epoch(1970, 1, 1), 0);
        assert_eq!(days_since_epoch(2000, 3, 1), 11_017);
        assert_eq!(days_since_epoch(2024, 12, 31), 20_088);
        assert!(civil_seconds(2023, 2, 29, "00:00:00").is_none());
        assert!(civil_seconds(2024, 2, 29, "00:00:00").is_some());
    }
}
