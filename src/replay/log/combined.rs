//! The nginx / Apache combined log format, `ip ident user [time] "request"
//! status bytes "referer" "user agent"`, and the common format, which ends
//! after `bytes`. Fields are read as slices of the line; only a quoted
//! field with escapes is copied to be unescaped.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderName};
use http::{HeaderMap, Method, Uri};

use super::time::parse_clf_time;
use super::{LineError, LogRequest, bad, clip, head, insert, parse_method, parse_target};

/// What the combined format records; a shorter line records a prefix
/// (the common format: none).
static RECORDED: [HeaderName; 2] = [header::REFERER, header::USER_AGENT];

/// `ip ident user [10/Oct/2026:13:55:36 -0700] "GET /p HTTP/1.1" 200 512
/// "referer" "user agent"` (the referer and user agent may be missing, as
/// in the common log format).
pub fn parse(line: &str) -> Result<LogRequest, LineError> {
    let mut fields = Fields(line.trim_end_matches(['\r', '\n']));
    let ip = fields.token()?;
    let ip: IpAddr = ip
        .parse()
        .or_else(|_| bad(format!("`{}` is not an address", clip(ip))))?;
    fields.token()?; // ident
    fields.token()?; // user
    let ts = parse_clf_time(fields.bracketed()?)?;
    let (method, uri) = request_line(&fields.quoted()?)?;
    let status = parse_status(fields.token()?)?;
    // Bytes sent: not used, and a common-format line may end before it.
    let _ = fields.token();
    // The combined format's two headers; the common format has neither.
    // `-` (or nothing) is how the format writes "not sent".
    let mut headers = HeaderMap::new();
    let recorded: &'static [HeaderName] = match fields.quoted() {
        Err(_) => &RECORDED[..0],
        Ok(referer) => {
            insert(&mut headers, header::REFERER, &referer)?;
            match fields.quoted() {
                Err(_) => &RECORDED[..1],
                Ok(agent) => {
                    insert(&mut headers, header::USER_AGENT, &agent)?;
                    &RECORDED[..]
                }
            }
        }
    };
    Ok(LogRequest {
        ts,
        ip,
        status: Some(status),
        head: head(method, uri, headers),
        recorded: Cow::Borrowed(recorded),
    })
}

/// The part of a line not read yet.
struct Fields<'a>(&'a str);

impl<'a> Fields<'a> {
    /// The next field up to a space.
    fn token(&mut self) -> Result<&'a str, LineError> {
        let s = self.0.trim_start();
        if s.is_empty() {
            return bad("the line ends early");
        }
        let end = s.bytes().position(|b| b == b' ').unwrap_or(s.len());
        let (token, rest) = s.split_at(end);
        self.0 = rest;
        Ok(token)
    }

    /// `[…]`, without the brackets.
    fn bracketed(&mut self) -> Result<&'a str, LineError> {
        let Some(s) = self.0.trim_start().strip_prefix('[') else {
            return bad("no [time]");
        };
        let Some((inside, rest)) = s.split_once(']') else {
            return bad("no end to [time]");
        };
        self.0 = rest;
        Ok(inside)
    }

    /// A double-quoted field with `\"`, `\\` and `\xHH` escapes (Apache and
    /// nginx escape differently; both are read). Borrowed unless it holds
    /// a backslash.
    fn quoted(&mut self) -> Result<Cow<'a, str>, LineError> {
        let Some(body) = self.0.trim_start().strip_prefix('"') else {
            return bad("a quoted field is missing");
        };
        if let Some(end) = body.find('"')
            && !body[..end].contains('\\')
        {
            self.0 = &body[end + 1..];
            return Ok(Cow::Borrowed(&body[..end]));
        }
        let (value, used) = unescape(body.as_bytes())
            .ok_or_else(|| LineError("a quoted field does not end".to_owned()))?;
        self.0 = body.get(used..).unwrap_or_default();
        Ok(Cow::Owned(value))
    }
}

