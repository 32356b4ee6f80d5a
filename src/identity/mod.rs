//! Identity stage: who the credentials on a request say it is, after
//! verification. Nothing here trusts a claim it has not verified, and
//! credentials are read only from the places the config names.

pub mod api_keys;
pub mod cache;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod remote;
pub mod session;
pub mod strict_json;

use std::path::Path;
use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName};

use crate::config::identity::{IdentityConfig, JwtIssuerConfig, OnInvalid, SessionConfig};
use crate::config::{ConfigError, Origin};
use crate::facts::Facts;
use crate::verdict::Class;
use api_keys::ApiKeys;
use jwt::{Issuer, JwtVerifier};
use keys::{KeyError, VerifyingKey};

/// Where a credential came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A JWT bearer token or token cookie.
    Jwt,
    /// An API key.
    ApiKey,
    /// A session cookie resolved by the application.
    Session,
}

impl Source {
    /// Every source, in a fixed order.
    pub const ALL: [Source; 3] = [Source::Jwt, Source::ApiKey, Source::Session];

    /// The `source` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Jwt => "jwt",
            Source::ApiKey => "api_key",
            Source::Session => "session",
        }
    }
}

/// The claims of a verified credential, shared (not copied) by every
/// request the credential's cache entry answers. Empty for API keys.
/// Only what rules can match is kept — strings, numbers, booleans and
/// arrays of them — and at most `MAX_CLAIMS_SIZE` bytes of it, so a cache
/// of verified credentials stays small whatever the tokens carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims(Option<Arc<serde_json::Map<String, serde_json::Value>>>);

/// The most claim text (names and values) kept per credential.
pub const MAX_CLAIMS_SIZE: usize = 8 * 1024;

impl Claims {
    /// Claims kept from a verified credential.
    pub fn new(mut claims: serde_json::Map<String, serde_json::Value>) -> Self {
        use serde_json::Value;
        fn size(v: &Value) -> Option<usize> {
            match v {
                Value::String(s) => Some(s.len()),
                Value::Number(_) | Value::Bool(_) => Some(8),
                Value::Array(items) => items.iter().try_fold(0usize, |n, item| match item {
                    Value::Array(_) | Value::Object(_) => None,
                    item => Some(n + size(item)?),
                }),
                Value::Null | Value::Object(_) => None,
            }
        }
        let mut total = 0usize;
        claims.retain(|name, value| match size(value) {
            Some(n) if total + name.len() + n <= MAX_CLAIMS_SIZE => {
                total += name.len() + n;
                true
            }
            _ => false,
        });
        Claims(Some(Arc::new(claims)))
    }

    /// The claims, if the credential had any.
    pub fn get(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.0.as_deref()
    }
}

/// What the credentials on a request established.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Identity {
    /// No credential was presented.
    #[default]
    Anonymous,
    /// A verified person's account.
    User {
        /// The credential that verified.
        source: Source,
        /// The verified subject (`sub` or the configured claim).
        subject: Arc<str>,
        /// Whether the account's plan is paid.
        tier: Tier,
        /// The verified claims (token claims, or the session answer), for
        /// rules that read them.
        claims: Claims,
    },
    /// A verified machine client (API key, client-credentials token).
    Service {
        /// The credential that verified.
        source: Source,
        /// The verified client id or key owner.
        client_id: Arc<str>,
        /// The verified claims, as for `User`.
        claims: Claims,
    },
    /// A credential was presented and failed verification.
    Invalid {
        /// The credential that failed.
        source: Source,
        /// Why it failed, in a bounded vocabulary.
        reason: InvalidReason,
    },
    /// A credential was presented but could not be checked, through no
    /// fault of the client's (keys not loaded yet, the application down, a
    /// session it no longer knows). No trust, and no count against it.
    Unverified {
        /// The credential that could not be checked.
        source: Source,
        /// Why.
        reason: UnverifiedReason,
    },
}

/// Why a presented credential could not be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnverifiedReason {
    /// What would check it is unavailable (JWKS not fetched yet, session
    /// introspection down or slow).
    Unavailable,
    /// The application does not know it (an expired or logged-out session).
    Unrecognized,
}

