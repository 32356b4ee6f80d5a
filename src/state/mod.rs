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

/// An estimate of how many distinct items (paths) a client asked for in a
/// sliding window, in fixed space: a 128-bit linear-counting bitmap for the
/// current fixed window, and the previous window's estimate, weighted by
/// how much of it still overlaps. Accurate to about 10% up to a few hundred
/// items; saturates near 620.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DistinctSketch {
    start: u32,
    previous: u16,
    bits: [u64; 2],
}

impl DistinctSketch {
    /// Bits in the bitmap.
    const BITS: u32 = 128;

    /// Note an item, by its hash, at `now` (Unix seconds).
    pub fn add(&mut self, now: u32, window: u32, hash: u64) {
        self.roll(now, window);
        let bit = (hash % u64::from(Self::BITS)) as usize;
        self.bits[bit / 64] |= 1 << (bit % 64);
    }

    /// Distinct items in the `window` seconds before `now`, approximately.
    pub fn count(&self, now: u32, window: u32) -> u32 {
        let mut c = *self;
        c.roll(now, window);
        let now = now.max(c.start);
        let into = f64::from(now - c.start + 1) / f64::from(window.max(1));
        let earlier = f64::from(c.previous) * (1.0 - into.clamp(0.0, 1.0));
        Self::estimate(c.bits).saturating_add(earlier.ceil() as u32)
    }

    /// Linear counting: with `z` of `m` bits still clear, about
    /// `m ln(m / z)` distinct items were added.
    fn estimate(bits: [u64; 2]) -> u32 {
        let m = f64::from(Self::BITS);
        let set = bits[0].count_ones() + bits[1].count_ones();
        let clear = f64::from(Self::BITS - set).max(0.5);
        (m * (m / clear).ln()).round() as u32
    }

    fn roll(&mut self, now: u32, window: u32) {
        let now = now.max(self.start);
        let start = now - now % window.max(1);
        if start == self.start {
            return;
        }
        self.previous = if start == self.start.saturating_add(window) {
            u16::try_from(Self::estimate(self.bits)).unwrap_or(u16::MAX)
        } else {
            0
        };
        self.bits = [0; 2];
        self.start = start;
    }
}

/// How regular a client's requests are: exponentially weighted mean and
/// variance of the gaps between them (milliseconds). Bots are metronomes;
/// people pause, read and burst.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cadence {
    last_ms: u64,
    mean: f32,
    var: f32,
    gaps: u16,
}

impl Cadence {
    /// Weight of the newest gap.
    const ALPHA: f32 = 0.1;
    /// A gap longer than this starts over (a new visit).
    const RESET_MS: u64 = 300_000;
    /// Gaps needed before the cadence means anything.
    pub const MIN_GAPS: u16 = 10;

    /// Note a request at `now_ms` (Unix milliseconds).
    pub fn add(&mut self, now_ms: u64) {
        if self.last_ms == 0 {
            self.last_ms = now_ms;
            return;
        }
        // Out-of-order arrivals count as simultaneous.
        let gap = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        if gap > Self::RESET_MS {
            *self = Cadence {
                last_ms: self.last_ms,
                ..Cadence::default()
            };
            return;
        }
        let gap = gap as f32;
        if self.gaps == 0 {
            self.mean = gap;
            self.var = 0.0;
        } else {
            let d = gap - self.mean;
            self.mean += Self::ALPHA * d;
            self.var = (1.0 - Self::ALPHA) * (self.var + Self::ALPHA * d * d);
        }
        self.gaps = self.gaps.saturating_add(1);
    }

    /// The coefficient of variation of the gaps (standard deviation over
    /// mean): near 0 for a metronome, around 1 or more for a person. None
    /// until enough gaps were seen, or when they average under a
    /// millisecond.
    pub fn variation(&self) -> Option<f32> {
        (self.gaps >= Self::MIN_GAPS && self.mean >= 1.0).then(|| self.var.sqrt() / self.mean)
    }
}

/// The windows of the request-rate counters, in seconds.
pub const RATE_WINDOWS: [u32; 4] = [1, 10, 60, 300];

/// The window of the response-status counters, in seconds.
pub const STATUS_WINDOW: u32 = 60;

/// The window of the distinct-paths sketch, in seconds.
pub const PATHS_WINDOW: u32 = 60;

/// What is remembered about one client (at most 160 bytes; a test holds
/// it to that).
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
    /// Distinct request targets (path and query), over 60 s.
    pub paths: DistinctSketch,
    /// The rhythm of its requests.
    pub cadence: Cadence,
}

