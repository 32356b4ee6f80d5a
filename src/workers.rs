//! Where client connections are served: on the accepting runtime, or spread
//! over worker threads that each run a one-thread runtime with an upstream
//! pool of their own. A request's whole life (client socket, classification,
//! upstream socket) then stays on one thread, with no work stealing and no
//! cross-thread wake-ups; only a new connection crosses, once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::proxy::pool::Pool;

/// What serving client connections takes, on one runtime.
#[derive(Clone)]
pub struct Serve {
    /// The proxy all workers share.
    pub proxy: Arc<Proxy>,
    /// This runtime's upstream pool.
    pub pool: Arc<Pool>,
    /// The HTTP/1 and HTTP/2 server settings.
    pub http: auto::Builder<TokioExecutor>,
    /// Where the open-connection gauge lives.
    pub metrics: Arc<Metrics>,
    /// How long a new connection may take to bring its first request.
    pub first_request: Duration,
}

impl Serve {
    /// Serve one client connection on the current runtime until it ends
    /// or `graceful` drains it; `admitted` is its place among the open
    /// connections, given back when it ends.
    pub fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
        graceful: &GracefulShutdown,
    ) {
        let _ = stream.set_nodelay(true);
        let (proxy, pool) = (self.proxy.clone(), self.pool.clone());
        let started = Arc::new(AtomicBool::new(false));
        let seen = started.clone();
        // Held by the connection task and by any tunnel the connection
        // becomes: an upgraded connection still counts against the max.
        let admitted = Arc::new(admitted);
        let place = admitted.clone();
        let service = service_fn(move |req| {
            seen.store(true, Ordering::Relaxed);
            proxy.clone().handle(req, peer, pool.clone(), place.clone())
        });
        let conn = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let active = ActiveGuard::new(&self.metrics.connections_active);
        let first_request = self.first_request;
        tokio::spawn(async move {
            // A connection must bring a first request within
            // `header_read`, whatever the protocol: this covers silent
            // sockets and a stalled HTTP/2 preface or protocol sniff,
            // which hyper's own header timeout does not.
            tokio::pin!(conn);
            let result = tokio::select! {
                result = &mut conn => result,
                () = tokio::time::sleep(first_request) => {
                    if !started.load(Ordering::Relaxed) {
                        tracing::debug!(%peer, "no request within header_read; closing");
                        return;
                    }
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "client connection ended with an error");
            }
            drop(active);
            drop(admitted);
        });
    }
}

/// A connection's place among those `connections.max` allows open.
pub type Admitted = tokio::sync::OwnedSemaphorePermit;

/// A connection on its way to a worker.
type Handoff = (std::net::TcpStream, SocketAddr, Admitted);

/// Connections a worker may have waiting before the accept loop waits.
const HANDOFF_QUEUE: usize = 1024;

/// Worker threads, each serving the connections handed to it.
pub struct Workers {
    queues: Vec<mpsc::Sender<Handoff>>,
    threads: Vec<JoinHandle<bool>>,
    next: usize,
}

impl Workers {
    /// Start `count` worker threads, each serving with what `serve` gives
    /// it (its own upstream pool) and draining for at most `grace` once
    /// the accept loop stops.
    pub fn start(
        count: usize,
        serve: impl Fn() -> Serve,
        grace: Duration,
    ) -> std::io::Result<Workers> {
        let mut workers = Workers {
            queues: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
            next: 0,
        };
        for i in 0..count {
            let (queue, handed) = mpsc::channel(HANDOFF_QUEUE);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let serve = serve();
            let thread = std::thread::Builder::new()
                .name(format!("usher-worker-{i}"))
                .spawn(move || runtime.block_on(work(serve, handed, grace)))?;
            workers.queues.push(queue);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Give a freshly accepted connection to the next worker in turn.
    pub async fn hand(&mut self, stream: TcpStream, peer: SocketAddr, admitted: Admitted) {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, %peer, "cannot hand the connection over");
                return;
            }
        };
        self.next = (self.next + 1) % self.queues.len();
        // A worker only ever ends after its queue closes, so a send fails
        // only if it died: the connection is then dropped, closing it.
        if self.queues[self.next]
            .send((stream, peer, admitted))
            .await
            .is_err()
        {
            tracing::error!(worker = self.next, "worker thread gone; connection closed");
        }
    }

    /// Stop handing out connections and wait for every worker to drain.
    /// True when all in-flight requests finished within the grace period.
    pub async fn drain(self) -> bool {
        drop(self.queues);
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            // Every thread is joined, even after one that did not drain.
            let drained: Vec<bool> = threads
                .into_iter()
                .map(|t| t.join().unwrap_or(false))
                .collect();
            drained.into_iter().all(|d| d)
        });
        joined.await.unwrap_or(false)
    }
}

/// One worker's life: serve what arrives until the queue closes, then
/// drain for at most `grace`.
async fn work(serve: Serve, mut handed: mpsc::Receiver<Handoff>, grace: Duration) -> bool {
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer, admitted)) = handed.recv().await {
        match TcpStream::from_std(stream) {
            Ok(stream) => serve.connection(stream, peer, admitted, &graceful),
            Err(e) => tracing::debug!(error = %e, %peer, "cannot take the connection over"),
        }
    }
    tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_ok()
}

/// Keeps `usher_connections_active` right even if a task panics.
struct ActiveGuard(IntGauge);

impl ActiveGuard {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        ActiveGuard(gauge.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
