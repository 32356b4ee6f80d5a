//! X-Forwarded-For and RFC 7239 Forwarded, as a trusted proxy's headers:
//! any bytes give some address, never a panic, and an untrusted peer's
//! headers never change it.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use usher::forwarded::{Cidr, ClientIpHeader, TrustedProxies};

fuzz_target!(|data: &[u8]| {
    // Two header values, split at the first 0xff.
    let (first, second) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let trusted: Cidr = "10.0.0.0/8".parse().expect("a CIDR");
    let peer: IpAddr = "10.1.2.3".parse().expect("an address");
    let stranger: IpAddr = "192.0.2.1".parse().expect("an address");
    for header in [ClientIpHeader::XForwardedFor, ClientIpHeader::Forwarded] {
        let proxies = TrustedProxies::new(vec![trusted], header);
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", first),
            ("forwarded", first),
            ("x-forwarded-for", second),
            ("forwarded", second),
        ] {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(name, value);
            }
        }
        let _ = proxies.client_ip(peer, &headers);
        assert_eq!(proxies.client_ip(stranger, &headers), stranger);
    }
});
