//! Protocol switches (WebSocket): once the upstream answers 101, the two
//! upgraded connections are joined and bytes copied both ways until either
//! side closes.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::metrics::Metrics;

/// Join the client's and the upstream's upgraded connections in a task,
/// holding `place` (the client connection's place among those
/// `connections.max` allows) until the tunnel closes.
pub fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    metrics: Arc<Metrics>,
    place: impl Send + 'static,
) {
    tokio::spawn(async move {
        let _place = place;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        metrics.upgrades_active.inc();
        let result =
            tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream))
                .await;
        metrics.upgrades_active.dec();
        if let Err(e) = result {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
