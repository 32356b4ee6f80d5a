//! Signals stage: what the request and the client's recent behaviour
//! suggest, as inputs for the rules. Reads and updates the client's record
//! in the bounded client state.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use crate::facts::Facts;
use crate::identity::Identity;
use crate::state::{AUTH_FAILURE_WINDOW, ClientKey, ClientStore, client, update_client};

/// Derived observations about one request, read by the rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    /// The request carried no `User-Agent` (or one that is not text).
    pub user_agent_missing: bool,
    /// Failed credentials from this client in the last five minutes,
    /// this request's included.
    pub auth_failures_5m: u32,
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
        let now = facts
            .now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let key = ClientKey::of(facts.client_ip);
        let auth_failures_5m = if matches!(identity, Identity::Invalid { .. }) {
            let record = update_client(&self.state, key, |r| {
                r.auth_failures.add(now, AUTH_FAILURE_WINDOW)
            });
            record.auth_failures.count(now, AUTH_FAILURE_WINDOW)
        } else {
            client(&self.state, key).map_or(0, |r| r.auth_failures.count(now, AUTH_FAILURE_WINDOW))
        };
        Signals {
            user_agent_missing: facts.user_agent.is_none_or(str::is_empty),
            auth_failures_5m,
        }
    }
}
