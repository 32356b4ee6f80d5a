//! Path normalisation for matching: so that `/%2e%2e/.env`, `//.env`,
//! `/a/../.env`, `/a\..\.env`, `/a/..%2f.env` and `/.env;x=1` all meet a
//! rule about `/.env`. The request forwarded upstream is not changed; only
//! what rules see.

use std::borrow::Cow;

/// A path as rules see it.
#[derive(Debug, PartialEq)]
pub struct Normalized<'a> {
    /// The normalised path.
    pub path: Cow<'a, str>,
    /// Whether a `..` tried to climb above the root, which no browser sends.
    pub escaped_root: bool,
}

/// Normalise a request path: percent-decode unreserved characters (RFC 3986
/// §2.3) and the separators `%2F` and `%5C` (upstreams that decode them, or
/// treat `\` as `/`, would otherwise see another path than the rules did),
/// split on `/` and `\`, drop `;` parameters from each segment, collapse
/// empty segments and resolve `.` and `..`. Borrows when nothing changes.
pub fn normalize(path: &str) -> Normalized<'_> {
    if is_normal(path) {
        return Normalized {
            path: Cow::Borrowed(path),
            escaped_root: false,
        };
    }
    let decoded = decode(path);
    let mut segments: Vec<&str> = Vec::new();
    let mut escaped_root = false;
    let mut last = "";
    for segment in decoded.split(['/', '\\']) {
        let segment = segment.split(';').next().unwrap_or("");
        last = segment;
        match segment {
            "" | "." => {}
            ".." => escaped_root |= segments.pop().is_none(),
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let trailing = matches!(last, "" | "." | "..");
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    Normalized {
        path: Cow::Owned(out),
        escaped_root,
    }
}

/// Whether a path needs no work: starts with `/`, has no `%`, `;`, `\`,
/// empty segment (`//`) or dot segment.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || bytes.iter().any(|b| matches!(b, b'%' | b';' | b'\\')) {
        return false;
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(s) = segments.next() {
        let last = segments.peek().is_none();
        if s == "." || s == ".." || (s.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// Decode `%XX` where XX is an unreserved character, `/` or `\`.
fn decode(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = hex_byte(bytes.get(i + 1..i + 3))
            && (v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\'))
        {
            out.push(v as char);
            i += 3;
            continue;
        }
        let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&path[i..i + ch_len]);
        i += ch_len;
    }
    Cow::Owned(out)
}

fn hex_byte(hex: Option<&[u8]>) -> Option<u8> {
    let hex = std::str::from_utf8(hex?).ok()?;
    u8::from_str_radix(hex, 16).ok()
}

/// Fully percent-decode a query string for matching, if it holds escapes.
pub fn decode_query(query: &str) -> Option<Vec<u8>> {
    if !query.contains('%') && !query.contains('+') {
        return None;
    }
    let bytes = query.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                if let Some(v) = hex_byte(bytes.get(i + 1..i + 3)) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tricks_meet_the_plain_path() {
        for tricky in [
            "/.env",
            "//.env",
            "/./.env",
            "/a/../.env",
            "/%2e%2e/.env",
            "/%2E%2E/%2e%65nv",
            "/a/b/../../../../.env",
            "/.env;jsessionid=1",
            "/x/..;/.env",
            "///.env",
            "/%2e/.env",
            "/a/..%2f.env",
            "/a/..%2F.env",
            "/a\\..\\.env",
            "/a/..%5c.env",
        ] {
            assert_eq!(normalize(tricky).path, "/.env", "{tricky}");
        }
    }

    #[test]
    fn climbing_above_the_root_is_noticed() {
        assert!(normalize("/cgi-bin/.%2e/.%2e/.%2e/.%2e/bin/sh").escaped_root);
        assert!(normalize("/..").escaped_root);
        assert!(normalize("/..%5c..%5cwindows%5cwin.ini").escaped_root);
        assert!(!normalize("/a/../b").escaped_root);
        assert!(!normalize("/a/b").escaped_root);
    }

    #[test]
    fn ordinary_paths_are_borrowed_unchanged() {
        for plain in ["/", "/a", "/a/b/", "/products/7", "/a.b/c..d"] {
            let n = normalize(plain);
            assert!(matches!(n.path, Cow::Borrowed(p) if p == plain), "{plain}");
        }
    }

    #[test]
    fn other_escapes_stay_encoded_and_edges_hold() {
        assert_eq!(normalize("/a%20b").path, "/a%20b");
        assert_eq!(normalize("/a%zz").path, "/a%zz");
        assert_eq!(normalize("/a%").path, "/a%");
        assert_eq!(normalize("/a/").path, "/a/");
        assert_eq!(normalize("/a/b/..").path, "/a/");
        assert_eq!(normalize("").path, "/");
        assert_eq!(normalize("..").path, "/");
        assert_eq!(normalize("/é%41").path, "/éA");
    }

    #[test]
    fn escapes_are_decoded_once_as_an_upstream_does() {
        // Found by fuzzing (fuzz/ `path`): `%6%66` holds one escape, `%66`;
        // decoded it leaves `%6f`, which is what an upstream that decodes
        // once sees too, so rules see the same and no second pass runs.
        assert_eq!(normalize("/+%6%66%").path, "/+%6f%");
        assert_eq!(normalize("/%252e%252e/.env").path, "/%252e%252e/.env");
    }

    #[test]
    fn queries_decode_for_matching() {
        assert_eq!(
            decode_query("f=..%2f..%2fetc%2fpasswd").unwrap(),
            b"f=../../etc/passwd"
        );
        assert_eq!(decode_query("q=a+b%zz").unwrap(), b"q=a b%zz");
        assert_eq!(decode_query("plain=1"), None);
    }
}
