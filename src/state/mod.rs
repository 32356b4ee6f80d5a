//! Client state: what usher remembers about each client between requests,
//! keyed by client address (IPv6 by /64, since one host usually holds a
//! whole /64). Bounded: a fixed number of clients, the least recently seen
//! evicted first (CLOCK), so an address-rotation flood costs a fixed amount
//! of memory. Locks are per shard and never held across an `.await`.

pub mod bounded;

use std::net::IpAddr;

pub use bounded::BoundedMap;

/// The window of the failed-authentication count, in seconds.
pub const AUTH_FAILURE_WINDOW: u32 = 300;

/// Who a record is about: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    /// The key of a verified subject, apart from every address key: IPv4
    /// keys have their high 64 bits zero, IPv6 keys (a /64) their low 64
    /// bits zero; a subject's key has both halves non-zero.
    pub fn of_subject(subject: &str) -> Self {
        use std::hash::{BuildHasher, Hasher};
        // A fixed-key hash: the same subject keys the same record in
        // every run and replica.
        let hash = |seed: u64| {
            let mut h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
            h.write_u64(seed);
            h.write(subject.as_bytes());
            h.finish()
        };
        let high = u128::from(hash(0x0075_7368_6572) | 1) << 64;
        ClientKey(high | u128::from(hash(0x7375_626a) | 1))
    }

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

    /// Events in the `window` seconds before `now`, approximately: the
    /// previous window's events are assumed evenly spread, so a burst late
    /// in it is under-counted by at most that burst (rounded up, so a lone
    /// event never vanishes early).
    pub fn count(&self, now: u32, window: u32) -> u32 {
        let mut c = *self;
        c.roll(now, window);
        let now = now.max(c.start);
        // Seconds are whole: at `start` the current window already covers
        // one second, so the previous one overlaps by window - 1.
        let into = f64::from(now - c.start + 1) / f64::from(window.max(1));
        let earlier = f64::from(c.previous) * (1.0 - into.clamp(0.0, 1.0));
        c.current.saturating_add(earlier.ceil() as u32)
    }

    fn roll(&mut self, now: u32, window: u32) {
        // Time never runs backwards for a counter: a late event (out of
        // order in a log, or from a request that waited) counts as now.
        let now = now.max(self.start);
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

/// The windows of the request-rate counters, in seconds.
pub const RATE_WINDOWS: [u32; 4] = [1, 10, 60, 300];

/// The window of the response-status counters, in seconds.
pub const STATUS_WINDOW: u32 = 60;

/// What is remembered about one client (about 110 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientRecord {
    /// Requests, over 1 s, 10 s, 60 s and 5 min.
    pub requests: [WindowCounter; 4],
    /// Upstream answers with a 4xx status, over 60 s.
    pub status_4xx: WindowCounter,
    /// Upstream answers with 404, over 60 s.
    pub status_404: WindowCounter,
    /// Upstream answers with 401 or 403, over 60 s.
    pub status_auth: WindowCounter,
    /// Upstream answers, over 60 s (the denominator of ratios).
    pub answered: WindowCounter,
    /// Credentials presented that failed verification.
    pub auth_failures: WindowCounter,
}

impl ClientRecord {
    /// Count a request at `now`.
    pub fn add_request(&mut self, now: u32) {
        for (counter, window) in self.requests.iter_mut().zip(RATE_WINDOWS) {
            counter.add(now, window);
        }
    }

    /// Count an upstream answer at `now`.
    pub fn add_status(&mut self, now: u32, status: u16) {
        self.answered.add(now, STATUS_WINDOW);
        if (400..500).contains(&status) {
            self.status_4xx.add(now, STATUS_WINDOW);
        }
        if status == 404 {
            self.status_404.add(now, STATUS_WINDOW);
        }
        if status == 401 || status == 403 {
            self.status_auth.add(now, STATUS_WINDOW);
        }
    }
}

/// All clients' records, bounded.
pub type ClientStore = BoundedMap<ClientKey, ClientRecord>;

/// The record of a client, updated.
pub fn update_client(
    store: &ClientStore,
    key: ClientKey,
    change: impl FnOnce(&mut ClientRecord),
) -> ClientRecord {
    store.with(key, ClientRecord::default, |r| {
        change(r);
        *r
    })
}

/// A copy of a client's record, if it is remembered.
pub fn client(store: &ClientStore, key: ClientKey) -> Option<ClientRecord> {
    store.peek(&key, |r| *r)
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
    fn subject_keys_are_stable_and_apart_from_addresses() {
        assert_eq!(
            ClientKey::of_subject("alice"),
            ClientKey::of_subject("alice")
        );
        assert_ne!(ClientKey::of_subject("alice"), ClientKey::of_subject("bob"));
        let v4 = ClientKey::of("192.0.2.1".parse().unwrap());
        let v6 = ClientKey::of("2001:db8::1".parse().unwrap());
        assert_eq!(v4.0 >> 64, 0);
        assert_eq!(v6.0 as u64, 0);
        let alice = ClientKey::of_subject("alice").0;
        assert_ne!(alice >> 64, 0);
        assert_ne!(alice as u64, 0);
    }

    #[test]
    fn window_counter_slides() {
        let mut c = WindowCounter::default();
        for t in 1000..1010 {
            c.add(t, 60);
        }
        assert_eq!(c.count(1010, 60), 10);
        // Half way into the next window, about half the old window still
        // counts.
        let next = 1020 + 30;
        assert_eq!(c.count(next, 60), 5);
        // A steady rate is counted once, not twice.
        let mut steady = WindowCounter::default();
        for t in 0..100 {
            for _ in 0..10 {
                steady.add(t, 1);
            }
        }
        assert_eq!(steady.count(99, 1), 10, "10 req/s is 10 in the last second");
        let mut steady10 = WindowCounter::default();
        for t in 0..100 {
            for _ in 0..10 {
                steady10.add(t, 10);
            }
        }
        assert_eq!(steady10.count(99, 10), 100);
        assert_eq!(c.count(1200, 60), 0, "two windows later nothing is left");
        let mut late = WindowCounter::default();
        for _ in 0..5 {
            late.add(600, 300);
        }
        late.add(599, 300);
        assert_eq!(
            late.count(601, 300),
            6,
            "an out-of-order event does not wipe the count"
        );
        let mut one = WindowCounter::default();
        one.add(299, 300);
        assert_eq!(
            one.count(598, 300),
            1,
            "rounded up: a lone event lasts its window"
        );
        c.add(5000, 60);
        assert_eq!(c.count(5000, 60), 1);
    }

    #[test]
    fn records_are_per_client() {
        let store = ClientStore::new(1000);
        let a = ClientKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let b = ClientKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        for t in 0..5 {
            update_client(&store, a, |r| {
                r.auth_failures.add(100 + t, AUTH_FAILURE_WINDOW)
            });
        }
        assert_eq!(
            client(&store, a)
                .unwrap()
                .auth_failures
                .count(110, AUTH_FAILURE_WINDOW),
            5
        );
        assert!(client(&store, b).is_none());
        let v6: IpAddr = Ipv6Addr::LOCALHOST.into();
        assert!(client(&store, ClientKey::of(v6)).is_none());
    }
}
