//! What the fuzz targets share: one classifier with an HMAC JWT issuer,
//! built once per process, and a way to put a request head through it.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use usher::classify::Classifier;
use usher::config::Config;
use usher::facts::Facts;
use usher::verdict::Verdict;

/// The issuer the classifier trusts.
pub const ISSUER: &str = "https://auth.example/";
/// The audience it accepts.
pub const AUDIENCE: &str = "web";
/// The cookie that carries its tokens (besides `Authorization: Bearer`).
pub const TOKEN_COOKIE: &str = "token";
/// Its HS256 secret. Only the `jwt` target signs with it; to the `request`
/// target it is a secret it never learns.
pub const SECRET: &[u8] = b"a secret the fuzzer never learns";
/// Its leeway for clock skew, in seconds (usher's default).
pub const LEEWAY: f64 = 30.0;

/// The classifier: the shipped rules, and the issuer above with
/// `plan = "pro"` for paying customers.
pub fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("usher-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder");
        std::fs::write(dir.join("secret"), SECRET).expect("a file");
        let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/*.toml");
        let text = format!(
            r#"upstream = "http://127.0.0.1:9"
rules = ["{rules}"]
[[identity.jwt]]
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
algorithms = ["HS256"]
secret_file = "{}"
cookie = "{TOKEN_COOKIE}"
paying = {{ claim = "plan", any_of = ["pro"] }}
"#,
            dir.join("secret").display()
        );
        let config = Config::parse(&text, "fuzz.toml").expect("the fuzz config");
        Classifier::from_config(&config).expect("the fuzz classifier")
    })
}

/// The verdict on a request head from a client at 192.0.2.7, now.
pub fn classify(parts: &http::request::Parts) -> Verdict {
    let client: IpAddr = "192.0.2.7".parse().expect("an address");
    let facts = Facts::new(parts, client, client, SystemTime::now());
    classifier().classify(&facts).verdict
}
