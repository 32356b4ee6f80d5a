//! The response body usher sends: the upstream's, streamed frame by frame,
//! or a small body of its own. When it ends (or the client goes away), the
//! request's duration is recorded and its access log line written.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::Proxy;
use super::idle::IdleTimer;
use super::pool::Lease;
use super::upstream::{RequestEnd, SendError};
use crate::access_log::Record;
use crate::metrics::{Failure, UpstreamError};
use crate::verdict::{Class, Verdict};

/// What the access log needs beyond what metrics need.
#[derive(Debug)]
pub(crate) struct LogFields {
    pub ts: SystemTime,
    pub client_ip: IpAddr,
    pub method: Method,
    pub path: String,
    pub verdict: Verdict,
}

/// The longest path the access log keeps, in bytes.
const MAX_LOGGED_PATH: usize = 1024;

impl LogFields {
    /// Copy what the log needs out of the request head, so a queued record
    /// never keeps the client's (possibly huge) head buffer alive.
    pub fn new(
        ts: SystemTime,
        client_ip: IpAddr,
        parts: &http::request::Parts,
        verdict: Verdict,
    ) -> Self {
        let path = parts.uri.path();
        let mut end = path.len().min(MAX_LOGGED_PATH);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        LogFields {
            ts,
            client_ip,
            method: parts.method.clone(),
            path: path[..end].to_owned(),
            verdict,
        }
    }
}

/// Status logged for a request whose client left before a response
/// (nginx's convention).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Records a request's outcome exactly once, when dropped.
#[derive(Debug)]
pub(crate) struct Completion {
    proxy: Arc<Proxy>,
    started: Instant,
    class: Class,
    pub status: u16,
    pub upstream: Option<Duration>,
    pub error: Option<Failure>,
    log: Option<LogFields>,
}

impl Completion {
    pub fn new(proxy: Arc<Proxy>, started: Instant, class: Class, log: Option<LogFields>) -> Self {
        Completion {
            proxy,
            started,
            class,
            status: CLIENT_CLOSED_REQUEST,
            upstream: None,
            error: None,
            log,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let total = self.started.elapsed();
        let metrics = &self.proxy.metrics;
        metrics.observe_request(self.class, total);
        // Failures found while the body streamed (those before a response
        // head are counted where they happen).
        if let Some(Failure::Upstream(kind @ (UpstreamError::Body | UpstreamError::BodyTimeout))) =
            self.error
        {
            metrics.count_upstream_error(kind);
        }
        if let Some(log) = self.log.take() {
            let Verdict {
                class,
                score,
                reasons,
                action,
                subject,
            } = log.verdict;
            self.proxy.access_log.log(Record {
                ts: log.ts,
                client_ip: log.client_ip,
                method: log.method,
                path: log.path,
                status: if self.error == Some(Failure::ClientAborted) {
                    CLIENT_CLOSED_REQUEST
                } else {
                    self.status
                },
                class,
                score,
                reasons,
                action,
                subject,
                upstream: self.upstream,
                total,
                error: self.error.map(Failure::as_str),
            });
        }
    }
}

enum Inner {
    Upstream(Incoming),
    Local(Option<Bytes>),
}

/// A response body that reports its request's completion, and hands its
/// upstream connection back to the pool once read to the end. An upstream
/// that pauses its body past `idle` is given up. When it breaks while the
/// request body is still on its way, the client may be why.
pub struct ProxyBody {
    inner: Inner,
    done: Option<Completion>,
    lease: Option<Lease>,
    request_end: RequestEnd,
    idle: IdleTimer,
}

/// What a response body fails with.
type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyBody")
    }
}

impl ProxyBody {
    pub(crate) fn upstream(
        body: Incoming,
        done: Completion,
        lease: Option<Lease>,
        request_end: RequestEnd,
        idle: Duration,
    ) -> Self {
        let mut body = ProxyBody {
            inner: Inner::Upstream(body),
            done: Some(done),
            lease,
            request_end,
            idle: IdleTimer::new(idle),
        };
        // A response without a body is over at once.
        body.release_if_ended();
        body
    }

    fn release_if_ended(&mut self) {
        if let Inner::Upstream(body) = &self.inner
            && body.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.finish();
        }
    }

    pub(crate) fn local(body: &'static [u8], done: Option<Completion>) -> Self {
        ProxyBody {
            inner: Inner::Local(Some(Bytes::from_static(body))),
            done,
            lease: None,
            request_end: RequestEnd::default(),
            idle: IdleTimer::new(Duration::MAX),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let frame = match &mut this.inner {
            Inner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(frame) => {
                    this.idle.rest();
                    frame.map(|f| f.map_err(BodyError::from))
                }
                Poll::Pending => {
                    ready!(this.idle.poll_expired(cx));
                    // Given up: the connection is dropped, not pooled.
                    this.lease = None;
                    if let Some(done) = &mut this.done {
                        done.error = Some(Failure::Upstream(UpstreamError::BodyTimeout));
                    }
                    let idle =
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream body idle");
                    return Poll::Ready(Some(Err(idle.into())));
                }
            },
            Inner::Local(data) => data.take().map(|d| Ok(Frame::data(d))),
        };
        match &frame {
            None => {
                if let Some(lease) = this.lease.take() {
                    lease.finish();
                }
                this.done = None;
            }
            Some(Err(_)) => {
                // The connection is broken: dropped, not pooled.
                this.lease = None;
                if let Some(done) = &mut this.done {
                    done.error = Some(match this.request_end.client_fault() {
                        Some(SendError::ClientIdle) => {
                            done.proxy.metrics.client_body_timeouts.inc();
                            Failure::ClientIdle
                        }
                        Some(_) => {
                            done.proxy.metrics.client_aborts.inc();
                            Failure::ClientAborted
                        }
                        None => Failure::Upstream(UpstreamError::Body),
                    });
                }
            }
            Some(Ok(_)) => this.release_if_ended(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
