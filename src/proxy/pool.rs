//! One worker's keep-alive connections to the upstream: HTTP/1.1 over TCP,
//! reused newest first. A connection is lent to one request at a time and
//! comes back only once its response body has been read to the end; one
//! that failed, was cut short or switched protocols is dropped. Idle ones
//! expire after the idle timeout (checked as connections come back) and
//! at most 256 are kept.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::upstream::RequestBody;

/// Idle connections kept at most, so a burst does not leave thousands of
/// sockets open until they expire.
const MAX_IDLE: usize = 256;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection within the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The connection was refused, or the name did not resolve.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// A pool of connections to whichever upstream requests name.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    http: http1::Builder,
}

#[derive(Debug)]
struct Idle {
    authority: Authority,
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// A connection lent to one request. Dropped before [`Lease::finish`],
/// it closes; finished, it goes back to the pool.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    authority: Authority,
    sender: http1::SendRequest<RequestBody>,
}

impl Lease {
    /// The response was read to its end: the connection may serve again.
    pub fn finish(self) {
        self.pool.put(self.authority, self.sender);
    }
}

impl Pool {
    /// An empty pool.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Arc<Pool> {
        let mut http = http1::Builder::new();
        http.writev(false);
        Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            connect_timeout,
            idle_timeout,
            http,
        })
    }

    /// Send `req` to `authority` over a pooled connection (a fresh one if
    /// none is free) and wait for the response head. A request that a
    /// reused connection refused unsent (it had just been closed) is sent
    /// once more on a fresh one.
    pub async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        if let Some(mut sender) = self.take(authority) {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, self.lease(authority, sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = self.connect(authority).await?;
        let response = sender.send_request(req).await?;
        Ok((response, self.lease(authority, sender)))
    }

    fn lease(
        self: &Arc<Self>,
        authority: &Authority,
        sender: http1::SendRequest<RequestBody>,
    ) -> Lease {
        Lease {
            pool: self.clone(),
            authority: authority.clone(),
            sender,
        }
    }

    /// The newest idle connection to `authority` ready for a request
    /// (usually the last one, so this is no scan). One still busy (its
    /// request body was cut short by an early response, say) or closed is
    /// skipped, never waited for; the list is oldest first, so when the
    /// newest ready one has expired, so has everything before it.
    fn take(&self, authority: &Authority) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().ok()?;
        let newest = idle
            .iter()
            .rposition(|c| c.authority == *authority && c.sender.is_ready())?;
        if idle[newest].since.elapsed() >= self.idle_timeout {
            idle.drain(..=newest);
            return None;
        }
        Some(idle.remove(newest).sender)
    }

    fn put(&self, authority: Authority, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            // The oldest sit first: closed, past the idle timeout, or past
            // the bound, they go (their sockets close).
            let expired = idle
                .iter()
                .take_while(|c| {
                    c.sender.is_closed() || now.duration_since(c.since) >= self.idle_timeout
                })
                .count();
            let over = (idle.len() - expired + 1).saturating_sub(MAX_IDLE);
            idle.drain(..expired + over);
            idle.push(Idle {
                authority,
                sender,
                since: now,
            });
        }
    }

    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<http1::SendRequest<RequestBody>, PoolError> {
        let port = authority.port_u16().unwrap_or(80);
        // An IPv6 literal comes in brackets; the resolver wants it bare.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| PoolError::ConnectTimeout)?
            .map_err(PoolError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = self.http.handshake(TokioIo::new(stream)).await?;
        // The connection runs on this worker's runtime until every handle
        // to it is gone; upgrades (WebSocket) take its socket over.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}
