//! Sending a request upstream: the request body it streams, the response
//! deadline, and what its errors mean.

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::idle::IdleTimer;
use super::pool::{Lease, Pool, PoolError};
use crate::metrics::UpstreamError;

/// How a client's request body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyEnd {
    /// Every byte was read.
    Complete,
    /// The client broke off.
    ClientError,
    /// The client sent nothing for `body_idle`.
    ClientIdle,
}

/// The client's request body on its way upstream, reporting when it ends so
/// the response deadline can start then (an upload may take longer than
/// `response_header`) and so a client abort is not blamed on the upstream.
/// A client that sends nothing of it for `idle` is cut off.
pub struct RequestBody {
    inner: Incoming,
    end: Option<oneshot::Sender<BodyEnd>>,
    idle: IdleTimer,
}

/// What a request body fails with on its way upstream.
type BodyError = Box<dyn StdError + Send + Sync>;

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

impl RequestBody {
    fn ended(&mut self, how: BodyEnd) {
        if let Some(tx) = self.end.take() {
            let _ = tx.send(how);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                ready!(this.idle.poll_expired(cx));
                this.ended(BodyEnd::ClientIdle);
                let timed_out = io::Error::new(io::ErrorKind::TimedOut, "request body idle");
                return Poll::Ready(Some(Err(timed_out.into())));
            }
        };
        this.idle.rest();
        match &frame {
            None => this.ended(BodyEnd::Complete),
            Some(Err(_)) => this.ended(BodyEnd::ClientError),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Word of how the request body ends, kept by a response that came back
/// before it did: if the response body then breaks, this says whether the
/// client broke it.
#[derive(Debug, Default)]
pub struct RequestEnd(Option<oneshot::Receiver<BodyEnd>>);

impl RequestEnd {
    /// The client's fault, if its request body was cut off or went idle.
    pub fn client_fault(&mut self) -> Option<SendError> {
        match self.0.as_mut()?.try_recv().ok()? {
            BodyEnd::ClientError => Some(SendError::ClientAborted),
            BodyEnd::ClientIdle => Some(SendError::ClientIdle),
            BodyEnd::Complete => None,
        }
    }
}

/// Why no response came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The upstream failed.
    Upstream(UpstreamError),
    /// The client broke off its request body.
    ClientAborted,
    /// The client sent nothing of its request body for `body_idle`.
    ClientIdle,
}

/// Send a request and wait for the response head. The deadline starts once
/// the request body has been read to its end (at once for bodiless
/// requests), and not at all while a response arrives before that; such a
/// response keeps word of how the body ends.
pub async fn send(
    pool: &Arc<Pool>,
    authority: &Authority,
    request: Request<Incoming>,
    deadline: Duration,
    body_idle: Duration,
) -> Result<(Response<Incoming>, Lease, RequestEnd), SendError> {
    let (parts, inner) = request.into_parts();
    let (end_tx, end_rx) = if inner.is_end_stream() {
        (None, None)
    } else {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    };
    let response = pool.send(
        authority,
        Request::from_parts(
            parts,
            RequestBody {
                inner,
                end: end_tx,
                idle: IdleTimer::new(body_idle),
            },
        ),
    );
    tokio::pin!(response);
    let mut body_end = None;
    if let Some(mut end_rx) = end_rx {
        tokio::select! {
            biased;
            result = &mut response => {
                let end = end_rx.try_recv().ok();
                let (response, lease) = classify(result, end)?;
                return Ok((response, lease, RequestEnd(end.is_none().then_some(end_rx))));
            }
            ended = &mut end_rx => body_end = ended.ok(),
        }
    }
    match tokio::time::timeout(deadline, &mut response).await {
        Ok(result) => {
            let (response, lease) = classify(result, body_end)?;
            Ok((response, lease, RequestEnd::default()))
        }
        Err(_) => Err(SendError::Upstream(UpstreamError::ResponseTimeout)),
    }
}

fn classify(
    result: Result<(Response<Incoming>, Lease), PoolError>,
    end: Option<BodyEnd>,
) -> Result<(Response<Incoming>, Lease), SendError> {
    result.map_err(|e| match end {
        Some(BodyEnd::ClientError) => SendError::ClientAborted,
        Some(BodyEnd::ClientIdle) => SendError::ClientIdle,
        _ => {
            tracing::debug!(error = ?e, "upstream request failed");
            SendError::Upstream(error_kind(&e))
        }
    })
}

/// Sort a pool error into a bounded kind, walking an HTTP error's causes.
pub fn error_kind(err: &PoolError) -> UpstreamError {
    let h = match err {
        PoolError::ConnectTimeout => return UpstreamError::ConnectTimeout,
        PoolError::Connect(e) if e.kind() == io::ErrorKind::TimedOut => {
            return UpstreamError::ConnectTimeout;
        }
        PoolError::Connect(_) => return UpstreamError::Refused,
        PoolError::Http(h) => h,
    };
    if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
        return UpstreamError::Protocol;
    }
    if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
        return UpstreamError::Reset;
    }
    if h.is_timeout() {
        return UpstreamError::ResponseTimeout;
    }
    let io_kind = causes(h).find_map(|e| e.downcast_ref::<io::Error>().map(io::Error::kind));
    match io_kind {
        Some(
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof,
        ) => UpstreamError::Reset,
        _ => UpstreamError::Other,
    }
}

fn causes<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}
