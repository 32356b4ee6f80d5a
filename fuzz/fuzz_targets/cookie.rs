//! `Cookie` headers, any number of them: the token cookie is found when
//! it is there once, and a second copy anywhere is never silently
//! ignored, so usher and the application cannot be shown different
//! tokens in one request.
#![no_main]

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use usher::identity::cookie;
use usher_fuzz::TOKEN_COOKIE;

fuzz_target!(|data: &[u8]| {
    // One `Cookie` header per line.
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, value);
        }
    }
    // Every `name=value` pair named like the token cookie, in any header.
    let copies = headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter(|pair| {
            pair.splitn(2, |&b| b == b'=')
                .next()
                .is_some_and(|name| name.trim_ascii() == TOKEN_COOKIE.as_bytes())
                && pair.contains(&b'=')
        })
        .count();
    match cookie(&headers, TOKEN_COOKIE) {
        Ok(None) => assert!(copies <= 1, "{copies} copies passed for none"),
        Ok(Some(value)) => {
            assert_eq!(copies, 1, "{value:?} chosen among {copies} copies");
            assert!(!value.is_empty() && !value.contains(';'), "{value:?}");
            assert!(
                headers.get_all(COOKIE).iter().any(|h| h
                    .as_bytes()
                    .windows(value.len())
                    .any(|w| w == value.as_bytes())),
                "{value:?} is not in any header"
            );
        }
        Err(_) => assert!(
            copies >= 1,
            "ambiguous without a copy: {:?}",
            headers.get_all(COOKIE).iter().collect::<Vec<_>>()
        ),
    }
});
