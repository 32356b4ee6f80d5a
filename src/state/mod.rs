//! Client state: what usher remembers about each client between requests,
//! keyed by client address (IPv6 by /64, since one host usually holds a
//! whole /64). Bounded: a fixed number of clients, the least recently seen
//! evicted first (CLOCK), so an address-rotation flood costs a fixed amount
//! of memory. Locks are per shard and never held across an `.await`.
//!
//! Memory is capacity × about 140 bytes: a [`ClientRecord`] is 112 (all
//! of a record's counts keep their windows on one clock, the record's), a
//! [`ClientKey`] 16, and the map's index about 12 more per entry (see
//! [`bounded`]); `benches/memory.sh` measures RSS per client.

pub mod bounded;
pub mod redis_link;
pub mod shared;

use std::net::IpAddr;

pub use bounded::BoundedMap;

/// Who a record is about: an IPv4 address, or an IPv6 /64. Two 64-bit
/// halves (high, low) rather than a `u128`, so that a map entry holding
/// one aligns to 8 bytes, not 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientKey([u64; 2]);

impl std::hash::Hash for ClientKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(self.bits());
    }
}

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
        ClientKey([hash(0x0075_7368_6572) | 1, hash(0x7375_626a) | 1])
    }

    /// The key of a client address.
    pub fn of(ip: IpAddr) -> Self {
        let bits = match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1),
        };
        ClientKey([(bits >> 64) as u64, bits as u64])
    }

    fn bits(self) -> u128 {
        (u128::from(self.0[0]) << 64) | u128::from(self.0[1])
    }
}

/// The windows of the request-rate counters, in seconds.
pub const RATE_WINDOWS: [u32; 4] = [1, 10, 60, 300];

/// The window of the response-status counters, in seconds.
pub const STATUS_WINDOW: u32 = 60;

/// The window of the distinct-paths sketch, in seconds.
pub const PATHS_WINDOW: u32 = 60;

/// The window of the failed-authentication count, in seconds.
pub const AUTH_FAILURE_WINDOW: u32 = 300;

/// The start of the fixed window of `window` seconds that holds `t`.
fn window_start(t: u32, window: u32) -> u32 {
    t - t % window.max(1)
}

/// Where the fixed window holding `to` stands to the one holding `from`
/// (no later than `to`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shift {
    /// The same window.
    Same,
    /// The next one: the current window becomes the previous one.
    Next,
    /// Later still: both are over.
    Past,
}

impl Shift {
    fn between(from: u32, to: u32, window: u32) -> Shift {
        let (old, new) = (window_start(from, window), window_start(to, window));
        if new == old {
            Shift::Same
        } else if new == old.saturating_add(window) {
            Shift::Next
        } else {
            Shift::Past
        }
    }
}

/// How many of the previous fixed window's `events` still fall within the
/// `window` seconds up to `now`, assuming them evenly spread: a burst
/// late in it is under-counted by at most that burst. Rounded up, so a
/// lone event never vanishes early.
fn overlap(events: u32, now: u32, window: u32) -> u32 {
    let window = window.max(1);
    // Seconds are whole: at a window's start the current window already
    // covers one second, so the previous one overlaps by window - 1.
    let into = f64::from(now % window + 1) / f64::from(window);
    (f64::from(events) * (1.0 - into.clamp(0.0, 1.0))).ceil() as u32
}

/// An approximate sliding-window count: the events of the current fixed
/// window and of the previous one, weighted by how much of it still
/// overlaps. The windows are placed by the clock of the record that holds
/// it (one clock for all of a record's counts: 8 bytes a count, not 12).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Count {
    current: u32,
    previous: u32,
}

impl Count {
    /// The count with its clock moved from `from` to `to` (no earlier).
    fn rolled(self, from: u32, to: u32, window: u32) -> Count {
        match Shift::between(from, to, window) {
            Shift::Same => self,
            Shift::Next => Count {
                current: 0,
                previous: self.current,
            },
            Shift::Past => Count::default(),
        }
    }

    /// Events in the `window` seconds up to `to`, with the clock at `from`
    /// (no later than `to`).
    fn estimate(self, from: u32, to: u32, window: u32) -> u32 {
        let c = self.rolled(from, to, window);
        c.current.saturating_add(overlap(c.previous, to, window))
    }

    fn add(&mut self) {
        self.current = self.current.saturating_add(1);
    }
}

