//! The `[identity]` table: credential sources, as written in the file.
//! Key material is loaded and checked when the identity stage is built.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::duration;

/// Credential sources and what to do with credentials that fail.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// What happens to a request whose credential failed verification.
    pub on_invalid: OnInvalid,
    /// JWT issuers, one table each (`[[identity.jwt]]`).
    pub jwt: Vec<JwtIssuerConfig>,
    /// API keys (`[identity.api_keys]`).
    pub api_keys: Option<ApiKeysConfig>,
    /// Opaque session cookies resolved by the application
    /// (`[identity.session]`).
    pub session: Option<SessionConfig>,
}

impl IdentityConfig {
    /// The files its credential sources read (keys, secrets, JWKS
    /// documents), relative paths taken from `base`.
    pub fn files(&self, base: &std::path::Path) -> Vec<std::path::PathBuf> {
        let jwt = self.jwt.iter().flat_map(|issuer| {
            [
                &issuer.secret_file,
                &issuer.public_key_file,
                &issuer.jwks_file,
            ]
            .into_iter()
            .flatten()
        });
        let api_keys = self.api_keys.iter().map(|a| &a.file);
        jwt.chain(api_keys)
            .map(|file| base.join(file.get_ref()))
            .collect()
    }
}

/// Opaque session cookies, resolved by an introspection call to the
/// application and cached.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// The session cookie's name.
    #[serde(deserialize_with = "non_empty")]
    pub cookie: String,
    /// The application's endpoint that answers who a session belongs to.
    pub introspect_url: Spanned<String>,
    /// How long an introspection call may take; past it the request goes
    /// on as anonymous.
    #[serde(
        default = "default_introspect_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
    /// How long a resolved session is remembered.
    #[serde(
        default = "default_cache_ttl",
        deserialize_with = "duration::deserialize"
    )]
    pub cache_ttl: Duration,
    /// How long an unknown session is remembered.
    #[serde(
        default = "default_negative_ttl",
        deserialize_with = "duration::deserialize"
    )]
    pub negative_ttl: Duration,
    /// Most sessions remembered at once.
    #[serde(default = "default_session_capacity")]
    pub capacity: usize,
    /// The response field naming the account (string or number).
    #[serde(deserialize_with = "non_empty")]
    pub subject_field: String,
    /// Put before every session's subject in `x-usher-subject`.
    #[serde(default, deserialize_with = "subject_prefix")]
    pub subject_prefix: String,
    /// If set, this response field must be `true` for the session to count.
    #[serde(default)]
    pub active_field: Option<String>,
    /// Response fields that make the account paying (any matches).
    #[serde(default, deserialize_with = "one_or_many")]
    pub paying: Vec<ClaimMatch>,
}

fn default_introspect_timeout() -> Duration {
    Duration::from_millis(300)
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_negative_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_session_capacity() -> usize {
    100_000
}

/// Where API keys are read from and the file of their hashes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// The keys file: SHA-256 hashes with owner and class, never keys.
    pub file: Spanned<String>,
    /// Read keys from this header.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// Also read `Authorization: Bearer <key>` when the key starts with
    /// this prefix (so bearer JWTs and keys can share the header).
    #[serde(default)]
    pub bearer_prefix: Option<String>,
    /// Put before every key owner in `x-usher-subject`.
    #[serde(default, deserialize_with = "subject_prefix")]
    pub subject_prefix: String,
}

fn default_api_key_header() -> String {
    "x-api-key".to_owned()
}

/// What happens to a request whose credential failed verification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Forward it as `public_visitor` (the credential gets no trust).
    #[default]
    Forward,
    /// Refuse it with 403.
    Deny,
}

