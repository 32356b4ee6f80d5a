//! A whole request head through the classifier: target, cookies, bearer
//! tokens (verified against an HMAC issuer), API keys, user agent and any
//! other headers, as a client sends them. Never a panic, and a credential
//! that was not signed with the issuer's secret never earns trust.
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use usher::classify::Classifier;
use usher::config::Config;
use usher::facts::Facts;
use usher::verdict::Class;

fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("usher-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder");
        std::fs::write(dir.join("secret"), "a secret the fuzzer never learns").expect("a file");
        let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/*.toml");
        let text = format!(
            r#"upstream = "http://127.0.0.1:9"
rules = ["{rules}"]
[[identity.jwt]]
issuer = "https://auth.example/"
audience = ["web"]
algorithms = ["HS256"]
secret_file = "{}"
cookie = "token"
paying = {{ claim = "plan", any_of = ["pro"] }}
"#,
            dir.join("secret").display()
        );
        let config = Config::parse(&text, "fuzz.toml").expect("the fuzz config");
        Classifier::from_config(&config).expect("the fuzz classifier")
    })
}

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
    let client: IpAddr = "192.0.2.7".parse().expect("an address");
    let facts = Facts::new(&parts, client, client, SystemTime::now());
    let verdict = classifier().classify(&facts).verdict;
    // Without the secret, no token verifies: no subject, no trust.
    assert!(verdict.subject.is_none(), "{verdict:?}");
    assert!(
        !matches!(verdict.class, Class::RegisteredUser | Class::PayingCustomer),
        "{verdict:?}"
    );
});
