//! JWT verification, strict by construction: the issuer is chosen by the
//! exact `iss`, the algorithm must be one that issuer pins, the key must be
//! of that algorithm's family and come from config (never from the token),
//! header and claims must be strict JSON, `crit` is refused, and `exp`,
//! `nbf`, `iat`, `iss` and `aud` are checked with exact matching.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::Claims;
use super::cache::{Verified, VerifiedCache};
use super::jwks::RemoteJwks;
use super::keys::VerifyingKey;
use super::strict_json::parse_object;
use super::{Identity, InvalidReason, Source, Tier, UnverifiedReason};
use crate::config::identity::ClaimMatch;

/// Tokens longer than this are refused unread.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The latest NumericDate accepted (9999-12-31T23:59:59Z); larger values
/// are out of range, not "far in the future".
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// Why a token was not verified.
enum Failure {
    /// It is not valid.
    Invalid(InvalidReason),
    /// Its issuer's remote keys have never been fetched.
    KeysUnavailable,
}

impl From<InvalidReason> for Failure {
    fn from(reason: InvalidReason) -> Self {
        Failure::Invalid(reason)
    }
}

/// One configured issuer, compiled.
#[derive(Debug)]
pub struct Issuer {
    /// The exact `iss`.
    pub issuer: String,
    /// Accepted audiences.
    pub audience: Vec<String>,
    /// Pinned algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Its keys from config.
    pub keys: Vec<VerifyingKey>,
    /// Its keys from a JWKS URL, if it has one.
    pub remote: Option<Arc<RemoteJwks>>,
    /// Tolerated clock skew.
    pub leeway: Duration,
    /// The claim naming the account.
    pub subject_claim: String,
    /// Put before every subject it vouches for.
    pub subject_prefix: String,
    /// Claims that make an account paying.
    pub paying: Vec<ClaimMatch>,
    /// Claims that make a token a service client's.
    pub service: Vec<ClaimMatch>,
    /// Treat `client_id`/`azp` without a subject as a service client.
    pub service_without_subject: bool,
}

/// How many verified tokens are remembered.
pub const CACHE_CAPACITY: usize = 100_000;

/// All configured issuers, and the tokens they verified lately.
#[derive(Debug)]
pub struct JwtVerifier {
    issuers: Vec<Issuer>,
    cache: VerifiedCache,
}

impl Default for JwtVerifier {
    fn default() -> Self {
        JwtVerifier::new(Vec::new())
    }
}

impl JwtVerifier {
    /// A verifier over compiled issuers.
    pub fn new(issuers: Vec<Issuer>) -> Self {
        JwtVerifier {
            issuers,
            cache: VerifiedCache::new(CACHE_CAPACITY),
        }
    }

    /// The issuers' remote key sets.
    pub fn remote_jwks(&self) -> Vec<Arc<RemoteJwks>> {
        self.issuers
            .iter()
            .filter_map(|i| i.remote.clone())
            .collect()
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Verify a compact JWS at time `now`, answering from the cache of
    /// verified tokens when it can. With `only`, the token must come from
    /// that issuer (the one whose cookie carried it).
    pub fn verify(
        &self,
        token: &str,
        now: SystemTime,
        only: Option<usize>,
    ) -> Result<Identity, InvalidReason> {
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let from_issuer = |issuer: usize| only.is_none_or(|only| only == issuer);
        if let Some((identity, issuer)) = self.cache.get(token, now_secs) {
            return if from_issuer(issuer) {
                Ok(identity)
            } else {
                Err(InvalidReason::WrongIssuer)
            };
        }
        let verified = match self.verify_uncached(token, now_secs) {
            Ok(verified) => verified,
            Err(Failure::Invalid(reason)) => return Err(reason),
            Err(Failure::KeysUnavailable) => {
                return Ok(Identity::Unverified {
                    source: Source::Jwt,
                    reason: UnverifiedReason::Unavailable,
                });
            }
        };
        self.cache.insert(token, &verified, now_secs);
        if !from_issuer(verified.issuer) {
            return Err(InvalidReason::WrongIssuer);
        }
        Ok(verified.identity)
    }

    /// Verify without the cache.
    fn verify_uncached(&self, token: &str, now: f64) -> Result<Verified, Failure> {
        use InvalidReason::*;
        if token.len() > MAX_TOKEN_LEN {
            return Err(Malformed.into());
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Malformed.into());
        };
        let header = decode_object(header_b64)?;
        let claims = decode_object(claims_b64)?;
        if signature_b64.is_empty() || URL_SAFE_NO_PAD.decode(signature_b64).is_err() {
            return Err(Malformed.into());
        }

        // Header: an algorithm we know, no critical extensions. `jwk`,
        // `jku`, `x5u` and `x5c` are never looked at.
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => parse_algorithm(alg).ok_or(DisallowedAlgorithm)?,
            _ => return Err(Malformed.into()),
        };
        if header.contains_key("crit") {
            return Err(Malformed.into());
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(Malformed.into()),
        };

