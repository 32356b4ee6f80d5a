//! Rule files: every condition on a request that matches and one that
//! does not, and errors that point at the right line.

use std::time::SystemTime;

use super::*;
use crate::crawlers::Claim;
use crate::facts::Facts;
use crate::identity::{Identity, InvalidReason, Source};
use crate::signals::Signals;

fn rules_from(text: &str) -> Result<RuleSet, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), text).unwrap();
    std::fs::write(
        dir.path().join("bad-ips.txt"),
        "# scanners\n203.0.113.0/24\n198.51.100.7 # one host\n",
    )
    .unwrap();
    load(&["r.toml".to_owned()], dir.path()).map_err(|e| {
        e.to_string()
            .replace(&dir.path().join("r.toml").display().to_string(), "r.toml")
    })
}

struct Req {
    method: &'static str,
    uri: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    ip: &'static str,
    identity: Identity,
    signals: Signals,
    partial: bool,
}

fn req(uri: &'static str) -> Req {
    Req {
        method: "GET",
        uri,
        headers: vec![(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0",
        )],
        ip: "192.0.2.10",
        identity: Identity::Anonymous,
        signals: Signals::default(),
        partial: false,
    }
}

impl Req {
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value));
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn ip(mut self, ip: &'static str) -> Self {
        self.ip = ip;
        self
    }
    fn identity(mut self, identity: Identity) -> Self {
        self.identity = identity;
        self
    }
    fn no_user_agent(mut self) -> Self {
        self.headers.retain(|(n, _)| *n != "user-agent");
        self.signals.user_agent_missing = true;
        self
    }
    fn auth_failures(mut self, n: u32) -> Self {
        self.signals.auth_failures_5m = n;
        self
    }
    fn rates(mut self, rates: [u32; 4]) -> Self {
        self.signals.rates = rates;
        self
    }
    fn auth_statuses(mut self, n: u32) -> Self {
        self.signals.status_401_403_60s = n;
        self
    }
    fn shared_verdict(mut self) -> Self {
        self.signals.shared_verdict = true;
        self
    }
    fn paths(mut self, distinct: u32) -> Self {
        self.signals.distinct_paths_60s = distinct;
        self
    }
    fn cadence(mut self, cv: Option<f32>) -> Self {
        self.signals.interarrival_cv = cv;
        self
    }
    /// As a log line: headers not given were not recorded.
    fn logged(mut self) -> Self {
        self.partial = true;
        self
    }
    fn crawler(mut self, claim: Claim) -> Self {
        self.signals.crawler = claim;
        self
    }
    fn statuses(mut self, answered: u32, s4xx: u32, s404: u32) -> Self {
        self.signals.answered_60s = answered;
        self.signals.status_4xx_60s = s4xx;
        self.signals.status_404_60s = s404;
        self
    }
    /// Names of the enforced rules that matched.
    fn against(&self, rules: &RuleSet) -> Vec<String> {
        let mut b = http::Request::builder().method(self.method).uri(self.uri);
        for (n, v) in &self.headers {
            b = b.header(*n, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        let ip = self.ip.parse().unwrap();
        let mut facts = Facts::new(&parts, ip, ip, SystemTime::UNIX_EPOCH);
        facts.recorded = self.partial.then_some(&[][..]);
        rules
            .evaluate(&facts, &self.identity, &self.signals)
            .reasons
            .iter()
            .map(|r| r.to_string())
            .collect()
    }
}

fn matches(rule_when: &str, yes: Req, no: Req) {
    let rules = rules_from(&format!("[[rule]]\nname = \"r\"\nscore = 1\n{rule_when}\n"))
        .unwrap_or_else(|e| panic!("{rule_when}: {e}"));
    assert_eq!(yes.against(&rules), ["r"], "should match: {rule_when}");
    assert!(
        no.against(&rules).is_empty(),
        "should not match: {rule_when}"
    );
}

#[test]
fn each_condition_matches_and_misses() {
    // Patterns are ASCII-classed, but non-ASCII literals still match.
    matches(
        "when.user_agent = '(?i)büro\\b'",
        req("/").header("user-agent", "BÜRO büro/1.0"),
        req("/").header("user-agent", "Büros/1.0"),
    );
    matches(
        "when.crawler = [\"spoofed\", \"unknown\"]",
        req("/").crawler(Claim::Unknown(3)),
        req("/").crawler(Claim::Verified(3)),
    );
    let with_claims = |claims: serde_json::Value| Identity::User {
        source: Source::Jwt,
        subject: "u".into(),
        tier: crate::identity::Tier::Free,
        claims: crate::identity::Claims::new(claims.as_object().unwrap().clone()),
    };
    matches(
        "when.claim = { claim = \"roles\", any_of = [\"staff\"] }",
        req("/").identity(with_claims(
            serde_json::json!({"roles": ["reader", "staff"]}),
        )),
        req("/").identity(with_claims(
            serde_json::json!({"roles": ["reader"], "staff": true}),
        )),
    );
    matches(
        "when.claim = { claim = \"plan\", any_of = \"trial\" }",
        req("/").identity(with_claims(serde_json::json!({"plan": "trial"}))),
        req("/").identity(with_claims(serde_json::json!({"plan": "Trial"}))),
    );
    matches(
        "when.not.claim = { claim = \"plan\", any_of = \"trial\" }",
        req("/"),
        req("/").identity(with_claims(serde_json::json!({"plan": "trial"}))),
    );
    matches(
        "when.signal = { name = \"distinct_paths_60s\", gt = 100 }",
        req("/").paths(101),
        req("/").paths(100),
    );
    matches(
        "when.signal = { name = \"interarrival_cv\", lt = 0.1 }",
        req("/").cadence(Some(0.05)),
        req("/").cadence(None),
    );
    matches(
        "when.not.signal = { name = \"interarrival_cv\", ge = 0.1 }",
        req("/").cadence(Some(0.05)),
        req("/").cadence(Some(0.5)),
    );
    matches(
        "when.crawler = \"none\"",
        req("/"),
        req("/").crawler(Claim::Spoofed(0)),
    );
    matches(
        "when.method = [\"POST\", \"PUT\"]",
        req("/").method("POST"),
        req("/"),
    );
    matches(
        "when.path = \"^/wp-(admin|login)\"",
        req("/wp-login.php"),
        req("/blog/wp-login"),
    );
    matches(
        "when.path_prefix = \"/.git/\"",
        req("/.git/config"),
        req("/git/config"),
    );
    matches(
        "when.query = \"(?i)union[+ ]+select\"",
        req("/?q=1+UNION+select"),
        req("/?q=union"),
    );
    matches(
        "when.host = \"Admin.Example\"",
        req("/").header("host", "admin.example:8443"),
        req("/").header("host", "www.example"),
    );
    matches(
        "when.header_present = [\"x-a\", \"x-b\"]",
        req("/").header("x-a", "1").header("x-b", "2"),
        req("/").header("x-a", "1"),
    );
    matches(
        "when.header_absent = \"accept-language\"",
        req("/"),
        req("/").header("accept-language", "en"),
    );
    matches(
        "when.header = { name = \"accept\", matches = \"^\\\\*/\\\\*$\" }",
        req("/").header("accept", "*/*"),
        req("/").header("accept", "text/html"),
    );
    matches(
        "when.user_agent = [\"(?i)sqlmap\", \"(?i)nikto\"]",
        req("/").header("user-agent", "sqlmap/1.7"),
        req("/"),
    );
    matches(
        "when.user_agent_contains = [\"python-requests\", \"curl/\"]",
        req("/").header("user-agent", "Python-Requests/2.31"),
        req("/"),
    );
    // A long list gets an automaton of its own, matching the same way.
    let many: Vec<String> = (0..100).map(|i| format!("\"Bot{i:03}/\"")).collect();
    matches(
        &format!(
            "when.user_agent_contains = [{}, \"HeadlessChrome\"]",
            many.join(", ")
        ),
        req("/").header("user-agent", "x HEADLESSCHROME/1 bot042/"),
        req("/").header("user-agent", "Headle\u{17F}\u{17F}Chrome bot42/"),
    );
    // ASCII case-insensitive only: U+017F is not an `s` here.
    matches(
        "when.user_agent_contains = [\"HeadlessChrome\", \"a.b(\"]",
        req("/").header("user-agent", "x HEADLESSCHROME/1"),
        req("/").header("user-agent", "Headle\u{17F}\u{17F}Chrome axb("),
    );
    matches(
        "when.user_agent_missing = true",
        req("/").no_user_agent(),
        req("/"),
    );
    matches(
        "when.ip = [\"10.0.0.0/8\", \"2001:db8::/32\"]",
        req("/").ip("2001:db8::1"),
        req("/"),
    );
    matches(
        "when.ip_file = \"bad-ips.txt\"",
        req("/").ip("203.0.113.77"),
        req("/").ip("198.51.100.8"),
    );
    let invalid = Identity::Invalid {
        source: Source::Jwt,
        reason: InvalidReason::Expired,
    };
    matches(
        "when.identity = \"invalid\"",
        req("/").identity(invalid.clone()),
        req("/"),
    );
    matches(
        "when.class = \"public_visitor\"",
        req("/"),
        req("/").identity(Identity::Service {
            source: Source::ApiKey,
            client_id: "c".into(),
            claims: Default::default(),
        }),
    );
    matches(
        "when.signal = { name = \"auth_failures_5m\", ge = 5 }",
        req("/").auth_failures(5),
        req("/").auth_failures(4),
    );
    matches(
        "when.all = [{ path_prefix = \"/login\" }, { method = \"POST\" }]",
        req("/login").method("POST"),
        req("/login"),
    );
    matches(
        "when.any = [{ path_prefix = \"/a\" }, { path_prefix = \"/b\" }]",
        req("/b"),
        req("/c"),
    );
    matches(
        "when.not = { path_prefix = \"/public\" }",
        req("/private"),
        req("/public/x"),
    );
    matches(
        "when = { path_prefix = \"/api\", method = \"DELETE\" }",
        req("/api/x").method("DELETE"),
        req("/api/x"),
    );
}

#[test]
fn headers_a_log_did_not_record_are_unknown_not_absent() {
    // Live, a missing header is absent; in a log, unrecorded.
    for when in [
        "when.header_absent = \"accept-language\"",
        "when.not.header_present = \"accept-language\"",
        "when.all = [{ path_prefix = \"/\" }, { header_absent = \"accept-language\" }]",
        "when.header = { name = \"accept-language\", matches = \"\\\\*\" }",
        "when.not.header = { name = \"accept-language\", matches = \"en\" }",
        "when.not.any_header = \"en-GB\"",
    ] {
        let rules = rules_from(&format!("[[rule]]\nname = \"r\"\nscore = 1\n{when}\n")).unwrap();
        let live = req("/").against(&rules);
        let logged = req("/").logged().against(&rules);
        assert!(logged.is_empty(), "{when}: fired on an unrecorded header");
        if !when.contains("matches = \"\\\\*") {
            assert_eq!(live, ["r"], "{when}: live, the header is absent");
        }
    }
    // What the log did record still decides, and `any` can be true anyway.
    matches(
        "when.any = [{ path_prefix = \"/.env\" }, { header_absent = \"accept-language\" }]",
        req("/.env").logged(),
        req("/").logged(),
    );
    matches(
        "when.header_present = \"user-agent\"",
        req("/").logged(),
        req("/").no_user_agent(),
    );
    let rules =
        rules_from("[[rule]]\nname = \"r\"\nscore = 1\nwhen.user_agent_missing = true").unwrap();
    assert!(
        req("/").no_user_agent().logged().against(&rules).is_empty(),
        "an unrecorded user agent is not a missing one"
    );
}

#[test]
fn path_tricks_do_not_slip_past_a_path_rule() {
    let rules =
        rules_from("[[rule]]\nname = \"env\"\nwhen.path_prefix = \"/.env\"\naction = \"deny\"\n")
            .unwrap();
    for tricky in [
        "/%2e%2e/.env",
        "//.env",
        "/./.env",
        "/a/../.env",
        "/.env;x=1",
        "/%2e%65nv",
    ] {
        assert_eq!(req(tricky).against(&rules), ["env"], "{tricky}");
    }
}

#[test]
fn hostile_bytes_and_encodings_do_not_hide_from_rules() {
    let rules = rules_from(
        r#"
[[rule]]
name = "tool"
when.user_agent = '(?i)sqlmap'
class = "malicious_bot"

[[rule]]
name = "jndi"
when.any_header = '(?i)\$\{jndi:'
action = "deny"

[[rule]]
name = "traversal"
when.any = [{ path_escapes_root = true }, { query = '\.\./\.\./' }]
action = "deny"
"#,
    )
    .unwrap();
    let mut b = http::Request::builder().uri("/");
    b = b.header(
        "user-agent",
        http::HeaderValue::from_bytes(b"sqlmap/1.8\xff").unwrap(),
    );
    let (parts, ()) = b.body(()).unwrap().into_parts();
    let ip = "192.0.2.1".parse().unwrap();
    let facts = Facts::new(&parts, ip, ip, SystemTime::UNIX_EPOCH);
    let out = rules.evaluate(&facts, &Identity::Anonymous, &Signals::default());
    assert_eq!(
        out.class,
        Some(Class::MaliciousBot),
        "a stray byte does not hide the tool"
    );
    assert_eq!(
        req("/")
            .header("x-forwarded-host", "${jndi:ldap://x/a}")
            .against(&rules),
        ["jndi"]
    );
    assert_eq!(
        req("/cgi-bin/.%2e/.%2e/.%2e/bin/sh").against(&rules),
        ["traversal"]
    );
    assert_eq!(
        req("/f?name=..%2f..%2fetc%2fpasswd").against(&rules),
        ["traversal"]
    );
    assert!(req("/docs/../index.html?page=2").against(&rules).is_empty());
}

#[test]
fn thresholds_and_shadow_mode() {
    let rules = rules_from(
        r#"
[thresholds]
bot = 50
action.malicious_bot = "deny"

[[rule]]
name = "trial"
mode = "shadow"
score = 1000
action = "tarpit"

[[rule]]
name = "no-ua"
when.user_agent_missing = true
score = 60
"#,
    )
    .unwrap();
    assert_eq!(rules.bot_threshold(), 50);
    assert_eq!(rules.class_action(Class::MaliciousBot), Action::Deny);
    assert_eq!(rules.class_action(Class::PublicVisitor), Action::Forward);
    assert!(
        req("/").against(&rules).is_empty(),
        "shadow rules change nothing"
    );
    assert_eq!(req("/").no_user_agent().against(&rules), ["no-ua"]);
}

#[test]
fn errors_point_at_file_line_and_rule() {
    for (text, want) in [
        ("[[rule]\nname = \"x\"", "r.toml:1:"),
        (
            "[[rule]]\nname = \"x\"\nscore = 1\nwhen.path = \"(unclosed\"",
            "r.toml:4:",
        ),
        (
            "[[rule]]\nname = \"x\"\nscore = 1\nwhen.nonsense = 1",
            "r.toml:4:",
        ),
        (
            "[[rule]]\nname = \"x\"\nscore = 1\nwhen.ip = [\"10.0.0.0/33\"]",
            "r.toml:4:",
        ),
        ("[[rule]]\nname = \"x y\"\nscore = 1", "r.toml:2:"),
        ("[[rule]]\nname = \"x\"\n", "r.toml:2:"),
        (
            "[[rule]]\nname = \"x\"\nscore = 1\nmode = \"loud\"",
            "r.toml:4:",
        ),
        (
            "[[rule]]\nname = \"x\"\nscore = 1\nwhen.method = \"get\"",
            "r.toml:4:",
        ),
        (
            "[[rule]]\nname = \"x\"\nscore = 1\n[[rule]]\nname = \"x\"\nscore = 2",
            "r.toml:5:",
        ),
        ("[[rule]]\nname = \"x\"\nclass = \"robot\"", "r.toml:3:"),
        (
            "[[rule]]\nname = \"x\"\nscore = 1\nwhen.signal = { name = \"mood\", gt = 1 }",
            "r.toml:4:",
        ),
        (
            "[[rule]]\nname = \"x\"\nscore = 1\nwhen.ip_file = \"missing.txt\"",
            "r.toml:4:",
        ),
        (
            "[[rule]]\nname = \"x\"\nscore = 1\nwhen.path = []",
            "r.toml:4:",
        ),
        ("[thresholds]\nbot = 0", "positive"),
        (
            "[[rule]]\nname = \"x\"\nscore = 1\nwhen.crawler = \"trusted\"",
            "r.toml:4:",
        ),
        ("[[crawler]]\nname = \"c\"\nuser_agent = \"C\"", "r.toml:2:"),
        (
            "[[crawler]]\nname = \"c\"\nuser_agent = \"C\"\nrdns = \"com\"",
            "r.toml:4:",
        ),
        (
            "[[crawler]]\nname = \"c\"\nuser_agent = \"(C\"\nrdns = \"c.example\"",
            "r.toml:3:",
        ),
        (
            "[[crawler]]\nname = \"c\"\nuser_agent = \"C\"\nranges = [\"10.0.0.0/40\"]",
            "r.toml:4:",
        ),
        (
            "[[crawler]]\nname = \"c\"\nuser_agent = \"C\"\nranges_file = \"none.txt\"",
            "r.toml:4:",
        ),
        (
            "[[crawler]]\nname = \"c\"\nuser_agent = \"C\"\nrdns = \"c.example\"\n[[crawler]]\nname = \"c\"\nuser_agent = \"D\"\nrdns = \"d.example\"",
            "r.toml:6:",
        ),
        (
            "[[crawler]]\nname = \"c\"\nuser_agent = \"C\"\nrdns = \"c.example\"\nips = []",
            "r.toml:5:",
        ),
        (
            "[thresholds]\naction.public_visitor = \"limit\"",
            "no quota",
        ),
        (
            "[limits]\npublic_visitor = { rate = \"1/s\" }\nmalicious_bot = { rate = \"lots\" }",
            "r.toml:3:",
        ),
    ] {
        let e = rules_from(text)
            .err()
            .unwrap_or_else(|| panic!("accepted: {text}"));
        assert!(e.contains(want), "{text}\n→ {e}");
    }
    let e = rules_from("[[rule]]\nname = \"probe\"\nscore = 1\nwhen.path = \"(\"").unwrap_err();
    assert!(e.contains("rule `probe`"), "{e}");
}

#[test]
fn globs_load_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("rules");
    std::fs::create_dir(&sub).unwrap();
    for (file, name) in [("20-b.toml", "b"), ("10-a.toml", "a"), ("30-c.toml", "c")] {
        std::fs::write(
            sub.join(file),
            format!("[[rule]]\nname = \"{name}\"\nscore = 1\n"),
        )
        .unwrap();
    }
    std::fs::write(sub.join("README.md"), "not a rule file").unwrap();
    let rules = load(&["rules/*.toml".to_owned()], dir.path()).unwrap();
    let names: Vec<&str> = rules.rules().iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(
        load(&["rules/*.yaml".to_owned()], dir.path()).is_err(),
        "a glob matching nothing"
    );
    std::fs::write(sub.join("40-t.toml"), "[thresholds]\nbot = 1\n").unwrap();
    std::fs::write(sub.join("50-t.toml"), "[thresholds]\nbot = 2\n").unwrap();
    let e = load(&["rules/*.toml".to_owned()], dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("already set"), "{e}");
}

