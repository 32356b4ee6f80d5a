//! Per-class rate quotas: governor's GCRA, keyed by client, with its state
//! kept in a bounded map so an address-rotation flood cannot grow it. A
//! reload hands each unchanged quota, with the state it has gathered, to
//! the new configuration, so reloading never resets what clients spent.
//! Behind Redis, what other replicas admitted is charged here too, so a
//! quota holds across replicas.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::state::{BoundedMap, ClientKey};
use crate::verdict::Class;

/// A quota as written in a rule file: `rate = "20/s"`, `burst = 40`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub count: NonZeroU32,
    /// The period.
    pub per: Duration,
    /// Requests allowed at once.
    pub burst: NonZeroU32,
}

impl Rate {
    /// Parse `N/s`, `N/m` or `N/h` with a burst.
    pub fn parse(rate: &str, burst: Option<u32>) -> Result<Rate, String> {
        let bad = || format!("`{rate}` is not a rate like \"20/s\", \"300/m\" or \"1000/h\"");
        let (n, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: NonZeroU32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let burst = match burst {
            None => count,
            Some(b) => NonZeroU32::new(b).ok_or("burst must be at least 1")?,
        };
        Ok(Rate { count, per, burst })
    }

    /// The time one request uses up: per/count.
    fn interval(self) -> Duration {
        (self.per / self.count.get()).max(Duration::from_nanos(1))
    }

    fn quota(self) -> Quota {
        // One request every interval, `burst` at once.
        Quota::with_period(self.interval())
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.burst)
    }
}

/// GCRA state per client (the theoretical arrival time, in nanoseconds
/// since the quota began), bounded.
type States = BoundedMap<ClientKey, Option<u64>>;

/// The limiter's view of the states.
struct Store(Arc<States>);

impl StateStore for Store {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.with(
            *key,
            || None,
            |slot| {
                let (outcome, next) = f(slot.map(Nanos::from))?;
                *slot = Some(next.into());
                Ok(outcome)
            },
        )
    }
}

type Limiter =
    RateLimiter<ClientKey, Store, DefaultClock, NoOpMiddleware<<DefaultClock as Clock>::Instant>>;

/// One class's quota and the state it has gathered; shared with the
/// configuration that replaces this one when the quota stays the same.
struct ClassQuota {
    rate: Rate,
    capacity: usize,
    limiter: Limiter,
    /// The limiter's states, for charges from other replicas.
    states: Arc<States>,
    /// When the quota began (as near the limiter's own start as can be
    /// had): charges count from here.
    start: <DefaultClock as Clock>::Instant,
}

/// The quotas of every class that has one.
#[derive(Clone)]
pub struct Limits {
    per_class: [Option<Arc<ClassQuota>>; Class::ALL.len()],
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let classes: Vec<&str> = Class::ALL
            .iter()
            .filter(|c| self.per_class[c.index()].is_some())
            .map(|c| c.as_str())
            .collect();
        f.debug_struct("Limits").field("classes", &classes).finish()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(&[], 1)
    }
}

impl Limits {
    /// Quotas for the given classes, each remembering up to `capacity`
    /// clients.
    pub fn new(rates: &[(Class, Rate)], capacity: usize) -> Self {
        Limits::after(rates, capacity, None)
    }

    /// Quotas for the given classes that take over, from the quotas they
    /// replace, every class whose rate, burst and capacity are unchanged,
    /// with what its clients have spent. A changed quota starts afresh.
    pub fn after(rates: &[(Class, Rate)], capacity: usize, previous: Option<&Limits>) -> Self {
        let clock = DefaultClock::default();
        let mut per_class: [Option<Arc<ClassQuota>>; Class::ALL.len()] = Default::default();
        for &(class, rate) in rates {
            let kept = previous
                .and_then(|p| p.per_class[class.index()].as_ref())
                .filter(|q| q.rate == rate && q.capacity == capacity);
            per_class[class.index()] = Some(match kept {
                Some(quota) => Arc::clone(quota),
                None => {
                    let states = Arc::new(States::new(capacity));
                    let limiter =
                        RateLimiter::new(rate.quota(), Store(Arc::clone(&states)), clock.clone());
                    // Just after the limiter's own start: charges count
                    // from a hair later, never earlier, so they can only
                    // be a few nanoseconds lenient.
                    let start = clock.now();
                    Arc::new(ClassQuota {
                        rate,
                        capacity,
                        limiter,
                        states,
                        start,
                    })
                }
            });
        }
        Limits { per_class }
    }