/// Unescape a quoted field's body up to its closing quote: the value, and
/// how many bytes the body used with the quote. `None` when no quote ends
/// it. Escaped bytes that are not UTF-8 are replaced.
fn unescape(bytes: &[u8]) -> Option<(String, usize)> {
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len().min(256));
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match (b, bytes.get(i + 1)) {
            (b'"', _) => return Some((String::from_utf8_lossy(&out).into_owned(), i + 1)),
            (b'\\', Some(b'x')) => match hex_byte(bytes.get(i + 2..i + 4)) {
                Some(decoded) => {
                    out.push(decoded);
                    i += 4;
                }
                None => {
                    out.push(b'\\');
                    i += 1;
                }
            },
            (b'\\', Some(&c @ (b'"' | b'\\'))) => {
                out.push(c);
                i += 2;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    None
}

/// Two hex digits as the byte they spell.
fn hex_byte(digits: Option<&[u8]>) -> Option<u8> {
    let &[high, low] = digits? else {
        return None;
    };
    let nibble = |d: u8| char::from(d).to_digit(16);
    Some((nibble(high)? * 16 + nibble(low)?) as u8)
}

/// `GET /path HTTP/1.1` (the protocol may be missing).
fn request_line(request: &str) -> Result<(Method, Uri), LineError> {
    let mut parts = request.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return bad(format!("`{}` is not a request line", clip(request)));
    };
    Ok((parse_method(method)?, parse_target(target)?))
}

