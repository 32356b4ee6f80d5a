//! JWT verification against tokens minted here with the fixture keys.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::config::Config;

const NOW: u64 = 1_800_000_000;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt")
}

fn parse_in(text: &str, dir: &std::path::Path) -> Config {
    let mut config = Config::parse(text, "test.toml").unwrap();
    config.origin.dir = dir.to_owned();
    config
}

fn stage(issuers: &str) -> IdentityStage {
    let config = parse_in(issuers, &fixtures());
    IdentityStage::from_config(&config.identity, &config.origin).unwrap()
}

fn stage_err(issuers: &str) -> String {
    let config = parse_in(issuers, &fixtures());
    IdentityStage::from_config(&config.identity, &config.origin)
        .unwrap_err()
        .to_string()
}

/// One issuer per key type, all for audience `web`.
fn all_issuers() -> IdentityStage {
    stage(
        r#"
[[identity.jwt]]
issuer = "https://hs.example/"
audience = "web"
algorithms = ["HS256"]
secret_file = "hs.secret"
paying = [{ claim = "plan", any_of = ["pro", "enterprise"] }, { claim = "roles", any_of = "subscriber" }]
service = { claim = "gty", any_of = ["client-credentials"] }
service_without_subject = true

[[identity.jwt]]
issuer = "https://rs.example/"
audience = ["web", "api"]
algorithms = ["RS256"]
public_key_file = "rsa.pub.pem"
cookie = "access_token"

[[identity.jwt]]
issuer = "https://es.example/"
audience = "web"
algorithms = ["ES256"]
public_key_file = "ec.pub.pem"

[[identity.jwt]]
issuer = "https://ed.example/"
audience = "web"
algorithms = ["EdDSA"]
public_key_file = "ed.pub.pem"
leeway = "0s"
"#,
    )
}

fn encoding_key(alg: Algorithm) -> EncodingKey {
    let read = |name: &str| std::fs::read(fixtures().join(name)).unwrap();
    match alg {
        Algorithm::HS256 => EncodingKey::from_secret(b"test-only-hmac-secret-0123456789abcdefghij"),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read("rsa.key.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("ec.key.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("ed.key.pem")).unwrap(),
        other => panic!("no fixture for {other:?}"),
    }
}

fn issuer_for(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "https://hs.example/",
        Algorithm::RS256 => "https://rs.example/",
        Algorithm::ES256 => "https://es.example/",
        _ => "https://ed.example/",
    }
}

fn claims(alg: Algorithm) -> Value {
    json!({
        "iss": issuer_for(alg),
        "aud": "web",
        "sub": "user-1",
        "exp": NOW + 600,
        "iat": NOW - 10,
    })
}

fn mint(alg: Algorithm, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &encoding_key(alg)).unwrap()
}

/// Sign arbitrary header and payload JSON text with `alg`'s fixture key.
fn mint_raw(alg: Algorithm, header: &str, payload: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &encoding_key(alg), alg).unwrap();
    format!("{message}.{signature}")
}

fn check(stage: &IdentityStage, token: &str) -> Identity {
    check_at(stage, token, NOW)
}

fn check_at(stage: &IdentityStage, token: &str, now: u64) -> Identity {
    identify_with(stage, &[("authorization", format!("Bearer {token}"))], now)
}

/// Identify a request carrying `headers` (repeats allowed) at `now`.
fn identify_with(stage: &IdentityStage, headers: &[(&str, String)], now: u64) -> Identity {
    let mut request = http::Request::builder();
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let (parts, ()) = request.body(()).unwrap().into_parts();
    let ip = "192.0.2.1".parse().unwrap();
    stage.identify(&Facts::new(
        &parts,
        ip,
        ip,
        UNIX_EPOCH + Duration::from_secs(now),
    ))
}

fn invalid(reason: InvalidReason) -> Identity {
    Identity::Invalid {
        source: Source::Jwt,
        reason,
    }
}

