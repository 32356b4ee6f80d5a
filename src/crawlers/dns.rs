//! Forward-confirmed reverse DNS for crawler claims: the address's PTR
//! names must lie under one of the crawler's suffixes and resolve back to
//! the address. Answers are remembered in a bounded cache; one lookup runs
//! per address and crawler however many requests wait; lookups are capped
//! both in flight and per second (past either, the claim stays unknown and
//! nothing is remembered); a request waits at most the configured budget
//! (the lookup itself goes on, in its own task, to answer the next
//! request).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::{Notify, Semaphore};

use super::DnsSetupError;
use crate::config::CrawlersConfig;
use crate::state::BoundedMap;

/// Verifications remembered at most.
const CAPACITY: usize = 100_000;

/// Lookups running at once at most; past it a claim stays unknown for now.
const MAX_IN_FLIGHT: usize = 32;

/// PTR names looked at per address at most (each costs a forward lookup).
const MAX_NAMES: usize = 2;

/// New lookups per second at most (bursts of up to this many).
const LOOKUPS_PER_SECOND: u32 = 50;

/// How long a failed lookup (timeout, server failure) is remembered.
const FAILURE_TTL: Duration = Duration::from_secs(30);

/// A refuted claim is remembered at most this long, whatever the cache
/// TTL, so a crawler's passing DNS trouble is not held against it for long.
const REFUTED_TTL: Duration = Duration::from_secs(600);

/// What DNS said about an address and a crawler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A PTR name with the crawler's suffix resolves back to the address.
    Confirmed,
    /// No such name, or it does not resolve back.
    Refuted,
    /// DNS did not answer (timeout, server failure).
    Failed,
}

#[derive(Debug)]
struct Slot {
    answer: OnceLock<(Answer, Instant)>,
    ready: Notify,
    started: AtomicBool,
}

impl Slot {
    fn fresh(&self, now: Instant) -> Option<Answer> {
        self.answer
            .get()
            .filter(|(_, until)| now < *until)
            .map(|(a, _)| *a)
    }
}

impl Answer {
    /// Every answer, in the order of [`LookupCounts::answered`].
    pub const ALL: [Answer; 3] = [Answer::Confirmed, Answer::Refuted, Answer::Failed];

    /// The `result` label of the lookup metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Confirmed => "confirmed",
            Answer::Refuted => "refuted",
            Answer::Failed => "failed",
        }
    }
}

/// Lookups by outcome, counted for `/metrics`.
#[derive(Debug, Default)]
pub struct LookupCounts {
    /// Per [`Answer`]: confirmed, refuted, failed.
    pub answered: [AtomicU64; 3],
    /// Lookups not started because too many ran or started lately.
    pub skipped: AtomicU64,
}

type Limiter = governor::DefaultDirectRateLimiter;

/// The DNS side of crawler verification.
pub struct ReverseDns {
    config: CrawlersConfig,
    resolver: TokioResolver,
    slots: BoundedMap<(IpAddr, u16), Arc<Slot>>,
    in_flight: Arc<Semaphore>,
    per_second: Limiter,
    budget: Duration,
    timeout: Duration,
    ttl: Duration,
    counts: Arc<LookupCounts>,
}

impl std::fmt::Debug for ReverseDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseDns")
            .field("budget", &self.budget)
            .field("remembered", &self.slots.len())
            .finish()
    }
}