/// One JWT issuer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// The exact `iss` value of its tokens.
    #[serde(deserialize_with = "non_empty")]
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    #[serde(deserialize_with = "one_or_many_non_empty")]
    pub audience: Vec<String>,
    /// Algorithms its tokens may use, e.g. `["RS256"]`.
    #[serde(deserialize_with = "algorithms")]
    pub algorithms: Vec<Spanned<String>>,
    /// Environment variable holding the HMAC secret (HS256/384/512).
    #[serde(default)]
    pub secret_env: Option<Spanned<String>>,
    /// File holding the HMAC secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<Spanned<String>>,
    /// PEM public key (RSA, EC P-256/P-384 or Ed25519).
    #[serde(default)]
    pub public_key_file: Option<Spanned<String>>,
    /// JWKS document with the issuer's public keys.
    #[serde(default)]
    pub jwks_file: Option<Spanned<String>>,
    /// URL of the issuer's JWKS, fetched at start and kept fresh.
    #[serde(default)]
    pub jwks_url: Option<Spanned<String>>,
    /// How often the JWKS URL is fetched.
    #[serde(default = "default_jwks_refresh", deserialize_with = "jwks_refresh")]
    pub jwks_refresh: Duration,
    /// The soonest a token naming an unknown key may cause a refetch.
    #[serde(
        default = "default_jwks_min_refetch",
        deserialize_with = "jwks_min_refetch"
    )]
    pub jwks_min_refetch: Duration,
    /// Clock skew tolerated for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", deserialize_with = "leeway")]
    pub leeway: Duration,
    /// Also read the token from this cookie (after `Authorization: Bearer`).
    #[serde(default)]
    pub cookie: Option<String>,
    /// The claim naming the account.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Put before every subject this issuer vouches for (e.g. "partner:"),
    /// so subjects from different sources cannot be confused upstream.
    #[serde(default, deserialize_with = "subject_prefix")]
    pub subject_prefix: String,
    /// Claims that make a verified account `paying_customer` (any matches).
    #[serde(default, deserialize_with = "one_or_many")]
    pub paying: Vec<ClaimMatch>,
    /// Claims that make a verified token a `service_client` (any matches).
    #[serde(default, deserialize_with = "one_or_many")]
    pub service: Vec<ClaimMatch>,
    /// A token with `client_id` or `azp` but no subject claim is a service
    /// client (the OAuth client-credentials shape).
    #[serde(default)]
    pub service_without_subject: bool,
}

/// `{ claim = "plan", any_of = ["pro", "enterprise"] }`: the claim is one
/// of the values, or (for an array claim, or a space-separated `scope` /
/// `scp` string) contains one of them. Matching is exact.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMatch {
    /// The claim's name.
    #[serde(deserialize_with = "non_empty")]
    pub claim: String,
    /// The values that match.
    #[serde(deserialize_with = "one_or_many_non_empty")]
    pub any_of: Vec<String>,
}

/// At least 10 s: an issuer's JWKS is not to be hammered.
fn jwks_refresh<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    at_least(duration::deserialize(d)?, Duration::from_secs(10), "10s")
}

/// At least 1 s: the rate limit on refetches must limit something.
fn jwks_min_refetch<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    at_least(duration::deserialize(d)?, Duration::from_secs(1), "1s")
}

fn at_least<E: serde::de::Error>(
    value: Duration,
    min: Duration,
    name: &str,
) -> Result<Duration, E> {
    if value < min {
        return Err(E::custom(format!("must be at least \"{name}\"")));
    }
    Ok(value)
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}

fn default_jwks_min_refetch() -> Duration {
    Duration::from_secs(30)
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// Leeway is for clock skew: at most five minutes.
fn leeway<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let leeway = duration::deserialize_allow_zero(d)?;
    if leeway > Duration::from_secs(300) {
        return Err(serde::de::Error::custom(
            "leeway is for clock skew: at most \"5m\"",
        ));
    }
    Ok(leeway)
}

/// A subject prefix becomes part of a header value: printable ASCII only.
fn subject_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(serde::de::Error::custom(
            "a subject prefix is printable ASCII without spaces",
        ));
    }
    Ok(s)
}

fn default_subject_claim() -> String {
    "sub".to_owned()
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(s)
}

use super::one_or_many;

fn one_or_many_non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let values: Vec<String> = one_or_many(d)?;
    if values.is_empty() || values.iter().any(String::is_empty) {
        return Err(serde::de::Error::custom(
            "expected a non-empty string or a non-empty list of non-empty strings",
        ));
    }
    Ok(values)
}

/// The JWS algorithms usher verifies; `none` is not among them.
pub const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

fn algorithms<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Spanned<String>>, D::Error> {
    let algs = Vec::<Spanned<String>>::deserialize(d)?;
    if algs.is_empty() {
        return Err(serde::de::Error::custom("name at least one algorithm"));
    }
    for alg in &algs {
        if !ALGORITHMS.contains(&alg.get_ref().as_str()) {
            return Err(serde::de::Error::custom(format!(
                "unknown algorithm `{}`, expected one of {}",
                alg.get_ref(),
                ALGORITHMS.join(", ")
            )));
        }
    }
    Ok(algs)
}
