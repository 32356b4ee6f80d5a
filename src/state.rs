//! Client state: what usher remembers about each client between requests,
//! keyed by client address (IPv6 by /64, since one host usually holds a
//! whole /64). Bounded: a fixed number of clients, the least recently seen
//! evicted first (CLOCK), so an address-rotation flood costs a fixed amount
//! of memory. Locks are per shard and never held across an `.await`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shards of the store; a power of two.
const SHARDS: usize = 64;

/// The window of the failed-authentication count, in seconds.
pub const AUTH_FAILURE_WINDOW: u32 = 300;

/// Who a record is about: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    /// The key of a client address.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => ClientKey(u128::from(v6) & !((1u128 << 64) - 1)),
        }
    }
}

/// An approximate sliding-window counter: the current fixed window plus
/// the previous one, weighted by how much of it still overlaps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowCounter {
    start: u32,
    current: u32,
    previous: u32,
}

impl WindowCounter {
    /// Count one event at `now` (Unix seconds).
    pub fn add(&mut self, now: u32, window: u32) {
        self.roll(now, window);
        self.current = self.current.saturating_add(1);
    }

    /// Events in the `window` seconds before `now`, approximately.
    pub fn count(&self, now: u32, window: u32) -> u32 {
        let mut c = *self;
        c.roll(now, window);
        let into = now.saturating_sub(c.start) as f64 / window as f64;
        let earlier = f64::from(c.previous) * (1.0 - into.clamp(0.0, 1.0));
        c.current.saturating_add(earlier as u32)
    }

    fn roll(&mut self, now: u32, window: u32) {
        let start = now - now % window.max(1);
        if start == self.start {
            return;
        }
        self.previous = if start == self.start.saturating_add(window) {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.start = start;
    }
}

/// What is remembered about one client.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientRecord {
    /// Credentials presented that failed verification.
    pub auth_failures: WindowCounter,
}

struct Entry {
    key: ClientKey,
    record: ClientRecord,
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    index: HashMap<ClientKey, usize, RandomState>,
    entries: Vec<Entry>,
    hand: usize,
}

/// All clients' records, bounded.
pub struct ClientStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
    evictions: AtomicU64,
}

impl std::fmt::Debug for ClientStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStore")
            .field("capacity", &(self.per_shard * SHARDS))
            .finish()
    }
}

impl ClientStore {
    /// A store for about `capacity` clients.
    pub fn new(capacity: usize) -> Self {
        ClientStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            evictions: AtomicU64::new(0),
        }
    }

    /// Update a client's record (creating it, evicting another if full)
    /// and return a copy of it.
    pub fn update(&self, key: ClientKey, change: impl FnOnce(&mut ClientRecord)) -> ClientRecord {
        let shard = &self.shards[self.hasher.hash_one(key) as usize & (SHARDS - 1)];
        // A poisoned shard only means another request panicked mid-update
        // of plain counters; the data is still usable.
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match shard.index.get(&key) {
            Some(&slot) => slot,
            None => self.insert(&mut shard, key),
        };
        let entry = &mut shard.entries[slot];
        entry.referenced = true;
        change(&mut entry.record);
        entry.record
    }

    /// A copy of a client's record, if it is remembered.
    pub fn get(&self, key: ClientKey) -> Option<ClientRecord> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize & (SHARDS - 1)];
        let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        shard
            .index
            .get(&key)
            .map(|&slot| shard.entries[slot].record)
    }

    fn insert(&self, shard: &mut Shard, key: ClientKey) -> usize {
        let entry = Entry {
            key,
            record: ClientRecord::default(),
            referenced: false,
        };
        if shard.entries.len() < self.per_shard {
            shard.entries.push(entry);
            let slot = shard.entries.len() - 1;
            shard.index.insert(key, slot);
            return slot;
        }
        // CLOCK: sweep past recently used entries (clearing their mark) to
        // the first one not used since the last sweep.
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

    /// Clients remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most clients remembered at once.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Records evicted to make room, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn ipv6_clients_are_keyed_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ClientKey::of(v4), ClientKey::of(mapped));
        assert_ne!(
            ClientKey::of(v4),
            ClientKey::of("192.0.2.2".parse().unwrap())
        );
    }

    #[test]
    fn window_counter_slides() {
        let mut c = WindowCounter::default();
        for t in 1000..1010 {
            c.add(t, 60);
        }
        assert_eq!(c.count(1010, 60), 10);
        // Half way into the next window, half the old window still counts.
        let next = 1020 + 30;
        assert_eq!(c.count(next, 60), 5);
        assert_eq!(c.count(1200, 60), 0, "two windows later nothing is left");
        c.add(5000, 60);
        assert_eq!(c.count(5000, 60), 1);
    }

    #[test]
    fn records_are_per_client() {
        let store = ClientStore::new(1000);
        let a = ClientKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let b = ClientKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        for t in 0..5 {
            store.update(a, |r| r.auth_failures.add(100 + t, AUTH_FAILURE_WINDOW));
        }
        assert_eq!(
            store
                .get(a)
                .unwrap()
                .auth_failures
                .count(110, AUTH_FAILURE_WINDOW),
            5
        );
        assert!(store.get(b).is_none());
    }

    #[test]
    fn a_flood_of_new_addresses_stays_within_capacity() {
        let store = ClientStore::new(10_000);
        let regular = ClientKey::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        for i in 0..2_000_000u32 {
            let ip = IpAddr::V6(Ipv6Addr::from(u128::from(i) << 64));
            store.update(ClientKey::of(ip), |r| r.auth_failures.add(1, 60));
            if i % 1000 == 0 {
                store.update(regular, |r| r.auth_failures.add(1, 60));
            }
        }
        assert!(store.len() <= store.capacity());
        assert!(store.capacity() < 10_100);
        assert!(store.evictions() >= 2_000_000 - store.capacity() as u64);
        assert!(
            store.get(regular).is_some(),
            "a client seen often survives the flood"
        );
    }
}