impl ReverseDns {
    /// A resolver for the configured servers (or the system's), counting
    /// its lookups in `counts` (which outlive it across reloads).
    pub fn new(config: &CrawlersConfig, counts: Arc<LookupCounts>) -> Result<Self, DnsSetupError> {
        let mut builder = if config.dns_servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsSetupError(e.to_string()))?
        } else {
            let servers = config
                .dns_servers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for c in &mut server.connections {
                        c.port = addr.port();
                    }
                    server
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        options.timeout = config.dns_timeout;
        options.attempts = 1;
        let resolver = builder.build().map_err(|e| DnsSetupError(e.to_string()))?;
        let rate = NonZeroU32::new(LOOKUPS_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        Ok(ReverseDns {
            config: config.clone(),
            resolver,
            slots: BoundedMap::new(CAPACITY),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            per_second: governor::RateLimiter::direct(governor::Quota::per_second(rate)),
            budget: config.dns_budget,
            timeout: config.dns_timeout,
            ttl: config.dns_cache_ttl,
            counts,
        })
    }

    /// The settings it was made with.
    pub fn config(&self) -> &CrawlersConfig {
        &self.config
    }

    /// Lookups so far, by outcome.
    pub fn counts(&self) -> &LookupCounts {
        &self.counts
    }

    /// What is remembered for `ip` and crawler `crawler`: confirmed,
    /// refuted, or nothing (never asked, expired, or failed).
    pub fn remembered(&self, ip: IpAddr, crawler: u16) -> Option<bool> {
        let now = Instant::now();
        self.slots
            .peek(&(ip, crawler), |slot| slot.fresh(now))
            .flatten()
            .and_then(as_verdict)
    }

    /// Confirm `ip` for a crawler with these suffixes, waiting at most the
    /// budget. `None` when DNS has not answered (yet).
    pub async fn confirm(
        self: &Arc<Self>,
        ip: IpAddr,
        crawler: u16,
        suffixes: Arc<[Suffix]>,
    ) -> Option<bool> {
        let key = (ip, crawler);
        let slot = self.slot(key);
        if let Some(answer) = slot.fresh(Instant::now()) {
            return as_verdict(answer);
        }
        // Register for the wake-up before starting (or finding) the lookup,
        // so an answer that lands in between is not missed.
        let ready = slot.ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        if !slot.started.swap(true, Ordering::AcqRel) {
            let permit = match self.in_flight.clone().try_acquire_owned() {
                Ok(permit) if self.per_second.check().is_ok() => permit,
                _ => {
                    // Too many lookups running or started lately: leave
                    // this one for a later request.
                    slot.started.store(false, Ordering::Release);
                    self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            };
            let dns = Arc::clone(self);
            let finish = Finish(Arc::clone(&slot));
            tokio::spawn(async move {
                let answer =
                    match tokio::time::timeout(dns.timeout, dns.lookup(ip, &suffixes)).await {
                        Ok(answer) => answer,
                        Err(_) => Answer::Failed,
                    };
                drop(permit);
                let ttl = match answer {
                    Answer::Confirmed => dns.ttl,
                    Answer::Refuted => dns.ttl.min(REFUTED_TTL),
                    Answer::Failed => FAILURE_TTL,
                };
                dns.counts.answered[answer as usize].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%ip, answer = answer.as_str(), "crawler DNS check");
                finish.answer(answer, ttl);
            });
        }
        if slot.answer.get().is_none() {
            let _ = tokio::time::timeout(self.budget, ready).await;
        }
        slot.fresh(Instant::now()).and_then(as_verdict)
    }

    /// The slot for a key, replacing an expired one.
    fn slot(&self, key: (IpAddr, u16)) -> Arc<Slot> {
        let make = || {
            Arc::new(Slot {
                answer: OnceLock::new(),
                ready: Notify::new(),
                started: AtomicBool::new(false),
            })
        };
        let slot = self.slots.with(key, make, |s| s.clone());
        let expired = slot
            .answer
            .get()
            .is_some_and(|(_, until)| Instant::now() >= *until);
        if !expired {
            return slot;
        }
        self.slots.remove_if(&key, |s| Arc::ptr_eq(s, &slot));
        self.slots.with(key, make, |s| s.clone())
    }

    async fn lookup(&self, ip: IpAddr, suffixes: &[Suffix]) -> Answer {
        let names = match self.resolver.reverse_lookup(Name::from(ip)).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(ptr) if suffixes.iter().any(|s| s.covers(&ptr.0)) => {
                        Some(ptr.0.clone())
                    }
                    _ => None,
                })
                .take(MAX_NAMES)
                .collect::<Vec<_>>(),
            Err(e) if no_such_name(&e) => return Answer::Refuted,
            Err(e) => {
                tracing::debug!(%ip, error = %e, "reverse lookup failed");
                return Answer::Failed;
            }
        };
        let mut failed = false;
        for name in names {
            let found = match ip {
                IpAddr::V4(v4) => self.resolver.ipv4_lookup(name).await.map(|l| {
                    l.answers()
                        .iter()
                        .any(|r| matches!(&r.data, RData::A(a) if a.0 == v4))
                }),
                IpAddr::V6(v6) => self.resolver.ipv6_lookup(name).await.map(|l| {
                    l.answers()
                        .iter()
                        .any(|r| matches!(&r.data, RData::AAAA(a) if a.0 == v6))
                }),
            };
            match found {
                Ok(true) => return Answer::Confirmed,
                Ok(false) => {}
                Err(e) if no_such_name(&e) => {}
                Err(e) => {
                    tracing::debug!(%ip, error = %e, "forward lookup failed");
                    failed = true;
                }
            }
        }
        if failed {
            Answer::Failed
        } else {
            Answer::Refuted
        }
    }
}

