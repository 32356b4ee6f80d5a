//! The proxy: the phases of one request, in order — sanitize, classify,
//! act, rewrite, send upstream, respond. Everything a request reads from
//! configuration sits in one [`Settings`] behind an `ArcSwap`, so a reload
//! swaps it whole and in-flight requests keep the one they started with.

mod body;
pub mod headers;
mod idle;
pub mod pool;
pub mod upgrade;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

pub use body::ProxyBody;
use body::{Completion, LogFields};
use upstream::SendError;

use crate::access_log::AccessLog;
use crate::classify::Classifier;
use crate::config::{Config, Labels, Upstream};
use crate::facts::Facts;
use crate::forwarded::TrustedProxies;
use crate::limits::Limits;
use crate::metrics::{Failure, Metrics, UpstreamError};
use crate::verdict::Action;

/// Everything a request reads from configuration; replaced whole on reload.
#[derive(Debug)]
pub struct Settings {
    /// The classification pipeline.
    pub classifier: Classifier,
    /// Whose forwarding headers are believed.
    pub trusted: TrustedProxies,
    /// Label header names.
    pub labels: Labels,
    /// Where requests go.
    pub upstream: Upstream,
    /// The upstream's name as a `Host` value, for requests that bring none.
    upstream_host: Option<HeaderValue>,
    /// How long to wait for the upstream's response head.
    pub response_timeout: Duration,
    /// How long a body may pause, either way.
    pub body_idle: Duration,
}

impl Settings {
    /// Settings from a validated config and a compiled classifier.
    pub fn new(config: &Config, classifier: Classifier) -> Self {
        Settings {
            classifier,
            trusted: config.trusted_proxies(),
            labels: config.labels.clone(),
            upstream: config.upstream.clone(),
            upstream_host: HeaderValue::from_str(config.upstream.authority().as_str()).ok(),
            response_timeout: config.timeouts.response_header,
            // Zero turns the limit off.
            body_idle: match config.timeouts.body_idle {
                Duration::ZERO => Duration::MAX,
                idle => idle,
            },
        }
    }
}

/// The reverse proxy shared by every connection. The upstream connection
/// pool is not part of it: each worker thread brings its own, so a request
/// never waits on a connection driven by another thread.
#[derive(Debug)]
pub struct Proxy {
    settings: ArcSwap<Settings>,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    tarpit: tokio::sync::Semaphore,
}

/// Requests held in the tarpit at once, at most.
pub const TARPIT_CAPACITY: usize = 256;

impl Proxy {
    /// A proxy with these settings.
    pub fn new(settings: Settings, metrics: Arc<Metrics>, access_log: AccessLog) -> Self {
        Proxy {
            settings: ArcSwap::from_pointee(settings),
            metrics,
            access_log,
            tarpit: tokio::sync::Semaphore::new(TARPIT_CAPACITY),
        }
    }

    /// The settings requests start with now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Replace the settings; requests already running keep the old ones.
    pub fn replace_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// Serve one request from a client at `peer`, through the calling
    /// worker's upstream pool. `place` is the client connection's place
    /// among those `connections.max` allows: a protocol switch keeps it
    /// for as long as the tunnel lasts.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        pool: Arc<pool::Pool>,
        place: Arc<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let settings = self.settings.load_full();

        // Sanitize: usher is the only author of its labels, and nothing a
        // client lists in `Connection` travels further.
        headers::strip_labels(req.headers_mut(), &settings.labels);
        let upgrade = headers::is_upgrade_request(req.version(), req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);

        // Classify.
        let peer_ip = peer.ip().to_canonical();
        let client_ip = settings.trusted.client_ip(peer_ip, &parts.headers);
        let session = settings
            .classifier
            .identity()
            .session(&parts.headers, &self.metrics.sessions)
            .await;
        let user_agent = parts.headers.get(http::header::USER_AGENT);
        let crawler = settings
            .classifier
            .crawlers()
            .verify(user_agent.map(|v| v.as_bytes()), client_ip)
            .await;
        self.metrics.count_crawler(crawler.status());
        // The request's time is taken after any wait, so it never lags
        // behind requests that started later.
        let now = SystemTime::now();
        let clock = Instant::now();
        let mut facts = Facts::new(&parts, peer_ip, client_ip, now);
        facts.session = session;
        facts.crawler = Some(crawler);
        let classification = settings.classifier.classify(&facts);
        self.metrics.observe_classify(clock.elapsed());
        self.metrics.count_identity(&classification.identity);
        self.metrics.count_rules(
            &classification.verdict.reasons,
            &classification.outcome.shadow,
            classification.verdict.score,
        );
        let verdict = classification.verdict;
        self.metrics.count_request(verdict.class, verdict.action);
        let (class, action) = (verdict.class, verdict.action);
        let subject = verdict.subject.clone();
        let labels = headers::LabelValues::new(&verdict);
        let log = self
            .access_log
            .enabled()
            .then(|| LogFields::new(now, client_ip, &parts, verdict));
        let mut done = Completion::new(self.clone(), started, class, log);

