//! Signals stage: what the request and the client's recent behaviour
//! suggest, as inputs for the rules. Reads and updates the client's record
//! in the bounded client state.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use crate::facts::Facts;
use crate::identity::Identity;
use crate::state::{
    AUTH_FAILURE_WINDOW, ClientKey, ClientStore, RATE_WINDOWS, STATUS_WINDOW, update_client,
};

/// Derived observations about one request, read by the rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    /// The request carried no `User-Agent`, or a blank or `-` one.
    pub user_agent_missing: bool,
    /// Failed credentials from this client in the last five minutes,
    /// this request's included.
    pub auth_failures_5m: u32,
    /// Requests from this client over 1 s, 10 s, 60 s and 5 min, this one
    /// included.
    pub rates: [u32; 4],
    /// Upstream 4xx answers to this client over 60 s.
    pub status_4xx_60s: u32,
    /// Upstream 404 answers to this client over 60 s.
    pub status_404_60s: u32,
    /// Upstream 401 and 403 answers to this client over 60 s.
    pub status_401_403_60s: u32,
    /// Upstream answers to this client over 60 s.
    pub answered_60s: u32,
    /// What became of a crawler claim in the user agent.
    pub crawler: crate::crawlers::Claim,
}

/// Computes signals, keeping per-client behaviour in `state`.
#[derive(Debug)]
pub struct SignalsStage {
    state: Arc<ClientStore>,
}

impl Default for SignalsStage {
    fn default() -> Self {
        SignalsStage::new(Arc::new(ClientStore::new(1_000_000)))
    }
}

impl SignalsStage {
    /// Signals over a client store (shared across reloads).
    pub fn new(state: Arc<ClientStore>) -> Self {
        SignalsStage { state }
    }

    /// The client store.
    pub fn state(&self) -> &Arc<ClientStore> {
        &self.state
    }

    /// Observe one request, recording what it says about its client.
    pub fn observe(&self, facts: &Facts<'_>, identity: &Identity) -> Signals {
        let now = unix_seconds(facts.now);
        let key = ClientKey::of(facts.client_ip);
        let failed = matches!(identity, Identity::Invalid { .. });
        let record = update_client(&self.state, key, |r| {
            r.add_request(now);
            if failed {
                r.auth_failures.add(now, AUTH_FAILURE_WINDOW);
            }
        });
        Signals {
            user_agent_missing: facts.user_agent.is_none_or(is_blank_agent),
            auth_failures_5m: record.auth_failures.count(now, AUTH_FAILURE_WINDOW),
            rates: std::array::from_fn(|i| record.requests[i].count(now, RATE_WINDOWS[i])),
            status_4xx_60s: record.status_4xx.count(now, STATUS_WINDOW),
            status_404_60s: record.status_404.count(now, STATUS_WINDOW),
            status_401_403_60s: record.status_auth.count(now, STATUS_WINDOW),
            answered_60s: record.answered.count(now, STATUS_WINDOW),
            crawler: crate::crawlers::Claim::None,
        }
    }

    /// Record what the upstream answered a client, for the status signals.
    pub fn record_status(
        &self,
        client_ip: std::net::IpAddr,
        now: std::time::SystemTime,
        status: u16,
    ) {
        let now = unix_seconds(now);
        let key = ClientKey::of(client_ip);
        update_client(&self.state, key, |r| r.add_status(now, status));
    }
}

/// Seconds since the Unix epoch, saturating.
fn unix_seconds(t: std::time::SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// An agent that says nothing: empty, blank, or a placeholder dash.
fn is_blank_agent(ua: &[u8]) -> bool {
    let ua = ua.trim_ascii();
    ua.is_empty() || ua == b"-"
}