impl ClientRecord {
    /// Count a request at `now_ms` (Unix milliseconds) for a target
    /// whose hash is `target`.
    pub fn add_request(&mut self, now_ms: u64, target: u64) {
        let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        for (counter, window) in self.requests.iter_mut().zip(RATE_WINDOWS) {
            counter.add(now, window);
        }
        self.paths.add(now, PATHS_WINDOW, target);
        self.cadence.add(now_ms);
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

impl ClientRecord {
    /// Whether nothing it remembers still counts at `now` (Unix seconds):
    /// no request and no failed credential within the longest window.
    pub fn is_idle(&self, now: u32) -> bool {
        self.requests[RATE_WINDOWS.len() - 1].count(now, RATE_WINDOWS[RATE_WINDOWS.len() - 1]) == 0
            && self.auth_failures.count(now, AUTH_FAILURE_WINDOW) == 0
    }
}

/// Forget the clients that have been idle past the longest window, so
/// `len()` counts the clients active lately rather than every client since
/// start; returns how many were forgotten.
pub fn expire_idle(store: &ClientStore, now: std::time::SystemTime) -> usize {
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    store.retain(|record| !record.is_idle(now))
}

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
    fn distinct_paths_are_estimated_in_fixed_space() {
        let hash = |i: u64| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            format!("/products/{i}").hash(&mut h);
            h.finish()
        };
        let mut s = DistinctSketch::default();
        let t = 6_000;
        for i in 0..100 {
            s.add(t, 60, hash(i));
            // The same path again adds nothing.
            s.add(t, 60, hash(i));
        }
        let n = s.count(t, 60);
        assert!((80..=120).contains(&n), "100 paths estimated as {n}");
        let mut one = DistinctSketch::default();
        for _ in 0..500 {
            one.add(t, 60, hash(7));
        }
        assert_eq!(one.count(t, 60), 1);
        // The previous window fades out over the next one.
        assert!(s.count(t + 60, 60) >= 80);
        assert!(s.count(t + 90, 60) < 60);
        assert_eq!(s.count(t + 180, 60), 0);
        // Saturation is bounded, not an overflow.
        for i in 0..100_000 {
            s.add(t, 60, hash(i));
        }
        assert!(s.count(t, 60) < 1_000);
    }

    #[test]
    fn cadence_tells_a_metronome_from_a_person() {
        let mut bot = Cadence::default();
        let mut person = Cadence::default();
        let mut t = 1_700_000_000_000u64;
        let mut p = t;
        // A person: bursts of page assets, then reading.
        let pauses = [3, 40, 2, 5, 900, 4, 12_000, 6, 3, 25_000, 8, 2, 7_000, 3];
        for i in 0..40 {
            t += 1000 + (i % 3);
            bot.add(t);
            p += pauses[i as usize % pauses.len()];
            person.add(p);
        }
        let bot_cv = bot.variation().unwrap();
        let person_cv = person.variation().unwrap();
        assert!(bot_cv < 0.05, "metronome cv {bot_cv}");
        assert!(person_cv > 0.8, "person cv {person_cv}");
        // Too few gaps: unknown.
        let mut new = Cadence::default();
        for i in 0..5 {
            new.add(1_000 + i * 1000);
        }
        assert_eq!(new.variation(), None);
        // A long pause starts over; time going backwards is no gap.
        bot.add(t + 3_600_000);
        assert_eq!(bot.variation(), None);
        bot.add(t);
        assert_eq!(bot.variation(), None);
    }

    #[test]
    fn a_client_record_stays_small() {
        // The state's memory is capacity × this (plus the map's own).
        assert!(std::mem::size_of::<ClientRecord>() <= 160);
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

    #[test]
    fn idle_clients_are_forgotten_after_the_longest_window_and_no_sooner() {
        use std::time::{Duration, UNIX_EPOCH};
        let store = ClientStore::new(1000);
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let key = |i: u8| ClientKey::of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)));
        // A visitor at t=10 000, a failed login at 10 000 (and no request
        // counted since), and a client still busy at 10 290.
        update_client(&store, key(1), |r| r.add_request(10_000_000, 1));
        update_client(&store, key(2), |r| {
            r.auth_failures.add(10_000, AUTH_FAILURE_WINDOW)
        });
        update_client(&store, key(3), |r| r.add_request(10_290_000, 1));
        assert_eq!(expire_idle(&store, at(10_299)), 0, "all within 5 min");
        assert_eq!(store.len(), 3);
        assert_eq!(expire_idle(&store, at(10_600)), 2);
        assert!(client(&store, key(1)).is_none());
        assert!(client(&store, key(2)).is_none());
        assert!(
            client(&store, key(3)).is_some(),
            "active 310 s ago: window not over"
        );
        assert_eq!(expire_idle(&store, at(10_900)), 1);
        assert!(store.is_empty());
    }
}