        // Act.
        match action {
            Action::Forward => {}
            Action::Limit => {
                let limits = settings.classifier.limits();
                let client = Limits::client(client_ip, subject.as_deref());
                if let Err(wait) = limits.check(class, client) {
                    self.metrics.count_rate_limited(class);
                    return Ok(too_many_requests(wait, done));
                }
                if let Some(shared) = settings.classifier.signals().shared()
                    && limits.has(class)
                {
                    shared.note_admitted(client, class);
                }
            }
            Action::Deny => {
                return Ok(local(
                    StatusCode::FORBIDDEN,
                    br#"{"error":"forbidden"}"#,
                    done,
                ));
            }
            Action::Tarpit => {
                // Hold the answer to waste the client's time, but only for
                // a bounded number of requests at once: past that, refuse
                // at once rather than hold our own resources.
                if let Ok(_held) = self.tarpit.try_acquire() {
                    tokio::time::sleep(settings.classifier.tarpit_delay()).await;
                }
                return Ok(local(
                    StatusCode::FORBIDDEN,
                    br#"{"error":"forbidden"}"#,
                    done,
                ));
            }
        }
        if parts.method == Method::CONNECT {
            return Ok(local(
                StatusCode::METHOD_NOT_ALLOWED,
                br#"{"error":"method_not_allowed"}"#,
                done,
            ));
        }

        // Rewrite for the upstream; labels last, so nothing can undo them.
        let host_header = parts.headers.get(HOST).cloned();
        let has_host = host_header.is_some();
        let host = host_header.or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let client_version = parts.version;
        let trusted_peer = settings.trusted.trusts(&peer_ip);
        headers::set_forwarding(
            &mut parts.headers,
            client_ip,
            peer_ip,
            trusted_peer,
            host.clone(),
        );
        if !has_host {
            // HTTP/1.1 needs a Host: the client's, or failing that the
            // upstream's own name.
            if let Some(host) = host.or_else(|| settings.upstream_host.clone()) {
                parts.headers.insert(HOST, host);
            }
        }
        if parts.version == Version::HTTP_2 {
            headers::join_cookies(&mut parts.headers);
        }
        parts.uri = origin_form(&parts.uri);
        parts.version = Version::HTTP_11;
        labels.apply(&mut parts.headers, &settings.labels);

        // Send.
        let sent = Instant::now();
        let request = Request::from_parts(parts, body);
        let authority = settings.upstream.authority();
        let sent_upstream = upstream::send(
            &pool,
            authority,
            request,
            settings.response_timeout,
            settings.body_idle,
        );
        let (mut response, lease, request_end) = match sent_upstream.await {
            Ok(sent) => sent,
            Err(SendError::Upstream(kind)) => return Ok(self.upstream_failed(kind, done)),
            Err(SendError::ClientAborted) => {
                self.metrics.client_aborts.inc();
                done.error = Some(Failure::ClientAborted);
                return Ok(local(
                    StatusCode::BAD_REQUEST,
                    br#"{"error":"bad_request"}"#,
                    done,
                ));
            }
            Err(SendError::ClientIdle) => {
                self.metrics.client_body_timeouts.inc();
                done.error = Some(Failure::ClientIdle);
                let mut answer = local(
                    StatusCode::REQUEST_TIMEOUT,
                    br#"{"error":"request_timeout"}"#,
                    done,
                );
                // The rest of the body will not be read: the connection
                // cannot carry another request.
                answer
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                return Ok(answer);
            }
        };
        let took = sent.elapsed();
        self.metrics.observe_upstream(took);
        done.upstream = Some(took);
        settings.classifier.signals().record_status(
            client_ip,
            subject.as_deref(),
            now,
            response.status().as_u16(),
        );

        // Respond.
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let Some(client_upgrade) = client_upgrade else {
                return Ok(self.upstream_failed(UpstreamError::Protocol, done));
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            upgrade::tunnel(
                client_upgrade,
                upstream_upgrade,
                self.metrics.clone(),
                place,
            );
        }
        // A connection that switched protocols is the tunnel's now.
        let lease = (!switching).then_some(lease);
        headers::strip_hop_by_hop(response.headers_mut(), switching);
        // The client hears its own protocol, whatever the upstream spoke.
        *response.version_mut() = client_version;
        done.status = response.status().as_u16();
        self.metrics
            .observe_added(started.elapsed().saturating_sub(took));
        let idle = settings.body_idle;
        Ok(response.map(|body| ProxyBody::upstream(body, done, lease, request_end, idle)))
    }

    fn upstream_failed(&self, kind: UpstreamError, mut done: Completion) -> Response<ProxyBody> {
        self.metrics.count_upstream_error(kind);
        done.error = Some(Failure::Upstream(kind));
        if kind.is_timeout() {
            local(
                StatusCode::GATEWAY_TIMEOUT,
                br#"{"error":"gateway_timeout"}"#,
                done,
            )
        } else {
            local(StatusCode::BAD_GATEWAY, br#"{"error":"bad_gateway"}"#, done)
        }
    }
}

/// The request's target as an origin server expects it: path and query.
pub(crate) fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// 429 with `Retry-After` in whole seconds (at least one).
fn too_many_requests(wait: Duration, done: Completion) -> Response<ProxyBody> {
    let mut response = local(
        StatusCode::TOO_MANY_REQUESTS,
        br#"{"error":"too_many_requests"}"#,
        done,
    );
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// A short JSON answer of usher's own.
fn local(status: StatusCode, body: &'static [u8], mut done: Completion) -> Response<ProxyBody> {
    done.status = status.as_u16();
    let mut response = Response::new(ProxyBody::local(body, Some(done)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
