//! Verified credentials, remembered for their lifetime so a repeated token
//! costs a lookup, not a signature check. Keyed by the whole token (no
//! digest collisions to reason about), bounded in entries; only credentials
//! that verified are kept.

use dashmap::DashMap;

use super::Identity;

/// What a cached token stands for, who issued it, and when it holds
/// (Unix seconds: from `from`, before `until`).
#[derive(Clone, Debug)]
struct Entry {
    identity: Identity,
    issuer: usize,
    from: f64,
    until: f64,
}

/// A verified token's standing, as the verifier found it.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// Who the token says is knocking.
    pub identity: Identity,
    /// Which configured issuer signed it.
    pub issuer: usize,
    /// The earliest time it is valid (its `nbf`/`iat`, less leeway).
    pub from: f64,
    /// The time it stops being valid (its `exp`, plus leeway).
    pub until: f64,
}

/// A bounded map from token to verified identity.
#[derive(Debug)]
pub struct VerifiedCache {
    map: DashMap<Box<str>, Entry>,
    capacity: usize,
}

impl VerifiedCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            map: DashMap::new(),
            capacity,
        }
    }

    /// The identity and issuer of `token` if it verified before and is
    /// valid at `now` (the clock may run backwards in a replay).
    pub fn get(&self, token: &str, now: f64) -> Option<(Identity, usize)> {
        let entry = self.map.get(token)?;
        (entry.from <= now && now < entry.until).then(|| (entry.identity.clone(), entry.issuer))
    }

    /// Remember a verified token.
    pub fn insert(&self, token: &str, verified: &Verified, now: f64) {
        if verified.until <= now || self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            // Make room: expired entries first; if every entry is still
            // live, start over (a full cache of live tokens is rare and
            // re-verifying them is only slower, never wrong).
            self.map.retain(|_, e| e.until > now);
            if self.map.len() >= self.capacity {
                self.map.clear();
            }
        }
        self.map.insert(
            Box::from(token),
            Entry {
                identity: verified.identity.clone(),
                issuer: verified.issuer,
                from: verified.from,
                until: verified.until,
            },
        );
    }

    /// Tokens cached now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Source, Tier};
    use std::sync::Arc;

    fn user(name: &str) -> Identity {
        Identity::User {
            source: Source::Jwt,
            subject: Arc::from(name),
            tier: Tier::Free,
            claims: Default::default(),
        }
    }

    fn verified(name: &str, from: f64, until: f64) -> Verified {
        Verified {
            identity: user(name),
            issuer: 3,
            from,
            until,
        }
    }

    #[test]
    fn hits_within_validity_and_exact_tokens_only() {
        let cache = VerifiedCache::new(10);
        cache.insert("tok", &verified("a", 40.0, 100.0), 50.0);
        assert_eq!(cache.get("tok", 99.9), Some((user("a"), 3)));
        assert_eq!(cache.get("tok", 100.0), None);
        assert_eq!(
            cache.get("tok", 39.0),
            None,
            "before nbf, on a clock that went back"
        );
        assert_eq!(cache.get("to", 60.0), None);
        assert_eq!(cache.get("tok ", 60.0), None);
        cache.insert("old", &verified("b", 0.0, 40.0), 50.0);
        assert_eq!(cache.len(), 1, "already expired tokens are not cached");
    }

    #[test]
    fn stays_within_capacity() {
        let cache = VerifiedCache::new(100);
        for i in 0..10_000 {
            cache.insert(&format!("t{i}"), &verified("a", 0.0, 1e9), 0.0);
            assert!(cache.len() <= 100);
        }
        assert!(
            cache.get("t9999", 1.0).is_some(),
            "the newest entry is kept"
        );
    }
}
