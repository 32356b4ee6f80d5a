//! A quick screen in front of a regex run over every header value: the
//! bytes a match can start with, found when the rules load, so a value
//! holding none of them is passed over with one `memchr` instead of a
//! regex search.

use regex::bytes::Regex as BytesRegex;
use regex_syntax::hir::literal::{ExtractKind, Extractor};

/// A regex and the first bytes of every string it can match, when there
/// are few enough of them to look for directly.
#[derive(Debug, Clone)]
pub struct Screened {
    regex: BytesRegex,
    starts: Starts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Starts {
    /// A match could start with any byte (or the pattern was not read).
    Any,
    One(u8),
    Two(u8, u8),
    Three(u8, u8, u8),
}

impl Screened {
    /// Screen `regex`, compiled from `pattern` with Unicode off (as the
    /// rule files compile header patterns; `(?u)` inside still counts).
    pub fn new(regex: BytesRegex, pattern: &str) -> Self {
        Screened {
            starts: starts(pattern),
            regex,
        }
    }

    /// Whether the regex matches somewhere in `haystack`.
    pub fn is_match(&self, haystack: &[u8]) -> bool {
        let possible = match self.starts {
            Starts::Any => true,
            Starts::One(a) => memchr::memchr(a, haystack).is_some(),
            Starts::Two(a, b) => memchr::memchr2(a, b, haystack).is_some(),
            Starts::Three(a, b, c) => memchr::memchr3(a, b, c, haystack).is_some(),
        };
        possible && self.regex.is_match(haystack)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }
}

/// The first bytes of every prefix literal of `pattern`, when the prefixes
/// are a finite set of non-empty literals starting with at most three
/// distinct bytes. Every match starts with one of those literals, so a
/// haystack without any of their first bytes cannot match.
fn starts(pattern: &str) -> Starts {
    let Ok(hir) = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
    else {
        return Starts::Any;
    };
    let prefixes = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let Some(literals) = prefixes.literals() else {
        return Starts::Any;
    };
    let mut firsts: Vec<u8> = Vec::new();
    for literal in literals {
        let Some(&first) = literal.as_bytes().first() else {
            // The empty string: a match may start anywhere.
            return Starts::Any;
        };
        if !firsts.contains(&first) {
            firsts.push(first);
        }
    }
    match firsts[..] {
        [a] => Starts::One(a),
        [a, b] => Starts::Two(a, b),
        [a, b, c] => Starts::Three(a, b, c),
        // None at all (a pattern that matches nothing), or too many.
        _ => Starts::Any,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screened(pattern: &str) -> Screened {
        let regex = regex::bytes::RegexBuilder::new(pattern)
            .unicode(false)
            .build()
            .unwrap();
        Screened::new(regex, pattern)
    }

    #[test]
    fn finds_the_bytes_a_match_starts_with() {
        assert_eq!(starts(r"(?i)\$\{jndi:"), Starts::One(b'$'));
        assert_eq!(starts(r"(?i)sqlmap"), Starts::Two(b'S', b's'));
        assert_eq!(
            starts(r"^(curl|wget|python)/"),
            Starts::Three(b'c', b'w', b'p')
        );
        // Too many, unbounded or possibly empty: no screen.
        assert_eq!(starts(r"(a|b|c|d)x"), Starts::Any);
        assert_eq!(starts(r"\w+@"), Starts::Any);
        assert_eq!(starts(r"x?"), Starts::Any);
        assert_eq!(starts(r"(?u)\w"), Starts::Any);
    }

    #[test]
    fn screen_never_hides_a_match() {
        let patterns = [
            r"(?i)\$\{jndi:",
            r"(?i)sqlmap",
            r"\bunion\s+select\b",
            r"^(curl|wget|python)/",
            r"(?u)é",
            r"a*b",
            r"[^\x00-\xff]",
        ];
        let haystacks: [&[u8]; 9] = [
            b"${jndi:ldap://x}",
            b"x ${JnDi:rmi}",
            b"SQLMap/1.0",
            b"1 UNION select 2",
            b"1 union select 2",
            b"wget/1.2",
            "caf\u{e9}".as_bytes(),
            b"aaab",
            b"\xff\xfe nothing here",
        ];
        for pattern in patterns {
            let screened = screened(pattern);
            for haystack in haystacks {
                assert_eq!(
                    screened.is_match(haystack),
                    screened.regex.is_match(haystack),
                    "{pattern} on {haystack:?}"
                );
            }
        }
    }
}