/// An estimate of how many distinct items (paths) a client asked for in a
/// sliding window, in fixed space: a 128-bit linear-counting bitmap for the
/// current fixed window, and the previous window's estimate, weighted by
/// how much of it still overlaps. Accurate to about 10% up to a few hundred
/// items; saturates near 620. Its windows, like a [`Count`]'s, are placed
/// by its record's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct DistinctSketch {
    // 32-bit words: the record stays 4-byte aligned, without padding.
    bits: [u32; 4],
    previous: u16,
}

impl DistinctSketch {
    /// Bits in the bitmap.
    const BITS: u32 = 128;

    /// Note an item, by its hash.
    fn add(&mut self, hash: u64) {
        let bit = (hash % u64::from(Self::BITS)) as usize;
        self.bits[bit / 32] |= 1 << (bit % 32);
    }

    /// The sketch with its clock moved from `from` to `to` (no earlier).
    fn rolled(self, from: u32, to: u32, window: u32) -> DistinctSketch {
        match Shift::between(from, to, window) {
            Shift::Same => self,
            Shift::Next => DistinctSketch {
                bits: [0; 4],
                previous: u16::try_from(self.current()).unwrap_or(u16::MAX),
            },
            Shift::Past => DistinctSketch::default(),
        }
    }

    /// Distinct items in the `window` seconds up to `to`, with the clock
    /// at `from` (no later than `to`), approximately.
    fn estimate(self, from: u32, to: u32, window: u32) -> u32 {
        let s = self.rolled(from, to, window);
        s.current()
            .saturating_add(overlap(u32::from(s.previous), to, window))
    }

    /// Linear counting over the current window: with `z` of `m` bits
    /// still clear, about `m ln(m / z)` distinct items were added.
    fn current(self) -> u32 {
        let m = f64::from(Self::BITS);
        let set: u32 = self.bits.iter().map(|w| w.count_ones()).sum();
        let clear = f64::from(Self::BITS - set).max(0.5);
        (m * (m / clear).ln()).round() as u32
    }
}

/// How regular a client's requests are: exponentially weighted mean and
/// variance of the gaps between them (milliseconds). Bots are metronomes;
/// people pause, read and burst.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Cadence {
    /// The latest request, in Unix seconds and milliseconds (0 and 0: none
    /// yet); split so that the record stays 4-byte aligned.
    last_secs: u32,
    last_millis: u16,
    gaps: u16,
    mean: f32,
    var: f32,
}

impl Cadence {
    /// Weight of the newest gap.
    const ALPHA: f32 = 0.1;
    /// A gap longer than this starts over (a new visit).
    const RESET_MS: u64 = 300_000;
    /// Gaps needed before the cadence means anything.
    const MIN_GAPS: u16 = 10;

    fn last_ms(&self) -> u64 {
        u64::from(self.last_secs) * 1000 + u64::from(self.last_millis)
    }

    fn set_last_ms(&mut self, ms: u64) {
        self.last_secs = u32::try_from(ms / 1000).unwrap_or(u32::MAX);
        self.last_millis = (ms % 1000) as u16;
    }