fn parse_status(s: &str) -> Result<u16, LineError> {
    match s.parse::<u16>() {
        Ok(n @ 100..=599) => Ok(n),
        _ => bad(format!("`{}` is not a status", clip(s))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::log::unix;

    fn quoted(s: &str) -> Result<(Cow<'_, str>, &str), LineError> {
        let mut fields = Fields(s);
        let value = fields.quoted()?;
        Ok((value, fields.0))
    }

    #[test]
    fn combined_lines_parse() {
        let line = r#"203.0.113.5 - frank [10/Oct/2026:13:55:36 -0700] "GET /a/b?q=1 HTTP/1.1" 200 2326 "https://ref.example/" "Mozilla/5.0 (X11) \"quoted\" \x41""#;
        let r = parse(line).unwrap();
        assert_eq!(r.ip, "203.0.113.5".parse::<IpAddr>().unwrap());
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.target(), "/a/b?q=1");
        assert_eq!(r.head.uri.path(), "/a/b");
        assert_eq!(r.status, Some(200));
        // 2026-10-10 20:55:36 UTC
        assert_eq!(unix(r.ts), 1_791_665_736.0);
        let headers = &r.head.headers;
        assert_eq!(headers["user-agent"], "Mozilla/5.0 (X11) \"quoted\" A");
        assert_eq!(headers["referer"], "https://ref.example/");
        // No referer ("-"), a dash user agent: present and blank.
        let r = parse(
            "::1 - - [01/Jan/2026:00:00:00 +0000] \"POST http://h.example/login HTTP/1.1\" 401 0 \"-\" \"-\"\r\n",
        )
        .unwrap();
        assert_eq!(r.target(), "/login");
        assert!(r.head.uri.authority().is_none());
        assert!(r.head.headers.is_empty());
        assert_eq!(
            &r.recorded[..],
            [http::header::REFERER, http::header::USER_AGENT]
        );
        assert_eq!(unix(r.ts), 1_767_225_600.0);
        // The common log format: no referer, no user agent.
        let r =
            parse(r#"192.0.2.1 - - [29/Feb/2024:23:59:60 +0100] "GET / HTTP/1.0" 304 -"#).unwrap();
        assert!(r.head.headers.is_empty() && r.recorded.is_empty());
        // A referer but no user agent.
        let r = parse(r#"192.0.2.1 - - [29/Feb/2024:23:59:60 +0100] "GET / HTTP/1.0" 304 - "https://r.example/""#)
            .unwrap();
        assert_eq!(&r.recorded[..], [http::header::REFERER]);
        // A request line without protocol, extra spaces between fields.
        let r =
            parse(r#"192.0.2.1  -  -  [1/Mar/2024:0:00:00 +0000]  "DELETE /x"  204  0"#).unwrap();
        assert_eq!(r.method(), Method::DELETE);
        assert_eq!(unix(r.ts), 1_709_251_200.0);
    }

    #[test]
    fn non_ascii_and_escaped_bytes_are_read() {
        let r = parse(
            "192.0.2.1 - - [01/Jan/2026:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"Agent/1 é \\xff\\xFE\"",
        )
        .unwrap();
        // Escaped bytes that are not UTF-8 become replacement characters.
        assert_eq!(
            r.head.headers["user-agent"].as_bytes(),
            "Agent/1 é \u{fffd}\u{fffd}".as_bytes()
        );
    }

    #[test]
    fn quoted_fields_unescape_only_what_they_must() {
        let (value, rest) = quoted(r#""plain" tail"#).unwrap();
        assert!(matches!(value, Cow::Borrowed("plain")));
        assert_eq!(rest, " tail");
        let (value, rest) = quoted(r#" "a \"b\" \\ \x41\x4" tail"#).unwrap();
        assert_eq!(value, r#"a "b" \ A\x4"#);
        assert_eq!(rest, " tail");
        // A backslash before the closing quote escapes it: the field goes on.
        let (value, rest) = quoted(r#""a\" b" c"#).unwrap();
        assert_eq!(value, r#"a" b"#);
        assert_eq!(rest, " c");
        // Unknown escapes and \x with bad digits stay as written.
        let (value, _) = quoted(r#""\q \xzz \x+f \"" "#).unwrap();
        assert_eq!(value, r#"\q \xzz \x+f ""#);
        let (value, rest) = quoted(r#""""#).unwrap();
        assert_eq!((&*value, rest), ("", ""));
        for s in ["", "x", r#""open"#, r#""a\""#, r#""\"#, r#""\x4"#] {
            assert!(quoted(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn malformed_combined_lines_are_errors() {
        for line in [
            "",
            "\r\n",
            "garbage",
            "999.1.1.1 - - [10/Oct/2026:13:55:36 -0700] \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4",
            "1.2.3.4 - -",
            // A control byte (escaped by the log) no request can carry.
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET / HTTP/1.1\" 200 1 \"-\" \"Mozilla\\x0Aevil\"",
            "1.2.3.4 - - 10/Oct/2026:13:55:36 -0700 \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700 \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4 - - [10/Foo/2026:13:55:36 -0700] \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4 - - [31/Feb/2026:13:55:36 -0700] \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -07] \"GET / HTTP/1.1\" 200 1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700]",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] GET / HTTP/1.1 200 1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"-\" 400 0",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"\" 400 0",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"\\x16\\x03\\x01\" 400 0",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"G\\xffT / HTTP/1.1\" 400 0",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET /x HTTP/1.1\" 999 1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET /x HTTP/1.1\" 2OO 1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET /x HTTP/1.1\"",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET /x HTTP/1.1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET relative HTTP/1.1\" 200 1",
            "1.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET /\\x00 HTTP/1.1\" 200 1",
            "1.2.3.4 - - [10/Oct/1969:13:55:36 -0700] \"GET / HTTP/1.1\" 200 1",
            "é.2.3.4 - - [10/Oct/2026:13:55:36 -0700] \"GET / HTTP/1.1\" 200 1",
        ] {
            assert!(parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn any_prefix_of_a_line_is_an_answer_not_a_panic() {
        let line = "2001:db8::1 - u [10/Oct/2026:13:55:36 -0700] \"GET /é?q=\\x41 HTTP/1.1\" 200 5 \"-\" \"UA \\\"x\\\" é\"";
        for (end, _) in line.char_indices() {
            let _ = parse(&line[..end]);
        }
        assert!(parse(line).is_ok());
    }
}