#[test]
fn each_algorithm_verifies_a_good_token() {
    let stage = all_issuers();
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let sent = claims(alg);
        let identity = check(&stage, &mint(alg, &sent));
        assert_eq!(
            identity,
            Identity::User {
                source: Source::Jwt,
                subject: Arc::from("user-1"),
                tier: Tier::Free,
                claims: Claims::new(sent.as_object().unwrap().clone()),
            },
            "{alg:?}: the verified claims are kept for rules"
        );
    }
}

#[test]
fn claims_decide_paying_and_service() {
    let stage = all_issuers();
    let mut c = claims(Algorithm::HS256);
    c["plan"] = json!("pro");
    assert_eq!(
        check(&stage, &mint(Algorithm::HS256, &c)).class(),
        Class::PayingCustomer
    );
    c["plan"] = json!("PRO");
    assert_eq!(
        check(&stage, &mint(Algorithm::HS256, &c)).class(),
        Class::RegisteredUser,
        "no case folding"
    );
    c["roles"] = json!(["reader", "subscriber"]);
    assert_eq!(
        check(&stage, &mint(Algorithm::HS256, &c)).class(),
        Class::PayingCustomer
    );

    let mut s = claims(Algorithm::HS256);
    s["gty"] = json!("client-credentials");
    s["azp"] = json!("billing-worker");
    assert_eq!(
        check(&stage, &mint(Algorithm::HS256, &s)),
        Identity::Service {
            source: Source::Jwt,
            client_id: Arc::from("billing-worker"),
            claims: Claims::new(s.as_object().unwrap().clone()),
        }
    );
    let mut cc = claims(Algorithm::HS256);
    cc.as_object_mut().unwrap().remove("sub");
    cc["client_id"] = json!("cron");
    assert_eq!(
        check(&stage, &mint(Algorithm::HS256, &cc)).class(),
        Class::ServiceClient
    );
    cc.as_object_mut().unwrap().remove("client_id");
    assert_eq!(
        check(&stage, &mint(Algorithm::HS256, &cc)),
        invalid(InvalidReason::Malformed),
        "neither a subject nor a client id"
    );
}

#[test]
fn time_claims_are_enforced_with_leeway() {
    let stage = all_issuers();
    let alg = Algorithm::HS256;
    let mut c = claims(alg);
    c["exp"] = json!(NOW - 31);
    assert_eq!(
        check(&stage, &mint(alg, &c)),
        invalid(InvalidReason::Expired)
    );
    c["exp"] = json!(NOW - 29);
    assert!(
        matches!(check(&stage, &mint(alg, &c)), Identity::User { .. }),
        "within 30s leeway"
    );
    let mut c = claims(alg);
    c["nbf"] = json!(NOW + 120);
    assert_eq!(
        check(&stage, &mint(alg, &c)),
        invalid(InvalidReason::NotYetValid)
    );
    let mut c = claims(alg);
    c["iat"] = json!(NOW + 120);
    assert_eq!(
        check(&stage, &mint(alg, &c)),
        invalid(InvalidReason::NotYetValid)
    );

    // No leeway on the Ed25519 issuer: expiry at the very second counts.
    let mut c = claims(Algorithm::EdDSA);
    c["exp"] = json!(NOW);
    assert_eq!(
        check(&stage, &mint(Algorithm::EdDSA, &c)),
        invalid(InvalidReason::Expired)
    );
}

