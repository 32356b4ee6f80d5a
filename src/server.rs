//! The server: binds the proxy and admin listeners, accepts connections
//! (HTTP/1.1 and HTTP/2 with prior knowledge), and drains them on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::classify::Classifier;
use crate::config::connections::DEFAULT_MAX_HEADERS;
use crate::config::{AccessLog as AccessLogMode, Config};
use crate::metrics::Metrics;
use crate::proxy::pool::Pool;
use crate::proxy::{Proxy, Settings};
use crate::reload;
use crate::workers::{Serve, Workers};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `proxy` or `admin`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The access log writer could not start.
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
}

/// A bound, not yet running, usher.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    admin_listener: TcpListener,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    config: Config,
    reload: Option<reload::Source>,
    workers: usize,
}

impl Server {
    /// Bind both listeners and build the proxy.
    pub async fn bind(config: Config, classifier: Classifier) -> Result<Server, ServeError> {
        let listener = bind("proxy", config.listen).await?;
        let admin_listener = bind("admin", config.admin).await?;
        let metrics = Arc::new(Metrics::new()?);
        let access_log = match config.access_log {
            AccessLogMode::Stdout => AccessLog::stdout(metrics.access_log_dropped.clone())
                .map_err(ServeError::AccessLog)?,
            AccessLogMode::Off => AccessLog::off(metrics.access_log_dropped.clone()),
        };
        let proxy = Arc::new(Proxy::new(
            Settings::new(&config, classifier),
            metrics.clone(),
            access_log.clone(),
        ));
        metrics.config_loaded();
        Ok(Server {
            listener,
            admin_listener,
            proxy,
            metrics,
            access_log,
            config,
            reload: None,
            workers: 1,
        })
    }

    /// Reload the configuration from `source` on SIGHUP, `POST /reload`
    /// and changes to its files (see [`reload`]). Without it, the
    /// configuration is fixed and `POST /reload` answers 503.
    pub fn with_reload(mut self, source: reload::Source) -> Self {
        self.reload = Some(source);
        self
    }

    /// Serve connections on `workers` threads of their own (each with its
    /// own one-thread runtime and upstream pool), the runtime that calls
    /// [`Server::run`] only accepting them. With one (the default), that
    /// runtime serves them itself.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// The address the proxy listens on (useful with port 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The address the admin endpoints listen on.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin)
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serve until `shutdown` resolves, then stop accepting and give
    /// in-flight requests up to `timeouts.shutdown` to finish. Logs a
    /// `listening` line once ready (`/readyz` answers 200 from then on).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            admin_listener,
            proxy,
            metrics,
            access_log,
            config,
            reload,
            workers,
        } = self;
        let reload = reload
            .map(|source| reload::start(source, config.clone(), proxy.clone(), metrics.clone()));
        let admin_addr = admin_listener.local_addr().unwrap_or(config.admin);
        let ready = Arc::new(AtomicBool::new(false));
        let (stop_admin, admin_stopped) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            AdminState {
                metrics: metrics.clone(),
                ready: ready.clone(),
                proxy: proxy.clone(),
                reload,
            },
            admin_stopped,
        ));

        let sweeper = tokio::spawn(forget_idle_clients(proxy.clone()));
        start_sharing(&proxy, &metrics);
        for jwks in classifier_jwks(&proxy) {
            tokio::spawn(crate::identity::jwks::RemoteJwks::run(
                Arc::downgrade(&jwks),
                metrics.jwks.clone(),
            ));
        }

        let mut http = auto::Builder::new(TokioExecutor::new());
        let limits = &config.connections;
        // hyper's buffer limit bounds a request head, and the response
        // bytes queued for a slow client too (backpressure, not a cap on
        // responses).
        http.http1()
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(config.timeouts.header_read)
            .max_buf_size(limits.max_header_bytes);
        if limits.max_headers != DEFAULT_MAX_HEADERS {
            // Off the default, hyper allocates the header array per request.
            http.http1().max_headers(limits.max_headers);
        }
        // HTTP/2 peers that stop answering pings are dropped.
        http.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_PING_INTERVAL))
            .keep_alive_timeout(H2_PING_INTERVAL)
            .max_concurrent_streams(limits.h2_max_streams)
            // Rapid reset (CVE-2023-44487): a client that cancels streams
            // faster than they are served is sent away. Set here rather
            // than left to h2's default, which could change under us.
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        let serve = || Serve {
            proxy: proxy.clone(),
            pool: Pool::new(config.timeouts.connect, config.timeouts.upstream_idle),
            http: http.clone(),
            metrics: metrics.clone(),
            first_request: config.timeouts.header_read,
        };
        let grace = config.timeouts.shutdown;
        let mut accepting = if workers > 1 {
            match Workers::start(workers, serve, grace) {
                Ok(workers) => Accepting::Workers(workers),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start worker threads; serving on one");
                    Accepting::Here(Box::new(serve()), GracefulShutdown::new())
                }
            }
        } else {
            Accepting::Here(Box::new(serve()), GracefulShutdown::new())
        };

        ready.store(true, Ordering::Relaxed);
        tracing::info!(
            proxy = %listener.local_addr().unwrap_or(config.listen),
            admin = %admin_addr,
            upstream = %config.upstream,
            workers,
            "listening"
        );
        // Room for `connections.max` open client connections, and for the
        // refused ones being closed politely.
        let open = Arc::new(tokio::sync::Semaphore::new(config.connections.max));
        let lingering = Arc::new(tokio::sync::Semaphore::new(REFUSALS_LINGERING));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(admitted) = Arc::clone(&open).try_acquire_owned() else {
                metrics.connections_refused.inc();
                refuse(stream, &lingering);
                continue;
            };
            match &mut accepting {
                Accepting::Here(serve, graceful) => {
                    serve.connection(stream, peer, admitted, graceful);
                }
                Accepting::Workers(workers) => workers.hand(stream, peer, admitted).await,
            }
        }

        ready.store(false, Ordering::Relaxed);
        drop(listener);
        tracing::info!(
            ?grace,
            "shutting down: no new connections, draining in-flight requests"
        );
        let drained = match accepting {
            Accepting::Here(_, graceful) => tokio::time::timeout(grace, graceful.shutdown())
                .await
                .is_ok(),
            Accepting::Workers(workers) => workers.drain().await,
        };
        if drained {
            tracing::info!("all connections drained");
        } else {
            tracing::warn!(
                open = metrics.connections_active.get(),
                "shutdown deadline passed with connections still open"
            );
        }
        sweeper.abort();
        if let Some(shared) = proxy.settings().classifier.signals().shared().cloned() {
            // The last interval's counts go to Redis too; a Redis that is
            // gone costs at most the wait below.
            let flushed =
                tokio::task::spawn_blocking(move || shared.finish(Duration::from_secs(2))).await;
            if !matches!(flushed, Ok(true)) {
                tracing::warn!("state backend: the last counts were not flushed to Redis");
            }
        }
        access_log.flush(Duration::from_secs(2));
        let _ = stop_admin.send(true);
        let _ = admin_task.await;
    }
}

