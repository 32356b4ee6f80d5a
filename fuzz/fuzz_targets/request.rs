//! A whole request head through the classifier: target, cookies, bearer
//! tokens (verified against an HMAC issuer), API keys, user agent and any
//! other headers, as a client sends them. Never a panic; a credential
//! that was not signed with the issuer's secret, or a crawler's user agent
//! from an address that is not the crawler's, never earns trust.
#![no_main]

use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use usher::verdict::Class;

fuzz_target!(|data: &[u8]| {
    // Lines: the first is the target, the rest `name: value` headers.
    let mut lines = data.split(|&b| b == b'\n');
    let target = lines.next().unwrap_or_default();
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let mut builder = Request::get(target);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let verdict = usher_fuzz::classify(&parts);
    // Without the secret no token verifies, and from 192.0.2.7 no crawler
    // is confirmed: no subject, no trust, whatever the user agent says.
    assert!(verdict.subject.is_none(), "{verdict:?}");
    assert!(
        matches!(verdict.class, Class::PublicVisitor | Class::MaliciousBot),
        "{verdict:?}"
    );
});