    /// Whether the class has a quota.
    pub fn has(&self, class: Class) -> bool {
        self.per_class[class.index()].is_some()
    }

    /// Who a quota counts: a verified subject has its own quota wherever
    /// it connects from (accounts behind one NAT do not share); others
    /// are counted by address.
    pub fn client(address: IpAddr, subject: Option<&str>) -> ClientKey {
        subject.map_or_else(|| ClientKey::of(address), ClientKey::of_subject)
    }

    /// Take one request from the client's quota for its class: `Err` with
    /// how long to wait when it is spent. A class without a quota is never
    /// limited.
    pub fn check(&self, class: Class, client: ClientKey) -> Result<(), Duration> {
        let Some(quota) = &self.per_class[class.index()] else {
            return Ok(());
        };
        let limiter = &quota.limiter;
        limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Charge a client's quota for requests admitted elsewhere (by other
    /// replicas) over the last `over`: it is as if they had been admitted
    /// here at its start, so what they used has worn off since as it
    /// would have here. A class without a quota ignores it.
    pub fn charge(&self, class: Class, client: ClientKey, requests: u32, over: Duration) {
        let Some(quota) = &self.per_class[class.index()] else {
            return;
        };
        if requests == 0 {
            return;
        }
        // In signed time: `over` may reach back before the quota began
        // here. Any time not after now means a client fully rested, so a
        // result before the start is stored as the start. However much
        // Redis claims, a client owes at most a full burst from now (as
        // much as it could spend here), so a wild count cannot shut it out
        // for long or overflow the limiter's clock.
        let interval = quota.rate.interval().as_nanos() as i128;
        let now = i128::from(u64::from(
            quota.limiter.clock().now().duration_since(quota.start),
        ));
        let from = now - i128::try_from(over.as_nanos()).unwrap_or(i128::MAX);
        let cost = interval * i128::from(requests);
        let most = now + interval * i128::from(quota.rate.burst.get());
        quota.states.with(
            client,
            || None,
            |slot| {
                let at = (slot.map_or(from, |at| from.max(i128::from(at))) + cost).min(most);
                *slot = Some(u64::try_from(at.max(0)).unwrap_or(0));
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let r = Rate::parse("20/s", Some(40)).unwrap();
        assert_eq!(
            (r.count.get(), r.per, r.burst.get()),
            (20, Duration::from_secs(1), 40)
        );
        assert_eq!(Rate::parse("300/m", None).unwrap().burst.get(), 300);
        for bad in ["20", "0/s", "x/s", "20/d", "-1/s", "/s"] {
            assert!(Rate::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Rate::parse("1/s", Some(0)).is_err());
    }

    #[test]
    fn quotas_are_per_class_and_per_client() {
        let limits = Limits::new(
            &[(Class::MaliciousBot, Rate::parse("1/h", Some(3)).unwrap())],
            1000,
        );
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(
                limits
                    .check(Class::MaliciousBot, Limits::client(a, None))
                    .is_ok()
            );
        }
        let wait = limits
            .check(Class::MaliciousBot, Limits::client(a, None))
            .unwrap_err();
        assert!(wait > Duration::from_secs(1000), "{wait:?}");
        assert!(
            limits
                .check(Class::MaliciousBot, Limits::client(b, None))
                .is_ok(),
            "another client has its own quota"
        );
        assert!(
            limits
                .check(Class::MaliciousBot, Limits::client(a, Some("alice")))
                .is_ok(),
            "an account behind the same address has its own quota"
        );
        for _ in 0..100 {
            assert!(
                limits
                    .check(Class::PublicVisitor, Limits::client(a, None))
                    .is_ok(),
                "no quota, no limit"
            );
        }
    }

    #[test]
    fn requests_admitted_elsewhere_are_charged_here() {
        let limits = Limits::new(
            &[(Class::PublicVisitor, Rate::parse("1/h", Some(5)).unwrap())],
            1000,
        );
        let a = Limits::client("192.0.2.1".parse().unwrap(), None);
        let b = Limits::client("192.0.2.2".parse().unwrap(), None);
        assert!(limits.check(Class::PublicVisitor, a).is_ok());
        limits.charge(Class::PublicVisitor, a, 3, Duration::ZERO);
        assert!(limits.check(Class::PublicVisitor, a).is_ok());
        let wait = limits.check(Class::PublicVisitor, a).unwrap_err();
        assert!(wait > Duration::from_secs(3000), "{wait:?}");

        // A client never seen here starts with what it spent elsewhere.
        limits.charge(Class::PublicVisitor, b, 4, Duration::ZERO);
        assert!(limits.check(Class::PublicVisitor, b).is_ok());
        assert!(limits.check(Class::PublicVisitor, b).is_err());

        // A wild count from Redis owes at most a full burst: the wait is
        // about one interval, and nothing overflows.
        let c = Limits::client("192.0.2.3".parse().unwrap(), None);
        limits.charge(Class::PublicVisitor, c, u32::MAX, Duration::ZERO);
        let wait = limits.check(Class::PublicVisitor, c).unwrap_err();
        assert!(wait <= Duration::from_secs(3601), "{wait:?}");

        // Charges to a class without a quota, or of nothing, change nothing.
        limits.charge(Class::MaliciousBot, a, 100, Duration::ZERO);
        limits.charge(Class::PublicVisitor, b, 0, Duration::ZERO);
        assert!(limits.check(Class::MaliciousBot, a).is_ok());
    }

    #[test]
    fn what_others_admitted_long_ago_has_worn_off() {
        // 1/s, burst 5: 60 requests admitted elsewhere over the last
        // minute used the quota at its pace, which leaves the burst here;
        // the same 60 over the last second would leave nothing.
        let limits = Limits::new(
            &[(Class::PublicVisitor, Rate::parse("1/s", Some(5)).unwrap())],
            1000,
        );
        let a = Limits::client("192.0.2.1".parse().unwrap(), None);
        let b = Limits::client("192.0.2.2".parse().unwrap(), None);
        limits.charge(Class::PublicVisitor, a, 60, Duration::from_secs(60));
        for _ in 0..4 {
            assert!(limits.check(Class::PublicVisitor, a).is_ok());
        }
        limits.charge(Class::PublicVisitor, b, 60, Duration::from_secs(1));
        assert!(limits.check(Class::PublicVisitor, b).is_err());
    }

    #[test]
    fn a_reload_keeps_what_clients_spent_on_unchanged_quotas() {
        let bot = Rate::parse("1/h", Some(2)).unwrap();
        let user = Rate::parse("1/h", Some(1)).unwrap();
        let before = Limits::new(
            &[(Class::MaliciousBot, bot), (Class::RegisteredUser, user)],
            1000,
        );
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(
            before
                .check(Class::MaliciousBot, Limits::client(a, None))
                .is_ok()
        );
        assert!(
            before
                .check(Class::RegisteredUser, Limits::client(a, None))
                .is_ok()
        );

        let changed = Rate::parse("1/h", Some(3)).unwrap();
        let after = Limits::after(
            &[(Class::MaliciousBot, bot), (Class::RegisteredUser, changed)],
            1000,
            Some(&before),
        );
        assert!(
            after
                .check(Class::MaliciousBot, Limits::client(a, None))
                .is_ok()
        );
        assert!(
            after
                .check(Class::MaliciousBot, Limits::client(a, None))
                .is_err(),
            "the unchanged quota remembers the request made before the reload"
        );
        for _ in 0..3 {
            assert!(
                after
                    .check(Class::RegisteredUser, Limits::client(a, None))
                    .is_ok(),
                "a changed quota starts afresh"
            );
        }
        assert!(
            before
                .check(Class::MaliciousBot, Limits::client(a, None))
                .is_err(),
            "requests still holding the old quotas share the same state"
        );
    }
}