#[test]
fn wildcards() {
    assert!(wildcard("*.toml", "10-a.toml"));
    assert!(wildcard("1?-*.toml", "10-a.toml"));
    assert!(!wildcard("*.toml", "a.toml.bak"));
    assert!(wildcard("*", ""));
    assert!(!wildcard("a*b", "ac"));
}

/// The rules shipped in `rules/`.
fn shipped() -> RuleSet {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    load(&["rules/*.toml".to_owned()], base).unwrap()
}

#[test]
fn every_shipped_rule_has_a_positive_and_a_negative_example() {
    let rules = shipped();
    let browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    let person = || {
        req("/")
            .header("user-agent", browser)
            .header("accept-language", "en-GB,en;q=0.9")
    };
    let ua = |agent: &'static str| req("/").header("user-agent", agent);
    let cases: Vec<(&str, Req, Req)> = vec![
        (
            "probe-secrets",
            req("/%2e%2e/.env").header("accept-language", "en"),
            req("/environment").header("accept-language", "en"),
        ),
        (
            "probe-secrets",
            req("/app/.ENV.bak").header("accept-language", "en"),
            req("/.github/workflows/ci.yml").header("accept-language", "en"),
        ),
        (
            "probe-admin-tools",
            req("/phpMyAdmin/index.php").header("accept-language", "en"),
            req("/admin/users").header("accept-language", "en"),
        ),
        (
            "probe-admin-tools",
            req("/admin/phpMyAdmin-5.2.1/").header("accept-language", "en"),
            req("/docs/using-phpmyadmin").header("accept-language", "en"),
        ),
        (
            "probe-traversal-and-injection",
            req("/download?file=../../../etc/passwd").header("accept-language", "en"),
            req("/download?file=report.pdf").header("accept-language", "en"),
        ),
        (
            "probe-traversal-and-injection",
            req("/f?p=..%2f..%2fetc%2fpasswd").header("accept-language", "en"),
            req("/f?p=2024%2F01").header("accept-language", "en"),
        ),
        (
            "probe-traversal-and-injection",
            req("/cgi-bin/.%2e/.%2e/.%2e/bin/sh").header("accept-language", "en"),
            req("/cgi-bin/status").header("accept-language", "en"),
        ),
        (
            "probe-traversal-and-injection",
            req("/")
                .header("x-api-version", "${jndi:ldap://x/a}")
                .header("accept-language", "en"),
            req("/")
                .header("x-api-version", "2")
                .header("accept-language", "en"),
        ),
        (
            "probe-traversal-and-injection",
            ua("${jndi:ldap://x/a}").header("accept-language", "en"),
            person(),
        ),
        (
            "probe-wordpress",
            req("/wp-login.php").header("accept-language", "en"),
            req("/blog/post-1").header("accept-language", "en"),
        ),
        (
            "scanner-tools",
            ua("sqlmap/1.8.2#stable (https://sqlmap.org)"),
            person(),
        ),
        (
            "scanner-tools",
            ua(
                "Mozilla/5.0 (compatible; Nuclei - Open-source project (github.com/projectdiscovery/nuclei))",
            ),
            ua("Mozilla/5.0 (compatible; NucleusBrowser)"),
        ),
        (
            "http-library",
            ua("python-requests/2.32.3"),
            ua("python-requests/2.32.3").identity(Identity::Service {
                source: Source::ApiKey,
                client_id: "etl".into(),
                claims: Default::default(),
            }),
        ),
        ("http-library", ua("Go-http-client/1.1"), person()),
        ("http-library", ua("Java-http-client/17.0.2"), person()),
        ("http-library", ua("Mozilla/5.0"), person()),
        (
            "headless-browser",
            ua(
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
            ),
            person(),
        ),
        ("no-user-agent", req("/").no_user_agent(), person()),
        ("browser-without-accept-language", ua(browser), person()),
        (
            "credential-stuffing",
            req("/login").auth_failures(12),
            req("/login").auth_failures(3),
        ),
        (
            "login-brute-force",
            req("/api/login").method("POST").auth_statuses(12),
            req("/api/login").method("POST").auth_statuses(4),
        ),
        (
            "login-brute-force",
            req("/session").method("POST").auth_statuses(12),
            req("/session").auth_statuses(12),
        ),
        (
            "scraping-burst",
            person().rates([25, 250, 250, 250]),
            person().rates([30, 120, 400, 900]),
        ),
        (
            "scraping-burst",
            person()
                .rates([25, 250, 250, 250])
                .identity(Identity::User {
                    source: Source::Jwt,
                    subject: "u".into(),
                    tier: crate::identity::Tier::Paying,
                    claims: Default::default(),
                }),
            person()
                .rates([25, 250, 250, 250])
                .identity(Identity::Service {
                    source: Source::ApiKey,
                    client_id: "etl".into(),
                    claims: Default::default(),
                }),
        ),
        (
            "scraping-sustained",
            person().rates([10, 100, 700, 700]),
            person().rates([10, 100, 500, 2000]),
        ),
        (
            "path-walker",
            person().statuses(40, 35, 32),
            person().statuses(200, 40, 35),
        ),
        ("path-enumeration", person().paths(350), person().paths(120)),
        ("known-elsewhere", person().shared_verdict(), person()),
        (
            "path-enumeration",
            person().paths(350),
            person().paths(350).crawler(Claim::Verified(0)),
        ),
        (
            "metronome",
            person().rates([1, 10, 60, 60]).cadence(Some(0.02)),
            person().rates([1, 10, 60, 60]).cadence(Some(0.8)),
        ),
        (
            "metronome",
            person().rates([1, 10, 60, 60]).cadence(Some(0.02)),
            person().rates([1, 5, 12, 12]).cadence(Some(0.02)),
        ),
        (
            "metronome",
            person().rates([1, 10, 60, 60]).cadence(Some(0.02)),
            person().rates([1, 10, 60, 60]).cadence(None),
        ),
        (
            "verified-crawler",
            person().crawler(Claim::Verified(0)),
            person().crawler(Claim::Unknown(0)),
        ),
        (
            "unconfirmed-crawler",
            person().crawler(Claim::Unknown(0)),
            person().crawler(Claim::Verified(0)),
        ),
        (
            "spoofed-crawler",
            person().crawler(Claim::Spoofed(0)),
            person().crawler(Claim::Unknown(0)),
        ),
        (
            "declared-bot",
            ua("Mozilla/5.0 (compatible; ExampleBot/2.1; +https://example.com/bot)"),
            ua(
                "Mozilla/5.0 (Linux; Android 6.0; CUBOT MAX) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/72.0.3626.121 Mobile Safari/537.36",
            ),
        ),
        (
            "declared-bot",
            ua("acme-uptime-monitor/3.2"),
            ua(
                "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.123 Mobile Safari/537.36 CamScanner/4.8.5.2310271827",
            ),
        ),
        (
            "declared-bot",
            ua(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 (contact: ops@example.org)",
            ),
            ua(
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/605.1 NAVER(inapp; search; 2000; 12.3.6; 14PRO)",
            ),
        ),
        // No platform: not a browser, whatever the name.
        (
            "declared-bot",
            ua("inventory-sync/1.4 (build 812)"),
            ua("Dalvik/2.1.0 (Linux; U; Android 9; SM-G965U Build/PPR1.180610.011)"),
        ),
        (
            "declared-bot",
            ua("Mozilla/5.0 (compatible; Linkwalker/1.0)"),
            ua(
                "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 5.1; Trident/4.0; .NET CLR 2.0.50727)",
            ),
        ),
        (
            "declared-bot",
            ua("status-checker/2.0"),
            ua("AndroidDownloadManager/13 (Linux; U; Android 13; Pixel 7 Build/TQ3A.230901.001)"),
        ),
        (
            "declared-bot",
            ua("acme-feed-sync/1.0"),
            ua("Microsoft-WebDAV-MiniRedir/10.0.19045"),
        ),
        (
            "declared-bot",
            ua("sitegrabber/0.9"),
            ua("w3m/0.5.3+git20230121"),
        ),
        ("declared-bot", ua("sitegrabber/0.9"), ua("Dillo/3.0.5")),
        (
            "declared-bot",
            ua("sitegrabber/0.9"),
            ua("VLC/3.0.20 LibVLC/3.0.20"),
        ),
        (
            "declared-bot",
            ua("Pingdom.com_bot_version_1.4"),
            ua(
                "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36 AmazonShopping/24.1",
            ),
        ),
        (
            "declared-bot",
            ua("ExampleCrawler/1.0"),
            ua("ExampleCrawler/1.0").identity(Identity::Service {
                source: Source::ApiKey,
                client_id: "partner".into(),
                claims: Default::default(),
            }),
        ),
    ];
    let mut covered: Vec<&str> = Vec::new();
    for (rule, yes, no) in &cases {
        assert!(
            yes.against(&rules).iter().any(|r| r == rule),
            "{rule} should match its positive example: {:?}",
            yes.against(&rules)
        );
        assert!(
            !no.against(&rules).iter().any(|r| r == rule),
            "{rule} should not match its negative example"
        );
        covered.push(rule);
    }
    for rule in rules.rules() {
        assert!(
            covered.contains(&&*rule.name),
            "shipped rule `{}` has no examples here",
            rule.name
        );
    }
    assert!(
        person().against(&rules).is_empty(),
        "a plain browser request matches nothing"
    );
}

