//! The admin listener: `/metrics` for Prometheus, `/healthz` for liveness,
//! `/readyz` for readiness (503 before start and while draining), and
//! `POST /reload` to reload the configuration.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What the admin endpoints report on.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Whether the proxy is accepting traffic.
    pub ready: Arc<AtomicBool>,
    /// The proxy, for figures read at scrape time.
    pub proxy: Arc<crate::proxy::Proxy>,
    /// Where `POST /reload` goes (none: the configuration is fixed).
    pub reload: Option<crate::reload::Handle>,
}

/// Serve admin requests until `stop` changes (or its sender is dropped).
pub async fn serve(listener: TcpListener, state: AdminState, mut stop: watch::Receiver<bool>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req).await) }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/reload") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let allowed = if path == "/reload" {
        req.method() == Method::POST
    } else {
        req.method() == Method::GET || req.method() == Method::HEAD
    };
    if !allowed {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        let allow = if path == "/reload" {
            "POST"
        } else {
            "GET, HEAD"
        };
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    match path {
        "/metrics" => {
            let settings = state.proxy.settings();
            let store = settings.classifier.signals().state();
            state
                .metrics
                .observe_state(store.len(), store.capacity(), store.evictions());
            state
                .metrics
                .observe_crawler_dns(settings.classifier.crawlers().dns_counts());
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/reload" => reload(state.reload.as_ref()).await,
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

/// Reload and answer `{"result":"success","restart_required":[…]}` (200)
/// or `{"result":"failure","error":"file:line:column: …"}` (500; 503 when
/// reloading is not available).
async fn reload(handle: Option<&crate::reload::Handle>) -> Response<Full<Bytes>> {
    use crate::reload::{ReloadError, Trigger};
    let result = match handle {
        Some(handle) => handle.reload(Trigger::Admin).await,
        None => Err(ReloadError::Stopped),
    };
    /// The answer, `result` first.
    #[derive(serde::Serialize)]
    struct Answer {
        result: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        restart_required: Option<Vec<&'static str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }
    let (status, answer) = match result {
        Ok(applied) => (
            StatusCode::OK,
            Answer {
                result: "success",
                restart_required: Some(applied.map(|a| a.restart_required).unwrap_or_default()),
                error: None,
            },
        ),
        Err(e) => (
            match e {
                ReloadError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                ReloadError::Config(_) | ReloadError::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Answer {
                result: "failure",
                restart_required: None,
                error: Some(e.to_string()),
            },
        ),
    };
    let body = serde_json::to_string(&answer).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
