//! Signals stage: what the request and the client's recent behaviour
//! suggest, as inputs for the rules. Reads and updates the client's records
//! in the bounded client state: its address's and, when a credential
//! verified, its subject's, so rotating addresses does not hide an
//! account's pace.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use crate::facts::Facts;
use crate::identity::Identity;
use crate::state::shared::Shared;
use crate::state::{ClientKey, ClientRecord, ClientStore, update_client};

/// Derived observations about one request, read by the rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    /// The request carried no `User-Agent`, or a blank or `-` one.
    pub user_agent_missing: bool,
    /// Failed credentials from this client in the last five minutes,
    /// this request's included.
    pub auth_failures_5m: u32,
    /// Requests from this client over 1 s, 10 s, 60 s and 5 min, this one
    /// included.
    pub rates: [u32; 4],
    /// Upstream 4xx answers to this client over 60 s.
    pub status_4xx_60s: u32,
    /// Upstream 404 answers to this client over 60 s.
    pub status_404_60s: u32,
    /// Upstream 401 and 403 answers to this client over 60 s.
    pub status_401_403_60s: u32,
    /// Upstream answers to this client over 60 s.
    pub answered_60s: u32,
    /// Distinct request targets (path and query) over 60 s, estimated.
    pub distinct_paths_60s: u32,
    /// How regular the gaps between the client's requests are (standard
    /// deviation over mean); None until ten gaps were seen.
    pub interarrival_cv: Option<f32>,
    /// What became of a crawler claim in the user agent.
    pub crawler: crate::crawlers::Claim,
    /// Another replica judged the client `malicious_bot` lately (shared
    /// state only).
    pub shared_verdict: bool,
}

/// Computes signals, keeping per-client behaviour in `state`. A clone
/// shares the state and the path hash's key, as a reload must.
#[derive(Clone, Debug)]
pub struct SignalsStage {
    state: Arc<ClientStore>,
    /// Counts and verdicts shared with other replicas, when configured.
    shared: Option<Arc<Shared>>,
    /// Keys the distinct-paths hash: random per process, so a client
    /// cannot choose paths that all land on one bit of the sketch (fixed
    /// in replays, so that the same log gives the same answers).
    paths_key: u128,
}

impl Default for SignalsStage {
    fn default() -> Self {
        SignalsStage::new(Arc::new(ClientStore::new(1_000_000)))
    }
}

impl SignalsStage {
    /// Signals over a client store (shared across reloads).
    pub fn new(state: Arc<ClientStore>) -> Self {
        SignalsStage {
            state,
            shared: None,
            paths_key: random_key(),
        }
    }

    /// The same stage, sharing counts and verdicts through `shared`.
    pub fn with_shared(mut self, shared: Arc<Shared>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// What is shared with other replicas, if anything.
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// A client's record with what other replicas added (as of the last
    /// sync), and whether one of them judged it `malicious_bot`.
    fn with_remote(&self, key: ClientKey, own: ClientRecord, now: u32) -> (ClientRecord, bool) {
        self.shared
            .as_ref()
            .and_then(|s| s.with_remote(key, |r| (r.merged(&own, now), r.verdict(now))))
            .unwrap_or((own, false))
    }

    /// Tell the other replicas that this one judged a client (its address,
    /// and its subject when verified) `malicious_bot`.
    pub fn share_verdict(&self, facts: &Facts<'_>, identity: &Identity) {
        let Some(shared) = &self.shared else {
            return;
        };
        shared.note_verdict(ClientKey::of(facts.client_ip));
        if let Some(subject) = identity.subject() {
            shared.note_verdict(ClientKey::of_subject(subject));
        }
    }

    /// The same stage with a fixed path-hash key: for replays, which must
    /// be repeatable and comparable between configs.
    pub fn with_fixed_key(mut self) -> Self {
        self.paths_key = 0x7573_6865_725f_7061_7468_735f_6b65_7900;
        self
    }

    /// The client store.
    pub fn state(&self) -> &Arc<ClientStore> {
        &self.state
    }

    /// Observe one request, recording what it says about its client.
    /// With a verified subject, the behaviour signals are those of the
    /// busier of the address's and the subject's records.
    pub fn observe(&self, facts: &Facts<'_>, identity: &Identity) -> Signals {
        let now_ms = unix_millis(facts.now);
        let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        let target = self.target_hash(facts);
        let failed = matches!(identity, Identity::Invalid { .. });
        let address = ClientKey::of(facts.client_ip);
        let by_address = update_client(&self.state, address, |r| {
            r.add_request(now_ms, target);
            if failed {
                r.add_auth_failure(now);
            }
        });
        if let Some(shared) = &self.shared {
            shared.note_request(address, failed);
        }
        let (by_address, mut shared_verdict) = self.with_remote(address, by_address, now);
        let mut signals = Signals::read(&by_address, now);
        signals.user_agent_missing = facts.user_agent.is_none_or(is_blank_agent);
        if let Some(subject) = identity.subject() {
            let key = ClientKey::of_subject(subject);
            let by_subject = update_client(&self.state, key, |r| {
                r.add_request(now_ms, target);
            });
            if let Some(shared) = &self.shared {
                shared.note_request(key, false);
            }
            let (by_subject, verdict) = self.with_remote(key, by_subject, now);
            shared_verdict |= verdict;
            signals.combine(Signals::read(&by_subject, now));
        }
        signals.shared_verdict = shared_verdict;
        signals
    }

    /// The keyed hash of the request target (path and query), for the
    /// distinct-paths sketch.
    fn target_hash(&self, facts: &Facts<'_>) -> u64 {
        use std::hash::Hasher;
        // SipHash with the key written first: unpredictable without it.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u128(self.paths_key);
        h.write(facts.path.as_bytes());
        if let Some(q) = facts.query {
            h.write_u8(b'?');
            h.write(q.as_bytes());
        }
        h.finish()
    }

    /// Record what the upstream answered a client (and its verified
    /// subject, if any), for the status signals.
    pub fn record_status(
        &self,
        client_ip: std::net::IpAddr,
        subject: Option<&str>,
        now: std::time::SystemTime,
        status: u16,
    ) {
        let now = u32::try_from(unix_millis(now) / 1000).unwrap_or(u32::MAX);
        // The request already counted as the client's use; the answer
        // neither re-creates a client evicted meanwhile nor saves one from
        // eviction (else every flood address would get a second chance).
        let address = ClientKey::of(client_ip);
        self.state.update(&address, |r| r.add_status(now, status));
        if let Some(shared) = &self.shared {
            shared.note_status(address, status);
        }
        if let Some(subject) = subject {
            let key = ClientKey::of_subject(subject);
            self.state.update(&key, |r| r.add_status(now, status));
            if let Some(shared) = &self.shared {
                shared.note_status(key, status);
            }
        }
    }
}

impl Signals {
    /// The behaviour signals of one client record at `now`.
    fn read(record: &ClientRecord, now: u32) -> Signals {
        Signals {
            auth_failures_5m: record.auth_failures(now),
            rates: record.rates(now),
            status_4xx_60s: record.status_4xx(now),
            status_404_60s: record.status_404(now),
            status_401_403_60s: record.status_401_403(now),
            answered_60s: record.answered(now),
            distinct_paths_60s: record.distinct_paths(now),
            interarrival_cv: record.interarrival_cv(),
            ..Signals::default()
        }
    }

