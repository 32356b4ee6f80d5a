//! Client state shared between replicas through Redis, off the request
//! path. A request only notes what it adds (a few counters in a bounded
//! map) and reads what the last sync brought; a background task flushes
//! the notes every `sync_interval` in one pipelined batch, reads the
//! global counts back and keeps, per client, what the other replicas
//! added. Redis down, slow or failing: requests go on with local state
//! (fail-open), the task logs once per change and retries, and the notes
//! stay bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, IntCounter, IntGauge};

use super::{
    AUTH_FAILURE_WINDOW, BoundedMap, ClientKey, ClientRecord, Count, RATE_WINDOWS, STATUS_WINDOW,
};

/// Clients with unflushed notes, at most; past it a new client's notes
/// are dropped (and counted) until the next flush.
pub const MAX_PENDING: usize = 65_536;

/// What one replica added to a client since the last flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    requests: u32,
    answered: u32,
    status_4xx: u32,
    status_404: u32,
    status_auth: u32,
    auth_failures: u32,
    /// This replica judged the client `malicious_bot`.
    verdict: bool,
}

impl Delta {
    fn merge(&mut self, other: Delta) {
        self.requests = self.requests.saturating_add(other.requests);
        self.answered = self.answered.saturating_add(other.answered);
        self.status_4xx = self.status_4xx.saturating_add(other.status_4xx);
        self.status_404 = self.status_404.saturating_add(other.status_404);
        self.status_auth = self.status_auth.saturating_add(other.status_auth);
        self.auth_failures = self.auth_failures.saturating_add(other.auth_failures);
        self.verdict |= other.verdict;
    }
}

/// What the other replicas added to one client, as of the last sync: a
/// record of counts only (no paths, no rhythm), on its own clock.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Remote {
    counts: ClientRecord,
    /// Until when (Unix seconds) a replica's `malicious_bot` verdict
    /// stands; 0 for none.
    verdict_until: u32,
}

impl Remote {
    /// Whether some replica's verdict stands at `now`.
    pub fn verdict(&self, now: u32) -> bool {
        now < self.verdict_until
    }

    /// `own` with the other replicas' counts added, read at `now`.
    pub fn merged(&self, own: &ClientRecord, now: u32) -> ClientRecord {
        let mut mine = *own;
        let mut theirs = self.counts;
        mine.advance(now);
        theirs.advance(now);
        let add = |a: &mut Count, b: Count| {
            a.current = a.current.saturating_add(b.current);
            a.previous = a.previous.saturating_add(b.previous);
        };
        for (a, b) in mine.requests.iter_mut().zip(theirs.requests) {
            add(a, b);
        }
        add(&mut mine.answered, theirs.answered);
        add(&mut mine.status_4xx, theirs.status_4xx);
        add(&mut mine.status_404, theirs.status_404);
        add(&mut mine.status_auth, theirs.status_auth);
        add(&mut mine.auth_failures, theirs.auth_failures);
        mine
    }
}

/// Where the Redis backend stands, for metrics.
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// 1 while the last sync succeeded.
    pub up: IntGauge,
    /// Syncs that failed.
    pub errors: IntCounter,
    /// Notes dropped because too many clients waited for a flush.
    pub dropped: IntCounter,
    /// How long a sync took.
    pub duration: Histogram,
}

/// How to reach Redis and how to name keys there.
#[derive(Clone, Debug)]
pub struct SharedConfig {
    /// The server (`redis://` or `rediss://`).
    pub url: String,
    /// Put before every key usher writes.
    pub key_prefix: String,
    /// How often notes are flushed and counts read back.
    pub sync_interval: Duration,
    /// How long a `malicious_bot` verdict is shared.
    pub verdict_ttl: Duration,
}

/// The notes of this replica and what the others added.
#[derive(Debug)]
pub struct Shared {
    config: SharedConfig,
    pending: Mutex<HashMap<ClientKey, Delta>>,
    remote: BoundedMap<ClientKey, Remote>,
    metrics: Mutex<Option<SyncMetrics>>,
    /// [`UNKNOWN`] until the first sync, then 1 (up) or 0 (down).
    up: AtomicU8,
}

const UNKNOWN: u8 = 2;

impl Shared {
    /// Shared state for up to `capacity` clients' remote counts.
    pub fn new(config: SharedConfig, capacity: usize) -> Self {
        Shared {
            config,
            pending: Mutex::new(HashMap::new()),
            remote: BoundedMap::new(capacity),
            metrics: Mutex::new(None),
            up: AtomicU8::new(UNKNOWN),
        }
    }

