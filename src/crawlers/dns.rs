//! Forward-confirmed reverse DNS for crawler claims: the address's PTR
//! names must end in one of the crawler's suffixes and resolve back to the
//! address. Answers are remembered in a bounded cache; one lookup runs per
//! address and crawler however many requests wait, a fixed number run at
//! once, and a request waits at most the configured budget (the lookup
//! itself goes on, in its own task, to answer the next request).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// PTR names looked at per address at most.
const MAX_NAMES: usize = 4;

/// How long a failed lookup (timeout, server failure) is remembered.
const FAILURE_TTL: Duration = Duration::from_secs(30);

/// What DNS said about an address and a crawler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
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

/// The DNS side of crawler verification.
pub struct ReverseDns {
    resolver: TokioResolver,
    slots: BoundedMap<(IpAddr, u16), Arc<Slot>>,
    in_flight: Arc<Semaphore>,
    budget: Duration,
    timeout: Duration,
    ttl: Duration,
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
    /// A resolver for the configured servers (or the system's).
    pub fn new(config: &CrawlersConfig) -> Result<Self, DnsSetupError> {
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
        Ok(ReverseDns {
            resolver,
            slots: BoundedMap::new(CAPACITY),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            budget: config.dns_budget,
            timeout: config.dns_timeout,
            ttl: config.dns_cache_ttl,
        })
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
        suffixes: Arc<[Box<str>]>,
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
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                // Too many lookups running: leave this one for a later
                // request.
                slot.started.store(false, Ordering::Release);
                return None;
            };
            let dns = Arc::clone(self);
            let task_slot = Arc::clone(&slot);
            tokio::spawn(async move {
                let answer =
                    match tokio::time::timeout(dns.timeout, dns.lookup(ip, &suffixes)).await {
                        Ok(answer) => answer,
                        Err(_) => Answer::Failed,
                    };
                drop(permit);
                let ttl = match answer {
                    Answer::Failed => FAILURE_TTL,
                    _ => dns.ttl,
                };
                tracing::debug!(%ip, ?answer, "crawler DNS check");
                let _ = task_slot.answer.set((answer, Instant::now() + ttl));
                task_slot.ready.notify_waiters();
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

    async fn lookup(&self, ip: IpAddr, suffixes: &[Box<str>]) -> Answer {
        let names = match self.resolver.reverse_lookup(Name::from(ip)).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(ptr) => Some(ptr.0.to_ascii()),
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
        for name in names.iter().filter(|n| has_suffix(n, suffixes)) {
            let found = match ip {
                IpAddr::V4(v4) => self.resolver.ipv4_lookup(name.as_str()).await.map(|l| {
                    l.answers()
                        .iter()
                        .any(|r| matches!(&r.data, RData::A(a) if a.0 == v4))
                }),
                IpAddr::V6(v6) => self.resolver.ipv6_lookup(name.as_str()).await.map(|l| {
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

/// Whether a host name (`crawl-1.googlebot.com.`) ends in one of the
/// suffixes at a label boundary, ignoring case and the root dot.
fn has_suffix(name: &str, suffixes: &[Box<str>]) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
    suffixes.iter().any(|s| {
        let s = s.as_bytes();
        name.len() > s.len()
            && name[name.len() - s.len() - 1] == b'.'
            && name[name.len() - s.len()..].eq_ignore_ascii_case(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_match_at_label_boundaries_only() {
        let s: Vec<Box<str>> = vec!["googlebot.com".into(), "google.com".into()];
        assert!(has_suffix("crawl-66-249-66-1.googlebot.com.", &s));
        assert!(has_suffix("rate-limited-proxy-66-249-90-77.GOOGLE.com", &s));
        assert!(
            !has_suffix("googlebot.com.", &s),
            "the bare domain is no crawler host"
        );
        assert!(!has_suffix("evilgooglebot.com", &s));
        assert!(!has_suffix("crawl.googlebot.com.evil.example.", &s));
        assert!(!has_suffix("", &s));
        assert!(!has_suffix(".", &s));
    }
}