/// How often clients idle past the longest window are forgotten.
const IDLE_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Forget idle clients now and then, so `usher_tracked_clients` counts the
/// clients active lately and a full state means real pressure. The sweep
/// runs on a blocking thread: it walks every record, one shard lock at a
/// time.
async fn forget_idle_clients(proxy: Arc<Proxy>) {
    let mut tick = tokio::time::interval(IDLE_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // The state outlives reloads; take whichever the proxy has now.
        let state = proxy.settings().classifier.signals().state().clone();
        let sweep = tokio::task::spawn_blocking(move || {
            crate::state::expire_idle(&state, std::time::SystemTime::now())
        });
        if let Ok(forgotten) = sweep.await
            && forgotten > 0
        {
            tracing::debug!(forgotten, "idle clients forgotten");
        }
    }
}

/// Start syncing client state with Redis when the backend is Redis, on a
/// thread of its own so that building and reading a batch never delays a
/// request; with memory, the backend is simply up. The thread ends with
/// the process.
fn start_sharing(proxy: &Arc<Proxy>, metrics: &Metrics) {
    let settings = proxy.settings();
    let signals = settings.classifier.signals();
    let Some(shared) = signals.shared().cloned() else {
        metrics.state_sync.up.set(1);
        return;
    };
    shared.set_metrics(metrics.state_sync.clone());
    // The quotas are the live configuration's, whatever reloads bring.
    let proxy = Arc::clone(proxy);
    let limits = move || proxy.settings().classifier.limits().clone();
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| {
            std::thread::Builder::new()
                .name("usher-state-sync".into())
                .spawn(move || runtime.block_on(shared.run(limits)))
        });
    if let Err(e) = started {
        tracing::error!(error = %e, "state backend: cannot start the sync thread; serving on local state");
    }
}

fn classifier_jwks(proxy: &Proxy) -> Vec<Arc<crate::identity::jwks::RemoteJwks>> {
    proxy.settings().classifier.identity().remote_jwks()
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

/// Streams a client may open and reset before they are served, before
/// its connection is closed (h2's own default).
const H2_MAX_PENDING_RESETS: usize = 20;

/// Refused connections being closed at once, at most: past it, a refused
/// connection is dropped without its 503.
const REFUSALS_LINGERING: usize = 1024;

/// How long a refused connection may take to read its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The answer to a connection past `connections.max`.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 32\r\nretry-after: 1\r\nconnection: close\r\n\r\n{\"error\":\"too_many_connections\"}";

/// Answer a connection past `connections.max` with a 503 and close it,
/// without ever waiting in the accept loop: a task of its own writes the
/// answer, then lingers (reading and dropping what the client sent, so
/// closing does not reset the connection before the client reads the
/// answer), all within a second, a bounded number at a time. Past that
/// bound the connection is simply closed.
fn refuse(stream: TcpStream, lingering: &Arc<tokio::sync::Semaphore>) {
    let Ok(slot) = Arc::clone(lingering).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(REFUSAL).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        drop(slot);
    });
}

/// How often idle HTTP/2 clients are pinged, and how long they may take
/// to answer.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// Who serves accepted connections.
enum Accepting {
    /// This runtime, draining with this handle.
    Here(Box<Serve>, GracefulShutdown),
    /// Worker threads.
    Workers(Workers),
}