/// Load `files` (name, text) from one folder; every diagnostic as
/// `file:line: severity: [rule `x`: ]message` with the folder left out.
fn diagnostics_of(files: &[(&str, &str)]) -> (bool, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let shown = |d: &Diagnostic| {
        let place = d.place().replace(&format!("{}/", dir.path().display()), "");
        let rule = d
            .rule
            .as_ref()
            .map(|r| format!("rule `{r}`: "))
            .unwrap_or_default();
        let severity = if d.severity == Severity::Error {
            "error"
        } else {
            "warning"
        };
        format!("{place}: {severity}: {rule}{}", d.message)
    };
    match load_all(&["*.toml".to_owned()], dir.path()) {
        Ok(loaded) => (true, loaded.warnings.iter().map(shown).collect()),
        Err(ConfigError::Diagnostics(d)) => (false, d.all().iter().map(shown).collect()),
        Err(e) => panic!("not a list: {e}"),
    }
}

#[test]
fn every_broken_rule_in_every_file_is_reported() {
    let (ok, found) = diagnostics_of(&[
        (
            "a.toml",
            "[[rule]]\nname = \"regex\"\nscore = 1\nwhen.path = \"(\"\n\n\
             [[rule]]\nname = \"fine\"\nscore = 1\n\n\
             [[rule]]\nname = \"key\"\nscore = 1\nwhen.nonsense = 1\n",
        ),
        (
            "b.toml",
            "[[rule]]\nname = \"cidr\"\nscore = 1\nwhen.ip = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n\n\
             [[rule]]\nname = \"fine\"\nscore = 1\n",
        ),
        ("c.toml", "[[rule]\nname = \"syntax\"\n"),
        (
            "d.toml",
            "[[rule]]\nname = \"listed\"\nscore = 1\nwhen.ip_file = \"list.txt\"\n",
        ),
        ("list.txt", "10.0.0.0/8\n\n  nope # a typo\n"),
    ]);
    assert!(!ok);
    let expect = [
        "a.toml:4:13: error: rule `regex`: invalid regex `(`",
        "a.toml:13:6: error: rule `key`: `when.nonsense`: unknown field",
        "b.toml:6:3: error: rule `cidr`: `10.0.0.0/33` is not",
        "b.toml:10:8: error: rule `fine`: already defined at",
        "c.toml:1:",
        "list.txt:3:3: error: rule `listed`: `nope` is not",
    ];
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    for (got, want) in found.iter().zip(expect) {
        assert!(got.starts_with(want), "{got}\n  wanted {want}");
    }
}

