//! Opaque session cookies: the application says who a session belongs to
//! (an introspection call with the cookie forwarded), usher remembers the
//! answer in a bounded TTL cache — unknown sessions too, for less long —
//! and asks once per session however many requests wait. When the
//! application is down or slow, requests go on as anonymous (fail-open)
//! and the failure is counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::identity::api_keys::sha256;
use crate::state::BoundedMap;
use bytes::Bytes;
use http::header::{ACCEPT, COOKIE};
use http::{HeaderValue, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use prometheus::{Histogram, IntCounter};
use serde_json::{Map, Value};
use tokio::sync::{OnceCell, Semaphore};

use super::jwt::{claim_matches, prefixed};
use super::remote::{HttpsClient, https_client};
use super::strict_json::parse_object;
use super::{Claims, Identity, Source, Tier, UnverifiedReason};
use crate::config::identity::SessionConfig;

/// Session ids longer than this are refused without a lookup.
pub const MAX_SESSION_ID: usize = 1024;

/// Introspection calls in flight at most; past it, lookups answer
/// "unavailable" at once instead of piling connections on the application.
const MAX_IN_FLIGHT: usize = 64;

/// The largest introspection answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// How long an unavailable answer is remembered, so a down application is
/// not asked once per request.
const UNAVAILABLE_TTL: Duration = Duration::from_secs(1);

/// What the application said about a session.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// A live session of this account.
    Known(Identity),
    /// The application does not know the session (or it is inactive).
    Unknown,
    /// The application could not be asked (down, slow, or answered
    /// nonsense): the request goes on as anonymous.
    Unavailable,
}

/// Counters and timings of lookups.
#[derive(Clone, Debug)]
pub struct SessionMetrics {
    /// Answers served from the cache.
    pub cache_hits: IntCounter,
    /// Lookups that asked the application.
    pub cache_misses: IntCounter,
    /// Introspection calls that failed (fail-open).
    pub unavailable: IntCounter,
    /// Introspection call latency.
    pub latency: Histogram,
}

#[derive(Debug)]
struct Slot {
    answer: OnceCell<(Lookup, Instant)>,
}

/// Resolves session cookies through the application.
#[derive(Debug)]
pub struct SessionResolver {
    cookie: String,
    url: Uri,
    timeout: Duration,
    cache_ttl: Duration,
    negative_ttl: Duration,
    subject_field: String,
    subject_prefix: String,
    active_field: Option<String>,
    paying: Vec<crate::config::identity::ClaimMatch>,
    /// Keyed by the SHA-256 of the session id: fixed size per entry
    /// whatever the cookie holds.
    slots: BoundedMap<[u8; 32], Arc<Slot>>,
    in_flight: Semaphore,
    client: HttpsClient,
}

impl SessionResolver {
    /// A resolver for a validated config and URL.
    pub fn new(config: &SessionConfig, url: Uri) -> Self {
        SessionResolver {
            cookie: config.cookie.clone(),
            url,
            timeout: config.timeout,
            cache_ttl: config.cache_ttl,
            negative_ttl: config.negative_ttl,

            subject_field: config.subject_field.clone(),
            subject_prefix: config.subject_prefix.clone(),
            active_field: config.active_field.clone(),
            paying: config.paying.clone(),
            slots: BoundedMap::new(config.capacity.max(1)),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            client: https_client(),
        }
    }