#[test]
fn malformed_time_claims_are_rejected() {
    let stage = all_issuers();
    let alg = Algorithm::HS256;
    for exp in [
        json!("1900000000"),
        json!(null),
        json!(-1),
        json!(1e300),
        json!([NOW + 60]),
    ] {
        let mut c = claims(alg);
        c["exp"] = exp.clone();
        assert_eq!(
            check(&stage, &mint(alg, &c)),
            invalid(InvalidReason::Malformed),
            "exp {exp}"
        );
    }
    let mut c = claims(alg);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        check(&stage, &mint(alg, &c)),
        invalid(InvalidReason::Malformed),
        "exp required"
    );
    let huge = format!(
        r#"{{"iss":"https://hs.example/","aud":"web","sub":"u","exp":{}}}"#,
        "9".repeat(40)
    );
    assert_eq!(
        check(&stage, &mint_raw(alg, r#"{"alg":"HS256"}"#, &huge)),
        invalid(InvalidReason::Malformed)
    );
}

#[test]
fn issuer_and_audience_match_exactly() {
    let stage = all_issuers();
    let alg = Algorithm::RS256;
    let mut c = claims(alg);
    c["iss"] = json!("https://rs.example");
    assert_eq!(
        check(&stage, &mint(alg, &c)),
        invalid(InvalidReason::WrongIssuer)
    );
    let mut c = claims(alg);
    c["iss"] = json!("https://RS.example/");
    assert_eq!(
        check(&stage, &mint(alg, &c)),
        invalid(InvalidReason::WrongIssuer)
    );
    let mut c = claims(alg);
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        check(&stage, &mint(alg, &c)),
        invalid(InvalidReason::WrongIssuer)
    );
    let mut c = claims(alg);
    c["aud"] = json!("web ");
    assert_eq!(
        check(&stage, &mint(alg, &c)),
        invalid(InvalidReason::WrongAudience)
    );
    c["aud"] = json!(["other", "api"]);
    assert!(matches!(
        check(&stage, &mint(alg, &c)),
        Identity::User { .. }
    ));
    c["aud"] = json!(["other", 7]);
    assert_eq!(
        check(&stage, &mint(alg, &c)),
        invalid(InvalidReason::Malformed)
    );
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        check(&stage, &mint(alg, &c)),
        invalid(InvalidReason::WrongAudience)
    );
}

#[test]
fn signatures_and_algorithms_are_not_negotiable() {
    let stage = all_issuers();
    let payload = claims(Algorithm::RS256).to_string();

    // alg: none, with and without a signature.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(&payload)
    );
    assert_eq!(check(&stage, &none), invalid(InvalidReason::Malformed));
    let none_signed = format!("{none}AAAA");
    assert_eq!(
        check(&stage, &none_signed),
        invalid(InvalidReason::DisallowedAlgorithm)
    );

    // RS256 → HS256 confusion: HMAC over the token with the RSA public key
    // as the secret. The RS issuer pins RS256 only.
    let public_pem = std::fs::read(fixtures().join("rsa.pub.pem")).unwrap();
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(&payload)
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(&public_pem),
        Algorithm::HS256,
    )
    .unwrap();
    assert_eq!(
        check(&stage, &format!("{message}.{sig}")),
        invalid(InvalidReason::DisallowedAlgorithm)
    );

    // A pinned algorithm of the wrong family for every key of the issuer.
    let es_as_rs = mint_raw(Algorithm::ES256, r#"{"alg":"ES256"}"#, &payload);
    assert_eq!(
        check(&stage, &es_as_rs),
        invalid(InvalidReason::DisallowedAlgorithm)
    );

    // Tampered payload, re-encoded with the original signature.
    let good = mint(Algorithm::RS256, &claims(Algorithm::RS256));
    let mut segments: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut forged = claims(Algorithm::RS256);
    forged["sub"] = json!("admin");
    segments[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
    assert_eq!(
        check(&stage, &segments.join(".")),
        invalid(InvalidReason::BadSignature)
    );

    // Signed with another RSA key, which the header even offers as `jwk`.
    let other = EncodingKey::from_rsa_pem(&std::fs::read(fixtures().join("rsa2.key.pem")).unwrap())
        .unwrap();
    let header = r#"{"alg":"RS256","jwk":{"kty":"RSA","n":"AQAB","e":"AQAB"},"jku":"http://127.0.0.1:1/jwks"}"#;
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(&payload)
    );
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &other, Algorithm::RS256).unwrap();
    assert_eq!(
        check(&stage, &format!("{message}.{sig}")),
        invalid(InvalidReason::BadSignature)
    );
}

