//! End-to-end: verified credentials through the real binary decide the
//! class and subject the upstream sees.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use http::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "e2e-only-hmac-secret-0123456789abcdefghij";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn identity_config(up: &Upstream, extra: &str) -> String {
    config(
        up,
        &format!(
            r#"
[identity]
{extra}

[[identity.jwt]]
issuer = "https://auth.example/"
audience = "web"
algorithms = ["RS256"]
public_key_file = "{}"
paying = {{ claim = "plan", any_of = ["pro", "enterprise"] }}

[[identity.jwt]]
issuer = "https://machines.example/"
audience = "api"
algorithms = ["HS256"]
secret_env = "USHER_E2E_SECRET"
service_without_subject = true
"#,
            fixture("rsa.pub.pem")
        ),
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn user_token(plan: &str) -> String {
    user_token_for("alice", plan)
}

fn user_token_for(subject: &str, plan: &str) -> String {
    let claims = json!({
        "iss": "https://auth.example/", "aud": "web", "sub": subject,
        "plan": plan, "exp": now() + 600,
    });
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa.key.pem")).unwrap()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

fn service_token() -> String {
    let claims = json!({
        "iss": "https://machines.example/", "aud": "api", "client_id": "nightly-export",
        "exp": now() + 600,
    });
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

async fn seen_with(usher: &Usher, token: Option<&str>) -> (u16, Option<Value>) {
    let mut req = Request::get(usher.url("/account")).header("x-usher-subject", "forged");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let (parts, body) = send(req.body(full("")).unwrap()).await;
    (parts.status.as_u16(), serde_json::from_slice(&body).ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn all_four_trusted_classes_reach_the_upstream() {
    let up = upstream(echo).await;
    let usher = Usher::start_env(&identity_config(&up, ""), &[("USHER_E2E_SECRET", SECRET)]);

    let cases = [
        (None, "public_visitor", None),
        (Some(user_token("free")), "registered_user", Some("alice")),
        (Some(user_token("pro")), "paying_customer", Some("alice")),
        (
            Some(service_token()),
            "service_client",
            Some("nightly-export"),
        ),
    ];
    for (token, class, subject) in &cases {
        let (status, seen) = seen_with(&usher, token.as_deref()).await;
        assert_eq!(status, 200);
        let seen = seen.unwrap();
        assert_eq!(label(&seen, "x-usher-class"), Some(*class));
        assert_eq!(label(&seen, "x-usher-subject"), *subject, "{class}");
        if let Some(token) = token {
            assert_eq!(
                label(&seen, "authorization"),
                Some(format!("Bearer {token}").as_str()),
                "the credential itself still reaches the application"
            );
            assert!(
                !seen["headers"]
                    .to_string()
                    .contains("x-usher-subject\":[\"forged")
            );
        }
    }

    let metrics = usher.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"usher_identity_verifications_total{result="ok",source="jwt"}"#
        ),
        Some(3.0)
    );
    let log = usher.wait_access_log(4).await;
    assert_eq!(log[2]["subject"], "alice");
    assert_eq!(log[2]["class"], "paying_customer");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_credentials_get_no_trust_and_are_counted() {
    let up = upstream(echo).await;
    let usher = Usher::start_env(&identity_config(&up, ""), &[("USHER_E2E_SECRET", SECRET)]);
    let good = user_token("pro");
    let (head, rest) = good.split_once('.').unwrap();
    let forged_alg = format!(
        "{}.{}",
        "eyJhbGciOiJub25lIn0",
        rest.rsplit_once('.').unwrap().0
    ) + ".";
    let tampered = format!("{head}.{}", rest.replacen('e', "f", 1));
    let truncated = &good[..good.len() / 2];
    let unsigned = good.rsplit_once('.').unwrap().0.to_owned() + ".";
    for token in [
        forged_alg.as_str(),
        tampered.as_str(),
        truncated,
        unsigned.as_str(),
        "not-a-jwt",
        // Over the verifier's 16 KiB, under the 32 KiB a request head
        // may have (past that, the request never gets this far: 431).
        &"A".repeat(20_000),
    ] {
        let (status, seen) = seen_with(&usher, Some(token)).await;
        assert_eq!(status, 200);
        let seen = seen.unwrap();
        assert_eq!(label(&seen, "x-usher-class"), Some("public_visitor"));
        assert_eq!(label(&seen, "x-usher-subject"), None);
    }
    let metrics = usher.metrics().await;
    let failed: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("usher_identity_verifications_total{") && !l.contains("result=\"ok\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(failed, 6.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_invalid_deny_refuses_forged_credentials_only() {
    let up = upstream(echo).await;
    let usher = Usher::start_env(
        &identity_config(&up, "on_invalid = \"deny\""),
        &[("USHER_E2E_SECRET", SECRET)],
    );
    assert_eq!(seen_with(&usher, Some("garbage.token.here")).await.0, 403);
    assert_eq!(
        seen_with(&usher, None).await.0,
        200,
        "no credential is not an invalid one"
    );
    assert_eq!(seen_with(&usher, Some(&user_token("free"))).await.0, 200);
}

#[test]
fn a_missing_secret_is_a_config_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usher.toml");
    std::fs::write(
        &path,
        "[[identity.jwt]]\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"HS256\"]\nsecret_env = \"USHER_E2E_UNSET\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(usher_bin())
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("USHER_E2E_UNSET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("{}:5:", path.display())),
        "{report}"
    );
    assert!(report.contains("identity.jwt[0].secret_env"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_from_header_or_bearer_prefix() {
    let up = upstream(echo).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "{}\n{}",
            usher::identity::api_keys::entry_for(
                b"usk_acme_1",
                "acme",
                usher::verdict::Class::ServiceClient
            ),
            usher::identity::api_keys::entry_for(
                b"usk_pro_2",
                "bigco",
                usher::verdict::Class::PayingCustomer
            ),
        ),
    )
    .unwrap();
    let usher = Usher::start_env(
        &identity_config(
            &up,
            &format!(
                "[identity.api_keys]\nfile = \"{}\"\nbearer_prefix = \"usk_\"",
                keys.display()
            ),
        ),
        &[("USHER_E2E_SECRET", SECRET)],
    );
    let ask = |name: &'static str, value: String| {
        let url = usher.url("/api");
        async move {
            let req = Request::get(url)
                .header(name, value)
                .body(full(""))
                .unwrap();
            let (_, body) = send(req).await;
            serde_json::from_slice::<Value>(&body).unwrap()
        }
    };
    let seen = ask("x-api-key", "usk_acme_1".into()).await;
    assert_eq!(label(&seen, "x-usher-class"), Some("service_client"));
    assert_eq!(label(&seen, "x-usher-subject"), Some("acme"));
    let seen = ask("authorization", "Bearer usk_pro_2".into()).await;
    assert_eq!(label(&seen, "x-usher-class"), Some("paying_customer"));
    assert_eq!(label(&seen, "x-usher-subject"), Some("bigco"));
    // A bearer without the prefix is still a JWT.
    let seen = ask("authorization", format!("Bearer {}", user_token("free"))).await;
    assert_eq!(label(&seen, "x-usher-class"), Some("registered_user"));
    let seen = ask("x-api-key", "usk_guess".into()).await;
    assert_eq!(label(&seen, "x-usher-class"), Some("public_visitor"));
    assert_eq!(label(&seen, "x-usher-subject"), None);

    let metrics = usher.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"usher_identity_verifications_total{result="ok",source="api_key"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"usher_identity_verifications_total{result="unknown_key",source="api_key"}"#
        ),
        Some(1.0)
    );
}

fn jwk(private_pem: &str, kid: &str) -> Value {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture(private_pem)).unwrap()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn rotating_token(private_pem: &str, kid: &str) -> String {
    let claims = json!({
        "iss": "https://rotating.example/", "aud": "web", "sub": "carol", "exp": now() + 600,
    });
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture(private_pem)).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_url_rotation_is_picked_up_and_refetches_are_rate_limited() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let document = Arc::new(Mutex::new(
        json!({ "keys": [jwk("rsa.key.pem", "k1")] }).to_string(),
    ));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (doc, count) = (document.clone(), fetches.clone());
    let jwks_server = upstream(move |_req| {
        let body = doc.lock().unwrap().clone();
        count.fetch_add(1, Ordering::SeqCst);
        async move { http::Response::new(full(body)) }
    })
    .await;
    let up = upstream(echo).await;
    let usher = Usher::start(&config(
        &up,
        &format!(
            r#"
[[identity.jwt]]
issuer = "https://rotating.example/"
audience = "web"
algorithms = ["RS256"]
jwks_url = "http://{}/jwks.json"
jwks_min_refetch = "1s"
"#,
            jwks_server.addr
        ),
    ));
    let class_of = |token: String| {
        let url = usher.url("/");
        async move {
            let req = Request::get(url)
                .header("authorization", format!("Bearer {token}"))
                .body(full(""))
                .unwrap();
            let (_, body) = send(req).await;
            let seen: Value = serde_json::from_slice(&body).unwrap();
            label(&seen, "x-usher-class").unwrap().to_owned()
        }
    };
    let eventually = |token: String| {
        let class_of = &class_of;
        async move {
            for _ in 0..50 {
                if class_of(token.clone()).await == "registered_user" {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(
        eventually(rotating_token("rsa.key.pem", "k1")).await,
        "first fetch"
    );

    // The issuer rotates to a new key; the first token naming it triggers
    // a refetch.
    *document.lock().unwrap() =
        json!({ "keys": [jwk("rsa.key.pem", "k1"), jwk("rsa2.key.pem", "k2")] }).to_string();
    assert!(
        eventually(rotating_token("rsa2.key.pem", "k2")).await,
        "rotated key picked up"
    );

    // A storm of tokens naming unknown keys costs at most a refetch per
    // jwks_min_refetch, not one per token.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let before = fetches.load(Ordering::SeqCst);
    let storm = std::time::Instant::now();
    for i in 0..60 {
        assert_eq!(
            class_of(rotating_token("rsa2.key.pem", &format!("nope{i}"))).await,
            "public_visitor"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let during = fetches.load(Ordering::SeqCst) - before;
    // At most one refetch per jwks_min_refetch (1 s), however long the
    // storm took on a busy machine.
    let allowed = storm.elapsed().as_secs() as usize + 2;
    assert!(
        during <= allowed,
        "{during} fetches for 60 unknown-key tokens (allowed {allowed})"
    );
    let metrics = usher.metrics().await;
    assert!(sample(&metrics, r#"usher_jwks_refreshes_total{result="ok"}"#).unwrap() >= 2.0);
}

/// A test application that answers session introspection: `good` and
/// `paid` are live sessions, `slow` takes 3 s, anything else is unknown.
async fn session_app(calls: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Upstream {
    upstream(move |req: Request<hyper::body::Incoming>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let cookie = req
                .headers()
                .get("cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let answer = match cookie.as_str() {
                "sid=good" => Some(json!({"user_id": 42, "plan": "free", "active": true})),
                "sid=paid" => Some(json!({"user_id": "u-7", "plan": "pro", "active": true})),
                "sid=inactive" => Some(json!({"user_id": "u-8", "active": false})),
                "sid=shared" => {
                    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                    Some(json!({"user_id": "u-9", "active": true}))
                }
                "sid=slow" => {
                    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                    Some(json!({"user_id": "late", "active": true}))
                }
                _ => None,
            };
            match answer {
                Some(body) => http::Response::new(full(body.to_string())),
                None => http::Response::builder()
                    .status(401)
                    .body(full(""))
                    .unwrap(),
            }
        }
    })
    .await
}

fn session_config(up: &Upstream, url: &str) -> String {
    config(
        up,
        &format!(
            r#"
[identity.session]
cookie = "sid"
introspect_url = "{url}"
timeout = "300ms"
subject_field = "user_id"
active_field = "active"
paying = {{ claim = "plan", any_of = ["pro"] }}
"#
        ),
    )
}

async fn with_cookie(usher: &Usher, cookie: &str) -> Value {
    let req = Request::get(usher.url("/"))
        .header("cookie", cookie)
        .body(full(""))
        .unwrap();
    let (_, body) = send(req).await;
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_introspected_cached_and_fail_open() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let app = session_app(calls.clone()).await;
    let up = upstream(echo).await;
    let usher = Usher::start(&session_config(
        &up,
        &format!("http://{}/internal/session", app.addr),
    ));

    let seen = with_cookie(&usher, "theme=dark; sid=good").await;
    assert_eq!(label(&seen, "x-usher-class"), Some("registered_user"));
    assert_eq!(label(&seen, "x-usher-subject"), Some("42"));
    let seen = with_cookie(&usher, "sid=paid").await;
    assert_eq!(label(&seen, "x-usher-class"), Some("paying_customer"));
    assert_eq!(label(&seen, "x-usher-subject"), Some("u-7"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Cached: repeated requests do not ask again.
    for _ in 0..5 {
        let seen = with_cookie(&usher, "sid=good").await;
        assert_eq!(label(&seen, "x-usher-class"), Some("registered_user"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Unknown and inactive sessions get no trust; unknown ones are cached too.
    for cookie in ["sid=forged", "sid=forged", "sid=inactive"] {
        let seen = with_cookie(&usher, cookie).await;
        assert_eq!(
            label(&seen, "x-usher-class"),
            Some("public_visitor"),
            "{cookie}"
        );
        assert_eq!(label(&seen, "x-usher-subject"), None);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // One lookup per session however many requests wait for it (the
    // application takes 150 ms, so they all overlap).
    let before = calls.load(Ordering::SeqCst);
    let lookups: Vec<_> = (0..20).map(|_| with_cookie(&usher, "sid=shared")).collect();
    for seen in futures_util::future::join_all(lookups).await {
        assert_eq!(label(&seen, "x-usher-subject"), Some("u-9"));
    }
    assert_eq!(calls.load(Ordering::SeqCst) - before, 1, "singleflight");

    // A session id that could smuggle another cookie is not sent at all.
    let before = calls.load(Ordering::SeqCst);
    let seen = with_cookie(&usher, "sid=\"good,admin=1\"").await;
    assert_eq!(label(&seen, "x-usher-class"), Some("public_visitor"));
    assert_eq!(calls.load(Ordering::SeqCst), before);

    // Slow application: the request goes on as anonymous within the timeout.
    let started = std::time::Instant::now();
    let seen = with_cookie(&usher, "sid=slow").await;
    assert_eq!(label(&seen, "x-usher-class"), Some("public_visitor"));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));

    let metrics = usher.metrics().await;
    assert_eq!(
        sample(&metrics, r#"usher_session_cache_total{result="hit"}"#),
        Some(25.0)
    );
    assert_eq!(
        sample(&metrics, "usher_session_introspection_failures_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"usher_identity_verifications_total{result="ok",source="session"}"#
        ),
        Some(27.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"usher_identity_verifications_total{result="unrecognized",source="session"}"#
        ),
        Some(4.0),
        "forged twice, inactive once, the smuggling attempt"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"usher_identity_verifications_total{result="unavailable",source="session"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_application_means_anonymous_not_errors() {
    let (closed, _reserved) = refusing_addr();
    let up = upstream(echo).await;
    let usher = Usher::start(&session_config(&up, &format!("http://{closed}/session")));
    let seen = with_cookie(&usher, "sid=good").await;
    assert_eq!(label(&seen, "x-usher-class"), Some("public_visitor"));
    let metrics = usher.metrics().await;
    assert_eq!(
        sample(&metrics, "usher_session_introspection_failures_total"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_sessions_and_unfetched_keys_are_never_denied() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    let app = session_app(Arc::new(AtomicUsize::new(0))).await;
    let (closed, _reserved) = refusing_addr();
    let up = upstream(echo).await;
    let config = session_config(&up, &format!("http://{}/internal/session", app.addr)).replace(
        "[identity.session]",
        &format!(
            r#"[identity]
on_invalid = "deny"

[[identity.jwt]]
issuer = "https://auth.example/"
audience = "web"
algorithms = ["RS256"]
jwks_url = "http://{closed}/jwks.json"

[identity.session]"#
        ),
    );
    let usher = Usher::start(&config);
    // A logged-out cookie, or a session cookie next to Basic auth.
    let req = Request::get(usher.url("/login"))
        .header("cookie", "sid=expired")
        .body(full(""))
        .unwrap();
    assert_eq!(
        send(req).await.0.status,
        200,
        "a stale session cookie is not a forgery"
    );
    let req = Request::get(usher.url("/"))
        .header("cookie", "sid=good")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(full(""))
        .unwrap();
    let (parts, body) = send(req).await;
    assert_eq!(parts.status, 200);
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        label(&seen, "x-usher-class"),
        Some("registered_user"),
        "Basic auth is not ours"
    );
    // The issuer's keys were never fetched: a token is unverified, not forged.
    let (status, seen) = seen_with(&usher, Some(&user_token("pro"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        label(&seen.unwrap(), "x-usher-class"),
        Some("public_visitor")
    );
    let metrics = usher.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"usher_identity_verifications_total{result="unavailable",source="jwt"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paying_customer_hammering_at_bot_rates_is_demoted() {
    let up = upstream(echo).await;
    let usher = Usher::start_env(
        &format!(
            "rules = [\"{}/rules/*.toml\"]\ntrusted_proxies = [\"127.0.0.1\"]\naccess_log = \"off\"\n{}",
            env!("CARGO_MANIFEST_DIR"),
            identity_config(&up, "")
        ),
        &[("USHER_E2E_SECRET", SECRET)],
    );
    let token = user_token("pro");
    let (_, seen) = seen_with(&usher, Some(&token)).await;
    assert_eq!(
        label(&seen.unwrap(), "x-usher-class"),
        Some("paying_customer")
    );

    // 30 requests a second, each from another address: only the account
    // ties them together, and the account is what gets demoted.
    let (found, sent) = hammer(
        std::time::Duration::from_millis(33),
        std::time::Duration::from_secs(20),
        "malicious_bot",
        |i| {
            Request::get(usher.url(&format!("/products/{i}")))
                .header("authorization", format!("Bearer {token}"))
                .header(
                    "x-forwarded-for",
                    format!("198.51.{}.{}", i / 250, i % 250 + 1),
                )
                .body(full(""))
                .unwrap()
        },
    )
    .await;
    let (after, seen) = found.expect("a paying customer at 30 req/s was never demoted");
    eprintln!("paying customer demoted after {after:?} and {sent} requests");
    // Which behaviour rule gets there first depends on the pace the
    // machine allows (a burst, or 30 distinct paths at a steady beat); any
    // of them, read from the account's record, is the point.
    let behaviour = ["scraping-burst", "path-enumeration", "metronome"];
    assert!(
        label(&seen, "x-usher-reasons")
            .is_some_and(|r| r.split(',').any(|rule| behaviour.contains(&rule))),
        "{seen}"
    );
    assert_eq!(
        label(&seen, "x-usher-subject"),
        Some("alice"),
        "still known, now as a bot"
    );

    // Another paying customer at a person's pace keeps their class.
    let bob = user_token_for("bob", "pro");
    for _ in 0..3 {
        let (_, seen) = seen_with(&usher, Some(&bob)).await;
        assert_eq!(
            label(&seen.unwrap(), "x-usher-class"),
            Some("paying_customer")
        );
    }
}
