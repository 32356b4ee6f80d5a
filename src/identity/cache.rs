//! Verified credentials, remembered for their lifetime so a repeated token
//! costs a lookup, not a signature check. Keyed by the whole token (no
//! digest collisions to reason about), bounded in entries; only credentials
//! that verified are kept.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// A bounded map from token to verified identity. Only tokens whose
/// signature verified get in, so nobody can choose keys to collide without
/// the issuer's key: a fast seeded hash is enough.
#[derive(Debug)]
pub struct VerifiedCache {
    map: DashMap<Box<str>, Entry, foldhash::fast::RandomState>,
    /// Entries, counted on insert and recounted when full (cheaper than
    /// asking every shard on every insert).
    entries: AtomicUsize,
    /// Which eighth of the keys the next eviction takes.
    victim: AtomicUsize,
    capacity: usize,
}

/// When a cache full of live tokens must make room, it drops one eighth of
/// them (picked by hash), not all: a flood of new tokens costs re-checks,
/// never a cliff where every user's token is verified again at once.
const EVICT_SHARES: u64 = 8;

impl VerifiedCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            entries: AtomicUsize::new(0),
            victim: AtomicUsize::new(0),
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
        if self.entries.load(Ordering::Relaxed) >= self.capacity {
            self.make_room(now);
        }
        let entry = Entry {
            identity: verified.identity.clone(),
            issuer: verified.issuer,
            from: verified.from,
            until: verified.until,
        };
        if self.map.insert(Box::from(token), entry).is_none() {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drop expired entries; while still full, drop an eighth of the live
    /// ones (re-verifying a token is only slower, never wrong).
    fn make_room(&self, now: f64) {
        self.map.retain(|_, e| e.until > now);
        let hasher = self.map.hasher().clone();
        for _ in 0..EVICT_SHARES {
            if self.map.len() < self.capacity {
                break;
            }
            let victim = (self.victim.fetch_add(1, Ordering::Relaxed) as u64) % EVICT_SHARES;
            self.map
                .retain(|token, _| hasher.hash_one(token) % EVICT_SHARES != victim);
        }
        self.entries.store(self.map.len(), Ordering::Relaxed);
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

    #[test]
    fn a_full_cache_of_live_tokens_keeps_most_of_them() {
        let cache = VerifiedCache::new(800);
        for i in 0..800 {
            cache.insert(&format!("t{i}"), &verified("a", 0.0, 1e9), 0.0);
        }
        cache.insert("new", &verified("b", 0.0, 1e9), 0.0);
        let kept = (0..800)
            .filter(|i| cache.get(&format!("t{i}"), 1.0).is_some())
            .count();
        assert!(
            (500..800).contains(&kept),
            "an eighth or so made room, not all: {kept}"
        );
        assert!(cache.get("new", 1.0).is_some());
        assert_eq!(cache.len(), kept + 1);
    }

    #[test]
    fn expired_tokens_make_room_first() {
        let cache = VerifiedCache::new(10);
        for i in 0..5 {
            cache.insert(&format!("old{i}"), &verified("a", 0.0, 10.0), 0.0);
        }
        for i in 0..5 {
            cache.insert(&format!("live{i}"), &verified("a", 0.0, 1e9), 0.0);
        }
        cache.insert("new", &verified("b", 0.0, 1e9), 20.0);
        assert_eq!(cache.len(), 6, "the five expired went, nothing live did");
        assert!((0..5).all(|i| cache.get(&format!("live{i}"), 21.0).is_some()));
    }
}