#[test]
fn warnings_name_the_rule_and_its_line() {
    let (ok, found) = diagnostics_of(&[
        (
            "a.toml",
            r#"[[rule]]
name = "catch-all"
class = "public_visitor"

[[rule]]
name = "dead"
when.path_prefix = "/x"
class = "malicious_bot"

[[rule]]
name = "scores"
when.path_prefix = "/x"
class = "malicious_bot"
score = 10

[[rule]]
name = "twin"
when = { path_prefix = ["/x"] }
score = 5

[[rule]]
name = "trial"
mode = "shadow"
when.path_prefix = "/x"
class = "malicious_bot"

[[rule]]
name = "nets"
score = 1
when.ip = ["192.0.2.0/24",
  "10.1.2.3/8"]
when.ip_file = "list.txt"
"#,
        ),
        (
            "list.txt",
            "# a list\n203.0.113.0/24\n  198.51.100.7/16 # typo\n",
        ),
    ]);
    assert!(ok, "{found:#?}");
    for want in [
        "a.toml:6:8: warning: rule `dead`: can never change a verdict: rule `catch-all`",
        "a.toml:11:8: warning: rule `scores`: its `class` never takes effect",
        "a.toml:17:8: warning: rule `twin`: same conditions as rule `dead`",
        "a.toml:31:3: warning: rule `nets`: `10.1.2.3/8` has host bits set",
        "list.txt:3:3: warning: rule `nets`: `198.51.100.7/16` has host bits set",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(want)),
            "missing {want}\n{found:#?}"
        );
    }
    assert!(
        !found.iter().any(|f| f.contains("`trial`")),
        "shadow rules are not judged: {found:#?}"
    );
}

