//! Remote JWKS: an issuer's public keys fetched from its JWKS URL, kept
//! fresh on an interval, and refetched early — at most once per
//! `jwks_min_refetch` — when a token names a key usher does not have.
//! Requests never wait for a fetch: they use the keys at hand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use prometheus::IntCounter;
use tokio::sync::Notify;

use super::keys::{self, VerifyingKey};
use super::remote::{HttpsClient, https_client};

/// The largest JWKS document accepted.
const MAX_DOCUMENT: usize = 1 << 20;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed fetch, the next try comes this soon (then the interval).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

/// One issuer's remote key set.
#[derive(Debug)]
pub struct RemoteJwks {
    url: Uri,
    keys: ArcSwap<Vec<VerifyingKey>>,
    refresh: Duration,
    min_refetch: Duration,
    wanted: Arc<Notify>,
    loaded: AtomicBool,
    healthy: AtomicBool,
}

/// Outcome counters for fetches.
#[derive(Clone, Debug)]
pub struct JwksMetrics {
    /// Fetches that replaced the key set.
    pub ok: IntCounter,
    /// Fetches that failed (the old keys stay).
    pub error: IntCounter,
}

impl RemoteJwks {
    /// A key set to be fetched from `url`; empty until the first fetch.
    pub fn new(url: Uri, refresh: Duration, min_refetch: Duration) -> Self {
        RemoteJwks {
            url,
            keys: ArcSwap::from_pointee(Vec::new()),
            refresh,
            min_refetch,
            wanted: Arc::new(Notify::new()),
            loaded: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
        }
    }

    /// The keys fetched last.
    pub fn keys(&self) -> arc_swap::Guard<Arc<Vec<VerifyingKey>>> {
        self.keys.load()
    }

    /// Whether a key set has been fetched at least once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Ask for an early refetch (a token named an unknown key). Cheap and
    /// non-blocking; the fetch task applies the rate limit.
    pub fn want_refetch(&self) {
        self.wanted.notify_one();
    }

    /// The URL keys come from.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Whether this key set is the one an issuer configured so would
    /// fetch: a reload keeps it (keys and fetch task) instead of starting
    /// with none.
    pub fn serves(&self, url: &Uri, refresh: Duration, min_refetch: Duration) -> bool {
        self.url == *url && self.refresh == refresh && self.min_refetch == min_refetch
    }

    /// Keep the key set fresh until every other holder of it is gone (the
    /// config was replaced).
    pub async fn run(this: Weak<Self>, metrics: JwksMetrics) {
        let client = https_client();
        let Some(wanted) = this.upgrade().map(|j| j.wanted.clone()) else {
            return;
        };
        loop {
            // Hold the key set only while fetching, so a replaced config's
            // task ends at its next wake-up.
            let (wait, min_refetch) = {
                let Some(jwks) = this.upgrade() else { return };
                let wait = match jwks.fetch(&client).await {
                    Ok(keys) => {
                        metrics.ok.inc();
                        if !jwks.healthy.swap(true, Ordering::Relaxed) {
                            tracing::info!(url = %jwks.url, "JWKS fetch recovered");
                        }
                        tracing::debug!(url = %jwks.url, keys = keys.len(), "JWKS refreshed");
                        jwks.keys.store(Arc::new(keys));
                        jwks.loaded.store(true, Ordering::Relaxed);
                        jwks.refresh
                    }
                    Err(e) => {
                        metrics.error.inc();
                        // Log on the change to failing, not on every retry.
                        if jwks.healthy.swap(false, Ordering::Relaxed) {
                            tracing::warn!(url = %jwks.url, error = %e, "JWKS fetch failed; keeping the keys at hand");
                        }
                        RETRY_AFTER_ERROR.min(jwks.refresh)
                    }
                };
                (wait, jwks.min_refetch)
            };
            let refetch = async {
                wanted.notified().await;
                // Rate limit: no refetch sooner than min_refetch after the
                // last fetch, however many tokens ask.
                tokio::time::sleep(min_refetch).await;
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = refetch => {}
            }
        }
    }

    async fn fetch(&self, client: &HttpsClient) -> Result<Vec<VerifyingKey>, String> {
        let request = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_DOCUMENT).collect(),
        )
        .await
        .map_err(|_| "timed out reading the document".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
        keys::keys_from_jwks(&body).map_err(|e| e.to_string())
    }
}
