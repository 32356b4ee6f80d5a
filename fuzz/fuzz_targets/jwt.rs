//! Tokens that are properly signed, with any header and claims: the
//! fuzzer writes the JSON, the target signs it with the issuer's HS256
//! secret. Never a panic, and trust only when the claims earn it: the
//! issuer, the audience, a live `exp`, no `nbf` or `iat` ahead, and
//! `alg` as signed. This is where a verifier that skipped `exp` on
//! malformed claims would be caught.
#![no_main]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Request;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use usher::verdict::Class;
use usher_fuzz::{AUDIENCE, ISSUER, LEEWAY, SECRET};

fuzz_target!(|data: &[u8]| {
    // Header JSON, then claims JSON after the first 0xff (without one,
    // all of it is claims under a plain HS256 header).
    let (header, claims) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], data),
    };
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET);
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("an HMAC signs anything");
    let token = format!("{message}.{signature}");

    let before = seconds_now();
    let Ok(request) = Request::get("/account")
        .header("authorization", format!("Bearer {token}"))
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        )
        .body(())
    else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let verdict = usher_fuzz::classify(&parts);
    let after = seconds_now();

    let trusted = matches!(
        verdict.class,
        Class::RegisteredUser | Class::PayingCustomer | Class::ServiceClient
    );
    if verdict.subject.is_none() && !trusted {
        return;
    }
    if let Err(why) = earns_trust(header, claims, before, after) {
        panic!("{verdict:?} for a token that should not verify: {why}");
    }
    let claims: Map<String, Value> = serde_json::from_slice(claims).expect("checked above");
    let named = |name: &str| claims.get(name).and_then(Value::as_str);
    let subject = verdict.subject.as_deref();
    assert!(
        subject.is_some() && [named("sub"), named("client_id"), named("azp")].contains(&subject),
        "{verdict:?}: the subject is not one the claims name"
    );
    if verdict.class == Class::PayingCustomer {
        let pro = |v: &Value| v.as_str() == Some("pro");
        assert!(
            claims
                .get("plan")
                .is_some_and(|p| pro(p) || p.as_array().is_some_and(|a| a.iter().any(pro))),
            "{verdict:?} without plan \"pro\""
        );
    }
});

/// Whether a token with this header and these claims may be trusted,
/// judged from the JSON alone (RFC 7519, usher's issuer settings) between
/// the two instants the verdict was given.
fn earns_trust(header: &[u8], claims: &[u8], before: f64, after: f64) -> Result<(), String> {
    let header: Map<String, Value> =
        serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err("alg is not the HS256 it was signed with".into());
    }
    if header.contains_key("crit") {
        return Err("crit".into());
    }
    let claims: Map<String, Value> =
        serde_json::from_slice(claims).map_err(|e| format!("claims: {e}"))?;
    if claims.get("iss").and_then(Value::as_str) != Some(ISSUER) {
        return Err("another issuer".into());
    }
    let date = |name: &str| claims.get(name).map(Value::as_f64);
    match date("exp") {
        Some(Some(exp)) if before < exp + LEEWAY => {}
        _ => return Err("exp missing, malformed or past".into()),
    }
    for name in ["nbf", "iat"] {
        match date(name) {
            None => {}
            Some(Some(t)) if t <= after + LEEWAY => {}
            _ => return Err(format!("{name} malformed or ahead")),
        }
    }
    let ours = |v: &Value| v.as_str() == Some(AUDIENCE);
    match claims.get("aud") {
        Some(aud) if ours(aud) => Ok(()),
        Some(Value::Array(auds)) if auds.iter().any(ours) => Ok(()),
        _ => Err("not our audience".into()),
    }
}

fn seconds_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}