#[test]
fn a_regex_matching_the_empty_string_is_a_warning_not_an_error() {
    // `^$` on a header is a fair way to say "empty"; it is flagged, not refused.
    let rules = rules_from(
        "[[rule]]\nname = \"blank-accept\"\nscore = 1\nwhen.header = { name = \"accept\", matches = \"^$\" }",
    )
    .unwrap();
    assert_eq!(
        req("/").header("accept", "").against(&rules),
        ["blank-accept"]
    );
    assert!(req("/").header("accept", "*/*").against(&rules).is_empty());
}

#[test]
fn a_huge_non_ascii_user_agent_is_matched_to_its_end() {
    // ASCII classes keep this linear; a scanner name after 64 KiB of
    // non-ASCII padding is still found, and a browser name is not invented.
    let rules = shipped();
    let mut padded = "é".repeat(32 * 1024);
    padded.push_str(" sqlmap/1.8");
    let value: &'static str = Box::leak(padded.into_boxed_str());
    let reasons = req("/").header("user-agent", value).against(&rules);
    assert!(reasons.iter().any(|r| r == "scanner-tools"), "{reasons:?}");
    let plain: &'static str = Box::leak("ü".repeat(32 * 1024).into_boxed_str());
    let reasons = req("/")
        .header("user-agent", plain)
        .header("accept-language", "de")
        .against(&rules);
    assert!(!reasons.iter().any(|r| r == "scanner-tools"), "{reasons:?}");
}

#[test]
fn text_compiles_without_a_file_and_errors_name_its_line() {
    let base = std::path::Path::new(".");
    let ok = "[[rule]]\nname = \"env\"\nwhen.path_prefix = \"/.env\"\nclass = \"malicious_bot\"\n";
    assert!(load_text(ok, "t.toml", base).is_ok());
    let bad = "[[rule]]\nname = \"x\"\nwhen.path = \"(\"\nclass = \"malicious_bot\"\n";
    let e = load_text(bad, "t.toml", base).unwrap_err().to_string();
    assert!(e.contains("t.toml:3"), "{e}");
}

#[test]
fn an_endless_address_list_is_an_error_not_a_hang() {
    let base = std::path::Path::new("/");
    let rule = "[[rule]]\nname = \"x\"\nwhen.ip_file = \"/dev/zero\"\nclass = \"malicious_bot\"\n";
    let e = load_text(rule, "t.toml", base).unwrap_err().to_string();
    assert!(e.contains("address lists may be at most 16 MiB"), "{e}");
    assert!(e.contains("t.toml:3"), "{e}");
}
