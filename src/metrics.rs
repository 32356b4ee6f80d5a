//! Prometheus metrics: one registry per process, with the handles the hot
//! path needs resolved once at start (no label lookups per request).

use crate::crawlers::Status;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::identity::{Identity, InvalidReason, Source, UnverifiedReason};
use crate::verdict::{Action, Class};

/// Why a request could not be served by the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// The upstream refused the connection (or could not be reached).
    Refused,
    /// Connecting took longer than `timeouts.connect`.
    ConnectTimeout,
    /// The response head took longer than `timeouts.response_header`.
    ResponseTimeout,
    /// The connection closed or reset before a response head.
    Reset,
    /// The upstream sent something that is not HTTP.
    Protocol,
    /// The response body broke off mid-stream.
    Body,
    /// The response body paused past `timeouts.body_idle`.
    BodyTimeout,
    /// Anything else.
    Other,
}

impl UpstreamError {
    /// Every kind, in a fixed order.
    pub const ALL: [UpstreamError; 8] = [
        UpstreamError::Refused,
        UpstreamError::ConnectTimeout,
        UpstreamError::ResponseTimeout,
        UpstreamError::Reset,
        UpstreamError::Protocol,
        UpstreamError::Body,
        UpstreamError::BodyTimeout,
        UpstreamError::Other,
    ];

    /// The `kind` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Refused => "refused",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::ResponseTimeout => "response_timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::Protocol => "protocol",
            UpstreamError::Body => "body",
            UpstreamError::BodyTimeout => "body_timeout",
            UpstreamError::Other => "other",
        }
    }

    /// Whether the client should see 504 rather than 502.
    pub const fn is_timeout(self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout | UpstreamError::ResponseTimeout
        )
    }
}

/// Why a request did not complete normally: an upstream failure, or the
/// client going away mid-request (not the upstream's fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The upstream failed.
    Upstream(UpstreamError),
    /// The client's request body broke off before all of it was sent
    /// upstream.
    ClientAborted,
    /// The client paused its request body past `timeouts.body_idle`.
    ClientIdle,
}

impl Failure {
    /// The name used in the access log's `error` field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Failure::Upstream(kind) => kind.as_str(),
            Failure::ClientAborted => "client_aborted",
            Failure::ClientIdle => "client_idle",
        }
    }
}

/// `ok`, each invalid reason, then each unverified reason.
const VERIFICATION_RESULTS: usize = 1 + InvalidReason::ALL.len() + UnverifiedReason::ALL.len();

/// The `result` label of a verification outcome, by index.
fn verification_result(i: usize) -> &'static str {
    let invalid = InvalidReason::ALL.len();
    match i {
        0 => "ok",
        i if i <= invalid => InvalidReason::ALL[i - 1].as_str(),
        i => UnverifiedReason::ALL[i - 1 - invalid].as_str(),
    }
}