impl UnverifiedReason {
    /// Every reason, in a fixed order.
    pub const ALL: [UnverifiedReason; 2] = [
        UnverifiedReason::Unavailable,
        UnverifiedReason::Unrecognized,
    ];

    /// The `result` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            UnverifiedReason::Unavailable => "unavailable",
            UnverifiedReason::Unrecognized => "unrecognized",
        }
    }
}

/// The plan of a verified account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// A free plan: `registered_user`.
    Free,
    /// A paid plan or entitlement: `paying_customer`.
    Paying,
}

/// Why a presented credential did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    /// Not parseable as the credential it claims to be, or claims of the
    /// wrong type.
    Malformed,
    /// The signature does not match.
    BadSignature,
    /// No configured key can check it.
    UnknownKey,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf` (or issued in the future).
    NotYetValid,
    /// Issued by an issuer that is not configured.
    WrongIssuer,
    /// Issued for another audience.
    WrongAudience,
    /// Signed with an algorithm its issuer does not pin (`none` included).
    DisallowedAlgorithm,
}

impl InvalidReason {
    /// Every reason, in a fixed order.
    pub const ALL: [InvalidReason; 8] = [
        InvalidReason::Malformed,
        InvalidReason::BadSignature,
        InvalidReason::UnknownKey,
        InvalidReason::Expired,
        InvalidReason::NotYetValid,
        InvalidReason::WrongIssuer,
        InvalidReason::WrongAudience,
        InvalidReason::DisallowedAlgorithm,
    ];

    /// The `result` label value and the access log's word for it.
    pub const fn as_str(self) -> &'static str {
        match self {
            InvalidReason::Malformed => "malformed",
            InvalidReason::BadSignature => "bad_signature",
            InvalidReason::UnknownKey => "unknown_key",
            InvalidReason::Expired => "expired",
            InvalidReason::NotYetValid => "not_yet_valid",
            InvalidReason::WrongIssuer => "wrong_issuer",
            InvalidReason::WrongAudience => "wrong_audience",
            InvalidReason::DisallowedAlgorithm => "disallowed_algorithm",
        }
    }
}

impl Identity {
    /// The class this identity earns on its own, before any rule speaks.
    pub fn class(&self) -> Class {
        match self {
            Identity::Anonymous | Identity::Invalid { .. } | Identity::Unverified { .. } => {
                Class::PublicVisitor
            }
            Identity::User {
                tier: Tier::Free, ..
            } => Class::RegisteredUser,
            Identity::User {
                tier: Tier::Paying, ..
            } => Class::PayingCustomer,
            Identity::Service { .. } => Class::ServiceClient,
        }
    }

    /// The verified subject or client id, if any.
    pub fn subject(&self) -> Option<&Arc<str>> {
        match self {
            Identity::User { subject, .. } => Some(subject),
            Identity::Service { client_id, .. } => Some(client_id),
            Identity::Anonymous | Identity::Invalid { .. } | Identity::Unverified { .. } => None,
        }
    }

    /// The verified claims, if any.
    pub fn claims(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        match self {
            Identity::User { claims, .. } | Identity::Service { claims, .. } => claims.get(),
            _ => None,
        }
    }

    /// The source of the credential presented, if any.
    pub fn source(&self) -> Option<Source> {
        match self {
            Identity::Anonymous => None,
            Identity::User { source, .. }
            | Identity::Service { source, .. }
            | Identity::Invalid { source, .. }
            | Identity::Unverified { source, .. } => Some(*source),
        }
    }
}

/// A credential source that could not be built: where, and what is wrong.
struct SourceError {
    span: Option<std::ops::Range<usize>>,
    message: String,
}

/// Where API keys are read from, and the keys.
#[derive(Debug)]
struct ApiKeySource {
    header: HeaderName,
    bearer_prefix: Option<String>,
    keys: ApiKeys,
}

/// The configured credential verifiers.
#[derive(Debug, Default)]
pub struct IdentityStage {
    api_keys: Option<ApiKeySource>,
    jwt: JwtVerifier,
    /// Cookie names, each with the one issuer whose tokens it may carry.
    jwt_cookies: Vec<(String, usize)>,
    /// The resolver, with the settings it was made from (shared with the
    /// stage that replaces this one when they are unchanged, so its cache
    /// survives a reload).
    session: Option<(SessionConfig, Arc<session::SessionResolver>)>,
    on_invalid: OnInvalid,
}

impl IdentityStage {
    /// Build the verifiers, loading key material; relative paths are taken
    /// from the config file's folder, errors placed in the right file.
    pub fn from_config(config: &IdentityConfig, origin: &Origin) -> Result<Self, ConfigError> {
        IdentityStage::after(config, origin, None)
    }

    /// Build the verifiers that replace `previous` on a reload. Key files
    /// are read afresh and verified tokens are not carried over (keys may
    /// have been withdrawn); a JWKS URL whose settings are unchanged keeps
    /// its fetched keys and fetch task, and unchanged session settings keep
    /// the resolver and its cache.
    pub fn after(
        config: &IdentityConfig,
        origin: &Origin,
        previous: Option<&IdentityStage>,
    ) -> Result<Self, ConfigError> {
        let remote_before = previous.map(IdentityStage::remote_jwks).unwrap_or_default();
        let mut issuers: Vec<Issuer> = Vec::with_capacity(config.jwt.len());
        let mut jwt_cookies: Vec<(String, usize)> = Vec::new();
        for (i, issuer) in config.jwt.iter().enumerate() {
            let inconsistent = |message: String| ConfigError::Inconsistent {
                file: origin.file.clone(),
                message,
            };
            if issuers.iter().any(|known| known.issuer == issuer.issuer) {
                return Err(inconsistent(format!(
                    "identity.jwt[{i}]: issuer `{}` is configured twice",
                    issuer.issuer
                )));
            }
            issuers.push(
                compile_issuer(i, issuer, &origin.dir, &remote_before)
                    .map_err(|e| origin.error_at(e.span, e.message))?,
            );
            if let Some(cookie) = &issuer.cookie {
                if jwt_cookies.iter().any(|(name, _)| name == cookie) {
                    return Err(inconsistent(format!(
                        "identity.jwt[{i}]: cookie `{cookie}` is already another issuer's"
                    )));
                }
                jwt_cookies.push((cookie.clone(), i));
            }
        }
        let api_keys = match &config.api_keys {
            None => None,
            Some(c) => {
                let at = |message: String| origin.error_at(Some(c.file.span()), message);
                let header = HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
                    at(format!(
                        "`identity.api_keys.header`: `{}` is not a header name",
                        c.header
                    ))
                })?;
                let path = origin.dir.join(c.file.get_ref());
                let text = crate::config::bounded_read::read_text(
                    &path,
                    crate::config::MAX_API_KEYS_FILE,
                    "API key files",
                )
                .map_err(|e| {
                    at(format!(
                        "`identity.api_keys.file`: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                let keys = ApiKeys::parse(&text, &path.display().to_string(), &c.subject_prefix)?;
                Some(ApiKeySource {
                    header,
                    bearer_prefix: c.bearer_prefix.clone().filter(|p| !p.is_empty()),
                    keys,
                })
            }
        };
        let session = match &config.session {
            None => None,
            Some(c) => {
                let url = remote::parse_url(c.introspect_url.get_ref()).map_err(|message| {
                    origin.error_at(
                        Some(c.introspect_url.span()),
                        format!("`identity.session.introspect_url`: {message}"),
                    )
                })?;
                if jwt_cookies.iter().any(|(name, _)| *name == c.cookie) {
                    return Err(ConfigError::Inconsistent {
                        file: origin.file.clone(),
                        message: format!(
                            "identity.session: cookie `{}` already carries a JWT issuer's tokens",
                            c.cookie
                        ),
                    });
                }
                let kept = previous
                    .and_then(|p| p.session.as_ref())
                    .filter(|(before, _)| before == c)
                    .map(|(_, resolver)| Arc::clone(resolver));
                let resolver =
                    kept.unwrap_or_else(|| Arc::new(session::SessionResolver::new(c, url)));
                Some((c.clone(), resolver))
            }
        };
        Ok(IdentityStage {
            api_keys,
            jwt: JwtVerifier::new(issuers),
            jwt_cookies,
            session,
            on_invalid: config.on_invalid,
        })
    }

    /// The remote key sets that need a fetch task.
    pub fn remote_jwks(&self) -> Vec<Arc<jwks::RemoteJwks>> {
        self.jwt.remote_jwks()
    }

    /// Ask the application about the request's session cookie, if sessions
    /// are configured and no other credential comes first. Resolved before
    /// classification (the only step that may wait, bounded by the
    /// introspection timeout) and handed over in `Facts::session`.
    pub async fn session(
        &self,
        headers: &HeaderMap,
        metrics: &session::SessionMetrics,
    ) -> Option<Identity> {
        let (_, resolver) = self.session.as_ref()?;
        let api_key_header = self.api_keys.as_ref().map(|a| &a.header);
        // Only credentials usher reads come first: a `Basic` header, say,
        // leaves the session to decide.
        let bearer_read = !self.jwt.is_empty()
            || self
                .api_keys
                .as_ref()
                .is_some_and(|a| a.bearer_prefix.is_some());
        let has_bearer = headers
            .get_all(AUTHORIZATION)
            .iter()
            .any(|v| bearer_token(v).is_some());
        let other_credential = (bearer_read && has_bearer)
            || api_key_header.is_some_and(|h| headers.contains_key(h))
            || self
                .jwt_cookies
                .iter()
                .any(|(name, _)| !matches!(cookie(headers, name), Ok(None)));
        if other_credential {
            return None;
        }
        match cookie(headers, resolver.cookie()) {
            Ok(None) => None,
            Ok(Some(id)) => Some(resolver.resolve(id, metrics).await.identity()),
            Err(Ambiguous) => Some(Identity::Invalid {
                source: Source::Session,
                reason: InvalidReason::Malformed,
            }),
        }
    }

    /// What to do with requests whose credential failed.
    pub fn on_invalid(&self) -> OnInvalid {
        self.on_invalid
    }

    /// Verify the credentials a request carries: an API key first, then a
    /// bearer JWT, then a JWT cookie. The first credential found decides.
    /// A credential sent twice (two `Authorization` headers, a cookie
    /// repeated) is ambiguous — the application might read the other one —
    /// and so invalid.
    pub fn identify(&self, facts: &Facts<'_>) -> Identity {
        let headers = facts.headers;
        let malformed = |source| Identity::Invalid {
            source,
            reason: InvalidReason::Malformed,
        };
        let Ok(authorization) = single(headers, &AUTHORIZATION) else {
            return match (&self.api_keys, self.jwt.is_empty()) {
                (_, false) => malformed(Source::Jwt),
                (Some(_), true) => malformed(Source::ApiKey),
                (None, true) => Identity::Anonymous,
            };
        };
        let bearer = authorization.and_then(bearer_token);
        if let Some(source) = &self.api_keys {
            let Ok(from_header) = single(headers, &source.header) else {
                return malformed(Source::ApiKey);
            };
            let from_bearer = || {
                let prefix = source.bearer_prefix.as_deref()?;
                bearer.filter(|t| t.starts_with(prefix))
            };
            if let Some(key) = from_header
                .map(|v| v.to_str().unwrap_or(""))
                .or_else(from_bearer)
            {
                return source.keys.verify(key);
            }
        }
        if self.jwt.is_empty() {
            return facts.session.clone().unwrap_or_default();
        }
        let jwt = |token: &str, only: Option<usize>| match self.jwt.verify(token, facts.now, only) {
            Ok(identity) => identity,
            Err(reason) => Identity::Invalid {
                source: Source::Jwt,
                reason,
            },
        };
        if let Some(token) = bearer {
            return jwt(token, None);
        }
        for (name, issuer) in &self.jwt_cookies {
            match cookie(headers, name) {
                Err(Ambiguous) => return malformed(Source::Jwt),
                Ok(Some(token)) => return jwt(token, Some(*issuer)),
                Ok(None) => {}
            }
        }
        facts.session.clone().unwrap_or_default()
    }
}

/// A credential sent more than once: the application might read the other
/// copy, so usher trusts neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

/// The one value of a header: `Err` when it is sent more than once.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h http::HeaderValue>, Ambiguous> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Ambiguous);
    }
    Ok(first)
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: &http::HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name`, with at most one pair of quotes removed;
/// `Err` when the cookie is sent more than once, or when it (or a `Cookie`
/// header usher cannot read as text) might hide another copy.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Ambiguous> {
    let mut found = None;
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name.as_bytes() {
                continue;
            }
            if found.is_some() {
                return Err(Ambiguous);
            }
            let v = std::str::from_utf8(pair[eq + 1..].trim_ascii()).map_err(|_| Ambiguous)?;
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            found = Some(v);
        }
    }
    Ok(found.filter(|v| !v.is_empty()))
}

