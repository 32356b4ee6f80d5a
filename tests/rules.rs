//! End-to-end: the shipped rules through the real binary. What the client
//! gets, and what the upstream is told.

mod common;

use common::*;
use http::Request;
use serde_json::Value;

fn shipped_rules(up: &Upstream) -> String {
    config(
        up,
        &format!("rules = [\"{}/rules/*.toml\"]", env!("CARGO_MANIFEST_DIR")),
    )
}

async fn ask(usher: &Usher, path: &str, headers: &[(&str, &str)]) -> (u16, Option<Value>, String) {
    let mut req = Request::get(usher.url(path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let (parts, body) = send(req.body(full("")).unwrap()).await;
    (
        parts.status.as_u16(),
        serde_json::from_slice(&body).ok(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

const BROWSER: [(&str, &str); 2] = [
    (
        "user-agent",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    ),
    ("accept-language", "fr-FR,fr;q=0.9"),
];

#[tokio::test(flavor = "multi_thread")]
async fn probes_are_refused_without_naming_the_rule() {
    let up = upstream(echo).await;
    let usher = Usher::start(&shipped_rules(&up));
    for path in [
        "/.env",
        "/%2e%2e/.git/config",
        "//.aws/credentials",
        "/phpmyadmin/",
        "/x?f=../../../etc/passwd",
        // Path tricks: case, `;` parameters, encoded separators and dots.
        "/.ENV",
        "/x/..;/.env",
        "/.git%2fconfig",
        "/a/..%2f.env;jsessionid=1",
        "/%2E%2E/%2e%65nv",
        "/PhpMyAdmin/",
    ] {
        let (status, _, body) = ask(&usher, path, &BROWSER).await;
        assert_eq!(status, 403, "{path}");
        assert!(
            !body.contains("probe"),
            "the client is not told which rule fired: {body}"
        );
    }
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    let metrics = usher.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"usher_requests_total{action="deny",class="malicious_bot"}"#
        ),
        Some(11.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_learns_class_score_and_reasons() {
    let up = upstream(echo).await;
    let usher = Usher::start(&shipped_rules(&up));

    let (status, seen, _) = ask(&usher, "/products", &BROWSER).await;
    assert_eq!(status, 200);
    let seen = seen.unwrap();
    assert_eq!(label(&seen, "x-usher-class"), Some("public_visitor"));
    assert_eq!(label(&seen, "x-usher-reasons"), Some(""));

    let (_, seen, _) = ask(
        &usher,
        "/",
        &[("user-agent", "sqlmap/1.8.2#stable (https://sqlmap.org)")],
    )
    .await;
    let seen = seen.unwrap();
    assert_eq!(label(&seen, "x-usher-class"), Some("malicious_bot"));
    assert_eq!(
        label(&seen, "x-usher-reasons"),
        Some("scanner-tools,declared-bot")
    );

    let (_, seen, _) = ask(
        &usher,
        "/api/items",
        &[("user-agent", "python-requests/2.32.3")],
    )
    .await;
    let seen = seen.unwrap();
    assert_eq!(
        label(&seen, "x-usher-class"),
        Some("public_visitor"),
        "automation scores, alone it does not decide"
    );
    assert_eq!(label(&seen, "x-usher-score"), Some("90"));
    assert_eq!(
        label(&seen, "x-usher-reasons"),
        Some("http-library,declared-bot")
    );

    let (_, seen, _) = ask(&usher, "/", &[]).await;
    let seen = seen.unwrap();
    assert_eq!(label(&seen, "x-usher-score"), Some("60"));
    assert_eq!(label(&seen, "x-usher-reasons"), Some("no-user-agent"));

    let log = usher.wait_access_log(4).await;
    assert_eq!(
        log[1]["reasons"],
        serde_json::json!(["scanner-tools", "declared-bot"])
    );
    assert_eq!(log[1]["class"], "malicious_bot");

    let metrics = usher.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"usher_rule_matches_total{mode="enforce",rule="scanner-tools"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"usher_rule_matches_total{mode="enforce",rule="http-library"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&metrics, "usher_bot_score_count"), Some(4.0));
    assert_eq!(
        sample(&metrics, r#"usher_bot_score_bucket{le="0"}"#),
        Some(1.0)
    );
    assert!(sample(&metrics, "usher_tracked_clients").is_some());
    promtool_check(&metrics);
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_stuffing_turns_a_client_into_a_bot() {
    let up = upstream(echo).await;
    let secret = "stuffing-test-secret-0123456789abcdefghij";
    let usher = Usher::start_env(
        &format!(
            "{}\n[[identity.jwt]]\nissuer = \"https://auth.example/\"\naudience = \"web\"\nalgorithms = [\"HS256\"]\nsecret_env = \"USHER_STUFFING_SECRET\"\n",
            shipped_rules(&up)
        ),
        &[("USHER_STUFFING_SECRET", secret)],
    );
    let mut last = None;
    for i in 0..12 {
        let token =
            format!("eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS8ifQ.forged{i}");
        let bearer = format!("Bearer {token}");
        let (_, seen, _) = ask(
            &usher,
            "/login",
            &[BROWSER[0], BROWSER[1], ("authorization", bearer.as_str())],
        )
        .await;
        last = seen;
    }
    let seen = last.unwrap();
    assert_eq!(label(&seen, "x-usher-class"), Some("malicious_bot"));
    assert_eq!(label(&seen, "x-usher-reasons"), Some("credential-stuffing"));
    // The same client stays a bot for the window, credential or not.
    let (_, seen, _) = ask(&usher, "/", &BROWSER).await;
    assert_eq!(
        label(&seen.unwrap(), "x-usher-class"),
        Some("malicious_bot")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scraper_turns_bot_within_seconds_while_a_person_does_not() {
    let up = upstream(echo).await;
    let usher = Usher::start(&format!(
        "{}\ntrusted_proxies = [\"127.0.0.1\"]\naccess_log = \"off\"",
        shipped_rules(&up)
    ));
    // A request every 33 ms whatever the latency: 30 requests a second.
    let (found, sent) = hammer(
        std::time::Duration::from_millis(33),
        std::time::Duration::from_secs(20),
        "malicious_bot",
        |i| {
            Request::get(usher.url(&format!("/products/{i}")))
                .header(BROWSER[0].0, BROWSER[0].1)
                .header(BROWSER[1].0, BROWSER[1].1)
                .header("x-forwarded-for", "198.51.100.66")
                .body(full(""))
                .unwrap()
        },
    )
    .await;
    let (flipped, seen) = found.expect("a 30 req/s scraper was never labelled malicious_bot");
    assert!(
        label(&seen, "x-usher-reasons").is_some_and(|r| r.contains("scraping-burst")),
        "{seen}"
    );
    eprintln!("scraper labelled malicious_bot after {flipped:?} and {sent} requests");

    for i in 0..3 {
        let (_, seen, _) = ask(
            &usher,
            &format!("/products/{i}"),
            &[BROWSER[0], BROWSER[1], ("x-forwarded-for", "203.0.113.9")],
        )
        .await;
        assert_eq!(
            label(&seen.unwrap(), "x-usher-class"),
            Some("public_visitor")
        );
    }
}

fn rules_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn limit_answers_429_with_retry_after_per_client() {
    let dir = rules_dir(&[(
        "limits.toml",
        "[thresholds]\naction.public_visitor = \"limit\"\n\n[limits]\npublic_visitor = { rate = \"2/m\", burst = 2 }\n",
    )]);
    let up = upstream(echo).await;
    let usher = Usher::start(&config(
        &up,
        &format!(
            "rules = [\"{}/*.toml\"]\ntrusted_proxies = [\"127.0.0.1\"]",
            dir.path().display()
        ),
    ));
    let client_a = [("x-forwarded-for", "198.51.100.1")];
    assert_eq!(ask(&usher, "/", &client_a).await.0, 200);
    assert_eq!(ask(&usher, "/", &client_a).await.0, 200);
    let req = Request::get(usher.url("/"))
        .header("x-forwarded-for", "198.51.100.1")
        .body(full(""))
        .unwrap();
    let (parts, body) = send(req).await;
    assert_eq!(parts.status, 429);
    let retry: u64 = parts.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(&body[..], br#"{"error":"too_many_requests"}"#);
    assert_eq!(
        ask(&usher, "/", &[("x-forwarded-for", "198.51.100.2")])
            .await
            .0,
        200,
        "another client"
    );
    let metrics = usher.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"usher_rate_limited_total{class="public_visitor"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"usher_requests_total{action="limit",class="public_visitor"}"#
        ),
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tarpit_holds_then_refuses() {
    let dir = rules_dir(&[(
        "tarpit.toml",
        "[thresholds]\ntarpit = \"400ms\"\n\n[[rule]]\nname = \"slow-down\"\nwhen.path_prefix = \"/trap\"\naction = \"tarpit\"\n",
    )]);
    let up = upstream(echo).await;
    let usher = Usher::start(&config(
        &up,
        &format!("rules = [\"{}/*.toml\"]", dir.path().display()),
    ));
    let started = std::time::Instant::now();
    assert_eq!(ask(&usher, "/trap", &[]).await.0, 403);
    assert!(started.elapsed() >= std::time::Duration::from_millis(380));
    assert_eq!(ask(&usher, "/open", &[]).await.0, 200);
}