/// All of usher's metrics.
pub struct Metrics {
    registry: Registry,
    requests: [[IntCounter; Action::ALL.len()]; Class::ALL.len()],
    request_duration: [Histogram; Class::ALL.len()],
    classify_duration: Histogram,
    upstream_duration: Histogram,
    added_latency: Histogram,
    upstream_errors: [IntCounter; UpstreamError::ALL.len()],
    /// Per source and result (see `VERIFICATION_RESULTS`).
    verifications: [[IntCounter; VERIFICATION_RESULTS]; Source::ALL.len()],
    /// Client connections currently open.
    pub connections_active: IntGauge,
    /// Client connections refused because `connections.max` were open.
    pub connections_refused: IntCounter,
    /// Upgraded (WebSocket) tunnels currently open.
    pub upgrades_active: IntGauge,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Requests whose client went away while sending its body.
    pub client_aborts: IntCounter,
    /// Requests whose client paused its body past `timeouts.body_idle`.
    pub client_body_timeouts: IntCounter,
    /// JWKS fetch outcomes.
    pub jwks: crate::identity::jwks::JwksMetrics,
    /// Session lookups.
    pub sessions: crate::identity::session::SessionMetrics,
    rule_matches: IntCounterVec,
    bot_score: Histogram,
    rate_limited: [IntCounter; Class::ALL.len()],
    /// Crawler claims by result (verified, spoofed, unknown).
    crawler_verifications: [IntCounter; Status::CLAIMED.len()],
    /// Reverse-DNS lookups: confirmed, refuted, failed, skipped (caught up
    /// at scrape time).
    crawler_dns_lookups: [IntCounter; 4],
    /// Clients in the client state (set at scrape time).
    pub tracked_clients: IntGauge,
    /// How many clients the client state holds at most.
    tracked_clients_capacity: IntGauge,
    /// Client records evicted to make room (caught up at scrape time).
    pub state_evictions: IntCounter,
    /// The state backend's health and syncs.
    pub state_sync: crate::state::shared::SyncMetrics,
    /// Reloads by result: success, failure.
    config_reloads: [IntCounter; 2],
    /// When the running configuration was loaded (Unix seconds).
    config_loaded: Gauge,
    /// 1 unless the last reload failed.
    last_reload_successful: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Bring a counter that mirrors a running total kept elsewhere up to that
/// total (counters only go up: a smaller total changes nothing).
fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// Register a metric and hand it back.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Buckets for whole requests and upstream latency, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Buckets for the latency usher adds, in seconds: mostly well under a
/// millisecond, up to the DNS and introspection budgets.
const ADDED_LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

/// Buckets for the classifier alone, in seconds.
const CLASSIFY_BUCKETS: &[f64] = &[
    0.000_000_5,
    0.000_001,
    0.000_002,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.001,
    0.01,
];

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();