    /// Report to these metrics from now on.
    pub fn set_metrics(&self, metrics: SyncMetrics) {
        metrics
            .up
            .set(i64::from(self.up.load(Ordering::Relaxed) == 1));
        *lock(&self.metrics) = Some(metrics);
    }

    fn metrics(&self) -> Option<SyncMetrics> {
        lock(&self.metrics).clone()
    }

    /// Note what a request adds to a client.
    pub fn note(&self, key: ClientKey, delta: Delta) {
        let mut pending = lock(&self.pending);
        if let Some(d) = pending.get_mut(&key) {
            d.merge(delta);
        } else if pending.len() < MAX_PENDING {
            pending.insert(key, delta);
        } else {
            drop(pending);
            if let Some(m) = self.metrics() {
                m.dropped.inc();
            }
        }
    }

    /// A request from a client.
    pub fn note_request(&self, key: ClientKey, auth_failed: bool) {
        self.note(
            key,
            Delta {
                requests: 1,
                auth_failures: u32::from(auth_failed),
                ..Delta::default()
            },
        );
    }

    /// An upstream answer to a client.
    pub fn note_status(&self, key: ClientKey, status: u16) {
        self.note(
            key,
            Delta {
                answered: 1,
                status_4xx: u32::from((400..500).contains(&status)),
                status_404: u32::from(status == 404),
                status_auth: u32::from(status == 401 || status == 403),
                ..Delta::default()
            },
        );
    }

    /// This replica judged a client `malicious_bot`.
    pub fn note_verdict(&self, key: ClientKey) {
        self.note(
            key,
            Delta {
                verdict: true,
                ..Delta::default()
            },
        );
    }

    /// What the other replicas added to a client, as of the last sync.
    pub fn remote(&self, key: ClientKey) -> Option<Remote> {
        self.remote.peek(&key, |r| *r)
    }

    /// Flush notes and read counts back every `sync_interval`, until the
    /// process ends. `own` reads this replica's record of a client.
    pub async fn run(
        self: std::sync::Arc<Self>,
        own: impl Fn(ClientKey) -> Option<ClientRecord> + Send + 'static,
    ) {
        let script = redis::Script::new(SYNC_SCRIPT);
        let client = match redis::Client::open(self.config.url.as_str()) {
            Ok(client) => client,
            Err(e) => {
                // The URL was checked at load; this is not expected.
                tracing::error!(error = %e, "state backend: bad Redis URL; sharing off");
                return;
            }
        };
        let timeout = self.config.sync_interval.max(Duration::from_millis(100)) * 5;
        let options = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        let mut tick = tokio::time::interval(self.config.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let batch = std::mem::take(&mut *lock(&self.pending));
            if batch.is_empty() && connection.is_some() {
                continue;
            }
            let started = std::time::Instant::now();
            let result = async {
                if connection.is_none() {
                    let mut c = client
                        .get_multiplexed_async_connection_with_config(&options)
                        .await?;
                    script.prepare_invoke().load_async(&mut c).await?;
                    connection = Some(c);
                }
                let Some(c) = connection.as_mut() else {
                    unreachable!("connected above");
                };
                self.sync(c, &script, &batch, &own).await
            }
            .await;
            let metrics = self.metrics();
            if let Some(m) = &metrics {
                m.duration.observe(started.elapsed().as_secs_f64());
            }
            match result {
                Ok(()) => self.set_up(true, None, metrics.as_ref()),
                Err(e) => {
                    connection = None;
                    if let Some(m) = &metrics {
                        m.errors.inc();
                    }
                    self.set_up(false, Some(&e), metrics.as_ref());
                    // Keep the notes for the next try, as bounded as ever.
                    for (key, delta) in batch {
                        self.note(key, delta);
                    }
                }
            }
        }
    }

    fn set_up(&self, up: bool, error: Option<&redis::RedisError>, metrics: Option<&SyncMetrics>) {
        if let Some(m) = metrics {
            m.up.set(i64::from(up));
        }
        if self.up.swap(u8::from(up), Ordering::Relaxed) != u8::from(up) {
            match error {
                None => tracing::info!("state backend: Redis reachable; sharing client state"),
                Some(e) => tracing::warn!(
                    error = %e,
                    "state backend: Redis unreachable; serving on local state until it is back"
                ),
            }
        }
    }

