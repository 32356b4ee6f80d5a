//! The pooled HTTP/1.1 client to the upstream, and what its errors mean.

use std::error::Error as StdError;
use std::io;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Timeouts;
use crate::metrics::UpstreamError;

/// A keep-alive connection pool to the upstream.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Incoming>;

/// Build the pool: connect timeout, `TCP_NODELAY`, idle expiry.
pub fn client(timeouts: &Timeouts) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(timeouts.upstream_idle)
        .pool_timer(TokioTimer::new())
        .build(connector)
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