        let requests_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "usher_requests_total",
                    "Requests classified, by class and action.",
                ),
                &["class", "action"],
            )?,
        )?;
        let requests = Class::ALL.map(|class| {
            Action::ALL
                .map(|action| requests_vec.with_label_values(&[class.as_str(), action.as_str()]))
        });

        let duration_vec = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "usher_request_duration_seconds",
                    "Time from receiving a request head to the end of the response, by class.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["class"],
            )?,
        )?;
        let request_duration = Class::ALL.map(|c| duration_vec.with_label_values(&[c.as_str()]));

        let classify_duration = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "usher_classify_duration_seconds",
                    "Time spent classifying one request.",
                )
                .buckets(CLASSIFY_BUCKETS.to_vec()),
            )?,
        )?;

        let upstream_duration = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "usher_upstream_duration_seconds",
                    "Time from sending a request upstream to its response head.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
        )?;

        let added_latency = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "usher_added_latency_seconds",
                    "Latency usher added to a forwarded request: from its request head to its response head, less the upstream's time.",
                )
                .buckets(ADDED_LATENCY_BUCKETS.to_vec()),
            )?,
        )?;

        let errors_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "usher_upstream_errors_total",
                    "Requests the upstream failed, by kind.",
                ),
                &["kind"],
            )?,
        )?;
        let upstream_errors =
            UpstreamError::ALL.map(|k| errors_vec.with_label_values(&[k.as_str()]));

        let verifications_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "usher_identity_verifications_total",
                    "Credentials checked, by source and result (ok or why they failed).",
                ),
                &["source", "result"],
            )?,
        )?;
        let verifications = Source::ALL.map(|source| {
            std::array::from_fn(|i| {
                verifications_vec.with_label_values(&[source.as_str(), verification_result(i)])
            })
        });

        let connections_active = register(
            &registry,
            IntGauge::new(
                "usher_connections_active",
                "Client connections currently open.",
            )?,
        )?;

        let connections_refused = register(
            &registry,
            IntCounter::new(
                "usher_connections_refused_total",
                "Client connections answered 503 and closed because connections.max were open.",
            )?,
        )?;

        let upgrades_active = register(
            &registry,
            IntGauge::new(
                "usher_upgrades_active",
                "Upgraded connections (WebSocket) currently tunnelled.",
            )?,
        )?;

        let access_log_dropped = register(
            &registry,
            IntCounter::new(
                "usher_access_log_dropped_total",
                "Access log lines dropped because standard output could not keep up.",
            )?,
        )?;

        let client_aborts = register(
            &registry,
            IntCounter::new(
                "usher_client_aborts_total",
                "Requests whose client broke off the request body before it reached the upstream.",
            )?,
        )?;

        let client_body_timeouts = register(
            &registry,
            IntCounter::new(
                "usher_client_body_timeouts_total",
                "Requests answered 408 because the client paused its body past timeouts.body_idle.",
            )?,
        )?;

        let jwks_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "usher_jwks_refreshes_total",
                    "JWKS fetches from issuers' URLs, by result (ok or error).",
                ),
                &["result"],
            )?,
        )?;
        let jwks = crate::identity::jwks::JwksMetrics {
            ok: jwks_vec.with_label_values(&["ok"]),
            error: jwks_vec.with_label_values(&["error"]),
        };

        let session_cache = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "usher_session_cache_total",
                    "Session lookups, by whether the cache answered (hit) or the application was asked (miss).",
                ),
                &["result"],
            )?,
        )?;
        let session_unavailable = register(
            &registry,
            IntCounter::new(
                "usher_session_introspection_failures_total",
                "Session lookups that failed or timed out; those requests went on as anonymous.",
            )?,
        )?;
        let session_latency = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "usher_session_introspection_duration_seconds",
                    "Time of session introspection calls to the application.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
        )?;
        let sessions = crate::identity::session::SessionMetrics {
            cache_hits: session_cache.with_label_values(&["hit"]),
            cache_misses: session_cache.with_label_values(&["miss"]),
            unavailable: session_unavailable,
            latency: session_latency,
        };

        let rule_matches = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "usher_rule_matches_total",
                    "Rule matches, by rule name and mode (enforce or shadow).",
                ),
                &["rule", "mode"],
            )?,
        )?;
        let bot_score = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new("usher_bot_score", "Bot score of classified requests.").buckets(
                    vec![
                        0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 150.0,
                        200.0, 300.0,
                    ],
                ),
            )?,
        )?;
        let rate_limited_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "usher_rate_limited_total",
                    "Requests answered 429 because their class quota was spent, by class.",
                ),
                &["class"],
            )?,
        )?;
        let rate_limited = Class::ALL.map(|c| rate_limited_vec.with_label_values(&[c.as_str()]));
        let crawler_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "usher_crawler_verifications_total",
                    "Requests whose user agent claims a defined crawler, by what the check found.",
                ),
                &["result"],
            )?,
        )?;
        let crawler_verifications =
            Status::CLAIMED.map(|s| crawler_vec.with_label_values(&[s.as_str()]));
        let dns_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "usher_crawler_dns_lookups_total",
                    "Reverse-DNS checks of crawler claims, by outcome; skipped: not started because too many ran or started lately.",
                ),
                &["result"],
            )?,
        )?;
        let crawler_dns_lookups =
            ["confirmed", "refuted", "failed", "skipped"].map(|r| dns_vec.with_label_values(&[r]));
        let tracked_clients = register(
            &registry,
            IntGauge::new(
                "usher_tracked_clients",
                "Clients (addresses, IPv6 by /64, and verified subjects) in the client state: those active within the last 5 minutes or so.",
            )?,
        )?;
        let tracked_clients_capacity = register(
            &registry,
            IntGauge::new(
                "usher_tracked_clients_capacity",
                "Clients the client state holds at most (state.capacity); past it the least recently seen are forgotten.",
            )?,
        )?;
        let state_evictions = register(
            &registry,
            IntCounter::new(
                "usher_state_evictions_total",
                "Client records forgotten to make room for new clients.",
            )?,
        )?;
        let state_sync = crate::state::shared::SyncMetrics {
            up: register(
                &registry,
                IntGauge::new(
                    "usher_state_backend_up",
                    "1 while the state backend is usable: always for memory; for redis, while the last sync with Redis succeeded (else usher serves on local state).",
                )?,
            )?,
            errors: register(
                &registry,
                IntCounter::new(
                    "usher_state_sync_errors_total",
                    "Syncs with the Redis state backend that failed (unreachable, slow past the timeout, or answering errors).",
                )?,
            )?,
            dropped: register(
                &registry,
                IntCounter::new(
                    "usher_state_sync_dropped_total",
                    "Client updates not shared: 65536 clients already waited for the next sync, or a sync failed after sending them (Redis may have applied them; they are not sent twice).",
                )?,
            )?,
            duration: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "usher_state_sync_duration_seconds",
                        "Time one sync with the Redis state backend took: flushing local counts and reading the global ones back.",
                    )
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
                )?,
            )?,
        };

        let reloads_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "usher_config_reloads_total",
                    "Configuration reloads, by result (success, or failure: the previous configuration kept serving).",
                ),
                &["result"],
            )?,
        )?;
        let config_reloads = ["success", "failure"].map(|r| reloads_vec.with_label_values(&[r]));
        let config_loaded = register(
            &registry,
            Gauge::new(
                "usher_config_last_reload_success_timestamp_seconds",
                "When the running configuration was loaded (at start or by the last successful reload), in Unix seconds.",
            )?,
        )?;

        let last_reload_successful = register(
            &registry,
            IntGauge::new(
                "usher_config_last_reload_successful",
                "1 if the last reload succeeded (or none was tried), 0 if it failed and the previous configuration is still serving.",
            )?,
        )?;
        last_reload_successful.set(1);

        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "usher_build_info",
                    "Always 1; the version of the running usher.",
                ),
                &["version"],
            )?,
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        Ok(Metrics {
            registry,
            requests,
            request_duration,
            classify_duration,
            upstream_duration,
            added_latency,
            upstream_errors,
            verifications,
            connections_active,
            connections_refused,
            upgrades_active,
            access_log_dropped,
            client_aborts,
            client_body_timeouts,
            jwks,
            sessions,
            rule_matches,
            bot_score,
            rate_limited,
            crawler_verifications,
            crawler_dns_lookups,
            tracked_clients,
            tracked_clients_capacity,
            state_evictions,
            state_sync,
            config_reloads,
            config_loaded,
            last_reload_successful,
        })
    }

    /// Note that the running configuration was loaded now (at start).
    pub fn config_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.config_loaded.set(now.as_secs_f64());
    }

    /// Count a reload; a successful one also stamps the load time.
    pub fn count_reload(&self, success: bool) {
        if success {
            self.config_reloads[0].inc();
            self.config_loaded();
        } else {
            self.config_reloads[1].inc();
        }
        self.last_reload_successful.set(i64::from(success));
    }

    /// Count one classified request.
    pub fn count_request(&self, class: Class, action: Action) {
        self.requests[class.index()][action.index()].inc();
    }

    /// Record how long a whole request took.
    pub fn observe_request(&self, class: Class, took: Duration) {
        self.request_duration[class.index()].observe(took.as_secs_f64());
    }

    /// Record how long classification took.
    pub fn observe_classify(&self, took: Duration) {
        self.classify_duration.observe(took.as_secs_f64());
    }

    /// Record how long the upstream took to answer with a head.
    pub fn observe_upstream(&self, took: Duration) {
        self.upstream_duration.observe(took.as_secs_f64());
    }

    /// Record the latency usher added to a forwarded request.
    pub fn observe_added(&self, took: Duration) {
        self.added_latency.observe(took.as_secs_f64());
    }

    /// Count the rules that matched a request, and its score.
    pub fn count_rules(
        &self,
        enforced: &[std::sync::Arc<str>],
        shadow: &[std::sync::Arc<str>],
        score: i32,
    ) {
        for (names, mode) in [(enforced, "enforce"), (shadow, "shadow")] {
            for name in names {
                self.rule_matches.with_label_values(&[name, mode]).inc();
            }
        }
        self.bot_score.observe(f64::from(score));
    }

    /// Count a crawler claim's result (nothing when no crawler was claimed).
    pub fn count_crawler(&self, status: Status) {
        if let Some(i) = Status::CLAIMED.iter().position(|s| *s == status) {
            self.crawler_verifications[i].inc();
        }
    }

    /// Count a request refused for its class quota.
    pub fn count_rate_limited(&self, class: Class) {
        self.rate_limited[class.index()].inc();
    }

    /// Bring the client-state figures up to date (before a scrape).
    pub fn observe_state(&self, tracked: usize, capacity: usize, evictions: u64) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.tracked_clients.set(gauge(tracked));
        self.tracked_clients_capacity.set(gauge(capacity));
        catch_up(&self.state_evictions, evictions);
    }

    /// Bring the crawler DNS lookup counts up to date (before a scrape).
    pub fn observe_crawler_dns(&self, counts: &crate::crawlers::dns::LookupCounts) {
        let now = [
            &counts.answered[0],
            &counts.answered[1],
            &counts.answered[2],
            &counts.skipped,
        ];
        for (counter, total) in self.crawler_dns_lookups.iter().zip(now) {
            catch_up(counter, total.load(std::sync::atomic::Ordering::Relaxed));
        }
    }

    /// Count the outcome of checking a request's credential, if it had one.
    pub fn count_identity(&self, identity: &Identity) {
        let (source, i) = match identity {
            Identity::Anonymous => return,
            Identity::User { source, .. } | Identity::Service { source, .. } => (source, 0),
            Identity::Invalid { source, reason } => (source, 1 + *reason as usize),
            Identity::Unverified { source, reason } => {
                (source, 1 + InvalidReason::ALL.len() + *reason as usize)
            }
        };
        self.verifications[*source as usize][i].inc();
    }

    /// Count one upstream failure.
    pub fn count_upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].inc();
    }

    /// The registry, for embedding more metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a metric family that
        // failed to encode would be a programming error, so it is logged.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_label_combination_from_the_start() {
        let m = Metrics::new().unwrap();
        m.count_request(Class::MaliciousBot, Action::Deny);
        m.count_upstream_error(UpstreamError::Reset);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(r#"usher_requests_total{action="deny",class="malicious_bot"} 1"#));
        assert!(
            text.contains(r#"usher_requests_total{action="forward",class="public_visitor"} 0"#)
        );
        assert!(text.contains(r#"usher_upstream_errors_total{kind="reset"} 1"#));
        assert!(text.contains(r#"usher_upstream_errors_total{kind="refused"} 0"#));
        assert!(text.contains(r#"usher_build_info{version=""#));
        assert!(text.contains(r#"usher_config_reloads_total{result="success"} 0"#));
        assert!(text.contains(r#"usher_config_reloads_total{result="failure"} 0"#));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("usher_"), "{line}");
        }
    }

    #[test]
    fn only_a_successful_reload_moves_the_load_time() {
        let m = Metrics::new().unwrap();
        m.config_loaded.set(1.0);
        m.count_reload(false);
        assert_eq!(m.config_loaded.get(), 1.0);
        m.count_reload(true);
        assert!(m.config_loaded.get() > 1.0e9);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(r#"usher_config_reloads_total{result="success"} 1"#));
        assert!(text.contains(r#"usher_config_reloads_total{result="failure"} 1"#));
    }

    #[test]
    fn identity_outcomes_have_their_own_series() {
        let m = Metrics::new().unwrap();
        m.count_identity(&Identity::Invalid {
            source: Source::Jwt,
            reason: InvalidReason::DisallowedAlgorithm,
        });
        m.count_identity(&Identity::Anonymous);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(
            r#"usher_identity_verifications_total{result="disallowed_algorithm",source="jwt"} 1"#
        ));
        assert!(text.contains(r#"usher_identity_verifications_total{result="ok",source="jwt"} 0"#));
        for (i, reason) in InvalidReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i);
        }
    }

    #[test]
    fn upstream_error_index_matches_table() {
        for (i, k) in UpstreamError::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i);
        }
    }
}
