//! The classifier on its own: facts, identity, signals, rules and verdict
//! for one request under the shipped rules, per kind of request. Criterion
//! reports the time per request; compare runs on one machine (or the
//! kinds with each other), not absolute figures across machines.
//!
//!     cargo bench --bench classify

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::SystemTime;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use usher::classify::Classifier;
use usher::config::Config;
use usher::crawlers::Claim;
use usher::facts::Facts;
use usher::verdict::Class;

const SECRET: &str = "classifier-benchmark-secret-0123456789abcdef";
const API_KEY: &str = "bench-api-key-0123456789abcdef";
const BROWSER: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                       (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
/// Distinct client addresses the requests rotate through, so the client
/// state is exercised as under real traffic (and no address looks like a
/// scraper).
const CLIENTS: u32 = 10_000;

/// The shipped rules, an HS256 issuer and one API key.
fn classifier(dir: &Path) -> Classifier {
    std::fs::write(dir.join("secret"), SECRET).expect("secret");
    std::fs::write(
        dir.join("keys.toml"),
        usher::identity::api_keys::entry_for(API_KEY.as_bytes(), "acme", Class::ServiceClient),
    )
    .expect("keys");
    let config = format!(
        r#"rules = ["{rules}/*.toml"]
[[identity.jwt]]
issuer = "https://auth.bench/"
audience = "web"
algorithms = ["HS256"]
secret_file = "{dir}/secret"
paying = {{ claim = "plan", any_of = ["pro"] }}
[identity.api_keys]
file = "{dir}/keys.toml"
"#,
        rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
        dir = dir.display()
    );
    let config = Config::parse(&config, "bench").expect("config");
    Classifier::from_config(&config).expect("classifier")
}

/// An HS256 token for `subject`, valid for a day.
fn token(subject: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 86_400;
    let claims = serde_json::json!({
        "iss": "https://auth.bench/", "aud": "web", "sub": subject, "plan": "pro", "exp": exp,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

/// A request head as a browser would send it, with `extra` headers.
fn request(path: &str, user_agent: &str, extra: &[(&str, &str)]) -> http::request::Parts {
    let mut req = http::Request::get(path)
        .header("host", "shop.example")
        .header("user-agent", user_agent)
        .header("accept", "text/html,application/xhtml+xml")
        .header("accept-language", "en-GB,en;q=0.9")
        .header("accept-encoding", "gzip, br");
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    req.body(()).expect("request").into_parts().0
}

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i % CLIENTS))
}

/// Classify `parts` from rotating addresses (or `ip`), with the crawler
/// claim the proxy would have settled first.
fn bench(
    c: &mut Criterion,
    name: &str,
    classifier: &Classifier,
    parts: &http::request::Parts,
    ip: Option<IpAddr>,
    claim: Option<Claim>,
) {
    let mut i = 0u32;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let ip = ip.unwrap_or_else(|| client(i));
            let mut facts = Facts::new(parts, ip, ip, SystemTime::now());
            facts.crawler =
                Some(claim.unwrap_or_else(|| classifier.crawlers().check(facts.user_agent, ip)));
            black_box(classifier.classify(black_box(&facts)))
        })
    });
}

fn classify(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let classifier = classifier(dir.path());
    let googlebot = request("/products/7", GOOGLEBOT, &[]);
    let google = IpAddr::V4(Ipv4Addr::new(66, 249, 64, 1));
    let elsewhere = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let (Claim::Spoofed(googlebot_index)
    | Claim::Verified(googlebot_index)
    | Claim::Unknown(googlebot_index)) = classifier
        .crawlers()
        .check(Some(GOOGLEBOT.as_bytes()), elsewhere)
    else {
        panic!("the shipped rules define Googlebot");
    };

    bench(
        c,
        "anonymous browser",
        &classifier,
        &request("/products/7?colour=red", BROWSER, &[]),
        None,
        None,
    );
    bench(
        c,
        "verified crawler",
        &classifier,
        &googlebot,
        Some(google),
        None,
    );
    bench(
        c,
        "spoofed crawler",
        &classifier,
        &googlebot,
        Some(elsewhere),
        Some(Claim::Spoofed(googlebot_index)),
    );
    bench(
        c,
        "bot user agent",
        &classifier,
        &request("/products/7", "python-requests/2.32.3", &[]),
        None,
        None,
    );
    bench(
        c,
        "probe path",
        &classifier,
        &request("/.env", BROWSER, &[]),
        None,
        None,
    );
    let bearer = format!("Bearer {}", token("alice"));
    bench(
        c,
        "jwt user (cache hit)",
        &classifier,
        &request("/account", BROWSER, &[("authorization", &bearer)]),
        None,
        None,
    );
    bench(
        c,
        "api key client",
        &classifier,
        &request("/api/v1/orders", "acme-sync/3.1", &[("x-api-key", API_KEY)]),
        None,
        None,
    );

    // A token never seen before, every time: signature checked, claims
    // parsed, cache filled.
    let mut n = 0u32;
    c.bench_function("jwt user (cache miss)", |b| {
        b.iter_batched(
            || {
                n += 1;
                let bearer = format!("Bearer {}", token(&format!("user{n}")));
                (
                    request("/account", BROWSER, &[("authorization", &bearer)]),
                    client(n),
                )
            },
            |(parts, ip)| {
                let mut facts = Facts::new(&parts, ip, ip, SystemTime::now());
                facts.crawler = Some(Claim::None);
                black_box(classifier.classify(black_box(&facts)))
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, classify);
criterion_main!(benches);