    /// Note a request at `now_ms` (Unix milliseconds).
    fn add(&mut self, now_ms: u64) {
        let last_ms = self.last_ms();
        if last_ms == 0 {
            self.set_last_ms(now_ms);
            return;
        }
        // Out-of-order arrivals count as simultaneous.
        let gap = now_ms.saturating_sub(last_ms);
        self.set_last_ms(last_ms.max(now_ms));
        if gap > Self::RESET_MS {
            *self = Cadence {
                last_secs: self.last_secs,
                last_millis: self.last_millis,
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
    fn variation(&self) -> Option<f32> {
        (self.gaps >= Self::MIN_GAPS && self.mean >= 1.0).then(|| self.var.sqrt() / self.mean)
    }
}

/// What is remembered about one client, in 112 bytes (a test holds it to
/// that: the state's memory is capacity × (this + its key + about 12
/// bytes of index)).
///
/// Every count keeps its fixed windows on one clock, the record's: the
/// latest second anything was counted. Time never runs backwards for a
/// record: an event stamped earlier (out of order in a log, or from a
/// request that waited) counts as at that second, and so does a reading.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientRecord {
    /// The record's clock, in Unix seconds (0 before the first event).
    clock: u32,
    /// Requests, over [`RATE_WINDOWS`].
    requests: [Count; 4],
    /// Upstream answers over [`STATUS_WINDOW`] (the denominator of
    /// ratios).
    answered: Count,
    /// Of those, with a 4xx status.
    status_4xx: Count,
    /// Of those, 404s.
    status_404: Count,
    /// Of those, 401s and 403s.
    status_auth: Count,
    /// Credentials presented that failed verification, over
    /// [`AUTH_FAILURE_WINDOW`].
    auth_failures: Count,
    /// Distinct request targets (path and query), over [`PATHS_WINDOW`].
    paths: DistinctSketch,
    /// The rhythm of its requests.
    cadence: Cadence,
}

impl ClientRecord {
    /// Move the clock on to `now` if that is later, rolling every window;
    /// returns the second an event at `now` counts at.
    fn advance(&mut self, now: u32) {
        let from = self.clock;
        if now <= from {
            return;
        }
        for (count, window) in self.requests.iter_mut().zip(RATE_WINDOWS) {
            *count = count.rolled(from, now, window);
        }
        for count in [
            &mut self.answered,
            &mut self.status_4xx,
            &mut self.status_404,
            &mut self.status_auth,
        ] {
            *count = count.rolled(from, now, STATUS_WINDOW);
        }
        self.auth_failures = self.auth_failures.rolled(from, now, AUTH_FAILURE_WINDOW);
        self.paths = self.paths.rolled(from, now, PATHS_WINDOW);
        self.clock = now;
    }

    /// The second a reading at `now` is taken at: no earlier than the
    /// clock.
    fn reading(&self, now: u32) -> (u32, u32) {
        (self.clock, now.max(self.clock))
    }

    /// Count a request at `now_ms` (Unix milliseconds) for a target
    /// whose hash is `target`.
    pub fn add_request(&mut self, now_ms: u64, target: u64) {
        self.advance(u32::try_from(now_ms / 1000).unwrap_or(u32::MAX));
        for count in &mut self.requests {
            count.add();
        }
        self.paths.add(target);
        self.cadence.add(now_ms);
    }

    /// Count an upstream answer at `now` (Unix seconds).
    pub fn add_status(&mut self, now: u32, status: u16) {
        self.advance(now);
        self.answered.add();
        if (400..500).contains(&status) {
            self.status_4xx.add();
        }
        if status == 404 {
            self.status_404.add();
        }
        if status == 401 || status == 403 {
            self.status_auth.add();
        }
    }

    /// Count a credential that failed verification, at `now`.
    pub fn add_auth_failure(&mut self, now: u32) {
        self.advance(now);
        self.auth_failures.add();
    }

    /// Requests over each of [`RATE_WINDOWS`] up to `now`.
    pub fn rates(&self, now: u32) -> [u32; 4] {
        let (from, to) = self.reading(now);
        std::array::from_fn(|i| self.requests[i].estimate(from, to, RATE_WINDOWS[i]))
    }

    /// Failed credentials over [`AUTH_FAILURE_WINDOW`] up to `now`.
    pub fn auth_failures(&self, now: u32) -> u32 {
        let (from, to) = self.reading(now);
        self.auth_failures.estimate(from, to, AUTH_FAILURE_WINDOW)
    }

    fn status(&self, count: Count, now: u32) -> u32 {
        let (from, to) = self.reading(now);
        count.estimate(from, to, STATUS_WINDOW)
    }

    /// Upstream answers over [`STATUS_WINDOW`] up to `now`.
    pub fn answered(&self, now: u32) -> u32 {
        self.status(self.answered, now)
    }

    /// Upstream 4xx answers over [`STATUS_WINDOW`] up to `now`.
    pub fn status_4xx(&self, now: u32) -> u32 {
        self.status(self.status_4xx, now)
    }

    /// Upstream 404 answers over [`STATUS_WINDOW`] up to `now`.
    pub fn status_404(&self, now: u32) -> u32 {
        self.status(self.status_404, now)
    }

    /// Upstream 401 and 403 answers over [`STATUS_WINDOW`] up to `now`.
    pub fn status_401_403(&self, now: u32) -> u32 {
        self.status(self.status_auth, now)
    }

    /// Distinct request targets over [`PATHS_WINDOW`] up to `now`,
    /// estimated.
    pub fn distinct_paths(&self, now: u32) -> u32 {
        let (from, to) = self.reading(now);
        self.paths.estimate(from, to, PATHS_WINDOW)
    }

    /// How regular the gaps between its requests are (standard deviation
    /// over mean); None until ten gaps were seen.
    pub fn interarrival_cv(&self) -> Option<f32> {
        self.cadence.variation()
    }

    /// Whether nothing it remembers still counts at `now` (Unix seconds):
    /// no request and no failed credential within the longest window.
    pub fn is_idle(&self, now: u32) -> bool {
        let (from, to) = self.reading(now);
        let longest = RATE_WINDOWS.len() - 1;
        self.requests[longest].estimate(from, to, RATE_WINDOWS[longest]) == 0
            && self.auth_failures.estimate(from, to, AUTH_FAILURE_WINDOW) == 0
    }
}

/// All clients' records, bounded.
pub type ClientStore = BoundedMap<ClientKey, ClientRecord>;

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

    /// A count on a clock of its own, as a record keeps each of its counts.
    #[derive(Default)]
    struct Counter {
        clock: u32,
        count: Count,
    }

    impl Counter {
        fn add(&mut self, now: u32, window: u32) {
            let now = now.max(self.clock);
            self.count = self.count.rolled(self.clock, now, window);
            self.clock = now;
            self.count.add();
        }

        fn count(&self, now: u32, window: u32) -> u32 {
            self.count.estimate(self.clock, now.max(self.clock), window)
        }
    }

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
        let v4 = ClientKey::of("192.0.2.1".parse().unwrap()).bits();
        let v6 = ClientKey::of("2001:db8::1".parse().unwrap()).bits();
        assert_eq!(v4 >> 64, 0);
        assert_eq!(v6 as u64, 0);
        let alice = ClientKey::of_subject("alice").bits();
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
            s.add(hash(i));
            // The same path again adds nothing.
            s.add(hash(i));
        }
        let n = s.estimate(t, t, 60);
        assert!((80..=120).contains(&n), "100 paths estimated as {n}");
        let mut one = DistinctSketch::default();
        for _ in 0..500 {
            one.add(hash(7));
        }
        assert_eq!(one.estimate(t, t, 60), 1);
        // The previous window fades out over the next one.
        assert!(s.estimate(t, t + 60, 60) >= 80);
        assert!(s.estimate(t, t + 90, 60) < 60);
        assert_eq!(s.estimate(t, t + 180, 60), 0);
        let next = s.rolled(t, t + 60, 60);
        assert_eq!(u32::from(next.previous), n);
        assert_eq!(next.bits, [0; 4]);
        // Saturation is bounded, not an overflow.
        for i in 0..100_000 {
            s.add(hash(i));
        }
        assert!(s.estimate(t, t, 60) < 1_000);
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
        assert_eq!(person.last_ms(), p, "milliseconds are kept whole");
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
        assert_eq!(bot.last_ms(), t + 3_600_000);
    }

    #[test]
    fn a_client_record_stays_small() {
        // The state's memory is capacity × (this + the key + the index's
        // share); benches/memory.sh measures the whole.
        assert_eq!(std::mem::size_of::<ClientRecord>(), 112);
        assert_eq!(std::mem::align_of::<ClientRecord>(), 4);
        assert_eq!(std::mem::size_of::<ClientKey>(), 16);
        assert_eq!(std::mem::align_of::<ClientKey>(), 8);
    }

    #[test]
    fn a_count_slides() {
        let mut c = Counter::default();
        for t in 1000..1010 {
            c.add(t, 60);
        }
        assert_eq!(c.count(1010, 60), 10);
        // Half way into the next window, about half the old window still
        // counts.
        let next = 1020 + 30;
        assert_eq!(c.count(next, 60), 5);
        // A steady rate is counted once, not twice.
        let mut steady = Counter::default();
        for t in 0..100 {
            for _ in 0..10 {
                steady.add(t, 1);
            }
        }
        assert_eq!(steady.count(99, 1), 10, "10 req/s is 10 in the last second");
        let mut steady10 = Counter::default();
        for t in 0..100 {
            for _ in 0..10 {
                steady10.add(t, 10);
            }
        }
        assert_eq!(steady10.count(99, 10), 100);
        assert_eq!(c.count(1200, 60), 0, "two windows later nothing is left");
        let mut late = Counter::default();
        for _ in 0..5 {
            late.add(600, 300);
        }
        late.add(599, 300);
        assert_eq!(
            late.count(601, 300),
            6,
            "an out-of-order event does not wipe the count"
        );
        let mut one = Counter::default();
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
    fn one_clock_per_record_counts_as_a_clock_per_count_would() {
        // Each count of a record moves with the record's clock, whichever
        // event moved it; a count on a clock of its own moves only with
        // its own events. In time order the two agree exactly.
        let mut record = ClientRecord::default();
        let mut requests: [Counter; 4] = Default::default();
        let mut statuses: [Counter; 4] = Default::default();
        let mut failures = Counter::default();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut now = 1_700_000_000u32;
        for _ in 0..20_000 {
            // Mostly bursts within a second, some gaps of several windows.
            now += match next() % 100 {
                0..=59 => 0,
                60..=89 => 1,
                90..=97 => (next() % 90) as u32,
                _ => (next() % 900) as u32,
            };
            match next() % 4 {
                0 | 1 => {
                    record.add_request(u64::from(now) * 1000, next());
                    for (c, w) in requests.iter_mut().zip(RATE_WINDOWS) {
                        c.add(now, w);
                    }
                }
                2 => {
                    let status = [200, 404, 403, 401, 500, 429][(next() % 6) as usize];
                    record.add_status(now, status);
                    let hits = [
                        true,
                        (400..500).contains(&status),
                        status == 404,
                        status == 401 || status == 403,
                    ];
                    for (c, hit) in statuses.iter_mut().zip(hits) {
                        if hit {
                            c.add(now, STATUS_WINDOW);
                        }
                    }
                }
                _ => {
                    record.add_auth_failure(now);
                    failures.add(now, AUTH_FAILURE_WINDOW);
                }
            }
            let at = now + (next() % 400) as u32;
            let expected: [u32; 4] =
                std::array::from_fn(|i| requests[i].count(at, RATE_WINDOWS[i]));
            assert_eq!(record.rates(at), expected, "at {at}");
            let status = [
                record.answered(at),
                record.status_4xx(at),
                record.status_404(at),
                record.status_401_403(at),
            ];
            let expected: [u32; 4] = std::array::from_fn(|i| statuses[i].count(at, STATUS_WINDOW));
            assert_eq!(status, expected, "at {at}");
            assert_eq!(
                record.auth_failures(at),
                failures.count(at, AUTH_FAILURE_WINDOW)
            );
        }
    }

    #[test]
    fn a_record_reads_no_earlier_than_its_clock() {
        let mut r = ClientRecord::default();
        r.add_request(600_000, 1);
        r.add_status(660, 404);
        // A request that waited is counted at the record's clock (660, in
        // a new minute), and a reading as of earlier is taken at the clock.
        r.add_request(650_000, 2);
        assert_eq!(r.rates(650), [1, 1, 2, 2]);
        assert_eq!(r.rates(650), r.rates(660));
        assert_eq!(r.status_404(600), 1);
        assert_eq!(r.distinct_paths(660), 2);
    }

    #[test]
    fn records_are_per_client() {
        let store = ClientStore::new(1000);
        let a = ClientKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let b = ClientKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        for t in 0..5 {
            update_client(&store, a, |r| r.add_auth_failure(100 + t));
        }
        assert_eq!(client(&store, a).unwrap().auth_failures(110), 5);
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
        update_client(&store, key(2), |r| r.add_auth_failure(10_000));
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

    #[test]
    fn an_address_rotation_flood_holds_the_state_at_capacity() {
        // Five times the capacity in distinct addresses, each a request:
        // the store fills, then evicts, and never holds more.
        let store = ClientStore::new(10_000);
        let regular = ClientKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        for i in 0..5 * store.capacity() as u32 {
            let ip = Ipv4Addr::from(0x0a00_0000 + i);
            update_client(&store, ClientKey::of(ip.into()), |r| {
                r.add_request(1_700_000_000_000 + u64::from(i), 1)
            });
            if i % 500 == 0 {
                update_client(&store, regular, |r| r.add_request(1_700_000_000_000, 2));
            }
        }
        assert_eq!(store.len(), store.capacity());
        assert!(store.evictions() >= 4 * store.capacity() as u64);
        assert!(client(&store, regular).is_some(), "the regular stays");
    }
}
