//! End-to-end: `usher explain` on known requests through the real binary
//! and the shipped rules.

mod common;

use std::process::{Command, Output};

use serde_json::Value;

fn explain(args: &[&str]) -> Output {
    let config = format!("{}/usher.toml", env!("CARGO_MANIFEST_DIR"));
    Command::new(common::usher_bin())
        .args(["explain", "--config", &config])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_scanner_is_explained_rule_by_rule() {
    let o = explain(&[
        "-H",
        "User-Agent: sqlmap/1.8.2#stable",
        "--ip",
        "203.0.113.5",
        "GET",
        "/products?id=1",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("request     GET /products?id=1"), "{text}");
    assert!(text.contains("client      203.0.113.5"), "{text}");
    assert!(text.contains("identity    anonymous"), "{text}");
    let scanner = text.lines().find(|l| l.contains("scanner-tools")).unwrap();
    assert!(scanner.trim_start().starts_with("match"), "{scanner}");
    assert!(
        scanner.contains("sqlmap"),
        "the deciding pattern is shown: {scanner}"
    );
    let probe = text
        .lines()
        .find(|l| l.contains("probe-wordpress"))
        .unwrap();
    assert!(probe.trim_start().starts_with('-'), "{probe}");
    assert!(text.contains("verdict     class malicious_bot"), "{text}");
}

#[test]
fn json_output_carries_every_rule_and_the_verdict() {
    let o = explain(&[
        "--format",
        "json",
        "-H",
        "User-Agent: Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
        "POST",
        "http://shop.example/wp-login.php",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["request"]["host"], "shop.example");
    assert_eq!(doc["request"]["method"], "POST");
    let rules = doc["rules"].as_array().unwrap();
    let rule = |name: &str| rules.iter().find(|r| r["name"] == name).unwrap().clone();
    assert_eq!(rule("probe-wordpress")["matched"], true);
    // No Accept-Language on a browser user agent: live, that is absent.
    let accept = rule("browser-without-accept-language");
    assert_eq!(accept["matched"], true, "{accept}");
    assert_eq!(rule("scanner-tools")["matched"], false);
    assert!(
        rule("scraping-burst")["because"]
            .as_str()
            .unwrap()
            .contains("(is 1)")
    );
    assert_eq!(doc["verdict"]["score"], 90);
    assert_eq!(doc["verdict"]["class"], "public_visitor");
    assert_eq!(
        doc["verdict"]["reasons"],
        serde_json::json!(["probe-wordpress", "browser-without-accept-language"])
    );
}

#[test]
fn bad_requests_are_usage_errors() {
    for args in [
        &["-H", "no colon", "GET", "/"][..],
        &["GET", "not a url with spaces"][..],
        &["G E T", "/"][..],
        &["--ip", "nowhere", "GET", "/"][..],
    ] {
        let o = explain(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn labels_are_stripped_and_credentials_never_printed() {
    let o = explain(&[
        "--format",
        "json",
        "-H",
        "X-Usher-Class: paying_customer",
        "-H",
        "Authorization: Bearer very-secret-token",
        "-H",
        "Accept: text/html",
        "-H",
        "Accept: application/json",
        "-H",
        "Host: given.example",
        "GET",
        "http://url.example/",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(!text.contains("very-secret-token"), "{text}");
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let headers = &doc["request"]["headers"];
    assert!(headers.get("x-usher-class").is_none(), "{headers}");
    assert_eq!(headers["accept"].as_array().unwrap().len(), 2);
    assert_eq!(doc["request"]["host"], "given.example");
    assert_eq!(headers["host"].as_array().unwrap().len(), 1);
}
