//! A concurrent map with a fixed capacity: sharded, each shard behind its
//! own mutex (never held across an `.await`), evicting with CLOCK — an
//! entry used since the hand last passed gets a second chance, a new or
//! idle one goes — so a flood of new keys costs fixed memory and mostly
//! evicts other newcomers, not the keys that keep coming back.
//!
//! Its memory is most of usher's at capacity, so each shard is laid out
//! flat, in three allocations that grow (doubling) with the entries
//! until the shard is full, to exactly the size a full shard needs, and
//! are never reallocated after: a full map does not grow, whatever
//! passes through it.
//!
//! - `entries`: the keys and values, packed, in insertion order (a removal
//!   moves the last entry into the gap);
//! - `index`: an open-addressed table with linear probing, half again as
//!   many buckets as entries (a load of at most 2/3). A bucket is 8 bytes: 32
//!   bits of the key's hash, its *tag*, which also fixes the bucket it
//!   belongs in, and the entry's position. A probe compares tags and reads
//!   an entry only when they match. A removal shifts the buckets after it
//!   back, so no tombstones pile up under churn; growing re-places the
//!   buckets by their tags, without hashing a key;
//! - `referenced`: the CLOCK bits, one per entry.
//!
//! That is the entry itself plus about 12 bytes. Clients choose the keys
//! (their addresses), so the hash is keyed at random per process (the
//! standard library's SipHash): collisions cannot be aimed.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Shards; a power of two.
const SHARDS: usize = 64;

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
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        BoundedMap {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(per_shard)))
                .collect(),
            per_shard,
            hasher: RandomState::new(),
            evictions: AtomicU64::new(0),
        }
    }

    /// The shard of `key` and its tag within it, from independent bits of
    /// one keyed hash.
    fn locate(&self, key: &K) -> (usize, u32) {
        let hash = self.hasher.hash_one(key);
        (hash as usize & (SHARDS - 1), (hash >> 32) as u32)
    }

    fn tag(&self, key: &K) -> u32 {
        self.locate(key).1
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard<K, V>> {
        // A poisoned shard only means a panic in a caller's closure, which
        // sees nothing but a value: the shard itself is intact.
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` on the value of `key`, inserting `make()` first if absent
    /// (evicting another entry when full).
    pub fn with<R>(&self, key: K, make: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R {
        let (shard, tag) = self.locate(&key);
        let mut shard = self.lock(shard);
        let slot = match shard.get(tag, &key) {
            Some(slot) => slot,
            None => {
                let (slot, evicted) = shard.insert(tag, key, make(), |k| self.tag(k));
                if evicted {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                slot
            }
        };
        f(&mut shard.entries[slot].value)
    }

    /// Run `f` on the value of `key` if present.
    pub fn peek<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        let (shard, tag) = self.locate(key);
        let mut shard = self.lock(shard);
        let slot = shard.get(tag, key)?;
        Some(f(&shard.entries[slot].value))
    }

    /// Run `f` on the value of `key` if present, without counting it as a
    /// use (for follow-ups, such as the response to a request already
    /// counted): nothing is inserted, and no eviction is put off.
    pub fn update<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let (shard, tag) = self.locate(key);
        let mut shard = self.lock(shard);
        let slot = shard.find(tag, key)?;
        Some(f(&mut shard.entries[slot].value))
    }

    /// Remove `key` if `remove` says so; returns whether it was removed.
    pub fn remove_if(&self, key: &K, remove: impl FnOnce(&V) -> bool) -> bool {
        let (shard, tag) = self.locate(key);
        let mut shard = self.lock(shard);
        let Some(slot) = shard.find(tag, key) else {
            return false;
        };
        if !remove(&shard.entries[slot].value) {
            return false;
        }
        shard.remove(slot, |k| self.tag(k));
        true
    }

    /// Remove every entry `keep` says no to, one shard at a time (each
    /// shard's lock is held only for its own pass); returns how many went.
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) -> usize {
        let mut removed = 0;
        for shard in 0..SHARDS {
            let mut shard = self.lock(shard);
            let mut slot = 0;
            while slot < shard.entries.len() {
                if keep(&shard.entries[slot].value) {
                    slot += 1;
                } else {
                    // The last entry moves into `slot`: look at it next.
                    shard.remove(slot, |k| self.tag(k));
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).entries.len()).sum()
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

struct Entry<K, V> {
    key: K,
    value: V,
}

/// One bucket of a shard's index: a key's tag in the high half, its
/// entry's position plus one in the low half; zero is empty. Stored as a
/// bare `u64`, so that a new index is zeroed memory.
#[derive(Clone, Copy)]
struct Bucket(u64);

impl Bucket {
    fn new(tag: u32, slot: usize) -> Self {
        // `Shard::new` keeps every slot + 1 within 32 bits.
        Bucket((u64::from(tag) << 32) | (slot as u64 + 1))
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn tag(self) -> u32 {
        (self.0 >> 32) as u32
    }

    fn slot(self) -> usize {
        (self.0 as u32 as usize).wrapping_sub(1)
    }
}

/// Index buckets for `entries` entries: a load of at most 2/3 (at 3/4,
/// removals, which shift back the rest of a run, cost a fifth more), and
/// always one empty bucket to end a probe.
fn index_len(entries: usize) -> usize {
    entries + entries / 2 + 1
}

/// One shard: see the module documentation.
struct Shard<K, V> {
    /// The most entries it holds.
    capacity: usize,
    entries: Vec<Entry<K, V>>,
    index: Box<[u64]>,
    referenced: Box<[u64]>,
    hand: usize,
}

impl<K: Eq, V> Shard<K, V> {
    /// An empty shard for up to `capacity` entries.
    fn new(capacity: usize) -> Self {
        assert!(
            index_len(capacity) <= u32::MAX as usize,
            "a shard's positions must fit a bucket"
        );
        Shard {
            capacity,
            entries: Vec::new(),
            index: vec![0; index_len(0)].into_boxed_slice(),
            referenced: vec![0; capacity.div_ceil(64)].into_boxed_slice(),
            hand: 0,
        }
    }

    /// The bucket a tag belongs in: the tag scaled to the index's length
    /// (a multiply and a shift, for any length).
    fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.index.len() as u64) >> 32) as usize
    }

    fn next(&self, bucket: usize) -> usize {
        if bucket + 1 == self.index.len() {
            0
        } else {
            bucket + 1
        }
    }

    /// How far `to` is past `from`, going round the index.
    fn distance(&self, from: usize, to: usize) -> usize {
        if to >= from {
            to - from
        } else {
            to + self.index.len() - from
        }
    }

    fn bucket(&self, at: usize) -> Bucket {
        Bucket(self.index[at])
    }

    /// The first bucket from `tag`'s home on that has the tag and for
    /// which `hit` holds, or else the empty bucket that ends the run (Err;
    /// there always is one: the index has more buckets than entries).
    fn probe(&self, tag: u32, mut hit: impl FnMut(Bucket) -> bool) -> Result<usize, usize> {
        let mut at = self.home(tag);
        loop {
            let bucket = self.bucket(at);
            if bucket.is_empty() {
                return Err(at);
            }
            if bucket.tag() == tag && hit(bucket) {
                return Ok(at);
            }
            at = self.next(at);
        }
    }

    /// The position of `key`'s entry, if it is here.
    fn find(&self, tag: u32, key: &K) -> Option<usize> {
        let at = self
            .probe(tag, |b| self.entries[b.slot()].key == *key)
            .ok()?;
        Some(self.bucket(at).slot())
    }

    /// The position of `key`'s entry, marked as used, if it is here.
    fn get(&mut self, tag: u32, key: &K) -> Option<usize> {
        let slot = self.find(tag, key)?;
        self.set_referenced(slot, true);
        Some(slot)
    }

    /// The index bucket of the entry at `slot`, whose key has `tag`.
    fn bucket_of(&self, tag: u32, slot: usize) -> Option<usize> {
        self.probe(tag, |b| b.slot() == slot).ok()
    }

    /// Index the entry at `slot` under `tag`.
    fn link(&mut self, tag: u32, slot: usize) {
        if let Err(empty) = self.probe(tag, |_| false) {
            self.index[empty] = Bucket::new(tag, slot).0;
        }
    }

    /// Insert an absent key, in free room or else in place of the entry
    /// the CLOCK hand picks; returns its position and whether an entry was
    /// evicted. `tag_of` tags the evicted key.
    fn insert(&mut self, tag: u32, key: K, value: V, tag_of: impl Fn(&K) -> u32) -> (usize, bool) {
        let entry = Entry { key, value };
        let evicted = self.entries.len() >= self.capacity;
        let slot = if evicted {
            let victim = self.clock_victim();
            self.unlink(tag_of(&self.entries[victim].key), victim);
            self.entries[victim] = entry;
            victim
        } else {
            self.grow();
            self.entries.push(entry);
            self.entries.len() - 1
        };
        self.link(tag, slot);
        (slot, evicted)
    }

    /// Make room for one more entry, if need be by doubling the entries
    /// and the index, up to what a full shard needs: never more.
    fn grow(&mut self) {
        let wanted = self.entries.len() + 1;
        if wanted <= self.entries.capacity() && index_len(wanted) <= self.index.len() {
            return;
        }
        // At least `wanted`: `insert` grows only a shard that is not full.
        let room = (2 * self.entries.len()).max(8).min(self.capacity);
        self.entries.reserve_exact(room - self.entries.len());
        if index_len(wanted) > self.index.len() {
            let old =
                std::mem::replace(&mut self.index, vec![0; index_len(room)].into_boxed_slice());
            for bucket in old.iter().map(|&b| Bucket(b)).filter(|b| !b.is_empty()) {
                self.link(bucket.tag(), bucket.slot());
            }
        }
    }

    /// Advance the hand past entries used since it last passed (taking
    /// their mark) to the first that was not, and return that one.
    fn clock_victim(&mut self) -> usize {
        loop {
            let at = self.hand;
            self.hand = if at + 1 >= self.entries.len() {
                0
            } else {
                at + 1
            };
            if !self.take_referenced(at) {
                return at;
            }
        }
    }

    /// Remove the entry at `slot`, moving the last one into its place.
    /// `tag_of` tags the keys whose buckets change.
    fn remove(&mut self, slot: usize, tag_of: impl Fn(&K) -> u32) {
        self.unlink(tag_of(&self.entries[slot].key), slot);
        let last = self.entries.len() - 1;
        let used = self.take_referenced(last);
        if slot != last {
            let tag = tag_of(&self.entries[last].key);
            if let Some(at) = self.bucket_of(tag, last) {
                self.index[at] = Bucket::new(tag, slot).0;
            }
            self.set_referenced(slot, used);
        }
        self.entries.swap_remove(slot);
        if self.hand >= self.entries.len() {
            self.hand = 0;
        }
    }

    /// Empty the bucket of the entry at `slot`, then shift back each later
    /// bucket of its run that may sit nearer its home, so that no key is
    /// cut off from its home by the gap.
    fn unlink(&mut self, tag: u32, slot: usize) {
        let Some(mut hole) = self.bucket_of(tag, slot) else {
            debug_assert!(false, "entry {slot} is not indexed");
            return;
        };
        let mut at = hole;
        loop {
            at = self.next(at);
            let bucket = self.bucket(at);
            if bucket.is_empty() {
                break;
            }
            let home = self.home(bucket.tag());
            if self.distance(home, hole) < self.distance(home, at) {
                self.index[hole] = bucket.0;
                hole = at;
            }
        }
        self.index[hole] = 0;
    }

    fn set_referenced(&mut self, slot: usize, used: bool) {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if used {
            self.referenced[word] |= bit;
        } else {
            self.referenced[word] &= !bit;
        }
    }

    fn take_referenced(&mut self, slot: usize) -> bool {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        let was = self.referenced[word] & bit != 0;
        self.referenced[word] &= !bit;
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A small deterministic generator (xorshift), for repeatable tests.
    fn rng(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Every entry is found from its tag's home, every bucket names an
    /// entry of its tag, and CLOCK marks exist only for entries.
    fn assert_consistent(shard: &Shard<u32, u32>, tag_of: impl Fn(&u32) -> u32) {
        for (slot, entry) in shard.entries.iter().enumerate() {
            let tag = tag_of(&entry.key);
            let at = shard.probe(tag, |b| shard.entries[b.slot()].key == entry.key);
            assert_eq!(
                at.map(|at| shard.bucket(at).slot()),
                Ok(slot),
                "{}",
                entry.key
            );
        }
        let used: Vec<Bucket> = shard
            .index
            .iter()
            .map(|&b| Bucket(b))
            .filter(|b| !b.is_empty())
            .collect();
        assert_eq!(used.len(), shard.entries.len());
        for b in used {
            assert_eq!(tag_of(&shard.entries[b.slot()].key), b.tag());
        }
        for slot in shard.entries.len()..shard.referenced.len() * 64 {
            assert_eq!(shard.referenced[slot / 64] & (1 << (slot % 64)), 0);
        }
    }

    #[test]
    fn clock_gives_used_entries_a_second_chance() {
        let mut shard: Shard<u32, u32> = Shard::new(4);
        let tag_of = |k: &u32| k.wrapping_mul(0x9e37_79b9);
        for k in 1..=4 {
            assert_eq!(
                shard.insert(tag_of(&k), k, k, tag_of),
                ((k - 1) as usize, false)
            );
        }
        // 1 and 3 come back; 2 and 4 do not.
        assert!(shard.get(tag_of(&1), &1).is_some());
        assert!(shard.get(tag_of(&3), &3).is_some());
        // The hand passes 1 (taking its mark) and evicts 2.
        assert_eq!(shard.insert(tag_of(&5), 5, 5, tag_of), (1, true));
        // Then passes 3, evicts 4.
        assert_eq!(shard.insert(tag_of(&6), 6, 6, tag_of), (3, true));
        // 1 and 3 have had their second chance: back at 1, unmarked since
        // the hand passed, the hand evicts it.
        assert_eq!(shard.insert(tag_of(&7), 7, 7, tag_of), (0, true));
        let mut held: Vec<u32> = shard.entries.iter().map(|e| e.key).collect();
        held.sort_unstable();
        assert_eq!(held, [3, 5, 6, 7]);
        assert!(shard.get(tag_of(&2), &2).is_none());
        assert_consistent(&shard, tag_of);
    }

    #[test]
    fn the_index_stays_consistent_under_collisions_and_wraparound() {
        // Few tags, one of them homed at the last bucket, so runs are long
        // and wrap round the end of the index; random inserts, lookups,
        // removals and evictions, checked against a model after each.
        let tags = [0, 1, u32::MAX, u32::MAX - 1, 1 << 31];
        let tag_of = |k: &u32| tags[*k as usize % tags.len()];
        let mut next = rng(7);
        let capacity = 40;
        let mut shard: Shard<u32, u32> = Shard::new(capacity);
        let mut model: HashMap<u32, u32> = HashMap::new();
        for step in 0..20_000u32 {
            let key = (next() % 120) as u32;
            let tag = tag_of(&key);
            match next() % 4 {
                0 | 1 => match shard.get(tag, &key) {
                    Some(slot) => {
                        assert_eq!(Some(&shard.entries[slot].value), model.get(&key));
                        shard.entries[slot].value = step;
                        model.insert(key, step);
                    }
                    None => {
                        assert!(!model.contains_key(&key), "{key} lost");
                        let (slot, evicted) = shard.insert(tag, key, step, tag_of);
                        assert_eq!(shard.entries[slot].key, key);
                        assert_eq!(evicted, model.len() == capacity);
                        model.insert(key, step);
                        if evicted {
                            model.retain(|k, _| shard.entries.iter().any(|e| e.key == *k));
                        }
                    }
                },
                2 => {
                    if let Some(slot) = shard.get(tag, &key) {
                        shard.remove(slot, tag_of);
                        model.remove(&key);
                    }
                }
                _ => assert_eq!(shard.get(tag, &key).is_some(), model.contains_key(&key)),
            }
            assert_eq!(shard.entries.len(), model.len());
            assert!(shard.hand < shard.entries.len().max(1));
            assert_consistent(&shard, tag_of);
        }
    }

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
            if i % 1000 == 0 {
                assert!(map.len() <= map.capacity());
            }
        }
        for r in &regulars {
            assert_eq!(map.peek(r, |v| *v), Some(visits), "regular {r} was evicted");
        }
        assert!(map.evictions() >= 2_000_000 - map.capacity() as u64);
    }

    #[test]
    fn follow_up_updates_give_newcomers_no_second_chance() {
        // Each flood key's request is followed by an update (its
        // response): were that a use, every newcomer would get a second
        // chance and regulars coming back every 6,000 newcomers would be
        // evicted.
        let map: BoundedMap<u64, u32> = BoundedMap::new(10_000);
        let regulars: Vec<u64> = (0..200).map(|i| u64::MAX - i).collect();
        let mut visits = 0u32;
        for i in 0..1_200_000u64 {
            map.with(i, || 0, |v| *v += 1);
            assert_eq!(map.update(&i, |v| *v), Some(1));
            if i % 6_000 == 0 {
                for r in &regulars {
                    map.with(*r, || 0, |v| *v += 1);
                }
                visits += 1;
            }
        }
        for r in &regulars {
            assert_eq!(map.peek(r, |v| *v), Some(visits), "regular {r} was evicted");
        }
        assert_eq!(map.update(&u64::MAX.wrapping_sub(1_000), |v| *v), None);
        assert!(
            map.peek(&u64::MAX.wrapping_sub(1_000), |_| ()).is_none(),
            "nothing inserted"
        );
    }

    #[test]
    fn a_flood_fills_the_map_once_and_never_grows_it() {
        // A shard's memory grows with its entries to exactly what a full
        // shard needs; a flood of new keys (an IP-rotation attack) fills
        // it, then only replaces entries.
        let map: BoundedMap<u64, [u64; 8]> = BoundedMap::new(6_400);
        let sizes = |map: &BoundedMap<u64, [u64; 8]>| -> Vec<(usize, usize, usize)> {
            map.shards
                .iter()
                .map(|s| {
                    let s = s.lock().unwrap();
                    (s.entries.capacity(), s.index.len(), s.referenced.len())
                })
                .collect()
        };
        assert!(
            sizes(&map)
                .iter()
                .all(|&(entries, index, _)| entries == 0 && index == 1)
        );
        let mut next = rng(11);
        let mut full = Vec::new();
        for round in 1..=5u64 {
            for _ in 0..map.capacity() * 2 {
                map.with(next(), || [round; 8], |_| ());
            }
            assert_eq!(map.len(), map.capacity(), "full after round {round}");
            if round == 1 {
                full = sizes(&map);
                assert!(
                    full.iter().all(|&s| s == (100, index_len(100), 2)),
                    "{full:?}"
                );
            }
            assert_eq!(sizes(&map), full, "grown in round {round}");
        }
        assert_eq!(map.evictions(), 9 * map.capacity() as u64);
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
    fn retain_in_a_full_map_then_eviction_resumes() {
        // Expiry empties part of a full map; new keys take the room (an
        // entry is evicted only where a shard is full again), then the
        // map fills and evicts as before.
        let map: BoundedMap<u32, u32> = BoundedMap::new(640);
        let assert_all_consistent = |map: &BoundedMap<u32, u32>| {
            for shard in map.shards.iter() {
                assert_consistent(&shard.lock().unwrap(), |k| map.tag(k));
            }
        };
        for k in 0..5_000 {
            map.with(k, || k, |_| ());
        }
        assert_eq!(map.len(), 640);
        let gone = map.retain(|v| v % 2 == 0);
        assert!(gone > 0);
        assert_eq!(map.len(), 640 - gone);
        assert_all_consistent(&map);
        let evicted = map.evictions();
        for k in 5_000..5_000 + gone as u32 {
            map.with(k, || k, |_| ());
        }
        assert_eq!(map.len() as u64 + (map.evictions() - evicted), 640);
        assert_all_consistent(&map);
        for k in 10_000..20_000 {
            map.with(k, || k, |_| ());
        }
        assert_eq!(map.len(), 640);
        assert_all_consistent(&map);
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
                assert!(!map.remove_if(&i, |_| false));
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

    #[test]
    fn a_client_entry_is_128_bytes() {
        use crate::state::{ClientKey, ClientRecord};
        assert_eq!(std::mem::size_of::<Entry<ClientKey, ClientRecord>>(), 128);
    }
}