    /// One flush: a script call per client, all in one pipeline.
    async fn sync(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        script: &redis::Script,
        batch: &HashMap<ClientKey, Delta>,
        own: &impl Fn(ClientKey) -> Option<ClientRecord>,
    ) -> redis::RedisResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let now = unix_seconds(SystemTime::now());
        let verdict_ttl = self.config.verdict_ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        let order: Vec<(ClientKey, Delta)> = batch.iter().map(|(k, d)| (*k, *d)).collect();
        for (key, delta) in &order {
            let mut call = redis::cmd("EVALSHA");
            call.arg(script.get_hash()).arg(WINDOW_KEYS * 2 + 1);
            for window in WINDOWS {
                call.arg(self.window_key(*key, window, now));
            }
            for window in WINDOWS {
                call.arg(self.window_key(*key, window, now.saturating_sub(window)));
            }
            call.arg(self.verdict_key(*key));
            call.arg(delta.requests)
                .arg(delta.answered)
                .arg(delta.status_4xx)
                .arg(delta.status_404)
                .arg(delta.status_auth)
                .arg(delta.auth_failures)
                .arg(u8::from(delta.verdict))
                .arg(verdict_ttl);
            for window in WINDOWS {
                // A window's counts are read while it and the next run.
                call.arg(window * 2 + 1);
            }
            pipe.add_command(call);
        }
        let replies: Vec<Vec<i64>> = pipe.query_async(connection).await?;
        for ((key, _), reply) in order.iter().zip(replies) {
            let Some(remote) = remote_counts(&reply, own(*key), now) else {
                continue;
            };
            self.remote.with(*key, Remote::default, |r| *r = remote);
        }
        Ok(())
    }

    /// `prefix` + `c:` + the client + window length + window start. The
    /// client is in braces: a Redis Cluster keeps one client's keys in one
    /// slot, as a script call needs.
    fn window_key(&self, key: ClientKey, window: u32, at: u32) -> String {
        let start = at - at % window;
        format!(
            "{}c:{{{:032x}}}:{window}:{start}",
            self.config.key_prefix,
            key.bits()
        )
    }

    fn verdict_key(&self, key: ClientKey) -> String {
        format!("{}v:{{{:032x}}}", self.config.key_prefix, key.bits())
    }
}

/// The windows kept in Redis: the rate windows; statuses share the
/// 60-second one, failed credentials the 300-second one.
const WINDOWS: [u32; 4] = RATE_WINDOWS;
const WINDOW_KEYS: usize = WINDOWS.len();

/// Adds one replica's delta to the current windows of a client, marks the
/// verdict, and returns the global counts of the current and previous
/// windows (requests for each, statuses for 60 s, failed credentials for
/// 300 s) and the verdict's remaining seconds (-2 or -1 without one).
///
/// KEYS: 4 current windows, 4 previous windows (1, 10, 60, 300 s), the
/// verdict. ARGV: requests, answered, 4xx, 404, 401/403, failed
/// credentials, verdict (0/1), verdict TTL, then each window's key TTL.
const SYNC_SCRIPT: &str = r"
local d = {}
for i = 1, 7 do d[i] = tonumber(ARGV[i]) end
local fields = {'r', 'a', 'x', 'n', 'u', 'f'}
for w = 1, 4 do
  local key = KEYS[w]
  local touched = false
  if d[1] > 0 then redis.call('HINCRBY', key, 'r', d[1]); touched = true end
  if w == 3 then
    for i = 2, 5 do
      if d[i] > 0 then redis.call('HINCRBY', key, fields[i], d[i]); touched = true end
    end
  end
  if w == 4 and d[6] > 0 then redis.call('HINCRBY', key, 'f', d[6]); touched = true end
  if touched then redis.call('EXPIRE', key, tonumber(ARGV[8 + w])) end
