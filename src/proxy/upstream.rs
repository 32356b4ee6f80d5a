//! The pooled HTTP/1.1 client to the upstream, the request body it sends,
//! and what its errors mean.

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::oneshot;

use crate::config::Timeouts;
use crate::metrics::UpstreamError;

/// A keep-alive connection pool to the upstream.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, RequestBody>;

/// Idle upstream connections kept at most, so a burst does not leave
/// thousands of sockets open until they expire.
const MAX_IDLE: usize = 256;

/// Build the pool: connect timeout, `TCP_NODELAY`, idle expiry.
pub fn client(timeouts: &Timeouts) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(timeouts.upstream_idle)
        .pool_max_idle_per_host(MAX_IDLE)
        .pool_timer(TokioTimer::new())
        .http1_writev(false)
        .build(connector)
}

/// How a client's request body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyEnd {
    /// Every byte was read.
    Complete,
    /// The client broke off.
    ClientError,
}

/// The client's request body on its way upstream, reporting when it ends so
/// the response deadline can start then (an upload may take longer than
/// `response_header`) and so a client abort is not blamed on the upstream.
pub struct RequestBody {
    inner: Incoming,
    end: Option<oneshot::Sender<BodyEnd>>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let end = match &frame {
            None => Some(BodyEnd::Complete),
            Some(Err(_)) => Some(BodyEnd::ClientError),
            Some(Ok(_)) => None,
        };
        if let Some(end) = end
            && let Some(tx) = self.end.take()
        {
            let _ = tx.send(end);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why no response came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The upstream failed.
    Upstream(UpstreamError),
    /// The client broke off its request body.
    ClientAborted,
}

/// Send a request and wait for the response head. The deadline starts once
/// the request body has been read to its end (at once for bodiless
/// requests), and not at all while a response arrives before that.
pub async fn send(
    client: &Client,
    request: Request<Incoming>,
    deadline: Duration,
) -> Result<Response<Incoming>, SendError> {
    let (parts, inner) = request.into_parts();
    let (end_tx, end_rx) = if inner.is_end_stream() {
        (None, None)
    } else {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    };
    let response = client.request(Request::from_parts(
        parts,
        RequestBody { inner, end: end_tx },
    ));
    tokio::pin!(response);
    let mut body_end = None;
    if let Some(mut end_rx) = end_rx {
        tokio::select! {
            biased;
            result = &mut response => return classify(result, end_rx.try_recv().ok()),
            ended = &mut end_rx => body_end = ended.ok(),
        }
    }
    match tokio::time::timeout(deadline, &mut response).await {
        Ok(result) => classify(result, body_end),
        Err(_) => Err(SendError::Upstream(UpstreamError::ResponseTimeout)),
    }
}

fn classify(
    result: Result<Response<Incoming>, hyper_util::client::legacy::Error>,
    end: Option<BodyEnd>,
) -> Result<Response<Incoming>, SendError> {
    result.map_err(|e| {
        if end == Some(BodyEnd::ClientError) {
            SendError::ClientAborted
        } else {
            tracing::debug!(error = ?e, "upstream request failed");
            SendError::Upstream(error_kind(&e))
        }
    })
}

/// Sort a client error into a bounded kind, by walking its causes.
pub fn error_kind(err: &hyper_util::client::legacy::Error) -> UpstreamError {
    let io_kind = causes(err).find_map(|e| e.downcast_ref::<io::Error>().map(io::Error::kind));
    if err.is_connect() {
        return match io_kind {
            Some(io::ErrorKind::TimedOut) => UpstreamError::ConnectTimeout,
            _ => UpstreamError::Refused,
        };
    }
    if let Some(h) = causes(err).find_map(|e| e.downcast_ref::<hyper::Error>()) {
        if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
            return UpstreamError::Protocol;
        }
        if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
            return UpstreamError::Reset;
        }
        if h.is_timeout() {
            return UpstreamError::ResponseTimeout;
        }
    }
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
