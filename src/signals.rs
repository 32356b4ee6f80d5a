//! Signals stage: what the request and the client's recent behaviour suggest,
//! as inputs for the rules. Behaviour state plugs in here.

use crate::facts::Facts;
use crate::identity::Identity;

/// Derived observations about one request, read by the rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    /// The request carried no `User-Agent` (or one that is not text).
    pub user_agent_missing: bool,
}

/// Computes signals. Stateless for now; client behaviour windows plug in
/// here without changing the callers.
#[derive(Debug, Default)]
pub struct SignalsStage {
    _private: (),
}

impl SignalsStage {
    /// Observe one request.
    pub fn observe(&self, facts: &Facts<'_>, _identity: &Identity) -> Signals {
        Signals {
            user_agent_missing: facts.user_agent.is_none_or(str::is_empty),
        }
    }
}