        // Issuer by exact `iss`, then its pinned algorithms and its keys.
        let iss = match claims.get("iss") {
            Some(Value::String(iss)) => iss,
            Some(_) => return Err(Malformed.into()),
            None => return Err(WrongIssuer.into()),
        };
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.issuer == *iss)
            .ok_or(WrongIssuer)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(DisallowedAlgorithm.into());
        }
        let family = alg.family();
        let fits = |k: &&VerifyingKey| {
            k.key.family() == family
                && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
        };
        let remote = issuer.remote.as_ref().map(|r| r.keys());
        let remote_keys = remote.as_deref().map_or(&[][..], |keys| keys.as_slice());
        let message = &token[..header_b64.len() + 1 + claims_b64.len()];
        let mut tried = false;
        let mut verified = false;
        for key in issuer.keys.iter().chain(remote_keys).filter(fits) {
            tried = true;
            if jsonwebtoken::crypto::verify(signature_b64, message.as_bytes(), &key.key, alg)
                .unwrap_or(false)
            {
                verified = true;
                break;
            }
        }
        if !verified {
            if let Some(remote) = &issuer.remote {
                // Until the issuer's keys have been fetched once, its
                // tokens cannot be judged: no trust, but no blame either.
                if !tried && !remote.loaded() {
                    remote.want_refetch();
                    return Err(Failure::KeysUnavailable);
                }
                // The issuer may have rotated its keys: ask for a
                // (rate-limited) refetch; this request is judged on the keys
                // at hand.
                remote.want_refetch();
            }
            return Err(Failure::Invalid(if tried {
                BadSignature
            } else {
                UnknownKey
            }));
        }

        // Claims, now that they are known to come from the issuer.
        let leeway = issuer.leeway.as_secs_f64();
        let exp = numeric_date(&claims, "exp")?.ok_or(Malformed)?;
        if now >= exp + leeway {
            return Err(Expired.into());
        }
        let mut from = f64::MIN;
        for name in ["nbf", "iat"] {
            if let Some(t) = numeric_date(&claims, name)? {
                if t > now + leeway {
                    return Err(NotYetValid.into());
                }
                from = from.max(t - leeway);
            }
        }
        check_audience(&claims, &issuer.audience)?;
        Ok(Verified {
            identity: classify(issuer, claims)?,
            issuer: index,
            from,
            until: exp + leeway,
        })
    }
}

/// The JWS algorithm named by a header's `alg`, if usher verifies it.
fn parse_algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Parse a config algorithm name (validated at load).
pub fn algorithm(name: &str) -> Option<Algorithm> {
    parse_algorithm(name)
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, InvalidReason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| InvalidReason::Malformed)?;
    parse_object(&bytes).map_err(|_| InvalidReason::Malformed)
}

/// A NumericDate claim: absent, or a finite number within range.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, InvalidReason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (0.0..=MAX_NUMERIC_DATE).contains(&v) => Ok(Some(v)),
            _ => Err(InvalidReason::Malformed),
        },
        Some(_) => Err(InvalidReason::Malformed),
    }
}

fn check_audience(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), InvalidReason> {
    let named = |aud: &str| accepted.iter().any(|a| a == aud);
    match claims.get("aud") {
        Some(Value::String(aud)) if named(aud) => Ok(()),
        Some(Value::String(_)) | None => Err(InvalidReason::WrongAudience),
        Some(Value::Array(auds)) => {
            let mut any = false;
            for aud in auds {
                let Value::String(aud) = aud else {
                    return Err(InvalidReason::Malformed);
                };
                any |= named(aud);
            }
            if any {
                Ok(())
            } else {
                Err(InvalidReason::WrongAudience)
            }
        }
        Some(_) => Err(InvalidReason::Malformed),
    }
}

/// Whether a claim matches: equal to one of the values, or for an array
/// (or a space-separated `scope`/`scp`) containing one. Booleans and
/// numbers compare by their JSON text.
pub fn claim_matches(rule: &ClaimMatch, claims: &Map<String, Value>) -> bool {
    let hit = |s: &str| rule.any_of.iter().any(|v| v == s);
    match claims.get(&rule.claim) {
        Some(Value::String(s)) if matches!(rule.claim.as_str(), "scope" | "scp") => {
            s.split(' ').any(hit)
        }
        Some(Value::String(s)) => hit(s),
        Some(Value::Array(items)) => items.iter().any(|item| match item {
            Value::String(s) => hit(s),
            Value::Bool(_) | Value::Number(_) => hit(&item.to_string()),
            _ => false,
        }),
        Some(v @ (Value::Bool(_) | Value::Number(_))) => hit(&v.to_string()),
        _ => false,
    }
}

/// A string claim that can name someone: non-empty, no control characters
/// (it becomes a header value and a log field).
fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, InvalidReason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && !s.chars().any(char::is_control) => Ok(Some(s)),
        Some(_) => Err(InvalidReason::Malformed),
    }
}

/// A subject with its source's prefix.
pub fn prefixed(prefix: &str, subject: &str) -> Arc<str> {
    if prefix.is_empty() {
        Arc::from(subject)
    } else {
        Arc::from(format!("{prefix}{subject}"))
    }
}

/// Map verified claims to an identity that keeps them.
fn classify(issuer: &Issuer, claims: Map<String, Value>) -> Result<Identity, InvalidReason> {
    let subject = string_claim(&claims, &issuer.subject_claim)?;
    let client_id = string_claim(&claims, "client_id")?.or(string_claim(&claims, "azp")?);
    let service = issuer.service.iter().any(|r| claim_matches(r, &claims))
        || (issuer.service_without_subject && subject.is_none() && client_id.is_some());
    if service {
        let id = client_id.or(subject).ok_or(InvalidReason::Malformed)?;
        let client_id = prefixed(&issuer.subject_prefix, id);
        return Ok(Identity::Service {
            source: Source::Jwt,
            client_id,
            claims: Claims::new(claims),
        });
    }
    let subject = prefixed(
        &issuer.subject_prefix,
        subject.ok_or(InvalidReason::Malformed)?,
    );
    let tier = if issuer.paying.iter().any(|r| claim_matches(r, &claims)) {
        Tier::Paying
    } else {
        Tier::Free
    };
    Ok(Identity::User {
        source: Source::Jwt,
        subject,
        tier,
        claims: Claims::new(claims),
    })
}
