//! A concurrent map with a fixed capacity: sharded, each shard behind its
//! own mutex (never held across an `.await`), evicting with CLOCK — an
//! entry used since the hand last passed gets a second chance, a new or
//! idle one goes — so a flood of new keys costs fixed memory and mostly
//! evicts other newcomers, not the keys that keep coming back.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shards; a power of two.
const SHARDS: usize = 64;

struct Entry<K, V> {
    key: K,
    value: V,
    referenced: bool,
}

struct Shard<K, V> {
    index: HashMap<K, usize, RandomState>,
    entries: Vec<Entry<K, V>>,
    hand: usize,
}

impl<K, V> Default for Shard<K, V> {
    fn default() -> Self {
        Shard {
            index: HashMap::default(),
            entries: Vec::new(),
            hand: 0,
        }
    }
}

/// A bounded map from `K` to `V`.
pub struct BoundedMap<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    per_shard: usize,
    hasher: RandomState,
    evictions: AtomicU64,
}

impl<K, V> std::fmt::Debug for BoundedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedMap")
            .field("capacity", &(self.per_shard * SHARDS))
            .finish()
    }
}

impl<K: Hash + Eq + Copy, V> BoundedMap<K, V> {
    /// A map of about `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        BoundedMap {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, Shard<K, V>> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize & (SHARDS - 1)];
        // A poisoned shard only means a panic elsewhere mid-update of plain
        // data; what it holds is still usable.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` on the value of `key`, inserting `make()` first if absent
    /// (evicting another entry when full).
    pub fn with<R>(&self, key: K, make: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R {
        let mut shard = self.shard(&key);
        let slot = match shard.index.get(&key) {
            Some(&slot) => {
                shard.entries[slot].referenced = true;
                slot
            }
            None => self.insert(&mut shard, key, make()),
        };
        f(&mut shard.entries[slot].value)
    }

    /// Run `f` on the value of `key` if present.
    pub fn peek<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        let mut shard = self.shard(key);
        let slot = *shard.index.get(key)?;
        let entry = &mut shard.entries[slot];
        entry.referenced = true;
        Some(f(&entry.value))
    }

    /// Remove `key` if `remove` says so; returns whether it was removed.
    pub fn remove_if(&self, key: &K, remove: impl FnOnce(&V) -> bool) -> bool {
        let mut shard = self.shard(key);
        let Some(&slot) = shard.index.get(key) else {
            return false;
        };
        if !remove(&shard.entries[slot].value) {
            return false;
        }
        shard.index.remove(key);
        let last = shard.entries.len() - 1;
        shard.entries.swap_remove(slot);
        if slot != last {
            let moved = shard.entries[slot].key;
            shard.index.insert(moved, slot);
        }
        if shard.hand >= shard.entries.len() {
            shard.hand = 0;
        }
        true
    }

    /// Remove every entry `keep` says no to, one shard at a time (each
    /// shard's lock is held only for its own pass); returns how many went.
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) -> usize {
        let mut removed = 0;
        for shard in &*self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let shard = &mut *shard;
            let mut slot = 0;
            while slot < shard.entries.len() {
                if keep(&shard.entries[slot].value) {
                    slot += 1;
                    continue;
                }
                let gone = shard.entries.swap_remove(slot);
                shard.index.remove(&gone.key);
                if let Some(moved) = shard.entries.get(slot) {
                    shard.index.insert(moved.key, slot);
                }
                removed += 1;
            }
            if shard.hand >= shard.entries.len() {
                shard.hand = 0;
            }
        }
        removed
    }

    fn insert(&self, shard: &mut Shard<K, V>, key: K, value: V) -> usize {
        let entry = Entry {
            key,
            value,
            referenced: false,
        };
        if shard.entries.len() < self.per_shard {
            shard.entries.push(entry);
            let slot = shard.entries.len() - 1;
            shard.index.insert(key, slot);
            return slot;
        }
        loop {
            let hand = shard.hand;
            shard.hand = (hand + 1) % shard.entries.len();
            if std::mem::take(&mut shard.entries[hand].referenced) {
                continue;
            }
            let old = std::mem::replace(&mut shard.entries[hand], entry);
            shard.index.remove(&old.key);
            shard.index.insert(key, hand);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            return hand;
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries held at once.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Entries evicted to make room, since creation.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_come_back_survive_a_flood_of_newcomers() {
        let map: BoundedMap<u64, u32> = BoundedMap::new(10_000);
        let regulars: Vec<u64> = (0..200).map(|i| u64::MAX - i).collect();
        let mut visits = 0u32;
        for i in 0..2_000_000u64 {
            map.with(i, || 0, |v| *v += 1);
            if i % 1000 == 0 {
                for r in &regulars {
                    map.with(*r, || 0, |v| *v += 1);
                }
                visits += 1;
            }
            assert!(map.len() <= map.capacity());
        }
        for r in &regulars {
            assert_eq!(map.peek(r, |v| *v), Some(visits), "regular {r} was evicted");
        }
        assert!(map.evictions() >= 2_000_000 - map.capacity() as u64);
    }

    #[test]
    fn retain_removes_what_it_is_told_and_keeps_the_index_consistent() {
        // Room to spare in every shard, so nothing is evicted unasked.
        let map: BoundedMap<u32, u32> = BoundedMap::new(64_000);
        for k in 0..600 {
            map.with(k, || k, |_| ());
        }
        assert_eq!(map.retain(|v| v % 3 == 0), 400);
        assert_eq!(map.len(), 200);
        for k in 0..600 {
            assert_eq!(map.peek(&k, |v| *v), (k % 3 == 0).then_some(k), "{k}");
        }
        // The freed room takes new keys; the hand never points past the end.
        for k in 600..1400 {
            map.with(k, || k, |_| ());
        }
        let held = map.len();
        assert_eq!(held as u64 + map.evictions(), 1000);
        assert_eq!(map.retain(|_| false), held);
        assert!(map.is_empty());
        map.with(1, || 1, |_| ());
        assert_eq!(map.peek(&1, |v| *v), Some(1));
    }

    #[test]
    fn remove_if_keeps_the_index_consistent() {
        let map: BoundedMap<u32, u32> = BoundedMap::new(64 * 4);
        for i in 0..1000 {
            map.with(i, || i, |_| ());
        }
        for i in 0..1000 {
            if let Some(v) = map.peek(&i, |v| *v) {
                assert_eq!(v, i);
                assert!(map.remove_if(&i, |v| *v == i));
                assert!(!map.remove_if(&i, |_| true));
            }
        }
        assert!(map.is_empty());
        for i in 0..10 {
            map.with(i, || i * 2, |_| ());
        }
        for i in 0..10 {
            assert_eq!(map.peek(&i, |v| *v), Some(i * 2));
        }
    }
}