#[test]
fn strict_json_and_crit() {
    let stage = all_issuers();
    let alg = Algorithm::HS256;
    let base = r#""iss":"https://hs.example/","aud":"web","exp":1800000600"#;
    let dup_sub = format!(r#"{{{base},"sub":"user-1","sub":"admin"}}"#);
    assert_eq!(
        check(&stage, &mint_raw(alg, r#"{"alg":"HS256"}"#, &dup_sub)),
        invalid(InvalidReason::Malformed)
    );
    let ok = format!(r#"{{{base},"sub":"user-1"}}"#);
    assert!(matches!(
        check(&stage, &mint_raw(alg, r#"{"alg":"HS256"}"#, &ok)),
        Identity::User { .. }
    ));
    for header in [
        r#"{"alg":"HS256","alg":"HS256"}"#,
        r#"{"alg":"HS256","crit":["exp"]}"#,
        r#"{"alg":"HS256","crit":[]}"#,
        r#"{"alg":"HS256","kid":7}"#,
        r#"{"alg":["HS256"]}"#,
        r#"{}"#,
    ] {
        assert_eq!(
            check(&stage, &mint_raw(alg, header, &ok)),
            invalid(InvalidReason::Malformed),
            "{header}"
        );
    }
    let wrong_type_sub = format!(r#"{{{base},"sub":42}}"#);
    assert_eq!(
        check(
            &stage,
            &mint_raw(alg, r#"{"alg":"HS256"}"#, &wrong_type_sub)
        ),
        invalid(InvalidReason::Malformed)
    );
}

#[test]
fn garbage_never_panics_and_never_verifies() {
    let stage = all_issuers();
    let good = mint(Algorithm::HS256, &claims(Algorithm::HS256));
    let mut cases: Vec<String> = vec![
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        "a.b.c".into(),
        "a.b.c.d".into(),
        format!("{good}."),
        format!("{good}=="),
        good.replace('.', ""),
        "x".repeat(20_000),
        format!("{}.e30.AAAA", URL_SAFE_NO_PAD.encode("{")),
        "eyJhbGciOiJIUzI1NiJ9.%%.AAAA".into(),
        "ey.ey.ey".into(),
    ];
    for i in 0..good.len() {
        cases.push(good[..i].to_string());
    }
    for token in &cases {
        let identity = check(&stage, token);
        assert!(
            matches!(identity, Identity::Invalid { .. } | Identity::Anonymous),
            "{token:?} gave {identity:?}"
        );
    }
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let secret = URL_SAFE_NO_PAD.encode("jwks-oct-secret-0123456789abcdefghijklmn");
    std::fs::write(
        dir.path().join("jwks.json"),
        format!(r#"{{"keys":[{{"kty":"oct","kid":"k1","k":"{secret}"}}]}}"#),
    )
    .unwrap();
    let config = parse_in(
        r#"
[[identity.jwt]]
issuer = "https://jwks.example/"
audience = "web"
algorithms = ["HS256"]
jwks_file = "jwks.json"
"#,
        dir.path(),
    );
    let stage = IdentityStage::from_config(&config.identity, &config.origin).unwrap();
    let key = EncodingKey::from_secret(b"jwks-oct-secret-0123456789abcdefghijklmn");
    let mut c = claims(Algorithm::HS256);
    c["iss"] = json!("https://jwks.example/");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &c, &key).unwrap();
    assert!(matches!(check(&stage, &token), Identity::User { .. }));
    header.kid = Some("k2".into());
    let token = jsonwebtoken::encode(&header, &c, &key).unwrap();
    assert_eq!(check(&stage, &token), invalid(InvalidReason::UnknownKey));
}

#[test]
fn tokens_are_read_only_from_configured_places() {
    let stage = all_issuers();
    let token = mint(Algorithm::RS256, &claims(Algorithm::RS256));
    let read = |name: &str, value: String| identify_with(&stage, &[(name, value)], NOW);
    assert!(matches!(
        read("cookie", format!("a=b; access_token={token}")),
        Identity::User { .. }
    ));
    assert_eq!(
        read("cookie", format!("other_token={token}")),
        Identity::Anonymous
    );
    assert!(matches!(
        read("authorization", format!("bearer {token}")),
        Identity::User { .. }
    ));
    assert_eq!(
        read("authorization", format!("Basic {token}")),
        Identity::Anonymous
    );
    assert_eq!(read("x-access-token", token.clone()), Identity::Anonymous);
    assert_eq!(read("authorization", "Bearer ".into()), Identity::Anonymous);
}

#[test]
fn no_issuers_means_anonymous_whatever_is_presented() {
    let stage = IdentityStage::default();
    let token = mint(Algorithm::HS256, &claims(Algorithm::HS256));
    assert_eq!(check(&stage, &token), Identity::Anonymous);
}

#[test]
fn config_errors_name_the_key() {
    for (issuer, needle) in [
        (
            "algorithms = [\"RS256\"]\nsecret_file = \"hs.secret\"",
            "RS256 needs a RSA key",
        ),
        (
            "algorithms = [\"RS256\", \"HS256\"]\npublic_key_file = \"rsa.pub.pem\"",
            "HS256 needs a HMAC key",
        ),
        (
            "algorithms = [\"HS256\"]\nsecret_file = \"hs.secret\"\npublic_key_file = \"rsa.pub.pem\"",
            "RSA key is configured but no pinned algorithm uses it",
        ),
        (
            "algorithms = [\"RS256\"]\npublic_key_file = \"rsa.key.pem\"",
            "private key",
        ),
        (
            "algorithms = [\"RS256\"]\npublic_key_file = \"nope.pem\"",
            "cannot read",
        ),
        (
            "algorithms = [\"HS256\"]\nsecret_file = \"rsa.pub.pem\"",
            "looks like a PEM",
        ),
        (
            "algorithms = [\"HS256\"]\nsecret_env = \"USHER_TEST_UNSET_VARIABLE\"",
            "unset",
        ),
    ] {
        let text = format!("[[identity.jwt]]\nissuer = \"i\"\naudience = \"a\"\n{issuer}\n");
        let message = stage_err(&text);
        assert!(message.contains(needle), "{issuer}: {message}");
        assert!(message.contains("identity.jwt[0]."), "{message}");
    }
}

#[test]
fn config_rejects_none_and_unknown_algorithms() {
    for alg in ["none", "HS1", "rs256"] {
        let text = format!(
            "[[identity.jwt]]\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"{alg}\"]\nsecret_file = \"hs.secret\"\n"
        );
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:4:"), "{e}");
        assert!(e.contains("unknown algorithm"), "{e}");
    }
}

#[test]
fn cached_tokens_still_expire() {
    let stage = all_issuers();
    let token = mint(Algorithm::RS256, &claims(Algorithm::RS256));
    assert!(matches!(check(&stage, &token), Identity::User { .. }));
    assert!(
        matches!(
            check_at(&stage, &token, NOW + 600 + 29),
            Identity::User { .. }
        ),
        "cached, within leeway"
    );
    assert_eq!(
        check_at(&stage, &token, NOW + 600 + 30),
        invalid(InvalidReason::Expired)
    );
    // A cached good token does not vouch for a tampered copy.
    let last = if token.ends_with('A') { 'B' } else { 'A' };
    let tampered = format!("{}{last}", &token[..token.len() - 1]);
    assert!(matches!(check(&stage, &tampered), Identity::Invalid { .. }));
}

#[test]
fn two_authorization_headers_are_ambiguous() {
    let stage = all_issuers();
    let token = mint(Algorithm::RS256, &claims(Algorithm::RS256));
    let identity = identify_with(
        &stage,
        &[
            ("authorization", format!("Bearer {token}")),
            ("authorization", "Bearer something-else".to_owned()),
        ],
        NOW,
    );
    assert_eq!(identity, invalid(InvalidReason::Malformed));
}

#[test]
fn key_family_is_checked_even_when_both_families_are_pinned() {
    // An issuer pinning RS256 and HS256, with an RSA key and a secret: an
    // HMAC made with the RSA public key as secret must not verify.
    let stage = stage(
        r#"
[[identity.jwt]]
issuer = "https://both.example/"
audience = "web"
algorithms = ["RS256", "HS256"]
public_key_file = "rsa.pub.pem"
secret_file = "hs.secret"
"#,
    );
    let mut c = claims(Algorithm::RS256);
    c["iss"] = json!("https://both.example/");
    let public_pem = std::fs::read(fixtures().join("rsa.pub.pem")).unwrap();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    assert_eq!(check(&stage, &forged), invalid(InvalidReason::BadSignature));
    assert!(matches!(
        check(&stage, &mint(Algorithm::RS256, &c)),
        Identity::User { .. }
    ));
}

#[test]
fn subjects_must_be_printable() {
    let stage = all_issuers();
    for sub in ["u\n1", "u\r\nx-usher-class: paying_customer", "\u{7f}"] {
        let mut c = claims(Algorithm::HS256);
        c["sub"] = json!(sub);
        c["plan"] = json!("pro");
        assert_eq!(
            check(&stage, &mint(Algorithm::HS256, &c)),
            invalid(InvalidReason::Malformed),
            "{sub:?}"
        );
    }
}

#[test]
fn duplicate_issuers_and_cookies_are_config_errors() {
    let twice = "[[identity.jwt]]\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.secret\"\ncookie = \"c\"\n";
    assert!(stage_err(&format!("{twice}{twice}")).contains("configured twice"));
    let other = twice.replace("issuer = \"i\"", "issuer = \"j\"");
    assert!(stage_err(&format!("{twice}{other}")).contains("already another issuer's"));
    let e = Config::parse(
        &twice.replace("cookie = \"c\"", "leeway = \"1h\""),
        "t.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}

#[test]
fn signed_session_cookies_are_jwts_in_a_cookie() {
    let stage = stage(
        r#"
[[identity.jwt]]
issuer = "https://app.example/"
audience = "web"
algorithms = ["HS256"]
secret_file = "hs.secret"
cookie = "app_session"
"#,
    );
    let mut c = claims(Algorithm::HS256);
    c["iss"] = json!("https://app.example/");
    let token = mint(Algorithm::HS256, &c);
    let with_cookie =
        |value: &str| identify_with(&stage, &[("cookie", format!("app_session={value}"))], NOW);
    assert!(matches!(with_cookie(&token), Identity::User { .. }));
    let last = if token.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    assert!(matches!(with_cookie(&forged), Identity::Invalid { .. }));
}

#[test]
fn failed_credentials_are_counted_per_client() {
    use crate::classify::Classifier;
    use crate::rules::RuleSet;
    let classifier = Classifier::with_identity(all_issuers(), RuleSet::default());
    let run = |ip: &str, token: &str, at: u64| {
        let (parts, ()) = http::Request::builder()
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts();
        let ip = ip.parse().unwrap();
        classifier
            .classify(&Facts::new(
                &parts,
                ip,
                ip,
                UNIX_EPOCH + Duration::from_secs(at),
            ))
            .signals
            .auth_failures_5m
    };
    let mut long_lived = claims(Algorithm::HS256);
    long_lived["exp"] = json!(NOW + 3600);
    let good = mint(Algorithm::HS256, &long_lived);
    for i in 1..=5 {
        assert_eq!(run("198.51.100.1", "forged.token.x", NOW + i), i as u32);
    }
    assert_eq!(
        run("198.51.100.1", &good, NOW + 6),
        5,
        "a good token does not reset it"
    );
    assert_eq!(run("198.51.100.2", &good, NOW + 6), 0, "another client");
    assert_eq!(
        run("198.51.100.1", &good, NOW + 2000),
        0,
        "five minutes later"
    );
}

#[test]
fn subject_prefixes_keep_sources_apart() {
    let stage = stage(
        r#"
[[identity.jwt]]
issuer = "https://partner.example/"
audience = "web"
algorithms = ["HS256"]
secret_file = "hs.secret"
subject_prefix = "partner:"
"#,
    );
    let mut c = claims(Algorithm::HS256);
    c["iss"] = json!("https://partner.example/");
    let identity = check(&stage, &mint(Algorithm::HS256, &c));
    assert_eq!(identity.subject().map(|s| &**s), Some("partner:user-1"));
    let bad = Config::parse(
        "[[identity.jwt]]\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"HS256\"]\nsecret_file = \"x\"\nsubject_prefix = \"a b\"\n",
        "t.toml",
    );
    assert!(bad.unwrap_err().to_string().starts_with("t.toml:6:"));
}

#[test]
fn every_algorithm_rejects_the_usual_forgeries() {
    let stage = all_issuers();
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let leeway = if alg == Algorithm::EdDSA { 0 } else { 30 };
        let cases: [(&str, Value, InvalidReason); 4] = [
            ("exp", json!(NOW - leeway - 1), InvalidReason::Expired),
            ("nbf", json!(NOW + leeway + 60), InvalidReason::NotYetValid),
            ("aud", json!("elsewhere"), InvalidReason::WrongAudience),
            (
                "iss",
                json!("https://unknown.example/"),
                InvalidReason::WrongIssuer,
            ),
        ];
        for (claim, value, reason) in cases {
            let mut c = claims(alg);
            c[claim] = value;
            assert_eq!(
                check(&stage, &mint(alg, &c)),
                invalid(reason),
                "{alg:?} {claim}"
            );
        }
        let good = mint(alg, &claims(alg));
        let (head, rest) = good.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let mut forged = claims(alg);
        forged["sub"] = json!("admin");
        let tampered = format!(
            "{head}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(forged.to_string())
        );
        assert_eq!(
            check(&stage, &tampered),
            invalid(InvalidReason::BadSignature),
            "{alg:?}"
        );
        let unsigned = format!("{head}.{}.", URL_SAFE_NO_PAD.encode(forged.to_string()));
        assert_eq!(
            check(&stage, &unsigned),
            invalid(InvalidReason::Malformed),
            "{alg:?}"
        );
    }
}

#[test]
fn unreadable_cookie_headers_cannot_hide_a_second_copy() {
    let mut headers = http::HeaderMap::new();
    headers.append("cookie", http::HeaderValue::from_static("sid=mine"));
    headers.append(
        "cookie",
        http::HeaderValue::from_bytes(b"sid=other\xff; x=1").unwrap(),
    );
    assert_eq!(cookie(&headers, "sid"), Err(Ambiguous));
    let mut headers = http::HeaderMap::new();
    headers.append(
        "cookie",
        http::HeaderValue::from_bytes(b"x=\xff; sid=mine").unwrap(),
    );
    assert_eq!(
        cookie(&headers, "sid"),
        Ok(Some("mine")),
        "other cookies' bytes do not matter"
    );
    headers.append("cookie", http::HeaderValue::from_static("sidx=1; s=2"));
    assert_eq!(
        cookie(&headers, "sid"),
        Ok(Some("mine")),
        "names match exactly"
    );
}

#[test]
fn kept_claims_are_what_rules_can_match_and_bounded() {
    let big = "x".repeat(MAX_CLAIMS_SIZE);
    let claims = json!({
        "plan": "pro", "n": 3, "ok": true, "roles": ["a", "b"],
        "profile": {"nested": 1}, "matrix": [[1]], "none": null,
        "zz_huge": big,
    });
    let kept = Claims::new(claims.as_object().unwrap().clone());
    let kept = kept.get().unwrap();
    let names: Vec<&str> = kept.keys().map(String::as_str).collect();
    assert_eq!(names, ["n", "ok", "plan", "roles"]);
}
