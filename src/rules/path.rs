//! Path normalisation for matching: so that `/%2e%2e/.env`, `//.env`,
//! `/a/../.env` and `/.env;x=1` all meet a rule about `/.env`. The request
//! forwarded upstream is not changed; only what rules see.

use std::borrow::Cow;

/// Normalise a request path: percent-decode unreserved characters (RFC 3986
/// §2.3, and `%2E` so dot segments cannot hide), drop `;` parameters from
/// each segment, collapse repeated slashes, and resolve `.` and `..`
/// segments (never above the root). Borrows when nothing changes.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if is_normal(path) {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let trailing = decoded.ends_with('/')
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
        || decoded
            .split('/')
            .next_back()
            .is_some_and(|s| s.starts_with(';'));
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Whether a path needs no work: starts with `/`, no `%`, `;`, `//`, or
/// dot segment.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || bytes.contains(&b'%') || bytes.contains(&b';') {
        return false;
    }
    !path
        .split('/')
        .skip(1)
        .enumerate()
        .any(|(i, s)| s == "." || s == ".." || (s.is_empty() && i + 2 < path.split('/').count()))
}

fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            && (v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(v as char);
            i += 3;
            continue;
        }
        // Not an encoded unreserved character: keep the byte as is. The
        // path is ASCII-only on the wire, but be safe with any UTF-8.
        let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&path[i..i + ch_len]);
        i += ch_len;
    }
    Cow::Owned(out)
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
        ] {
            assert_eq!(normalize(tricky), "/.env", "{tricky}");
        }
    }

    #[test]
    fn ordinary_paths_are_borrowed_unchanged() {
        for plain in ["/", "/a", "/a/b/", "/products/7", "/a.b/c..d"] {
            assert!(
                matches!(normalize(plain), Cow::Borrowed(p) if p == plain),
                "{plain}"
            );
        }
    }

    #[test]
    fn reserved_escapes_stay_encoded_and_edges_hold() {
        assert_eq!(
            normalize("/a%2Fb"),
            "/a%2Fb",
            "an encoded slash is not a separator"
        );
        assert_eq!(normalize("/a%zz"), "/a%zz");
        assert_eq!(normalize("/a%"), "/a%");
        assert_eq!(normalize("/a/"), "/a/");
        assert_eq!(normalize("/a/b/.."), "/a/");
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize(".."), "/");
        assert_eq!(normalize("/é%41"), "/éA");
    }
}