fn as_verdict(answer: Answer) -> Option<bool> {
    match answer {
        Answer::Confirmed => Some(true),
        Answer::Refuted => Some(false),
        Answer::Failed => None,
    }
}

fn no_such_name(e: &NetError) -> bool {
    e.is_nx_domain() || e.is_no_records_found()
}

/// Settles a slot when its lookup task ends — with the task's answer, or
/// as failed if the task panicked or was cancelled — and wakes whoever
/// waits, so no slot is left started without an answer.
struct Finish(Arc<Slot>);

impl Finish {
    fn answer(self, answer: Answer, ttl: Duration) {
        let _ = self.0.answer.set((answer, Instant::now() + ttl));
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let _ = self
            .0
            .answer
            .set((Answer::Failed, Instant::now() + FAILURE_TTL));
        self.0.ready.notify_waiters();
    }
}

/// Host names a crawler's addresses reverse-resolve to: every name under a
/// domain (`googlebot.com`), or names one label under a domain whose first
/// label starts so (`rate-limited-proxy-*.google.com`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suffix {
    /// The first label's required start, for the `prefix*.domain` form.
    first: Option<Box<[u8]>>,
    /// The domain's labels, lower case.
    domain: Box<[Box<[u8]>]>,
}

impl Suffix {
    /// Parse `googlebot.com` or `crawl-*.googlebot.com` (dots around are
    /// ignored). The domain needs two labels or more.
    pub fn parse(text: &str) -> Result<Suffix, String> {
        let text = text.trim_matches('.').to_ascii_lowercase();
        let (first, domain) = match text.split_once('.') {
            Some((label, rest)) if label.ends_with('*') => (Some(&label[..label.len() - 1]), rest),
            _ => (None, text.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let labels: Vec<&str> = domain.split('.').collect();
        let first_ok = first.is_none_or(|f| f.is_empty() || label_ok(f));
        if labels.len() < 2 || !labels.iter().all(|l| label_ok(l)) || !first_ok {
            return Err(format!(
                "rdns suffix `{text}` must be a domain of two labels or more, like \"googlebot.com\", optionally after `prefix*.`"
            ));
        }
        Ok(Suffix {
            first: first.map(|f| f.as_bytes().into()),
            domain: labels.iter().map(|l| l.as_bytes().into()).collect(),
        })
    }

    /// Whether a DNS name lies under this suffix, compared label by label
    /// (ASCII case-insensitively), never as text.
    pub fn covers(&self, name: &Name) -> bool {
        let labels: Vec<&[u8]> = name.iter().collect();
        let n = self.domain.len();
        if labels.len() <= n {
            return false;
        }
        let (head, tail) = labels.split_at(labels.len() - n);
        let under = tail
            .iter()
            .zip(self.domain.iter())
            .all(|(a, b)| a.eq_ignore_ascii_case(b));
        under
            && self.first.as_ref().is_none_or(|prefix| {
                head.len() == 1
                    && head[0].len() >= prefix.len()
                    && head[0][..prefix.len()].eq_ignore_ascii_case(prefix)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    #[test]
    fn suffixes_match_label_by_label() {
        let bot = Suffix::parse("googlebot.com").unwrap();
        assert!(bot.covers(&name("crawl-66-249-66-1.googlebot.com.")));
        assert!(bot.covers(&name("geo-crawl-1.geo.GOOGLEBOT.com")));
        assert!(
            !bot.covers(&name("googlebot.com.")),
            "the domain itself is no crawler host"
        );
        assert!(!bot.covers(&name("evilgooglebot.com")));
        assert!(!bot.covers(&name("crawl.googlebot.com.evil.example.")));
        // One label holding a dot, as a hostile PTR record can send: its
        // text looks like a name under googlebot.com, its labels do not.
        let tricky =
            Name::from_labels(vec![b"crawl-1.googlebot".to_vec(), b"com".to_vec()]).unwrap();
        assert!(!bot.covers(&tricky));

        let proxy = Suffix::parse("rate-limited-proxy-*.google.com").unwrap();
        assert!(proxy.covers(&name("rate-limited-proxy-66-249-90-77.google.com.")));
        assert!(!proxy.covers(&name("google-proxy-66-249-81-1.google.com.")));
        assert!(!proxy.covers(&name("x.rate-limited-proxy-1.google.com.")));

        for bad in [
            "com",
            "",
            "*.com",
            "a..b",
            "bad_label.com",
            "a*b.example.com",
            "x.*.com",
        ] {
            assert!(Suffix::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Suffix::parse(".Search.MSN.com."),
            Suffix::parse("search.msn.com")
        );
    }
}