    /// The session cookie's name.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Who `session` belongs to, from the cache or the application. Never
    /// waits longer than the configured timeout.
    pub async fn resolve(&self, session: &str, metrics: &SessionMetrics) -> Lookup {
        if session.is_empty()
            || session.len() > MAX_SESSION_ID
            || !session.bytes().all(is_cookie_octet)
        {
            return Lookup::Unknown;
        }
        let key = sha256(session.as_bytes());
        let lookup = async {
            for _ in 0..2 {
                let slot = self.slots.with(
                    key,
                    || {
                        Arc::new(Slot {
                            answer: OnceCell::new(),
                        })
                    },
                    |s| s.clone(),
                );
                let mut asked = false;
                let (lookup, until) = slot
                    .answer
                    .get_or_init(|| {
                        asked = true;
                        self.ask(session, metrics)
                    })
                    .await
                    .clone();
                if Instant::now() < until {
                    if asked {
                        metrics.cache_misses.inc();
                    } else {
                        metrics.cache_hits.inc();
                    }
                    return lookup;
                }
                // Expired: drop this slot (unless someone already replaced
                // it) and ask again.
                self.slots
                    .remove_if(&key, |current| Arc::ptr_eq(current, &slot));
            }
            Lookup::Unavailable
        };
        // Each caller's own deadline: joining a lookup another request
        // started (or restarted, if that request went away) never waits
        // longer than the timeout either.
        match tokio::time::timeout(self.timeout, lookup).await {
            Ok(lookup) => lookup,
            Err(_) => {
                // The lookup this caller ran or joined was cut short (and
                // with it, its own accounting): count the failure here.
                metrics.unavailable.inc();
                Lookup::Unavailable
            }
        }
    }

    async fn ask(&self, session: &str, metrics: &SessionMetrics) -> (Lookup, Instant) {
        let Ok(_permit) = self.in_flight.try_acquire() else {
            metrics.unavailable.inc();
            return (Lookup::Unavailable, Instant::now() + UNAVAILABLE_TTL);
        };
        let started = Instant::now();
        let lookup = match tokio::time::timeout(self.timeout, self.introspect(session)).await {
            Ok(Ok(lookup)) => lookup,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "session introspection failed");
                Lookup::Unavailable
            }
            Err(_) => {
                tracing::debug!("session introspection timed out");
                Lookup::Unavailable
            }
        };
        metrics.latency.observe(started.elapsed().as_secs_f64());
        let ttl = match lookup {
            Lookup::Known(_) => self.cache_ttl,
            Lookup::Unknown => self.negative_ttl,
            Lookup::Unavailable => {
                metrics.unavailable.inc();
                UNAVAILABLE_TTL
            }
        };
        (lookup, Instant::now() + ttl)
    }

    async fn introspect(&self, session: &str) -> Result<Lookup, String> {
        let cookie = HeaderValue::from_str(&format!("{}={session}", self.cookie))
            .map_err(|e| e.to_string())?;
        let request = http::Request::get(self.url.clone())
            .header(ACCEPT, "application/json")
            .header(COOKIE, cookie)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403 | 404) {
            return Ok(Lookup::Unknown);
        }
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let answer = parse_object(&body).map_err(|e| e.to_string())?;
        Ok(self.interpret(answer))
    }

    /// Map the application's answer to an identity.
    fn interpret(&self, answer: Map<String, Value>) -> Lookup {
        if let Some(field) = &self.active_field
            && answer.get(field) != Some(&Value::Bool(true))
        {
            return Lookup::Unknown;
        }
        let subject = match answer.get(&self.subject_field) {
            Some(Value::String(s)) if !s.is_empty() && !s.chars().any(char::is_control) => {
                s.clone()
            }
            Some(Value::Number(n)) => n.to_string(),
            _ => return Lookup::Unknown,
        };
        let tier = if self.paying.iter().any(|m| claim_matches(m, &answer)) {
            Tier::Paying
        } else {
            Tier::Free
        };
        Lookup::Known(Identity::User {
            source: Source::Session,
            subject: prefixed(&self.subject_prefix, &subject),
            tier,
            claims: Claims::new(answer),
        })
    }
}

/// RFC 6265 cookie-octet: printable ASCII except space, `"`, `,`, `;` and
/// `\`. Anything else could smuggle a second cookie into the call.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

impl Lookup {
    /// The identity a lookup gives a request.
    pub fn identity(self) -> Identity {
        match self {
            Lookup::Known(identity) => identity,
            Lookup::Unknown => Identity::Unverified {
                source: Source::Session,
                reason: UnverifiedReason::Unrecognized,
            },
            Lookup::Unavailable => Identity::Unverified {
                source: Source::Session,
                reason: UnverifiedReason::Unavailable,
            },
        }
    }
}