end
if d[7] > 0 then redis.call('SET', KEYS[9], '1', 'EX', tonumber(ARGV[8])) end
local out = {}
for w = 1, 8 do
  local v = redis.call('HMGET', KEYS[w], 'r', 'a', 'x', 'n', 'u', 'f')
  for i = 1, 6 do out[#out + 1] = tonumber(v[i]) or 0 end
end
out[#out + 1] = redis.call('TTL', KEYS[9])
return out
";

/// The other replicas' counts: the global counts of a reply less this
/// replica's own (its record now, which may hold a little more than it
/// flushed: the others are then under-counted by that, never over).
fn remote_counts(reply: &[i64], own: Option<ClientRecord>, now: u32) -> Option<Remote> {
    if reply.len() != WINDOW_KEYS * 2 * 6 + 1 {
        return None;
    }
    let field = |window: usize, previous: bool, i: usize| -> u32 {
        let at = (usize::from(previous) * WINDOW_KEYS + window) * 6 + i;
        u32::try_from(reply[at].max(0)).unwrap_or(u32::MAX)
    };
    let mut own = own.unwrap_or_default();
    own.advance(now);
    let mut counts = ClientRecord {
        clock: now,
        ..ClientRecord::default()
    };
    let less = |global_current: u32, global_previous: u32, mine: Count| Count {
        current: global_current.saturating_sub(mine.current),
        previous: global_previous.saturating_sub(mine.previous),
    };
    for w in 0..WINDOW_KEYS {
        counts.requests[w] = less(field(w, false, 0), field(w, true, 0), own.requests[w]);
    }
    let status = WINDOWS.iter().position(|&w| w == STATUS_WINDOW)?;
    counts.answered = less(
        field(status, false, 1),
        field(status, true, 1),
        own.answered,
    );
    counts.status_4xx = less(
        field(status, false, 2),
        field(status, true, 2),
        own.status_4xx,
    );
    counts.status_404 = less(
        field(status, false, 3),
        field(status, true, 3),
        own.status_404,
    );
    counts.status_auth = less(
        field(status, false, 4),
        field(status, true, 4),
        own.status_auth,
    );
    let auth = WINDOWS.iter().position(|&w| w == AUTH_FAILURE_WINDOW)?;
    counts.auth_failures = less(
        field(auth, false, 5),
        field(auth, true, 5),
        own.auth_failures,
    );
    let ttl = reply[WINDOW_KEYS * 2 * 6];
    let verdict_until = if ttl > 0 {
        now.saturating_add(u32::try_from(ttl).unwrap_or(u32::MAX))
    } else {
        0
    };
    Some(Remote {
        counts,
        verdict_until,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_seconds(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_counts_are_the_global_ones_less_our_own() {
        let now = 1_000_000;
        let mut own = ClientRecord::default();
        for _ in 0..3 {
            own.add_request(u64::from(now) * 1000, 1);
        }
        own.add_status(now, 404);
        // Global: 10 requests in every current window, 4 in the previous
        // ones; 5 answers (2 of them 404s) this minute; a verdict for 30 s.
        let mut reply = vec![0i64; WINDOW_KEYS * 2 * 6 + 1];
        for w in 0..WINDOW_KEYS {
            reply[w * 6] = 10;
            reply[(WINDOW_KEYS + w) * 6] = 4;
        }
        reply[2 * 6 + 1] = 5;
        reply[2 * 6 + 2] = 2;
        reply[2 * 6 + 3] = 2;
        reply[WINDOW_KEYS * 2 * 6] = 30;
        let remote = remote_counts(&reply, Some(own), now).unwrap();
        assert!(remote.verdict(now + 29) && !remote.verdict(now + 30));
        let merged = remote.merged(&own, now);
        // Ours and theirs add up to the global counts again.
        assert_eq!(
            merged.rates(now)[1],
            own.rates(now)[1] + 7 + overlap(4, now, 10)
        );
        assert_eq!(merged.answered(now), 5 + overlap(0, now, 60));
        assert_eq!(merged.status_404(now), 2);
        // A malformed reply is ignored, not trusted.
        assert!(remote_counts(&reply[1..], Some(own), now).is_none());
    }

    fn overlap(events: u32, now: u32, window: u32) -> u32 {
        super::super::overlap(events, now, window)
    }

    #[test]
    fn notes_merge_per_client_and_stay_bounded() {
        let shared = Shared::new(
            SharedConfig {
                url: "redis://127.0.0.1:1".into(),
                key_prefix: "t:".into(),
                sync_interval: Duration::from_millis(100),
                verdict_ttl: Duration::from_secs(60),
            },
            1000,
        );
        let a = ClientKey::of("192.0.2.1".parse().unwrap());
        shared.note_request(a, false);
        shared.note_request(a, true);
        shared.note_status(a, 403);
        shared.note_verdict(a);
        let pending = lock(&shared.pending);
        let d = pending[&a];
        assert_eq!((d.requests, d.auth_failures, d.status_auth), (2, 1, 1));
        assert!(d.verdict);
        drop(pending);
        for i in 0..(MAX_PENDING as u32 + 10) {
            shared.note_request(ClientKey::of(std::net::Ipv4Addr::from(i).into()), false);
        }
        assert_eq!(lock(&shared.pending).len(), MAX_PENDING);
    }

    #[test]
    fn keys_keep_a_client_in_one_cluster_slot() {
        let shared = Shared::new(
            SharedConfig {
                url: "redis://127.0.0.1:1".into(),
                key_prefix: "usher:".into(),
                sync_interval: Duration::from_millis(100),
                verdict_ttl: Duration::from_secs(60),
            },
            1000,
        );
        let key = ClientKey::of("192.0.2.1".parse().unwrap());
        let window = shared.window_key(key, 60, 1_000_030);
        assert_eq!(
            window,
            "usher:c:{00000000000000000000ffffc0000201}:60:1000020"
        );
        assert_eq!(
            shared.verdict_key(key),
            "usher:v:{00000000000000000000ffffc0000201}"
        );
    }
}
