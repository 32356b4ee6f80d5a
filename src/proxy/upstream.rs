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

use super::pool::{Lease, Pool, PoolError};
use crate::metrics::UpstreamError;

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
    pool: &Arc<Pool>,
    authority: &Authority,
    request: Request<Incoming>,
    deadline: Duration,
) -> Result<(Response<Incoming>, Lease), SendError> {
    let (parts, inner) = request.into_parts();
    let (end_tx, end_rx) = if inner.is_end_stream() {
        (None, None)
    } else {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    };
    let response = pool.send(
        authority,
        Request::from_parts(parts, RequestBody { inner, end: end_tx }),
    );
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
    result: Result<(Response<Incoming>, Lease), PoolError>,
    end: Option<BodyEnd>,
) -> Result<(Response<Incoming>, Lease), SendError> {
    result.map_err(|e| {
        if end == Some(BodyEnd::ClientError) {
            SendError::ClientAborted
        } else {
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