fn compile_issuer(
    i: usize,
    c: &JwtIssuerConfig,
    base: &Path,
    remote_before: &[Arc<jwks::RemoteJwks>],
) -> Result<Issuer, SourceError> {
    let key = |field: &str| format!("identity.jwt[{i}].{field}");
    let fail = |span: std::ops::Range<usize>, field: &str, e: KeyError| SourceError {
        span: Some(span),
        message: format!("`{}`: {e}", key(field)),
    };
    let mut keys: Vec<VerifyingKey> = Vec::new();
    if let Some(env) = &c.secret_env {
        keys.push(
            keys::secret_from_env(env.get_ref()).map_err(|e| fail(env.span(), "secret_env", e))?,
        );
    }
    if let Some(file) = &c.secret_file {
        let path = base.join(file.get_ref());
        keys.push(keys::secret_from_file(&path).map_err(|e| fail(file.span(), "secret_file", e))?);
    }
    if let Some(file) = &c.public_key_file {
        let path = base.join(file.get_ref());
        keys.push(
            keys::public_key_from_pem(&path)
                .map_err(|e| fail(file.span(), "public_key_file", e))?,
        );
    }
    // Explicitly configured keys must each serve a pinned algorithm; a JWKS
    // document may carry keys for algorithms this issuer does not use.
    let explicit = keys.len();
    if let Some(file) = &c.jwks_file {
        let path = base.join(file.get_ref());
        keys.extend(
            keys::keys_from_jwks_file(&path).map_err(|e| fail(file.span(), "jwks_file", e))?,
        );
    }
    let remote = match &c.jwks_url {
        None => None,
        Some(url) => {
            let uri = remote::parse_url(url.get_ref()).map_err(|message| SourceError {
                span: Some(url.span()),
                message: format!("`{}`: {message}", key("jwks_url")),
            })?;
            let kept = remote_before
                .iter()
                .find(|r| r.serves(&uri, c.jwks_refresh, c.jwks_min_refetch));
            Some(match kept {
                Some(remote) => Arc::clone(remote),
                None => Arc::new(jwks::RemoteJwks::new(
                    uri,
                    c.jwks_refresh,
                    c.jwks_min_refetch,
                )),
            })
        }
    };
    let mut algorithms = Vec::with_capacity(c.algorithms.len());
    for name in &c.algorithms {
        // Names were checked when the file was read.
        let Some(alg) = jwt::algorithm(name.get_ref()) else {
            continue;
        };
        // Remote keys arrive later; they are checked when they are used.
        if remote.is_none() && !keys.iter().any(|k| k.key.family() == alg.family()) {
            return Err(SourceError {
                span: Some(name.span()),
                message: format!(
                    "`{}`: {} needs a {} key, and none is configured (secret_env, secret_file, public_key_file, jwks_file or jwks_url)",
                    key("algorithms"),
                    name.get_ref(),
                    keys::family_name(alg.family())
                ),
            });
        }
        algorithms.push(alg);
    }
    // A key no pinned algorithm can use is a mistake waiting to happen
    // (an RSA public key next to HS256 is the algorithm-confusion set-up).
    if let Some(unused) = keys[..explicit]
        .iter()
        .find(|k| !algorithms.iter().any(|a| a.family() == k.key.family()))
    {
        return Err(SourceError {
            span: c.algorithms.first().map(|a| a.span()),
            message: format!(
                "`{}`: a {} key is configured but no pinned algorithm uses it",
                key("algorithms"),
                keys::family_name(unused.key.family())
            ),
        });
    }
    Ok(Issuer {
        issuer: c.issuer.clone(),
        audience: c.audience.clone(),
        algorithms,
        keys,
        remote,
        leeway: c.leeway,
        subject_claim: c.subject_claim.clone(),
        subject_prefix: c.subject_prefix.clone(),
        paying: c.paying.clone(),
        service: c.service.clone(),
        service_without_subject: c.service_without_subject,
    })
}

#[cfg(test)]
mod tests;