    /// Take the behaviour of the busier of two records (more requests in
    /// the last minute), whole: mixing one record's rate with the other's
    /// rhythm would describe a client that does not exist (a person's
    /// polling tab behind a busy shared address). Failed credentials are
    /// the address's.
    fn combine(&mut self, other: Signals) {
        if other.rates[2] > self.rates[2] {
            *self = Signals {
                user_agent_missing: self.user_agent_missing,
                auth_failures_5m: self.auth_failures_5m,
                crawler: self.crawler,
                ..other
            };
        }
    }
}

/// A random key from the standard library's per-process hash seed.
fn random_key() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let seed = std::collections::hash_map::RandomState::new();
    let half = |salt: u64| {
        let mut h = seed.build_hasher();
        h.write_u64(salt);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An agent that says nothing: empty, blank, or a placeholder dash.
fn is_blank_agent(ua: &[u8]) -> bool {
    let ua = ua.trim_ascii();
    ua.is_empty() || ua == b"-"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Source, Tier};
    use std::time::{Duration, SystemTime};

    fn observe(
        stage: &SignalsStage,
        ip: &str,
        path: &'static str,
        identity: &Identity,
        ms: u64,
    ) -> Signals {
        let req = http::Request::get(path).body(()).unwrap();
        let (parts, ()) = req.into_parts();
        let ip = ip.parse().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms);
        stage.observe(&Facts::new(&parts, ip, ip, now), identity)
    }

    #[test]
    fn an_account_is_followed_across_addresses() {
        // A fixed path key: with a random one, "/same" and "/other" would share
        // a bit of the 128-bit sketch in one run out of 128.
        let stage = SignalsStage::new(Arc::new(ClientStore::new(1000))).with_fixed_key();
        let alice = Identity::User {
            source: Source::Jwt,
            subject: "alice".into(),
            tier: Tier::Paying,
            claims: Default::default(),
        };
        let mut last = Signals::default();
        for i in 0..12u64 {
            let ip = format!("198.51.100.{}", i + 1);
            last = observe(&stage, &ip, "/same", &alice, i * 100);
        }
        assert_eq!(last.rates[1], 12, "the subject's count, not the address's");
        // Anonymous requests from those addresses see only the address.
        let anon = observe(&stage, "198.51.100.1", "/same", &Identity::Anonymous, 1_250);
        assert_eq!(anon.rates[1], 2);
        // Status answers reach the subject's record too.
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_001_300);
        stage.record_status("203.0.113.5".parse().unwrap(), Some("alice"), now, 404);
        let next = observe(&stage, "203.0.113.6", "/other", &alice, 1_400);
        assert_eq!((next.status_404_60s, next.answered_60s), (1, 1));
        assert_eq!(next.distinct_paths_60s, 2);
        // Ten regular gaps make a cadence.
        assert!(last.interarrival_cv.is_some_and(|cv| cv < 0.1));
    }

    #[test]
    fn behaviour_comes_whole_from_the_busier_record() {
        // A person's tab polls every 5 s from behind a busy shared
        // address: the account's rhythm is regular, the address is busy.
        // Neither record alone is a metronome at bot rates, so neither may
        // the combination be.
        let stage = SignalsStage::new(Arc::new(ClientStore::new(1000)));
        let bob = Identity::User {
            source: Source::Jwt,
            subject: "bob".into(),
            tier: Tier::Free,
            claims: Default::default(),
        };
        let nat = "192.0.2.200";
        let mut s = Signals::default();
        for i in 0..12u64 {
            for j in 0..6u64 {
                let path = ["/a", "/b", "/c", "/d", "/e", "/f"][j as usize];
                observe(
                    &stage,
                    nat,
                    path,
                    &Identity::Anonymous,
                    i * 5_000 + j * 37 + 11,
                );
            }
            s = observe(&stage, nat, "/poll", &bob, i * 5_000);
        }
        assert!(s.rates[2] > 60, "the address's count: {s:?}");
        assert!(
            s.interarrival_cv.is_none_or(|cv| cv > 0.1),
            "the address's rhythm, not the account's: {s:?}"
        );
    }
}
